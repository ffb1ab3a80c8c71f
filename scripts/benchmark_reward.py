"""Measure the reward ensembles' CPU cost: training throughput and inference per step.

Atari: the paper's CNN, 3 members, on 25-step clip pairs of (4, 84, 84) uint8 stacks:
training in label pairs per second (each pair seen by every member) with all frames
or 8 random frames per clip, with and without channels-last memory format; inference
per vectorised step of 8 envs, called step by step or on a 1,024-frame rollout.
MuJoCo: the 2 x 64 MLP on HalfCheetah-sized inputs (17 obs, 6 actions, 30-step clips).

Usage: ``python scripts/benchmark_reward.py [--threads 2] [--quick]``
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time

import numpy as np
import torch
from gymnasium import spaces

from prefrl.config.settings import RewardSettings
from prefrl.data.segments import ClipPair, Segment
from prefrl.feedback.choices import Choice, Preference
from prefrl.reward.model import RewardModel


def random_prefs(
    rng: np.random.Generator, n: int, length: int, obs_shape: tuple[int, ...], image: bool, action_dim: int | None
) -> list[Preference]:
    """``n`` labelled pairs of random clips (the content does not change the cost)."""

    def segment() -> Segment:
        if image:
            obs = rng.integers(0, 256, size=(length, *obs_shape), dtype=np.uint8)
        else:
            obs = rng.normal(size=(length, *obs_shape)).astype(np.float32)
        if action_dim is None:
            actions = rng.integers(0, 6, size=length)
        else:
            actions = rng.uniform(-1, 1, size=(length, action_dim)).astype(np.float32)
        return Segment(obs, actions, rng.normal(size=length).astype(np.float32), np.zeros(length, bool))

    return [
        Preference(ClipPair(segment(), segment()), Choice.LEFT if rng.random() < 0.5 else Choice.RIGHT)
        for _ in range(n)
    ]


def training_rate(model: RewardModel, repeats: int) -> float:
    """Label pairs per second of one epoch alone (no evaluation), best of ``repeats``.

    Best-of rather than mean: on a shared machine other processes only ever slow a
    measurement down.
    """
    model.train(1)  # warm-up (allocator, oneDNN kernel selection)
    best = min(model.train(1)["fit_seconds"] for _ in range(repeats))
    return model.n_train / best


def inference_ms_per_vec_step(
    model: RewardModel, obs: np.ndarray, actions: np.ndarray | None, n_envs: int, batched: bool, repeats: int = 3
) -> float:
    """Milliseconds of reward prediction per vectorised step of ``n_envs`` envs (best of ``repeats``)."""
    model.predict(obs[:n_envs], None if actions is None else actions[:n_envs])  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        if batched:
            model.predict(obs, actions)
        else:
            for i in range(0, len(obs), n_envs):
                model.predict(obs[i : i + n_envs], None if actions is None else actions[i : i + n_envs])
        best = min(best, time.perf_counter() - start)
    return 1000 * best / (len(obs) / n_envs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="fewer pairs and frames (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows: list[tuple[str, str, str]] = []

    # ---- Atari CNN
    atari_space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    n_pairs = 24 if args.quick else 64
    atari_prefs = random_prefs(rng, n_pairs, 25, (4, 84, 84), image=True, action_dim=None)
    base = RewardSettings(
        architecture="atari_cnn", ensemble_size=3, batch_size=16, output_std=0.05, validation_fraction=0.0
    )
    variants = [
        ("all 25 frames", base, True),
        ("all 25 frames", base, False),
        ("8 of 25 frames", dataclasses.replace(base, frames_per_clip=8), True),
        ("8 of 25 frames", dataclasses.replace(base, frames_per_clip=8), False),
        ("all frames, no BN/dropout", dataclasses.replace(base, batch_norm=False, dropout=0.0), True),
    ]
    for label, settings, channels_last in variants:
        # cache_bytes=0: minibatches are copied out of the segments, as in a real Atari
        # run, whose thousands of labelled clips are far above the cache limit.
        model = RewardModel(
            atari_space, spaces.Discrete(6), settings, seed=0, channels_last=channels_last, cache_bytes=0
        )
        model.add_preferences(atari_prefs)
        rate = training_rate(model, repeats=2 if args.quick else 3)
        fmt = "channels_last" if channels_last else "contiguous"
        rows.append(("CNN x3 train, batch 16", f"{label}, {fmt}", f"{rate:8.1f} pairs/s"))

    frames = 256 if args.quick else 1024
    obs = rng.integers(0, 256, size=(frames, 4, 84, 84), dtype=np.uint8)
    for channels_last in (True, False):
        model = RewardModel(atari_space, spaces.Discrete(6), base, seed=0, channels_last=channels_last)
        fmt = "channels_last" if channels_last else "contiguous"
        step = inference_ms_per_vec_step(model, obs, None, 8, batched=False)
        batch = inference_ms_per_vec_step(model, obs, None, 8, batched=True)
        rows.append(("CNN x3 predict, 8 envs", f"step by step, {fmt}", f"{step:8.2f} ms/vec step"))
        rows.append(
            ("CNN x3 predict, 8 envs", f"{frames}-frame rollout at once, {fmt}", f"{batch:8.2f} ms/vec step")
        )

    # ---- MuJoCo MLP (HalfCheetah-v5: 17 obs, 6 actions; 1.5 s = 30 steps)
    obs_space = spaces.Box(-np.inf, np.inf, (17,), np.float64)
    act_space = spaces.Box(-1, 1, (6,), np.float32)
    mlp_prefs = random_prefs(rng, 200 if args.quick else 700, 30, (17,), image=False, action_dim=6)
    mlp_settings = RewardSettings(architecture="mlp", ensemble_size=3, batch_size=64, validation_fraction=0.0)
    model = RewardModel(obs_space, act_space, mlp_settings, seed=0)
    model.add_preferences(mlp_prefs)
    rate = training_rate(model, repeats=3)
    rows.append(("MLP x3 train, batch 64", "30-step clips, all frames", f"{rate:8.0f} pairs/s"))
    steps = 2048
    obs = rng.normal(size=(steps, 17))
    acts = rng.uniform(-1, 1, size=(steps, 6)).astype(np.float32)
    step = inference_ms_per_vec_step(model, obs, acts, 8, batched=False)
    batch = inference_ms_per_vec_step(model, obs, acts, 8, batched=True)
    rows.append(("MLP x3 predict, 8 envs", "step by step", f"{step:8.3f} ms/vec step"))
    rows.append(("MLP x3 predict, 8 envs", f"{steps}-step rollout at once", f"{batch:8.3f} ms/vec step"))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {load:.2f} (other processes slow every figure down)"
    )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    header = ("what", "variant", "cost")
    widths = [max(w, len(h)) for w, h in zip(widths, header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
