"""What a sweep still has to run: which runs are finished, which are stale, which resume.

One rule for every front-end and runner:

* **finished**: the run's ``summary.json`` exists, in its folder or in a records folder
  (small copies of finished runs kept elsewhere, e.g. in the repository);
* **stale**: finished, but its ``config.json`` says it was made with other settings than
  the sweep would use now (:func:`prefrl.analysis.run_settings.changed_settings`); it is
  run again, and its folder moves to ``<out>/replaced/`` so nothing finished is lost;
* **resumed**: an unfinished folder holding a checkpoint that ``train`` continues (same
  arm, seed and settings): it ends exactly as an uninterrupted run would;
* anything else an unfinished attempt left is deleted, so that half a run made with other
  settings is never mixed with a new one.

A finished run whose ``config.json`` is unreadable or records no settings cannot be
judged and counts as finished.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from prefrl.analysis.run_settings import changed_settings
from prefrl.config.settings import Preset
from prefrl.experiments.sweep import RunSpec
from prefrl.rundir import RunDir, RunPaths
from prefrl.util.errors import PrefrlError

#: Folder (inside a sweep's output folder) where finished runs made with old settings go.
REPLACED_DIR = "replaced"


@dataclass
class Plan:
    """A sweep's runs split by what is on disk.

    :param done: finished with the settings the sweep would use now: reused
    :param todo: to run (stale ones included), in the sweep's order
    :param stale: the settings each stale run was made with, as changes (old -> new)
    """

    done: list[RunSpec] = field(default_factory=list)
    todo: list[RunSpec] = field(default_factory=list)
    stale: dict[RunSpec, list[str]] = field(default_factory=dict)


def finished_dir(spec: RunSpec, records: Path | None = None) -> Path | None:
    """The folder of the run's finished result: its run folder, or its copy in
    ``records`` (``records / spec.rel_dir``); None if it has not finished."""
    for folder in (spec.run_dir, None if records is None else records / spec.rel_dir):
        if folder is not None and RunDir(folder).is_finished:
            return folder
    return None


def stale_changes(spec: RunSpec, records: Path | None = None) -> list[str]:
    """How the run's finished result differs from the sweep's settings now ([] when it
    has not finished, matches, or cannot be judged)."""
    folder = finished_dir(spec, records)
    if folder is None:
        return []
    try:
        config = RunDir(folder).read_config()
        stored = config["preset"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    changes = [f"{key} ({json.dumps(config[key])} -> {json.dumps(value)})"
               for key, value in (("arm", spec.arm), ("seed", spec.seed)) if config.get(key, value) != value]
    return changes + (changed_settings(spec.arm, stored, spec.preset.to_dict()) if stored else [])


def is_finished(spec: RunSpec, records: Path | None = None) -> bool:
    """Finished with the settings the sweep would use now (here or in ``records``)."""
    return finished_dir(spec, records) is not None and not stale_changes(spec, records)


def run_state(spec: RunSpec, records: Path | None = None) -> tuple[str, list[str]]:
    """``("done", [])``, ``("stale", changes)`` or ``("todo", [])``."""
    if finished_dir(spec, records) is None:
        return "todo", []
    changes = stale_changes(spec, records)
    return ("stale", changes) if changes else ("done", [])


def set_aside(spec: RunSpec) -> Path | None:
    """Move a finished run folder to ``<out>/replaced/<rel_dir>-<time>``.

    :return: where it went (None when the run folder holds no finished run)
    """
    if not RunDir(spec.run_dir).is_finished:
        return None
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = spec.out / REPLACED_DIR / spec.rel_dir.parent / f"{spec.rel_dir.name}-{stamp}"
    aside.parent.mkdir(parents=True, exist_ok=True)
    spec.run_dir.rename(aside)
    return aside


def resumable(spec: RunSpec, preset: Preset | None = None) -> bool:
    """Whether the run folder holds a checkpoint that ``train`` resumes: same arm, seed and
    settings (thread count included).

    :param preset: the settings the run will get (default the spec's)
    """
    from prefrl.rundir.resume import would_resume

    return would_resume(preset or spec.preset, arm=spec.arm, seed=spec.seed,
                        paths=RunPaths(spec.run_dir, spec.run_dir / "clips"))


def prepare_run_dir(spec: RunSpec, preset: Preset | None = None) -> bool:
    """Keep the checkpoint of a killed attempt of this run (``train`` resumes it), else
    delete what an unfinished earlier attempt left.

    :param preset: the settings the run will get now (default the spec's)
    :return: whether the run will resume from a checkpoint
    """
    if not spec.run_dir.exists() or RunDir(spec.run_dir).is_finished:
        return False
    if resumable(spec, preset):
        return True
    shutil.rmtree(spec.run_dir)
    return False


def prepare(runs: Sequence[RunSpec], records: Path | None = None, *, clear_unfinished: bool = True) -> Plan:
    """Split ``runs`` into finished ones and ones to run, setting stale runs aside.

    :param records: a folder of finished runs' copies (``records / rel_dir``) that count
        as finished too
    :param clear_unfinished: also :func:`prepare_run_dir` every run to do now (a runner
        that decides a run's final settings only at launch does it there instead)
    """
    plan = Plan()
    for spec in runs:
        state, changes = run_state(spec, records)
        if state == "done":
            plan.done.append(spec)
            continue
        if state == "stale":
            plan.stale[spec] = changes
            set_aside(spec)
        if clear_unfinished:
            prepare_run_dir(spec)
        plan.todo.append(spec)
    return plan


def checkpoint_step(run_dir: Path) -> int:
    """Env steps an unfinished run keeps in its checkpoint, which ``train`` resumes from
    (0 without one; an unreadable one is the run's own error to report)."""
    try:
        checkpoint = RunDir(run_dir).read_checkpoint()
    except PrefrlError:
        return 0
    return 0 if checkpoint is None else int(checkpoint["step"])
