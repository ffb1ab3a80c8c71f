"""The learning-quality benchmark's plan (tasks x seeds x arms, as :class:`RunSpec` s) and
its random-policy baseline; the protocol itself is :mod:`prefrl.analysis.quality_protocol`.

Runs go to ``<out>/<task>/<setting>/<arm>/seed<k>/`` (arm = ``true`` | ``learned-<budget>``),
``<setting>`` being ``<steps>steps`` plus a short hash of any ``--set`` overrides.

For every task the plan also measures a uniform-random policy's true return on the
evaluation env (the task's real rules); it is the zero of the normalised score
``(learned - random) / (true - random)``, the Atari quality measure.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.analysis.quality_protocol import (
    atari_label_budget,
    default_steps,
    run_overrides,
    setting_name,
)
from prefrl.config.loading import load_preset
from prefrl.config.settings import Preset
from prefrl.experiments.sweep import RunSpec, arm_name
from prefrl.util.errors import PrefrlError

#: Keys that name the run folders: the plan sets them (``--steps``, ``--labels``), not ``--set``.
PLAN_KEYS = ("ppo.total_steps", "labels.budget")


def build_plan(
    tasks: Sequence[str],
    seeds: Sequence[int],
    budgets: Sequence[int],
    out: Path,
    *,
    steps: int | None = None,
    atari_budgets: Sequence[int] | None = None,
    user_overrides: Sequence[str] = (),
) -> list[RunSpec]:
    """tasks x seeds x (true arm + learned arm per budget), in that order (a task's
    seeds finish before the next task starts, so partial plans give whole tasks).

    :param steps: env steps of every run (default: the protocol's per-task table)
    :param budgets: label budgets of the MuJoCo/classic tasks
    :param atari_budgets: label budgets of Atari tasks (default: the scaled paper budget)
    :param user_overrides: ``--set`` items applied after the plan's own settings
    :raises PrefrlError: an unknown task, a bad override, one of :data:`PLAN_KEYS` in
        ``user_overrides``, or a run named twice
    """
    for item in user_overrides:
        key = item.partition("=")[0].strip()
        if key in PLAN_KEYS:
            raise PrefrlError(f"--set {item!r}: use --steps / --labels for {key}, they name the run folders")
    plan: list[RunSpec] = []
    for task in tasks:
        base = load_preset(task, list(user_overrides))  # validates the task name and overrides early
        name = base.task.name
        n_steps = steps if steps is not None else default_steps(name, base)
        if base.task.domain == "atari":
            task_budgets = list(atari_budgets) if atari_budgets else [atari_label_budget(n_steps, base.task.frame_skip)]
        else:
            task_budgets = list(budgets)
        folder = Path(name) / setting_name(n_steps, user_overrides)
        for seed in seeds:
            for arm, budget in [("true", 0)] + [("learned", b) for b in task_budgets]:
                arm_dir = arm_name(arm, budget)
                plan.append(RunSpec.create(f"{name}/{arm_dir}/seed{seed}", name, arm, seed, budget,
                                           run_overrides(base, n_steps, arm, budget, user_overrides),
                                           out, folder / arm_dir / f"seed{seed}"))
    dirs = [s.run_dir for s in plan]
    if len(set(dirs)) != len(dirs):
        raise PrefrlError("the plan names the same run twice; give each task, seed and budget once")
    return plan


def lift_overrides(overrides: Sequence[str], steps: int | None, budgets: Sequence[int]
                   ) -> tuple[list[str], int | None, list[int]]:
    """``--set ppo.total_steps=N`` / ``--set labels.budget=N`` mean ``--steps N`` /
    ``--labels N``: steps and budgets name the run folders, so they are plan settings.

    :return: ``(the other overrides, steps, budgets)``
    :raises PrefrlError: such an item's value is not a whole number
    """
    kept, budgets = [], list(budgets)
    for item in overrides:
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in PLAN_KEYS:
            kept.append(item)
            continue
        try:
            number = int(value.strip().replace("_", ""))
        except ValueError:
            raise PrefrlError(f"--set {item!r}: {key} must be a whole number") from None
        if key == "ppo.total_steps":
            steps = number
        else:
            budgets = [number]
    return kept, steps, budgets


def setting_folder(spec: RunSpec) -> Path:
    """``<out>/<task>/<setting>``: the folder of the runs sharing ``spec``'s settings."""
    return spec.run_dir.parent.parent


def write_setting_files(plan: Sequence[RunSpec], user_overrides: Sequence[str]) -> None:
    """``setting.json`` in each ``<task>/<setting>`` folder: what its runs share."""
    seen: set[Path] = set()
    for spec in plan:
        folder = setting_folder(spec)
        if folder in seen:
            continue
        seen.add(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = {"task": spec.task, "steps": spec.steps, "overrides": list(user_overrides)}
        (folder / "setting.json").write_text(json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------- random policy


def measure_random_policy(preset: Preset, episodes: int, seed: int = 12_345) -> dict[str, Any]:
    """True return of a uniformly random policy on the task's evaluation env (real
    termination rules and time limit, true reward), over ``episodes`` episodes."""
    from prefrl.envs.factory import make_env

    env = make_env(preset, evaluation=True)
    env.action_space.seed(seed)
    returns, lengths = [], []
    started = time.time()
    try:
        for episode in range(episodes):
            env.reset(seed=seed + episode)
            total, length, done = 0.0, 0, False
            while not done:
                _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                total += float(reward)
                length += 1
                done = terminated or truncated
            returns.append(total)
            lengths.append(length)
    finally:
        env.close()
    return {
        "task": preset.task.name, "episodes": episodes, "seed": seed, "settings": random_policy_settings(preset),
        "mean": float(np.mean(returns)), "std": float(np.std(returns)),
        "returns": returns, "lengths": lengths, "wall_seconds": round(time.time() - started, 1),
    }


def random_policy_settings(preset: Preset) -> dict[str, Any]:
    """What a random policy's return depends on: the task and evaluation settings."""
    data = preset.to_dict()
    return json.loads(json.dumps({"task": data["task"], "eval": data["eval"]}))


def random_baseline(folder: Path, preset: Preset, episodes: int) -> dict[str, Any]:
    """The random policy's return for one ``<task>/<setting>`` folder, measured once
    (again when the task or evaluation settings have changed since; files from before
    the settings were stored are kept)."""
    path = folder / "random.json"
    if path.is_file():
        data = json.loads(path.read_text())
        same = data.get("settings", random_policy_settings(preset)) == random_policy_settings(preset)
        if data.get("episodes") == episodes and same:
            return data
    data = measure_random_policy(preset, episodes)
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data
