"""scripts/reward_fit_probe.py: the offline check of what the reward model can learn."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "reward_fit_probe.py"
spec = importlib.util.spec_from_file_location("reward_fit_probe", SCRIPT)
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)

TINY = ["--labels", "30", "--test-clips", "20", "--set", "labels.initial_labels=10", "--set",
        "labels.pretrain_epochs=5", "--set", "reward.epochs_per_update=2"]


def test_probe_reports_accuracy_and_correlation(capsys):
    assert probe.main(["pendulum", *TINY]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("pendulum: 30 labels by reward, actions x1: held-out accuracy ")
    corr = float(line.split("return correlation on 20 test clips ")[1].split()[0])
    assert -1 <= corr <= 1


def test_hidden_observations_are_zeros():
    import gymnasium as gym

    clips = probe.random_clips(gym.make("Pendulum-v1"), 3, 5, 1.0, None, True, seed=0)
    assert all(not c.observations.any() and c.actions.any() for c in clips)


def test_bad_input_is_one_line_and_exit_2(capsys):
    assert probe.main(["pendulum", *TINY, "--reward-part", "nope"]) == 2
    assert probe.main(["pong"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("reward_fit_probe: error: ") for line in err)
    assert "'nope' is not in the env's info" in err[0] and "is an Atari game" in err[1]
