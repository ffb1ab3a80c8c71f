"""The suite's Gymnasium wrappers, one behaviour each; :mod:`prefrl.envs.factory` chains them.

Info keys a training env's wrappers set on ``reset`` and on every ``step``:

- ``after_termination`` (bool, :class:`ContinuePastTermination`): this step came after the
  underlying task ended (MuJoCo: the terminating step and every later one; ``reset`` mode:
  the terminating step only)
- ``render_state`` (float64 array, :class:`RecordRenderState`, MuJoCo and classic only):
  ``qpos`` then ``qvel`` (classic: the env's ``state``) after the step, matching the
  returned observation, so a clip can be rendered for a person later; nothing is rendered here
- ``frame`` (uint8 ``(210, 160, 3)``, :class:`RecordFrame`, Atari with ``record_frames=True``):
  the masked RGB frame after frame skip that matches the returned observation, for showing people
- ``nonfinite_reset`` (bool, :class:`ResetOnNonFinite`, MuJoCo and classic, only when True):
  the simulation produced a non-finite observation and was restarted in place
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.utils import RecordConstructorArgs

from prefrl.util.errors import PrefrlError

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

    ``"show_then_reset"``: the terminating step returns the ended state (the fallen pole);
    the next step ignores its action, restarts in place and carries the flag (so the fall
    penalty is charged on a step taken *from* the fallen state). With ``"reset"`` the fallen
    state is never an observation: a clip shows the start state right after each fall, and
    a reward model fitted to such clips can blame the start state for the fall.

    :param env: the env whose termination is removed
    :param on_termination: ``"continue"``, ``"reset"`` or ``"show_then_reset"``
    """

    def __init__(self, env: gym.Env, on_termination: str = "continue") -> None:
        if on_termination not in ("continue", "reset", "show_then_reset"):
            raise PrefrlError(f"on_termination = {on_termination!r} is invalid: use continue, reset or show_then_reset")
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
        if self._terminated and self.on_termination == "show_then_reset":
            # The step after the ended state was shown: restart in place, charge the fall here.
            obs, info = self.env.reset()
            self._terminated = False
            info["after_termination"] = True
            return obs, 0.0, False, False, info
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated and self.on_termination == "show_then_reset":
            self._terminated = True
            info["after_termination"] = False
            return obs, reward, False, False, info
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


def check_mask_regions(regions: Sequence[Sequence[int]], height: int, width: int) -> list[tuple[int, ...]]:
    """``task.mask_regions`` as int tuples, each checked to fit a ``height x width`` frame.

    :param regions: ``(top, bottom, left, right)`` rectangles, bottom and right exclusive
    :param height: frame height in pixels
    :param width: frame width in pixels
    :raises PrefrlError: a region outside the frame or empty
    """
    checked = [tuple(int(v) for v in region) for region in regions]
    for top, bottom, left, right in checked:
        if not (0 <= top < bottom <= height and 0 <= left < right <= width):
            raise PrefrlError(
                f"task.mask_regions: [{top}, {bottom}, {left}, {right}] does not fit the "
                f"{height}x{width} frame; use [top, bottom, left, right] inside it"
            )
    return checked


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
        self.regions = check_mask_regions(regions, height, width)

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
