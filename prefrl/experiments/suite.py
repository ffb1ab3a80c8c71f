"""Sweeps: every (task, arm, seed, label budget) of a sweep file, run as Ray tasks.

A sweep file (``suites/*.toml``) holds defaults at its top level and any number of
``[[sweep]]`` blocks that inherit and may override them::

    name = "mujoco_paper"              # default: the file's stem
    out = "runs/suites/mujoco_paper"   # default: runs/suites/<name>
    arms = ["true", "learned"]         # default: both
    seeds = [0, 1, 2]                  # default: [0]
    label_budgets = [350, 700, 1400]   # learned arm only; default: the preset's budget
    initial_label_fraction = 0.25      # labels from the random policy, as a share of the
                                       # budget (default: the preset's, capped by the budget)
    set = ["eval.episodes=5"]          # --set style overrides for every run
    threads_per_run = 1                # default: cores / --max-parallel

    [[sweep]]
    tasks = ["hopper", "walker2d"]
    set = ["ppo.total_steps=500000"]   # appended to the top-level ``set``
    tag = "short"                      # optional: names the variant, see below

Without ``[[sweep]]`` blocks the top level is the one block (it needs ``tasks``). The
true-reward arm does not depend on the label budget, so it runs once per (task, seed).

Every run has a deterministic name, ``<task>[-<tag>]__<arm>[-<budget>]__s<seed>`` (e.g.
``hopper__learned-700__s0``, ``hopper__true__s0``), and directory ``<out>/<name>``
(its clips in ``<out>/<name>/clips``). A tag also renames the task in the run's
summary (``task.name = <task>-<tag>``), so ``prefrl compare`` keeps variants apart.

Started again, a sweep skips every run whose ``summary.json`` exists (when its
``config.json`` still matches the sweep; a finished run made with other settings is
reported as ``stale`` and left alone), resumes a killed run from its last checkpoint
when it was started with the same settings (it then ends exactly as an uninterrupted
run), and reruns the others from scratch, deleting what a killed run left behind. Each run is one Ray task that asks for its share of
CPUs and pins torch, OpenMP, MKL and OpenBLAS to that many threads. A run that fails
(an exception, a killed worker, a lost node) is reported with its error and the others
go on. Bookkeeping lives in ``<out>/.suite/``: ``<name>.json`` (worker pid and host,
written when the run starts) and ``<name>.log`` (the run's stdout and stderr).

On a cluster (``--address``), the output folder must be on a file system every node
shares at the same path, and prefrl must be installed on every node.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import time
import tomllib
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefrl.config.presets import Preset, load_preset
from prefrl.util.errors import PrefrlError

#: The arms a sweep may list (same names as ``prefrl train --reward``).
SWEEP_ARMS = ("true", "learned")
#: Keys a sweep block may set; the top level also takes ``name``, ``out`` and ``sweep``.
BLOCK_KEYS = ("tasks", "tag", "arms", "seeds", "label_budgets", "initial_label_fraction", "set", "threads_per_run")
TOP_KEYS = BLOCK_KEYS + ("name", "out", "sweep")
#: Folder (inside the sweep's output folder) of per-run bookkeeping files.
STATE_DIR = ".suite"
#: Thread-count variables of the numeric libraries a run may load.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
#: Settings that may differ between a finished run and the sweep without making it stale:
#: the thread count follows the machine, not the experiment.
IGNORED_FOR_STALENESS = (("ppo", "torch_threads"),)


# --------------------------------------------------------------------------- sweep files


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep.

    :param name: deterministic run name, also the run directory's name
    :param task: preset name or path as written in the sweep file
    :param arm: ``learned`` or ``true``
    :param seed: the run's seed
    :param label_budget: labels of the learned arm (0 for the true arm)
    :param preset: fully resolved settings (overrides, budget, task name applied)
    :param threads: CPU threads the run may use (``None``: decided at launch)
    """

    name: str
    task: str
    arm: str
    seed: int
    label_budget: int
    preset: Preset
    threads: int | None = None


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file.

    :param name: the sweep's name
    :param out: its output folder
    :param runs: every run, in file order
    :param threads_per_run: CPU threads per run, if the file fixes it
    """

    name: str
    out: Path
    runs: tuple[RunSpec, ...]
    threads_per_run: int | None = None


def _int_list(value: Any, key: str, source: str, *, minimum: int) -> list[int]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in items):
        raise PrefrlError(f"{key} = {value!r} in {source} is invalid: give a list of whole numbers >= {minimum}")
    return list(items)


def _str_list(value: Any, key: str, source: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise PrefrlError(f"{key} = {value!r} in {source} is invalid: give a list of non-empty strings")
    return list(items)


def run_name(task: str, arm: str, seed: int, label_budget: int, tag: str = "") -> str:
    """Deterministic run name, e.g. ``hopper__learned-700__s0`` or ``pong-short__true__s1``."""
    task_part = f"{task}-{tag}" if tag else task
    arm_part = f"learned-{label_budget}" if arm == "learned" else arm
    return f"{task_part}__{arm_part}__s{seed}"


def _block_runs(block: dict[str, Any], source: str) -> list[RunSpec]:
    """Expand one (already merged) sweep block into its runs."""
    if "tasks" not in block:
        raise PrefrlError(f"a sweep block in {source} has no 'tasks'; list the presets to run, e.g. tasks = [\"hopper\"]")
    tasks = _str_list(block["tasks"], "tasks", source)
    arms = _str_list(block.get("arms", list(SWEEP_ARMS)), "arms", source)
    for arm in arms:
        if arm not in SWEEP_ARMS:
            raise PrefrlError(f"arms contains {arm!r} in {source}: use {' and/or '.join(SWEEP_ARMS)}")
    seeds = _int_list(block.get("seeds", [0]), "seeds", source, minimum=0)
    budgets = _int_list(block["label_budgets"], "label_budgets", source, minimum=1) if "label_budgets" in block else None
    overrides = _str_list(block["set"], "set", source) if block.get("set") else []
    tag = block.get("tag", "")
    if not isinstance(tag, str) or any(c in tag for c in "/\\ _"):
        raise PrefrlError(f"tag = {tag!r} in {source} is invalid: a short word without spaces, slashes or underscores")
    fraction = block.get("initial_label_fraction")
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1):
        raise PrefrlError(f"initial_label_fraction = {fraction!r} in {source} is invalid: give a number in (0, 1]")

    runs: list[RunSpec] = []
    for task in tasks:
        try:
            base = load_preset(task, overrides)
        except PrefrlError as exc:
            raise PrefrlError(f"{source}, task {task!r}: {exc}") from None
        task_name = f"{base.task.name}-{tag}" if tag else base.task.name
        renamed = [f"task.name={json.dumps(task_name)}"] if tag else []
        for seed in seeds:
            for arm in arms:
                if arm == "true":
                    preset = load_preset(task, overrides + renamed)
                    runs.append(RunSpec(run_name(base.task.name, arm, seed, 0, tag), task, arm, seed, 0, preset))
                    continue
                for budget in budgets or [base.labels.budget]:
                    if fraction is not None:
                        initial = max(1, round(fraction * budget))
                    else:
                        initial = min(base.labels.initial_labels, budget)
                    extra = [f"labels.budget={budget}", f"labels.initial_labels={initial}"]
                    try:
                        preset = load_preset(task, overrides + renamed + extra)
                    except PrefrlError as exc:
                        raise PrefrlError(f"{source}, task {task!r}, {budget} labels: {exc}") from None
                    runs.append(RunSpec(run_name(base.task.name, arm, seed, budget, tag), task, arm, seed, budget, preset))
    return runs


def load_sweep(path: Path, out: Path | None = None) -> Sweep:
    """Read and expand a sweep file; every preset is loaded and validated here, so a typo
    fails before anything is launched.

    :param path: the ``.toml`` sweep file
    :param out: output folder (default: the file's ``out``, else ``runs/suites/<name>``)
    :raises PrefrlError: unreadable file, unknown keys, bad values, duplicate run names
    """
    if not path.is_file():
        raise PrefrlError(f"sweep file '{path}' not found; give a .toml file such as suites/small.toml")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PrefrlError(f"malformed sweep file {path}: {exc}; fix the TOML syntax") from None
    source = str(path)
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise PrefrlError(f"unknown key(s) {', '.join(unknown)} in {source}; valid keys: {', '.join(TOP_KEYS)}")
    blocks = data.get("sweep", [])
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise PrefrlError(f"'sweep' in {source} must be a list of [[sweep]] tables")
    defaults = {k: v for k, v in data.items() if k in BLOCK_KEYS}
    merged: list[dict[str, Any]] = []
    for i, block in enumerate(blocks or [{}]):
        bad = sorted(set(block) - set(BLOCK_KEYS))
        if bad:
            raise PrefrlError(f"unknown key(s) {', '.join(bad)} in [[sweep]] block {i + 1} of {source}; "
                              f"valid keys: {', '.join(BLOCK_KEYS)}")
        combined = {**defaults, **block}
        # Overrides accumulate (top level first) instead of replacing each other, so a
        # block can add to the shared settings.
        combined["set"] = list(defaults.get("set", [])) + list(block.get("set", []))
        merged.append(combined)

    runs: list[RunSpec] = []
    for block in merged:
        runs.extend(_block_runs(block, source))
    names = Counter(r.name for r in runs)
    dupes = sorted(n for n, c in names.items() if c > 1)
    if dupes:
        raise PrefrlError(f"{source} lists run(s) {', '.join(dupes)} more than once; give the blocks different "
                          "tasks, seeds or budgets, or a 'tag' each")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise PrefrlError(f"name = {name!r} in {source} is invalid: give a non-empty string")
    threads = data.get("threads_per_run")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise PrefrlError(f"threads_per_run = {threads!r} in {source} is invalid: give a whole number >= 1")
    folder = out or Path(data.get("out", f"runs/suites/{name}"))
    return Sweep(name=name, out=folder, runs=tuple(runs), threads_per_run=threads)


# --------------------------------------------------------------------------- run state on disk


def run_dir_of(out: Path, spec: RunSpec) -> Path:
    return out / spec.name


def state_files(out: Path, spec: RunSpec) -> tuple[Path, Path]:
    """``(<out>/.suite/<name>.json, <out>/.suite/<name>.log)``."""
    folder = out / STATE_DIR
    return folder / f"{spec.name}.json", folder / f"{spec.name}.log"


def _comparable(preset_dict: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(json.dumps(preset_dict))  # same form as read back from config.json
    for section, key in IGNORED_FOR_STALENESS:
        data.get(section, {}).pop(key, None)
    return data


def finished_state(out: Path, spec: RunSpec) -> tuple[str, str]:
    """What is on disk for ``spec``: ``("done", "")``, ``("stale", why)`` or ``("todo", "")``.

    A run is finished when its ``summary.json`` exists; it is stale when its
    ``config.json`` says it was made with other settings than the sweep's now.
    """
    run_dir = run_dir_of(out, spec)
    if not (run_dir / "summary.json").is_file():
        return "todo", ""
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return "stale", f"{run_dir}/config.json is missing or unreadable"
    if config.get("arm") != spec.arm or config.get("seed") != spec.seed:
        return "stale", f"{run_dir} holds arm {config.get('arm')} seed {config.get('seed')}"
    if _comparable(config.get("preset", {})) != _comparable(spec.preset.to_dict()):
        return "stale", (f"{run_dir} was made with other settings than the sweep's; "
                         "delete it to rerun it, or give another --out")
    return "done", ""


def resumable(run_dir: Path, spec: RunSpec, preset: Preset) -> bool:
    """Whether ``run_dir`` holds a checkpoint of this very run, one that ``train``
    resumes (same arm, seed and settings, thread count included)."""
    from prefrl.training.run import RunPaths, would_resume

    return would_resume(preset, arm=spec.arm, seed=spec.seed, paths=RunPaths(run_dir, run_dir / "clips"))


def prepare_run_dir(out: Path, spec: RunSpec, preset: Preset | None = None) -> bool:
    """Keep the checkpoint of a killed attempt of this run (``train`` resumes it), else
    delete what an unfinished earlier attempt left (half a run made with other settings
    must never be mixed with a new one).

    :param preset: the settings the run will get now (default the sweep's)
    :return: whether the run will resume from a checkpoint
    """
    run_dir = run_dir_of(out, spec)
    resume = False
    if run_dir.exists() and not (run_dir / "summary.json").is_file():
        resume = resumable(run_dir, spec, preset or spec.preset)
        if not resume:
            shutil.rmtree(run_dir)
    status_path, log_path = state_files(out, spec)
    status_path.unlink(missing_ok=True)
    if not resume:
        log_path.unlink(missing_ok=True)  # a resumed run appends to the log of its first attempt
    return resume


# --------------------------------------------------------------------------- one run (in a Ray worker)


def pin_threads(threads: int) -> None:
    """Limit this process's numeric libraries to ``threads`` threads.

    The environment variables reach libraries loaded later and child processes (e.g. a
    ``SubprocVecEnv``); ``torch.set_num_threads`` changes an already loaded torch.
    """
    for var in THREAD_VARIABLES:
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def execute_run(spec: RunSpec, out: str, threads: int) -> dict[str, Any]:
    """Run one sweep entry to completion; what a Ray worker executes.

    Never raises for a failing run: the result says ``ok`` or carries the error, so the
    driver can report it. (A killed worker is noticed by Ray instead.)

    :param spec: the run
    :param out: the sweep's output folder (absolute, shared by every node)
    :param threads: CPU threads this run may use
    :return: ``{"name", "ok", "summary" | "error", "host", "pid", "seconds"}``
    """
    folder = Path(out)
    started = time.time()
    info = {"name": spec.name, "host": socket.gethostname(), "pid": os.getpid()}
    try:
        preset = spec.preset
        if preset.ppo.torch_threads == 0 or preset.ppo.torch_threads > threads:
            # train() applies ppo.torch_threads itself: keep it within this run's share.
            from prefrl.config.presets import apply_overrides

            preset = apply_overrides(preset, [f"ppo.torch_threads={threads}"])
        resuming = prepare_run_dir(folder, spec, preset)
        info["resumed"] = resuming
        status_path, log_path = state_files(folder, spec)
        status_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**info, "started": started, "threads": threads}) + "\n")
        os.replace(tmp, status_path)
        pin_threads(threads)
        from prefrl.training.run import RunPaths, train

        run_dir = run_dir_of(folder, spec)
        with open(log_path, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            summary = train(preset, arm=spec.arm, seed=spec.seed, paths=RunPaths(run_dir, run_dir / "clips"),
                            progress=False)
        return {**info, "ok": True, "summary": summary, "seconds": time.time() - started}
    except Exception as exc:  # noqa: BLE001 - report every failure, the sweep goes on
        return {**info, "ok": False, "error": _short_error(exc), "traceback": traceback.format_exc(),
                "seconds": time.time() - started}


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}".strip()


# --------------------------------------------------------------------------- live progress


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


@dataclass
class RunProgress:
    """What the live table shows for one run."""

    spec: RunSpec
    state: str = "queued"  # queued, submitted, running, done, skipped, failed, stale
    steps: int = 0
    labels: int | None = None
    eval_return: float | None = None
    train_return: float | None = None
    started: float | None = None
    seconds: float | None = None
    host: str = ""
    error: str = ""
    details: str = ""

    def poll(self, out: Path) -> None:
        """Read the running run's newest logged numbers from its files."""
        run_dir = run_dir_of(out, self.spec)
        status_path, _ = state_files(out, self.spec)
        if self.state == "submitted" and status_path.is_file():
            try:
                status = json.loads(status_path.read_text())
            except (OSError, ValueError):
                status = {}
            self.state, self.host = "running", str(status.get("host", ""))
            self.started = float(status.get("started", time.time()))
        self.read_files(run_dir)

    def read_files(self, run_dir: Path) -> None:
        from prefrl.training.checkpoint import newest_progress, tail_row

        # A resumed run logs on in its newest session's file, from its checkpoint's step.
        start, row = newest_progress(run_dir) or (None, {})
        # SB3 leaves a key empty in rows where it was not logged: keep the last value.
        steps = _float(row.get("time/total_timesteps"))
        labels = _float(row.get("labels/used"))
        train_return = _float(row.get("rollout/ep_rew_mean"))
        if steps is None:
            steps = start
        if steps is not None:
            self.steps = int(steps)  # not the interrupted session's larger step
        if labels is not None:
            self.labels = int(labels)
        if train_return is not None:
            self.train_return = train_return
        evaluation = tail_row(run_dir / "eval.csv")
        eval_return, eval_step = _float(evaluation.get("mean_true_return")), _float(evaluation.get("step"))
        if eval_return is not None:
            self.eval_return = eval_return
        if eval_step is not None:
            self.steps = max(self.steps, int(eval_step))
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            return
        # A finished run's summary is the last word (the final log row may lack labels).
        self.steps = int(summary.get("env_steps", self.steps))
        self.eval_return = _float(str(summary.get("final_true_return"))) if "final_true_return" in summary else self.eval_return
        if summary.get("arm") == "learned":
            self.labels = int(summary.get("labels_used", self.labels or 0))
        if self.seconds is None and "wall_seconds" in summary:
            self.seconds = float(summary["wall_seconds"])


STATE_STYLE = {
    "running": "bold cyan", "submitted": "cyan", "queued": "dim", "done": "green", "skipped": "green",
    "failed": "bold red", "stale": "yellow",
}
STATE_ORDER = {"running": 0, "failed": 1, "stale": 2, "submitted": 3, "queued": 4, "done": 5, "skipped": 6}


def progress_table(sweep: Sweep, runs: Sequence[RunProgress]) -> Any:
    """The rich table of the live display: one row per run, busiest first."""
    from rich.table import Table

    counts = Counter(r.state for r in runs)
    caption = ", ".join(f"{counts[s]} {s}" for s in sorted(counts, key=STATE_ORDER.__getitem__))
    table = Table(title=f"sweep {sweep.name}: {len(runs)} runs in {sweep.out}", caption=caption, expand=False)
    for col, justify in (("run", "left"), ("state", "left"), ("steps", "right"), ("labels", "right"),
                         ("eval true return", "right"), ("train return", "right"), ("time", "right"),
                         ("host / error", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "host / error",  # type: ignore[arg-type]
                         overflow="fold" if col == "host / error" else "ellipsis")
    now = time.time()
    for r in sorted(runs, key=lambda r: STATE_ORDER.get(r.state, 9)):
        total = r.spec.preset.ppo.total_steps
        seconds = r.seconds if r.seconds is not None else (now - r.started if r.started else None)
        table.add_row(
            r.spec.name,
            f"[{STATE_STYLE.get(r.state, '')}]{r.state}[/]",
            f"{r.steps:,} / {total:,}" if r.state not in ("queued", "submitted") else f"- / {total:,}",
            "" if r.labels is None else f"{r.labels} / {r.spec.label_budget}",
            "" if r.eval_return is None else f"{r.eval_return:.1f}",
            "" if r.train_return is None else f"{r.train_return:.1f}",
            "" if seconds is None else f"{seconds:.0f} s",
            r.error or r.host,
        )
    return table


# --------------------------------------------------------------------------- the driver


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
        return [r for r in self.runs if r.state in ("failed", "stale")]


def _connect_ray(address: str | None) -> bool:
    """Start Ray on this machine (no address) or join a cluster.

    :return: whether this call started the connection (and so should shut it down)
    """
    import ray

    if ray.is_initialized():
        return False  # a caller (e.g. a test or a notebook) already connected
    common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address:
            ray.init(address=address, **common)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, **common)
    except ConnectionError as exc:
        raise PrefrlError(f"cannot reach the Ray cluster at {address!r} ({exc}); start it with `ray start --head` "
                          "or leave out --address to run on this machine") from None
    return True


def _cluster_cpus() -> tuple[int, int]:
    """``(total CPUs, CPUs of the largest node)`` that Ray sees."""
    import ray

    total = int(ray.cluster_resources().get("CPU", 1))
    largest = max((int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=total)
    return max(1, total), max(1, largest)


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
    import ray
    from rich.console import Console
    from rich.live import Live

    console = console or Console()
    out = sweep.out.resolve()  # workers may run in another directory, or on another node
    out.mkdir(parents=True, exist_ok=True)
    progress = [RunProgress(spec) for spec in sweep.runs]
    todo: list[RunProgress] = []
    for run in progress:
        state, why = finished_state(out, run.spec)
        if state == "done":
            run.state = "skipped"
            run.read_files(run_dir_of(out, run.spec))
        elif state == "stale":
            run.state, run.error = "stale", why
        else:
            todo.append(run)

    if not todo:
        console.print(progress_table(sweep, progress))  # nothing to run: show what is there
    started_ray = _connect_ray(address) if todo else False
    try:
        if todo:
            total_cpus, node_cpus = _cluster_cpus()
            if sweep.threads_per_run:
                threads = sweep.threads_per_run
            else:
                threads = max(1, total_cpus // max_parallel) if max_parallel else 1
            threads = min(threads, node_cpus)  # a run lives on one node
            parallel = max_parallel or max(1, total_cpus // threads)
            live = Live(progress_table(sweep, progress), console=console, refresh_per_second=4, transient=False)
            _launch(todo, out, threads, parallel, retries, live, sweep, progress, refresh_seconds, on_poll)
    finally:
        if started_ray:
            ray.shutdown()

    result = SuiteResult(runs=progress)
    for run in progress:
        if run.state in ("failed", "stale"):
            console.print(f"[bold red]{run.state}[/]: {run.spec.name}: {run.error}")
            if run.details:
                console.print(run.details.rstrip(), markup=False, highlight=False)
    finished = [run_dir_of(out, r.spec) for r in progress if r.state in ("done", "skipped")]
    if finished:
        from prefrl.analysis.report import compare

        result.run_dirs = finished
        result.rows, result.table = compare(finished, out)
    return result


def _launch(
    todo: list[RunProgress],
    out: Path,
    threads: int,
    parallel: int,
    retries: int,
    live: Any,
    sweep: Sweep,
    progress: list[RunProgress],
    refresh_seconds: float,
    on_poll: Callable[[list[RunProgress]], None] | None,
) -> None:
    """Submit runs as Ray tasks, at most ``parallel`` at a time, until all have ended.

    :param todo: the runs to start, in order
    :param out: the sweep's output folder (absolute)
    :param threads: CPUs (Ray ``num_cpus``) and threads of each run
    :param parallel: runs in flight at most
    :param retries: Ray retries of a run whose worker died
    :param live: the ``rich.live.Live`` display, entered here
    :param sweep: the sweep (for the table's title)
    :param progress: every run's progress, including skipped ones (for the table)
    :param refresh_seconds: longest wait for a run to end before files are polled again
    :param on_poll: called with ``progress`` after every poll
    """
    import ray

    env_vars = {var: str(threads) for var in THREAD_VARIABLES}
    for var in ("MUJOCO_GL", "PYOPENGL_PLATFORM"):
        if var in os.environ:
            env_vars[var] = os.environ[var]
    # The thread variables go in the runtime environment so the worker process starts
    # with them: OpenBLAS and OpenMP read them once, when they are loaded.
    remote = ray.remote(execute_run).options(
        num_cpus=threads, max_retries=retries, retry_exceptions=False, runtime_env={"env_vars": env_vars},
    )
    queue = list(todo)
    in_flight: dict[Any, RunProgress] = {}
    with live:
        try:
            while queue or in_flight:
                while queue and len(in_flight) < parallel:
                    run = queue.pop(0)
                    # Clear old bookkeeping now, so a stale status file never shows the
                    # run as running before its worker has started.
                    for path in state_files(out, run.spec):
                        path.unlink(missing_ok=True)
                    run.state = "submitted"
                    in_flight[remote.remote(run.spec, str(out), threads)] = run
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=refresh_seconds)
                for ref in ready:
                    _finish(in_flight.pop(ref), ref, out, live)
                for run in in_flight.values():
                    run.poll(out)
                if on_poll is not None:
                    on_poll(progress)
                live.update(progress_table(sweep, progress))
        except BaseException:
            # Interrupted (Ctrl-C): stop the runs we started; they are rerun next time.
            for ref in in_flight:
                ray.cancel(ref, force=True)
            raise
        live.update(progress_table(sweep, progress))
    live.console.line()  # what is printed next starts below the table, also in logs


def _finish(run: RunProgress, ref: Any, out: Path, live: Any) -> None:
    """Record how a Ray task ended (result, raised error or dead worker) and print it.

    :param run: the run's progress, updated in place
    :param ref: the task's object ref, ready
    :param out: the sweep's output folder
    :param live: the live display (its console prints above the table)
    """
    import ray

    try:
        result = ray.get(ref)
    except ray.exceptions.RayError as exc:
        # The worker died (killed, out of memory, node lost): no result came back.
        text = str(exc).strip().splitlines()
        run.state, run.error = "failed", f"{type(exc).__name__}: {text[0] if text else ''}"
        run.details = str(exc)
    else:
        run.host = result.get("host", run.host)
        run.seconds = result.get("seconds")
        if result["ok"]:
            run.state = "done"
        else:
            run.state, run.error, run.details = "failed", result["error"], result.get("traceback", "")
    run.read_files(run_dir_of(out, run.spec))
    if run.seconds is None and run.started is not None:
        run.seconds = time.time() - run.started
    style = "green" if run.state == "done" else "bold red"
    live.console.print(f"[{style}]{run.state}[/] {run.spec.name}" + (f": {run.error}" if run.error else ""))
