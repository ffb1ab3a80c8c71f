"""Where a person's clips are and how to show them: ``prefrl label PATH`` resolved to a
clips folder, its store's task and the task's rendering settings (:class:`RenderInfo`).

Read without opening the store as a :class:`~prefrl.feedback.store.LabelStore`: nothing
in the folder changes, and a run may be writing to it meanwhile.
"""

from __future__ import annotations

import json
import os
import sqlite3
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.feedback.schema import STORE_FILE
from prefrl.util.atomic import atomic_write_json
from prefrl.util.errors import PrefrlError

#: Name of the file ``prefrl clips`` writes into a clips folder to describe its task.
CLIPS_INFO_FILE = "clips.json"
#: Sub-folder of a clips folder holding rendered clips.
RENDER_DIR = "render"

ATARI_FRAME = (210, 160)  # height, width of a raw ALE frame


@dataclass(frozen=True)
class RenderInfo:
    """How to turn this task's clips into frames for people.

    :param task: preset name
    :param domain: ``atari``, ``mujoco``, ``classic`` or ``unknown``
    :param env_id: Gymnasium id used to render MuJoCo states (empty: cannot render)
    :param fps: playback speed of recorded frames (Atari: 60 / frame skip, real time)
    :param render_size: ``(width, height)`` of MuJoCo renders (shown 1.5x larger: 320
        costs ~30% more than 240 per frame in software and looks much sharper at 480)
    :param max_fps: MuJoCo clips faster than this are shown every k-th state, still in
        real time (Hopper's 125 steps/s would otherwise mean 125 renders a second)
    :param fast_render: switch off shadows and reflections (about 10x faster with
        software EGL; the motion a person judges is unchanged)
    """

    task: str = ""
    domain: str = "unknown"
    env_id: str = ""
    fps: float = 15.0
    render_size: tuple[int, int] = (320, 320)
    max_fps: float = 30.0
    fast_render: bool = True

    @classmethod
    def from_task_settings(cls, settings: Any, **overrides: Any) -> RenderInfo:
        """From a preset's ``task`` section (a dict as in ``config.json``, or the dataclass)."""
        get = settings.get if isinstance(settings, Mapping) else lambda key, default=None: getattr(settings, key, default)
        domain = str(get("domain", "unknown") or "unknown")
        fps = 60.0 / max(1, int(get("frame_skip", 4) or 4)) if domain == "atari" else 15.0
        values: dict[str, Any] = {
            "task": str(get("name", "") or ""), "domain": domain, "env_id": str(get("env_id", "") or ""), "fps": fps,
        }
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "domain": self.domain, "env_id": self.env_id, "fps": self.fps,
                "render_size": list(self.render_size), "max_fps": self.max_fps, "fast_render": self.fast_render}


@dataclass(frozen=True)
class ClipsLocation:
    """A clips folder with its store's task and how to render its clips.

    :param clips_dir: folder holding ``labels.sqlite``
    :param task: the store's task name
    :param info: rendering settings
    :param run_dir: the run directory when the user gave one
    """

    clips_dir: Path
    task: str
    info: RenderInfo
    run_dir: Path | None = None


def write_clips_info(clips_dir: Path, info: Mapping[str, Any]) -> None:
    """Write the :data:`CLIPS_INFO_FILE` of a clips folder (``prefrl clips``); its
    ``task_settings`` say how to render the clips.

    :param clips_dir: the clips folder
    :param info: what was sampled, JSON-serializable
    """
    atomic_write_json(clips_dir / CLIPS_INFO_FILE, info)  # a reader never sees half a file


def _read_one(db_path: Path, query: str) -> tuple[Any, ...] | None:
    """The first row of ``query`` on a label store opened read-only (no lock, no migration)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30.0)
    try:
        return conn.execute(query).fetchone()
    finally:
        conn.close()


def read_store_task(clips_dir: Path) -> str:
    """The task a label store belongs to, read without opening it as a :class:`LabelStore`.

    :raises PrefrlError: no store in the folder, or not a label store
    """
    db_path = Path(clips_dir) / STORE_FILE
    if not db_path.is_file():
        raise PrefrlError(f"no label store in {clips_dir} (labels.sqlite is missing); give a run directory or a clips folder")
    try:
        row = _read_one(db_path, "SELECT value FROM meta WHERE key = 'task'")
    except sqlite3.DatabaseError as exc:
        raise PrefrlError(f"{db_path} is not a usable label store ({exc})") from None
    if row is None:
        raise PrefrlError(f"{db_path} has no task recorded; it is not a prefrl label store")
    return str(row[0])


def _resolve_clips_dir(run_dir: Path, configured: str) -> Path:
    configured_path = Path(configured)
    candidates = [configured_path] if configured_path.is_absolute() else [
        configured_path, run_dir / configured_path, run_dir.parent.parent / configured_path,
    ]
    for candidate in candidates:
        if (candidate / STORE_FILE).is_file():
            return candidate
    raise PrefrlError(
        f"run {run_dir} keeps its labels in '{configured}', which holds no labels.sqlite yet; "
        "start the run first (or give the clips folder itself)"
    )


def _info_from_preset_name(task: str) -> RenderInfo | None:
    try:
        from prefrl.config.loading import load_preset

        return RenderInfo.from_task_settings(load_preset(task).task, task=task)
    except PrefrlError:
        return None


def _sniff_info(clips_dir: Path, task: str) -> RenderInfo:
    """Last resort: look at one stored clip (recorded frames look like Atari)."""
    try:
        row = _read_one(clips_dir / STORE_FILE, "SELECT path FROM clips ORDER BY created LIMIT 1")
        if row is not None:
            with open(clips_dir / row[0], "rb") as handle, np.load(handle, allow_pickle=False) as data:
                if "frames" in data.files:
                    return RenderInfo(task=task, domain="atari" if data["frames"].shape[1:3] == ATARI_FRAME else "unknown")
    except (OSError, ValueError, KeyError, sqlite3.DatabaseError, zipfile.BadZipFile, zlib.error):
        pass
    return RenderInfo(task=task)


def is_clips_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a label store (a folder of a run's config and its clips may be one)."""
    return (Path(path) / STORE_FILE).is_file()


def run_clips_location(run_dir: Path, config: Mapping[str, Any]) -> ClipsLocation:
    """The clips of a run directory, from its config: ``clips_dir`` names its clips folder
    and ``preset`` says how to render (the run directory itself is read by
    :func:`prefrl.rundir.clips.find_clips`).

    :raises PrefrlError: a true-reward run (which has no labels), or no labels yet
    """
    configured = config.get("clips_dir")
    if not configured:
        raise PrefrlError(f"run {run_dir} has no clips folder (a true-reward run asks no labels)")
    clips_dir = _resolve_clips_dir(run_dir, str(configured))
    task = read_store_task(clips_dir)
    preset_task = (config.get("preset") or {}).get("task") or {}
    info = RenderInfo.from_task_settings(preset_task, task=task) if preset_task else (
        _info_from_preset_name(task) or _sniff_info(clips_dir, task)
    )
    return ClipsLocation(clips_dir=clips_dir, task=task, info=info, run_dir=run_dir)


def clips_folder_location(path: str | os.PathLike[str]) -> ClipsLocation:
    """A clips folder's store task and rendering settings: it has ``labels.sqlite`` and,
    when ``prefrl clips`` made it, a ``clips.json``; otherwise the store's task names a preset.

    :raises PrefrlError: not a directory, or no label store in it
    """
    given = Path(path)
    if not given.is_dir():
        raise PrefrlError(f"'{given}' is not a directory; give a run directory or a clips folder")
    task = read_store_task(given)
    info_path = given / CLIPS_INFO_FILE
    info: RenderInfo | None = None
    if info_path.is_file():
        try:
            data = json.loads(info_path.read_text())
            info = RenderInfo.from_task_settings(data.get("task_settings") or {}, task=task)
        except (OSError, ValueError, TypeError):
            info = None
    info = info or _info_from_preset_name(task) or _sniff_info(given, task)
    return ClipsLocation(clips_dir=given, task=task, info=info)
