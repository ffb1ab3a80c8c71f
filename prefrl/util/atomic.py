"""Crash-safe file writes: a file is either its previous complete content or its new
complete content, never a torn mix.

The new content goes to a temporary file in the same folder (so the rename cannot cross
filesystems), which is flushed and fsynced, then renamed over the target with
``os.replace`` (atomic on POSIX), and the folder is fsynced so the rename itself survives
a power cut. Any error, ``OSError: No space left on device`` included, removes the
temporary file, keeps the target as it was and propagates.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (skipped where a folder cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _temporary_beside(path: str | os.PathLike, suffix: str) -> Iterator[tuple[int, Path]]:
    """The one atomic-write mechanism: yields an open descriptor and the path of a new
    temporary file beside ``path``; when the block ends without error (the caller has
    written and fsynced the file), that file replaces ``path``; on any error it is removed.

    :param path: the file to (re)write; its folder is created if missing
    :param suffix: the temporary file's name ending
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    tmp = Path(tmp_name)
    try:
        yield fd, tmp
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    :param path: the file to (re)write
    :param mode: ``"wb"`` or ``"w"``
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes a whole file: mode 'wb' or 'w', not {mode!r}")
    encoding = None if mode == "wb" else "utf-8"
    with _temporary_beside(path, ".tmp") as (fd, _), os.fdopen(fd, mode, encoding=encoding) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Replace ``path`` with ``data`` as indented JSON with sorted keys, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def atomic_save_with(path: str | os.PathLike, save: Callable[[Path], Any]) -> None:
    """Atomically write a file that a library's ``save(path)`` produces (e.g. SB3's
    ``model.save``, which insists on a path of its own and on its extension).

    :param path: the file to (re)write
    :param save: writes the file at the path it is given
    """
    target = Path(path)
    with _temporary_beside(target, f".partial{target.suffix}") as (fd, tmp):
        os.close(fd)  # the library opens the path itself
        save(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
