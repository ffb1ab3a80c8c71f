"""Runs on this machine: each run is ``prefrl.training.run.train`` in a subprocess of its
own (a crash of one run doesn't end the sweep), at most ``jobs`` at a time.

Files, in ``<out>/logs/`` and named by the run's folder (``<rel_dir>`` with ``/`` as
``__``): ``<stem>.spec.json`` (what the subprocess runs), ``<stem>.log`` (its stdout and
stderr) and ``<stem>.load.json`` (the machine and its load while the run ran). A
pid-file lock (``<out>/.lock``) keeps two sweeps out of one output folder.

The subprocess is ``python -m prefrl.experiments.local_runner SPEC.json``, started in
this process's working directory (the spec's paths are relative to it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import IO, Any

from prefrl.analysis.quality_records import host_record
from prefrl.experiments.plan import is_finished
from prefrl.experiments.runner import RunEnded, run_outcome
from prefrl.experiments.sweep import RunSpec
from prefrl.util.errors import PrefrlError

#: Shortest sleep between two checks of the subprocesses while waiting for one to end.
POLL_SECONDS = 0.5


def run_stem(spec: RunSpec) -> str:
    """The name of a run's files in ``<out>/logs``, e.g. ``hopper__300000steps__true__seed0``."""
    return "__".join(spec.rel_dir.parts)


class LocalRunner:
    """Runs specs in subprocesses on this machine (:class:`prefrl.experiments.runner.Runner`).

    :param log_dir: where each run's spec, log and load record go
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._running: dict[RunSpec, tuple[Any, IO[str], float]] = {}
        self._load: dict[RunSpec, list[float]] = defaultdict(list)

    @property
    def active(self) -> list[RunSpec]:
        return list(self._running)

    def log_path(self, spec: RunSpec) -> Path:
        return self.log_dir / f"{run_stem(spec)}.log"

    def spawn(self, spec_path: Path, log: IO[str]) -> Any:
        """Start the subprocess of one run (tests replace it with a fake process)."""
        return subprocess.Popen([sys.executable, "-m", "prefrl.experiments.local_runner", str(spec_path)],
                                stdout=log, stderr=subprocess.STDOUT)

    def start(self, spec: RunSpec) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        spec_path = self.log_dir / f"{run_stem(spec)}.spec.json"
        spec_path.write_text(json.dumps(spec.to_json(), indent=2) + "\n")
        log = open(self.log_path(spec), "w")
        self._running[spec] = (self.spawn(spec_path, log), log, time.time())

    def _check(self) -> list[RunEnded]:
        ended = []
        load1 = os.getloadavg()[0]
        for spec, (proc, log, started) in list(self._running.items()):
            self._load[spec].append(load1)
            rc = proc.poll()
            if rc is None:
                continue
            log.close()
            del self._running[spec]
            outcome = run_outcome(rc, is_finished(spec))
            ended.append(RunEnded(spec, outcome, time.time() - started, exit_code=rc,
                                  error="" if outcome != "failed" else f"exit {rc}"))
            load_path = self.log_dir / f"{run_stem(spec)}.load.json"
            load_path.write_text(json.dumps(host_record(spec.run_dir, self._load.pop(spec))) + "\n")
        return ended

    def poll(self, timeout: float) -> list[RunEnded]:
        deadline = time.time() + timeout
        while True:
            ended = self._check()
            remaining = deadline - time.time()
            if ended or remaining <= 0 or not self._running:
                return ended
            time.sleep(min(POLL_SECONDS, remaining))

    def stop_all(self) -> None:
        for proc, _, _ in self._running.values():
            if proc.poll() is None:
                proc.terminate()
        for proc, log, _ in self._running.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        self._running.clear()


def acquire_lock(out: Path) -> Path:
    """Claim ``out`` for this process: ``<out>/.lock`` holds its pid (a lock whose process
    is gone is taken over).

    :raises PrefrlError: another live process holds the lock
    """
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


# --------------------------------------------------------------------------- the subprocess


def _watch_parent(parent: int) -> None:
    """Exit when the sweep process has gone (killed with SIGKILL, say), so an orphaned run
    never writes into a folder that the restarted sweep removes."""
    while True:
        time.sleep(2.0)
        if os.getppid() != parent:
            os._exit(3)


def run_one(spec_path: Path) -> int:
    """Subprocess side: one ``train`` call from a spec file.

    :return: the exit status (0 finished; a signal's status when stopped after writing
        its checkpoint)
    """
    from prefrl.rundir import RunPaths
    from prefrl.training.checkpointing import RunInterrupted
    from prefrl.training.run import train

    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    spec = RunSpec.from_json(json.loads(spec_path.read_text()))
    try:
        summary = train(spec.preset, arm=spec.arm, seed=spec.seed,
                        paths=RunPaths(spec.run_dir, spec.run_dir / "clips"), progress=False)
    except RunInterrupted as exc:  # stopped by a signal, its checkpoint written: not a failure
        print(f"{spec.name}: {exc}", file=sys.stderr, flush=True)
        return exc.exit_status
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_one(Path(sys.argv[1])))
