"""prefrl.util.threads: background threads run at a lower priority than PPO's main thread."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import torch

from prefrl.util.errors import PrefrlError
from prefrl.util.threads import BACKGROUND_NICE, NICE_VARIABLE, background_nice, setup_background_thread


def nice_of_a_worker() -> int:
    """The nice value of a fresh thread after :func:`setup_background_thread`."""
    seen: list[int] = []

    def worker() -> None:
        setup_background_thread(1)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    return seen[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are a Linux feature")
def test_background_thread_is_lowered_and_main_thread_untouched():
    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    main_threads = torch.get_num_threads()
    assert nice_of_a_worker() == min(19, main_nice + BACKGROUND_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice
    assert torch.get_num_threads() == main_threads


def test_main_thread_is_never_lowered():
    before = os.getpriority(os.PRIO_PROCESS, 0)
    setup_background_thread(torch.get_num_threads())
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are a Linux feature")
def test_the_environment_sets_the_increment_and_zero_turns_it_off(monkeypatch):
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    monkeypatch.setenv(NICE_VARIABLE, "0")
    assert nice_of_a_worker() == base
    monkeypatch.setenv(NICE_VARIABLE, "3")
    assert nice_of_a_worker() == min(19, base + 3)


@pytest.mark.parametrize("value, message", [("ten", "is not a whole number"), ("25", "is outside 0-19")])
def test_a_bad_increment_is_one_clear_error(monkeypatch, value, message):
    monkeypatch.setenv(NICE_VARIABLE, value)
    with pytest.raises(PrefrlError, match=f"{NICE_VARIABLE}=.*{message}; give 0-19 or unset it"):
        background_nice()
