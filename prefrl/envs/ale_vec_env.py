"""Atari training and evaluation envs as one SB3 ``VecEnv`` that drives the emulators directly.

:func:`make_ale_vec_env` gives, step for step, what :func:`prefrl.envs.vec_env.make_vec_env`
gives for an Atari preset with the SB3 wrapper chain of ``prefrl.envs.factory._make_atari``
(``NoopResetEnv``, ``MaxAndSkipEnv``, ``FireOnReset``, ``FireAfterLifeLoss``, ``RecordFrame``,
``ScoreMask``, grayscale, resize, frame stack, ``ContinuePastTermination``,
``TerminationPenalty``, ``FixedHorizon`` or ``TimeLimit``, then ``Monitor`` and
``ClipReward``) in a ``DummyVecEnv``, but faster:

- the chain spends most of an agent step converting frames to grayscale; here a lookup
  table (:mod:`prefrl.envs.grayscale`) converts all envs' frames at once, exactly alike;
- the emulator is stepped through its own ``ALEInterface`` (one ``act`` per frame, screens
  copied into preallocated buffers only for the two frames that are max-pooled), without
  the nine Python wrapper layers per frame and per step.

Why not ale-py's C++ ``AtariVectorEnv``: on this project's machines (2 shared cores) its
threads buy nothing (measured for this module: one ``ALEInterface`` driven from Python ran
Pong at ~3,500 agent steps/s without preprocessing, the one-thread ``AtariVectorEnv`` with 8
envs at ~3,100, with two threads at ~2,100), while it cannot be
made exact: its no-op starts and sticky actions draw from its own random stream, it cannot
press FIRE after a restart of a single env, and it has no ``cloneState``, so a run
checkpoint could not hold the emulators. Driving each env's own
``ale_py.env.AtariEnv`` keeps all of that identical:

- **exact**: observations (the score mask on the max-pooled RGB frame, gymnasium's
  grayscale formula, ``cv2.INTER_AREA`` resize, ``FrameStackObservation``'s reset padding),
  ``MaxAndSkipEnv``'s max over the last two frames of each skip (and its stale buffer when
  a game ends inside a skip), no-op starts (the count drawn from the env's ``np_random``
  exactly as ``NoopResetEnv`` does), FIRE after every reset and after a lost life, sticky actions (ALE's own
  random stream, seeded like ``AtariEnv``), seeding (env ``i`` gets ``seed + i`` through
  ``AtariEnv.reset(seed=...)``), game over and ALE's frame cap restart in place with
  ``info["after_termination"]`` as ``ContinuePastTermination`` gives it, the termination
  penalty, ``FixedHorizon`` truncation with ``info["terminal_observation"]`` and
  ``info["TimeLimit.truncated"]``, ``info["episode"]`` ``r`` and ``l`` as ``Monitor`` logs
  them (true return of the fixed-horizon episode, penalty included, before clipping),
  clipped rewards for the true arm, ``info["frame"]`` for people, ALE's ``lives``,
  ``episode_frame_number`` and ``frame_number``, ``reset_infos``, and evaluation mode (real
  game over, ``TimeLimit`` at ``eval.max_episode_steps``);
- **not identical**: ``info["episode"]["t"]`` is wall-clock time, as in ``Monitor``, so it
  never repeats; ``get_attr``/``set_attr``/``env_method`` know only what prefrl asks of its
  envs (``render_mode``; ``get_run_state``/``set_run_state`` for run checkpoints, in this
  class's own format, so a run resumes only with the backend that started it);
  ``get_images`` returns the raw (unmasked) screens although ``render_mode`` is None.

``tests/test_ale_vec_env.py`` compares it with the SB3 chain step by step.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import cv2
import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import (
    ClipReward,
    FrameStackObservation,
    GrayscaleObservation,
    ResizeObservation,
    TimeLimit,
)
from stable_baselines3.common.atari_wrappers import MaxAndSkipEnv, NoopResetEnv
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from prefrl.config.settings import Preset
from prefrl.envs.grayscale import rgb_to_gray
from prefrl.envs.wrappers import (
    ContinuePastTermination,
    FireAfterLifeLoss,
    FireOnReset,
    FixedHorizon,
    RecordFrame,
    ScoreMask,
    TerminationPenalty,
    check_mask_regions,
    require_fire_action,
)
from prefrl.util.errors import PrefrlError


def _episode_info(episode_return: float, length: int, t_start: float) -> dict[str, float | int]:
    """``Monitor``'s ``info["episode"]``."""
    return {"r": round(episode_return, 6), "l": length, "t": round(time.time() - t_start, 6)}


class AleVectorEnv(VecEnv):
    """The Atari wrapper chain of a preset for ``n_envs`` emulators, as one ``VecEnv``.

    Behaves as ``DummyVecEnv`` over ``StatefulEnv(ClipReward?(Monitor(make_env(preset))))``
    (see the module docstring for what is and is not identical). Each env keeps its own
    ``ale_py.env.AtariEnv``, made by ``gym.make`` with the chain's arguments, for
    configuration, seeding and its ``np_random``; steps bypass its Python ``step``.

    :param preset: an Atari preset
    :param n_envs: number of emulators
    :param evaluation: the game's real rules (game over ends the episode; ``TimeLimit`` at
        ``eval.max_episode_steps`` if > 0) instead of the fixed-horizon training env
    :param clip_reward: clip rewards to [-1, 1] after the episode statistics (true arm)
    :param record_frames: put the RGB frame of each observation in ``info["frame"]``
    """

    def __init__(
        self,
        preset: Preset,
        n_envs: int,
        *,
        evaluation: bool = False,
        clip_reward: bool = False,
        record_frames: bool = False,
    ) -> None:
        task = preset.task
        if task.domain != "atari":
            raise PrefrlError(f"the ale vector env runs Atari tasks only; task '{task.name}' is {task.domain}")
        if n_envs < 1:
            raise PrefrlError(f"n_envs = {n_envs!r} is invalid: must be at least 1")
        if not evaluation and task.on_termination != "reset":
            raise PrefrlError(
                f"task.on_termination = {task.on_termination!r} for Atari task '{task.name}' is invalid: "
                "the emulator stops at game over; use reset"
            )
        self.task = task
        self.evaluation = evaluation
        self.clip_reward = clip_reward
        self.record_frames = record_frames
        self.skip = max(int(task.frame_skip), 1)
        self.noop_max = int(task.noop_max)
        self.fire_reset = bool(task.fire_reset)
        self.fire_after_life_loss = bool(task.fire_after_life_loss)
        self.penalty = float(task.termination_penalty) if not evaluation else 0.0
        self.horizon = int(task.horizon)
        self.time_limit = int(preset.eval.max_episode_steps) if evaluation else 0
        if not evaluation and self.horizon <= 0:
            raise PrefrlError(f"horizon = {self.horizon!r} is invalid: must be a positive number of steps")

        kwargs: dict[str, Any] = {}
        if evaluation and self.time_limit > 0:
            # As factory._make_atari: our TimeLimit, in agent steps, ends the episode, not ALE's cap.
            kwargs["max_num_frames_per_episode"] = task.frame_skip * (self.time_limit + 1) + task.noop_max
        # The very env the chain is built on, so ROM, mode, frame cap, sticky actions and
        # seeding are configured exactly alike; only its Python ``step`` is bypassed.
        self.atari_envs = [
            gym.make(
                task.env_id,
                frameskip=1,
                repeat_action_probability=task.sticky_action_prob,
                full_action_space=False,
                **kwargs,
            ).unwrapped
            for _ in range(n_envs)
        ]
        self.ales = [env.ale for env in self.atari_envs]
        first = self.atari_envs[0]
        self.action_set = list(first._action_set)
        meanings = first.get_action_meanings()
        if self.noop_max > 0 and meanings[0] != "NOOP":
            raise PrefrlError(f"task.noop_max > 0 is invalid for {first}: its action 0 is not NOOP")
        for flag, wanted in (("fire_reset", self.fire_reset), ("fire_after_life_loss", self.fire_after_life_loss)):
            if wanted:
                require_fire_action(first, flag)
        height, width = first.ale.getScreenDims()
        self.regions = check_mask_regions(task.mask_regions, height, width)
        self.screen_shape = (height, width, 3)
        size, stack = int(task.screen_size), int(task.frame_stack)
        observation_space = spaces.Box(0, 255, (stack, size, size), np.uint8)
        action_space = spaces.Discrete(len(self.action_set))

        # MaxAndSkipEnv's _obs_buffer per env: the frames before last and last of a skip.
        self._pool = np.zeros((n_envs, 2, *self.screen_shape), np.uint8)
        self._stack = np.zeros((n_envs, *observation_space.shape), np.uint8)
        self._elapsed = np.zeros(n_envs, np.int64)  # FixedHorizon / TimeLimit step counters
        self._lives = np.zeros(n_envs, np.int64)  # FireAfterLifeLoss
        self._fire_next = np.zeros(n_envs, bool)
        self._episode_return = [0.0] * n_envs  # Monitor
        self._episode_length = [0] * n_envs
        self._t_start = time.time()
        self._actions: np.ndarray | None = None
        # The wrappers of the SB3 chain this env stands for (env_is_wrapped).
        chain: list[type] = [Monitor, FrameStackObservation, ResizeObservation, GrayscaleObservation, ScoreMask]
        chain += [ClipReward] if clip_reward else []
        chain += [TimeLimit] if evaluation and self.time_limit > 0 else []
        chain += [] if evaluation else [FixedHorizon, ContinuePastTermination]
        chain += [TerminationPenalty] if not evaluation and self.penalty else []
        chain += [RecordFrame] if record_frames else []
        chain += [FireAfterLifeLoss] if self.fire_after_life_loss else []
        chain += [FireOnReset] if self.fire_reset else []
        chain += [MaxAndSkipEnv] if task.frame_skip > 1 else []
        chain += [NoopResetEnv] if self.noop_max > 0 else []
        self._wrapper_classes = tuple(chain)
        self.render_mode = None
        super().__init__(n_envs, observation_space, action_space)

    # ----------------------------------------------------------------- one emulator

    def _info(self, i: int) -> dict[str, Any]:
        """``AtariEnv``'s step info."""
        ale = self.ales[i]
        return {"lives": ale.lives(), "episode_frame_number": ale.getEpisodeFrameNumber(),
                "frame_number": ale.getFrameNumber()}

    def _skip_step(self, i: int, action: int) -> tuple[float, bool, bool]:
        """``MaxAndSkipEnv.step`` over ``AtariEnv`` with frameskip 1: repeat the action,
        sum the reward, keep the last two frames in the pool (only those reached: a game
        ending inside the skip leaves the older ones, as there)."""
        ale, pool, skip = self.ales[i], self._pool[i], self.skip
        action_id = self.action_set[action]
        total = 0.0
        terminated = truncated = False
        for k in range(skip):
            reward = 0.0 + ale.act(action_id, 1.0)
            terminated = ale.game_over(with_truncation=False)
            truncated = ale.game_truncated()
            if k == skip - 2:
                ale.getScreenRGB(pool[0])
            elif k == skip - 1:
                ale.getScreenRGB(pool[1])
            total += float(reward)
            if terminated or truncated:
                break
        return total, terminated, truncated

    def _pooled(self, i: int) -> np.ndarray:
        return np.maximum(self._pool[i, 0], self._pool[i, 1])

    def _noop_reset(self, i: int, seed: int | None) -> tuple[np.ndarray, dict[str, Any]]:
        """``NoopResetEnv.reset`` over ``AtariEnv`` (or the plain reset if ``noop_max`` is 0)."""
        atari, ale = self.atari_envs[i], self.ales[i]
        frame, info = atari.reset(seed=seed)
        if self.noop_max <= 0:
            return frame, info
        noops = atari.np_random.integers(1, self.noop_max + 1)
        noop_id = self.action_set[0]
        stepped = False
        for _ in range(noops):
            ale.act(noop_id, 1.0)
            stepped = True
            if ale.game_over(with_truncation=False) or ale.game_truncated():
                frame, info = atari.reset(seed=seed)  # NoopResetEnv passes the reset kwargs again
                stepped = False
        if stepped:
            frame, info = ale.getScreenRGB(), self._info(i)
        return frame, info

    def _chain_reset(self, i: int, seed: int | None) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset of the chain below the score mask: the RGB frame and info it returns."""
        frame, info = self._noop_reset(i, seed)
        if self.fire_reset:
            _, terminated, truncated = self._skip_step(i, 1)
            if terminated or truncated:  # practically never; FireOnReset starts over without FIRE
                frame, info = self._noop_reset(i, None)
            else:
                frame = self._pooled(i) if self.skip > 1 else self._pool[i, 1].copy()
                info = self._info(i)
        self._lives[i], self._fire_next[i] = int(info.get("lives", 0)), False
        return frame, info

    def _mask(self, frames: np.ndarray) -> np.ndarray:
        """``ScoreMask`` in place on ``(..., H, W, 3)`` frames owned by this class."""
        for top, bottom, left, right in self.regions:
            frames[..., top:bottom, left:right, :] = 0
        return frames

    def _resize(self, gray: np.ndarray) -> np.ndarray:
        """``ResizeObservation`` of ``(m, H, W)`` gray frames."""
        size = self.task.screen_size
        return np.stack([cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA) for g in gray])

    def _observe(self, frames: np.ndarray) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """Score mask, recorded frames, grayscale and resize of ``(m, H, W, 3)`` RGB frames
        that this class owns (masked in place)."""
        recorded: list[np.ndarray | None] = [None] * len(frames)
        if self.record_frames and self.task.show_unmasked_frames:
            recorded = list(frames.copy())
        self._mask(frames)
        if self.record_frames and not self.task.show_unmasked_frames:
            recorded = list(frames.copy())
        return self._resize(rgb_to_gray(frames)), recorded

    def _reset_env(self, i: int, seed: int | None) -> dict[str, Any]:
        """Reset of the whole chain of env ``i`` (down from FixedHorizon/TimeLimit and
        Monitor): fills its stack, returns the reset info."""
        frame, info = self._chain_reset(i, seed)
        gray, recorded = self._observe(np.array(frame, dtype=np.uint8, copy=True)[None])
        self._stack[i] = gray[0]  # FrameStackObservation pads with the reset observation
        info = dict(info)
        if self.record_frames:
            info["frame"] = recorded[0]
        if not self.evaluation:
            info["after_termination"] = False
        self._elapsed[i] = 0
        self._episode_return[i] = 0.0
        self._episode_length[i] = 0
        return info

    # ----------------------------------------------------------------- VecEnv API

    def reset(self) -> VecEnvObs:
        for i in range(self.num_envs):
            self.reset_infos[i] = self._reset_env(i, self._seeds[i])
        # As DummyVecEnv: seeds and options are used once (options mean nothing to ALE).
        self._reset_seeds()
        self._reset_options()
        return self._stack.copy()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("AleVectorEnv.step_wait without step_async")
        n = self.num_envs
        actions = self._actions.reshape(n)
        self._actions = None
        rewards = np.zeros(n, np.float64)
        ended = np.zeros(n, bool)  # terminated (game over) inside the step
        capped = np.zeros(n, bool)  # truncated by ALE's frame cap
        infos: list[dict[str, Any]] = []
        for i in range(n):
            action = 1 if self._fire_next[i] else int(actions[i])  # FireAfterLifeLoss
            rewards[i], ended[i], capped[i] = self._skip_step(i, action)
            infos.append(self._info(i))
            if self.fire_after_life_loss:
                lives = int(infos[i]["lives"])
                self._fire_next[i] = lives < self._lives[i] and not (ended[i] or capped[i])
                self._lives[i] = lives

        # The new observation of every env, in one batch (restarted envs overwrite theirs).
        frames = np.maximum(self._pool[:, 0], self._pool[:, 1]) if self.skip > 1 else self._pool[:, 1].copy()
        gray, recorded = self._observe(frames)
        self._stack[:, :-1] = self._stack[:, 1:]
        self._stack[:, -1] = gray
        if self.record_frames:
            for i in range(n):
                infos[i]["frame"] = recorded[i]

        dones = np.zeros(n, bool)
        for i in range(n):
            info = infos[i]
            if self.evaluation:
                terminated = bool(ended[i])
                self._elapsed[i] += 1
                truncated = bool(capped[i]) or bool(self.time_limit > 0 and self._elapsed[i] >= self.time_limit)
            else:
                # ContinuePastTermination: game over (flagged) or ALE's cap restart in place.
                after_termination = bool(ended[i])
                if ended[i] or capped[i]:
                    reset_info = self._reset_env_in_place(i)
                    info.update(reset_info)
                info["after_termination"] = after_termination
                if after_termination and self.penalty:
                    rewards[i] = float(rewards[i]) - self.penalty  # TerminationPenalty
                terminated = False
                self._elapsed[i] += 1
                truncated = bool(self._elapsed[i] >= self.horizon)  # FixedHorizon
            # Monitor, below any reward change: the true return.
            self._episode_return[i] += float(rewards[i])
            self._episode_length[i] += 1
            done = terminated or truncated
            if done:
                info["episode"] = _episode_info(self._episode_return[i], self._episode_length[i], self._t_start)
            # DummyVecEnv
            info["TimeLimit.truncated"] = truncated and not terminated
            if done:
                info["terminal_observation"] = self._stack[i].copy()
                self.reset_infos[i] = self._reset_env(i, None)
            dones[i] = done
        if self.clip_reward:
            rewards = np.clip(rewards, -1.0, 1.0)  # ClipReward
        return self._stack.copy(), rewards.astype(np.float32), dones, infos

    def _reset_env_in_place(self, i: int) -> dict[str, Any]:
        """``ContinuePastTermination``'s restart: the chain below it is reset, the episode
        (step counter, Monitor) goes on; returns the reset info."""
        frame, info = self._chain_reset(i, None)
        gray, recorded = self._observe(np.array(frame, dtype=np.uint8, copy=True)[None])
        self._stack[i] = gray[0]
        info = dict(info)
        if self.record_frames:
            info["frame"] = recorded[0]
        return info

    def close(self) -> None:
        for env in self.atari_envs:
            env.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        """The raw RGB screens (score not masked)."""
        return [ale.getScreenRGB() for ale in self.ales]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        if attr_name == "render_mode":
            return [None for _ in self._get_indices(indices)]
        raise AttributeError(f"AleVectorEnv has no per-env attribute {attr_name!r} (it knows render_mode only)")

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        raise PrefrlError(f"AleVectorEnv cannot set {attr_name!r} in its envs: it has no wrapper objects")

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """``get_run_state`` and ``set_run_state`` (run checkpoints), as ``StatefulEnv`` offers."""
        targets = list(self._get_indices(indices))
        if method_name == "get_run_state":
            return [self.get_run_state(i) for i in targets]
        if method_name == "set_run_state":
            for i in targets:
                self.set_run_state(i, *method_args, **method_kwargs)
            return [None for _ in targets]
        raise PrefrlError(f"AleVectorEnv cannot call {method_name!r} in its envs: "
                          "only get_run_state and set_run_state are available")

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """Whether the SB3 chain this env stands for contains ``wrapper_class`` (``Monitor``
        always: ``evaluate_policy`` then takes episode returns from ``info["episode"]``)."""
        wrapped = any(issubclass(cls, wrapper_class) for cls in self._wrapper_classes)
        return [wrapped for _ in self._get_indices(indices)]

    # ----------------------------------------------------------------- run checkpoints

    def get_run_state(self, i: int) -> dict[str, Any]:
        """The exact state of env ``i``: emulator (with ALE's random stream), ``np_random``,
        pool, stack and counters.

        :param i: env index
        """
        return {
            "ale_state": self.ales[i].cloneState(include_rng=True),
            "np_random": copy.deepcopy(self.atari_envs[i].np_random.bit_generator.state),
            "pool": self._pool[i].copy(),
            "stack": self._stack[i].copy(),
            "elapsed": int(self._elapsed[i]),
            "lives": int(self._lives[i]),
            "fire_next": bool(self._fire_next[i]),
            "episode_return": self._episode_return[i],
            "episode_length": self._episode_length[i],
            "t_start": self._t_start,
        }

    def set_run_state(self, i: int, state: dict[str, Any]) -> None:
        """Put env ``i`` into a :meth:`get_run_state` state.

        :param i: env index
        :param state: what :meth:`get_run_state` returned
        :raises PrefrlError: the state is not one of this class (e.g. from the SB3 chain)
        """
        if not isinstance(state, dict) or "ale_state" not in state:
            raise PrefrlError("the checkpoint's environment state comes from another vec_env backend; "
                              "resume with the ppo.vec_env that started the run")
        self.ales[i].restoreState(state["ale_state"])
        self.atari_envs[i].np_random.bit_generator.state = copy.deepcopy(state["np_random"])
        self._pool[i] = state["pool"]
        self._stack[i] = state["stack"]
        self._elapsed[i] = state["elapsed"]
        self._lives[i] = int(state.get("lives", self.ales[i].lives()))
        self._fire_next[i] = bool(state.get("fire_next", False))
        self._episode_return[i] = float(state["episode_return"])
        self._episode_length[i] = int(state["episode_length"])
        self._t_start = float(state["t_start"])


def make_ale_vec_env(
    preset: Preset,
    n_envs: int,
    seed: int,
    *,
    evaluation: bool = False,
    clip_reward: bool = False,
    record_frames: bool = False,
) -> VecEnv:
    """Vectorised Atari task env on the emulators directly, seeded once (env ``i`` gets
    ``seed + i``): a drop-in for ``vec_env.make_vec_env`` of an Atari preset.

    :param preset: an Atari preset
    :param n_envs: parallel environments
    :param seed: seed of env 0 (and of the action space)
    :param evaluation: the game's real rules instead of the fixed-horizon training env
    :param clip_reward: clip rewards to [-1, 1] (the true arm on Atari)
    :param record_frames: RGB frames for people in ``info["frame"]``
    :return: the vectorised env
    """
    venv = AleVectorEnv(preset, n_envs, evaluation=evaluation, clip_reward=clip_reward, record_frames=record_frames)
    venv.seed(seed)
    venv.action_space.seed(seed)
    return venv
