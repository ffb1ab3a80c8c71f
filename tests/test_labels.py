"""Label schedule and the SQLite label store shared by trainer and viewers."""

from __future__ import annotations

import json
import math
import multiprocessing
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from prefrl.config.settings import LabelSettings
from prefrl.data.segments import ClipPair, Segment
from prefrl.feedback.choices import Choice, Preference
from prefrl.feedback.schedule import LabelSchedule
from prefrl.feedback.schema import SCHEMA_VERSION
from prefrl.feedback.store import LabelStore
from prefrl.util.errors import PrefrlError

# --------------------------------------------------------------------------- schedule


def test_schedule_endpoints_monotone_and_rate() -> None:
    schedule = LabelSchedule(budget=700, initial_labels=175, rate_constant=2e6, total_steps=1_000_000)
    assert schedule.target(0) == 175
    assert schedule.target(1_000_000) == 700
    assert schedule.target(5_000_000) == 700 and schedule.target(-5) == 175
    steps = np.linspace(0, 1_000_000, 501).astype(int)
    targets = [schedule.target(int(s)) for s in steps]
    assert all(isinstance(t, int) for t in targets)
    assert all(a <= b for a, b in zip(targets, targets[1:]))
    assert max(targets) == 700
    # The closed form, floored.
    t = 300_000
    exact = 175 + 525 * math.log1p(t / 2e6) / math.log1p(1_000_000 / 2e6)
    assert schedule.target(t) == math.floor(exact)
    # Rate proportional to c / (T + c): labels in equal step windows shrink as T grows.
    window = 10_000
    early = schedule.target(window) - schedule.target(0)
    late_steps = 900_000
    late = schedule.target(late_steps + window) - schedule.target(late_steps)
    assert late < early
    assert schedule.rate(late_steps) / schedule.rate(0) == pytest.approx(2e6 / (late_steps + 2e6))
    # A short run with a small constant: almost everything early (paper's 1/T shape).
    fast = LabelSchedule(budget=1000, initial_labels=0, rate_constant=1_000, total_steps=1_000_000)
    assert fast.target(100_000) > 600


def test_schedule_due_and_settings() -> None:
    schedule = LabelSchedule.from_settings(LabelSettings(budget=100, initial_labels=20, rate_constant=1e4), 100_000)
    assert schedule.due(0, 0) == 20
    assert schedule.due(0, 20) == 0
    assert schedule.due(100_000, 20) == 80
    assert schedule.due(50_000, 500) == 0  # never negative
    with pytest.raises(PrefrlError, match="initial_labels"):
        LabelSchedule(budget=10, initial_labels=11, rate_constant=1.0, total_steps=10)


# --------------------------------------------------------------------------- store helpers


def make_segment(k: int, length: int = 5, frames: bool = False) -> Segment:
    rng = np.random.default_rng(k)
    return Segment(
        observations=rng.normal(size=(length, 3)).astype(np.float32),
        actions=rng.integers(0, 4, size=length),
        true_rewards=np.full(length, float(k), dtype=np.float32),
        after_termination=np.arange(length) >= length - 1,
        segment_id=f"s{k:07d}",
        start_step=100 * k,
        render_states=rng.normal(size=(length, 4)),
        frames=rng.integers(0, 255, size=(length, 6, 8, 3), dtype=np.uint8) if frames else None,
    )


def make_pairs(n: int, first: int = 0) -> list[ClipPair]:
    # Segments are shared between pairs, as they are when drawn from one buffer.
    segments = [make_segment(k) for k in range(n + 1)]
    return [ClipPair(segments[k], segments[k + 1], pair_id=f"q{first + k:06d}") for k in range(n)]


def open_store(path: Path, task: str = "hopper") -> LabelStore:
    return LabelStore(path, task)


# --------------------------------------------------------------------------- store


def test_add_and_load_pairs_roundtrip_and_idempotent(tmp_path: Path) -> None:
    pairs = make_pairs(4)
    pairs.append(ClipPair(make_segment(50, frames=True), make_segment(51, frames=True), pair_id="q000004"))
    with open_store(tmp_path) as store:
        store.add_pairs(pairs)
        store.add_pairs(pairs)  # idempotent
        assert store.counts() == {"pairs": 5, "pending": 5, "answered": 0, "leased": 0}
        assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == sorted(
            f"s{k:07d}.npz" for k in [0, 1, 2, 3, 4, 50, 51]
        )  # one file per segment, no temporary files left
        for pair in pairs:
            loaded = store.load_pair(pair.pair_id)
            assert loaded.pair_id == pair.pair_id
            for got, want in ((loaded.left, pair.left), (loaded.right, pair.right)):
                assert got.segment_id == want.segment_id and got.start_step == want.start_step
                for name in ("observations", "actions", "true_rewards", "after_termination", "render_states", "frames"):
                    a, b = getattr(got, name), getattr(want, name)
                    assert (a is None and b is None) or np.array_equal(a, b)
        row = store.connection.execute("SELECT path, length, true_return FROM clips WHERE clip_id = 's0000003'").fetchone()
        assert row == ("clips/s0000003.npz", 5, 15.0)  # relative path: the folder can move
        # Same id, other content: refused instead of silently mixing two runs.
        clash = ClipPair(make_segment(0), make_segment(9, length=5), pair_id="q000000")
        with pytest.raises(PrefrlError, match="q000000"):
            store.add_pairs([clash])
        with pytest.raises(PrefrlError, match="unknown|not in"):
            store.load_pair("nope")


def test_record_twice_is_refused_and_undo_makes_pending(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.add_pairs(make_pairs(3))
        assert store.record_label("q000001", Choice.LEFT, "alice") is True
        assert store.record_label("q000001", Choice.RIGHT, "bob") is False  # never two labels
        rows = store.labels_after(0)
        assert [(r[1], r[2], r[3]) for r in rows] == [("q000001", Choice.LEFT, "alice")]
        assert store.counts()["answered"] == 1
        assert store.undo_label("q000001", "bob") is False  # only the labeller's own label
        assert store.undo_label("q000001", "alice") is True
        assert store.counts() == {"pairs": 3, "pending": 3, "answered": 0, "leased": 0}
        assert store.labels_after(0) == []
        assert store.record_label("q000001", Choice.TIE, "alice") is True
        assert store.labels_after(rows[-1][0])[0][2] is Choice.TIE  # a new id after the cursor
        with pytest.raises(PrefrlError, match="not in the label store"):
            store.record_label("q999999", Choice.LEFT, "alice")
        with pytest.raises(PrefrlError, match="invalid choice"):
            store.record_label("q000002", "sideways", "alice")  # type: ignore[arg-type]
        # undo can hand the pair straight back to the viewer that undid it
        assert store.undo_label("q000001", "alice", lease_to="viewer-a", lease_seconds=60)
        assert store.lease_next("viewer-b", 60) == "q000000"
        assert store.lease_next("viewer-b", 60) == "q000002"
        assert store.lease_next("viewer-b", 60) is None


def test_two_store_objects_never_lease_the_same_pair(tmp_path: Path) -> None:
    with open_store(tmp_path) as trainer:
        trainer.add_pairs(make_pairs(6))
    a, b = open_store(tmp_path), open_store(tmp_path)
    try:
        got = [a.lease_next("a", 60), b.lease_next("b", 60), a.lease_next("a", 60), b.lease_next("b", 60)]
        assert got == ["q000000", "q000001", "q000002", "q000003"]  # oldest first, all distinct
        assert a.counts()["leased"] == 4
        assert b.release("q000000", "b") is False  # not b's lease
        assert a.release("q000000", "a") is True
        assert b.lease_next("b", 60) == "q000000"
    finally:
        a.close()
        b.close()


def test_expired_lease_is_taken_again(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.add_pairs(make_pairs(1))
        assert store.lease_next("dead-viewer", 0.05) == "q000000"
        assert store.lease_next("other", 60) is None  # live lease
        time.sleep(0.1)
        assert store.lease_next("other", 60) == "q000000"
        assert store.record_label("q000000", Choice.RIGHT, "other")
        assert store.lease_next("third", 60) is None  # answered pairs are never leased


def _viewer(clips_dir: str, name: str, queue: multiprocessing.Queue, start: multiprocessing.Barrier) -> None:
    """A labelling process: lease, label, repeat, until nothing is left."""
    store = LabelStore(clips_dir, "hopper")
    start.wait(timeout=60)  # both viewers race from the same moment
    taken, refused = [], 0
    while (pair_id := store.lease_next(name, 30.0)) is not None:
        taken.append(pair_id)
        time.sleep(0.002)  # "watching the clips": without it one tight loop can starve the other's lock retries
        if not store.record_label(pair_id, Choice.LEFT, name):
            refused += 1
    store.close()
    queue.put((name, taken, refused))


def test_two_viewer_processes_never_get_the_same_pair(tmp_path: Path) -> None:
    n = 120
    with open_store(tmp_path) as store:
        store.add_pairs(make_pairs(n))
    ctx = multiprocessing.get_context("spawn")  # fresh processes, no inherited connection
    queue, start = ctx.Queue(), ctx.Barrier(2)
    workers = [ctx.Process(target=_viewer, args=(str(tmp_path), f"viewer{i}", queue, start)) for i in range(2)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    taken = [pair_id for _, pairs, _ in results for pair_id in pairs]
    assert sorted(taken) == [f"q{k:06d}" for k in range(n)]  # every pair exactly once
    assert all(refused == 0 for _, _, refused in results)
    assert all(pairs for _, pairs, _ in results), [(name, len(p)) for name, p, _ in results]
    with open_store(tmp_path) as store:
        labels = store.labels_after(0)
        assert len(labels) == n and len({r[1] for r in labels}) == n
        assert {r[3] for r in labels} <= {"viewer0", "viewer1"}
        assert store.counts() == {"pairs": n, "pending": 0, "answered": n, "leased": 0}


def test_labels_after_cursor(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.add_pairs(make_pairs(5))
        store.record_label("q000003", Choice.LEFT, "alice")
        store.record_label("q000000", Choice.CANT_TELL, "alice")
        first = store.labels_after(0)
        assert [r[1] for r in first] == ["q000003", "q000000"]
        cursor = first[-1][0]
        assert store.labels_after(cursor) == []
        with open_store(tmp_path) as viewer:  # a label written through another connection
            viewer.record_label("q000004", Choice.TIE, "bob")
        new = store.labels_after(cursor)
        assert len(new) == 1
        label_id, pair_id, choice, labeller, when = new[0]
        assert label_id > cursor and pair_id == "q000004" and choice is Choice.TIE and labeller == "bob"
        assert abs(when - time.time()) < 60
        # Labels pair up with stored clips as trainer-side preferences.
        pref = Preference(store.load_pair(pair_id), choice, labeller)
        assert pref.choice.target == 0.5


def test_export_import_roundtrip(tmp_path: Path) -> None:
    pairs = make_pairs(4)
    with open_store(tmp_path / "a") as source:
        source.add_pairs(pairs)
        source.record_label("q000000", Choice.LEFT, "alice")
        source.record_label("q000002", Choice.TIE, "bob")
        assert source.export_jsonl(tmp_path / "labels.jsonl") == 2
        original = source.labels_after(0)
    lines = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert set(lines[0]) == {"pair_id", "left_clip", "right_clip", "choice", "labeller", "time"}
    assert lines[0]["choice"] == "left" and lines[0]["left_clip"] == "s0000000"
    with open_store(tmp_path / "b") as target:
        target.add_pairs(pairs[1:])  # q000000 unknown here
        target.record_label("q000002", Choice.RIGHT, "carol")  # already labelled here
        counts = target.import_jsonl(tmp_path / "labels.jsonl")
        assert counts == {"imported": 0, "unknown_pair": 1, "already_labelled": 1}
    with open_store(tmp_path / "c") as target:
        target.add_pairs(pairs)
        assert target.import_jsonl(tmp_path / "labels.jsonl") == {"imported": 2, "unknown_pair": 0, "already_labelled": 0}
        copied = target.labels_after(0)
        assert [r[1:] for r in copied] == [r[1:] for r in original]  # same choices, labellers, times
        assert target.import_jsonl(tmp_path / "labels.jsonl")["already_labelled"] == 2
    (tmp_path / "bad.jsonl").write_text('{"pair_id": "q000000"}\n')
    with open_store(tmp_path / "c") as target, pytest.raises(PrefrlError, match="bad.jsonl:1"):
        target.import_jsonl(tmp_path / "bad.jsonl")


def test_other_task_and_schema_version_refused(tmp_path: Path) -> None:
    open_store(tmp_path, "hopper").close()
    with pytest.raises(PrefrlError, match="'hopper'.*'pong'"):
        LabelStore(tmp_path, "pong")
    with sqlite3.connect(tmp_path / "labels.sqlite") as conn:
        conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    with pytest.raises(PrefrlError, match=f"schema_version 7.*schema_version {SCHEMA_VERSION}"):
        LabelStore(tmp_path, "hopper")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "labels.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(PrefrlError, match="not a usable label store"):
        LabelStore(tmp_path / "junk", "hopper")


@pytest.mark.parametrize("damage", ["truncate", "delete", "wrong_shape"])
def test_damaged_clip_file_is_a_prefrl_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    with open_store(tmp_path) as store:
        store.add_pairs(make_pairs(1))
        path = tmp_path / "clips" / "s0000001.npz"
        if damage == "truncate":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif damage == "delete":
            path.unlink()
        else:
            short = make_segment(1, length=3)
            np.savez_compressed(path, observations=short.observations, actions=short.actions,
                                true_rewards=short.true_rewards, after_termination=short.after_termination)
        with pytest.raises(PrefrlError, match="s0000001.npz"):
            store.load_pair("q000000")


def test_wal_mode_and_integrity(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.add_pairs(make_pairs(3))
        store.record_label("q000000", Choice.LEFT, "alice")
    conn = sqlite3.connect(tmp_path / "labels.sqlite")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert dict(conn.execute("SELECT key, value FROM meta").fetchall())["task"] == "hopper"
    finally:
        conn.close()


#: The layout prefrl 0.1 wrote (schema_version 1), verbatim, to prove the migration path.
SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE clips (clip_id TEXT PRIMARY KEY, path TEXT NOT NULL, length INTEGER NOT NULL,
    true_return REAL NOT NULL, created REAL NOT NULL);
CREATE TABLE pairs (pair_id TEXT PRIMARY KEY, left_clip TEXT NOT NULL REFERENCES clips(clip_id),
    right_clip TEXT NOT NULL REFERENCES clips(clip_id), created REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'answered')),
    lease_owner TEXT, lease_expires REAL);
CREATE INDEX pairs_by_status ON pairs (status, created);
CREATE TABLE labels (label_id INTEGER PRIMARY KEY AUTOINCREMENT,
    pair_id TEXT NOT NULL UNIQUE REFERENCES pairs(pair_id),
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie', 'cant_tell')),
    labeller TEXT NOT NULL, created REAL NOT NULL);
"""


def test_a_store_written_by_schema_version_1_is_migrated_with_a_backup(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "labels.sqlite") as conn:
        conn.executescript(SCHEMA_V1)
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", "1"), ("task", "hopper")])
        conn.executemany("INSERT INTO clips VALUES (?, ?, 3, 0.0, 0.0)", [("a", "clips/a.npz"), ("b", "clips/b.npz")])
        conn.executemany("INSERT INTO pairs VALUES (?, 'a', 'b', ?, ?, NULL, NULL)",
                         [("p0", 1.0, "answered"), ("p1", 2.0, "answered"), ("p2", 3.0, "pending")])
        conn.executemany("INSERT INTO labels (pair_id, choice, labeller, created) VALUES (?, ?, 'ann', ?)",
                         [("p0", "left", 10.0), ("p1", "tie", 11.0)])
    with LabelStore(tmp_path, "hopper") as store:
        rows = store.labels_after(0)
        assert [(r[1], r[2]) for r in rows] == [("p0", Choice.LEFT), ("p1", Choice.TIE)]
        assert store.counts()["pending"] == 1
        version = store.connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        assert version == str(SCHEMA_VERSION)
        assert store.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # what version 2 adds works on the migrated store: an undone answer is kept
        assert store.undo_label("p1", "ann")
        assert [(r[1], r[2]) for r in store.undone_labels()] == [("p1", Choice.TIE)]
    with sqlite3.connect(tmp_path / "labels.sqlite.v1.bak") as backup:
        assert backup.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"
        assert backup.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 2
