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

Info keys of a training env, set on ``reset`` and on every ``step``:

- ``after_termination`` (bool): this step came after the underlying task ended (MuJoCo:
  the terminating step and every later one; ``reset`` mode: the terminating step only)
- ``render_state`` (float64 array, MuJoCo and classic only): ``qpos`` then ``qvel``
  (classic: the env's ``state``) after the step, matching the returned observation, so a
  clip can be rendered for a person later; nothing is rendered here
- ``frame`` (uint8 ``(210, 160, 3)``, Atari with ``record_frames=True``): the masked RGB
  frame after frame skip that matches the returned observation, for showing people
- ``nonfinite_reset`` (bool, MuJoCo and classic, only when True): the simulation produced
  a non-finite observation and was restarted in place

``import prefrl`` registers every preset as ``prefrl/<TaskName>`` (see
:mod:`prefrl.envs.registration`), whose entry point is :func:`make_task_env` here.

This is a core module: it never imports pygame, the CLI or Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, SupportsFloat

import ale_py
import gymnasium as gym
import numpy as np
from gymnasium.utils import RecordConstructorArgs
from gymnasium.wrappers import FrameStackObservation, GrayscaleObservation, ResizeObservation, TimeLimit
from stable_baselines3.common.atari_wrappers import MaxAndSkipEnv, NoopResetEnv

from prefrl.config.presets import Preset, load_preset
from prefrl.util.errors import PrefrlError

# Registers the ALE/... ids; the ROMs ship inside ale-py.
gym.register_envs(ale_py)

ResetReturn = tuple[Any, dict[str, Any]]
StepReturn = tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]

class ContinuePastTermination(gym.Wrapper, RecordConstructorArgs):
    """Never end an episode when the underlying task ends; flag the steps after it.

    Removing early termination is half of a fixed horizon (see :class:`FixedHorizon`):
    an episode whose length depends on the agent's behaviour leaks reward, because the
    agent learns from when episodes end rather than from the (learned) reward. The paper
    removes termination in MuJoCo and hides game over in Atari for this reason.

    ``on_termination="continue"``: keep stepping the same simulation (a fallen Hopper lies
    on the ground); ``info["after_termination"]`` is True on the terminating step and on
    every later step of the episode. ``"reset"``: restart the underlying env in place and
    return its first observation (Atari game over, CartPole); the flag is True on the
    terminating step only. An underlying *truncation* (e.g. ALE's 108,000-frame cap) also
    restarts in place, without the flag: it is a time limit, not the task's verdict.

    :param env: the env whose termination is removed
    :param on_termination: ``"continue"`` or ``"reset"``
    """

    def __init__(self, env: gym.Env, on_termination: str = "continue") -> None:
        if on_termination not in ("continue", "reset"):
            raise PrefrlError(f"on_termination = {on_termination!r} is invalid: use continue or reset")
        RecordConstructorArgs.__init__(self, on_termination=on_termination)
        gym.Wrapper.__init__(self, env)
        self.on_termination = on_termination
        self._terminated = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetReturn:
        self._terminated = False
        obs, info = self.env.reset(seed=seed, options=options)
        info["after_termination"] = False
        return obs, info

    def step(self, action: Any) -> StepReturn:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated:
            self._terminated = True
        after_termination = self._terminated
        if (terminated and self.on_termination == "reset") or (truncated and not terminated):
            # Restart in place: the new game's first observation is what the agent sees
            # next; reset info (render_state, frame) overrides the stale step info.
            obs, reset_info = self.env.reset()
            info = {**info, **reset_info}
            self._terminated = False
        info["after_termination"] = after_termination
        return obs, reward, False, False, info


class TerminationPenalty(gym.Wrapper, RecordConstructorArgs):
    """Subtract ``penalty`` from the reward of every step flagged ``after_termination``.

    Without termination, falling over (or losing the game) must still cost something, or
    the fixed-horizon task would not be the task. The penalty is part of the training
    reward of *both* arms, so the true-reward baseline optimises exactly what the
    synthetic teacher judges by; evaluation uses the real rules and the env's own return.

    :param env: an env that puts ``after_termination`` in its step info
    :param penalty: subtracted per flagged step (``continue`` mode: every step after the
        fall; ``reset`` mode: once per fall or game over)
    """

    def __init__(self, env: gym.Env, penalty: float) -> None:
        RecordConstructorArgs.__init__(self, penalty=penalty)
        gym.Wrapper.__init__(self, env)
        self.penalty = float(penalty)

    def step(self, action: Any) -> StepReturn:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if info.get("after_termination", False):
            reward = float(reward) - self.penalty
        return obs, reward, terminated, truncated, info


class FixedHorizon(gym.Wrapper, RecordConstructorArgs):
    """Truncate every episode after exactly ``horizon`` steps, never earlier.

    Put it on top of :class:`ContinuePastTermination`, which guarantees that the inner env
    never ends an episode by itself; an inner end would make episode length carry
    information again, so it is an error here rather than silently accepted.

    :param env: an env that never terminates or truncates by itself
    :param horizon: agent steps per episode
    """

    def __init__(self, env: gym.Env, horizon: int) -> None:
        if horizon <= 0:
            raise PrefrlError(f"horizon = {horizon!r} is invalid: must be a positive number of steps")
        RecordConstructorArgs.__init__(self, horizon=horizon)
        gym.Wrapper.__init__(self, env)
        self.horizon = horizon
        self._elapsed = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetReturn:
        self._elapsed = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> StepReturn:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            raise RuntimeError(
                f"FixedHorizon: the inner env ended an episode after {self._elapsed + 1} of "
                f"{self.horizon} steps; wrap it in ContinuePastTermination first"
            )
        self._elapsed += 1
        return obs, reward, False, self._elapsed >= self.horizon, info


class ResetOnNonFinite(gym.Wrapper, RecordConstructorArgs):
    """Restart the simulation in place when it produces a non-finite observation.

    Training runs far past the states a task was designed for (a MuJoCo robot keeps being
    simulated after falling), where a physics blow-up is possible. One NaN would poison
    the observation normalisation and the reward model for the rest of the run, so the
    step returns the restarted env's first observation, reward 0 and
    ``info["nonfinite_reset"] = True``; the episode itself goes on.

    Only a non-finite *observation* (a diverged simulation) is recovered this way. A
    non-finite reward beside a finite observation is a bug of the env, not physics: it
    passes through, and training stops with a message naming the step and the env.

    :param env: a continuous-observation env
    """

    def __init__(self, env: gym.Env) -> None:
        RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def step(self, action: Any) -> StepReturn:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if np.all(np.isfinite(obs)):
            return obs, reward, terminated, truncated, info
        obs, reset_info = self.env.reset()
        return obs, 0.0, False, False, {**info, **reset_info, "nonfinite_reset": True}


class RecordRenderState(gym.Wrapper, RecordConstructorArgs):
    """Put a copy of the simulation state in ``info["render_state"]`` after every step.

    Clips are shown to people long after they were played, so the state that produced
    each frame is kept instead of rendering now (rendering MuJoCo costs ~80 ms a frame on
    a CPU; copying ``qpos`` and ``qvel`` costs microseconds). MuJoCo: ``qpos`` then
    ``qvel``; classic control: the env's ``state`` vector. Always float64.

    :param env: a MuJoCo env (``unwrapped.data``) or one with ``unwrapped.state``
    """

    def __init__(self, env: gym.Env) -> None:
        RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        data = getattr(env.unwrapped, "data", None)
        self._mujoco_data = data if data is not None and hasattr(data, "qpos") else None

    def render_state(self) -> np.ndarray:
        """The current simulation state as a new float64 array."""
        if self._mujoco_data is not None:
            return np.concatenate([self._mujoco_data.qpos, self._mujoco_data.qvel]).astype(np.float64)
        state = getattr(self.env.unwrapped, "state", None)  # classic control sets it on reset
        if state is None:
            raise PrefrlError(f"{self.env.unwrapped} has neither MuJoCo data nor a state vector to record")
        return np.array(state, dtype=np.float64)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetReturn:
        obs, info = self.env.reset(seed=seed, options=options)
        info["render_state"] = self.render_state()
        return obs, info

    def step(self, action: Any) -> StepReturn:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["render_state"] = self.render_state()
        return obs, reward, terminated, truncated, info


class ScoreMask(gym.ObservationWrapper, RecordConstructorArgs):
    """Black out rectangles of a raw RGB frame (the score and other counters).

    The paper hides the score so that the reward model cannot simply read the true
    reward off the screen; in some games other counters go too (Enduro's dashboard,
    BeamRider's enemies-left count). Applied to the raw frame before any resizing, so the
    blacked-out pixels are exactly zero.

    :param env: an env with ``(H, W, 3)`` uint8 observations
    :param regions: ``(top, bottom, left, right)`` rectangles in pixels, bottom and right
        exclusive
    """

    def __init__(self, env: gym.Env, regions: Sequence[Sequence[int]]) -> None:
        RecordConstructorArgs.__init__(self, regions=tuple(tuple(int(v) for v in r) for r in regions))
        gym.ObservationWrapper.__init__(self, env)
        height, width = env.observation_space.shape[:2]
        self.regions = [tuple(int(v) for v in region) for region in regions]
        for top, bottom, left, right in self.regions:
            if not (0 <= top < bottom <= height and 0 <= left < right <= width):
                raise PrefrlError(
                    f"task.mask_regions: [{top}, {bottom}, {left}, {right}] does not fit the "
                    f"{height}x{width} frame; use [top, bottom, left, right] inside it"
                )

    def observation(self, observation: np.ndarray) -> np.ndarray:
        if not self.regions:
            return observation
        masked = observation.copy()  # never write into the emulator's own buffer
        for top, bottom, left, right in self.regions:
            masked[top:bottom, left:right] = 0
        return masked


class RecordFrame(gym.Wrapper, RecordConstructorArgs):
    """Put a copy of the current RGB observation in ``info["frame"]``.

    Placed right after :class:`ScoreMask` and before grayscale/resizing, so the frame a
    person labels shows what the agent's observation was made from, score hidden.

    :param env: an env with RGB frame observations
    """

    def __init__(self, env: gym.Env) -> None:
        RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetReturn:
        obs, info = self.env.reset(seed=seed, options=options)
        info["frame"] = np.array(obs, dtype=np.uint8, copy=True)
        return obs, info

    def step(self, action: Any) -> StepReturn:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["frame"] = np.array(obs, dtype=np.uint8, copy=True)
        return obs, reward, terminated, truncated, info


def require_fire_action(env: gym.Env, setting: str) -> None:
    """The FIRE wrappers press action 1: refuse a game whose action 1 is something else."""
    meanings = env.unwrapped.get_action_meanings()
    if len(meanings) < 2 or meanings[1] != "FIRE":
        raise PrefrlError(f"task.{setting} = true is invalid for {env.unwrapped}: its action 1 is not FIRE")


class FireOnReset(gym.Wrapper, RecordConstructorArgs):
    """Press FIRE after every reset, for games that wait for it (Breakout's first ball).

    Not SB3's ``FireResetEnv``: it returns an empty info dict, which would lose ALE's
    ``lives`` and frame counters at every restart in place; this one keeps the info.

    :param env: an Atari env whose action 1 is FIRE
    """

    def __init__(self, env: gym.Env) -> None:
        RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        require_fire_action(env, "fire_reset")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetReturn:
        self.env.reset(seed=seed, options=options)
        obs, _, terminated, truncated, info = self.env.step(1)
        if terminated or truncated:  # practically never; start over without FIRE
            obs, info = self.env.reset()
        return obs, info


class FireAfterLifeLoss(gym.Wrapper, RecordConstructorArgs):
    """Make the agent's next action FIRE after a lost life, for games that wait for it
    (Breakout launches the next ball only on FIRE).

    Without it a policy can stop a Breakout game for good by never pressing FIRE, which
    a learned reward that happens to prefer an idle screen teaches it. SB3's and
    CleanRL's chains get the same through ``EpisodicLifeEnv`` + ``FireResetEnv``; here
    no life-loss signal reaches the agent, only its one action is replaced.

    :param env: an Atari env whose action 1 is FIRE and whose info has ``lives``
    """

    def __init__(self, env: gym.Env) -> None:
        RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        require_fire_action(env, "fire_after_life_loss")
        self.lives = 0
        self.fire_next = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetReturn:
        obs, info = self.env.reset(seed=seed, options=options)
        self.lives, self.fire_next = int(info.get("lives", 0)), False
        return obs, info

    def step(self, action: Any) -> StepReturn:
        if self.fire_next:
            action, self.fire_next = 1, False
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = int(info.get("lives", 0))
        self.fire_next = lives < self.lives and not (terminated or truncated)
        self.lives = lives
        return obs, reward, terminated, truncated, info


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
