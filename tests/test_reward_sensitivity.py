"""scripts/reward_sensitivity.py: what a run's learned reward pays for."""

import importlib.util
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from prefrl.config.loading import load_preset
from prefrl.config.settings import RewardSettings
from prefrl.reward.model import RewardModel

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "reward_sensitivity.py"
spec = importlib.util.spec_from_file_location("reward_sensitivity", SCRIPT)
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


class KnownReward:
    """A stand-in model whose reward is -|a|^2 + 2 x obs[0]."""

    def predict(self, observations, actions):
        return -np.square(actions).sum(axis=1) + 2.0 * observations[:, 0]


def test_rows_follow_the_reward_term_by_term():
    states = np.zeros((4, 3), np.float32)
    by_action, by_dimension = probe.sensitivity(KnownReward(), states, (1,), [-2.0, 0.0, 1.0], [-1.0, 0.5])
    assert by_action == pytest.approx([-4.0, 0.0, -1.0])
    assert by_dimension == [pytest.approx([-2.0, 1.0]), pytest.approx([0.0, 0.0]), pytest.approx([0.0, 0.0])]


def test_prints_a_saved_model_and_refuses_a_folder_without_one(tmp_path, capsys):
    env = gym.make("Pendulum-v1")
    RewardModel(env.observation_space, env.action_space, RewardSettings(hidden_sizes=(8,)), seed=0).save(
        tmp_path / "reward_model.pt")
    (tmp_path / "config.json").write_text(json.dumps({"preset": load_preset("pendulum").to_dict()}))
    assert probe.main([str(tmp_path), "--states", "5", "--values", "0", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Pendulum-v1, 5 start states") and len(out) == 3 + 1 + 3
    assert probe.main([str(tmp_path / "missing")]) == 2
    (tmp_path / "reward_model.pt").unlink()
    assert probe.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("reward_sensitivity: error: ") for line in err)
    assert "is not a run directory (no config.json)" in err[0] and "no reward_model.pt" in err[1]
