"""Small synthetic clips and label stores for the viewer and human-teacher tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from prefrl.data.segments import ClipPair, Segment
from prefrl.feedback.store import LabelStore

DRIVER = Path(__file__).resolve().parent / "viewer_driver.py"
REPO = Path(__file__).resolve().parent.parent


def atari_segment(segment_id: str, rng: np.random.Generator, length: int = 4) -> Segment:
    """Atari-like clip: stacked 84x84 observations and raw 210x160 RGB frames.

    Frames are coarse random blocks (not per-pixel noise) so the compressed clip files
    stay small and fast to load, like real game frames.
    """
    blocks = rng.integers(0, 256, size=(length, 21, 16, 3), dtype=np.uint8)
    frames = np.repeat(np.repeat(blocks, 10, axis=1), 10, axis=2)
    return Segment(
        observations=rng.integers(0, 256, size=(length, 4, 84, 84), dtype=np.uint8),
        actions=rng.integers(0, 6, size=length),
        true_rewards=rng.normal(size=length).astype(np.float32),
        after_termination=np.zeros(length, dtype=bool),
        segment_id=segment_id,
        frames=frames,
    )


def vector_segment(segment_id: str, rng: np.random.Generator, length: int = 5, obs_dim: int = 3) -> Segment:
    """Classic-control-like clip: vector observations, discrete actions, no frames."""
    return Segment(
        observations=rng.normal(size=(length, obs_dim)).astype(np.float32),
        actions=rng.integers(0, 2, size=length),
        true_rewards=rng.normal(size=length).astype(np.float32),
        after_termination=np.zeros(length, dtype=bool),
        segment_id=segment_id,
    )


def make_pairs(n_pairs: int, kind: str = "atari", seed: int = 0, prefix: str = "q", first: int = 0) -> list[ClipPair]:
    rng = np.random.default_rng(seed)
    maker = atari_segment if kind == "atari" else vector_segment
    pairs = []
    for k in range(first, first + n_pairs):
        left, right = maker(f"{prefix}s{2 * k:05d}", rng), maker(f"{prefix}s{2 * k + 1:05d}", rng)
        pairs.append(ClipPair(left, right, pair_id=f"{prefix}{k:06d}"))
    return pairs


def make_store(clips_dir: Path, n_pairs: int, kind: str = "atari", task: str = "testtask") -> list[ClipPair]:
    pairs = make_pairs(n_pairs, kind)
    with LabelStore(clips_dir, task) as store:
        store.add_pairs(pairs)
    return pairs


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy", PYTHONPATH=str(REPO))
    return env
