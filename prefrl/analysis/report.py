"""Comparison of runs: learned arm against the true-reward arm, per task.

Reads each run directory's ``summary.json`` and ``eval.csv``; writes ``comparison.png``
(true evaluation return against env steps, mean and spread over seeds per arm) and
``comparison.md`` (final true return per arm, ratio learned / true, labels, wall time).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prefrl.rundir import RunDir
from prefrl.rundir.rundir import find_finished_runs
from prefrl.util.errors import PrefrlError


@dataclass(frozen=True)
class RunResult:
    """What one finished run left in its directory."""

    run_dir: Path
    task: str
    arm: str
    seed: int
    label_budget: int
    labels_used: int
    env_steps: int
    final_true_return: float
    wall_seconds: float
    eval_steps: np.ndarray
    eval_returns: np.ndarray

    @property
    def group(self) -> tuple[str, str, int]:
        return (self.task, self.arm, self.label_budget)


@dataclass(frozen=True)
class GroupRow:
    """One line of the comparison table: all seeds of one (task, arm, label budget)."""

    task: str
    arm: str
    label_budget: int
    seeds: int
    env_steps: int
    mean_return: float
    std_return: float
    labels_used: float
    wall_seconds: float
    ratio: float | None  # learned / true on the same task; None for the true arm


def load_run(run_dir: Path) -> RunResult:
    """The numbers of a finished run (:meth:`RunDir.read_summary`, :meth:`RunDir.eval_curve`).

    :raises PrefrlError: a file is missing or corrupt
    """
    run = RunDir(run_dir)
    try:
        summary = run.read_summary()
        curve = run.eval_curve()
    except (OSError, ValueError, KeyError) as exc:
        raise PrefrlError(f"run directory '{run_dir}' is incomplete or corrupt ({exc}); rerun it or leave it out") from None
    return RunResult(
        run_dir=run_dir, task=summary["task"], arm=summary["arm"], seed=int(summary["seed"]),
        label_budget=int(summary.get("label_budget", 0)), labels_used=int(summary["labels_used"]),
        env_steps=int(summary["env_steps"]), final_true_return=float(summary["final_true_return"]),
        wall_seconds=float(summary["wall_seconds"]),
        eval_steps=curve.steps, eval_returns=curve.true_returns,
    )


def summarize(runs: Sequence[RunResult]) -> list[GroupRow]:
    groups: dict[tuple[str, str, int], list[RunResult]] = defaultdict(list)
    for run in runs:
        groups[run.group].append(run)
    true_means = {
        task: float(np.mean([r.final_true_return for r in members]))
        for (task, arm, _), members in groups.items() if arm == "true"
    }
    rows = []
    for (task, arm, budget), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "true", kv[0][2])):
        finals = np.array([r.final_true_return for r in members])
        mean = float(np.mean(finals))
        ratio = None
        if arm != "true" and task in true_means and true_means[task] != 0:
            ratio = mean / true_means[task]
        rows.append(GroupRow(
            task=task, arm=arm, label_budget=budget, seeds=len(members),
            env_steps=int(np.mean([r.env_steps for r in members])), mean_return=mean,
            std_return=float(np.std(finals)), labels_used=float(np.mean([r.labels_used for r in members])),
            wall_seconds=float(np.mean([r.wall_seconds for r in members])), ratio=ratio,
        ))
    return rows


def markdown_table(rows: Sequence[GroupRow]) -> str:
    header = ("| task | arm | seeds | env steps | final true return (mean ± std) "
              "| learned / true | labels used | wall time (s) |")
    lines = [header, "|" + "---|" * 8]
    for r in rows:
        arm = r.arm if r.arm == "true" else f"{r.arm} ({r.label_budget} labels)"
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
        lines.append(
            f"| {r.task} | {arm} | {r.seeds} | {r.env_steps:,} | {r.mean_return:.1f} ± {r.std_return:.1f} "
            f"| {ratio} | {r.labels_used:.0f} | {r.wall_seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(runs: Sequence[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r.task for r in runs})
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        groups: dict[tuple[str, int], list[RunResult]] = defaultdict(list)
        for r in runs:
            if r.task == task:
                groups[(r.arm, r.label_budget)].append(r)
        for (arm, budget), members in sorted(groups.items()):
            grid = np.unique(np.concatenate([m.eval_steps for m in members]))
            if len(grid) == 0:
                continue
            curves = np.stack([np.interp(grid, m.eval_steps, m.eval_returns) for m in members])
            mean, std = curves.mean(axis=0), curves.std(axis=0)
            label = "true reward" if arm == "true" else f"learned ({budget} labels)"
            line, = ax.plot(grid, mean, label=f"{label}, {len(members)} seed(s)")
            ax.fill_between(grid, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_title(task)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("true evaluation return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(run_dirs: Sequence[Path], out_dir: Path) -> tuple[list[GroupRow], str]:
    """Write ``comparison.png`` and ``comparison.md`` to ``out_dir``.

    :return: the table rows and the markdown table
    """
    runs = [load_run(d) for d in find_finished_runs(run_dirs)]
    rows = summarize(runs)
    table = markdown_table(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_curves(runs, out_dir / "comparison.png")
    note = ("Final true return: mean over seeds of the last evaluation (true return, real episode "
            "rules). learned / true: ratio of the means on the same task.\n\n")
    (out_dir / "comparison.md").write_text("# Learned reward vs true reward\n\n" + note + table
                                           + "\n![curves](comparison.png)\n")
    return rows, table
