"""Running the learning-quality benchmark on this machine: the plan's unfinished runs in
subprocesses with a progress bar over the whole plan (in env steps), the random-policy
baseline, and the results page rebuilt after every finished run (an interrupted plan
still leaves an honest page).

The plan is resumable (:mod:`prefrl.experiments.plan`): a finished run is reused (also
from the records folder), an interrupted run continues from its last checkpoint, a run
finished with other settings is run again.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prefrl.analysis.quality_records import LOGS_DIR, save_records
from prefrl.analysis.results_page import write_results
from prefrl.config.loading import load_preset
from prefrl.experiments.local_runner import LocalRunner, acquire_lock, run_stem
from prefrl.experiments.plan import checkpoint_step, is_finished, prepare
from prefrl.experiments.quality_plan import build_plan, random_baseline, setting_folder, write_setting_files
from prefrl.experiments.runner import RunEnded, Runner, run_queue
from prefrl.experiments.sweep import RunSpec

#: Seconds between two looks at the runs (the progress bar's refresh).
WAIT_SECONDS = 2.0
#: Seconds between two progress lines when stdout is not a terminal (logs, pipes).
LINE_SECONDS = 60.0


@dataclass(frozen=True)
class BenchmarkOptions:
    """What one invocation of the benchmark plans (the command line's options).

    :param tasks: preset names
    :param seeds: seeds of every task
    :param labels: label budgets of the learned arm, MuJoCo/classic tasks
    :param atari_labels: label budgets of Atari tasks (None: the scaled paper budget)
    :param steps: env steps of every run (None: the protocol's per-task table)
    :param out: folder of the runs
    :param results: the results page to write
    :param records: folder of the finished runs' small files, kept in the repository
    :param arms: the arms to run
    :param jobs: runs at a time
    :param overrides: ``--set`` items for every run (without :data:`~prefrl.experiments.quality_plan.PLAN_KEYS`)
    :param random_episodes: episodes of the random policy per task
    """

    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    labels: tuple[int, ...]
    atari_labels: tuple[int, ...] | None
    steps: int | None
    out: Path
    results: Path
    records: Path
    arms: tuple[str, ...]
    jobs: int
    overrides: tuple[str, ...]
    random_episodes: int


def run_status(rc: int, finished: bool, seconds: float, log: Path) -> str:
    """What the plan prints when a run's process ends."""
    if rc == 0 and finished:
        return f"finished in {seconds / 60:.1f} min"
    if rc in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        return "interrupted, its checkpoint kept: rerun the same command to resume it"
    return f"FAILED (exit {rc}), see {log}"


def current_step(run_dir: Path) -> int:
    """Env steps a running run has logged so far: the last row of its newest session's
    SB3 progress.csv (a resumed run logs to ``logs/resumed_at_<step>/`` from its
    checkpoint on, and redoes the steps the interrupted session took after it)."""
    from prefrl.rundir import RunDir

    start, row = RunDir(run_dir).newest_progress() or (0, {})
    try:
        return int(float(row.get("time/total_timesteps") or start))
    except ValueError:
        return start


def execute(plan: Sequence[RunSpec], todo: Sequence[RunSpec], jobs: int, out: Path,
            on_finished: Callable[[RunSpec], None] | None = None, show: bool = True,
            runner: Runner | None = None) -> list[tuple[RunSpec, str]]:
    """Run ``todo`` with a progress bar over the whole plan (in env steps).

    :param plan: every run of the plan (the finished ones count as done steps)
    :param todo: the runs to start, in order
    :param jobs: runs at a time
    :param out: the plan's output folder (logs in ``<out>/logs``)
    :param on_finished: called after each run that finished (e.g. rebuild the page)
    :param show: print progress
    :param runner: where the runs run (default: subprocesses on this machine)
    :return: (spec, outcome) of every run started, outcome as in
        :func:`prefrl.experiments.runner.run_outcome`
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    runner = runner or LocalRunner(out / LOGS_DIR)
    total_steps = sum(s.steps for s in plan)
    results: list[tuple[RunSpec, str]] = []
    counts = {"steps": sum(s.steps for s in plan if s not in todo), "done": len(plan) - len(todo), "unfinished": 0}
    last_line = [0.0]

    def stop(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)  # run_queue stops the runs on the way out

    tty = show and sys.stdout.isatty()
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    old_term = signal.signal(signal.SIGTERM, stop)
    try:
        with Progress(*columns, disable=not tty, refresh_per_second=1) as progress:
            bar = progress.add_task("plan (env steps)", total=total_steps, completed=counts["steps"],
                                    info=f"runs {counts['done']}/{len(plan)}")

            def on_ended(ended: RunEnded) -> None:
                spec, ok = ended.spec, ended.outcome == "finished"
                results.append((spec, ended.outcome))
                if ok:  # a failed or interrupted run's steps are still to do
                    counts["steps"] += spec.steps
                    counts["done"] += 1
                else:
                    counts["unfinished"] += 1
                rc = ended.exit_code if ended.exit_code is not None else (0 if ok else 1)
                log = out / LOGS_DIR / f"{run_stem(spec)}.log"
                progress.console.print(f"{spec.name}: {run_status(rc, ok, ended.seconds, log)}")
                if ok and on_finished is not None:
                    try:
                        on_finished(spec)
                    except Exception as exc:  # a report error must not stop the plan
                        progress.console.print(f"warning: results page not updated ({exc!r})")

            def on_tick() -> None:
                live = sum(min(current_step(s.run_dir), s.steps) for s in runner.active)
                names = ", ".join(s.name for s in runner.active)
                runs = f"runs {counts['done']}/{len(plan)}" + (
                    f" ({counts['unfinished']} not finished)" if counts["unfinished"] else "")
                progress.update(bar, completed=counts["steps"] + live, info=f"{runs}  now: {names}")
                if show and not tty and time.time() - last_line[0] > LINE_SECONDS:
                    last_line[0] = time.time()
                    print(f"[{datetime.now():%H:%M:%S}] plan {100 * (counts['steps'] + live) / total_steps:.0f}% "
                          f"of {total_steps:,} env steps, {runs}, now: {names}", flush=True)

            run_queue(runner, todo, jobs, on_ended=on_ended, on_tick=on_tick, wait_seconds=WAIT_SECONDS)
    finally:
        signal.signal(signal.SIGTERM, old_term)
    return results


def publish(out: Path, records: Path, results: Path) -> Path:
    """Copy the finished runs' small files into ``records`` and rebuild the page from them."""
    save_records(out, records)
    return write_results(records, results)


def run_benchmark(options: BenchmarkOptions, command: str, *, dry_run: bool = False) -> int:
    """Plan, run what is not finished, and keep the results page up to date.

    :param command: the command line, as the page's command log shows it
    :param dry_run: only print the plan, with what is done
    :return: the exit status: 0, 1 when a run failed, 130 when one was interrupted
    :raises PrefrlError: a bad task, override or budget, or ``out`` in use by another plan
    """
    plan = build_plan(options.tasks, options.seeds, options.labels, options.out, steps=options.steps,
                      atari_budgets=options.atari_labels, user_overrides=options.overrides)
    plan = [spec for spec in plan if spec.arm in options.arms]
    if dry_run:
        for spec in plan:
            state = "done" if is_finished(spec, options.records) else "to do"
            print(f"{spec.name:<44} {spec.steps:>10,} steps  {state}  {spec.run_dir}")
        return 0
    lock = acquire_lock(options.out)
    try:
        with open(options.out / "commands.jsonl", "a") as fh:
            fh.write(json.dumps({"date": datetime.now().isoformat(timespec="seconds"), "command": command,
                                 "planned": [str(s.run_dir) for s in plan]}) + "\n")
        write_setting_files(plan, options.overrides)
        ready = prepare(plan, options.records)
        for spec, changes in ready.stale.items():
            print(f"{spec.name}: finished with other settings ({'; '.join(changes)}); running it again", flush=True)
        resumed = {s: checkpoint_step(s.run_dir) for s in ready.todo}
        n_resumed = sum(1 for step in resumed.values() if step)
        print(f"plan: {len(plan)} runs, {len(ready.done)} finished (reused), {len(ready.todo)} to run"
              + (f" ({n_resumed} from a checkpoint)" if n_resumed else "")
              + f", {sum(s.steps - resumed[s] for s in ready.todo):,} env steps to go; {options.jobs} job(s)",
              flush=True)
        for folder, task in sorted({(setting_folder(s), s.task) for s in plan}):
            r = random_baseline(folder, load_preset(task, list(options.overrides)), options.random_episodes)
            print(f"random policy, {task}: {r['mean']:.1f} ± {r['std']:.1f} over {r['episodes']} episodes", flush=True)
        publish(options.out, options.records, options.results)
        results = execute(plan, ready.todo, options.jobs, options.out,
                          on_finished=lambda _spec: publish(options.out, options.records, options.results))
        publish(options.out, options.records, options.results)
    finally:
        lock.unlink(missing_ok=True)
    failed = [s.name for s, outcome in results if outcome == "failed"]
    stopped = [s.name for s, outcome in results if outcome == "interrupted"]
    print(f"wrote {options.results}" + (f"; failed runs: {', '.join(failed)}" if failed else "")
          + (f"; interrupted (rerun to resume): {', '.join(stopped)}" if stopped else ""))
    return 1 if failed else (130 if stopped else 0)
