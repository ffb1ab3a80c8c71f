"""Crash-safe files: everything a run keeps is written atomically.

A file is written to a temporary name in the same folder, flushed and fsynced, then
renamed over the old one (and the folder fsynced), so a crash or a full disk at any
moment leaves either the previous complete file or the new complete file, never a torn
one. Also: capture and restore of the global random states a run depends on.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    On any error (including ``OSError: No space left on device``) the temporary file is
    removed and ``path`` keeps its previous content.

    :param path: the file to (re)write
    :param mode: ``"wb"`` or ``"w"``
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    with atomic_file(path, "wb") as handle:
        torch.save(obj, handle)


def atomic_save_with(path: str | os.PathLike, save: Callable[[Path], Any]) -> None:
    """Atomically write a file produced by a library's ``save(path)`` (e.g. SB3's
    ``model.save``), which insists on a path of its own: it saves to a temporary path in
    the same folder, which then replaces ``path``."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.partial{target.suffix}")
    try:
        save(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def global_rng_states() -> dict[str, Any]:
    """The global random states of Python, NumPy and torch (SB3 draws from all three)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def restore_global_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
