"""Crash-safe files: everything a run keeps is written atomically.

A file is written to a temporary name in the same folder, flushed and fsynced, then
renamed over the old one (and the folder fsynced), so a crash or a full disk at any
moment leaves either the previous complete file or the new complete file, never a torn
one. Also: capture and restore of the global random states a run depends on, of the
exact state of environments (MuJoCo, Atari, classic control, their wrappers), the run
checkpoint file and the run directory's layout version.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import os
import pickle
import random
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from prefrl.training.legacy_pickle import UnsafeCheckpointError, load_legacy_pickle


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


def atomic_pickle(obj: Any, path: str | os.PathLike) -> None:
    """Pickle ``obj`` into ``path`` atomically, streamed (no second copy in memory).

    Plain pickle rather than ``torch.save``: torch's zip writer turns a write error
    (``ENOSPC``) into a ``RuntimeError`` about file positions; pickle lets the
    ``OSError`` through. Tensors pickle as they are.
    """
    with atomic_file(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)


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


# --------------------------------------------------------------------------- run checkpoints

#: Layout version of a run directory, in its ``config.json`` (``run_dir_schema``) and in
#: its checkpoint. Directories without it were written before checkpoints existed.
#: 1: ``checkpoint/state.pt`` holds everything a run needs to continue.
RUN_DIR_SCHEMA = 1
#: Marks a file as a prefrl run checkpoint.
CHECKPOINT_FORMAT = "prefrl-run-checkpoint"
#: Where a run keeps its checkpoint, relative to the run directory.
CHECKPOINT_FILE = Path("checkpoint") / "state.pt"


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


def write_checkpoint(run_dir: str | os.PathLike, step: int, state: dict[str, Any]) -> Path:
    """Write a run's checkpoint atomically: the previous one stays until this one is
    complete on disk (a crash or a full disk mid-write leaves the previous one).

    :param run_dir: the run directory
    :param step: env steps the state has taken (shown when resuming)
    :param state: anything picklable; shared objects are stored once
    :return: the checkpoint file
    """
    path = checkpoint_path(run_dir)
    atomic_pickle({"format": CHECKPOINT_FORMAT, "schema": RUN_DIR_SCHEMA, "step": int(step), "state": state}, path)
    return path


def read_checkpoint(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A run's checkpoint (``{"step", "state", ...}``), or None if it has none.

    :raises PrefrlError: unreadable, not a checkpoint, or written by a newer prefrl
    """
    from prefrl.util.errors import PrefrlError

    path = checkpoint_path(run_dir)
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            data = load_legacy_pickle(handle)
    except UnsafeCheckpointError as exc:
        raise PrefrlError(f"checkpoint {path} was refused: {exc}; it may run someone's code, so it was not "
                          "opened: move it away to start the run over") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported as such
        raise PrefrlError(f"checkpoint {path} is unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                          "move it away to start the run over") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise PrefrlError(f"{path} is not a prefrl run checkpoint; move it away to start the run over")
    check_run_dir_schema(data.get("schema"), str(path))
    return data


def remove_partial_checkpoints(run_dir: str | os.PathLike) -> int:
    """Delete temporary files of checkpoint writes that a killed process left behind
    (the checkpoint itself is never partial).

    :return: files removed
    """
    folder = checkpoint_path(run_dir).parent
    removed = 0
    for tmp in folder.glob(f".{CHECKPOINT_FILE.name}.*.tmp") if folder.is_dir() else ():
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed += 1
    return removed


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

    from prefrl.util.errors import PrefrlError

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
    from prefrl.util.errors import PrefrlError

    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise PrefrlError(f"{where} has an invalid run_dir_schema {schema!r}; it was not written by prefrl")
    if schema > RUN_DIR_SCHEMA:
        raise PrefrlError(
            f"{where} was written by a newer prefrl (run-dir schema {schema}, this prefrl reads up to "
            f"{RUN_DIR_SCHEMA}); resume it with that prefrl version"
        )


# --------------------------------------------------------------------------- object state

#: Attribute values copied by :func:`capture_attributes`: data, not resources.
_PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes, np.generic)


def _is_plain(value: Any, depth: int = 0) -> bool:
    """True for data that can be copied and pickled safely: numbers, strings, numeric
    arrays, numpy generators and containers of them (not envs, spaces, simulators,
    files or locks)."""
    if depth > 6:
        return False
    if isinstance(value, _PLAIN_SCALARS) or isinstance(value, np.random.Generator):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype != object
    if isinstance(value, (list, tuple, set, frozenset, deque)):
        return all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(_is_plain(k, depth + 1) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def capture_attributes(obj: Any, skip: Iterable[str] = ()) -> dict[str, Any]:
    """Copies of the plain-data attributes of ``obj`` (see :func:`_is_plain`)."""
    skipped = set(skip)
    return {
        name: copy.deepcopy(value)
        for name, value in vars(obj).items()
        if name not in skipped and _is_plain(value)
    }


def restore_attributes(obj: Any, state: dict[str, Any]) -> None:
    """Put captured attributes back. Generators and same-shaped arrays are restored in
    place, so other objects holding the same generator or array see the restored state."""
    for name, saved in state.items():
        current = getattr(obj, name, None)
        if isinstance(current, np.random.Generator) and isinstance(saved, np.random.Generator):
            current.bit_generator.state = saved.bit_generator.state
        elif (isinstance(current, np.ndarray) and isinstance(saved, np.ndarray) and current.flags.writeable
              and current.shape == saved.shape and current.dtype == saved.dtype):
            current[...] = saved
        else:
            setattr(obj, name, copy.deepcopy(saved))


def restore_generator(target: np.random.Generator, state: dict[str, Any]) -> None:
    """Set a generator's state in place (``state``: ``bit_generator.state``)."""
    target.bit_generator.state = state


# --------------------------------------------------------------------------- environments


def _env_layers(env: gym.Env) -> list[gym.Env]:
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


def capture_env_state(env: gym.Env) -> list[dict[str, Any]]:
    """The exact state of one env and every wrapper around it, outermost first.

    Each layer's plain attributes (step counters, episode flags, ``np_random``, frame
    stacks, Monitor's episode statistics) are copied; a MuJoCo simulation is copied
    whole (``MjData``, so the continued physics is bit-identical, solver warm start
    included), an Atari emulator as ``cloneState(include_rng=True)`` (sticky-action
    randomness included).
    """
    states = []
    for layer in _env_layers(env):
        state: dict[str, Any] = {"class": type(layer).__name__, "attributes": capture_attributes(layer, skip=("env",))}
        data = getattr(layer, "data", None)
        if data is not None and type(data).__module__.startswith("mujoco") and type(data).__name__ == "MjData":
            state["mujoco_data"] = copy.deepcopy(data)
        ale = getattr(layer, "ale", None)
        if ale is not None and hasattr(ale, "cloneState"):
            state["ale_state"] = ale.cloneState(include_rng=True)
        states.append(state)
    return states


def restore_env_state(env: gym.Env, states: list[dict[str, Any]]) -> None:
    """Put an env built the same way into the state :func:`capture_env_state` copied.

    :raises PrefrlError: the env's wrapper chain differs from the captured one
    """
    from prefrl.util.errors import PrefrlError

    layers = _env_layers(env)
    wanted = [s["class"] for s in states]
    have = [type(layer).__name__ for layer in layers]
    if wanted != have:
        raise PrefrlError(f"the environment's wrappers {have} differ from the checkpoint's {wanted}; "
                          "resume with the prefrl version and settings that started the run")
    for layer, state in zip(layers, states):
        restore_attributes(layer, state["attributes"])
        if "mujoco_data" in state:
            import mujoco

            # In place: wrappers (render-state recording) hold this very MjData.
            mujoco.mj_copyData(layer.data, layer.model, state["mujoco_data"])
        if "ale_state" in state:
            layer.ale.restoreState(state["ale_state"])


class StatefulEnv(gym.Wrapper):
    """Outermost wrapper that lets a vectorised env (in this or a worker process) hand
    out and take back the exact state of its env, through ``VecEnv.env_method``."""

    def get_run_state(self) -> list[dict[str, Any]]:
        return capture_env_state(self.env)

    def set_run_state(self, states: list[dict[str, Any]]) -> None:
        restore_env_state(self.env, states)


def capture_vec_env(venv: Any) -> list[dict[str, Any]]:
    """The state of a vectorised env and its wrappers, outermost first.

    ``VecNormalize``: its running statistics; a wrapper with ``run_state()``: what that
    returns; the base env: every env's :class:`StatefulEnv` state and the seeds still
    pending for its next reset.
    """
    from stable_baselines3.common.vec_env import VecEnvWrapper, VecNormalize

    states: list[dict[str, Any]] = []
    layer = venv
    while True:
        state: dict[str, Any] = {"class": type(layer).__name__}
        if isinstance(layer, VecNormalize):
            # vars(): VecEnvWrapper's getattr would look for a missing one in the envs below.
            state["normalize"] = {name: copy.deepcopy(value) for name, value in vars(layer).items()
                                  if name in ("obs_rms", "ret_rms", "returns", "old_obs", "old_reward")}
        elif callable(getattr(type(layer), "run_state", None)):
            state["wrapper"] = layer.run_state()
        if not isinstance(layer, VecEnvWrapper):
            state["envs"] = layer.env_method("get_run_state")
            state["seeds"] = list(getattr(layer, "_seeds", []))
            state["options"] = copy.deepcopy(getattr(layer, "_options", []))
            states.append(state)
            return states
        states.append(state)
        layer = layer.venv


def restore_vec_env(venv: Any, states: list[dict[str, Any]]) -> None:
    """Put a vectorised env built the same way into a :func:`capture_vec_env` state.

    :raises PrefrlError: the wrapper chain differs from the captured one
    """
    from stable_baselines3.common.vec_env import VecEnvWrapper

    from prefrl.util.errors import PrefrlError

    layer = venv
    for index, state in enumerate(states):
        if type(layer).__name__ != state["class"]:
            raise PrefrlError(f"the vectorised env's wrapper {type(layer).__name__} differs from the checkpoint's "
                              f"{state['class']}; resume with the settings that started the run")
        if "normalize" in state:
            for name, value in state["normalize"].items():
                setattr(layer, name, copy.deepcopy(value))
        if "wrapper" in state:
            layer.load_run_state(state["wrapper"])
        if "envs" in state:
            for i, env_state in enumerate(state["envs"]):
                layer.env_method("set_run_state", env_state, indices=[i])
            layer._seeds = list(state["seeds"])
            layer._options = copy.deepcopy(state["options"])
        if index + 1 < len(states):
            if not isinstance(layer, VecEnvWrapper):
                raise PrefrlError("the vectorised env has fewer wrappers than the checkpoint's")
            layer = layer.venv


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
