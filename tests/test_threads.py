"""prefrl.threads: background threads run at a lower priority than PPO's main thread."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import torch

from prefrl.threads import BACKGROUND_NICE, setup_background_thread


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are a Linux feature")
def test_background_thread_is_lowered_and_main_thread_untouched():
    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    main_threads = torch.get_num_threads()
    seen: dict[str, int] = {}

    def worker() -> None:
        setup_background_thread(1)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["nice"] == min(19, main_nice + BACKGROUND_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice
    assert torch.get_num_threads() == main_threads


def test_main_thread_is_never_lowered():
    before = os.getpriority(os.PRIO_PROCESS, 0)
    setup_background_thread(torch.get_num_threads())
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
