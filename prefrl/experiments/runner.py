"""The one interface every runner offers (launch runs, poll them, stop them) and the loop
that feeds a runner a sweep's runs.

Runners: :class:`prefrl.experiments.local_runner.LocalRunner` (subprocesses on this
machine) and :class:`prefrl.experiments.ray_runner.RayRunner` (Ray tasks, on this machine
or a cluster). What a front-end shows while runs go (a progress bar, a live table) lives
in its callbacks, not in the runner.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from prefrl.experiments.sweep import RunSpec

#: How a run can end: its summary written, stopped by a signal after writing its
#: checkpoint (the next start resumes it), or anything else.
OUTCOMES = ("finished", "interrupted", "failed")
#: Exit statuses of a run stopped by SIGINT / SIGTERM after writing its checkpoint.
INTERRUPTED_STATUSES = (128 + signal.SIGINT, 128 + signal.SIGTERM)


@dataclass(frozen=True)
class RunEnded:
    """A run that has ended, as its runner saw it.

    :param spec: the run
    :param outcome: one of :data:`OUTCOMES`
    :param seconds: wall time since it was launched
    :param exit_code: its process's exit status (None where no process of its own ran it)
    :param error: one line on why it failed ("" otherwise)
    :param details: a traceback or the runner's full message, if any
    :param host: the machine that ran it, if known
    """

    spec: RunSpec
    outcome: str
    seconds: float
    exit_code: int | None = None
    error: str = ""
    details: str = ""
    host: str = ""


class Runner(Protocol):
    """Runs :class:`RunSpec` s somewhere, several at a time."""

    @property
    def active(self) -> list[RunSpec]:
        """The runs launched that have not ended yet."""
        ...

    def start(self, spec: RunSpec) -> None:
        """Launch one run (its folder already prepared by :mod:`prefrl.experiments.plan`)."""
        ...

    def poll(self, timeout: float) -> list[RunEnded]:
        """The runs that ended since the last poll, waiting up to ``timeout`` seconds for
        one when none has."""
        ...

    def stop_all(self) -> None:
        """Stop every active run (they are resumed or rerun next time)."""
        ...


def run_outcome(exit_code: int, finished: bool) -> str:
    """How a run's process ended: ``"finished"`` (exit 0 and its summary written),
    ``"interrupted"`` (stopped by a signal after writing its checkpoint) or ``"failed"``
    (any other exit, exit 0 without a summary included)."""
    if exit_code == 0 and finished:
        return "finished"
    return "interrupted" if exit_code in INTERRUPTED_STATUSES else "failed"


def run_queue(
    runner: Runner,
    todo: Sequence[RunSpec],
    parallel: int,
    *,
    on_ended: Callable[[RunEnded], None],
    on_tick: Callable[[], None],
    wait_seconds: float,
) -> None:
    """Start ``todo`` in order, at most ``parallel`` at a time, until every run has ended.

    :param on_ended: called once per run as it ends
    :param on_tick: called after every poll (redraw a display, read live numbers)
    :param wait_seconds: longest wait for a run to end between two ticks
    :raises BaseException: whatever interrupted the loop (Ctrl-C, a signal handler's
        ``SystemExit``), after stopping the active runs
    """
    if parallel < 1:
        raise ValueError(f"parallel must be at least 1, got {parallel}")
    queue = list(todo)
    try:
        while queue or runner.active:
            while queue and len(runner.active) < parallel:
                runner.start(queue.pop(0))
            for ended in runner.poll(wait_seconds):
                on_ended(ended)
            on_tick()
    except BaseException:
        runner.stop_all()
        raise
