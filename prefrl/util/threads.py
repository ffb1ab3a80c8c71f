"""Setup of the pipeline's background threads (reward fitting, reward prefetch).

PPO runs in the main thread. The background threads are the price of the learned
reward; when they and PPO want the same core, PPO should win, so that the pipeline's
throughput stays close to plain PPO's and a refit finishes a little later instead.
"""

from __future__ import annotations

import os
import sys
import threading

import torch

from prefrl.util.errors import PrefrlError

#: nice increment of a background thread (Linux: per thread). 10 gives the thread a
#: scheduler weight of ~1/10 of PPO's while both are runnable on one core; on a free
#: core it runs at full speed. The environment variable PREFRL_BACKGROUND_NICE changes
#: it (0: background threads at PPO's priority), e.g. to measure what it is worth.
BACKGROUND_NICE = 10
NICE_VARIABLE = "PREFRL_BACKGROUND_NICE"


def background_nice() -> int:
    """The nice increment in force: :data:`BACKGROUND_NICE` unless the environment sets one."""
    value = os.environ.get(NICE_VARIABLE, "").strip()
    if not value:
        return BACKGROUND_NICE
    try:
        nice = int(value)
    except ValueError:
        raise PrefrlError(f"{NICE_VARIABLE}={value!r} is not a whole number; give 0-19 or unset it") from None
    if not 0 <= nice <= 19:
        raise PrefrlError(f"{NICE_VARIABLE}={nice} is outside 0-19; give 0-19 or unset it")
    return nice


def setup_background_thread(torch_threads: int = 1) -> None:
    """Call first in a background thread: its torch thread count and a lower priority.

    :param torch_threads: torch CPU threads of this thread's work (PPO's own count is
        untouched: torch keeps the count per thread)
    """
    torch.set_num_threads(max(1, int(torch_threads)))
    nice = background_nice()
    if nice and sys.platform.startswith("linux") and threading.current_thread() is not threading.main_thread():
        try:
            # On Linux a thread id names one thread: only this thread is lowered.
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        except OSError:
            pass  # raising a nice value is always allowed; a failure only costs speed
