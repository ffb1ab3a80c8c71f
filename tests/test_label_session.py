"""The labelling session without a window: answers, undo and waiting, driven directly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from clip_fixtures import make_store

from prefrl.feedback.choices import Choice
from prefrl.feedback.store import LabelStore
from prefrl.human.clips import RenderInfo
from prefrl.human.session import LabelSession, Notice
from prefrl.util.errors import PrefrlError

TASK = "testtask"


def next_pair(session: LabelSession, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while session.current is None:
        assert time.monotonic() < deadline, "no pair came"
        session.update(time.monotonic())
        time.sleep(0.005)
    session.confirm_shown()
    return session.current.pair_id


def test_answers_undo_and_waiting_without_pygame(tmp_path: Path) -> None:
    make_store(tmp_path, 2, kind="vector")
    notices: list[Notice] = []
    session = LabelSession(tmp_path, TASK, RenderInfo(task=TASK, domain="classic"), labeller="ann",
                           poll_seconds=0.02, notify=notices.append)
    session.open_store()
    session.start((64, 48))
    try:
        first = next_pair(session)
        assert session.answer(Choice.LEFT, time.monotonic())
        assert notices[-1].tone == "left" and "LEFT is better" in notices[-1].text
        second = next_pair(session)
        assert session.undo(time.monotonic())
        assert session.current is not None and session.current.pair_id == first  # instantly, from memory
        session.confirm_shown()
        assert session.answer(Choice.TIE, time.monotonic()) and next_pair(session) == second
        assert session.answer(Choice.CANT_TELL, time.monotonic())
        assert not session.answer(Choice.LEFT, time.monotonic())  # nothing on screen
        assert notices[-1].tone == "warn"
        while not session.prefetcher.idle:
            session.update(time.monotonic())
            time.sleep(0.01)
        session.update(time.monotonic())
        session.refresh_counts(time.monotonic(), force=True)
        assert session.waiting_message()[1] == "all 2 pairs labelled; the trainer adds more as it runs"
        assert session.session_labels == 2
    finally:
        session.close()
    with LabelStore(tmp_path, TASK) as store:
        assert {pair_id: choice for _, pair_id, choice, _, _ in store.labels_after(0)} == {
            first: Choice.TIE, second: Choice.CANT_TELL}
        assert store.counts()["leased"] == 0
    with pytest.raises(PrefrlError, match="labeller name is empty"):
        LabelSession(tmp_path, TASK, RenderInfo(task=TASK), labeller=" ")

