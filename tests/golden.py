"""Digests of fixed-seed runs, to show that a refactoring changed no behaviour.

Runs, through the command line only (so that the same commands hold before and after code
moves): a learned-reward and a true-reward CartPole run of a few thousand steps, and a rollout
of the Pong wrapper chain registered as ``prefrl/Pong``. Prints (or writes with ``--write``) a
JSON of SHA-256 digests: the label store (without wall-clock times) and its clip arrays, the
reward model's tensors, the policy's tensors, ``eval.csv``, and the
Pong observations, rewards and infos.

``tests/test_behaviour_unchanged.py`` recomputes the digests and compares them with
``tests/fixtures/golden_behaviour.json``, recorded with this script before the layout change.
Torch's CPU kernels may round differently on another processor family, so the training digests
are compared only on the processor model they were recorded on; the Pong digest (emulator and
numpy only) is compared everywhere.

Usage: ``python tests/golden.py [--write]``
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import platform
import sqlite3
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "fixtures" / "golden_behaviour.json"

#: A few thousand CartPole steps with several reward refits in the background.
CARTPOLE_SETTINGS = (
    "ppo.total_steps=2048",
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
SEED = 5
PONG_STEPS = 300


def processor() -> str:
    """The processor model: torch's CPU kernels may round differently on another family."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sha(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def _tensor_digest(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``(path, digest)`` of every tensor or array in a nested object, in a stable order."""
    if isinstance(obj, torch.Tensor):
        return [(prefix, _sha(obj.detach().cpu().contiguous().numpy().tobytes()))]
    if isinstance(obj, np.ndarray):
        return [(prefix, _sha(np.ascontiguousarray(obj).tobytes()))]
    if isinstance(obj, dict):
        return [row for key in sorted(obj, key=str) for row in _tensor_digest(obj[key], f"{prefix}.{key}")]
    if isinstance(obj, (list, tuple)):
        return [row for i, value in enumerate(obj) for row in _tensor_digest(value, f"{prefix}[{i}]")]
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return [(prefix, _sha(repr(obj).encode()))]
    return []


def store_digest(clips_dir: Path) -> str:
    """The label store's clips, pairs and labels (no times) and every clip's arrays."""
    conn = sqlite3.connect(clips_dir / "labels.sqlite")
    try:
        rows = [
            conn.execute("SELECT clip_id, path, length, true_return FROM clips ORDER BY clip_id").fetchall(),
            conn.execute("SELECT pair_id, left_clip, right_clip, status FROM pairs ORDER BY pair_id").fetchall(),
            conn.execute("SELECT label_id, pair_id, choice, labeller FROM labels ORDER BY label_id").fetchall(),
        ]
    finally:
        conn.close()
    parts = [repr(rows).encode()]
    for _, path, _, _ in rows[0]:
        with np.load(clips_dir / path) as data:
            for name in sorted(data.files):
                parts.append(name.encode() + data[name].tobytes())
    return _sha(*parts)


def policy_digest(run_dir: Path) -> str:
    """The tensors of the policy (and its optimizer) inside SB3's ``policy.zip``."""
    parts = []
    with zipfile.ZipFile(run_dir / "policy.zip") as archive:
        for member in sorted(archive.namelist()):
            if member.endswith(".pth"):
                state = torch.load(io.BytesIO(archive.read(member)), weights_only=True)
                parts.append(repr(_tensor_digest(state, member)).encode())
    return _sha(*parts)


def eval_digest(run_dir: Path) -> str:
    with open(run_dir / "eval.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))  # step, returns, episodes, lengths: no wall-clock column
    return _sha(json.dumps(rows, sort_keys=True).encode())


def train_run(root: Path, arm: str) -> dict[str, str]:
    """One CartPole run through ``prefrl train``; the digests of what it leaves."""
    run_dir, clips_dir = root / arm, root / f"{arm}_clips"
    command = [sys.executable, "-m", "prefrl.cli", "train", "cartpole", "--reward", arm, "--seed", str(SEED),
               "--run-dir", str(run_dir), "--clips-dir", str(clips_dir), "--no-progress"]
    for setting in CARTPOLE_SETTINGS:
        command += ["--set", setting]
    subprocess.run(command, check=True, cwd=root, stdout=subprocess.DEVNULL)
    digests = {"policy": policy_digest(run_dir), "eval_csv": eval_digest(run_dir)}
    if arm == "learned":
        digests["labels"] = store_digest(clips_dir)
        digests["reward_model"] = _sha(repr(_tensor_digest(
            torch.load(run_dir / "reward_model.pt", weights_only=True))).encode())
    return digests


def pong_digest() -> str:
    """A rollout of the registered Pong task: observations, rewards, terminations, infos."""
    code = (
        "import hashlib, gymnasium as gym, numpy as np, prefrl.envs.factory\n"
        "env = gym.make('prefrl/Pong')\n"
        "h = hashlib.sha256()\n"
        "obs, info = env.reset(seed=11)\n"
        "h.update(np.asarray(obs).tobytes())\n"
        "rng = np.random.default_rng(11)\n"
        f"for _ in range({PONG_STEPS}):\n"
        "    obs, r, term, trunc, info = env.step(int(rng.integers(env.action_space.n)))\n"
        "    h.update(np.asarray(obs).tobytes() + repr((float(r), term, trunc, sorted(\n"
        "        (k, repr(v)) for k, v in info.items()))).encode())\n"
        "    if term or trunc:\n"
        "        obs, info = env.reset()\n"
        "print(h.hexdigest())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return result.stdout.strip().splitlines()[-1]


def record() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        return {
            "processor": processor(),
            "torch": torch.__version__,
            "learned": train_run(root, "learned"),
            "true": train_run(root, "true"),
            "pong": pong_digest(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {GOLDEN.relative_to(ROOT)}")
    args = parser.parse_args()
    digests = record()
    text = json.dumps(digests, indent=2, sort_keys=True) + "\n"
    if args.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
