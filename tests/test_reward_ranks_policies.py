"""scripts/reward_ranks_policies.py: finished runs' agents scored by learned rewards."""

import importlib.util
import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO

from prefrl.config.loading import load_preset
from prefrl.config.settings import RewardSettings
from prefrl.envs.factory import make_env
from prefrl.reward.model import RewardModel

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "reward_ranks_policies.py"
spec = importlib.util.spec_from_file_location("reward_ranks_policies", SCRIPT)
probe = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = probe  # the module's dataclass looks itself up there
spec.loader.exec_module(probe)


class KnownReward:
    """A stand-in model whose reward is obs[0] per step."""

    def predict(self, observations, actions):
        return observations[:, 0]


def test_rollout_keeps_what_the_env_gave_and_scores_it_step_by_step():
    env = gym.make("Pendulum-v1", max_episode_steps=7)
    episodes = probe.rollout(env, lambda obs: np.array([0.5], np.float32), episodes=2, seed=3)
    assert [len(e.observations) for e in episodes] == [7, 7] and episodes[0].actions.shape == (7, 1)
    # The same reset seed and actions, stepped by hand: the same first observation and return.
    first, _ = env.reset(seed=3)
    by_hand = sum(float(env.step(np.array([0.5], np.float32))[1]) for _ in range(7))
    assert episodes[0].observations[0] == pytest.approx(first)
    assert episodes[0].true_return == pytest.approx(by_hand)
    assert not np.allclose(episodes[0].observations[0], episodes[1].observations[0])  # seed + i
    expected = np.mean([e.observations[:, 0].sum() for e in episodes])
    assert probe.learned_return(KnownReward(), episodes) == pytest.approx(expected)


def _run(folder: Path, task: str, arm: str, reward_model: bool) -> Path:
    preset = load_preset(task)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"arm": arm, "preset": preset.to_dict()}))
    env = make_env(preset)
    PPO("MlpPolicy", env, n_steps=16, batch_size=16, seed=0, device="cpu").save(folder / "policy.zip")
    if reward_model:
        RewardModel(env.observation_space, env.action_space, RewardSettings(hidden_sizes=(8,)), seed=0).save(
            folder / "reward_model.pt")
    return folder


def test_prints_a_row_per_run_and_a_column_per_judge(tmp_path, capsys):
    learned = _run(tmp_path / "learned", "pendulum", "learned", reward_model=True)
    true = _run(tmp_path / "true", "pendulum", "true", reward_model=False)
    assert probe.main([str(learned), str(true), "--episodes", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Pendulum-v1, 1 episodes per run") and out[1] == f"judge 0: {learned}"
    rows = [line.split() for line in out[3:]]
    assert [row[0] for row in rows] == [str(learned), str(true)] and all(len(row) == 5 for row in rows)
    assert out[2].split()[:4] == ["run", "true", "length", "teacher"]
    assert all(np.isfinite(float(value)) for row in rows for value in row[1:])


def test_bad_input_is_one_line_each_before_any_rollout(tmp_path, capsys):
    learned = _run(tmp_path / "learned", "pendulum", "learned", reward_model=True)
    true = _run(tmp_path / "true", "pendulum", "true", reward_model=False)
    other = _run(tmp_path / "cartpole", "cartpole", "learned", reward_model=True)
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.json").write_text((learned / "config.json").read_text())
    assert probe.main([str(true)]) == 2
    assert probe.main([str(learned), "--judges", str(true)]) == 2
    assert probe.main([str(learned), "--judges", str(other)]) == 2
    assert probe.main([str(learned), str(other)]) == 2
    assert probe.main([str(learned), str(tmp_path / "unfinished")]) == 2
    assert probe.main([str(learned), "--episodes", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 6 and all(line.startswith("reward_ranks_policies: error: ") for line in err)
    for line, expected in zip(err, ["none of the runs has a reward_model.pt", f"'{true}' has no reward_model.pt",
                                    "give a judge of the same task", "several tasks", "has no policy.zip",
                                    "--episodes 0 is invalid"]):
        assert expected in line


def test_learned_returns_are_compared_on_the_training_envs_fixed_horizon():
    """Under the evaluation rules a falling agent's episodes are short; on the training env
    every episode is the horizon long, so a learned reward's sums compare like for like."""
    preset = load_preset("hopper")
    still = lambda obs: np.zeros(3, np.float32)  # noqa: E731 - a hopper that does nothing falls
    evaluation = probe.rollout(make_env(preset, evaluation=True), still, episodes=1, seed=0)
    training = probe.rollout(make_env(preset), still, episodes=1, seed=0)
    assert len(evaluation[0].observations) < preset.task.horizon
    assert len(training[0].observations) == preset.task.horizon
