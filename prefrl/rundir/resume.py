"""The resume rule: what ``config.json`` holds, and whether a directory starts a new run,
resumes an unfinished one (same settings, or ``--force``), or is refused.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from prefrl.config.settings import Preset
from prefrl.rundir.checkpoint_files import read_checkpoint
from prefrl.rundir.files import CONFIG_FILE, LOCK_FILE, SUMMARY_FILE
from prefrl.rundir.paths import RunPaths
from prefrl.rundir.rundir import RunDir
from prefrl.rundir.schema import RUN_DIR_MIGRATIONS, RUN_DIR_SCHEMA, check_run_dir_schema
from prefrl.util.atomic import atomic_write_json
from prefrl.util.errors import PrefrlError

#: Settings that may differ when a run is resumed: they cannot change its result.
RESUME_IGNORED_SETTINGS = ("task.description",)
#: Settings added after runs had checkpoints, with the value that behaves as the
#: earlier prefrl did: a run started before a setting existed resumes as if it were set so.
SETTINGS_ADDED_LATER: dict[str, Any] = {
    "reward.max_pairs_per_update": 0, "ppo.log_std_init": 0.0, "ppo.ortho_init": True, "ppo.activation": "tanh",
    "labels.query_window": 0,
}


def run_config(preset: Preset, arm: str, seed: int, paths: RunPaths, teacher_kind: str,
               labels_from: Path | None, relabel: str, fit: str) -> dict[str, Any]:
    """The content of ``config.json``: what the run is (compared when it is resumed)."""
    learned = arm == "learned"
    return {
        "run_dir_schema": RUN_DIR_SCHEMA,
        "task": preset.task.name, "arm": arm, "seed": seed, "teacher": teacher_kind if learned else None,
        "run_dir": str(paths.run_dir), "clips_dir": str(paths.clips_dir) if learned else None,
        "labels_from": str(Path(labels_from).resolve()) if learned and labels_from is not None else None,
        "relabel": relabel if learned else None, "fit": fit if learned else None,
        "preset": preset.to_dict(), "python": platform.python_version(), "torch": torch.__version__,
        "started": datetime.now().isoformat(timespec="seconds"),
    }


def write_config(run_dir: Path, config: dict[str, Any], resumed: dict[str, Any] | None,
                 changes: list[str]) -> None:
    """Write ``config.json`` (new run), or, when a run resumes with ``--force``, the new
    settings with the list of what was changed at which step."""
    if resumed is not None and not changes:
        return  # same settings: the file stays as the run's first session wrote it
    if resumed is not None:
        previous = json.loads((run_dir / CONFIG_FILE).read_text())
        config = {**config, "started": previous.get("started", config["started"]),
                  "changed_on_resume": [*previous.get("changed_on_resume", []),
                                        {"step": resumed["step"], "changes": changes}]}
    atomic_write_json(run_dir / CONFIG_FILE, config)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"ppo": {"gamma": 0.99}}`` -> ``{"ppo.gamma": 0.99}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def setting_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The settings that differ between two flat dicts, as ``key (old -> new)``, sorted.
    A key missing on one side shows as ``unset``."""
    missing = object()
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, missing), new.get(key, missing)
        if before != after:
            show = lambda v: "unset" if v is missing else json.dumps(v)  # noqa: E731
            changes.append(f"{key} ({show(before)} -> {show(after)})")
    return changes


def _comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``config.json`` that decide a run's result, flat (``ppo.gamma``)."""
    flat = {key: config.get(key) for key in ("task", "arm", "seed", "teacher", "relabel", "fit", "labels_from")}
    clips = config.get("clips_dir")
    flat["clips_dir"] = str(Path(clips).resolve()) if clips else None
    # The same JSON round trip config.json went through (tuples become lists, inf stays).
    preset = json.loads(json.dumps(config.get("preset") or {}))
    flat.update({k: v for k, v in flatten(preset).items() if k not in RESUME_IGNORED_SETTINGS})
    if preset:
        for key, value in SETTINGS_ADDED_LATER.items():
            flat.setdefault(key, value)
    return flat


def open_run_dir(run_dir: Path, config: dict[str, Any], force: bool = False, *,
                 trust_old_checkpoint: bool = False) -> tuple[dict[str, Any] | None, list[str]]:
    """Decide what to do with a run directory (:func:`check_run_dir`) and read the
    checkpoint of a run to resume.

    :param trust_old_checkpoint: read a checkpoint of the old pickle format too

    :return: ``(checkpoint or None, differing settings accepted by force)``
    :raises PrefrlError: the directory cannot be used for this run
    """
    differences = check_run_dir(run_dir, config, force)
    if differences is None:
        return None, []
    return read_checkpoint(run_dir, trust_old_checkpoint=trust_old_checkpoint), differences


def check_run_dir(run_dir: Path, config: dict[str, Any], force: bool = False) -> list[str] | None:
    """Decide what to do with a run directory: start, resume, or refuse.

    - missing or empty: a new run;
    - ``config.json`` of this layout, no ``summary.json``: the same run again, resumed
      from its checkpoint (or started over if it stopped before its first
      checkpoint), if it was started with the same settings (``--force``: whatever
      differs is taken from the new settings);
    - finished (``summary.json``), files without ``config.json``, a layout without a
      version (made before runs had checkpoints; such finished runs stay readable by
      ``compare``, ``video`` and ``report``, nothing on disk changes) or of a newer
      version: refused.

    :param run_dir: the run directory
    :param config: the new run's ``config.json`` content
    :param force: resume even though settings differ
    :return: None for a new run, else the differing settings accepted by force (``[]``:
        the same run)
    :raises PrefrlError: the directory cannot be used for this run
    """
    if not run_dir.exists() or not any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        return None
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise PrefrlError(f"run directory '{run_dir}' already holds a run or other files (no {CONFIG_FILE}); "
                          "give a new --run-dir")
    try:
        stored = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise PrefrlError(f"cannot read {config_path} ({exc}); give a new --run-dir") from None
    if (run_dir / SUMMARY_FILE).is_file():
        raise PrefrlError(f"run directory '{run_dir}' already holds a run that finished ({SUMMARY_FILE}); "
                          "give a new --run-dir")
    schema = stored.get("run_dir_schema")
    if schema is None:
        raise PrefrlError(f"run directory '{run_dir}' already holds a run of an earlier prefrl without checkpoints, "
                          "which cannot be resumed; give a new --run-dir")
    check_run_dir_schema(schema, str(config_path))
    while schema < RUN_DIR_SCHEMA:
        stored = RUN_DIR_MIGRATIONS[schema](run_dir, stored)
        schema += 1
    differences = setting_differences(_comparable_config(stored), _comparable_config(config))
    if differences and not force:
        raise PrefrlError(f"{run_dir} was started with different settings: {', '.join(differences)}; "
                          "resume with the same settings, or pass --force")
    return differences


def would_resume(preset: Preset, *, arm: str, seed: int, paths: RunPaths, teacher_kind: str = "synthetic",
                 labels_from: Path | None = None, relabel: str = "rollout", fit: str | None = None) -> bool:
    """Whether :func:`~prefrl.training.run.train` with these arguments (and no ``force``)
    would continue the run in ``paths.run_dir`` from its checkpoint: the one rule sweeps
    and benchmarks use to keep a killed run's folder rather than start it over.

    A checkpoint of the old format counts too: ``train`` then asks for
    ``--trust-old-checkpoint`` rather than the folder being deleted and the run redone.
    """
    run = RunDir(paths.run_dir)
    if not run.has_checkpoint or run.is_finished:
        return False
    config = run_config(preset, arm, seed, paths, teacher_kind, labels_from, relabel, fit or preset.reward.fit_mode)
    try:
        return check_run_dir(paths.run_dir, config) == []
    except PrefrlError:
        return False
