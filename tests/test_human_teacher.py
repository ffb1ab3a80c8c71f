"""The human teacher: queries go to the label store, answers come back from viewers in
other processes as Preferences the reward model trains on; nothing is lost on kill -9."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from clip_fixtures import DRIVER, make_pairs, subprocess_env  # noqa: E402

from prefrl.config.settings import TeacherSettings  # noqa: E402
from prefrl.feedback.choices import Choice, Preference  # noqa: E402
from prefrl.feedback.store import LabelStore  # noqa: E402
from prefrl.feedback.teachers import TEACHER_KINDS, HumanTeacher, SyntheticTeacher, Teacher, make_teacher  # noqa: E402
from prefrl.util.errors import PrefrlError  # noqa: E402

TASK = "testtask"


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    with LabelStore(tmp_path, TASK) as label_store:
        yield label_store


def test_make_teacher_human_needs_the_store_and_synthetic_is_unchanged(store: LabelStore) -> None:
    assert TEACHER_KINDS == ("synthetic", "human")
    teacher = make_teacher("human", TeacherSettings(), 0, 0.0, store=store)
    assert isinstance(teacher, HumanTeacher) and isinstance(teacher, Teacher) and teacher.answers_in_store
    assert not SyntheticTeacher.answers_in_store
    assert teacher.viewer_command == f"prefrl label {store.clips_dir}"
    with pytest.raises(PrefrlError, match="needs the run's label store"):
        make_teacher("human")
    assert isinstance(make_teacher("synthetic", TeacherSettings(), seed=1), SyntheticTeacher)
    assert isinstance(make_teacher("synthetic", store=store), SyntheticTeacher)
    with pytest.raises(PrefrlError, match="valid kinds: synthetic, human"):
        make_teacher("oracle")


def test_ask_stores_pending_queries_and_answers_never_block(store: LabelStore) -> None:
    teacher = HumanTeacher(store, settle_seconds=0.0)
    pairs = make_pairs(4)
    started = time.perf_counter()
    teacher.ask(pairs, step=100)
    assert teacher.answers() == []
    assert time.perf_counter() - started < 5.0
    assert teacher.pending() == 4
    assert store.counts()["pending"] == 4
    teacher.ask(pairs[:2], step=200)  # asking again is harmless
    assert teacher.pending() == 4 and store.counts()["pairs"] == 4


def test_labels_come_back_as_preferences_with_the_stored_pairs(store: LabelStore) -> None:
    teacher = HumanTeacher(store, settle_seconds=0.0)
    pairs = make_pairs(4)
    teacher.ask(pairs, step=1000)
    # A viewer in another process (another connection) answers three of them.
    with LabelStore(store.clips_dir, TASK) as viewer_store:
        viewer_store.record_label("q000002", Choice.RIGHT, "ann")
        viewer_store.record_label("q000000", Choice.LEFT, "bob")
        viewer_store.record_label("q000001", Choice.CANT_TELL, "ann")
    answers = teacher.answers()
    assert [(a.pair.pair_id, a.choice, a.labeller, a.step) for a in answers] == [
        ("q000002", Choice.RIGHT, "ann", 1000), ("q000000", Choice.LEFT, "bob", 1000),
        ("q000001", Choice.CANT_TELL, "ann", 1000),
    ]
    original = {p.pair_id: p for p in pairs}
    for answer in answers:
        assert isinstance(answer, Preference)
        source = original[answer.pair.pair_id]
        np.testing.assert_array_equal(answer.pair.left.observations, source.left.observations)
        np.testing.assert_array_equal(answer.pair.right.actions, source.right.actions)
        assert answer.pair.left.segment_id == source.left.segment_id
        assert answer.pair.left.frames is None  # display frames are not kept for training
    assert teacher.pending() == 1  # "can't tell" counts as answered
    assert teacher.answers() == []  # each label once
    kept = HumanTeacher(store, settle_seconds=0.0, keep_frames=True).answers()
    assert len(kept) == 3 and kept[0].pair.left.frames is not None  # a new cursor reads all labels


def test_an_answer_undone_within_the_settle_time_never_reaches_the_trainer(store: LabelStore) -> None:
    teacher = HumanTeacher(store, settle_seconds=0.4)
    teacher.ask(make_pairs(2), step=0)
    store.record_label("q000000", Choice.LEFT, "ann")
    assert teacher.answers() == []  # too fresh
    assert store.undo_label("q000000", "ann")
    store.record_label("q000000", Choice.RIGHT, "ann")
    time.sleep(0.45)
    answers = teacher.answers()
    assert [(a.pair.pair_id, a.choice) for a in answers] == [("q000000", Choice.RIGHT)]
    assert teacher.revised == 0


def test_a_late_correction_is_handed_over_and_counted(store: LabelStore) -> None:
    teacher = HumanTeacher(store, settle_seconds=0.0)
    teacher.ask(make_pairs(1), step=0)
    store.record_label("q000000", Choice.LEFT, "ann")
    assert len(teacher.answers()) == 1
    store.undo_label("q000000", "ann")
    assert teacher.pending() == 0 and teacher.answers() == []
    store.record_label("q000000", Choice.TIE, "ann")
    assert [a.choice for a in teacher.answers()] == [Choice.TIE]
    assert teacher.revised == 1


def test_a_label_whose_clip_file_is_gone_is_skipped_and_reported(store: LabelStore) -> None:
    teacher = HumanTeacher(store, settle_seconds=0.0)
    teacher.ask(make_pairs(2), step=0)
    (store.clip_dir / "qs00000.npz").unlink()
    store.record_label("q000000", Choice.LEFT, "ann")
    store.record_label("q000001", Choice.RIGHT, "ann")
    assert [a.pair.pair_id for a in teacher.answers()] == ["q000001"]
    assert teacher.unreadable and teacher.unreadable[0][0] == "q000000"
    assert teacher.answers() == []
    with pytest.raises(PrefrlError):
        HumanTeacher(store, settle_seconds=-1)


def test_viewer_labels_reach_the_reward_models_training_set(tmp_path: Path) -> None:
    """Keypresses in the viewer -> store -> HumanTeacher.answers() -> RewardModel."""
    from gymnasium import spaces

    from prefrl.config.settings import RewardSettings
    from prefrl.human.clips import RenderInfo
    from prefrl.human.viewer import LabelViewer, import_pygame
    from prefrl.reward.model import RewardModel

    pg = import_pygame()
    with LabelStore(tmp_path, TASK) as trainer_store:
        teacher = make_teacher("human", store=trainer_store)
        assert isinstance(teacher, HumanTeacher)
        teacher.settle_seconds = 0.0
        teacher.ask(make_pairs(5, kind="vector"), step=64)
        keys = [pg.K_LEFT, pg.K_RIGHT, pg.K_UP, pg.K_DOWN, pg.K_2]
        info = RenderInfo(task=TASK, domain="classic")
        with LabelViewer(tmp_path, TASK, info, labeller="carol", poll_seconds=0.02) as viewer:
            for key in keys:
                deadline = time.monotonic() + 10
                while viewer.current is None:
                    assert time.monotonic() < deadline
                    viewer.step()
                assert viewer.current.kind == "plot"  # vector clips: observation plots
                pg.event.post(pg.event.Event(pg.KEYDOWN, key=key))
                viewer.step()
        answers = teacher.answers()
        assert [a.choice.value for a in answers] == ["left", "right", "tie", "cant_tell", "right"]
        assert all(a.labeller == "carol" and a.step == 64 for a in answers)
        assert teacher.pending() == 0

        model = RewardModel(spaces.Box(-np.inf, np.inf, (3,), np.float32), spaces.Discrete(2), RewardSettings(), seed=0)
        assert model.add_preferences(answers) == 4  # "can't tell" is not trained on
        assert model.n_labels == 4
        targets = sorted(target for _, target, _ in model.labels)
        assert targets == [0.0, 0.0, 0.5, 1.0]
        stats = model.train(epochs=2)
        assert np.isfinite(stats["train_loss"])


def test_kill_9_of_a_labelling_viewer_loses_no_committed_label(tmp_path: Path) -> None:
    with LabelStore(tmp_path, TASK) as trainer_store:
        teacher = HumanTeacher(trainer_store, settle_seconds=0.0)
        teacher.ask(make_pairs(40), step=0)
        proc = subprocess.Popen(
            [sys.executable, str(DRIVER), str(tmp_path), TASK, "--name", "dora", "--delay", "0.03",
             "--lease-seconds", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
        )
        lines: list[str] = []
        received: list[Preference] = []
        try:
            assert proc.stdout is not None
            while sum("stored=1" in line for line in lines) < 8:
                line = proc.stdout.readline()
                assert line, f"viewer ended early: {proc.stderr.read() if proc.stderr else ''}"
                lines.append(line)
                received += teacher.answers()  # the trainer reads while the person labels
        finally:
            proc.kill()  # SIGKILL: no cleanup, no lease released
            rest, _ = proc.communicate(timeout=10)
        lines += rest.splitlines()
        assert proc.returncode == -9

        committed = [line.split("pair=")[1].split()[0] for line in lines if "stored=1" in line]
        on_screen = [line.split("pair=")[1].split()[0] for line in lines if line.startswith("event=shown")][-1]
        with sqlite3.connect(tmp_path / "labels.sqlite") as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        labels = {pair_id for _, pair_id, *_ in trainer_store.labels_after(0)}
        assert set(committed) <= labels  # every label the viewer reported is there
        # At most one more (committed in the instant before its log line): the pair on screen.
        assert len(labels - set(committed)) <= 1 and labels - set(committed) <= {on_screen}

        # The trainer goes on: reads every label, asks new queries...
        received += teacher.answers()
        assert sorted(p.pair.pair_id for p in received) == sorted(labels)
        assert teacher.pending() == 40 - len(labels)
        teacher.ask(make_pairs(2, first=40), step=5000)
        # ...and once the dead viewer's leases expire, every pending pair can be leased again.
        time.sleep(2.1)
        leased = set()
        while (pair_id := trainer_store.lease_next("next-viewer", 60)) is not None:
            leased.add(pair_id)
        assert len(leased) == 42 - len(labels)
        if on_screen not in labels:
            assert on_screen in leased
