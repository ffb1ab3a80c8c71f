"""The label store: clip pairs and their labels in one clips folder, shared between
the trainer and any number of viewers in other processes (SQLite in WAL mode).

(Above 500 lines: one class holding all of the store's SQL, so every transaction can be
read in one place; its schema, clip files and exchange format are the modules beside it.)
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from prefrl.data.segments import ClipPair, Segment
from prefrl.feedback import schema
from prefrl.feedback.choices import Choice, Preference, parse_choice
from prefrl.feedback.clip_files import clip_file_name, read_clip, segments_by_id, write_clip
from prefrl.feedback.exchange import ExchangedLabel, read_labels, write_labels
from prefrl.util.errors import PrefrlError, write_error

#: One new label: ``(label_id, pair_id, choice, labeller, time)``.
LabelRow = tuple[int, str, Choice, str, float]


class LabelStore:
    """Clip pairs and their labels in one clips folder, shared between processes.

    Layout of ``clips_dir``:

    - ``labels.sqlite``: SQLite in WAL mode (readers never block the writer), tables
      ``meta`` (``schema_version``, ``task``), ``clips``, ``pairs`` and ``labels``;
    - ``clips/<clip_id>.npz``: one file per segment (:mod:`prefrl.feedback.clip_files`);
      ``clips.path`` is relative to ``clips_dir``, so the folder can be moved or backed
      up as a whole.

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
        self.db_path = self.clips_dir / schema.STORE_FILE
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
                schema.create_tables(conn)
                schema.check_meta(conn, self.db_path, self.task)
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
            schema.check_readable(self._conn, self.db_path, self.task)
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

    def _migrate_if_older(self) -> None:
        """Upgrade a store written by an older prefrl, after a backup copy of it."""
        version = schema.stored_version(self.connection)
        if version is None or not schema.is_older(version):
            return
        schema.back_up(self.connection, self.db_path, version)
        with self._transaction() as conn:
            schema.migrate(conn, int(version), self.db_path)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- clips and pairs

    def _clip_path(self, clip_id: str) -> Path:
        return self.clips_dir / clip_file_name(clip_id)

    def _write_clip(self, segment: Segment) -> None:
        target = self._clip_path(segment.segment_id)
        try:
            write_clip(target, segment)
        except OSError as exc:
            raise write_error(target, exc, "no pair of this batch was stored") from None

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
        segments = segments_by_id(pairs)
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
                    (clip_id, clip_file_name(clip_id), len(segment), segment.true_return, now)
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

    def pair_ids(self) -> set[str]:
        """The ids of every pair in the store."""
        return {row[0] for row in self.connection.execute("SELECT pair_id FROM pairs")}

    def load_clip(self, clip_id: str) -> Segment:
        """Read one clip back as a :class:`Segment`.

        :raises PrefrlError: unknown clip, or its file is missing, truncated or malformed
        """
        row = self.connection.execute("SELECT path, length FROM clips WHERE clip_id = ?", (clip_id,)).fetchone()
        if row is None:
            raise PrefrlError(f"clip '{clip_id}' is not in the label store {self.db_path}")
        return read_clip(self.clips_dir / row[0], clip_id, int(row[1]))

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
        choice = parse_choice(choice)
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
        """Write all labels, oldest first, as JSON lines (the format of
        :mod:`prefrl.feedback.exchange`), atomically.

        :return: number of labels written
        """
        rows = self.connection.execute(
            "SELECT l.pair_id, p.left_clip, p.right_clip, l.choice, l.labeller, l.created "
            "FROM labels l JOIN pairs p ON p.pair_id = l.pair_id ORDER BY l.label_id"
        ).fetchall()
        write_labels(path, [ExchangedLabel(p, left, right, Choice(c), who, t) for p, left, right, c, who, t in rows])
        return len(rows)

    def import_jsonl(self, path: str | os.PathLike[str]) -> dict[str, int]:
        """Add the labels of an :meth:`export_jsonl` file, in one transaction.

        A label is skipped when its pair is unknown here (or stored with other clips) or
        already labelled; the original labeller and time are kept.

        :return: ``{"imported", "unknown_pair", "already_labelled"}`` counts
        :raises PrefrlError: the file is missing or a line is malformed (nothing imported)
        """
        labels = read_labels(path)
        counts = {"imported": 0, "unknown_pair": 0, "already_labelled": 0}
        with self._transaction() as conn:
            for label in labels:
                row = conn.execute("SELECT left_clip, right_clip FROM pairs WHERE pair_id = ?", (label.pair_id,)).fetchone()
                if row is None or tuple(row) != (label.left_clip, label.right_clip):
                    counts["unknown_pair"] += 1
                    continue
                inserted = conn.execute(
                    "INSERT OR IGNORE INTO labels (pair_id, choice, labeller, created) VALUES (?, ?, ?, ?)",
                    (label.pair_id, label.choice.value, label.labeller, label.time),
                ).rowcount
                if not inserted:
                    counts["already_labelled"] += 1
                    continue
                conn.execute(
                    "UPDATE pairs SET status = 'answered', lease_owner = NULL, lease_expires = NULL WHERE pair_id = ?",
                    (label.pair_id,),
                )
                counts["imported"] += 1
        return counts
