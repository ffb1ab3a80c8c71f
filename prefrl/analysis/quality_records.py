"""The records of the learning-quality benchmark: small copies of every finished run
(``summary.json``, ``eval.csv``, ``config.json``) kept in the repository, the settings
folders they belong to, the command log, and which machine ran each run at what load.

The run folders (policies, reward models, label databases, tensorboard logs) are large
and git-ignored; the records are what the results page is built from, so the page and
its numbers survive a fresh clone and later plans reuse those runs. Layout, the same
under the output folder and the records folder::

    <task>/<setting>/setting.json, random.json
    <task>/<setting>/<arm>/seed<k>/summary.json, eval.csv, config.json
    logs/<task>__<setting>__<arm>__seed<k>.load.json
    commands.jsonl
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.config.loading import load_preset
from prefrl.rundir.files import CONFIG_FILE, EVAL_FILE, SUMMARY_FILE
from prefrl.util.errors import PrefrlError

#: Small files of a finished run copied into the records folder (committed with the page).
RECORD_RUN_FILES = (SUMMARY_FILE, EVAL_FILE, CONFIG_FILE)
RECORD_SETTING_FILES = ("setting.json", "random.json")
#: The benchmark's own logs (each run's output and load), beside the task folders; not a
#: run directory's ``logs/``.
LOGS_DIR = "logs"
#: Hand-written analysis beside the records folder, copied into the page as it is.
FINDINGS_FILE = "findings.md"


def record_dir(run_dir: Path, records: Path) -> Path:
    """Where the records of ``<out>/<task>/<setting>/<arm>/seed<k>`` live."""
    return records / Path(*run_dir.parts[-4:])


def log_stem(run_dir: Path) -> str:
    """``<task>__<setting>__<arm>__seed<k>``: the name of a run's files in ``<out>/logs``."""
    return "__".join(run_dir.parts[-4:])


def read_commands(out: Path) -> list[dict[str, Any]]:
    path = out / "commands.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_records(out: Path, records: Path) -> None:
    """Copy the small files of every finished run under ``out`` (summary, evaluation
    curve, config), the settings' files, load logs and the command log into ``records``.

    The run folders (policies, reward models, label databases, tensorboard logs) are
    large and git-ignored; the records are what the results page is built from, so the
    page and its numbers survive a fresh clone and later plans reuse those runs.
    """
    for summary in sorted(out.glob(f"*/*/*/seed*/{SUMMARY_FILE}")):
        dest = record_dir(summary.parent, records)
        dest.mkdir(parents=True, exist_ok=True)
        for name in RECORD_RUN_FILES:
            if (summary.parent / name).is_file():
                shutil.copyfile(summary.parent / name, dest / name)
    for name in RECORD_SETTING_FILES:
        for src in sorted(out.glob(f"*/*/{name}")):
            dest = records / src.relative_to(out)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
    for src in sorted(out.glob("logs/*.load.json")):
        (records / LOGS_DIR).mkdir(parents=True, exist_ok=True)
        data = json.loads(src.read_text())
        data["run_dir"] = str(record_dir(Path(data["run_dir"]), records))
        (records / LOGS_DIR / src.name).write_text(json.dumps(data) + "\n")
    if (out / "commands.jsonl").is_file():
        known = {json.dumps(e, sort_keys=True) for e in read_commands(records)}
        with open(records / "commands.jsonl", "a") as fh:
            for entry in read_commands(out):
                entry = dict(entry, planned=[str(record_dir(Path(d), records)) for d in entry.get("planned", [])])
                if json.dumps(entry, sort_keys=True) not in known:
                    fh.write(json.dumps(entry) + "\n")


@dataclass
class Setting:
    """One ``<task>/<setting>`` folder with its finished runs."""

    folder: Path
    task: str
    steps: int
    overrides: list[str]
    domain: str
    frame_skip: int
    for_tests: bool
    runs: list[Any]  # prefrl.analysis.report.RunResult
    random: dict[str, Any] | None


def load_settings(out: Path) -> list[Setting]:
    from prefrl.analysis.report import load_run

    settings = []
    for meta in sorted(out.glob("*/*/setting.json")):
        folder = meta.parent
        data = json.loads(meta.read_text())
        try:
            preset = load_preset(data["task"], data.get("overrides", []))
        except PrefrlError:
            continue
        runs = []
        for summary in sorted(folder.glob(f"*/seed*/{SUMMARY_FILE}")):
            try:
                runs.append(load_run(summary.parent))
            except PrefrlError:
                continue
        random = json.loads((folder / "random.json").read_text()) if (folder / "random.json").is_file() else None
        settings.append(Setting(folder, data["task"], int(data["steps"]), list(data.get("overrides", [])),
                                preset.task.domain, preset.task.frame_skip, preset.task.for_tests, runs, random))
    return settings


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


#: What the page says of runs made before their machine was recorded (2026-12-02): the sessions'
#: machines then were alike in cores and memory, not in CPU model.
UNRECORDED_MACHINE = "machine not recorded (before 2026-12-02; 2 cores, 23.5 GB RAM, AMD EPYC or Intel Xeon)"


def machine_line() -> str:
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) / 1024 ** 2:.1f} GB RAM"
    except OSError:
        pass
    import torch

    return (f"{os.cpu_count()} cores ({cpu_model()}){mem}, CPU only; Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}")


def host_record(run_dir: Path, load_samples: Sequence[float]) -> dict[str, Any]:
    """How busy the machine was while a run ran (wall times are only comparable at similar
    load) and which machine it was (records gather runs from several machines).

    :param run_dir: the run's folder
    :param load_samples: 1-minute load averages sampled while it ran
    """
    return {"run_dir": str(run_dir), "mean_load1": float(np.mean(load_samples)),
            "max_load1": float(np.max(load_samples)), "samples": len(load_samples),
            "cores": os.cpu_count(), "machine": machine_line()}


def run_host_record(run_dir: Path) -> dict[str, Any]:
    """What the plan process recorded about the machine while the run ran (load, and since
    2026-12-02 the machine itself); empty when nothing was recorded."""
    path = run_dir.parents[3] / LOGS_DIR / f"{log_stem(run_dir)}.load.json"
    try:
        data = json.loads(path.read_text())
        if Path(data["run_dir"]).resolve() == run_dir.resolve():
            return data
    except (OSError, ValueError, KeyError):
        pass
    return {}


def run_load(run_dir: Path) -> float | None:
    """Mean 1-minute load average while the run ran."""
    load = run_host_record(run_dir).get("mean_load1")
    return None if load is None else float(load)
