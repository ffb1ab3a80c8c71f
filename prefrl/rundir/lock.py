"""The lock a training process holds on its run directory."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from prefrl.rundir.files import LOCK_FILE
from prefrl.util.errors import PrefrlError


@contextlib.contextmanager
def run_dir_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the run directory for this process: a second ``prefrl train`` on it (say,
    rerun by a script while the first is still shutting down) is refused instead of
    mixing two runs. The lock dies with the process, however it ends.

    :raises PrefrlError: another process holds it
    """
    import fcntl

    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise PrefrlError(f"run directory '{folder}' is in use by another prefrl train (pid {holder}); "
                              "wait for it to finish or stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
