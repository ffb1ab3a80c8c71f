"""scripts/reward_fit_probe.py: the offline check of what the reward model can learn."""

import importlib.util
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from prefrl.config.loading import load_preset

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "reward_fit_probe.py"
spec = importlib.util.spec_from_file_location("reward_fit_probe", SCRIPT)
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)

TINY = ["--labels", "30", "--test-clips", "20", "--set", "labels.initial_labels=10", "--set",
        "labels.pretrain_epochs=5", "--set", "reward.epochs_per_update=2"]


def test_probe_reports_accuracy_and_correlation(capsys, monkeypatch):
    fits = []

    class RecordedModel(probe.RewardModel):
        def train(self, *args, **kwargs):
            stats = super().train(*args, **kwargs)
            fits.append((self, stats))
            return stats

    monkeypatch.setattr(probe, "RewardModel", RecordedModel)
    learnable = ["--labels", "100", "--labels-per-refit", "30", "--test-clips", "50", "--set", "labels.initial_labels=40",
                 "--set", "labels.pretrain_epochs=20", "--set", "reward.epochs_per_update=10"]
    assert probe.main(["pendulum", *learnable]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("pendulum: 100 labels by reward, actions x1: held-out accuracy ")
    accuracy = line.split("held-out accuracy ")[1].split(",")[0]
    corr = float(line.split("return correlation on 50 test clips ")[1].split()[0])
    # The numbers are those of the last fit, and of its model on the held-out clips (seed + 1).
    assert len(fits) == 3  # pretraining on 40 labels, then 2 refits of 30
    model, stats = fits[-1]
    assert accuracy == f"{stats['val_accuracy']:.3f}"
    test = probe.random_clips(gym.make("Pendulum-v1"), 50, load_preset("pendulum").task.clip_length, 1.0, None,
                              False, seed=1)
    predicted = model.segment_returns(test).mean(axis=0)
    assert corr == pytest.approx(np.corrcoef(predicted, [c.true_return for c in test])[0, 1], abs=6e-4)
    # 100 rational labels of random clips teach the model Pendulum's reward.
    assert corr > 0.5


def test_hidden_observations_are_zeros():
    clips = probe.random_clips(gym.make("Pendulum-v1"), 3, 5, 1.0, None, True, seed=0)
    assert all(not c.observations.any() and c.actions.any() for c in clips)


def test_bad_input_is_one_line_and_exit_2(capsys):
    assert probe.main(["pendulum", *TINY, "--reward-part", "nope"]) == 2
    assert probe.main(["pong"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("reward_fit_probe: error: ") for line in err)
    assert "'nope' is not in the env's info" in err[0] and "is an Atari game" in err[1]
