"""Tiny end-to-end runs of both arms and the comparison (same seed, same run: test_determinism.py)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from prefrl.analysis.report import compare
from prefrl.config.loading import load_preset
from prefrl.rundir import RunPaths
from prefrl.training.run import train

TINY = (
    "ppo.total_steps=1024",
    "ppo.n_steps=256",
    "ppo.batch_size=64",
    "ppo.n_epochs=2",
    "labels.budget=30",
    "labels.initial_labels=10",
    "labels.pretrain_epochs=3",
    "reward.epochs_per_update=2",
    "eval.every_steps=512",
    "eval.episodes=1",
)


def _run(tmp_path: Path, arm: str, name: str, seed: int = 0, extra: tuple[str, ...] = ()) -> Path:
    preset = load_preset("pendulum", list(TINY + extra))
    run_dir = tmp_path / name
    train(preset, arm=arm, seed=seed, paths=RunPaths(run_dir, run_dir / "clips"), progress=False)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run per arm; the learned one caps each refit during RL at one minibatch
    (reward.max_pairs_per_update=1), which only the refit test below looks at."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "learned": _run(root, "learned", "learned_a", extra=("reward.max_pairs_per_update=1",)),
        "true": _run(root, "true", "true_a"),
    }


def test_run_directory_contents(runs):
    learned, true = runs["learned"], runs["true"]
    for run_dir in (learned, true):
        for name in ("config.json", "eval.csv", "policy.zip", "summary.json"):
            assert (run_dir / name).is_file(), name
        assert (run_dir / "logs" / "progress.csv").is_file()
        assert any((run_dir / "logs").glob("events.out.tfevents*"))
        summary = json.loads((run_dir / "summary.json").read_text())
        for key in ("task", "arm", "seed", "env_steps", "labels_used", "final_true_return", "wall_seconds"):
            assert key in summary
        assert summary["env_steps"] >= 1024
        with open(run_dir / "eval.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert {"step", "mean_true_return", "std_true_return", "episodes"} <= set(rows[0])
        assert int(rows[-1]["step"]) == summary["env_steps"]
        config = json.loads((run_dir / "config.json").read_text())
        assert config["preset"]["ppo"]["total_steps"] == 1024
    assert (learned / "reward_model.pt").is_file()
    assert not (true / "reward_model.pt").exists()
    summary = json.loads((learned / "summary.json").read_text())
    assert 10 <= summary["labels_used"] <= 30
    labels = (learned / "labels.jsonl").read_text().splitlines()
    assert len(labels) == summary["labels_used"]
    progress = (learned / "logs" / "progress.csv").read_text().splitlines()[0]
    for key in ("reward/val_accuracy", "labels/used", "rollout/learned_ep_return", "rollout/ep_rew_mean"):
        assert key in progress, key


def test_compare_writes_plot_and_table(runs, tmp_path):
    rows, table = compare([runs["learned"], runs["true"]], tmp_path)
    assert (tmp_path / "comparison.png").stat().st_size > 1000
    text = (tmp_path / "comparison.md").read_text()
    assert "| pendulum | true |" in text and "learned (30 labels)" in text
    arms = {r.arm: r for r in rows}
    assert arms["learned"].ratio == pytest.approx(arms["learned"].mean_return / arms["true"].mean_return)
    assert np.isfinite(arms["true"].mean_return)


def test_refuses_to_overwrite_a_run(runs):
    from prefrl.util.errors import PrefrlError

    preset = load_preset("pendulum", list(TINY))
    with pytest.raises(PrefrlError, match="already holds a run"):
        train(preset, arm="true", paths=RunPaths(runs["true"], runs["true"] / "clips"), progress=False)


def test_refits_respect_max_pairs_per_update_and_pretraining_does_not(runs):
    """reward.max_pairs_per_update=1: each refit during RL is one minibatch; the
    pretraining on the initial labels (3 epochs) is not capped."""
    run_dir = runs["learned"]
    assert json.loads((run_dir / "config.json").read_text())["preset"]["reward"]["max_pairs_per_update"] == 1
    with open(run_dir / "logs" / "progress.csv") as fh:
        steps = [float(row["reward/steps"]) for row in csv.DictReader(fh) if row.get("reward/steps")]
    assert steps[0] > 1  # the pretraining's statistics, logged at the first rollout
    assert steps[-1] == 1 and 1 in steps


def test_atari_learned_arm_end_to_end(tmp_path):
    """Pong through the whole Atari path: AleVectorEnv, the paper's CNN ensemble on 8 of
    25 frames, lagged refits beside PPO capped at one minibatch, uncapped pretraining."""
    tiny = ["ppo.total_steps=1024", "ppo.n_envs=2", "ppo.n_steps=128", "ppo.batch_size=64", "ppo.n_epochs=1",
            "labels.budget=12", "labels.initial_labels=6", "labels.pretrain_epochs=3",
            "labels.update_every_steps=256", "labels.segment_buffer_size=40", "labels.rate_constant=500",
            "eval.every_steps=1024", "eval.episodes=1", "eval.max_episode_steps=100",
            "reward.batch_size=4", "reward.max_pairs_per_update=4"]
    preset = load_preset("pong", tiny)
    assert (preset.ppo.vec_env, preset.reward.architecture, preset.reward.fit_mode) == ("ale", "atari_cnn", "lagged")
    assert preset.reward.frames_per_clip == 8
    run_dir = tmp_path / "pong"
    summary = train(preset, arm="learned", seed=0, paths=RunPaths(run_dir, run_dir / "clips"), progress=False)
    assert summary["labels_used"] == 12 and summary["reward_fitting"]["fits"] >= 2
    with open(run_dir / "logs" / "progress.csv") as fh:
        steps = [float(row["reward/steps"]) for row in csv.DictReader(fh) if row.get("reward/steps")]
    assert steps[0] == 3  # pretraining: 3 epochs of the 4 training labels, one minibatch each
    assert steps[-1] == 1  # a refit of 8 training labels x 10 epochs, capped at 4 pairs
    assert (run_dir / "reward_model.pt").is_file()


def test_ppo_policy_settings_reach_the_policy():
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from prefrl.envs.factory import make_env
    from prefrl.training.ppo import policy_kwargs

    def policy(*overrides: str):
        preset = load_preset("pendulum", list(overrides))
        venv = DummyVecEnv([lambda: make_env(preset)])
        try:
            return PPO(preset.ppo.policy, venv, n_steps=64, batch_size=32,
                       policy_kwargs=policy_kwargs(preset.ppo), device="cpu", seed=0).policy
        finally:
            venv.close()

    default = policy()  # SB3's own defaults: std 1, tanh, orthogonal init
    assert torch.allclose(default.log_std, torch.zeros_like(default.log_std))
    assert isinstance(default.mlp_extractor.policy_net[1], torch.nn.Tanh) and default.ortho_init
    zoo = policy("ppo.log_std_init=-2", "ppo.activation=relu", "ppo.ortho_init=false")
    assert torch.allclose(zoo.log_std, torch.full_like(zoo.log_std, -2.0))
    assert isinstance(zoo.mlp_extractor.policy_net[1], torch.nn.ReLU) and not zoo.ortho_init


def test_the_rollout_buffer_never_holds_the_true_reward(tmp_path, monkeypatch):
    """Inside a real learned-arm train(): at every PPO update the rollout buffer's rewards
    are the learned ones, not the env's (which stay in ``info["true_reward"]``)."""
    from stable_baselines3 import PPO

    from prefrl.reward.vec_env import LearnedRewardVecEnv

    true_rewards: list[np.ndarray] = []
    real_step_wait = LearnedRewardVecEnv.step_wait

    def step_wait(self):
        obs, rewards, dones, infos = real_step_wait(self)
        true_rewards.append(np.array([info["true_reward"] for info in infos]))
        return obs, rewards, dones, infos

    updates: list[tuple[np.ndarray, np.ndarray]] = []
    real_update = PPO.train

    def update(self):
        n = self.rollout_buffer.buffer_size
        updates.append((self.rollout_buffer.rewards.copy(), np.stack(true_rewards[-n:])))
        return real_update(self)

    monkeypatch.setattr(LearnedRewardVecEnv, "step_wait", step_wait)
    monkeypatch.setattr(PPO, "train", update)
    _run(tmp_path, "learned", "learned")
    assert len(updates) >= 3
    for buffered, true in updates:
        assert buffered.shape == true.shape
        assert (true < 0).all(), "Pendulum's true reward is negative at every step"
        assert not np.isclose(buffered, true).any(), "a true reward reached PPO's rollout buffer"
        assert buffered.std() > 0, "the learned rewards were written in (not the placeholder zeros)"
