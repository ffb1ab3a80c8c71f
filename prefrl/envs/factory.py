"""The environment factory: one preset in, one Gymnasium env with the suite's wrappers out.

Training envs have a **fixed horizon**: an episode always lasts exactly
``task.horizon`` agent steps. When the underlying task would end (a MuJoCo robot falls,
an Atari game is over, the CartPole pole drops) the episode goes on, either stepping the
same simulation (``on_termination = "continue"``) or restarting it in place
(``"reset"``). Variable episode length leaks reward: an agent can learn from *when*
episodes end instead of from the learned reward. ``info["after_termination"]`` marks the steps
after the underlying task ended, and ``task.termination_penalty`` is subtracted from
their reward (:class:`TerminationPenalty`) so that falling or losing still costs
something. The penalty is part of the training task of both arms; evaluation uses the
real rules and the env's own return.

Evaluation envs (``evaluation=True``) follow the task's real rules: the unmodified
environment with its own termination and time limit, so agents are judged on the true
return exactly as in the literature.

The wrappers, one behaviour each, and the info keys they set are in
:mod:`prefrl.envs.wrappers`.

``import prefrl`` registers every preset as ``prefrl/<TaskName>`` (see
:mod:`prefrl.envs.registration`), whose entry point is :func:`make_task_env` here.

This is a core module: it never imports pygame, the CLI or Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ale_py
import gymnasium as gym
from gymnasium.wrappers import FrameStackObservation, GrayscaleObservation, ResizeObservation, TimeLimit
from stable_baselines3.common.atari_wrappers import MaxAndSkipEnv, NoopResetEnv

from prefrl.config.loading import load_preset
from prefrl.config.settings import Preset
from prefrl.envs.wrappers import (
    ContinuePastTermination,
    FireAfterLifeLoss,
    FireOnReset,
    FixedHorizon,
    RecordFrame,
    RecordRenderState,
    ResetOnNonFinite,
    ScoreMask,
    TerminationPenalty,
)
from prefrl.util.errors import PrefrlError

# Registers the ALE/... ids; the ROMs ship inside ale-py.
gym.register_envs(ale_py)


def _make_atari(preset: Preset, evaluation: bool, render_mode: str | None, record_frames: bool) -> gym.Env:
    """CleanRL-style Atari chain, without EpisodicLife: no life-loss signal reaches the agent."""
    task, cap = preset.task, preset.eval.max_episode_steps
    if not evaluation and task.on_termination != "reset":
        raise PrefrlError(
            f"task.on_termination = {task.on_termination!r} for Atari task '{task.name}' is invalid: "
            "the emulator stops at game over; use reset"
        )
    kwargs: dict[str, Any] = {}
    if evaluation and cap > 0:
        # Let our TimeLimit, counted in agent steps, end the episode, not ALE's frame cap
        # (reset no-ops are single frames, FIRE after reset adds one agent step).
        kwargs["max_num_frames_per_episode"] = task.frame_skip * (cap + 1) + task.noop_max
    env = gym.make(
        task.env_id,
        frameskip=1,  # frame skip and max-pooling happen in MaxAndSkipEnv below
        repeat_action_probability=task.sticky_action_prob,
        full_action_space=False,
        render_mode=render_mode,
        **kwargs,
    )
    if task.noop_max > 0:
        env = NoopResetEnv(env, noop_max=task.noop_max)
    if task.frame_skip > 1:
        env = MaxAndSkipEnv(env, skip=task.frame_skip)
    if task.fire_reset:
        env = FireOnReset(env)
    if task.fire_after_life_loss:
        env = FireAfterLifeLoss(env)
    if record_frames and task.show_unmasked_frames:
        env = RecordFrame(env)  # people see the score; the agent and reward model still don't
    env = ScoreMask(env, task.mask_regions)
    if record_frames and not task.show_unmasked_frames:
        env = RecordFrame(env)
    env = GrayscaleObservation(env, keep_dim=False)
    env = ResizeObservation(env, (task.screen_size, task.screen_size))
    # Stacking on a new first axis gives (frame_stack, 84, 84) uint8: channel-first, so
    # SB3 recognises it as an image that needs no VecTransposeImage, and the reward CNN
    # reads exactly the array the policy sees.
    env = FrameStackObservation(env, task.frame_stack)
    if evaluation:
        return TimeLimit(env, cap) if cap > 0 else env
    env = ContinuePastTermination(env, on_termination="reset")
    if task.termination_penalty:
        env = TerminationPenalty(env, task.termination_penalty)
    return FixedHorizon(env, task.horizon)


def _make_continuous(preset: Preset, evaluation: bool, render_mode: str | None) -> gym.Env:
    """MuJoCo and classic control: the plain env, plus the fixed horizon for training."""
    task = preset.task
    if evaluation:
        cap = preset.eval.max_episode_steps
        return gym.make(task.env_id, render_mode=render_mode, max_episode_steps=cap if cap > 0 else None)
    # -1 removes gym.make's TimeLimit: FixedHorizon alone decides when an episode ends.
    env = gym.make(task.env_id, render_mode=render_mode, max_episode_steps=-1)
    env = ResetOnNonFinite(env)
    env = RecordRenderState(env)
    env = ContinuePastTermination(env, on_termination=task.on_termination)
    if task.termination_penalty:
        env = TerminationPenalty(env, task.termination_penalty)
    return FixedHorizon(env, task.horizon)


def make_env(
    preset: Preset,
    *,
    evaluation: bool = False,
    render_mode: str | None = None,
    record_frames: bool = False,
) -> gym.Env:
    """Build one environment of a suite task with its full wrapper chain.

    Nothing is seeded here: the caller seeds through ``env.reset(seed=...)`` (all
    randomness of the wrappers comes from the env's ``np_random``).

    :param preset: the task's preset
    :param evaluation: the task's real rules (own termination and time limit, or
        ``eval.max_episode_steps`` if > 0) instead of the fixed-horizon training env
    :param render_mode: passed to the underlying ``gym.make``
    :param record_frames: Atari: put the masked RGB frame in ``info["frame"]``; ignored for
        other domains, whose clips are rendered later from ``info["render_state"]``
    :return: the wrapped env
    :raises PrefrlError: unknown domain, or settings that do not fit the env
    """
    domain = preset.task.domain
    if domain == "atari":
        return _make_atari(preset, evaluation, render_mode, record_frames)
    if domain in ("mujoco", "classic"):
        return _make_continuous(preset, evaluation, render_mode)
    raise PrefrlError(f"task.domain = {domain!r} is invalid: use mujoco, atari or classic")


def make_task_env(
    task: str,
    evaluation: bool = False,
    render_mode: str | None = None,
    record_frames: bool = False,
    overrides: Sequence[str] = (),
) -> gym.Env:
    """Gymnasium entry point of the ``prefrl/<TaskName>`` ids: load a preset, make its env.

    :param task: preset name or path, e.g. ``hopper``
    :param evaluation: see :func:`make_env`
    :param render_mode: see :func:`make_env`
    :param record_frames: see :func:`make_env`
    :param overrides: ``section.key=value`` settings applied to the preset
    """
    preset = load_preset(task, tuple(overrides))
    return make_env(preset, evaluation=evaluation, render_mode=render_mode, record_frames=record_frames)
