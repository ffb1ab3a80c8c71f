"""The learned-reward wrapper hides the true reward; the recorder cuts segments."""

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv

from prefrl.data.recorder import SegmentRecorder
from prefrl.data.segments import SegmentBuffer
from prefrl.reward.vec_env import LearnedRewardVecEnv


def _venv(n: int = 2) -> DummyVecEnv:
    venv = DummyVecEnv([lambda: gym.make("Pendulum-v1") for _ in range(n)])
    venv.seed(0)
    return venv


def test_learned_reward_replaces_true_reward_and_keeps_it_in_info():
    seen = []

    def reward_fn(obs, actions):
        seen.append((obs.copy(), actions.copy()))
        return np.full(len(obs), 7.0)

    venv = LearnedRewardVecEnv(_venv(), reward_fn)
    obs = venv.reset()
    actions = np.array([[0.5], [-0.5]], dtype=np.float32)
    _, rewards, _, infos = venv.step(actions)
    np.testing.assert_array_equal(rewards, [7.0, 7.0])
    true = [info["true_reward"] for info in infos]
    assert all(t < 0 for t in true)  # Pendulum's true reward is a cost, never 7
    # the reward is computed on the observation the action was taken on, and that action
    np.testing.assert_array_equal(seen[0][0], obs)
    np.testing.assert_array_equal(seen[0][1], actions)


def test_learned_episode_returns_are_tracked():
    venv = LearnedRewardVecEnv(_venv(1), lambda o, a: np.ones(len(o)))
    venv.reset()
    for _ in range(200):  # Pendulum's episodes are 200 steps
        venv.step(np.zeros((1, 1), dtype=np.float32))
    assert list(venv.learned_episode_returns) == [200.0]


def test_recorder_records_true_rewards_below_the_learned_reward():
    buffer = SegmentBuffer(clip_length=10, n_envs=2, capacity=100)
    recorder = SegmentRecorder(_venv(), buffer)
    venv = LearnedRewardVecEnv(recorder, lambda o, a: np.zeros(len(o)))
    venv.reset()
    true_sum = 0.0
    for _ in range(10):
        _, _, _, infos = venv.step(np.zeros((2, 1), dtype=np.float32))
        true_sum += sum(info["true_reward"] for info in infos)
    assert len(buffer) == 2
    assert sum(s.true_return for s in buffer) == np.float32(true_sum) or abs(
        sum(s.true_return for s in buffer) - true_sum) < 1e-3
    assert recorder.num_steps == 20
