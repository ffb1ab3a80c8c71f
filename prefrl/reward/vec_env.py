"""The learned arm's reward: a VecEnv wrapper that replaces the env's reward with the
reward model's, and the PPO callback that relabels a whole rollout at once.

The wrapper sits on the segment recorder, directly on the raw vectorised env (below
``VecNormalize``), so the reward model sees the env's own observations, not
running-normalised ones.

The learned reward is computed either step by step (one ensemble call per vectorised
step) or, ``deferred``, for a whole PPO rollout in one batched call at its end: SB3 needs
rewards only when it computes returns and advantages after the rollout, so the wrapper
hands out placeholder zeros while collecting and :class:`RolloutRelabelCallback`
writes the real rewards into the rollout buffer and recomputes returns. For the MLP the
whole rollout then costs about what one step cost before; for the Atari CNN, whose
inference is compute-bound (~0.5-1 ms a frame on one core), chunks of the rollout are
labelled by a worker thread while collection goes on (``prefetch_steps``), so only the
last chunk is on the agent's path (``scripts/benchmark_speed.py`` measures both).
With ``ppo.normalize_rewards`` the deferred wrapper also takes over ``VecNormalize``'s
reward scaling (:class:`ReturnNormalizer`, an exact replay of it).
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecNormalize
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from prefrl.util.errors import PrefrlError
from prefrl.util.threads import setup_background_thread

RewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class ReturnNormalizer:
    """``VecNormalize``'s reward scaling (``norm_reward=True``), replayed over a rollout.

    ``VecNormalize`` divides each reward by the running standard deviation of a
    discounted return, updating the statistics step by step as rewards pass. When the
    learned reward is computed for a whole rollout at its end, the same arithmetic runs
    here in the same order, so the agent sees exactly the rewards ``VecNormalize`` would
    have given it (``tests/test_speed_mechanisms.py`` checks this).

    :param num_envs: parallel environments
    :param gamma: discount of the running return (PPO's gamma, as ``VecNormalize`` uses)
    :param epsilon: added to the variance, as in ``VecNormalize``
    :param clip_reward: scaled rewards are clipped to ``[-clip_reward, clip_reward]``
    """

    def __init__(self, num_envs: int, gamma: float, epsilon: float = 1e-8, clip_reward: float = 10.0) -> None:
        self.num_envs = int(num_envs)
        self.gamma = float(gamma)
        self.epsilon = float(epsilon)
        self.clip_reward = float(clip_reward)
        self.ret_rms = RunningMeanStd(shape=())
        self.returns = np.zeros(self.num_envs)

    def reset(self) -> None:
        """A new start of all envs (``VecNormalize.reset`` zeroes the running returns)."""
        self.returns = np.zeros(self.num_envs)

    def run_state(self) -> dict[str, Any]:
        """The running statistics and returns (for a run checkpoint)."""
        return {"ret_rms": copy.deepcopy(self.ret_rms), "returns": self.returns.copy()}

    def load_run_state(self, state: dict[str, Any]) -> None:
        self.ret_rms = copy.deepcopy(state["ret_rms"])
        self.returns = np.array(state["returns"], dtype=np.float64)

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """Scale a rollout's rewards, updating the statistics as ``VecNormalize`` would.

        The running returns are a recursion over steps; their per-step moments and the
        scaling are computed for all steps at once (same arithmetic, same order).

        :param rewards: ``(T, num_envs)`` raw rewards in step order
        :param dones: ``(T, num_envs)`` bool, the episode ended with that step
        :return: ``(T, num_envs)`` float32 scaled rewards
        """
        steps = len(rewards)
        returns = np.empty((steps, self.num_envs))
        current = self.returns
        for t in range(steps):
            current = current * self.gamma + rewards[t]
            returns[t] = current
            current = np.where(dones[t], 0.0, current)
        self.returns = current
        means, variances = np.mean(returns, axis=1), np.var(returns, axis=1)
        scales = np.empty(steps)
        for t in range(steps):
            self.ret_rms.update_from_moments(means[t], variances[t], self.num_envs)
            scales[t] = np.sqrt(self.ret_rms.var + self.epsilon)
        return np.clip(rewards / scales[:, None], -self.clip_reward, self.clip_reward).astype(np.float32)


class DeferredRewardVecNormalize(VecNormalize):
    """``VecNormalize`` above a deferred learned-reward wrapper: observations are
    normalised as usual, rewards (placeholders) pass through untouched and do not feed
    the reward statistics; the wrapper's :class:`ReturnNormalizer` scales the real
    rewards when the rollout is relabelled. Build it with ``norm_reward=False``."""

    def _update_reward(self, reward: np.ndarray) -> None:
        return None


class LearnedRewardVecEnv(VecEnvWrapper):
    """Replaces the reward with the reward model's output; the true reward goes to
    ``info["true_reward"]`` and nowhere else, so the agent never sees it.

    ``step_async`` is overridden only to remember the actions the reward depends on.

    Step by step (``deferred=False``) each step returns the learned reward. Deferred,
    each step returns 0.0 and keeps the observation and action; :meth:`relabel` then
    computes the rewards of every kept step in one call and, with a ``normalizer``,
    scales them as ``VecNormalize(norm_reward=True)`` would have (that ``VecNormalize``
    must then leave rewards alone). Either way the true reward never reaches the agent.

    :param venv: the vectorised env with the true reward
    :param reward_fn: ``(observations (N, *obs), actions (N, *act)) -> rewards (N,)``
    :param deferred: return placeholder zeros and compute rewards in :meth:`relabel`
    :param normalizer: deferred only: the reward scaling to replay over each rollout
    :param prefetch_steps: deferred only: every this many kept steps, start computing
        their rewards in a worker thread (one torch thread) while the rollout goes on,
        so that :meth:`relabel` only waits for the last chunk (0: all at the end). Worth
        it for image models, whose inference is expensive. The chunks are fixed by step
        count, so the rewards do not depend on timing. The reward function must then
        not change during a rollout (``RewardModel.freeze_predictions`` or no training
        until :meth:`relabel`).
    """

    def __init__(
        self,
        venv: VecEnv,
        reward_fn: RewardFn,
        *,
        deferred: bool = False,
        normalizer: ReturnNormalizer | None = None,
        prefetch_steps: int = 0,
    ) -> None:
        super().__init__(venv)
        if normalizer is not None and not deferred:
            raise ValueError("LearnedRewardVecEnv: a normalizer needs deferred=True (else use VecNormalize)")
        if prefetch_steps and not deferred:
            raise ValueError("LearnedRewardVecEnv: prefetch_steps needs deferred=True")
        self.prefetch_steps = max(0, int(prefetch_steps))
        self._executor: ThreadPoolExecutor | None = None
        self._chunks: list[Future[np.ndarray] | np.ndarray] = []
        self._submitted = 0  # kept steps already handed to the worker
        self.reward_fn = reward_fn
        self.deferred = bool(deferred)
        self.normalizer = normalizer
        self._last_obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None
        self._episode_learned = np.zeros(self.num_envs)
        self._pending_obs: list[np.ndarray] = []
        self._pending_actions: list[np.ndarray] = []
        self._pending_dones: list[np.ndarray] = []
        #: learned returns of the most recent finished training episodes
        self.learned_episode_returns: deque[float] = deque(maxlen=100)

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        self._last_obs = np.asarray(obs)
        self._episode_learned[:] = 0.0
        self.discard_pending()
        if self.normalizer is not None:
            self.normalizer.reset()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, true_rewards, dones, infos = self.venv.step_wait()
        assert self._last_obs is not None and self._actions is not None, "step before reset"
        for i, info in enumerate(infos):
            info["true_reward"] = float(true_rewards[i])
        if self.deferred:
            # Copies: the arrays must not change under us until the rollout ends.
            self._pending_obs.append(np.array(self._last_obs, copy=True))
            self._pending_actions.append(np.array(self._actions, copy=True))
            self._pending_dones.append(np.array(dones, dtype=bool, copy=True))
            if self.prefetch_steps and len(self._pending_obs) - self._submitted >= self.prefetch_steps:
                self._submit()
            rewards = np.zeros(self.num_envs, dtype=np.float32)
        else:
            rewards = self._learned(self._last_obs, self._actions)
            self._track_returns(rewards, dones)
        self._last_obs = np.asarray(obs)
        return obs, rewards, dones, infos

    def run_state(self) -> dict[str, Any]:
        """What the wrapper carries from one rollout to the next (for a run checkpoint,
        taken between rollouts: no steps are waiting for relabelling then)."""
        if self._pending_obs:
            raise RuntimeError("LearnedRewardVecEnv.run_state: steps are waiting for relabel(); checkpoint between rollouts")
        return {
            "last_obs": _copy(self._last_obs), "actions": _copy(self._actions),
            "episode_learned": self._episode_learned.copy(),
            "learned_episode_returns": list(self.learned_episode_returns),
            "normalizer": self.normalizer.run_state() if self.normalizer is not None else None,
        }

    def load_run_state(self, state: dict[str, Any]) -> None:
        self.discard_pending()
        self._last_obs, self._actions = _copy(state["last_obs"]), _copy(state["actions"])
        self._episode_learned = np.array(state["episode_learned"], dtype=np.float64)
        self.learned_episode_returns.clear()
        self.learned_episode_returns.extend(state["learned_episode_returns"])
        if self.normalizer is not None and state["normalizer"] is not None:
            self.normalizer.load_run_state(state["normalizer"])

    def _learned(self, observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
        learned = np.asarray(self.reward_fn(observations, actions), dtype=np.float32)
        if not np.all(np.isfinite(learned)):
            raise FloatingPointError("the reward model returned a non-finite reward")
        return learned

    def _track_returns(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        self._episode_learned += rewards
        for i in np.flatnonzero(dones):
            self.learned_episode_returns.append(float(self._episode_learned[i]))
            self._episode_learned[i] = 0.0

    @property
    def pending_steps(self) -> int:
        """Vectorised steps waiting for :meth:`relabel`."""
        return len(self._pending_obs)

    def discard_pending(self) -> None:
        """Forget the kept steps (a rollout was abandoned)."""
        for chunk in self._chunks:
            if isinstance(chunk, Future):
                chunk.result()  # let the worker finish before the arrays go
        self._chunks.clear()
        self._submitted = 0
        self._pending_obs.clear()
        self._pending_actions.clear()
        self._pending_dones.clear()

    def _chunk_rewards(self, start: int, stop: int) -> np.ndarray:
        """``(stop - start, num_envs)`` learned rewards of kept steps ``start:stop``."""
        obs = np.stack(self._pending_obs[start:stop])
        actions = np.stack(self._pending_actions[start:stop])
        steps, n = stop - start, self.num_envs
        return self._learned(
            obs.reshape(steps * n, *obs.shape[2:]), actions.reshape(steps * n, *actions.shape[2:])
        ).reshape(steps, n)

    def _submit(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="prefrl-relabel", initializer=setup_background_thread)
        start, stop = self._submitted, len(self._pending_obs)
        self._chunks.append(self._executor.submit(self._chunk_rewards, start, stop))
        self._submitted = stop

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        super().close()

    def relabel(self) -> np.ndarray:
        """The rewards of every step kept since the last call: one batched reward-model
        call (or, with ``prefetch_steps``, the worker's chunks plus the remainder).

        :return: ``(T, num_envs)`` float32, scaled by the normalizer if there is one
        """
        if not self.deferred:
            raise RuntimeError("LearnedRewardVecEnv.relabel needs deferred=True")
        if not self._pending_obs:
            return np.zeros((0, self.num_envs), dtype=np.float32)
        if self._submitted < len(self._pending_obs):
            self._chunks.append(self._chunk_rewards(self._submitted, len(self._pending_obs)))
        chunks = [c.result() if isinstance(c, Future) else c for c in self._chunks]
        self._chunks.clear()
        learned = np.concatenate(chunks)
        dones = np.stack(self._pending_dones)
        self.discard_pending()
        steps = len(learned)
        for t in range(steps):
            self._track_returns(learned[t], dones[t])
        return self.normalizer(learned, dones) if self.normalizer is not None else learned


class RolloutRelabelCallback(BaseCallback):
    """Writes the learned reward of a whole rollout into PPO's rollout buffer at once.

    The learned-reward wrapper (``deferred=True``) hands PPO placeholder zeros while the
    rollout is collected; at the rollout's end this callback (first in the callback
    list, so before anything reads the buffer) asks the wrapper for the rewards of all
    its steps in one batched ensemble call, adds them to the buffer and recomputes
    returns and advantages with the last values and dones of the rollout.

    *Adds*: SB3 has already added ``gamma * V(terminal observation)`` to the reward of
    every step truncated by the time limit (``collect_rollouts``); on top of the
    placeholder zero that term is exactly what the buffer holds, and it is kept.

    A non-finite learned reward raises the wrapper's ``FloatingPointError`` (the trainer
    stops the run and names the step).

    :param learned_env: the deferred learned-reward wrapper
    """

    def __init__(self, learned_env: LearnedRewardVecEnv) -> None:
        super().__init__()
        if not learned_env.deferred:
            raise PrefrlError("RolloutRelabelCallback needs a LearnedRewardVecEnv with deferred=True")
        self.learned_env = learned_env
        #: seconds spent relabelling (reward-model calls and return recomputation)
        self.seconds = 0.0

    def _on_rollout_start(self) -> None:
        self.learned_env.discard_pending()  # the steps of an abandoned rollout, if any

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        start = time.perf_counter()
        buffer = self.model.rollout_buffer
        rewards = self.learned_env.relabel()
        if rewards.shape != buffer.rewards.shape:
            raise RuntimeError(
                f"relabelling: {rewards.shape[0]} kept steps for a rollout buffer of {buffer.rewards.shape[0]}; "
                "the learned-reward wrapper must be stepped only by PPO's rollout collection"
            )
        buffer.rewards += rewards
        buffer.compute_returns_and_advantage(last_values=self.locals["values"], dones=self.locals["dones"])
        self.seconds += time.perf_counter() - start


def _copy(array: np.ndarray | None) -> np.ndarray | None:
    return None if array is None else np.array(array, copy=True)
