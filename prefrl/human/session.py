"""A labelling session without a window: which pair is on screen, the person's answers,
undo, and the handover with the :class:`~prefrl.human.prefetch.PairPrefetcher`.

:class:`~prefrl.human.viewer.LabelViewer` draws a session and turns keys and clicks into
its calls; everything here can be driven (and tested) without pygame.
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from prefrl.feedback.choices import Choice
from prefrl.feedback.store import LabelStore
from prefrl.human.clips import RenderInfo
from prefrl.human.prefetch import PairPrefetcher, PreparedPair
from prefrl.util.errors import PrefrlError

#: Undone pairs kept prepared in memory, so that undoing the last answers is instant.
RECENT_KEPT = 2


@dataclass(frozen=True)
class Notice:
    """A short message for the person.

    :param text: what to say
    :param tone: how it looks: ``warn``, ``error`` or the value of the answer it is about
    :param seconds: how long it stays
    """

    text: str
    tone: str
    seconds: float = 1.5


class LabelSession:
    """The pairs one person answers in one viewer, and what they answered.

    Open it (:meth:`open_store`, then :meth:`start` with the size clips are scaled to),
    call :meth:`update` once a frame and :meth:`answer`, :meth:`undo`, :meth:`replay`
    or :meth:`quit` on the person's actions. Every answer is committed to the store
    before the call returns.

    :param clips_dir: the clips folder (holds ``labels.sqlite``)
    :param task: the store's task name
    :param info: how to render the clips
    :param labeller: name stored with each label
    :param ahead: pairs prepared ahead of the one on screen
    :param lease_seconds: how long a pair stays reserved without renewal
    :param poll_seconds: how often an idle session looks for new pairs
    :param loop_pause: seconds the last frame stays before a clip loops
    :param event_log: a stream receiving one line per event (``shown``, ``label``,
        ``undo``, ``waiting``, ``quit``), for scripts and tests
    :param notify: receives the messages for the person (default: dropped)
    :raises PrefrlError: an empty labeller name
    """

    def __init__(
        self,
        clips_dir: str | os.PathLike[str],
        task: str,
        info: RenderInfo,
        *,
        labeller: str = "human",
        ahead: int = 2,
        lease_seconds: float = 60.0,
        poll_seconds: float = 0.5,
        loop_pause: float = 0.5,
        event_log: TextIO | None = None,
        notify: Callable[[Notice], None] | None = None,
    ) -> None:
        if not labeller.strip():
            raise PrefrlError("the labeller name is empty; give --name NAME")
        self.clips_dir = Path(clips_dir)
        self.task = task
        self.info = info
        self.labeller = labeller
        self.ahead = ahead
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.loop_pause = loop_pause
        self.event_log = event_log
        self.notify = notify or (lambda notice: None)
        self.owner = f"{labeller}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        #: labels stored in this session (undo subtracts)
        self.session_labels = 0
        #: pair shown at the moment, or None (waiting)
        self.current: PreparedPair | None = None
        self.quitting = False
        self.pairs_shown = 0
        #: pair brought back by undo, still being prepared
        self.awaiting: str | None = None
        #: ``pairs``, ``pending``, ``answered``, ``leased`` of the store, refreshed twice a second
        self.counts = {"pairs": 0, "pending": 0, "answered": 0, "leased": 0}
        self._counts_at = -math.inf
        self._store: LabelStore | None = None
        self._prefetch: PairPrefetcher | None = None
        self._history: deque[str] = deque(maxlen=1000)  # pair ids answered here, newest last
        self._recent: OrderedDict[str, PreparedPair] = OrderedDict()  # kept for an instant undo
        self._shown_at = 0.0
        self._was_waiting = False
        self._announce: str | None = None

    # ---------------------------------------------------------------- lifecycle

    def open_store(self) -> None:
        """Open the label store (before the window: a wrong folder fails first)."""
        self._store = LabelStore(self.clips_dir, self.task)

    def start(self, box: tuple[int, int]) -> None:
        """Start preparing pairs, scaled to fit ``box`` = ``(width, height)``."""
        self._prefetch = PairPrefetcher(
            self.clips_dir, self.task, self.owner, self.info, box,
            ahead=self.ahead, lease_seconds=self.lease_seconds, poll_seconds=self.poll_seconds,
        ).start()
        self.refresh_counts(time.monotonic(), force=True)

    def close(self) -> None:
        """Give back the leases of pairs not answered and close the store (idempotent)."""
        if self._prefetch is not None:
            self._prefetch.stop(release=True)
            self._prefetch = None
        if self._store is not None:
            self._store.close()
            self._store = None

    @property
    def store(self) -> LabelStore:
        assert self._store is not None, "open the session first"
        return self._store

    @property
    def prefetcher(self) -> PairPrefetcher:
        assert self._prefetch is not None, "start the session first"
        return self._prefetch

    @property
    def shown_at(self) -> float:
        """Clock reading when the pair on screen appeared (or was replayed)."""
        return self._shown_at

    # ---------------------------------------------------------------- once a frame

    def update(self, now: float) -> None:
        """Bring on the next pair if due, pass on preparation errors, refresh the counts."""
        self._advance(now)
        for message in self.prefetcher.errors():
            self.notify(Notice(message, "error", seconds=6.0))
        self.refresh_counts(now)

    def confirm_shown(self) -> None:
        """The pair brought on by :meth:`update` is on screen now (logged only then, and
        answers count only from then on)."""
        if self._announce is not None:
            self._log("shown", pair=self._announce)
            self._announce = None

    def frame_index(self, now: float) -> int:
        """Index of the frame both clips show at ``now`` (loops, pausing at the end)."""
        shown = self.current
        if shown is None:
            return 0
        count = len(shown.left)
        period = count / shown.fps + self.loop_pause
        elapsed = (now - self._shown_at) % period
        return min(count - 1, int(elapsed * shown.fps))

    def refresh_counts(self, now: float, force: bool = False) -> None:
        if force or now - self._counts_at >= 0.5:
            self.counts = self.store.counts()
            self._counts_at = now

    def waiting_message(self, dots: str = "...") -> tuple[str, str]:
        """``(headline, detail)`` saying why no pair is on screen."""
        c = self.counts
        preparing = self.prefetcher.preparing
        if self.awaiting is not None:
            return f"loading pair {self.awaiting}{dots}", "it comes back in a moment"
        if preparing is not None:
            what = "rendering the clips" if self.info.domain == "mujoco" else "loading the clips"
            return f"preparing the next pair{dots}", f"{what} of pair {preparing}"
        if not self.prefetcher.idle:
            return f"looking for clip pairs{dots}", "reading the label store"
        if c["pairs"] and not c["pending"]:
            detail = f"all {plural(c['pairs'], 'pair')} labelled; the trainer adds more as it runs"
        elif c["pending"]:
            detail = f"the {plural(c['pending'], 'pending pair')} {'is' if c['pending'] == 1 else 'are'} " \
                     "on other viewers' screens"
        else:
            detail = "no clip pairs yet; the trainer adds them as it runs"
        return f"waiting for new clips{dots}", detail

    # ---------------------------------------------------------------- the person's actions

    def answer(self, choice: Choice, now: float) -> bool:
        """Store the answer about the pair on screen and bring on the next one.

        :return: whether a label was stored (not when nothing is on screen, the pair was
            not drawn yet, it was labelled elsewhere, or the store failed)
        """
        shown = self.current
        if shown is None:
            self.notify(Notice("no pair on screen yet: nothing to answer", "warn"))
            return False
        if self._announce == shown.pair_id:
            # Two keys in one frame: the second would label a pair nobody has seen yet.
            self.notify(Notice("that pair was not on screen yet: look, then answer", "warn"))
            return False
        try:
            # Committed (fsync'd) before anything else happens: kill -9 after this line
            # cannot lose the label.
            stored = self.store.record_label(shown.pair_id, choice, self.labeller)
        except PrefrlError as exc:
            self.notify(Notice(f"could not save the answer: {exc}", "error", seconds=6.0))
            return False
        self.prefetcher.answered(shown.pair_id)
        self.current = None
        if stored:
            self.session_labels += 1
            self._history.append(shown.pair_id)
            self._recent[shown.pair_id] = shown
            while len(self._recent) > RECENT_KEPT:
                self._recent.popitem(last=False)
            self.notify(Notice(f"saved: {describe(choice)}  ·  pair {shown.pair_id}", choice.value, seconds=2.0))
        else:
            self.notify(Notice(f"pair {shown.pair_id} was already labelled elsewhere; skipped", "warn", seconds=3.0))
        self._log("label", pair=shown.pair_id, choice=choice.value, stored=int(stored))
        self.counts["answered"] += int(stored)
        self.counts["pending"] = max(0, self.counts["pending"] - int(stored))
        self._advance(now)
        return stored

    def undo(self, now: float) -> bool:
        """Take back this session's last answer: its pair comes back on screen.

        :return: whether an answer was taken back
        """
        if not self._history:
            self.notify(Notice("nothing to undo", "warn"))
            return False
        pair_id = self._history.pop()
        try:
            undone = self.store.undo_label(pair_id, self.labeller, lease_to=self.owner, lease_seconds=self.lease_seconds)
        except PrefrlError as exc:
            self.notify(Notice(f"could not undo: {exc}", "error", seconds=6.0))
            return False
        if not undone:
            self.notify(Notice(f"cannot undo pair {pair_id}: its label is gone", "warn", seconds=3.0))
            return False
        self.session_labels -= 1
        self.prefetcher.hold(pair_id)
        if self.current is not None:
            self.prefetcher.put_back(self.current)  # still leased to us: shown right after
            self.current = None
        prepared = self._recent.pop(pair_id, None)
        if prepared is not None:
            self._show(prepared, now)
        else:
            self.awaiting = pair_id
            self.prefetcher.request(pair_id)
        self.notify(Notice(f"undone: pair {pair_id} is back, answer it again", "warn", seconds=2.5))
        self._log("undo", pair=pair_id)
        self.refresh_counts(now, force=True)
        return True

    def replay(self, now: float) -> None:
        """Play the pair on screen from the start."""
        self._shown_at = now

    def quit(self) -> None:
        self.quitting = True
        self._log("quit", labels=self.session_labels)

    # ---------------------------------------------------------------- internals

    def _advance(self, now: float) -> None:
        if self.current is not None:
            return
        prepared = self.prefetcher.take(self.awaiting)
        if prepared is not None:
            self.awaiting = None
            self._show(prepared, now)
        elif not self._was_waiting and self.awaiting is None and self.prefetcher.idle:
            self._was_waiting = True
            self._log("waiting")

    def _show(self, prepared: PreparedPair, now: float) -> None:
        self.current = prepared
        self._shown_at = now
        self._was_waiting = False
        self.pairs_shown += 1
        self._announce = prepared.pair_id  # logged by confirm_shown, once really on screen

    def _log(self, event: str, **fields: Any) -> None:
        if self.event_log is not None:
            details = " ".join(f"{k}={v}" for k, v in fields.items())
            self.event_log.write(f"event={event} {details}".rstrip() + "\n")
            self.event_log.flush()


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def describe(choice: Choice) -> str:
    """An answer in words."""
    return {Choice.LEFT: "LEFT is better", Choice.RIGHT: "RIGHT is better",
            Choice.TIE: "equally good", Choice.CANT_TELL: "can't tell"}[choice]
