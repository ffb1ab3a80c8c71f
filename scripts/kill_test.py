"""Kill test: no label is lost when the trainer, a viewer or both die by ``kill -9``.

    .venv/bin/python scripts/kill_test.py [--kills 20] [--seed 0] [--task pendulum] [--out DIR] [--quick]

Starts a human-teacher training run (``prefrl train TASK --teacher human ...``, small
budgets, a checkpoint every few seconds) and scripted labellers: each is a real
:class:`~prefrl.human.viewer.LabelViewer` in its own process (``SDL_VIDEODRIVER=dummy``) that
answers the pairs it is shown by posting key presses (a random answer after a random
pause), so labels go through the viewer's own commit path. After every answer the
viewer reports as stored, the labeller appends a line to its *committed log* and
fsyncs it: that log is what was committed.

At ``--kills`` random moments (random env steps of the run, then a random fraction of a
second; ``np.random.default_rng(--seed)``) it SIGKILLs the trainer, a viewer, or both
(chosen at random), then checks

- every label in the committed logs is in the store, with the same answer;
- ``PRAGMA integrity_check`` says ok (a read-only connection beside the live viewers,
  and, when nothing writes, also on a copy of ``labels.sqlite`` with its ``-wal``);

and restarts what it killed: the trainer with the exact same command (it must resume
from the checkpoint that was on disk, or start over when it died before its first
one, and then advance its step counter) and the viewer. At the end the run finishes
(``summary.json`` with the labels it used) and the script prints its figure: kills,
labels committed vs labels found, integrity checks, resumes. Exit status 1 if a label
was lost, an integrity check failed or a resume failed.

Each kill can land anywhere: in a checkpoint write (a torn temporary ``.*.tmp`` file is left,
counted below), in a label's commit, in a pair write, in a reward-model fit.
``tests/test_kill.py`` runs a short version (three kills: trainer, viewer, both).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("trainer", "viewer", "both")
RESUME_LINE = re.compile(r"resuming \S.* at step ([\d,]+) of ([\d,]+)")


# --------------------------------------------------------------------------- the labeller


class CommittedLog:
    """The viewer's event log: every ``event=label ... stored=1`` line (written by the
    viewer right after the label's commit returned) becomes one JSON line in ``path``,
    appended, flushed and fsynced before the viewer goes on."""

    def __init__(self, path: Path, labeller: str) -> None:
        self.labeller = labeller
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, text: str) -> int:
        for line in text.splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            if fields.get("event") == "label" and fields.get("stored") == "1":
                record = {"pair_id": fields["pair"], "choice": fields["choice"], "labeller": self.labeller,
                          "time": time.time()}
                os.write(self.fd, (json.dumps(record) + "\n").encode())
                os.fsync(self.fd)
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        os.close(self.fd)


def labeller_main(argv: Sequence[str]) -> int:
    """``kill_test.py labeller CLIPS_DIR --log FILE --name NAME``: a real viewer answering pairs."""
    parser = argparse.ArgumentParser(prog="kill_test.py labeller")
    parser.add_argument("clips_dir", type=Path)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--name", default="labeller")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--think", type=float, nargs=2, default=(0.05, 0.35), help="seconds a pair is looked at")
    parser.add_argument("--lease-seconds", type=float, default=6.0)
    parser.add_argument("--stop-file", type=Path, required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    sys.path.insert(0, str(ROOT))
    from prefrl.human.viewer import LabelViewer, import_pygame
    from prefrl.rundir.clips import find_clips

    pg = import_pygame()
    keys = [pg.K_LEFT, pg.K_RIGHT, pg.K_UP, pg.K_DOWN]  # left, right, tie, can't tell
    rng = np.random.default_rng(args.seed)
    from prefrl.util.errors import PrefrlError

    while True:  # the trainer creates the store: wait until it has (with its tables)
        if args.stop_file.exists():
            return 0
        try:
            location = find_clips(args.clips_dir)
            break
        except PrefrlError:
            time.sleep(0.1)
    log = CommittedLog(args.log, args.name)
    viewer = LabelViewer(location.clips_dir, location.task, location.info, labeller=args.name,
                         lease_seconds=args.lease_seconds, poll_seconds=0.05, event_log=log)  # type: ignore[arg-type]
    print(f"labeller {args.name}: pid {os.getpid()}", flush=True)
    shown: str | None = None
    answer_at = 0.0
    with viewer:
        while viewer.step():
            if args.stop_file.exists():
                break
            current = viewer.current
            if current is None:
                time.sleep(0.01)
                continue
            if current.pair_id != shown:
                shown, answer_at = current.pair_id, viewer.shown_at + float(rng.uniform(*args.think))
            if time.monotonic() >= answer_at:
                pg.event.post(pg.event.Event(pg.KEYDOWN, key=keys[int(rng.integers(len(keys)))]))
            else:
                time.sleep(0.005)
    log.close()
    return 0


# --------------------------------------------------------------------------- checks


def read_committed(logs: Sequence[Path]) -> tuple[dict[str, str], int]:
    """``{pair_id: choice}`` of every label the labellers logged as committed, and the
    number of torn (unparsable) lines, which only a kill in mid-append can leave."""
    committed: dict[str, str] = {}
    torn = 0
    for path in logs:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                torn += 1
                continue
            committed[record["pair_id"]] = record["choice"]
    return committed, torn


def store_snapshot(db_path: Path) -> tuple[str, dict[str, str]]:
    """``PRAGMA integrity_check`` and ``{pair_id: choice}`` of ``labels``, read in one
    read transaction of a read-only connection (viewers may be writing meanwhile)."""
    conn = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("BEGIN")
        integrity = "; ".join(str(row[0]) for row in conn.execute("PRAGMA integrity_check"))
        labels = {str(p): str(c) for p, c in conn.execute("SELECT pair_id, choice FROM labels")}
        conn.execute("COMMIT")
    finally:
        conn.close()
    return integrity, labels


def copy_snapshot(db_path: Path, scratch: Path) -> tuple[str, dict[str, str]]:
    """The same on a copy of ``labels.sqlite`` and its ``-wal`` (as a backup taken while
    nothing runs would be): opening the copy replays the WAL."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    for suffix in ("", "-wal"):
        source = db_path.with_name(db_path.name + suffix)
        if source.is_file():
            shutil.copyfile(source, scratch / (db_path.name + suffix))
    return store_snapshot(scratch / db_path.name)


def run_files(run_dir: Path) -> Any:
    """The :class:`prefrl.rundir.RunDir` of ``run_dir`` (prefrl imported only when needed)."""
    sys.path.insert(0, str(ROOT))
    from prefrl.rundir import RunDir

    return RunDir(run_dir)


def checkpoint_step(run_dir: Path) -> int | None:
    """Step of the run's checkpoint on disk, or None."""
    state = run_files(run_dir).read_checkpoint()
    return None if state is None else int(state["step"])


def torn_checkpoints(run_dir: Path) -> int:
    folder = run_files(run_dir).checkpoint_path.parent
    return len([p for p in folder.glob(".*.tmp")]) if folder.is_dir() else 0


# --------------------------------------------------------------------------- processes


@dataclass
class TrainerSession:
    proc: subprocess.Popen
    output: Path
    started: float
    #: checkpoint step on disk when it was started (None: none, it must start over)
    expected_resume: int | None
    resumed_at: int | None = None
    said_resume: bool | None = None  # None: not known yet
    last_step: int = -1
    outcome: str = "running"  # running, advanced, killed-early, failed, finished

    def read_output(self) -> str:
        return self.output.read_text(errors="replace") if self.output.is_file() else ""

    def poll_resume(self, learning_started: bool) -> None:
        """Find out whether it said ``resuming ... at step N`` (before it learns, it must)."""
        if self.said_resume is not None:
            return
        match = RESUME_LINE.search(self.read_output())
        if match:
            self.said_resume, self.resumed_at = True, int(match.group(1).replace(",", ""))
        elif learning_started:
            self.said_resume = False

    def log_dir(self, run_dir: Path) -> Path:
        run = run_files(run_dir)
        return run.logs_dir if not self.said_resume else run.resumed_logs_dir(self.resumed_at)


def progress_step(csv_path: Path, since: float) -> int:
    """Largest ``time/total_timesteps`` in an SB3 ``progress.csv`` written after ``since``."""
    try:
        if csv_path.stat().st_mtime < since:
            return -1
        with open(csv_path, newline="") as fh:
            steps = [int(float(row["time/total_timesteps"])) for row in csv.DictReader(fh)
                     if row.get("time/total_timesteps")]
    except (OSError, ValueError, KeyError, csv.Error):
        return -1
    return max(steps, default=-1)


def kill_process(proc: subprocess.Popen) -> None:
    """SIGKILL a process we started (and its own process group: env workers, if any)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_process(proc)


# --------------------------------------------------------------------------- the test


@dataclass
class Settings:
    task: str = "pendulum"
    kills: int = 20
    seed: int = 0
    steps: int = 24576
    budget: int = 400
    initial_labels: int = 8
    viewers: int = 2
    checkpoint_every: str = "2s"
    #: kill targets in order (default: random); e.g. ("trainer", "viewer", "both")
    plan: tuple[str, ...] | None = None
    #: seconds after the kill's step is reached, at most (random below it)
    jitter: float = 1.5
    timeout: float = 900.0
    extra_sets: tuple[str, ...] = ()


@dataclass
class Result:
    settings: dict[str, Any]
    kills: dict[str, int] = field(default_factory=lambda: {t: 0 for t in TARGETS})
    kill_log: list[dict[str, Any]] = field(default_factory=list)
    committed: int = 0
    found: int = 0
    missing: list[str] = field(default_factory=list)
    wrong_choice: list[str] = field(default_factory=list)
    labels_in_store: int = 0
    torn_log_lines: int = 0
    integrity_ok: int = 0
    integrity_checks: int = 0
    integrity_failures: list[str] = field(default_factory=list)
    resume_attempts: int = 0
    resumes_ok: int = 0
    resumes_from_checkpoint: int = 0
    restarts_before_checkpoint: int = 0
    resume_failures: list[str] = field(default_factory=list)
    torn_checkpoint_files: int = 0
    finished: bool = False
    summary: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return (self.finished and not self.missing and not self.wrong_choice and self.committed > 0
                and self.found == self.committed and self.integrity_ok == self.integrity_checks > 0
                and self.resumes_ok == self.resume_attempts and not self.resume_failures and not self.errors
                and self.summary.get("labels_used", 0) > 0)

    def figure(self) -> str:
        k = self.kills
        s = self.settings
        lines = [
            f"kill test: {s['task']}, seed {s['seed']}, {sum(k.values())} kills, {s['viewers']} labellers, "
            f"checkpoint every {s['checkpoint_every']}",
            "",
            f"  kills                 trainer {k['trainer']} / viewer {k['viewer']} / both {k['both']}",
            f"  labels committed      {self.committed}   (logged and fsynced by the labellers after each commit)",
            f"  labels found          {self.found}   missing {len(self.missing)}, wrong answer {len(self.wrong_choice)}",
            f"  labels in the store   {self.labels_in_store}",
            f"  integrity checks      ok {self.integrity_ok} / {self.integrity_checks}",
            f"  trainer resumes       {self.resumes_ok} / {self.resume_attempts} succeeded "
            f"({self.resumes_from_checkpoint} from a checkpoint, {self.restarts_before_checkpoint} started over)",
            f"  torn checkpoints      {self.torn_checkpoint_files} temp files left by killed trainers (removed on resume)",
            f"  run finished          {'yes' if self.finished else 'NO'}: env_steps {self.summary.get('env_steps')}, "
            f"labels_used {self.summary.get('labels_used')}",
            f"  wall time             {self.wall_seconds:.0f} s",
        ]
        for title, items in (("missing labels", self.missing), ("wrong answers", self.wrong_choice),
                             ("integrity failures", self.integrity_failures),
                             ("resume failures", self.resume_failures), ("errors", self.errors)):
            if items:
                lines.append(f"  {title}: " + "; ".join(items[:10]) + (" ..." if len(items) > 10 else ""))
        lines.append(f"  RESULT                {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


def trainer_command(settings: Settings, run_dir: Path, clips_dir: Path) -> list[str]:
    console = Path(sys.executable).parent / "prefrl"
    prefix = [str(console)] if console.is_file() else [sys.executable, "-m", "prefrl.cli"]
    sets = [
        "ppo.n_steps=256", "ppo.batch_size=64", "ppo.n_epochs=2", "ppo.net_arch=[32,32]",
        f"labels.initial_labels={settings.initial_labels}", "labels.update_every_steps=256",
        f"labels.rate_constant={max(256, settings.steps // 8)}", "labels.pretrain_epochs=3",
        "reward.epochs_per_update=2", "reward.hidden_sizes=[32,32]",
        f"eval.every_steps={max(256, settings.steps // 4)}", "eval.episodes=1",
        *settings.extra_sets,
    ]
    return [*prefix, "train", settings.task, "--teacher", "human", "--run-dir", str(run_dir),
            "--clips-dir", str(clips_dir), "--seed", str(settings.seed), "--steps", str(settings.steps),
            "--labels", str(settings.budget), "--no-progress", "--checkpoint-every", settings.checkpoint_every,
            *[arg for item in sets for arg in ("--set", item)]]


class KillTest:
    """One kill test in ``out`` (see the module docstring)."""

    def __init__(self, settings: Settings, out: Path, log=print) -> None:
        self.s = settings
        self.out = out
        self.run_dir = out / "run"
        self.clips_dir = out / "clips"
        self.logs = out / "logs"
        self.stop_file = out / "stop-labellers"
        self.say = log
        self.rng = np.random.default_rng(settings.seed)
        self.result = Result(settings={k: v for k, v in asdict(settings).items() if k != "extra_sets"})
        self.env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                    "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.trainer: TrainerSession | None = None
        self.sessions: list[TrainerSession] = []
        self.viewers: list[subprocess.Popen | None] = [None] * settings.viewers
        self.viewer_starts = [0] * settings.viewers
        self.command = trainer_command(settings, self.run_dir, self.clips_dir)

    # ------------------------------------------------------------- processes

    def start_trainer(self) -> None:
        index = len(self.sessions)
        expected = checkpoint_step(self.run_dir) if self.run_dir.exists() else None
        output = self.logs / f"trainer_{index:02d}.log"
        with open(output, "w") as fh:
            proc = subprocess.Popen(self.command, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
        self.trainer = TrainerSession(proc, output, time.time(), expected)
        self.sessions.append(self.trainer)
        if index:
            self.result.resume_attempts += 1

    def start_viewer(self, i: int) -> None:
        n = self.viewer_starts[i]
        self.viewer_starts[i] += 1
        name = f"labeller{i}"
        output = self.logs / f"{name}_{n:02d}.log"
        with open(output, "w") as fh:
            self.viewers[i] = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "labeller", str(self.clips_dir),
                 "--log", str(self.committed_log(i)), "--name", name, "--stop-file", str(self.stop_file),
                 "--seed", str(self.s.seed * 1000 + i * 100 + n)],
                cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)

    def committed_log(self, i: int) -> Path:
        return self.out / f"committed_labeller{i}.jsonl"

    # ------------------------------------------------------------- trainer progress

    def trainer_step(self) -> int:
        """The running session's env step as its SB3 log shows it (-1: not learning yet)."""
        t = self.trainer
        assert t is not None
        t.poll_resume(learning_started=False)
        if t.said_resume is None and t.expected_resume is not None:
            return -1  # not restored yet
        step = progress_step(t.log_dir(self.run_dir) / run_files(self.run_dir).progress_path.name, t.started)
        if step > t.last_step:
            t.last_step = step
        return step

    def judge_session(self, t: TrainerSession, killed: bool) -> None:
        """A restarted session succeeded if it resumed where it should and then advanced."""
        index = self.sessions.index(t)
        t.poll_resume(learning_started=True)
        if t.expected_resume is None and t.said_resume:
            problem = f"said it resumed at step {t.resumed_at} with no checkpoint on disk"
        elif t.expected_resume is not None and not t.said_resume:
            problem = f"did not resume from the checkpoint of step {t.expected_resume}"
        elif t.expected_resume is not None and t.resumed_at != t.expected_resume:
            problem = f"resumed at step {t.resumed_at}, the checkpoint on disk was of step {t.expected_resume}"
        else:
            problem = ""
            start = t.resumed_at if t.said_resume else 0
            finished = not killed and t.proc.returncode == 0 and run_files(self.run_dir).is_finished
            if not killed and not finished:
                problem = f"exited with status {t.proc.returncode} without finishing the run"
            elif not finished and t.last_step <= start:
                problem = f"did not advance beyond step {start} (last step seen {t.last_step})"
        if index == 0:
            if problem:
                self.result.errors.append(f"first trainer session: {problem}")
            return
        if problem:
            tail = " | ".join(t.read_output().strip().splitlines()[-3:])
            self.result.resume_failures.append(f"session {index}: {problem} [{tail}]")
            t.outcome = "failed"
            return
        t.outcome = "advanced"
        self.result.resumes_ok += 1
        if t.said_resume:
            self.result.resumes_from_checkpoint += 1
        else:
            self.result.restarts_before_checkpoint += 1

    # ------------------------------------------------------------- checks

    def check_store(self, when: str, nothing_writes: bool) -> None:
        # The logs first: a label logged before the store is read must be in it.
        committed, torn = read_committed([self.committed_log(i) for i in range(self.s.viewers)])
        self.result.torn_log_lines = torn
        db = self.clips_dir / "labels.sqlite"
        snapshots = [("live", store_snapshot)]
        if nothing_writes:
            snapshots.append(("copy", lambda path: copy_snapshot(path, self.out / "scratch")))
        for kind, take in snapshots:
            self.result.integrity_checks += 1
            try:
                integrity, labels = take(db)
            except sqlite3.Error as exc:
                integrity, labels = f"cannot read the store: {exc}", {}
            if integrity == "ok":
                self.result.integrity_ok += 1
            else:
                self.result.integrity_failures.append(f"{when} ({kind}): {integrity}")
            missing = [p for p in committed if p not in labels]
            wrong = [p for p in committed if p in labels and labels[p] != committed[p]]
            self.result.committed, self.result.found = len(committed), len(committed) - len(missing) - len(wrong)
            self.result.labels_in_store = len(labels)
            for p in missing:
                if f"{p} ({when})" not in self.result.missing:
                    self.result.missing.append(f"{p} ({when})")
            for p in wrong:
                self.result.wrong_choice.append(f"{p}: logged {committed[p]}, stored {labels[p]} ({when})")

    # ------------------------------------------------------------- the run

    def run(self) -> Result:
        started = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.stop_file.unlink(missing_ok=True)
        s = self.s
        plan = list(s.plan) if s.plan else [str(self.rng.choice(TARGETS)) for _ in range(s.kills)]
        # Random env steps of the run, in order; each kill comes a random moment after its step.
        # Not too close to the end: a short run on a quiet machine finishes within a jitter.
        fractions = np.sort(self.rng.uniform(0.02, 0.75, size=len(plan)))
        kill_steps = [int(f * s.steps) for f in fractions]
        jitters = self.rng.uniform(0.0, s.jitter, size=len(plan))
        which_viewer = self.rng.integers(s.viewers, size=len(plan))
        self.say(f"kill test in {self.out}: {len(plan)} kills at env steps {kill_steps}")
        self.say("trainer: " + " ".join(self.command))
        deadline = started + s.timeout
        try:
            self.start_trainer()
            for i in range(s.viewers):
                self.start_viewer(i)
            for number, (target, at_step, jitter, v) in enumerate(zip(plan, kill_steps, jitters, which_viewer), 1):
                while True:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"kill {number}: the run did not reach step {at_step} in time")
                    self.restart_dead_viewers()
                    assert self.trainer is not None
                    if self.trainer.proc.poll() is not None:
                        break  # finished (or failed) before this kill: judged below
                    if self.trainer_step() >= at_step:
                        break
                    time.sleep(0.05)
                if self.trainer.proc.poll() is not None:
                    if self.trainer.proc.returncode == 0:
                        self.result.errors.append(f"the run finished before kill {number} of {len(plan)}; "
                                                  "give more --steps")
                    break  # finish() judges the session
                self.wait_jitter(float(jitter))
                if self.trainer.proc.poll() is not None:
                    if self.trainer.proc.returncode == 0:
                        self.result.errors.append(f"the run finished before kill {number} of {len(plan)}; "
                                                  "give more --steps")
                    break  # finish() judges the session
                self.kill(number, target, int(v))
            self.finish()
        except (TimeoutError, OSError) as exc:
            self.result.errors.append(str(exc))
        finally:
            self.stop_file.touch()
            for proc in [self.trainer.proc if self.trainer else None, *self.viewers]:
                if proc is not None and proc.poll() is None:
                    kill_process(proc)
            self.result.wall_seconds = time.monotonic() - started
            (self.out / "kill_test.json").write_text(json.dumps({**asdict(self.result), "passed": self.result.passed},
                                                                indent=2))
        return self.result

    def wait_jitter(self, seconds: float) -> None:
        """Wait up to ``seconds`` (a random moment after the kill's step), but kill at once
        when the run nears its end: a killed finished run would have nothing to resume."""
        end = time.monotonic() + seconds
        assert self.trainer is not None
        while (time.monotonic() < end and self.trainer.proc.poll() is None
               and self.trainer_step() < int(0.85 * self.s.steps)):
            time.sleep(0.02)

    def restart_dead_viewers(self) -> None:
        for i, proc in enumerate(self.viewers):
            if proc is not None and proc.poll() is not None:
                self.result.errors.append(f"labeller{i} exited by itself (status {proc.returncode})")
                self.start_viewer(i)

    def kill(self, number: int, target: str, viewer: int) -> None:
        t = self.trainer
        assert t is not None
        self.trainer_step()
        step = t.last_step
        killed_trainer = target in ("trainer", "both")
        if target == "both":
            kill_process(self.viewers[viewer])  # type: ignore[arg-type]
            kill_process(t.proc)
        elif target == "trainer":
            kill_process(t.proc)
        else:
            kill_process(self.viewers[viewer])  # type: ignore[arg-type]
        self.result.kills[target] += 1
        # A checkpoint temp file left by a killed trainer (a live one may be writing one).
        torn = torn_checkpoints(self.run_dir) if killed_trainer else 0
        self.result.torn_checkpoint_files += torn
        entry = {"kill": number, "target": target, "viewer": f"labeller{viewer}" if target != "trainer" else None,
                 "trainer_step": step, "torn_checkpoint": torn}
        if killed_trainer:
            self.judge_session(t, killed=True)
        # Nothing writes when the killed viewer was the only one, or the others are killed too.
        others_alive = any(p is not None and p.poll() is None for p in self.viewers)
        self.check_store(f"after kill {number} ({target})", nothing_writes=not others_alive and killed_trainer)
        entry.update(committed=self.result.committed, found=self.result.found,
                     checkpoint=checkpoint_step(self.run_dir))
        self.result.kill_log.append(entry)
        self.say(f"kill {number:2d}: {target:7s} at step {step:6d}  committed {self.result.committed:4d}  "
                 f"found {self.result.found:4d}  checkpoint {entry['checkpoint']}"
                 + (f"  torn checkpoint file {torn}" if torn else ""))
        if killed_trainer:
            self.start_trainer()
        if target != "trainer":
            self.start_viewer(viewer)

    def finish(self) -> None:
        t = self.trainer
        assert t is not None
        remaining = max(60.0, self.s.timeout - self.result.wall_seconds)
        end = time.monotonic() + remaining
        while t.proc.poll() is None and time.monotonic() < end:
            self.restart_dead_viewers()
            self.trainer_step()
            time.sleep(0.1)
        if t.proc.poll() is None:
            self.result.errors.append("the run did not finish in time")
            kill_process(t.proc)
        self.trainer_step()
        self.judge_session(t, killed=False)
        if t.proc.returncode != 0:
            tail = " | ".join(t.read_output().strip().splitlines()[-3:])
            self.result.errors.append(f"the last trainer session exited with status {t.proc.returncode}: {tail}")
        self.stop_file.touch()
        for proc in self.viewers:
            if proc is not None:
                stop_process(proc)
        self.check_store("at the end", nothing_writes=True)
        summary_path = run_files(self.run_dir).summary_path
        if summary_path.is_file():
            self.result.summary = json.loads(summary_path.read_text())
            self.result.finished = True
        else:
            self.result.errors.append(f"no {summary_path.name} at the end")


def run_kill_test(settings: Settings, out: Path | None = None, log=print) -> Result:
    """Run one kill test; ``out`` defaults to a new temporary folder."""
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="prefrl-kill-test-"))
    return KillTest(settings, out, log=log).run()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["labeller"]:
        return labeller_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the run, logs and kill_test.json "
                        "(default: a new temporary folder)")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", default="pendulum", help="a preset whose clips render cheaply (pendulum, cartpole)")
    parser.add_argument("--steps", type=int, default=None, help="env steps of the run (default 24576, --quick 4096)")
    parser.add_argument("--viewers", type=int, default=2)
    parser.add_argument("--checkpoint-every", default="2s")
    parser.add_argument("--plan", default=None, help="kill targets in order, e.g. trainer,viewer,both (default random)")
    parser.add_argument("--quick", action="store_true", help="3 kills (trainer, viewer, both) of a short run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more preset overrides")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        # A finished run there would make every restart refuse; never mix two tests.
        parser.error(f"--out {args.out} is not empty; give a new or empty folder (or leave --out out for a temporary one)")
    plan = tuple(args.plan.split(",")) if args.plan else None
    if plan and any(p not in TARGETS for p in plan):
        parser.error(f"--plan takes {', '.join(TARGETS)}")
    if args.quick:
        settings = Settings(task=args.task, kills=3, seed=args.seed, steps=args.steps or 4096, budget=80,
                            viewers=args.viewers, checkpoint_every=args.checkpoint_every,
                            plan=plan or ("trainer", "viewer", "both"), extra_sets=tuple(args.set))
    else:
        settings = Settings(task=args.task, kills=len(plan) if plan else args.kills, seed=args.seed,
                            steps=args.steps or 24576, viewers=args.viewers, checkpoint_every=args.checkpoint_every,
                            plan=plan, extra_sets=tuple(args.set))
    result = run_kill_test(settings, args.out)
    print()
    print(result.figure())
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
