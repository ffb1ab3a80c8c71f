"""Reading a run's SB3 logs while it runs: the ``progress.csv`` of each session, and the
last complete row of a CSV file that another process appends to."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from prefrl.rundir.files import LOGS_DIR, PROGRESS_FILE, RESUMED_LOGS_PREFIX


def resumed_logs_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """Where a session resumed at ``step`` logs: the interrupted session's ``logs/`` stays as it was."""
    return Path(run_dir) / LOGS_DIR / f"{RESUMED_LOGS_PREFIX}{step}"


def progress_files(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """A run's SB3 ``progress.csv`` files that exist with the env step each session
    started at: the first session's (step 0), then each resumed session's in step order
    (the last one is the newest session's). A session's rows beyond the next session's
    start step were logged after the checkpoint it resumed from, and were redone."""
    logs = Path(run_dir) / LOGS_DIR
    sessions = [(0, logs / PROGRESS_FILE)]
    for path in logs.glob(f"{RESUMED_LOGS_PREFIX}*/{PROGRESS_FILE}"):
        step = path.parent.name.rpartition("_")[2]
        if step.isdigit():
            sessions.append((int(step), path))
    return [(step, path) for step, path in sorted(sessions) if path.is_file()]


def tail_row(path: str | os.PathLike) -> dict[str, str]:
    """The header and last complete row of a CSV file that another process appends to
    ({} if there is none yet).

    Reads only the first line and the file's end, so polling large logs stays cheap.
    """
    try:
        with open(path, "rb") as fh:
            header = fh.readline().decode(errors="replace").strip()
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            tail = fh.read().decode(errors="replace")
    except OSError:
        return {}
    lines = [line for line in tail.split("\n")[:-1] if line.strip()]  # the last piece may be half written
    if not header or not lines or lines[-1].strip() == header:
        return {}
    keys = next(csv.reader([header]))
    values = next(csv.reader([lines[-1]]))
    if len(values) != len(keys):
        return {}
    return dict(zip(keys, values))


def newest_progress(run_dir: str | os.PathLike) -> tuple[int, dict[str, str]] | None:
    """A live run's newest numbers: ``(env step its newest session started at, that
    session's last complete progress.csv row)``; None if it has logged nothing. A resumed
    session redoes the steps after its checkpoint, so the older sessions' rows are stale."""
    sessions = progress_files(run_dir)
    if not sessions:
        return None
    start, path = sessions[-1]
    return start, tail_row(path)
