"""What ``prefrl label PATH`` was given, resolved to its clips: a run directory (its
``config.json`` names its clips folder) or a clips folder itself.

Here rather than in :mod:`prefrl.human.clips`: only this package knows a run directory's
files, and the viewer's modules sit below it.
"""

from __future__ import annotations

import os

from prefrl.human.clips import ClipsLocation, clips_folder_location, is_clips_folder, run_clips_location
from prefrl.rundir.rundir import RunDir
from prefrl.util.errors import PrefrlError


def find_clips(path: str | os.PathLike[str]) -> ClipsLocation:
    """Resolve a run directory or a clips folder to its clips folder, task and rendering.

    A run directory has a ``config.json`` whose ``clips_dir`` names its clips folder and
    whose ``preset`` says how to render; a clips folder has ``labels.sqlite`` (see
    :func:`~prefrl.human.clips.clips_folder_location`).

    :raises PrefrlError: neither, or a true-reward run (which has no labels)
    """
    run = RunDir(path)
    if run.config_path.is_file() and not is_clips_folder(run.path):
        try:
            config = run.read_config()
        except (OSError, ValueError) as exc:
            raise PrefrlError(f"cannot read {run.config_path}: {exc}") from None
        return run_clips_location(run.path, config)
    return clips_folder_location(path)
