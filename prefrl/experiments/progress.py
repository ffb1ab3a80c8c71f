"""The live table of a sweep: one row per run with its state, steps, labels and latest
returns, read from the run's files while it trains (any runner, any node sharing the
output folder)."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefrl.experiments.sweep import RunSpec, Sweep, state_files


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


@dataclass
class RunProgress:
    """What the live table shows for one run."""

    spec: RunSpec
    state: str = "queued"  # queued, submitted, running, done, skipped, failed
    steps: int = 0
    labels: int | None = None
    eval_return: float | None = None
    train_return: float | None = None
    started: float | None = None
    seconds: float | None = None
    host: str = ""
    error: str = ""
    details: str = ""

    def poll(self) -> None:
        """Read the running run's newest logged numbers from its files."""
        status_path, _ = state_files(self.spec)
        if self.state == "submitted" and status_path.is_file():
            try:
                status = json.loads(status_path.read_text())
            except (OSError, ValueError):
                status = {}
            self.state, self.host = "running", str(status.get("host", ""))
            self.started = float(status.get("started", time.time()))
        self.read_files(self.spec.run_dir)

    def read_files(self, run_dir: Path) -> None:
        from prefrl.rundir import RunDir
        from prefrl.rundir.progress import tail_row

        run = RunDir(run_dir)

        # A resumed run logs on in its newest session's file, from its checkpoint's step.
        start, row = run.newest_progress() or (None, {})
        # SB3 leaves a key empty in rows where it was not logged: keep the last value.
        steps = _float(row.get("time/total_timesteps"))
        labels = _float(row.get("labels/used"))
        train_return = _float(row.get("rollout/ep_rew_mean"))
        if steps is None:
            steps = start
        if steps is not None:
            self.steps = int(steps)  # not the interrupted session's larger step
        if labels is not None:
            self.labels = int(labels)
        if train_return is not None:
            self.train_return = train_return
        evaluation = tail_row(run.eval_path)
        eval_return, eval_step = _float(evaluation.get("mean_true_return")), _float(evaluation.get("step"))
        if eval_return is not None:
            self.eval_return = eval_return
        if eval_step is not None:
            self.steps = max(self.steps, int(eval_step))
        try:
            summary = run.read_summary()
        except (OSError, ValueError):
            return
        # A finished run's summary is the last word (the final log row may lack labels).
        self.steps = int(summary.get("env_steps", self.steps))
        self.eval_return = _float(str(summary.get("final_true_return"))) if "final_true_return" in summary else self.eval_return
        if summary.get("arm") == "learned":
            self.labels = int(summary.get("labels_used", self.labels or 0))
        if self.seconds is None and "wall_seconds" in summary:
            self.seconds = float(summary["wall_seconds"])


STATE_STYLE = {
    "running": "bold cyan", "submitted": "cyan", "queued": "dim", "done": "green", "skipped": "green",
    "failed": "bold red",
}
STATE_ORDER = {"running": 0, "failed": 1, "submitted": 2, "queued": 3, "done": 4, "skipped": 5}


def progress_table(sweep: Sweep, runs: Sequence[RunProgress]) -> Any:
    """The rich table of the live display: one row per run, busiest first."""
    from rich.table import Table

    counts = Counter(r.state for r in runs)
    caption = ", ".join(f"{counts[s]} {s}" for s in sorted(counts, key=STATE_ORDER.__getitem__))
    table = Table(title=f"sweep {sweep.name}: {len(runs)} runs in {sweep.out}", caption=caption, expand=False)
    for col, justify in (("run", "left"), ("state", "left"), ("steps", "right"), ("labels", "right"),
                         ("eval true return", "right"), ("train return", "right"), ("time", "right"),
                         ("host / error", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "host / error",  # type: ignore[arg-type]
                         overflow="fold" if col == "host / error" else "ellipsis")
    now = time.time()
    for r in sorted(runs, key=lambda r: STATE_ORDER.get(r.state, 9)):
        total = r.spec.preset.ppo.total_steps
        seconds = r.seconds if r.seconds is not None else (now - r.started if r.started else None)
        table.add_row(
            r.spec.name,
            f"[{STATE_STYLE.get(r.state, '')}]{r.state}[/]",
            f"{r.steps:,} / {total:,}" if r.state not in ("queued", "submitted") else f"- / {total:,}",
            "" if r.labels is None else f"{r.labels} / {r.spec.label_budget}",
            "" if r.eval_return is None else f"{r.eval_return:.1f}",
            "" if r.train_return is None else f"{r.train_return:.1f}",
            "" if seconds is None else f"{seconds:.0f} s",
            r.error or r.host,
        )
    return table
