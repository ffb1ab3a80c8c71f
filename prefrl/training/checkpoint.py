"""A run's checkpoint and its run directory: the checkpoint files (data only, written
atomically; the old pickle format read only when trusted), the layout version, the lock
held while training, the global random states, logs of resumed sessions and settings
compared on resume.

The env states inside a checkpoint are captured by :mod:`prefrl.envs.state`; how the
nested state becomes files is :mod:`prefrl.training.state_format`; atomic writes are
:mod:`prefrl.util.atomic`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prefrl.training.legacy_pickle import UnsafeCheckpointError, load_legacy_pickle
from prefrl.training.state_format import StateDecoder, StateEncoder
from prefrl.util.atomic import atomic_file, atomic_write_json
from prefrl.util.errors import PrefrlError


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` into ``path`` atomically (:func:`prefrl.util.atomic.atomic_file`)."""
    with atomic_file(path, "wb") as handle:
        torch.save(obj, handle)


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


# --------------------------------------------------------------------------- run checkpoints

#: Layout version of a run directory, in its ``config.json`` (``run_dir_schema``) and in
#: its checkpoint. Directories without it were written before checkpoints existed.
#: 1: ``checkpoint/state.pt``, one pickle, holds everything a run needs to continue.
#: 2: the checkpoint is data files: ``checkpoint/state.json`` (the nested state as tagged
#: JSON, see :mod:`prefrl.training.state_format`) naming a tensors file
#: (``torch.load(weights_only=True)``) and an arrays file (``np.load(allow_pickle=False)``).
#: A prefrl that reads only 1 refuses such a directory because of its ``config.json``.
RUN_DIR_SCHEMA = 2
#: Marks a file as a prefrl run checkpoint.
CHECKPOINT_FORMAT = "prefrl-run-checkpoint"
#: Where a run keeps its checkpoint, relative to the run directory: the file whose atomic
#: replacement commits a checkpoint (it names the data files that belong to it).
CHECKPOINT_FILE = Path("checkpoint") / "state.json"
#: The checkpoint of run-dir layout 1 (a pickle: read only when the user trusts it).
LEGACY_CHECKPOINT_FILE = Path("checkpoint") / "state.pt"
#: Names of a checkpoint's data files (``<token>``: which write they belong to).
_DATA_FILE = re.compile(r"(tensors\.[0-9a-z-]+\.pt|arrays\.[0-9a-z-]+\.npz)")


class OldCheckpointWarning(UserWarning):
    """A checkpoint of the pickle format is being read (the user allowed it)."""


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """The checkpoint file of a run directory."""
    return Path(run_dir) / CHECKPOINT_FILE


def resumed_logs_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """Where a session resumed at ``step`` logs: the interrupted session's ``logs/`` stays as it was."""
    return Path(run_dir) / "logs" / f"resumed_at_{step}"


def progress_files(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """A run's SB3 ``progress.csv`` files that exist with the env step each session
    started at: the first session's (step 0), then each resumed session's in step order
    (the last one is the newest session's). A session's rows beyond the next session's
    start step were logged after the checkpoint it resumed from, and were redone."""
    logs = Path(run_dir) / "logs"
    sessions = [(0, logs / "progress.csv")]
    for path in logs.glob("resumed_at_*/progress.csv"):
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


def upgrade_run_dir_1_to_2(run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Run-dir layout 1 to 2: only the checkpoint's format changed, which
    :func:`read_checkpoint` reads (with the user's consent) and :func:`write_checkpoint`
    replaces, marking ``config.json`` then; the settings stay as they are."""
    return {**config, "run_dir_schema": 2}


def write_checkpoint(run_dir: str | os.PathLike, step: int, state: dict[str, Any]) -> Path:
    """Write a run's checkpoint atomically: the previous one stays until this one is
    complete on disk (a crash or a full disk mid-write leaves the previous one).

    The data files are written first, under names of their own; replacing ``state.json``
    (which names them) commits the checkpoint; then the previous one's files go.

    :param run_dir: the run directory
    :param step: env steps the state has taken (shown when resuming)
    :param state: nested data (see :mod:`prefrl.training.state_format`); shared objects
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
    config_path = run_dir / "config.json"
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
        :mod:`prefrl.training.legacy_pickle`'s allow-list, with an :class:`OldCheckpointWarning`
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


#: Held (``flock``) by the process training in a run directory.
LOCK_FILE = ".prefrl.lock"


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


def check_run_dir_schema(schema: Any, where: str) -> None:
    """Refuse a run directory (or checkpoint) of a newer layout than this prefrl reads.

    :raises PrefrlError: newer or malformed version
    """
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise PrefrlError(f"{where} has an invalid run_dir_schema {schema!r}; it was not written by prefrl")
    if schema > RUN_DIR_SCHEMA:
        raise PrefrlError(
            f"{where} was written by a newer prefrl (run-dir schema {schema}, this prefrl reads up to "
            f"{RUN_DIR_SCHEMA}); resume it with that prefrl version"
        )


# --------------------------------------------------------------------------- settings


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
