"""Where a run writes: its run and clips folders, and their default CleanRL-style names."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

#: Folders that runs and their clips go to by default (relative to the working directory).
DEFAULT_RUNS_ROOT = Path("runs")
DEFAULT_CLIPS_ROOT = Path("clips")


@dataclass(frozen=True)
class RunPaths:
    """Where a run writes.

    :param run_dir: config, logs, checkpoints, evaluation and summary
    :param clips_dir: clip pairs and the label database (``labels.sqlite``)
    """

    run_dir: Path
    clips_dir: Path


def run_name(task: str, arm: str, seed: int, when: datetime | None = None) -> str:
    """CleanRL-style ``env__exp__seed__time`` name, e.g. ``hopper__learned__1__20261123-153000``."""
    stamp = (when or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{task}__{arm}__{seed}__{stamp}"


def default_paths(task: str, arm: str, seed: int, root: Path = DEFAULT_RUNS_ROOT) -> RunPaths:
    """``runs/<name>`` and ``clips/<name>`` for a new run named by :func:`run_name`."""
    name = run_name(task, arm, seed)
    return RunPaths(run_dir=root / name, clips_dir=DEFAULT_CLIPS_ROOT / name)
