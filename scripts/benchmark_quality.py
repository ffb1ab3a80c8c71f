"""Learning quality: PPO on a reward learned from synthetic preferences vs the same PPO
on the true reward, over tasks x seeds x label budgets; writes ``docs/results.md``.

The plan is tasks x seeds x (one true-reward run + one learned-reward run per label
budget). Every run is ``prefrl.training.run.train`` in its own subprocess (a crash of one
run doesn't end the plan) and writes to

    <out>/<task>/<setting>/<arm>/seed<k>/       arm = true | learned-<budget>

where ``<setting>`` is ``<steps>steps`` (plus a short hash of any ``--set`` overrides).
The plan is resumable: a run directory with ``summary.json`` is reused, an interrupted
run continues from its last checkpoint, an unfinished folder without one is removed and
run again.

For every task the script also measures a uniform-random policy's true return on the
evaluation env (the task's real rules, ``--random-episodes`` episodes); it is the zero of
the normalised score ``(learned - random) / (true - random)``, the Atari quality
measure. The results page is rebuilt from every finished run under ``<out>`` after each
run, so an interrupted plan still leaves an honest page.

Default budgets (one developer machine: 2 cores, CPU only; see DEFAULT_STEPS):

* MuJoCo: 300k env steps for HalfCheetah, Hopper, Swimmer, Reacher and
  InvertedDoublePendulum (the issue's minimum; 1M, the presets' value, takes ~40 min per
  run and ~18 h for 3 tasks x 3 seeds x 3 arms); InvertedPendulum 100k (its preset).
* Atari: 250k agent steps = 1M frames (frame skip 4). Label budget: the paper's 3,300
  labels for 50M frames scaled by frames, ``max(500, round(3300 * frames / 50e6))``: 66
  at 1M frames, floored to 500, the number of labels the paper collects before RL starts
  on Atari. The label rate's constant ``c`` (rate ∝ c / (T + c)) is scaled the same way,
  ``preset c * frames / 50e6`` (100,000 agent steps at 1M frames, from the presets' 5e6):
  unscaled, a 1M-frame run sees T ≪ c and asks for its labels at a constant rate, where
  the paper asks for most of them early.
* Every learned run collects 25% of its budget from the random policy before RL starts
  (the paper's MuJoCo rule; ``labels.initial_labels``), the rest on the preset's schedule
  (on Atari with ``c`` scaled as above).

Usage::

    python scripts/benchmark_quality.py                                   # the full default plan
    python scripts/benchmark_quality.py invertedpendulum --seeds 0 1 2 --labels 700 350 --steps 50000
    python scripts/benchmark_quality.py pendulum --seeds 0 --labels 40 --set ppo.total_steps=2048 \\
        --out /tmp/bq --results /tmp/bq/results.md                        # a tiny smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from prefrl.config.presets import Preset, load_preset  # noqa: E402
from prefrl.util.errors import PrefrlError  # noqa: E402

# --------------------------------------------------------------------------- defaults

MUJOCO_TARGET_TASKS = ("halfcheetah", "hopper", "swimmer")
MUJOCO_REPORT_TASKS = ("reacher", "inverteddoublependulum")
ATARI_TASKS = ("beamrider", "breakout", "enduro", "pong", "qbert", "seaquest", "spaceinvaders")
DEFAULT_TASKS = MUJOCO_TARGET_TASKS + MUJOCO_REPORT_TASKS + ATARI_TASKS
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_LABELS = (700, 350)

#: Env (agent) steps per run on a 2-core CPU-only developer machine.
DEFAULT_STEPS: dict[str, int] = {
    "halfcheetah": 300_000,
    "hopper": 300_000,
    "swimmer": 300_000,
    "reacher": 300_000,
    "inverteddoublependulum": 300_000,
    "walker2d": 300_000,
    "ant": 300_000,
    "invertedpendulum": 100_000,
}
#: Atari: 250k agent steps = 1M frames at frame skip 4.
ATARI_DEFAULT_STEPS = 250_000
PAPER_ATARI_LABELS = 3_300
PAPER_ATARI_FRAMES = 50_000_000
ATARI_LABEL_FLOOR = 500
#: Evaluations per Atari run: the presets evaluate every 200k steps (2% of their 10M),
#: which would give a 1M-frame run two points; an evaluation game can last 27,000 steps.
ATARI_EVALUATIONS = 5
INITIAL_LABEL_FRACTION = 0.25

#: Targets of issue 4.
MUJOCO_TARGET_RATIO = 1.0
MUJOCO_TARGET_LABELS = 700
MUJOCO_TARGET_MIN_STEPS = 300_000
TARGET_SEEDS = 3
ATARI_TARGET_NORMALISED = 0.8
ATARI_TARGET_MIN_FRAMES = 1_000_000
#: "Clearly beats random": true mean - random mean > CLEAR_MARGIN x pooled std.
CLEAR_MARGIN = 2.0

DEFAULT_RANDOM_EPISODES = 10


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class RunSpec:
    """One run of the plan."""

    task: str
    arm: str  # "true" or "learned"
    seed: int
    budget: int  # label budget; 0 for the true arm
    steps: int
    overrides: tuple[str, ...]  # everything passed to load_preset, in order
    run_dir: Path

    @property
    def label(self) -> str:
        arm = "true" if self.arm == "true" else f"learned-{self.budget}"
        return f"{self.task}/{arm}/seed{self.seed}"

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["run_dir"] = str(self.run_dir)
        d["overrides"] = list(self.overrides)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunSpec:
        return cls(task=d["task"], arm=d["arm"], seed=int(d["seed"]), budget=int(d["budget"]),
                   steps=int(d["steps"]), overrides=tuple(d["overrides"]), run_dir=Path(d["run_dir"]))


#: The two arms of a comparison: PPO on the true reward, PPO on the learned reward.
ARMS = ("true", "learned")


def default_steps(task: str, preset: Preset) -> int:
    if preset.task.domain == "atari":
        return ATARI_DEFAULT_STEPS
    return DEFAULT_STEPS.get(task, preset.ppo.total_steps)


def atari_label_budget(steps: int, frame_skip: int) -> int:
    """The paper's 3,300 labels for 50M frames, scaled by frames, floored at 500."""
    return max(ATARI_LABEL_FLOOR, round(PAPER_ATARI_LABELS * steps * frame_skip / PAPER_ATARI_FRAMES))


def atari_rate_constant(steps: int, frame_skip: int, preset_constant: float) -> int:
    """The label rate's constant ``c`` (rate ∝ c / (T + c), in agent steps) scaled by frames
    like the budget, so a short run keeps the paper's shape: most labels early."""
    return max(1, round(preset_constant * steps * frame_skip / PAPER_ATARI_FRAMES))


def setting_name(steps: int, user_overrides: Sequence[str]) -> str:
    name = f"{steps}steps"
    if user_overrides:
        digest = hashlib.sha1("\n".join(user_overrides).encode()).hexdigest()[:8]
        name += f"-set{digest}"
    return name


def build_plan(
    tasks: Sequence[str],
    seeds: Sequence[int],
    budgets: Sequence[int],
    out: Path,
    *,
    steps: int | None = None,
    atari_budgets: Sequence[int] | None = None,
    user_overrides: Sequence[str] = (),
) -> list[RunSpec]:
    """tasks x seeds x (true arm + learned arm per budget), in that order (a task's
    seeds finish before the next task starts, so partial plans give whole tasks).

    :param steps: env steps of every run (default: the per-task table DEFAULT_STEPS)
    :param budgets: label budgets of the MuJoCo/classic tasks
    :param atari_budgets: label budgets of Atari tasks (default: the scaled paper budget)
    :param user_overrides: ``--set`` items applied after the plan's own settings
    """
    for item in user_overrides:
        key = item.partition("=")[0].strip()
        if key in ("ppo.total_steps", "labels.budget"):
            raise PrefrlError(f"--set {item!r}: use --steps / --labels for {key}, they name the run folders")
    plan: list[RunSpec] = []
    for task in tasks:
        base = load_preset(task, list(user_overrides))  # validates the task name and overrides early
        name = base.task.name
        n_steps = steps if steps is not None else default_steps(name, base)
        if base.task.domain == "atari":
            task_budgets = list(atari_budgets) if atari_budgets else [atari_label_budget(n_steps, base.task.frame_skip)]
        else:
            task_budgets = list(budgets)
        folder = out / name / setting_name(n_steps, user_overrides)
        for seed in seeds:
            common = [f"ppo.total_steps={n_steps}"]
            if base.task.domain == "atari":
                common.append(f"eval.every_steps={max(1, n_steps // ATARI_EVALUATIONS)}")
            plan.append(RunSpec(name, "true", seed, 0, n_steps, tuple(common + list(user_overrides)),
                                folder / "true" / f"seed{seed}"))
            for budget in task_budgets:
                initial = max(1, round(INITIAL_LABEL_FRACTION * budget))
                extra = [f"labels.budget={budget}", f"labels.initial_labels={initial}"]
                if base.task.domain == "atari":
                    constant = atari_rate_constant(n_steps, base.task.frame_skip, base.labels.rate_constant)
                    extra.append(f"labels.rate_constant={constant}")
                plan.append(RunSpec(name, "learned", seed, budget, n_steps,
                                    tuple(common + extra + list(user_overrides)),
                                    folder / f"learned-{budget}" / f"seed{seed}"))
    dirs = [s.run_dir for s in plan]
    if len(set(dirs)) != len(dirs):
        raise PrefrlError("the plan names the same run twice; give each task, seed and budget once")
    return plan


#: Small files of a finished run copied into the records folder (committed with the page).
RECORD_RUN_FILES = ("summary.json", "eval.csv", "config.json")
RECORD_SETTING_FILES = ("setting.json", "random.json")
#: Hand-written analysis beside the records folder, copied into the page as it is.
FINDINGS_FILE = "findings.md"


def record_dir(run_dir: Path, records: Path) -> Path:
    """Where the records of ``<out>/<task>/<setting>/<arm>/seed<k>`` live."""
    return records / Path(*run_dir.parts[-4:])


#: Preset sections that shape each arm's result (the true arm never uses the reward
#: model, its labels or the teacher).
ARM_SECTIONS = {"true": ("task", "ppo", "eval"), "learned": ("task", "ppo", "reward", "labels", "teacher", "eval")}


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples and lists, inf and Infinity alike


def changed_settings(spec: RunSpec, stored: dict[str, Any]) -> list[str]:
    """What differs between a finished run's preset (``config.json``'s ``preset``) and
    the one the plan would run now, as ``section.key (old -> new)`` (the form ``train``
    refuses a resume with). A key the stored preset lacks is a setting added since, which
    then behaved as its default; one it has and the preset no longer knows is ignored.
    """
    from prefrl.config.presets import SECTIONS
    from prefrl.training.checkpoint import flatten, setting_differences

    current = load_preset(spec.task, list(spec.overrides)).to_dict()
    old, new = {}, {}
    for section in ARM_SECTIONS[spec.arm]:
        defaults = {f.name: (f.default_factory() if f.default is dataclasses.MISSING else f.default)
                    for f in dataclasses.fields(SECTIONS[section])}
        new[section] = current.get(section, {})
        old[section] = {key: stored.get(section, {}).get(key, defaults.get(key)) for key in new[section]}
    return setting_differences(flatten(_plain(old)), flatten(_plain(new)))


def finished_dir(spec: RunSpec, records: Path | None = None) -> Path | None:
    """The folder of the run's finished result: here, or from earlier (on any machine)
    kept in ``records``; None if it has not finished."""
    for folder in (spec.run_dir, None if records is None else record_dir(spec.run_dir, records)):
        if folder is not None and (folder / "summary.json").is_file():
            return folder
    return None


def stale_changes(spec: RunSpec, records: Path | None = None) -> list[str]:
    """:func:`changed_settings` of the run's finished result ([] if none or unreadable)."""
    folder = finished_dir(spec, records)
    try:
        stored = json.loads((folder / "config.json").read_text())["preset"] if folder else None
    except (OSError, ValueError, KeyError):
        return []
    return changed_settings(spec, stored) if stored else []


def is_finished(spec: RunSpec, records: Path | None = None) -> bool:
    """Finished with the settings the plan would run now (here or in ``records``)."""
    return finished_dir(spec, records) is not None and not stale_changes(spec, records)


def save_records(out: Path, records: Path) -> None:
    """Copy the small files of every finished run under ``out`` (summary, evaluation
    curve, config), the settings' files, load logs and the command log into ``records``.

    The run folders (policies, reward models, label databases, tensorboard logs) are
    large and git-ignored; the records are what the results page is built from, so the
    page and its numbers survive a fresh clone and later plans reuse those runs.
    """
    for summary in sorted(out.glob("*/*/*/seed*/summary.json")):
        dest = record_dir(summary.parent, records)
        dest.mkdir(parents=True, exist_ok=True)
        for name in RECORD_RUN_FILES:
            if (summary.parent / name).is_file():
                shutil.copyfile(summary.parent / name, dest / name)
    for name in RECORD_SETTING_FILES:
        for src in sorted(out.glob(f"*/*/{name}")):
            dest = records / src.relative_to(out)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
    for src in sorted(out.glob("logs/*.load.json")):
        (records / "logs").mkdir(parents=True, exist_ok=True)
        data = json.loads(src.read_text())
        data["run_dir"] = str(record_dir(Path(data["run_dir"]), records))
        (records / "logs" / src.name).write_text(json.dumps(data) + "\n")
    if (out / "commands.jsonl").is_file():
        known = {json.dumps(e, sort_keys=True) for e in read_commands(records)}
        with open(records / "commands.jsonl", "a") as fh:
            for entry in read_commands(out):
                entry = dict(entry, planned=[str(record_dir(Path(d), records)) for d in entry.get("planned", [])])
                if json.dumps(entry, sort_keys=True) not in known:
                    fh.write(json.dumps(entry) + "\n")


def prepare(plan: Sequence[RunSpec], records: Path | None = None) -> tuple[list[RunSpec], list[RunSpec]]:
    """Split the plan into finished runs (reused, also those kept in ``records``) and
    runs to do. An interrupted run with a checkpoint of the same settings resumes from it
    (``train`` ends it exactly as an uninterrupted run); other unfinished folders are
    removed so that their runs start clean. A run finished with other settings than the
    preset's now is run again (said on stdout); its folder moves to ``<out>/replaced``."""
    from prefrl.training.run import RunPaths, would_resume

    done, todo = [], []
    for spec in plan:
        changes = stale_changes(spec, records)
        if finished_dir(spec, records) is not None and not changes:
            done.append(spec)
        else:
            if changes:
                print(f"{spec.label}: finished with other settings ({'; '.join(changes)}); running it again",
                      flush=True)
                if (spec.run_dir / "summary.json").is_file():
                    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
                    aside = spec.run_dir.parents[3] / "replaced" / Path(*spec.run_dir.parts[-4:-1]) / \
                        f"{spec.run_dir.name}-{stamp}"
                    aside.parent.mkdir(parents=True, exist_ok=True)
                    spec.run_dir.rename(aside)
            if spec.run_dir.exists() and not would_resume(
                load_preset(spec.task, list(spec.overrides)), arm=spec.arm, seed=spec.seed,
                paths=RunPaths(spec.run_dir, spec.run_dir / "clips"),
            ):
                shutil.rmtree(spec.run_dir)
            todo.append(spec)
    return done, todo


def write_setting_files(plan: Sequence[RunSpec], user_overrides: Sequence[str]) -> None:
    """``setting.json`` in each ``<task>/<setting>`` folder: what its runs share."""
    seen: set[Path] = set()
    for spec in plan:
        folder = spec.run_dir.parent.parent
        if folder in seen:
            continue
        seen.add(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = {"task": spec.task, "steps": spec.steps, "overrides": list(user_overrides)}
        (folder / "setting.json").write_text(json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------- random policy


def measure_random_policy(preset: Preset, episodes: int, seed: int = 12_345) -> dict[str, Any]:
    """True return of a uniformly random policy on the task's evaluation env (real
    termination rules and time limit, true reward), over ``episodes`` episodes."""
    from prefrl.envs.factory import make_env

    env = make_env(preset, evaluation=True)
    env.action_space.seed(seed)
    returns, lengths = [], []
    started = time.time()
    try:
        for episode in range(episodes):
            env.reset(seed=seed + episode)
            total, length, done = 0.0, 0, False
            while not done:
                _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                total += float(reward)
                length += 1
                done = terminated or truncated
            returns.append(total)
            lengths.append(length)
    finally:
        env.close()
    return {
        "task": preset.task.name, "episodes": episodes, "seed": seed, "settings": random_policy_settings(preset),
        "mean": float(np.mean(returns)), "std": float(np.std(returns)),
        "returns": returns, "lengths": lengths, "wall_seconds": round(time.time() - started, 1),
    }


def random_policy_settings(preset: Preset) -> dict[str, Any]:
    """What a random policy's return depends on: the task and evaluation settings."""
    data = preset.to_dict()
    return _plain({"task": data["task"], "eval": data["eval"]})


def random_baseline(folder: Path, preset: Preset, episodes: int) -> dict[str, Any]:
    """The random policy's return for one ``<task>/<setting>`` folder, measured once
    (again when the task or evaluation settings have changed since; files from before
    the settings were stored are kept)."""
    path = folder / "random.json"
    if path.is_file():
        data = json.loads(path.read_text())
        same = data.get("settings", random_policy_settings(preset)) == random_policy_settings(preset)
        if data.get("episodes") == episodes and same:
            return data
    data = measure_random_policy(preset, episodes)
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data


# --------------------------------------------------------------------------- running


def _watch_parent(parent: int) -> None:
    """Child side: exit when the plan process has gone (killed with SIGKILL, say), so an
    orphaned run never writes into a folder that the restarted plan removes."""
    while True:
        time.sleep(2.0)
        if os.getppid() != parent:
            os._exit(3)


def run_one(spec_path: Path) -> int:
    """Child process: one ``train`` call from a spec file."""
    from prefrl.training.run import RunInterrupted, RunPaths, train

    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    spec = RunSpec.from_json(json.loads(spec_path.read_text()))
    preset = load_preset(spec.task, list(spec.overrides))
    try:
        summary = train(preset, arm=spec.arm, seed=spec.seed,
                        paths=RunPaths(spec.run_dir, spec.run_dir / "clips"), progress=False)
    except RunInterrupted as exc:  # stopped by a signal, its checkpoint written: not a failure
        print(f"benchmark_quality: {exc}", file=sys.stderr, flush=True)
        return exc.exit_status
    print(json.dumps(summary), flush=True)
    return 0


#: Exit statuses of a run stopped by SIGINT / SIGTERM after writing its checkpoint.
INTERRUPTED_STATUSES = (128 + signal.SIGINT, 128 + signal.SIGTERM)


def run_outcome(rc: int, finished: bool) -> str:
    """How a run's process ended: ``"finished"`` (exit 0 and its summary written),
    ``"interrupted"`` (stopped by a signal after writing its checkpoint) or ``"failed"``
    (any other exit, exit 0 without a summary included)."""
    if rc == 0 and finished:
        return "finished"
    return "interrupted" if rc in INTERRUPTED_STATUSES else "failed"


def run_status(rc: int, finished: bool, seconds: float, log: Path) -> str:
    """What the plan prints when a run's process ends."""
    outcome = run_outcome(rc, finished)
    if outcome == "finished":
        return f"finished in {seconds / 60:.1f} min"
    if outcome == "interrupted":
        return "interrupted, its checkpoint kept: rerun the same command to resume it"
    return f"FAILED (exit {rc}), see {log}"


def current_step(run_dir: Path) -> int:
    """Env steps a running run has logged so far: the last row of its newest session's
    SB3 progress.csv (a resumed run logs to ``logs/resumed_at_<step>/`` from its
    checkpoint on, and redoes the steps the interrupted session took after it)."""
    from prefrl.training.checkpoint import newest_progress

    start, row = newest_progress(run_dir) or (0, {})
    try:
        return int(float(row.get("time/total_timesteps") or start))
    except ValueError:
        return start


def checkpoint_step(run_dir: Path) -> int:
    """Env steps an unfinished run keeps in its checkpoint, which ``train`` resumes from
    (0 without one; an unreadable one is the run's own error to report)."""
    from prefrl.training.checkpoint import read_checkpoint
    from prefrl.util.errors import PrefrlError

    try:
        checkpoint = read_checkpoint(run_dir)
    except PrefrlError:
        return 0
    return 0 if checkpoint is None else int(checkpoint["step"])


def log_stem(run_dir: Path) -> str:
    """``<task>__<setting>__<arm>__seed<k>``: the name of a run's files in ``<out>/logs``."""
    return "__".join(run_dir.parts[-4:])


def host_record(run_dir: Path, load_samples: Sequence[float]) -> dict[str, Any]:
    """How busy the machine was while a run ran (wall times are only comparable at similar
    load) and which machine it was (records gather runs from several machines).

    :param run_dir: the run's folder
    :param load_samples: 1-minute load averages sampled while it ran
    """
    return {"run_dir": str(run_dir), "mean_load1": float(np.mean(load_samples)),
            "max_load1": float(np.max(load_samples)), "samples": len(load_samples),
            "cores": os.cpu_count(), "machine": machine_line()}


class Runner:
    """Runs specs in subprocesses, at most ``jobs`` at a time."""

    def __init__(self, jobs: int, log_dir: Path) -> None:
        self.jobs = jobs
        self.log_dir = log_dir
        self.running: dict[RunSpec, tuple[subprocess.Popen, Any, float]] = {}
        self.load: dict[RunSpec, list[float]] = defaultdict(list)

    def start(self, spec: RunSpec) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        stem = log_stem(spec.run_dir)
        spec_path = self.log_dir / f"{stem}.spec.json"
        spec_path.write_text(json.dumps(spec.to_json(), indent=2) + "\n")
        log = open(self.log_dir / f"{stem}.log", "w")
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--run-one", str(spec_path)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
        self.running[spec] = (proc, log, time.time())

    def poll(self) -> list[tuple[RunSpec, int, float]]:
        ended = []
        load1 = os.getloadavg()[0]
        for spec, (proc, log, started) in list(self.running.items()):
            self.load[spec].append(load1)
            rc = proc.poll()
            if rc is not None:
                log.close()
                del self.running[spec]
                ended.append((spec, rc, time.time() - started))
                samples = self.load.pop(spec)
                load_path = self.log_dir / f"{log_stem(spec.run_dir)}.load.json"
                load_path.write_text(json.dumps(host_record(spec.run_dir, samples)) + "\n")
        return ended

    def stop_all(self) -> None:
        for proc, log, _ in self.running.values():
            if proc.poll() is None:
                proc.terminate()
        for proc, log, _ in self.running.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        self.running.clear()


def acquire_lock(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".lock"
    if lock.exists():
        try:
            pid = int(lock.read_text().strip())
            os.kill(pid, 0)
            raise PrefrlError(f"another benchmark (pid {pid}) is running on '{out}'; wait for it or give another --out")
        except (ValueError, ProcessLookupError):
            pass  # stale lock of a process that is gone
        except PermissionError:
            raise PrefrlError(f"another benchmark owns '{lock}'; give another --out") from None
    lock.write_text(f"{os.getpid()}\n")
    return lock


def execute(plan: Sequence[RunSpec], todo: Sequence[RunSpec], jobs: int, out: Path,
            on_finished=None, show: bool = True) -> list[tuple[RunSpec, str]]:
    """Run ``todo`` with a progress bar over the whole plan (in env steps).

    :return: (spec, :func:`run_outcome`) of every run started
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    total_steps = sum(s.steps for s in plan)
    done_steps = sum(s.steps for s in plan if s not in todo)
    runner = Runner(jobs, out / "logs")
    queue = list(todo)
    results: list[tuple[RunSpec, str]] = []
    finished_steps = done_steps
    runs_done = len(plan) - len(todo)
    runs_unfinished = 0  # failed or interrupted in this plan

    def stop(signum, frame):  # noqa: ARG001
        runner.stop_all()
        raise SystemExit(128 + signum)

    old_term = signal.signal(signal.SIGTERM, stop)
    tty = show and sys.stdout.isatty()
    last_line = 0.0
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    try:
        with Progress(*columns, disable=not tty, refresh_per_second=1) as progress:
            bar = progress.add_task("plan (env steps)", total=total_steps, completed=done_steps,
                                    info=f"runs {runs_done}/{len(plan)}")
            while queue or runner.running:
                while queue and len(runner.running) < jobs:
                    runner.start(queue.pop(0))
                for spec, rc, seconds in runner.poll():
                    ok = rc == 0 and is_finished(spec)
                    results.append((spec, run_outcome(rc, ok)))
                    if ok:  # a failed or interrupted run's steps are still to do
                        finished_steps += spec.steps
                        runs_done += 1
                    else:
                        runs_unfinished += 1
                    status = run_status(rc, ok, seconds, out / "logs" / f"{log_stem(spec.run_dir)}.log")
                    progress.console.print(f"{spec.label}: {status}")
                    if ok and on_finished is not None:
                        try:
                            on_finished(spec)
                        except Exception as exc:  # a report error must not stop the plan
                            progress.console.print(f"warning: results page not updated ({exc!r})")
                live = sum(min(current_step(s.run_dir), s.steps) for s in runner.running)
                names = ", ".join(s.label for s in runner.running)
                runs = f"runs {runs_done}/{len(plan)}" + (f" ({runs_unfinished} not finished)" if runs_unfinished else "")
                progress.update(bar, completed=finished_steps + live, info=f"{runs}  now: {names}")
                if show and not tty and time.time() - last_line > 60:  # logs and pipes: a line a minute
                    last_line = time.time()
                    print(f"[{datetime.now():%H:%M:%S}] plan {100 * (finished_steps + live) / total_steps:.0f}% "
                          f"of {total_steps:,} env steps, {runs}, now: {names}", flush=True)
                time.sleep(2.0)
    except KeyboardInterrupt:
        runner.stop_all()
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)
    return results


# --------------------------------------------------------------------------- results page


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


#: What the page says of runs made before their machine was recorded (2026-12-02): the sessions'
#: machines then were alike in cores and memory, not in CPU model.
UNRECORDED_MACHINE = "machine not recorded (before 2026-12-02; 2 cores, 23.5 GB RAM, AMD EPYC or Intel Xeon)"


def machine_line() -> str:
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) / 1024 ** 2:.1f} GB RAM"
    except OSError:
        pass
    import torch

    return (f"{os.cpu_count()} cores ({cpu_model()}){mem}, CPU only; Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}")


@dataclass
class Setting:
    """One ``<task>/<setting>`` folder with its finished runs."""

    folder: Path
    task: str
    steps: int
    overrides: list[str]
    domain: str
    frame_skip: int
    for_tests: bool
    runs: list[Any]  # prefrl.analysis.report.RunResult
    random: dict[str, Any] | None


def load_settings(out: Path) -> list[Setting]:
    from prefrl.analysis.report import load_run

    settings = []
    for meta in sorted(out.glob("*/*/setting.json")):
        folder = meta.parent
        data = json.loads(meta.read_text())
        try:
            preset = load_preset(data["task"], data.get("overrides", []))
        except PrefrlError:
            continue
        runs = []
        for summary in sorted(folder.glob("*/seed*/summary.json")):
            try:
                runs.append(load_run(summary.parent))
            except PrefrlError:
                continue
        random = json.loads((folder / "random.json").read_text()) if (folder / "random.json").is_file() else None
        settings.append(Setting(folder, data["task"], int(data["steps"]), list(data.get("overrides", [])),
                                preset.task.domain, preset.task.frame_skip, preset.task.for_tests, runs, random))
    return settings


def _fmt(x: float) -> str:
    return f"{x:,.1f}" if abs(x) < 10_000 else f"{x:,.0f}"


def _ratio(learned: float, true: float) -> float | None:
    """learned / true; undefined when the true return is not positive (Reacher's returns
    are negative: a ratio of negatives would reward doing worse)."""
    return learned / true if true > 0 else None


def _normalised(learned: float, true: float, random: float) -> float | None:
    """(learned - random) / (true - random); undefined unless the true arm beats random."""
    return (learned - random) / (true - random) if true > random else None


def clearly_beats_random(true_returns: Sequence[float], random: dict[str, Any]) -> tuple[bool, float, float]:
    """true mean - random mean > CLEAR_MARGIN x pooled std, the pooled std being
    sqrt((std_true^2 + std_random^2) / 2) with std_true over seeds' final returns and
    std_random over the random policy's episodes.

    :return: (verdict, margin = true mean - random mean, pooled std)
    """
    true_mean = float(np.mean(true_returns))
    pooled = math.sqrt((float(np.std(true_returns)) ** 2 + float(random["std"]) ** 2) / 2)
    margin = true_mean - float(random["mean"])
    return margin > CLEAR_MARGIN * pooled and margin > 0, margin, pooled


def _group(runs: Iterable[Any]) -> dict[tuple[str, int], list[Any]]:
    groups: dict[tuple[str, int], list[Any]] = defaultdict(list)
    for r in runs:
        groups[(r.arm, r.label_budget)].append(r)
    return groups


def run_host_record(run_dir: Path) -> dict[str, Any]:
    """What the plan process recorded about the machine while the run ran (load, and since
    2026-12-02 the machine itself); empty when nothing was recorded."""
    path = run_dir.parents[3] / "logs" / f"{log_stem(run_dir)}.load.json"
    try:
        data = json.loads(path.read_text())
        if Path(data["run_dir"]).resolve() == run_dir.resolve():
            return data
    except (OSError, ValueError, KeyError):
        pass
    return {}


def run_load(run_dir: Path) -> float | None:
    """Mean 1-minute load average while the run ran."""
    load = run_host_record(run_dir).get("mean_load1")
    return None if load is None else float(load)


def machines_note(runs: Sequence[Any]) -> str:
    """Which machines a table's runs ran on, with how many runs each."""
    counts: dict[str, int] = defaultdict(int)
    for r in runs:
        counts[run_host_record(r.run_dir).get("machine") or UNRECORDED_MACHINE] += 1
    return "Runs on: " + "; ".join(f"{m} ({n} run{'s' if n > 1 else ''})" for m, n in sorted(counts.items())) + ".\n"


def reward_model_note(members: Sequence[Any]) -> str:
    """Mean held-out preference accuracy and correlation of learned with true segment
    returns (recent segments) of the runs' last reward fit: what limits a learned arm."""
    acc, corr = [], []
    for r in members:
        try:
            stats = json.loads((r.run_dir / "summary.json").read_text()).get("reward_model") or {}
        except (OSError, ValueError):
            continue
        if "val_accuracy" in stats:
            acc.append(float(stats["val_accuracy"]))
        if "segment_return_corr" in stats:
            corr.append(float(stats["segment_return_corr"]))
    parts = []
    if acc:
        parts.append(f"held-out accuracy {np.mean(acc):.2f}")
    if corr:
        parts.append(f"return corr. {np.mean(corr):.2f}")
    return ", ".join(parts) if parts else "—"


def setting_table(s: Setting) -> str:
    groups = _group(s.runs)
    true_runs = groups.get(("true", 0), [])
    true_mean = float(np.mean([r.final_true_return for r in true_runs])) if true_runs else None
    lines = ["| arm | seeds | env steps | final true return (mean ± std) | learned / true "
             "| normalised (vs random) | labels used | wall time per run (mean) | reward model at the end |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (arm, budget), members in sorted(groups.items(), key=lambda kv: (kv[0][0] != "true", -kv[0][1])):
        finals = np.array([r.final_true_return for r in members])
        mean, std = float(finals.mean()), float(finals.std())
        ratio = norm = ""
        if arm != "true" and true_mean is not None:
            rr = _ratio(mean, true_mean)
            ratio = f"{rr:.2f}" if rr is not None else "n/a (true ≤ 0)"
            if s.random is not None:
                nn = _normalised(mean, true_mean, float(s.random["mean"]))
                norm = f"{nn:.2f}" if nn is not None else "n/a (true ≤ random)"
        name = "true reward" if arm == "true" else f"learned, {budget} labels"
        steps = int(np.mean([r.env_steps for r in members]))
        labels = f"{np.mean([r.labels_used for r in members]):.0f}" if arm != "true" else "—"
        wall = float(np.mean([r.wall_seconds for r in members]))
        loads = [run_load(r.run_dir) for r in members]
        loads = [x for x in loads if x is not None]
        load_txt = f" (load {np.mean(loads):.1f})" if loads else " (load not recorded)"
        seeds = ", ".join(str(r.seed) for r in sorted(members, key=lambda r: r.seed))
        per_seed = ", ".join(_fmt(r.final_true_return) for r in sorted(members, key=lambda r: r.seed))
        spread = f" (seeds: {per_seed})" if len(members) > 1 else ""
        lines.append(f"| {name} | {len(members)} ({seeds}) | {steps:,} | {_fmt(mean)} ± {_fmt(std)}{spread} | {ratio} "
                     f"| {norm} | {labels} | {wall / 60:.1f} min{load_txt} | {reward_model_note(members)} |")
    if s.random is not None:
        lines.append(f"| uniform-random policy | {s.random['episodes']} episodes | — | {_fmt(s.random['mean'])} "
                     f"± {_fmt(s.random['std'])} | | 0 (by definition) | — | — | |")
    return "\n".join(lines) + "\n"


def _protocol_note(n_seeds: int, steps: int, min_steps: int) -> str:
    notes = []
    if n_seeds < TARGET_SEEDS:
        notes.append(f"{n_seeds} of {TARGET_SEEDS} seeds")
    if steps < min_steps:
        notes.append(f"{steps:,} < {min_steps:,} steps")
    return f" (provisional: {', '.join(notes)})" if notes else ""


def target_rows(settings: Sequence[Setting]) -> tuple[list[str], list[str]]:
    """Rows of the targets table for MuJoCo and Atari."""
    mujoco, atari = [], []
    by_task: dict[str, list[Setting]] = defaultdict(list)
    for s in settings:
        if not s.overrides:  # a verdict is about the presets as shipped; variants have their own section
            by_task[s.task].append(s)
    for task in MUJOCO_TARGET_TASKS + MUJOCO_REPORT_TASKS:
        for budget in (MUJOCO_TARGET_LABELS, MUJOCO_TARGET_LABELS // 2):
            what = "target" if budget == MUJOCO_TARGET_LABELS else "also reported"
            found = False
            for s in by_task.get(task, []):
                g = _group(s.runs)
                t, learned = g.get(("true", 0)), g.get(("learned", budget))
                if not t or not learned:
                    continue
                found = True
                tm = float(np.mean([r.final_true_return for r in t]))
                lm = float(np.mean([r.final_true_return for r in learned]))
                ratio = _ratio(lm, tm)
                seeds = min(len(t), len(learned))
                note = _protocol_note(seeds, s.steps, MUJOCO_TARGET_MIN_STEPS)
                # Negative true returns (Reacher): "learned as good as true" is a normalised
                # score of at least the ratio's target instead.
                score = ratio
                if ratio is None and s.random is not None:
                    score = _normalised(lm, tm, float(s.random["mean"]))
                verdict = "n/a" if score is None else ("**MET**" if score >= MUJOCO_TARGET_RATIO else "**NOT MET**")
                rtxt = "n/a" if ratio is None else f"{ratio:.2f}"
                if ratio is None and score is not None:
                    rtxt = f"n/a (true ≤ 0); normalised {score:.2f}"
                mujoco.append(f"| {task} | {budget} ({what}) | {s.steps:,} | {seeds} | {rtxt} "
                              f"| ≥ {MUJOCO_TARGET_RATIO:.1f} | {verdict}{note} |")
            if not found:
                mujoco.append(f"| {task} | {budget} ({what}) | — | 0 | — | ≥ {MUJOCO_TARGET_RATIO:.1f} "
                              f"| not yet run |")
    for s in settings:
        if s.domain != "atari":
            continue
        g = _group(s.runs)
        t = g.get(("true", 0))
        learned_groups = [(b, m) for (a, b), m in g.items() if a == "learned"]
        if not t or s.random is None:
            atari.append(f"| {s.task} | {s.steps * s.frame_skip:,} | — | — | — | — | — | not yet run |")
            continue
        finals = [r.final_true_return for r in t]
        clear, margin, pooled = clearly_beats_random(finals, s.random)
        beat = (f"yes ({_fmt(margin)} > {CLEAR_MARGIN:g} × {_fmt(pooled)})" if clear
                else f"no ({_fmt(margin)} ≤ {CLEAR_MARGIN:g} × {_fmt(pooled)})")
        tm = float(np.mean(finals))
        excluded = ("excluded: the true arm does not clearly beat random at this budget"
                    + _protocol_note(len(t), s.steps * s.frame_skip, ATARI_TARGET_MIN_FRAMES))
        if not learned_groups:
            # Whether the game counts is the true arm's alone: say so before any learned run.
            verdict = "learned arm not yet run" if clear else excluded
            atari.append(f"| {s.task} | {s.steps * s.frame_skip:,} | {_fmt(float(s.random['mean']))} | {_fmt(tm)} "
                         f"| — | {beat} | — | {verdict} |")
        for budget, members in sorted(learned_groups):
            lm = float(np.mean([r.final_true_return for r in members]))
            seeds = min(len(t), len(members))
            note = _protocol_note(seeds, s.steps * s.frame_skip, ATARI_TARGET_MIN_FRAMES)
            if clear:
                n = _normalised(lm, tm, float(s.random["mean"]))
                ntxt = f"{n:.2f}"
                verdict = ("**MET**" if n >= ATARI_TARGET_NORMALISED else "**NOT MET**") + note
            else:
                ntxt = "— (excluded)"
                verdict = excluded
            atari.append(f"| {s.task} | {s.steps * s.frame_skip:,} | {_fmt(float(s.random['mean']))} | {_fmt(tm)} "
                         f"| {_fmt(lm)} ({budget} labels) | {beat} | {ntxt} | {verdict} |")
    measured = {s.task for s in settings if s.domain == "atari"}
    atari += [f"| {task} | — | — | — | — | — | — | not yet run |" for task in ATARI_TASKS if task not in measured]
    return mujoco, atari


def read_commands(out: Path) -> list[dict[str, Any]]:
    path = out / "commands.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def missing_runs(out: Path, settings: Sequence[Setting]) -> tuple[list[str], list[str]]:
    """(runs of invoked plans that have not finished, default-suite tasks not yet run)."""
    pending = []
    seen = set()
    for entry in read_commands(out):
        for d in entry.get("planned", []):
            if d in seen:
                continue
            seen.add(d)
            if not (Path(d) / "summary.json").is_file():
                pending.append(d)
    not_run = []
    for task in DEFAULT_TASKS:
        preset = load_preset(task)
        steps = default_steps(task, preset)
        budgets = [atari_label_budget(steps, preset.task.frame_skip)] if preset.task.domain == "atari" \
            else list(DEFAULT_LABELS)
        expected = len(DEFAULT_SEEDS) * (1 + len(budgets))
        finished = sum(len(s.runs) for s in settings
                       if s.task == task and s.steps == steps and not s.overrides)
        if finished == 0:
            not_run.append(task)
        elif finished < expected:
            not_run.append(f"{task} ({finished} of its {expected} default runs finished)")
    return pending, not_run


def trend_note(s: Setting) -> str:
    """Whether each arm's mean curve was still rising over the last quarter of the run."""
    parts = []
    for (arm, budget), members in sorted(_group(s.runs).items(), key=lambda kv: (kv[0][0] != "true", -kv[0][1])):
        def window(r: Any, lo: float, hi: float) -> float:
            inside = (r.eval_steps > lo * r.env_steps) & (r.eval_steps <= hi * r.env_steps)
            return float(np.mean(r.eval_returns[inside])) if inside.any() else float(r.eval_returns[-1])

        # Mean evaluation over the last quarter against the quarter before: robust to one bad evaluation.
        end = float(np.mean([window(r, 0.75, 1.0) for r in members if len(r.eval_returns)]))
        quarter = float(np.mean([window(r, 0.5, 0.75) for r in members if len(r.eval_returns)]))
        scale = max(abs(end), abs(quarter), 1e-9)
        rising = end - quarter > 0.05 * scale
        name = "true arm" if arm == "true" else f"learned arm ({budget})"
        parts.append(f"{name} {'still rising' if rising else 'flat or falling'} (mean evaluation "
                     f"{_fmt(quarter)} in the third quarter of the run, {_fmt(end)} in the last)")
    return "Mean curves: " + "; ".join(parts) + ": longer runs could change these numbers." \
        if any("still rising" in p for p in parts) else "Mean curves: " + "; ".join(parts) + "."


def run_spec(setting: Setting, run: Any) -> RunSpec | None:
    """The plan's spec of a recorded run (None if the plan would not name it)."""
    budget = [run.label_budget] if run.label_budget > 0 else [1]
    plan = build_plan([setting.task], [run.seed], budget, setting.folder.parent.parent, steps=setting.steps,
                      atari_budgets=budget, user_overrides=setting.overrides)
    wanted = Path(*run.run_dir.parts[-2:])
    return next((spec for spec in plan if Path(*spec.run_dir.parts[-2:]) == wanted), None)


def outdated_runs(setting: Setting) -> list[str]:
    """One line per recorded run whose settings differ from the preset's now."""
    lines = []
    for run in setting.runs:
        spec = run_spec(setting, run)
        changes = stale_changes(spec) if spec is not None else []
        if changes:
            lines.append(f"- {spec.label}: recorded with other settings than the preset's now "
                         f"({'; '.join(changes)}); the next plan runs it again.")
    return lines


def setting_title(setting: Setting) -> str:
    """``task, N env steps`` (and its overrides): which section of the page a note is about."""
    overrides = f" with `{' '.join(setting.overrides)}`" if setting.overrides else ""
    return f"{setting.task}, {setting.steps:,} env steps{overrides}"


def limits(settings: Sequence[Setting]) -> list[str]:
    """Facts that bound what the tables can show, computed from the settings."""
    notes = []
    for s in settings:
        if not s.runs:
            continue
        notes += outdated_runs(s)
        name = setting_title(s)
        preset_steps = load_preset(s.task, s.overrides).ppo.total_steps
        seeds = sorted({r.seed for r in s.runs})
        if s.steps < preset_steps:
            notes.append(f"- {name}: the preset's full budget is {preset_steps:,}. {trend_note(s)}")
        if len(seeds) < TARGET_SEEDS:
            spread = "not measured" if len(seeds) == 1 else f"measured on {len(seeds)} seeds only"
            notes.append(f"- {name}: {len(seeds)} of {TARGET_SEEDS} seeds; the spread over seeds is "
                         f"{spread} and a verdict is provisional.")
        ev = load_preset(s.task, s.overrides).eval
        how = "deterministic" if ev.deterministic else "sampled-action"
        notes.append(f"- {name}: each final return is one evaluation of {ev.episodes} {how} "
                     "episodes; a seed's final number can differ from its curve's trend.")
    notes.append("- Synthetic labels from a perfectly rational teacher (an upper bound on label quality); "
                 "a person or a B-Pref irrational teacher gives noisier labels.")
    return notes


def evaluation_modes(settings: Sequence[Setting]) -> str:
    """How each domain's presets act in evaluation (``eval.deterministic``), e.g.
    "MuJoCo: the policy's most likely action; Atari: actions sampled from the policy"
    (the presets' comments say why)."""
    modes: dict[str, set[bool]] = defaultdict(set)
    for s in settings:
        if s.runs:
            modes[s.domain].add(load_preset(s.task, s.overrides).eval.deterministic)
    words = {True: "the policy's most likely action", False: "actions sampled from the policy"}
    names = {"atari": "Atari", "mujoco": "MuJoCo"}
    parts = [f"{names.get(domain, domain)}: " + " or ".join(words[m] for m in sorted(found, reverse=True))
             for domain, found in sorted(modes.items())]
    return "; ".join(parts) or "no runs"


def write_results(out: Path, results: Path) -> Path:
    """Rebuild the results page from every finished run under ``out``."""
    from prefrl.analysis.report import compare

    settings = load_settings(out)
    plots_dir = results.parent / "results"
    sections = []
    for s in settings:
        if not s.runs:
            continue
        plots_dir.mkdir(parents=True, exist_ok=True)
        png = plots_dir / f"{s.task}-{s.folder.name}.png"
        with tempfile.TemporaryDirectory(prefix="prefrl-compare-") as tmp:
            compare([r.run_dir for r in s.runs], Path(tmp))
            shutil.copyfile(Path(tmp) / "comparison.png", png)
        rel = os.path.relpath(png, results.parent)
        starts = []
        for r in s.runs:
            try:
                starts.append(json.loads((r.run_dir / "config.json").read_text())["started"])
            except (OSError, ValueError, KeyError):
                pass
        when = f"{min(starts)[:16].replace('T', ' ')} to {max(starts)[:16].replace('T', ' ')}" if starts else "unknown"
        frames = f" = {s.steps * s.frame_skip:,} frames" if s.domain == "atari" else ""
        overrides = f"; overrides: `{' '.join(s.overrides)}`" if s.overrides else ""
        test = " [test preset, not part of the benchmark]" if s.for_tests else ""
        sections.append(
            f"### {s.task}, {s.steps:,} env steps{frames}{test}\n\n"
            f"Records in `{s.folder}`{overrides}; started {when}.\n\n" + setting_table(s)
            + "\n" + machines_note(s.runs) + f"\n![{s.task} learning curves]({rel})\n"
        )
    mujoco_rows, atari_rows = target_rows(settings)
    pending, not_run = missing_runs(out, settings)
    commands = read_commands(out)
    now = datetime.now().strftime("%Y-%m-%d %H:%M")

    parts = [
        "# Results: learned reward vs true reward\n",
        "Generated by `scripts/benchmark_quality.py` from the runs that actually finished, recorded under "
        f"`{out}` (each run's `summary.json`, `eval.csv` and `config.json`, kept in the repo); every number "
        "below is read from those files. "
        f"Page written {now}.\n",
        "**Machines:** each table names the machines its runs ran on (recorded per run since 2026-12-02; "
        f"CPU only). This page was written on: {machine_line()}.\n",
        "**Protocol** (`../shared/design.md`, issue 4): both arms run the same PPO, preprocessing, seeds and "
        "number of env steps; the learned arm never sees the true reward and gets its labels from the "
        "perfectly rational synthetic teacher. The *final true return* of a run is its last evaluation: "
        "the mean true return of the preset's `eval.episodes` episodes under the task's real "
        f"termination rules ({evaluation_modes(settings)}; each task's in the limits below). "
        "*learned / true* is the ratio of the means over seeds (undefined when the true "
        "mean is ≤ 0, e.g. Reacher). *normalised* is (learned − random) / (true − random), random being a "
        "uniform-random policy measured by the script on the evaluation env. 25% of each label budget is "
        "collected from the random policy before RL starts. Atari label budget: the paper's 3,300 labels "
        f"for 50M frames scaled by frames, max({ATARI_LABEL_FLOOR}, round(3300 × frames / 50M)) "
        f"({ATARI_LABEL_FLOOR} at 1M frames); the label rate's constant c (rate ∝ c / (T + c)) is scaled "
        "by frames too, preset c × frames / 50M "
        f"({atari_rate_constant(ATARI_DEFAULT_STEPS, 4, load_preset('breakout').labels.rate_constant):,} agent "
        "steps at 1M frames for Breakout), so that most labels come early as in the paper. Atari reward training is the presets' CPU workload, not the "
        "paper's: the loss sees 8 random frames of each 25-step clip and a refit trains on at most "
        "`reward.max_pairs_per_update` pairs per member, and the CNN has no dropout (the paper's 0.5 kept it "
        "from learning at these budgets; findings) (each run's `config.json` holds its settings). "
        "An Atari game counts only where the true arm *clearly beats "
        f"random*: true mean − random mean > {CLEAR_MARGIN:g} × pooled std, pooled std = "
        "√((std over seeds² + std over random episodes²) / 2).\n",
        "**Wall time** is per run, with the mean 1-minute load average of the machine while the arm's runs ran "
        f"(recorded by the script; {os.cpu_count()} cores means a load of {os.cpu_count()} is fully busy). The "
        "machine may be shared, so compare wall times within one table at similar load; "
        "`scripts/benchmark_speed.py` measures throughput properly.\n",
        "## Targets\n",
        f"MuJoCo: learned / true ≥ {MUJOCO_TARGET_RATIO:.1f} with {MUJOCO_TARGET_LABELS} synthetic labels, "
        f"{TARGET_SEEDS} seeds, ≥ {MUJOCO_TARGET_MIN_STEPS:,} env steps (default budget of this script: "
        f"{DEFAULT_STEPS['halfcheetah']:,} steps, the issue's minimum: the presets' "
        f"{load_preset('halfcheetah').ppo.total_steps:,} would multiply the 27 runs of 3 tasks × 3 seeds × 3 arms, "
        "already a long day on 2 cores, by more than 3). A verdict on fewer seeds or steps is marked provisional.\n",
        "| task | labels | env steps | seeds | learned / true | target | verdict |",
        "|---|---|---|---|---|---|---|",
        *mujoco_rows,
        "",
        f"Atari: normalised score ≥ {ATARI_TARGET_NORMALISED} at ≥ {ATARI_TARGET_MIN_FRAMES:,} frames "
        f"(default: {ATARI_DEFAULT_STEPS:,} agent steps = {ATARI_DEFAULT_STEPS * 4:,} frames), on the games "
        "where the true arm clearly beats random.\n",
    ]
    if atari_rows:
        parts += ["| game | frames | random | true | learned | true clearly beats random? | normalised | verdict |",
                  "|---|---|---|---|---|---|---|---|", *atari_rows, ""]
    else:
        parts.append("No Atari game has been run yet.\n")
    parts.append("## Per task\n")
    parts += sections or ["No run has finished yet.\n"]
    parts.append("## Limits of these numbers\n")
    parts += limits(settings) + [""]
    findings = out.parent / FINDINGS_FILE
    if findings.is_file():  # analysis of the numbers, kept beside the records and written by hand
        parts.append(f"## Findings (written by hand, `{findings}`)\n")
        parts.append(findings.read_text().strip() + "\n")
    parts.append("## Not yet run\n")
    parts.append(f"Default plan ({len(DEFAULT_SEEDS)} seeds, true arm + learned arms, default steps) "
                 "not yet complete for: "
                 + (", ".join(not_run) if not_run else "none") + ".\n")
    if pending:
        parts.append("Planned runs that have not finished (interrupted or still running):\n")
        parts += [f"- `{d}`" for d in pending]
        parts.append("")
    parts.append("## Commands\n")
    parts.append("Run from the repository root with the README's environment (`.venv`); `--jobs N` ran N runs "
                 "at once on the machine's cores (wall times above are per run):\n")
    if commands:
        dates: dict[str, list[str]] = defaultdict(list)  # a resumed plan repeats its command
        for c in commands:
            dates[c["command"]].append(c["date"].replace("T", " ")[:16])
        parts.append("```")
        for command, when in dates.items():
            again = f" (resumed {len(when) - 1}x, last {when[-1]})" if len(when) > 1 else ""
            parts.append(f"# {when[0]}{again}\n{command}")
        parts.append("```\n")
    else:
        parts.append("(none recorded)\n")
    results.parent.mkdir(parents=True, exist_ok=True)
    tmp = results.with_suffix(".md.tmp")
    tmp.write_text("\n".join(parts) + "\n")
    os.replace(tmp, results)
    return results


# --------------------------------------------------------------------------- command line


def _display_command(argv: Sequence[str]) -> str:
    script = os.path.relpath(Path(__file__).resolve(), Path.cwd())
    return "python " + shlex.join([script, *argv])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tasks", nargs="*", default=list(DEFAULT_TASKS),
                   help=f"preset names (default: {' '.join(DEFAULT_TASKS)})")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    p.add_argument("--labels", type=int, nargs="+", default=list(DEFAULT_LABELS),
                   help="label budgets of the learned arm, MuJoCo/classic tasks (default 700 350)")
    p.add_argument("--atari-labels", type=int, nargs="+",
                   help="label budgets of Atari tasks (default: the paper's 3,300 scaled to the frames, floor 500)")
    p.add_argument("--steps", type=int,
                   help="env steps of every run (default per task: " + ", ".join(
                       f"{k} {v:,}" for k, v in DEFAULT_STEPS.items()) + f", Atari {ATARI_DEFAULT_STEPS:,})")
    p.add_argument("--out", type=Path, default=Path("runs/benchmark_quality"), help="folder of the runs")
    p.add_argument("--results", type=Path, default=Path("docs/results.md"), help="results page to write")
    p.add_argument("--records", type=Path, default=Path("docs/results/runs"),
                   help="small files of every finished run (summary, eval curve, config), kept in the repo; "
                        "the page is built from them and finished runs found there are not run again")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                   help="arms to run (default both); e.g. --arms true first shows on which Atari games the "
                        "true arm clearly beats random before the learned arms are paid for")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="preset override passed to every run (repeatable)")
    p.add_argument("--random-episodes", type=int, default=DEFAULT_RANDOM_EPISODES,
                   help="episodes of the uniform-random policy per task")
    p.add_argument("--report-only", action="store_true", help="only rebuild the results page")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--run-one", type=Path, help=argparse.SUPPRESS)
    return p


def lift_overrides(args: argparse.Namespace) -> None:
    """``--set ppo.total_steps=N`` / ``--set labels.budget=N`` mean ``--steps N`` /
    ``--labels N``: steps and budgets name the run folders, so they are plan settings."""
    kept = []
    for item in args.overrides:
        key, _, value = item.partition("=")
        key = key.strip()
        if key in ("ppo.total_steps", "labels.budget"):
            try:
                number = int(value.strip().replace("_", ""))
            except ValueError:
                raise PrefrlError(f"--set {item!r}: {key} must be a whole number") from None
            if key == "ppo.total_steps":
                args.steps = number
            else:
                args.labels = [number]
        else:
            kept.append(item)
    args.overrides = kept


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.run_one is not None:
        return run_one(args.run_one)
    try:
        if args.report_only:
            save_records(args.out, args.records)
            print(f"wrote {write_results(args.records, args.results)}")
            return 0
        if args.jobs < 1 or args.random_episodes < 1 or any(b < 1 for b in args.labels):
            raise PrefrlError("--jobs, --random-episodes and --labels must be positive")
        lift_overrides(args)
        plan = build_plan(args.tasks, args.seeds, args.labels, args.out, steps=args.steps,
                          atari_budgets=args.atari_labels, user_overrides=args.overrides)
        plan = [spec for spec in plan if spec.arm in args.arms]
        if args.dry_run:
            for spec in plan:
                print(f"{spec.label:<44} {spec.steps:>10,} steps  {'done' if is_finished(spec, args.records) else 'to do'}  {spec.run_dir}")
            return 0
        lock = acquire_lock(args.out)
        try:
            with open(args.out / "commands.jsonl", "a") as fh:
                fh.write(json.dumps({"date": datetime.now().isoformat(timespec="seconds"),
                                     "command": _display_command(argv),
                                     "planned": [str(s.run_dir) for s in plan]}) + "\n")
            write_setting_files(plan, args.overrides)
            done, todo = prepare(plan, args.records)
            resumed = {s: checkpoint_step(s.run_dir) for s in todo}
            n_resumed = sum(1 for step in resumed.values() if step)
            print(f"plan: {len(plan)} runs, {len(done)} finished (reused), {len(todo)} to run"
                  + (f" ({n_resumed} from a checkpoint)" if n_resumed else "")
                  + f", {sum(s.steps - resumed[s] for s in todo):,} env steps to go; {args.jobs} job(s)", flush=True)
            for folder, task in sorted({(s.run_dir.parent.parent, s.task) for s in plan}):
                preset = load_preset(task, args.overrides)
                r = random_baseline(folder, preset, args.random_episodes)
                print(f"random policy, {task}: {r['mean']:.1f} ± {r['std']:.1f} over {r['episodes']} episodes", flush=True)

            def publish(_spec: RunSpec | None = None) -> None:
                save_records(args.out, args.records)
                write_results(args.records, args.results)

            publish()
            results = execute(plan, todo, args.jobs, args.out, on_finished=publish)
            publish()
        finally:
            lock.unlink(missing_ok=True)
        failed = [s.label for s, outcome in results if outcome == "failed"]
        stopped = [s.label for s, outcome in results if outcome == "interrupted"]
        print(f"wrote {args.results}" + (f"; failed runs: {', '.join(failed)}" if failed else "")
              + (f"; interrupted (rerun to resume): {', '.join(stopped)}" if stopped else ""))
        return 1 if failed else (130 if stopped else 0)
    except PrefrlError as exc:
        print(f"benchmark_quality: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("benchmark_quality: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
