"""``prefrl suite``: every run of a sweep file (:mod:`prefrl.experiments.sweep`) through
Ray (:mod:`prefrl.experiments.ray_runner`), with a live table, then a comparison of all
finished runs.

Started again, a sweep skips every finished run and reruns a finished run made with other
settings (its folder moves to ``<out>/replaced/``); a killed run resumes from its last
checkpoint when it was started with the same settings (it then ends exactly as an
uninterrupted run), else it is run again from scratch (:mod:`prefrl.experiments.plan`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefrl.experiments.plan import prepare
from prefrl.experiments.progress import RunProgress, progress_table
from prefrl.experiments.runner import RunEnded, run_queue
from prefrl.experiments.sweep import RunSpec, Sweep


@dataclass
class SuiteResult:
    """How a sweep ended.

    :param runs: the final state of every run
    :param run_dirs: directories of every finished run (done now or before)
    :param rows: the comparison rows (``prefrl.analysis.report.summarize``), if any run finished
    :param table: the comparison as markdown
    """

    runs: list[RunProgress]
    run_dirs: list[Path] = field(default_factory=list)
    rows: list[Any] = field(default_factory=list)
    table: str = ""

    @property
    def failed(self) -> list[RunProgress]:
        return [r for r in self.runs if r.state == "failed"]


def run_suite(
    sweep: Sweep,
    *,
    address: str | None = None,
    max_parallel: int | None = None,
    retries: int = 0,
    console: Any = None,
    refresh_seconds: float = 1.0,
    on_poll: Callable[[list[RunProgress]], None] | None = None,
) -> SuiteResult:
    """Run every unfinished run of ``sweep`` through Ray, showing a live table, then
    compare all finished runs (``comparison.md``/``.png`` in the output folder).

    :param sweep: the expanded sweep file
    :param address: a Ray cluster to join (``None``: start Ray on this machine with as
        many CPUs as it has)
    :param max_parallel: runs at once (default: the cluster's CPUs divided by
        ``threads_per_run``, i.e. one run per core)
    :param retries: Ray retries of a run whose worker died (a raised error is not retried)
    :param console: a ``rich.console.Console`` (default: stdout)
    :param refresh_seconds: how often the table is redrawn and the run files polled
    :param on_poll: called with the runs' progress at every refresh (tests, custom UIs)
    """
    from rich.console import Console

    console = console or Console()
    out = sweep.out.resolve()  # workers may run in another directory, or on another node
    out.mkdir(parents=True, exist_ok=True)
    progress = [RunProgress(spec) for spec in sweep.runs]
    # A run's final thread count, and so whether its checkpoint resumes, is known only at
    # launch: the worker clears an unfinished folder, not the plan.
    plan = prepare(sweep.runs, clear_unfinished=False)
    for spec, changes in plan.stale.items():
        console.print(f"[yellow]stale[/] {spec.name}: finished with other settings ({'; '.join(changes)}); "
                      "running it again", highlight=False)
    for run in progress:
        if run.spec in plan.done:
            run.state = "skipped"
            run.read_files(run.spec.run_dir)

    if plan.todo:
        _launch(sweep, progress, plan.todo, address, max_parallel, retries, console, refresh_seconds, on_poll)
    else:
        console.print(progress_table(sweep, progress))  # nothing to run: show what is there

    result = SuiteResult(runs=progress)
    for run in progress:
        if run.state == "failed":
            console.print(f"[bold red]{run.state}[/]: {run.spec.name}: {run.error}")
            if run.details:
                console.print(run.details.rstrip(), markup=False, highlight=False)
    finished = [r.spec.run_dir for r in progress if r.state in ("done", "skipped")]
    if finished:
        from prefrl.analysis.report import compare

        result.run_dirs = finished
        result.rows, result.table = compare(finished, out)
    return result


def _launch(sweep: Sweep, progress: list[RunProgress], todo: list[RunSpec], address: str | None,
            max_parallel: int | None, retries: int, console: Any, refresh_seconds: float,
            on_poll: Callable[[list[RunProgress]], None] | None) -> None:
    """Connect to Ray, size the runs to its CPUs and run ``todo`` under the live table
    (the parameters are :func:`run_suite`'s)."""
    from rich.live import Live

    from prefrl.experiments.ray_runner import RayRunner, cluster_cpus, connect_ray, shutdown_ray

    started_ray = connect_ray(address)
    try:
        total_cpus, node_cpus = cluster_cpus()
        if sweep.threads_per_run:
            threads = sweep.threads_per_run
        else:
            threads = max(1, total_cpus // max_parallel) if max_parallel else 1
        threads = min(threads, node_cpus)  # a run lives on one node
        parallel = max_parallel or max(1, total_cpus // threads)
        runner = RayRunner(threads, retries)
        by_name = {r.spec.name: r for r in progress}
        live = Live(progress_table(sweep, progress), console=console, refresh_per_second=4, transient=False)

        def on_ended(ended: RunEnded) -> None:
            run = by_name[ended.spec.name]
            run.state = "done" if ended.outcome == "finished" else "failed"
            run.error, run.details, run.host = ended.error, ended.details, ended.host or run.host
            run.read_files(run.spec.run_dir)
            run.seconds = ended.seconds
            style = "green" if run.state == "done" else "bold red"
            live.console.print(f"[{style}]{run.state}[/] {run.spec.name}" + (f": {run.error}" if run.error else ""))

        def on_tick() -> None:
            for spec in runner.active:
                run = by_name[spec.name]
                if run.state == "queued":
                    run.state = "submitted"
                run.poll()
            if on_poll is not None:
                on_poll(progress)
            live.update(progress_table(sweep, progress))

        with live:
            run_queue(runner, todo, parallel, on_ended=on_ended, on_tick=on_tick, wait_seconds=refresh_seconds)
            live.update(progress_table(sweep, progress))
        live.console.line()  # what is printed next starts below the table, also in logs
    finally:
        if started_ray:
            shutdown_ray()
