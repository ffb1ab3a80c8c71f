"""Clip pairs to label without a training run (``prefrl clips``): a random or saved policy
acts in the task, its segments are paired and stored in a new clips folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.feedback.schema import STORE_FILE
from prefrl.util.errors import PrefrlError


def collect_clip_pairs(
    preset: Any,
    n_pairs: int,
    out: Path,
    *,
    policy_path: Path | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run a random (or saved) policy, cut ``2 * n_pairs`` segments and store them as
    ``n_pairs`` pairs (each segment in one pair) in a new clips folder.

    :param preset: the task preset
    :param n_pairs: pairs wanted
    :param out: clips folder to create (must not hold pairs yet)
    :param policy_path: an SB3 PPO ``policy.zip``; a ``vecnormalize.pkl`` beside it is applied
    :param seed: seeds the env, the policy's sampling and the pairing
    :param log: where progress lines go
    :return: what was written (also saved as ``clips.json`` in ``out``)
    """
    from stable_baselines3.common.vec_env import DummyVecEnv

    from prefrl.data.recorder import SegmentRecorder
    from prefrl.data.segments import ClipPair, SegmentBuffer
    from prefrl.envs.factory import make_env
    from prefrl.feedback.store import LabelStore
    from prefrl.human.clips import write_clips_info

    task = preset.task
    if (out / STORE_FILE).is_file():
        raise PrefrlError(f"{out} already holds a label store; give a new --out folder")
    if policy_path is not None and not policy_path.is_file():
        raise PrefrlError(f"policy file '{policy_path}' not found; give the policy.zip of a finished run")
    wanted = 2 * n_pairs
    record_frames = task.domain != "mujoco"  # MuJoCo clips carry physics states instead
    venv = DummyVecEnv([lambda: make_env(preset, record_frames=record_frames)])
    venv.seed(seed)
    venv.action_space.seed(seed)
    buffer = SegmentBuffer(task.clip_length, 1, capacity=wanted)
    recorder = SegmentRecorder(venv, buffer, record_frames=record_frames)
    stepper: Any = recorder
    model = None
    if policy_path is not None:
        from stable_baselines3 import PPO
        from stable_baselines3.common.vec_env import VecNormalize

        from prefrl.rundir import RunDir

        try:
            model = PPO.load(policy_path, device="cpu")
        except Exception as exc:  # noqa: BLE001 - SB3 raises many types for a bad file
            raise PrefrlError(f"cannot load policy {policy_path}: {exc}") from None
        normalizer = RunDir(policy_path.parent).vecnormalize_path
        if normalizer.is_file():
            stepper = VecNormalize.load(str(normalizer), recorder)
            stepper.training = False
            stepper.norm_reward = False
        model.set_random_seed(seed)
    obs = stepper.reset()
    max_steps = wanted * task.clip_length * 4 + task.horizon
    steps = 0
    last_report = time.monotonic()
    while len(buffer) < wanted and steps < max_steps:
        if model is not None:
            actions, _ = model.predict(obs, deterministic=False)
        else:
            actions = np.stack([venv.action_space.sample()])
        obs, _, _, _ = stepper.step(actions)
        steps += 1
        if time.monotonic() - last_report > 5.0:
            log(f"  {len(buffer)} / {wanted} clips after {steps} steps")
            last_report = time.monotonic()
    stepper.close()
    if len(buffer) < 2:
        raise PrefrlError(f"only {len(buffer)} clips after {steps} steps; is task.clip_length <= task.horizon?")
    rng = np.random.default_rng(seed)
    segments = list(buffer.segments)
    order = rng.permutation(len(segments))
    pairs = [
        ClipPair(segments[order[2 * k]], segments[order[2 * k + 1]], pair_id=f"c{k:06d}")
        for k in range(len(segments) // 2)
    ]
    out.mkdir(parents=True, exist_ok=True)
    with LabelStore(out, task.name) as store:
        store.add_pairs(pairs)
    summary = {
        "task": task.name, "env_id": task.env_id, "domain": task.domain, "pairs": len(pairs), "env_steps": steps,
        "policy": str(policy_path) if policy_path is not None else "random", "seed": seed,
        "created": datetime.now().isoformat(timespec="seconds"),
        "task_settings": preset.to_dict()["task"],
    }
    write_clips_info(out, summary)
    return summary
