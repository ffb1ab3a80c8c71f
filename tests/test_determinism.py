"""Same seed, same settings, same CPU: identical labels, reward-model weights and
evaluation returns, with train()'s defaults (reward refits in a background thread while
PPO collects the next rollout, learned rewards relabelled once per rollout).

The background fit races the rollout collection on purpose: if anything the agent sees
depended on how far the fit had got when it looked, two runs would differ here.
"""

from __future__ import annotations

import hashlib
import sqlite3
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from prefrl.config.loading import load_preset
from prefrl.rundir import RunPaths
from prefrl.training.run import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_fixtures import eval_rows, tensors  # noqa: E402

#: CartPole: discrete actions, a termination penalty and resets in place, so clips mix
#: falls and upright steps. Several update rounds (every 256 steps over 1536) make the
#: background fit overlap rollouts several times; the whole test takes ~15 s.
OVERRIDES = (
    "ppo.total_steps=1536",
    "ppo.n_steps=256",
    "ppo.batch_size=64",
    "ppo.n_epochs=2",
    "labels.budget=40",
    "labels.initial_labels=10",
    "labels.pretrain_epochs=3",
    "labels.update_every_steps=256",
    "labels.rate_constant=1000",
    "reward.epochs_per_update=3",
    "eval.every_steps=512",
    "eval.episodes=2",
)


def _train(root: Path, name: str, seed: int) -> Path:
    """One learned-reward run with train()'s default fit and relabel modes.

    :param root: folder of the run and its clips
    :param name: the run's folder name
    :param seed: the run's seed
    :return: the run directory
    """
    preset = load_preset("cartpole", list(OVERRIDES))
    run_dir = root / name
    train(preset, arm="learned", seed=seed, paths=RunPaths(run_dir, root / f"{name}_clips"), progress=False)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("determinism")
    return {"a": _train(root, "a", seed=3), "b": _train(root, "b", seed=3), "other_seed": _train(root, "c", seed=4)}


def _store_contents(clips_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Everything in a label store except wall-clock times, plus a digest of each clip's arrays.

    :param clips_dir: the run's clips folder
    """
    conn = sqlite3.connect(clips_dir / "labels.sqlite")
    try:
        contents = {
            "clips": conn.execute("SELECT clip_id, path, length, true_return FROM clips ORDER BY clip_id").fetchall(),
            "pairs": conn.execute("SELECT pair_id, left_clip, right_clip, status FROM pairs ORDER BY pair_id").fetchall(),
            "labels": conn.execute("SELECT label_id, pair_id, choice, labeller FROM labels ORDER BY label_id").fetchall(),
        }
    finally:
        conn.close()
    digests = []
    for clip_id, path, _, _ in contents["clips"]:
        with np.load(clips_dir / path) as data:
            digest = hashlib.sha256()
            for name in sorted(data.files):
                digest.update(name.encode() + data[name].tobytes())
        digests.append((clip_id, digest.hexdigest()))
    contents["clip_arrays"] = digests
    return contents


def test_same_seed_gives_the_same_labels(runs: dict[str, Path]) -> None:
    a, b = runs["a"], runs["b"]
    store_a, store_b = _store_contents(a.parent / "a_clips"), _store_contents(b.parent / "b_clips")
    assert len(store_a["labels"]) >= 20, "too few labels for the comparison to mean much"
    for table in ("clips", "pairs", "labels", "clip_arrays"):
        assert store_a[table] == store_b[table], table
    # The exported copy in the run folder too (its times are wall clock: compare the rest).
    assert (a / "labels.jsonl").read_text().count("\n") == len(store_a["labels"])
    strip = [line.split(', "time"')[0] for line in (a / "labels.jsonl").read_text().splitlines()]
    assert strip == [line.split(', "time"')[0] for line in (b / "labels.jsonl").read_text().splitlines()]


def test_same_seed_gives_the_same_reward_model(runs: dict[str, Path]) -> None:
    state_a = torch.load(runs["a"] / "reward_model.pt", weights_only=True)
    state_b = torch.load(runs["b"] / "reward_model.pt", weights_only=True)
    tensors_a, tensors_b = dict(tensors(state_a)), dict(tensors(state_b))
    assert tensors_a.keys() == tensors_b.keys()
    assert any(key.startswith(".net.") for key in tensors_a)
    for key in tensors_a:
        assert torch.equal(tensors_a[key], tensors_b[key]), key
    # Weights are bit-identical; so is the rest of the checkpoint (L2 strength, counters).
    assert state_a["l2"] == state_b["l2"] and state_a["train_calls"] == state_b["train_calls"]
    assert state_a["train_calls"] >= 3, "the run should have refitted in the background several times"


def test_same_seed_gives_the_same_evaluation_returns(runs: dict[str, Path]) -> None:
    rows_a, rows_b = eval_rows(runs["a"]), eval_rows(runs["b"])
    assert len(rows_a) >= 4  # step 0, every 512 steps, and the end
    assert rows_a == rows_b
    assert all(np.isfinite(float(row["mean_true_return"])) for row in rows_a)


def test_another_seed_gives_other_labels(runs: dict[str, Path]) -> None:
    """The comparisons above are not vacuous: the seed does reach labels and weights."""
    root = runs["a"].parent
    assert _store_contents(root / "a_clips")["clip_arrays"] != _store_contents(root / "c_clips")["clip_arrays"]
    state_a = torch.load(runs["a"] / "reward_model.pt", weights_only=True)
    state_c = torch.load(runs["other_seed"] / "reward_model.pt", weights_only=True)
    first = next(key for key, _ in tensors(state_a) if key.startswith(".net."))
    assert not torch.equal(dict(tensors(state_a))[first], dict(tensors(state_c))[first])
