"""A run's checkpoint on disk: data files only, written atomically; the old pickle format
read only when trusted. Both carry the layout version of :mod:`prefrl.rundir.schema`.

How the nested state becomes files is :mod:`prefrl.rundir.state_format`; the old format's
allow-list is :mod:`prefrl.rundir.legacy_pickle`; atomic writes are :mod:`prefrl.util.atomic`.
What a checkpoint holds is gathered by :mod:`prefrl.training.checkpointing`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prefrl.rundir.files import CHECKPOINT_FILE, CONFIG_FILE, LEGACY_CHECKPOINT_FILE
from prefrl.rundir.legacy_pickle import UnsafeCheckpointError, load_legacy_pickle
from prefrl.rundir.schema import RUN_DIR_SCHEMA, check_run_dir_schema
from prefrl.rundir.state_format import StateDecoder, StateEncoder
from prefrl.util.atomic import atomic_file, atomic_write_json
from prefrl.util.errors import PrefrlError

#: Marks a file as a prefrl run checkpoint.
CHECKPOINT_FORMAT = "prefrl-run-checkpoint"
#: Names of a checkpoint's data files (``<token>``: which write they belong to).
_DATA_FILE = re.compile(r"(tensors\.[0-9a-z-]+\.pt|arrays\.[0-9a-z-]+\.npz)")


class OldCheckpointWarning(UserWarning):
    """A checkpoint of the pickle format is being read (the user allowed it)."""


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """The checkpoint file of a run directory."""
    return Path(run_dir) / CHECKPOINT_FILE


def write_checkpoint(run_dir: str | os.PathLike, step: int, state: dict[str, Any]) -> Path:
    """Write a run's checkpoint atomically: the previous one stays until this one is
    complete on disk (a crash or a full disk mid-write leaves the previous one).

    The data files are written first, under names of their own; replacing ``state.json``
    (which names them) commits the checkpoint; then the previous one's files go.

    :param run_dir: the run directory
    :param step: env steps the state has taken (shown when resuming)
    :param state: nested data (see :mod:`prefrl.rundir.state_format`); shared objects
        are stored once
    :return: the checkpoint file
    :raises OSError: the disk is full or unwritable (the previous checkpoint stays)
    """
    path = checkpoint_path(run_dir)
    encoder = StateEncoder()
    document = encoder.encode(state)
    _raise_config_schema(Path(run_dir))
    token = f"{int(step)}-{os.urandom(3).hex()}"  # os.urandom: the run's random streams stay untouched
    tensors_file, arrays_file = path.parent / f"tensors.{token}.pt", path.parent / f"arrays.{token}.npz"
    manifest = {"format": CHECKPOINT_FORMAT, "schema": RUN_DIR_SCHEMA, "step": int(step),
                "tensors": tensors_file.name, "arrays": arrays_file.name, "state": document}
    try:
        # Into memory first: torch's zip writer reports a full disk as a RuntimeError.
        tensors = io.BytesIO()
        torch.save(encoder.tensors, tensors)
        with atomic_file(tensors_file, "wb") as handle:
            handle.write(tensors.getbuffer())
        with atomic_file(arrays_file, "wb") as handle:
            np.savez(handle, **encoder.arrays)
        with atomic_file(path, "wb") as handle:
            handle.write(json.dumps(manifest, allow_nan=False, separators=(",", ":")).encode())
    except BaseException:
        for written in (tensors_file, arrays_file):
            with contextlib.suppress(OSError):
                written.unlink()
        raise
    _remove_stale_files(path.parent, keep={tensors_file.name, arrays_file.name})
    with contextlib.suppress(OSError):
        (Path(run_dir) / LEGACY_CHECKPOINT_FILE).unlink()  # this run has left the pickle format
    return path


def _raise_config_schema(run_dir: Path) -> None:
    """A run resumed from an older layout writes the new checkpoint format: its
    ``config.json`` says so first, so that the older prefrl refuses the directory
    instead of missing the checkpoint and starting the run over."""
    config_path = run_dir / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return
    schema = config.get("run_dir_schema") if isinstance(config, dict) else None
    if isinstance(schema, int) and schema < RUN_DIR_SCHEMA:
        atomic_write_json(config_path, {**config, "run_dir_schema": RUN_DIR_SCHEMA})


def read_checkpoint(run_dir: str | os.PathLike, *, trust_old_checkpoint: bool = False) -> dict[str, Any] | None:
    """A run's checkpoint (``{"step", "state", ...}``), or None if it has none.

    :param run_dir: the run directory
    :param trust_old_checkpoint: read a checkpoint of the old format (a pickle) too, through
        :mod:`prefrl.rundir.legacy_pickle`'s allow-list, with an :class:`OldCheckpointWarning`
    :raises PrefrlError: unreadable, not a checkpoint, written by a newer prefrl, or of the
        old format without ``trust_old_checkpoint`` (or naming code outside the allow-list)
    """
    path = checkpoint_path(run_dir)
    if path.is_file():
        return _read_data_files(path)
    legacy = Path(run_dir) / LEGACY_CHECKPOINT_FILE
    if not legacy.is_file():
        return None
    if not trust_old_checkpoint:
        raise PrefrlError(f"{legacy} is a checkpoint of an earlier prefrl, a pickle: opening a pickle can run code of "
                          "whoever made it, so it was not opened; if this run is yours, resume with "
                          "--trust-old-checkpoint, else move it away to start the run over")
    warnings.warn(f"reading {legacy}, an old-format checkpoint (a pickle, which can run code of whoever made it): "
                  "only allow-listed data types are accepted; the run continues in the new format",
                  OldCheckpointWarning, stacklevel=2)
    try:
        with open(legacy, "rb") as handle:
            data = load_legacy_pickle(handle)
    except UnsafeCheckpointError as exc:
        raise PrefrlError(f"checkpoint {legacy} was refused: {exc}; it may run someone's code, so it was not "
                          "opened: move it away to start the run over") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported as such
        raise _unreadable(legacy, exc) from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise PrefrlError(f"{legacy} is not a prefrl run checkpoint; move it away to start the run over")
    check_run_dir_schema(data.get("schema"), str(legacy))
    return data


def _read_data_files(path: Path) -> dict[str, Any]:
    """Read a checkpoint of the current format: no pickle is involved.

    :raises PrefrlError: see :func:`read_checkpoint`
    """
    try:
        manifest = json.loads(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported as such
        raise _unreadable(path, exc) from None
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        raise PrefrlError(f"{path} is not a prefrl run checkpoint; move it away to start the run over")
    check_run_dir_schema(manifest.get("schema"), str(path))
    try:
        names = [manifest["tensors"], manifest["arrays"]]
        if not all(isinstance(name, str) and _DATA_FILE.fullmatch(name) for name in names):
            raise ValueError(f"it names data files {names}")
        tensors = torch.load(path.parent / names[0], weights_only=True)
        with np.load(path.parent / names[1], allow_pickle=False) as arrays:
            state = StateDecoder(tensors, arrays).decode(manifest["state"])
        return {"format": CHECKPOINT_FORMAT, "schema": manifest["schema"], "step": int(manifest["step"]), "state": state}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported as such
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> PrefrlError:
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return PrefrlError(f"checkpoint {path} is unreadable ({detail}); move it away to start the run over")


def _remove_stale_files(folder: Path, keep: set[str]) -> int:
    """Delete what checkpoint writes leave behind: temporary files of a write that was
    cut, and data files that ``state.json`` does not name (a superseded checkpoint's)."""
    removed = 0
    for file in folder.iterdir() if folder.is_dir() else ():
        cut_write = file.name.startswith(".") and file.name.endswith(".tmp")
        superseded = _DATA_FILE.fullmatch(file.name) is not None and file.name not in keep
        if (cut_write or superseded) and file.is_file():
            with contextlib.suppress(OSError):
                file.unlink()
                removed += 1
    return removed


def remove_partial_checkpoints(run_dir: str | os.PathLike) -> int:
    """Delete temporary files of checkpoint writes that a killed process left behind and
    data files of no checkpoint (the checkpoint itself is never partial).

    :return: files removed
    """
    path = checkpoint_path(run_dir)
    keep: set[str] = set()
    if path.is_file():
        try:
            manifest = json.loads(path.read_bytes())
            keep = {manifest["tensors"], manifest["arrays"]}
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is reported when it is read
            return 0
    return _remove_stale_files(path.parent, keep)
