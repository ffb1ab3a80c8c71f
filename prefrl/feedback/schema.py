"""The label store's SQLite schema, its version and the migrations from older versions.

The functions here take an open connection; opening the database and the write
transactions (migrations run inside one) belong to :class:`~prefrl.feedback.store.LabelStore`.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from prefrl.util.errors import PrefrlError

#: The label store's database file in a clips folder.
STORE_FILE = "labels.sqlite"

#: Version of the label store's layout. Older stores are migrated on opening (after a
#: backup copy ``labels.sqlite.v<old>.bak``); a store of a newer version is refused.
#: 1: meta, clips, pairs, labels. 2: ``undone_labels`` keeps every undone answer.
SCHEMA_VERSION = 2

SCHEMA = """
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
MIGRATIONS = {1: _migrate_1_to_2}


def create_tables(conn: sqlite3.Connection) -> None:
    """Create whatever of :data:`SCHEMA` is missing."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def stored_version(conn: sqlite3.Connection) -> str | None:
    """The ``schema_version`` in ``meta``; None for a database without one (a new store)."""
    if conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else str(row[0])


def is_older(version: str | None) -> bool:
    """Whether a store of ``version`` is migrated on opening (an unknown or newer version
    is left to :func:`check_meta`, which refuses it with a message)."""
    return version is not None and version.isdigit() and int(version) < SCHEMA_VERSION


def back_up(conn: sqlite3.Connection, db_path: Path, version: str) -> None:
    """Copy the store to ``labels.sqlite.v<version>.bak`` before migrating it (once: an
    existing backup is kept)."""
    backup_path = db_path.with_name(f"labels.sqlite.v{version}.bak")
    if not backup_path.exists():
        backup = sqlite3.connect(backup_path)
        try:
            conn.backup(backup)
        finally:
            backup.close()


def migrate(conn: sqlite3.Connection, version: int, db_path: Path) -> None:
    """Upgrade a store of ``version`` to :data:`SCHEMA_VERSION`, inside a transaction.

    :raises PrefrlError: no migration from some version on the way
    """
    current = version
    while current < SCHEMA_VERSION:
        if current not in MIGRATIONS:
            raise PrefrlError(
                f"label store {db_path} has schema_version {current}, which this prefrl "
                "cannot migrate; use the prefrl that wrote it to export its labels"
            )
        MIGRATIONS[current](conn)
        current += 1
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))


def check_meta(conn: sqlite3.Connection, db_path: Path, task: str) -> None:
    """Write ``meta`` of a new store; else check its version and task.

    :raises PrefrlError: another schema version or another task
    """
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if not meta:
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("schema_version", str(SCHEMA_VERSION)), ("task", task), ("created", repr(time.time()))],
        )
        return
    version = meta.get("schema_version")
    if version != str(SCHEMA_VERSION):
        raise version_error(db_path, version)
    check_task(meta, db_path, task)


def check_readable(conn: sqlite3.Connection, db_path: Path, task: str) -> None:
    """Check a store opened read-only: a prefrl store of this task, of any version up to
    :data:`SCHEMA_VERSION` (older layouts hold the same pairs and labels tables: readable
    without migrating).

    :raises PrefrlError: not a label store, an unknown version, or another task
    """
    version = stored_version(conn)
    if version is None:
        raise PrefrlError(f"{db_path} has no schema_version: it is not a prefrl label store; give another clips folder")
    if not version.isdigit() or not 1 <= int(version) <= SCHEMA_VERSION:
        raise version_error(db_path, version)
    check_task(dict(conn.execute("SELECT key, value FROM meta").fetchall()), db_path, task)


def version_error(db_path: Path, version: str | None) -> PrefrlError:
    return PrefrlError(
        f"label store {db_path} has schema_version {version}, this prefrl reads "
        f"schema_version {SCHEMA_VERSION}; use a matching prefrl or a new clips folder"
    )


def check_task(meta: dict[str, str], db_path: Path, task: str) -> None:
    if meta.get("task") != task:
        raise PrefrlError(
            f"label store {db_path} belongs to task '{meta.get('task')}', not '{task}'; "
            "choose another clips folder"
        )
