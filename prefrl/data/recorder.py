"""The wrapper that records segments: every step of the vectorised env with the true
reward goes into a :class:`~prefrl.data.segments.SegmentBuffer`.

It sits directly on the raw vectorised env (below ``VecNormalize`` and the learned-reward
wrapper), so segments hold the env's own observations and the true reward.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from prefrl.data.segments import SegmentBuffer


class SegmentRecorder(VecEnvWrapper):
    """Feeds every step (observation acted on, action, true reward) to a segment buffer.

    Must wrap the env whose rewards are the true rewards. ``step_async`` is overridden
    only to remember the actions, which ``step_wait`` does not receive.

    :param venv: the vectorised env with the true reward
    :param buffer: where segments are cut
    :param record_frames: keep ``info["frame"]`` (RGB for people) in the segments
    """

    def __init__(self, venv: VecEnv, buffer: SegmentBuffer, record_frames: bool = False) -> None:
        super().__init__(venv)
        self.buffer = buffer
        self.record_frames = record_frames
        self.num_steps = 0
        self._last_obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        self._last_obs = np.asarray(obs)
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        assert self._last_obs is not None and self._actions is not None, "step before reset"
        self.buffer.add_step(
            step=self.num_steps,
            observations=self._last_obs,
            actions=self._actions,
            true_rewards=rewards,
            dones=dones,
            after_termination=np.array([info.get("after_termination", False) for info in infos]),
            render_states=[info.get("render_state") for info in infos],
            frames=[info.get("frame") for info in infos] if self.record_frames else None,
        )
        self.num_steps += self.num_envs
        self._last_obs = np.asarray(obs)
        return obs, rewards, dones, infos

    def run_state(self) -> dict[str, Any]:
        """Step counter and the last observation and actions (for a run checkpoint; the
        segment buffer is checkpointed by its owner)."""
        return {"num_steps": self.num_steps, "last_obs": _copy(self._last_obs), "actions": _copy(self._actions)}

    def load_run_state(self, state: dict[str, Any]) -> None:
        self.num_steps = int(state["num_steps"])
        self._last_obs, self._actions = _copy(state["last_obs"]), _copy(state["actions"])


def _copy(array: np.ndarray | None) -> np.ndarray | None:
    return None if array is None else np.array(array, copy=True)
