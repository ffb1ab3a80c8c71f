"""Preferences (answers about clip pairs), the label schedule and the label store."""

from __future__ import annotations

import contextlib
import enum
import json
import math
import os
import re
import sqlite3
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from prefrl.config.presets import LabelSettings
from prefrl.data.segments import ClipPair, Segment
from prefrl.util.errors import PrefrlError


class Choice(str, enum.Enum):
    """An answer about a clip pair."""

    LEFT = "left"
    RIGHT = "right"
    TIE = "tie"
    CANT_TELL = "cant_tell"

    @property
    def target(self) -> float | None:
        """Probability that the left clip is better; ``None`` = not trained on."""
        return {"left": 1.0, "right": 0.0, "tie": 0.5, "cant_tell": None}[self.value]


@dataclass(frozen=True)
class Preference:
    """A labeller's answer about one clip pair.

    :param pair: the two clips
    :param choice: left / right better, tie, or can't tell
    :param labeller: who answered, e.g. ``synthetic`` or a person's name
    :param step: global env step at which the answer reached the trainer
    """

    pair: ClipPair
    choice: Choice
    labeller: str = "synthetic"
    step: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.choice, Choice):
            raise ValueError(f"Preference.choice must be a Choice, got {self.choice!r}")


# --------------------------------------------------------------------------- schedule


class LabelSchedule:
    """How many labels a run should have asked for by env step ``T``.

    The paper lowers the label rate over training, roughly as ``1/T``: the rate is
    ``dN/dT = k * c / (T + c)`` with rate constant ``c`` (2e6 MuJoCo, 5e6 Atari).
    Integrating from 0 gives ``N(T) = N0 + k * c * ln(1 + T/c)``; ``k`` is fixed by
    ``N(total_steps) = budget``, so

        ``target(T) = initial + (budget - initial) * ln(1 + T/c) / ln(1 + total_steps/c)``

    floored to an integer. ``target(0) = initial`` (the labels collected from the random
    policy before RL starts), ``target(total_steps) = budget``, monotone in between and
    clamped to ``[initial, budget]`` outside.

    :param budget: labels for the whole run
    :param initial_labels: labels wanted before RL starts
    :param rate_constant: ``c``, in env steps
    :param total_steps: env steps of the run
    """

    def __init__(self, budget: int, initial_labels: int, rate_constant: float, total_steps: int) -> None:
        if budget <= 0 or not 0 <= initial_labels <= budget:
            raise PrefrlError(
                f"label schedule needs 0 <= initial_labels <= budget and budget > 0, "
                f"got initial_labels = {initial_labels}, budget = {budget}"
            )
        if rate_constant <= 0 or total_steps <= 0:
            raise PrefrlError(
                f"label schedule needs a positive rate_constant and total_steps, "
                f"got {rate_constant} and {total_steps}"
            )
        self.budget = int(budget)
        self.initial_labels = int(initial_labels)
        self.rate_constant = float(rate_constant)
        self.total_steps = int(total_steps)
        self._scale = math.log1p(self.total_steps / self.rate_constant)

    @classmethod
    def from_settings(cls, settings: LabelSettings, total_steps: int) -> LabelSchedule:
        """The schedule of a preset: ``from_settings(preset.labels, preset.ppo.total_steps)``."""
        return cls(settings.budget, settings.initial_labels, settings.rate_constant, total_steps)

    def target(self, step: int) -> int:
        """Cumulative labels wanted by env step ``step``."""
        if step <= 0:
            return self.initial_labels
        if step >= self.total_steps:
            return self.budget
        fraction = math.log1p(step / self.rate_constant) / self._scale
        wanted = self.initial_labels + (self.budget - self.initial_labels) * fraction
        return min(self.budget, max(self.initial_labels, math.floor(wanted)))

    def rate(self, step: int) -> float:
        """Labels per env step wanted at ``step`` (the derivative of :meth:`target`)."""
        return (self.budget - self.initial_labels) / self._scale / (max(step, 0) + self.rate_constant)

    def due(self, step: int, asked_so_far: int) -> int:
        """Labels to ask for now, given how many were asked already (never negative)."""
        return max(0, self.target(step) - asked_so_far)


# --------------------------------------------------------------------------- store

#: Version of the label store's layout. Older stores are migrated on opening (after a
#: backup copy ``labels.sqlite.v<old>.bak``); a store of a newer version is refused.
#: 1: meta, clips, pairs, labels. 2: ``undone_labels`` keeps every undone answer.
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS clips (
    clip_id     TEXT PRIMARY KEY,
    path        TEXT NOT NULL,
    length      INTEGER NOT NULL,
    true_return REAL NOT NULL,
    created     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pairs (
    pair_id       TEXT PRIMARY KEY,
    left_clip     TEXT NOT NULL REFERENCES clips(clip_id),
    right_clip    TEXT NOT NULL REFERENCES clips(clip_id),
    created       REAL NOT NULL,
    status        TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'answered')),
    lease_owner   TEXT,
    lease_expires REAL
);
CREATE INDEX IF NOT EXISTS pairs_by_status ON pairs (status, created);
CREATE TABLE IF NOT EXISTS labels (
    label_id INTEGER PRIMARY KEY AUTOINCREMENT,
    pair_id  TEXT NOT NULL UNIQUE REFERENCES pairs(pair_id),
    choice   TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie', 'cant_tell')),
    labeller TEXT NOT NULL,
    created  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS undone_labels (
    label_id INTEGER PRIMARY KEY,
    pair_id  TEXT NOT NULL,
    choice   TEXT NOT NULL,
    labeller TEXT NOT NULL,
    created  REAL NOT NULL,
    undone   REAL NOT NULL
);
"""


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Version 2 keeps undone answers (the trainer may have read them already)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS undone_labels (label_id INTEGER PRIMARY KEY, pair_id TEXT NOT NULL, "
        "choice TEXT NOT NULL, labeller TEXT NOT NULL, created REAL NOT NULL, undone REAL NOT NULL)"
    )


#: ``version -> function`` upgrading a store of that version to the next one.
_MIGRATIONS = {1: _migrate_1_to_2}

_SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_CLIP_ARRAYS = ("observations", "actions", "true_rewards", "after_termination")
_OPTIONAL_ARRAYS = ("render_states", "frames")
_JSONL_KEYS = ("pair_id", "left_clip", "right_clip", "choice", "labeller", "time")

#: One new label: ``(label_id, pair_id, choice, labeller, time)``.
LabelRow = tuple[int, str, Choice, str, float]


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (not possible on every platform)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomically(target: Path, mode: str, write: Callable[[IO[Any]], None]) -> None:
    """Write ``target`` through a temporary file, fsync and rename: a crash or a full disk
    at any moment leaves the previous file (or none), never a torn one.

    (:mod:`prefrl.training.checkpoint` has the same for run files; it imports torch, which the
    label viewer process must not pay for.)

    :param target: the file to (re)write
    :param mode: ``"wb"`` or ``"w"`` (UTF-8)
    :param write: writes the content into the open temporary file
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)


def _write_error(target: Path, exc: OSError, state: str) -> PrefrlError:
    """A one-line error for a failed write (disk full, permissions) that says what was kept."""
    reason = exc.strerror or str(exc)
    return PrefrlError(f"cannot write {target}: {reason}; {state}; free disk space or fix permissions and try again")


class LabelStore:
    """Clip pairs and their labels in one clips folder, shared between processes.

    Layout of ``clips_dir``:

    - ``labels.sqlite``: SQLite in WAL mode (readers never block the writer), tables
      ``meta`` (``schema_version``, ``task``), ``clips``, ``pairs`` and ``labels``;
    - ``clips/<clip_id>.npz``: one compressed numpy archive per segment with the arrays
      ``observations``, ``actions``, ``true_rewards``, ``after_termination``,
      ``start_step`` and, if present, ``render_states`` and ``frames``. Files are
      written atomically (temporary file, fsync, rename) and ``clips.path`` is relative
      to ``clips_dir``, so the folder can be moved or backed up as a whole.

    The trainer adds pairs and reads new labels with a cursor (:meth:`labels_after`);
    viewers in other processes lease pairs (:meth:`lease_next`) and record answers. Every
    write is its own ``BEGIN IMMEDIATE`` transaction, committed at once (with
    ``synchronous = FULL``), so no label is lost when either process dies; connections
    wait up to ``busy_timeout`` seconds for another process's write. ``pair_id`` is
    unique in ``labels``, so a pair never gets two labels. ``label_id`` is
    AUTOINCREMENT: ids are never reused, even after :meth:`undo_label`, so a cursor
    never misses a label.

    One object per thread (a sqlite3 connection is not shared between threads).

    A write that fails for lack of disk space (the database's or a clip file's) raises
    :class:`PrefrlError` and leaves the store as it was: the transaction is rolled back
    and a clip file is written in full or not at all.

    :param clips_dir: the folder (created if missing, unless ``readonly``)
    :param task: task name; a store made for another task is refused
    :param busy_timeout: seconds to wait for a lock held by another process
    :param readonly: only read an existing store: nothing in the folder is created,
        migrated or changed (an older schema version is read as it is), and a run may be
        writing to it meanwhile; for exports, backups and ``--labels-from``
    :raises PrefrlError: the store belongs to another task, has an unknown schema
        version, or is not a SQLite database; ``readonly`` and there is no store
    """

    def __init__(
        self, clips_dir: str | os.PathLike[str], task: str, busy_timeout: float = 30.0, *, readonly: bool = False
    ) -> None:
        self.clips_dir = Path(clips_dir)
        self.task = task
        self.db_path = self.clips_dir / "labels.sqlite"
        self.clip_dir = self.clips_dir / "clips"
        self._conn: sqlite3.Connection | None = None
        if readonly:
            self._open_readonly(busy_timeout)
            return
        self.clip_dir.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions, we open each one explicitly.
        self._conn = sqlite3.connect(self.db_path, timeout=busy_timeout, isolation_level=None)
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise PrefrlError(f"label store {self.db_path} could not switch to WAL mode (got {mode}); put the clips folder on a local disk")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate_if_older()
            with self._transaction() as conn:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                self._check_meta(conn)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise PrefrlError(f"{self.db_path} is not a usable label store ({exc}); move it away or choose another clips folder") from None
        except BaseException:
            self.close()
            raise

    def _open_readonly(self, busy_timeout: float) -> None:
        """Connect so that any write attempt fails, even by mistake (``query_only``).

        Not SQLite's ``mode=ro``: a read-only connection to a WAL database creates the
        ``-wal`` and ``-shm`` files and cannot remove them when it closes; this one, the
        last to close, removes them and leaves the folder exactly as it found it.
        ``mode=rw`` (not ``rwc``): a missing database is an error, never created.
        """
        if not self.db_path.is_file():
            raise PrefrlError(
                f"no label store in {self.clips_dir} (labels.sqlite is missing); give a run directory or a clips folder"
            )
        uri = self.db_path.resolve().as_uri() + "?mode=rw"
        self._conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None)
        try:
            self._conn.execute("PRAGMA query_only = ON")
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            version = self._stored_version()
            if version is None:
                raise PrefrlError(f"{self.db_path} has no schema_version: it is not a prefrl label store; give another clips folder")
            # Older layouts hold the same pairs and labels tables: readable without migrating.
            if not version.isdigit() or not 1 <= int(version) <= SCHEMA_VERSION:
                raise self._version_error(version)
            self._check_task(dict(self._conn.execute("SELECT key, value FROM meta").fetchall()))
        except sqlite3.DatabaseError as exc:
            self.close()
            raise PrefrlError(f"{self.db_path} is not a usable label store ({exc}); give another clips folder") from None
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- plumbing

    @property
    def connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise PrefrlError(f"label store {self.db_path} is closed")
        return self._conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: takes the write lock up front (waiting up to the busy
        timeout), so a read-then-write inside it is atomic across processes."""
        conn = self.connection
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")  # inside: a failed commit (disk full) must roll back too
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back by itself already
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
                raise PrefrlError(
                    f"label store {self.db_path}: the disk is full ({exc}); nothing of this change was saved, "
                    "earlier labels are safe; free disk space and try again"
                ) from None
            raise

    def _stored_version(self) -> str | None:
        conn = self.connection
        if conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
            return None
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return None if row is None else str(row[0])

    def _migrate_if_older(self) -> None:
        """Upgrade a store written by an older prefrl, after a backup copy of it."""
        version = self._stored_version()
        if version is None or not version.isdigit() or int(version) >= SCHEMA_VERSION:
            return  # new store, current one, or one _check_meta refuses with a message
        backup_path = self.db_path.with_name(f"labels.sqlite.v{version}.bak")
        if not backup_path.exists():
            backup = sqlite3.connect(backup_path)
            try:
                self.connection.backup(backup)
            finally:
                backup.close()
        with self._transaction() as conn:
            current = int(version)
            while current < SCHEMA_VERSION:
                if current not in _MIGRATIONS:
                    raise PrefrlError(
                        f"label store {self.db_path} has schema_version {current}, which this prefrl "
                        "cannot migrate; use the prefrl that wrote it to export its labels"
                    )
                _MIGRATIONS[current](conn)
                current += 1
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

    def _check_meta(self, conn: sqlite3.Connection) -> None:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("schema_version", str(SCHEMA_VERSION)), ("task", self.task), ("created", repr(time.time()))],
            )
            return
        version = meta.get("schema_version")
        if version != str(SCHEMA_VERSION):
            raise self._version_error(version)
        self._check_task(meta)

    def _version_error(self, version: str | None) -> PrefrlError:
        return PrefrlError(
            f"label store {self.db_path} has schema_version {version}, this prefrl reads "
            f"schema_version {SCHEMA_VERSION}; use a matching prefrl or a new clips folder"
        )

    def _check_task(self, meta: dict[str, str]) -> None:
        if meta.get("task") != self.task:
            raise PrefrlError(
                f"label store {self.db_path} belongs to task '{meta.get('task')}', not '{self.task}'; "
                "choose another clips folder"
            )

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- clips and pairs

    def _clip_path(self, clip_id: str) -> Path:
        return self.clip_dir / f"{clip_id}.npz"

    def _write_clip(self, segment: Segment) -> None:
        arrays = {name: np.asarray(getattr(segment, name)) for name in _CLIP_ARRAYS}
        arrays["start_step"] = np.asarray(segment.start_step, dtype=np.int64)
        for name in _OPTIONAL_ARRAYS:
            value = getattr(segment, name)
            if value is not None:
                arrays[name] = np.asarray(value)
        target = self._clip_path(segment.segment_id)
        try:
            _write_atomically(target, "wb", lambda handle: np.savez_compressed(handle, **arrays))
        except OSError as exc:
            raise _write_error(target, exc, "no pair of this batch was stored") from None

    def add_pairs(self, pairs: Sequence[ClipPair]) -> None:
        """Store clip pairs as pending queries.

        Each segment's clip file is written once (per ``segment_id``), then the clip and
        pair rows in one transaction. Adding the same pairs again is a no-op.

        :raises PrefrlError: an empty or unsafe id, or an id already stored with other
            content (e.g. two runs sharing one clips folder)
        """
        if not pairs:
            return
        conn = self.connection
        segments: dict[str, Segment] = {}
        for pair in pairs:
            if not pair.pair_id or not _SAFE_ID.fullmatch(pair.pair_id):
                raise PrefrlError(f"pair id {pair.pair_id!r} is empty or unsafe; use letters, digits, '_', '-', '.'")
            for segment in (pair.left, pair.right):
                if not segment.segment_id or not _SAFE_ID.fullmatch(segment.segment_id):
                    raise PrefrlError(
                        f"segment id {segment.segment_id!r} is empty or unsafe as a file name; "
                        "use letters, digits, '_', '-', '.'"
                    )
                segments.setdefault(segment.segment_id, segment)

        known = self._known_clips(conn, list(segments))
        for clip_id, segment in segments.items():
            row = known.get(clip_id)
            if row is not None:
                length, true_return = row
                if length != len(segment) or not math.isclose(true_return, segment.true_return, rel_tol=1e-6, abs_tol=1e-6):
                    raise PrefrlError(
                        f"clip '{clip_id}' is already stored in {self.clips_dir} with other content "
                        f"(length {length}, return {true_return:g}); use a fresh clips folder per run"
                    )
                if self._clip_path(clip_id).is_file():
                    continue
            # Files first and outside the transaction: writing large arrays must not hold
            # the database's write lock. A crash in between leaves only an unused file.
            self._write_clip(segment)

        now = time.time()
        with self._transaction() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO clips (clip_id, path, length, true_return, created) VALUES (?, ?, ?, ?, ?)",
                [
                    (clip_id, f"clips/{clip_id}.npz", len(segment), segment.true_return, now)
                    for clip_id, segment in segments.items()
                ],
            )
            for pair in pairs:
                existing = conn.execute(
                    "SELECT left_clip, right_clip FROM pairs WHERE pair_id = ?", (pair.pair_id,)
                ).fetchone()
                wanted = (pair.left.segment_id, pair.right.segment_id)
                if existing is None:
                    conn.execute(
                        "INSERT INTO pairs (pair_id, left_clip, right_clip, created, status) VALUES (?, ?, ?, ?, 'pending')",
                        (pair.pair_id, *wanted, now),
                    )
                elif tuple(existing) != wanted:
                    raise PrefrlError(
                        f"pair '{pair.pair_id}' is already stored with clips {tuple(existing)}, not {wanted}; "
                        "use a fresh clips folder per run"
                    )

    @staticmethod
    def _known_clips(conn: sqlite3.Connection, clip_ids: list[str]) -> dict[str, tuple[int, float]]:
        known: dict[str, tuple[int, float]] = {}
        for start in range(0, len(clip_ids), 500):  # stay below SQLite's variable limit
            chunk = clip_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for clip_id, length, true_return in conn.execute(
                f"SELECT clip_id, length, true_return FROM clips WHERE clip_id IN ({marks})", chunk
            ):
                known[clip_id] = (int(length), float(true_return))
        return known

    def next_id_number(self, table: str, prefix: str) -> int:
        """One above the largest ``N`` of the ids ``prefix + N`` (``N`` all digits) in
        ``pairs`` or ``clips``; 0 if there are none.

        :param table: ``"pairs"`` or ``"clips"``
        :param prefix: e.g. ``"q"`` (query pairs) or ``"s"`` (segments)
        """
        column = {"pairs": "pair_id", "clips": "clip_id"}.get(table)
        if column is None:
            raise ValueError(f"table must be 'pairs' or 'clips', not {table!r}")
        highest = -1
        for (value,) in self.connection.execute(f"SELECT {column} FROM {table} WHERE {column} GLOB ?",
                                                (f"{prefix}[0-9]*",)):
            digits = str(value)[len(prefix):]
            if digits.isdigit():
                highest = max(highest, int(digits))
        return highest + 1

    def load_clip(self, clip_id: str) -> Segment:
        """Read one clip back as a :class:`Segment`.

        :raises PrefrlError: unknown clip, or its file is missing, truncated or malformed
        """
        row = self.connection.execute("SELECT path, length FROM clips WHERE clip_id = ?", (clip_id,)).fetchone()
        if row is None:
            raise PrefrlError(f"clip '{clip_id}' is not in the label store {self.db_path}")
        path = self.clips_dir / row[0]
        length = int(row[1])
        try:
            # Our own handle: np.load leaks the one it opens when the archive is corrupt.
            with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except FileNotFoundError:
            raise PrefrlError(f"clip file {path} is missing; restore it from a backup or drop this clips folder") from None
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise PrefrlError(f"clip file {path} is unreadable ({type(exc).__name__}: {exc}); it may be truncated") from None
        missing = [name for name in _CLIP_ARRAYS if name not in arrays]
        if missing:
            raise PrefrlError(f"clip file {path} lacks the arrays {', '.join(missing)}")
        if len(arrays["observations"]) != length:
            raise PrefrlError(
                f"clip file {path} has {len(arrays['observations'])} steps, the store says {length}"
            )
        try:
            return Segment(
                observations=arrays["observations"],
                actions=arrays["actions"],
                true_rewards=arrays["true_rewards"],
                after_termination=arrays["after_termination"].astype(bool),
                segment_id=clip_id,
                start_step=int(arrays["start_step"]) if "start_step" in arrays else 0,
                render_states=arrays.get("render_states"),
                frames=arrays.get("frames"),
            )
        except (ValueError, TypeError) as exc:
            raise PrefrlError(f"clip file {path} has malformed arrays: {exc}") from None

    def load_pair(self, pair_id: str) -> ClipPair:
        """Read one stored pair with both clips.

        :raises PrefrlError: unknown pair, or a clip file missing, truncated or malformed
        """
        row = self.connection.execute(
            "SELECT left_clip, right_clip FROM pairs WHERE pair_id = ?", (pair_id,)
        ).fetchone()
        if row is None:
            raise PrefrlError(f"pair '{pair_id}' is not in the label store {self.db_path}")
        left, right = self.load_clip(row[0]), self.load_clip(row[1])
        try:
            return ClipPair(left, right, pair_id=pair_id)
        except ValueError as exc:
            raise PrefrlError(f"pair '{pair_id}' in {self.db_path} has mismatched clips: {exc}") from None

    # ----------------------------------------------------------------- labels

    def record_label(self, pair_id: str, choice: Choice, labeller: str) -> bool:
        """Store the answer about a pair, unless it already has one.

        :param pair_id: a stored pair
        :param choice: the answer
        :param labeller: who answered
        :return: False if the pair was already labelled (the first label stays)
        :raises PrefrlError: unknown pair or invalid choice
        """
        choice = _as_choice(choice)
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM pairs WHERE pair_id = ?", (pair_id,)).fetchone() is None:
                raise PrefrlError(f"pair '{pair_id}' is not in the label store {self.db_path}")
            inserted = conn.execute(
                "INSERT OR IGNORE INTO labels (pair_id, choice, labeller, created) VALUES (?, ?, ?, ?)",
                (pair_id, choice.value, labeller, time.time()),
            ).rowcount
            if inserted:
                conn.execute(
                    "UPDATE pairs SET status = 'answered', lease_owner = NULL, lease_expires = NULL WHERE pair_id = ?",
                    (pair_id,),
                )
        return bool(inserted)

    def undo_label(
        self, pair_id: str, labeller: str, *, lease_to: str | None = None, lease_seconds: float = 60.0
    ) -> bool:
        """Delete ``labeller``'s label of a pair and make the pair pending again.

        A label the trainer already read with :meth:`labels_after` stays with the
        trainer; when the pair is labelled again, the new label has a larger
        ``label_id`` and should replace the old one for that ``pair_id``.

        :param pair_id: the pair
        :param labeller: only this labeller's label is removed
        :param lease_to: lease the pair straight back to this owner (a viewer's undo
            shows the same pair again), else it is free for anyone
        :param lease_seconds: length of that lease
        :return: whether a label was deleted
        """
        with self._transaction() as conn:
            # Keep the undone answer: the trainer may already have read it.
            conn.execute(
                "INSERT OR REPLACE INTO undone_labels (label_id, pair_id, choice, labeller, created, undone) "
                "SELECT label_id, pair_id, choice, labeller, created, ? FROM labels WHERE pair_id = ? AND labeller = ?",
                (time.time(), pair_id, labeller),
            )
            deleted = conn.execute(
                "DELETE FROM labels WHERE pair_id = ? AND labeller = ?", (pair_id, labeller)
            ).rowcount
            if deleted:
                expires = time.time() + lease_seconds if lease_to is not None else None
                conn.execute(
                    "UPDATE pairs SET status = 'pending', lease_owner = ?, lease_expires = ? WHERE pair_id = ?",
                    (lease_to, expires, pair_id),
                )
        return bool(deleted)

    def undone_labels(self) -> list[LabelRow]:
        """Every answer that was undone, oldest first: ``(label_id, pair_id, choice,
        labeller, time)`` with the time of the answer (not of the undo)."""
        rows = self.connection.execute(
            "SELECT label_id, pair_id, choice, labeller, created FROM undone_labels ORDER BY label_id"
        ).fetchall()
        return [(int(r[0]), str(r[1]), Choice(r[2]), str(r[3]), float(r[4])) for r in rows]

    def lease_next(self, owner: str, lease_seconds: float) -> str | None:
        """Take the oldest pending pair that nobody holds a live lease on.

        Atomic across processes: two viewers never hold the same pair at once. A lease
        that expired (its viewer died or wandered off) can be taken by anyone.

        :param owner: a name unique to the viewer (e.g. host, pid and labeller)
        :param lease_seconds: how long the pair is reserved
        :return: the pair id, or None if nothing is available
        """
        with self._transaction() as conn:
            now = time.time()
            row = conn.execute(
                "SELECT pair_id FROM pairs WHERE status = 'pending' "
                "AND (lease_owner IS NULL OR lease_expires IS NULL OR lease_expires <= ?) "
                "ORDER BY created, rowid LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE pairs SET lease_owner = ?, lease_expires = ? WHERE pair_id = ?",
                (owner, now + lease_seconds, row[0]),
            )
        return str(row[0])

    def renew_leases(self, pair_ids: Sequence[str], owner: str, lease_seconds: float) -> list[str]:
        """Extend ``owner``'s live leases (a viewer keeps the pair on screen and the ones it
        prepared ahead while the person takes their time).

        A lease that already expired is renewed too unless someone else took the pair
        meanwhile; an answered pair is not.

        :param pair_ids: pairs the owner believes it holds
        :param owner: the viewer's lease owner name
        :param lease_seconds: new length of each lease, from now
        :return: the ids still held by ``owner`` (the others were lost)
        """
        if not pair_ids:
            return []
        held: list[str] = []
        with self._transaction() as conn:
            expires = time.time() + lease_seconds
            for pair_id in pair_ids:
                if conn.execute(
                    "UPDATE pairs SET lease_expires = ? WHERE pair_id = ? AND lease_owner = ? AND status = 'pending'",
                    (expires, pair_id, owner),
                ).rowcount:
                    held.append(pair_id)
        return held

    def release(self, pair_id: str, owner: str) -> bool:
        """Give back a lease held by ``owner``; returns whether it held one."""
        with self._transaction() as conn:
            released = conn.execute(
                "UPDATE pairs SET lease_owner = NULL, lease_expires = NULL WHERE pair_id = ? AND lease_owner = ?",
                (pair_id, owner),
            ).rowcount
        return bool(released)

    def labels_after(self, label_id: int) -> list[LabelRow]:
        """Labels with an id above the cursor, oldest first.

        :param label_id: the largest id already read (0 at the start)
        :return: ``(label_id, pair_id, choice, labeller, time)`` tuples; the last id is
            the next cursor
        """
        rows = self.connection.execute(
            "SELECT label_id, pair_id, choice, labeller, created FROM labels WHERE label_id > ? ORDER BY label_id",
            (int(label_id),),
        ).fetchall()
        return [(int(i), str(p), Choice(c), str(who), float(t)) for i, p, c, who, t in rows]

    def preferences(self) -> list[Preference]:
        """Every answer in the store with its pair, oldest first ("can't tell" included).

        :raises PrefrlError: a clip file of an answered pair is missing or unreadable
        """
        return [
            Preference(pair=self.load_pair(pair_id), choice=choice, labeller=labeller)
            for _, pair_id, choice, labeller, _ in self.labels_after(0)
        ]

    def counts(self) -> dict[str, int]:
        """``pairs``, ``pending``, ``answered`` and ``leased`` (pending under a live lease)."""
        conn = self.connection
        now = time.time()
        total, pending, answered, leased = conn.execute(
            "SELECT COUNT(*), "
            "COALESCE(SUM(status = 'pending'), 0), "
            "COALESCE(SUM(status = 'answered'), 0), "
            "COALESCE(SUM(status = 'pending' AND lease_owner IS NOT NULL AND lease_expires > ?), 0) "
            "FROM pairs",
            (now,),
        ).fetchone()
        return {"pairs": int(total), "pending": int(pending), "answered": int(answered), "leased": int(leased)}

    # ----------------------------------------------------------------- exchange

    def export_jsonl(self, path: str | os.PathLike[str]) -> int:
        """Write all labels as JSON lines (written atomically), oldest first.

        Format, one object per line::

            {"pair_id": "q000012", "left_clip": "s0000031", "right_clip": "s0000007",
             "choice": "left", "labeller": "alice", "time": 1700000000.0}

        ``choice`` is one of ``left``, ``right``, ``tie``, ``cant_tell``; ``time`` is unix
        seconds. Clips are referred to by id; copy the ``clips/`` folder along for
        another machine.

        :return: number of labels written
        """
        rows = self.connection.execute(
            "SELECT l.pair_id, p.left_clip, p.right_clip, l.choice, l.labeller, l.created "
            "FROM labels l JOIN pairs p ON p.pair_id = l.pair_id ORDER BY l.label_id"
        ).fetchall()
        target = Path(path)

        def write(handle: IO[Any]) -> None:
            for row in rows:
                handle.write(json.dumps(dict(zip(_JSONL_KEYS, row))) + "\n")

        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(target, "w", write)
        except OSError as exc:
            raise _write_error(target, exc, f"{target} is as it was") from None
        return len(rows)

    def import_jsonl(self, path: str | os.PathLike[str]) -> dict[str, int]:
        """Add the labels of an :meth:`export_jsonl` file, in one transaction.

        A label is skipped when its pair is unknown here (or stored with other clips) or
        already labelled; the original labeller and time are kept.

        :return: ``{"imported", "unknown_pair", "already_labelled"}`` counts
        :raises PrefrlError: the file is missing or a line is malformed (nothing imported)
        """
        source = Path(path)
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise PrefrlError(
                f"cannot read labels file {source}: {exc.strerror}; give a file written by `prefrl labels export`"
            ) from None
        except UnicodeDecodeError:
            raise PrefrlError(f"labels file {source} is not UTF-8 text; give a file written by `prefrl labels export`") from None
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                missing = [key for key in _JSONL_KEYS if key not in record]
                if missing:
                    raise ValueError(f"missing keys {', '.join(missing)}")
                records.append((
                    str(record["pair_id"]), str(record["left_clip"]), str(record["right_clip"]),
                    Choice(record["choice"]), str(record["labeller"]), float(record["time"]),
                ))
            except (ValueError, TypeError, AttributeError) as exc:
                raise PrefrlError(f"{source}:{number} is not a valid label line ({exc})") from None

        counts = {"imported": 0, "unknown_pair": 0, "already_labelled": 0}
        with self._transaction() as conn:
            for pair_id, left, right, choice, labeller, created in records:
                row = conn.execute("SELECT left_clip, right_clip FROM pairs WHERE pair_id = ?", (pair_id,)).fetchone()
                if row is None or tuple(row) != (left, right):
                    counts["unknown_pair"] += 1
                    continue
                inserted = conn.execute(
                    "INSERT OR IGNORE INTO labels (pair_id, choice, labeller, created) VALUES (?, ?, ?, ?)",
                    (pair_id, choice.value, labeller, created),
                ).rowcount
                if not inserted:
                    counts["already_labelled"] += 1
                    continue
                conn.execute(
                    "UPDATE pairs SET status = 'answered', lease_owner = NULL, lease_expires = NULL WHERE pair_id = ?",
                    (pair_id,),
                )
                counts["imported"] += 1
        return counts


def _as_choice(choice: Choice | str) -> Choice:
    try:
        return Choice(choice)
    except ValueError:
        raise PrefrlError(
            f"invalid choice {choice!r}; use one of {', '.join(c.value for c in Choice)}"
        ) from None
