"""The background worker of a viewer: it leases the next pairs, loads, renders and scales
them ahead, so a keypress never waits for any of it."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prefrl.data.segments import ClipPair
from prefrl.feedback.store import LabelStore
from prefrl.human.clips import RENDER_DIR, RenderInfo
from prefrl.human.render import ClipRenderer, fit_frames
from prefrl.util.errors import PrefrlError


@dataclass
class PreparedPair:
    """A leased pair ready to show: both clips scaled for the screen.

    :param pair_id: the pair
    :param left: ``(N, h, w, 3)`` uint8 frames of the left clip, scaled
    :param right: the same for the right clip (same N)
    :param fps: playback speed
    :param kind: ``recorded``, ``rendered`` or ``plot``
    :param note: fallback note to show, else empty
    :param left_clip: clip id of the left segment
    :param right_clip: clip id of the right segment
    :param prepare_seconds: time spent loading, rendering and scaling
    """

    pair_id: str
    left: np.ndarray
    right: np.ndarray
    fps: float
    kind: str
    note: str = ""
    left_clip: str = ""
    right_clip: str = ""
    prepare_seconds: float = 0.0


def prepare_pair(pair: ClipPair, renderer: ClipRenderer, box: tuple[int, int]) -> PreparedPair:
    """Load-independent part of preparing: frames of both clips, scaled into ``box``."""
    started = time.perf_counter()
    left, right = renderer.pair_frames(pair)
    count = min(len(left.frames), len(right.frames))  # equal unless one clip fell back
    pixel_art = left.kind == "recorded" and right.kind == "recorded"
    return PreparedPair(
        pair_id=pair.pair_id,
        left=fit_frames(left.frames[:count], box, pixel_art),
        right=fit_frames(right.frames[:count], box, pixel_art),
        fps=min(left.fps, right.fps),
        kind=left.kind if left.kind == right.kind else f"{left.kind}/{right.kind}",
        note=left.note or right.note,
        left_clip=pair.left.segment_id,
        right_clip=pair.right.segment_id,
        prepare_seconds=time.perf_counter() - started,
    )


@dataclass
class _PrefetchState:
    ready: deque[PreparedPair] = field(default_factory=deque)
    held: set[str] = field(default_factory=set)
    wanted: deque[str] = field(default_factory=deque)
    errors: deque[str] = field(default_factory=deque)
    broken: set[str] = field(default_factory=set)
    idle: bool = False
    preparing: str | None = None


class PairPrefetcher:
    """Background thread that keeps the next ``ahead`` pairs leased and ready.

    It owns its own :class:`LabelStore` connection and renderer (both bound to its
    thread). Leases of every pair it holds (ready, on screen, or being prepared) are
    renewed well before they expire; if this process is killed they expire after
    ``lease_seconds`` and other viewers get the pairs.

    :param clips_dir: the clips folder
    :param task: the store's task
    :param owner: lease owner name, unique to this viewer
    :param info: rendering settings
    :param box: ``(width, height)`` every clip is scaled to fit
    :param ahead: pairs kept ready (leased) beyond the one on screen
    :param lease_seconds: length of a lease
    :param poll_seconds: pause between looks at the store when nothing is pending
    """

    def __init__(
        self,
        clips_dir: Path,
        task: str,
        owner: str,
        info: RenderInfo,
        box: tuple[int, int],
        ahead: int = 2,
        lease_seconds: float = 60.0,
        poll_seconds: float = 0.5,
    ) -> None:
        if ahead < 1 or lease_seconds <= 0 or poll_seconds <= 0:
            raise PrefrlError("prefetch needs ahead >= 1 and positive lease and poll seconds")
        self.clips_dir = Path(clips_dir)
        self.task = task
        self.owner = owner
        self.info = info
        self.box = box
        self.ahead = ahead
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self._state = _PrefetchState()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefrl-prefetch", daemon=True)
        self._started = False
        self._fatal: BaseException | None = None
        #: seconds each preparation took (for the benchmark)
        self.prepare_times: list[float] = []

    # ---------------------------------------------------------------- API of the viewer thread

    def start(self) -> PairPrefetcher:
        self._thread.start()
        self._started = True
        return self

    def take(self, pair_id: str | None = None) -> PreparedPair | None:
        """The next ready pair (or the ready pair ``pair_id``), or None; never waits."""
        self._raise_fatal()
        with self._lock:
            ready = self._state.ready
            if pair_id is None:
                prepared = ready.popleft() if ready else None
            else:
                prepared = next((p for p in ready if p.pair_id == pair_id), None)
                if prepared is not None:
                    ready.remove(prepared)
        if prepared is not None:
            self._wake.set()  # room for one more
        return prepared

    def wait_ready(self, timeout: float) -> bool:
        """Wait until a pair is ready (tests and benchmarks); returns whether one is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._raise_fatal()
            with self._lock:
                if self._state.ready:
                    return True
            time.sleep(0.005)
        return False

    def put_back(self, prepared: PreparedPair) -> None:
        """Return a pair taken with :meth:`take` to the front of the queue (undo shows
        an earlier pair first; the displaced pair is still leased to us)."""
        with self._lock:
            self._state.ready.appendleft(prepared)
            self._state.held.add(prepared.pair_id)

    def request(self, pair_id: str) -> None:
        """Prepare this pair before any other (it is already leased to us, e.g. by undo)."""
        with self._lock:
            self._state.held.add(pair_id)
            self._state.wanted.append(pair_id)
        self._wake.set()

    def hold(self, pair_id: str) -> None:
        """Keep renewing the lease of a pair leased to us outside the prefetcher."""
        with self._lock:
            self._state.held.add(pair_id)

    def answered(self, pair_id: str) -> None:
        """The pair got its label: stop renewing its lease."""
        with self._lock:
            self._state.held.discard(pair_id)

    def errors(self) -> list[str]:
        """Messages about pairs that could not be prepared since the last call."""
        with self._lock:
            messages = list(self._state.errors)
            self._state.errors.clear()
        return messages

    @property
    def ready_count(self) -> int:
        """Pairs prepared and waiting to be shown."""
        with self._lock:
            return len(self._state.ready)

    @property
    def preparing(self) -> str | None:
        """The pair being loaded and rendered right now, if any."""
        with self._lock:
            return self._state.preparing

    @property
    def idle(self) -> bool:
        """Nothing ready and the store had no pending pair free at the last look."""
        with self._lock:
            return self._state.idle and not self._state.ready

    def poke(self) -> None:
        """Look at the store now (e.g. after an undo freed a pair)."""
        self._wake.set()

    def stop(self, release: bool = True) -> None:
        """Stop the thread and (by default) give back every lease still held."""
        self._stop.set()
        self._wake.set()
        if self._started:
            self._thread.join(timeout=30.0)
        if release:
            with self._lock:
                held = list(self._state.held)
                self._state.held.clear()
                self._state.ready.clear()
            if held:
                with contextlib.suppress(PrefrlError, sqlite3.Error), LabelStore(self.clips_dir, self.task) as store:
                    for pair_id in held:
                        store.release(pair_id, self.owner)

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            raise PrefrlError(f"clip preparation stopped: {self._fatal}")

    # ---------------------------------------------------------------- the worker thread

    def _run(self) -> None:
        try:
            with LabelStore(self.clips_dir, self.task) as store:
                renderer = ClipRenderer(self.info, self.clips_dir / RENDER_DIR, plot_size=self.box)
                try:
                    self._loop(store, renderer)
                finally:
                    renderer.close()
        except BaseException as exc:  # noqa: BLE001 - surfaced to the viewer thread by _raise_fatal
            self._fatal = exc

    def _loop(self, store: LabelStore, renderer: ClipRenderer) -> None:
        renew_every = self.lease_seconds / 4
        last_renew = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last_renew >= renew_every:
                self._renew(store)
                last_renew = time.monotonic()
            pair_id, urgent = self._next_to_prepare(store)
            if pair_id is None:
                self._wake.wait(min(self.poll_seconds, renew_every))
                self._wake.clear()
                continue
            self._prepare_one(store, renderer, pair_id, urgent)

    def _renew(self, store: LabelStore) -> None:
        with self._lock:
            held = list(self._state.held)
        if not held:
            return
        kept = set(store.renew_leases(held, self.owner, self.lease_seconds))
        lost = [pair_id for pair_id in held if pair_id not in kept]
        if lost:
            with self._lock:
                # A ready pair whose lease went to someone else must not be shown here too.
                self._state.ready = deque(p for p in self._state.ready if p.pair_id not in lost)
                for pair_id in lost:
                    self._state.held.discard(pair_id)

    def _next_to_prepare(self, store: LabelStore) -> tuple[str | None, bool]:
        """``(pair id, requested by the viewer)`` or ``(None, False)`` when nothing to do."""
        with self._lock:
            if self._state.wanted:
                return self._state.wanted.popleft(), True
            if len(self._state.ready) >= self.ahead:
                return None, False
        pair_id = store.lease_next(self.owner, self.lease_seconds)
        with self._lock:
            self._state.idle = pair_id is None
            if pair_id is not None:
                self._state.held.add(pair_id)
        return pair_id, False

    def _prepare_one(self, store: LabelStore, renderer: ClipRenderer, pair_id: str, urgent: bool) -> None:
        started = time.perf_counter()
        with self._lock:
            self._state.preparing = pair_id
        try:
            pair = store.load_pair(pair_id)
            prepared = prepare_pair(pair, renderer, self.box)
        except PrefrlError as exc:
            with self._lock:
                self._state.preparing = None
            # Keep the lease (so this viewer does not lease the broken pair again and
            # again) and tell the person; it is released when the viewer quits.
            with self._lock:
                self._state.broken.add(pair_id)
                self._state.errors.append(f"pair {pair_id} cannot be shown: {exc}")
            return
        prepared.prepare_seconds = time.perf_counter() - started
        self.prepare_times.append(prepared.prepare_seconds)
        with self._lock:
            self._state.preparing = None
            if pair_id not in self._state.held:
                return  # answered or lost meanwhile
            if any(p.pair_id == pair_id for p in self._state.ready):
                return
            if urgent:
                self._state.ready.appendleft(prepared)
            else:
                self._state.ready.append(prepared)

