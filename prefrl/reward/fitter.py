"""Fitting the reward ensemble: one fit (:func:`fit_reward_model`), and the
:class:`RewardFitter` that runs fits inline or in a background thread beside PPO.

``reward.fit_mode`` (CLI ``--fit``):

- ``background`` (default): the ensemble is refitted in a thread while PPO trains on the
  rollout just collected and collects the next one; the first reward the agent needs
  after that (the next relabelling, or the next step with ``relabel="step"``) waits for
  the fit. The agent gets exactly the rewards, labels and weights of ``inline`` (which
  fits at the update point while the agent waits), sooner.
- ``lagged``: the agent's rewards come from a frozen copy of the previous weights and the
  fit is joined only at the next update point, so a fit may take a whole update interval
  without stalling the agent; deterministic too, but the reward is one update interval
  staler than inline (a demo run learned less well: 0.73x).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from prefrl.config.settings import FIT_MODES
from prefrl.data.segments import Segment, SegmentBuffer
from prefrl.reward.model import RewardModel
from prefrl.reward.vec_env import RewardFn
from prefrl.util.errors import PrefrlError
from prefrl.util.threads import setup_background_thread

#: Segments (the most recent) on which the ensemble's output normalisation is refitted.
NORMALIZATION_SEGMENTS = 256


def fit_reward_model(
    reward_model: RewardModel, segments: SegmentBuffer | Sequence[Segment], epochs: int, max_pairs: int = 0
) -> dict[str, float]:
    """Train the ensemble, renormalise it on recent segments, and measure how well its
    segment returns follow the true ones (for the log only; never used for training).

    :param segments: the segment buffer, or the recent segments themselves (a snapshot)
    :param max_pairs: cap on the pairs per member of this fit (0 = none, see
        :meth:`RewardModel.train`)
    """
    stats = dict(reward_model.train(epochs, max_pairs))
    if isinstance(segments, SegmentBuffer):
        segments = list(segments.segments)
    recent = list(segments)[-NORMALIZATION_SEGMENTS:]
    if recent:
        # One pass over the recent steps: normalisation statistics and segment returns.
        predicted = reward_model.normalize_on_segments(recent).mean(axis=0)
        if len(recent) >= 3:
            true = np.array([s.true_return for s in recent])
            if np.std(predicted) > 0 and np.std(true) > 0:
                stats["segment_return_corr"] = float(np.corrcoef(predicted, true)[0, 1])
    return {k: float(v) for k, v in stats.items()}


class RewardFitter:
    """Runs :func:`fit_reward_model` inline or in a background thread.

    ``mode``:

    - ``inline``: :meth:`start` fits at once; the agent waits.
    - ``background``: :meth:`start` fits in a thread; :meth:`join` (what the reward
      function calls before every prediction, from any thread) waits for it, so every
      reward after :meth:`start` comes from the fitted weights, as inline.
    - ``lagged``: :meth:`start` freezes the model's predictions (the agent's rewards keep
      coming from the weights of this moment) and fits in a thread; only :meth:`wait`
      (at the next update point) joins it and thaws the predictions.

    The fitting thread has its own torch thread count. The segments the output
    normalisation is refitted on are taken when the fit starts, so a fit's result does
    not depend on how far the rollout collection beside it has got.

    :param reward_model: the ensemble
    :param buffer: the segment buffer
    :param mode: ``inline``, ``background`` or ``lagged``
    :param threads: torch threads of the fitting thread
    """

    def __init__(self, reward_model: RewardModel, buffer: SegmentBuffer, mode: str = "inline", threads: int = 1) -> None:
        if mode not in FIT_MODES:
            raise PrefrlError(f"unknown fit mode '{mode}'; use one of {', '.join(FIT_MODES)}")
        self.reward_model = reward_model
        self.buffer = buffer
        self.mode = mode
        self.threads = max(1, int(threads))
        self._thread: threading.Thread | None = None
        # A background fit was started and wait() has not collected it yet (it may have
        # finished, or have been finished before a checkpoint and restored from it).
        self._unwaited = False
        self._result: dict[str, float] | None = None
        self._error: BaseException | None = None
        #: fits started
        self.fits = 0
        #: seconds the fits took (inline: the agent waited all of it)
        self.fit_seconds = 0.0
        #: seconds the main thread waited for a background fit to finish
        self.wait_seconds = 0.0

    @property
    def background(self) -> bool:
        return self.mode != "inline"

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, epochs: int, max_pairs: int = 0) -> None:
        """Fit ``epochs`` epochs (at most ``max_pairs`` pairs per member, 0 = no cap)
        now (inline) or in a thread."""
        if self._thread is not None or self._unwaited:
            raise RuntimeError("RewardFitter.start: the previous fit was not waited for")
        recent = list(self.buffer.segments)[-NORMALIZATION_SEGMENTS:]
        self.fits += 1
        self._result = self._error = None
        if not self.background:
            self._fit(epochs, max_pairs, recent, set_threads=False)
            return
        if self.mode == "lagged":
            self.reward_model.freeze_predictions()
        self._unwaited = True
        self._thread = threading.Thread(
            target=self._fit, args=(epochs, max_pairs, recent, True), name="prefrl-reward-fit", daemon=True
        )
        self._thread.start()

    def _fit(self, epochs: int, max_pairs: int, recent: list[Segment], set_threads: bool) -> None:
        start = time.perf_counter()
        try:
            if set_threads:
                setup_background_thread(self.threads)
            self._result = fit_reward_model(self.reward_model, recent, epochs, max_pairs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread by wait()
            self._error = exc
        finally:
            self.fit_seconds += time.perf_counter() - start

    def join(self) -> None:
        """Block until a running fit has finished (any thread may call it)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        start = time.perf_counter()
        thread.join()
        if threading.current_thread() is threading.main_thread():
            self.wait_seconds += time.perf_counter() - start

    def guard(self, predict: RewardFn) -> RewardFn:
        """``predict`` behind :meth:`join` (background mode), else ``predict`` itself."""
        if self.mode != "background":
            return predict

        def guarded(observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
            self.join()
            return predict(observations, actions)

        return guarded

    def wait(self) -> dict[str, float] | None:
        """Finish the fit (main thread) and return its statistics, or None if no fit
        was started since the last call.

        :raises: whatever the fit raised
        """
        if self._thread is not None or self._unwaited:
            self.join()
            self._thread = None
            self._unwaited = False
            if self.mode == "lagged":
                self.reward_model.thaw_predictions()
        result, error = self._result, self._error
        self._result = self._error = None
        if error is not None:
            raise error
        return result

    def run_state(self) -> dict[str, Any]:
        """Finish a running fit (a checkpoint must hold its result) and return the
        fitter's state; an unwaited fit stays unwaited, so :meth:`wait` (and, lagged,
        the thaw of the predictions) happens at the same point as without a checkpoint.

        :raises: whatever a finished fit raised
        """
        self.join()
        if self._error is not None:
            self.wait()  # raises the fit's error
        return {"fits": self.fits, "fit_seconds": self.fit_seconds, "wait_seconds": self.wait_seconds,
                "result": copy.deepcopy(self._result), "unwaited": self._unwaited}

    def load_run_state(self, state: dict[str, Any]) -> None:
        self.fits = int(state["fits"])
        self.fit_seconds, self.wait_seconds = float(state["fit_seconds"]), float(state["wait_seconds"])
        self._thread, self._error = None, None
        self._result = copy.deepcopy(state["result"])
        self._unwaited = bool(state["unwaited"])
