"""Runs as Ray tasks, on this machine or a cluster: the only module of prefrl that
imports Ray (import-linter holds the rest of the package to that).

Each run is one Ray task that asks for its share of CPUs and pins torch, OpenMP, MKL and
OpenBLAS to that many threads. A run that fails (an exception, a killed worker, a lost
node) is reported with its error and the others go on. Bookkeeping lives in
``<out>/.suite/`` (:func:`prefrl.experiments.sweep.state_files`): ``<name>.json`` (worker
pid and host, written when the run starts) and ``<name>.log`` (the run's stdout and
stderr).

On a cluster, the output folder must be on a file system every node shares at the same
path, and prefrl must be installed on every node.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import traceback
from typing import Any

from prefrl.experiments.plan import prepare_run_dir
from prefrl.experiments.runner import RunEnded
from prefrl.experiments.sweep import RunSpec, state_files
from prefrl.util.atomic import atomic_write_text
from prefrl.util.errors import PrefrlError

#: Thread-count variables of the numeric libraries a run may load.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


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


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}".strip()


def execute_run(spec: RunSpec, threads: int) -> dict[str, Any]:
    """Run one sweep entry to completion; what a Ray worker executes.

    Never raises for a failing run: the result says ``ok`` or carries the error, so the
    driver can report it. (A killed worker is noticed by Ray instead.)

    :param spec: the run (its ``out`` absolute, shared by every node)
    :param threads: CPU threads this run may use
    :return: ``{"name", "ok", "summary" | "error", "host", "pid", "seconds"}``
    """
    started = time.time()
    info: dict[str, Any] = {"name": spec.name, "host": socket.gethostname(), "pid": os.getpid()}
    try:
        preset = spec.preset
        if preset.ppo.torch_threads == 0 or preset.ppo.torch_threads > threads:
            # train() applies ppo.torch_threads itself: keep it within this run's share.
            from prefrl.config.loading import apply_overrides

            preset = apply_overrides(preset, [f"ppo.torch_threads={threads}"])
        # Resuming is decided here, with the thread count the run gets now.
        resuming = prepare_run_dir(spec, preset)
        info["resumed"] = resuming
        status_path, log_path = state_files(spec)
        status_path.unlink(missing_ok=True)
        if not resuming:
            log_path.unlink(missing_ok=True)  # a resumed run appends to the log of its first attempt
        atomic_write_text(status_path, json.dumps({**info, "started": started, "threads": threads}) + "\n")
        pin_threads(threads)
        from prefrl.rundir import RunPaths
        from prefrl.training.run import train

        run_dir = spec.run_dir
        with open(log_path, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            summary = train(preset, arm=spec.arm, seed=spec.seed, paths=RunPaths(run_dir, run_dir / "clips"),
                            progress=False)
        return {**info, "ok": True, "summary": summary, "seconds": time.time() - started}
    except Exception as exc:  # noqa: BLE001 - report every failure, the sweep goes on
        return {**info, "ok": False, "error": _short_error(exc), "traceback": traceback.format_exc(),
                "seconds": time.time() - started}


# --------------------------------------------------------------------------- the driver's side


def connect_ray(address: str | None) -> bool:
    """Start Ray on this machine (no address) or join a cluster.

    :return: whether this call started the connection (and so should shut it down)
    :raises PrefrlError: the cluster cannot be reached
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


def shutdown_ray() -> None:
    import ray

    ray.shutdown()


def cluster_cpus() -> tuple[int, int]:
    """``(total CPUs, CPUs of the largest node)`` that Ray sees."""
    import ray

    total = int(ray.cluster_resources().get("CPU", 1))
    largest = max((int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=total)
    return max(1, total), max(1, largest)


class RayRunner:
    """Runs specs as Ray tasks (:class:`prefrl.experiments.runner.Runner`); Ray must be
    connected (:func:`connect_ray`).

    :param threads: CPUs (Ray ``num_cpus``) and threads of each run
    :param retries: Ray retries of a run whose worker died (a raised error is not retried)
    """

    def __init__(self, threads: int, retries: int = 0) -> None:
        import ray

        env_vars = {var: str(threads) for var in THREAD_VARIABLES}
        for var in ("MUJOCO_GL", "PYOPENGL_PLATFORM"):
            if var in os.environ:
                env_vars[var] = os.environ[var]
        # The thread variables go in the runtime environment so the worker process starts
        # with them: OpenBLAS and OpenMP read them once, when they are loaded.
        self._remote = ray.remote(execute_run).options(
            num_cpus=threads, max_retries=retries, retry_exceptions=False, runtime_env={"env_vars": env_vars},
        )
        self.threads = threads
        self._in_flight: dict[Any, tuple[RunSpec, float]] = {}

    @property
    def active(self) -> list[RunSpec]:
        return [spec for spec, _ in self._in_flight.values()]

    def start(self, spec: RunSpec) -> None:
        # Clear old bookkeeping now, so a stale status file never shows the run as
        # running before its worker has started.
        for path in state_files(spec):
            path.unlink(missing_ok=True)
        self._in_flight[self._remote.remote(spec, self.threads)] = (spec, time.time())

    def poll(self, timeout: float) -> list[RunEnded]:
        import ray

        ready, _ = ray.wait(list(self._in_flight), num_returns=1, timeout=timeout)
        return [self._ended(ref) for ref in ready]

    def _ended(self, ref: Any) -> RunEnded:
        """How a Ray task ended: its result, a raised error or a dead worker."""
        import ray

        spec, launched = self._in_flight.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:
            # The worker died (killed, out of memory, node lost): no result came back.
            text = str(exc).strip().splitlines()
            return RunEnded(spec, "failed", time.time() - launched,
                            error=f"{type(exc).__name__}: {text[0] if text else ''}", details=str(exc))
        seconds = result.get("seconds", time.time() - launched)
        if result["ok"]:
            return RunEnded(spec, "finished", seconds, host=result.get("host", ""))
        return RunEnded(spec, "failed", seconds, error=result["error"], details=result.get("traceback", ""),
                        host=result.get("host", ""))

    def stop_all(self) -> None:
        import ray

        for ref in self._in_flight:
            ray.cancel(ref, force=True)
        self._in_flight.clear()
