"""VecEnv wrappers of the learned arm: record segments, replace the reward.

Both sit directly on the raw vectorised env (below ``VecNormalize``) so that segments and
the reward model see the env's own observations, not running-normalised ones.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from prefrl.segments import SegmentBuffer

RewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


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


class LearnedRewardVecEnv(VecEnvWrapper):
    """Replaces the reward with the reward model's output; the true reward goes to
    ``info["true_reward"]`` and nowhere else, so the agent never sees it.

    ``step_async`` is overridden only to remember the actions the reward depends on.

    :param venv: the vectorised env with the true reward
    :param reward_fn: ``(observations (N, *obs), actions (N, *act)) -> rewards (N,)``
    """

    def __init__(self, venv: VecEnv, reward_fn: RewardFn) -> None:
        super().__init__(venv)
        self.reward_fn = reward_fn
        self._last_obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None
        self._episode_learned = np.zeros(self.num_envs)
        #: learned returns of the most recent finished training episodes
        self.learned_episode_returns: deque[float] = deque(maxlen=100)

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        self._last_obs = np.asarray(obs)
        self._episode_learned[:] = 0.0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, true_rewards, dones, infos = self.venv.step_wait()
        assert self._last_obs is not None and self._actions is not None, "step before reset"
        learned = np.asarray(self.reward_fn(self._last_obs, self._actions), dtype=np.float32)
        if not np.all(np.isfinite(learned)):
            raise FloatingPointError("the reward model returned a non-finite reward")
        for i, info in enumerate(infos):
            info["true_reward"] = float(true_rewards[i])
        self._episode_learned += learned
        for i in np.flatnonzero(dones):
            self.learned_episode_returns.append(float(self._episode_learned[i]))
            self._episode_learned[i] = 0.0
        self._last_obs = np.asarray(obs)
        return obs, learned, dones, infos
