"""One training run: PPO on the learned reward (``arm="learned"``) or on the true reward
(``arm="true"``), evaluated on the true return under the task's real rules.

Read top to bottom, a learned run is:

1. seed everything, build the vectorised env (fixed horizon, Atari score masked);
2. record segments of a random policy, ask the teacher about ``initial_labels`` pairs,
   pretrain the reward ensemble on the answers;
3. PPO learns on the ensemble's normalised reward; every ``labels.update_every_steps``
   (at a rollout end) new queries are drawn from recent segments as the label schedule
   asks, answers are collected (never waited for) and the ensemble is refitted;
4. periodic evaluation episodes measure the true return; everything lands in the run dir.

The true arm skips steps 2 and 3 and trains the same PPO on the true reward.

Crash safety: the run directory gets a checkpoint (``checkpoint/state.pt``, written
atomically) at the start of learning, then at rollout starts every
``checkpoint_steps`` env steps or ``checkpoint_seconds`` seconds (CLI:
``--checkpoint-every 50000`` or ``10m``, the default), and when SIGINT or SIGTERM asks
the run to stop (it finishes the rollout under way, saves, and exits; a second signal
stops at once). Starting ``train`` again on the directory of an unfinished run (no
``summary.json``) continues it from the checkpoint, and a synthetic-teacher run ends
exactly as it would have without the interruption: same labels, reward weights,
policy and evaluations (:class:`RunParts` lists what is kept; MuJoCo, classic control
and Atari envs continue from their exact state). A run started with other settings is
refused with the differing keys unless ``force``. A non-finite observation or reward
(environment or reward model) stops the run without writing a checkpoint of it.

Speed (``scripts/benchmark_speed.py`` measures both against plain PPO):

- ``relabel="rollout"`` (default): the learned reward of a whole rollout is computed in
  one batched ensemble call at the rollout's end (:class:`RolloutRelabelCallback`), not
  one call per step (Atari: in chunks by a worker thread while the rollout goes on);
  with ``ppo.normalize_rewards`` the reward scaling ``VecNormalize`` would apply moves
  into that step, exactly replayed. ``"step"`` is the plain per-step wrapper (same
  rewards within float rounding; kept for comparison and tests).
- ``fit="background"`` (default): the ensemble is refitted in a thread while PPO trains
  on the rollout just collected and collects the next one; the first reward the agent
  needs after that (the next relabelling, or the next step with ``relabel="step"``)
  waits for the fit. The agent gets exactly the rewards, labels and weights of
  ``"inline"`` (which fits at the update point while the agent waits), sooner.
  ``"lagged"``: the agent's rewards come from a frozen copy of the previous weights and
  the fit is joined only at the next update point, so a fit may take a whole update
  interval without stalling the agent; deterministic too, but the reward is one update
  interval staler than inline (a demo run learned less well: 0.73x).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import platform
import random
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    SubprocVecEnv,
    VecEnv,
    VecNormalize,
)

from prefrl.config.presets import ACTIVATIONS, PPOSettings, Preset
from prefrl.data.segments import ClipPair, Segment, SegmentBuffer
from prefrl.envs.factory import make_env
from prefrl.feedback.labels import LabelSchedule, LabelStore, Preference
from prefrl.feedback.queries import draw_queries, make_selector
from prefrl.feedback.teachers import Teacher, make_teacher
from prefrl.reward.model import RewardModel
from prefrl.reward.vec_env import (
    DeferredRewardVecNormalize,
    LearnedRewardVecEnv,
    ReturnNormalizer,
    RewardFn,
    SegmentRecorder,
)
from prefrl.training.checkpoint import (
    LOCK_FILE,
    RUN_DIR_SCHEMA,
    StatefulEnv,
    atomic_write_json,
    atomic_write_text,
    capture_vec_env,
    check_run_dir_schema,
    checkpoint_path,
    flatten,
    global_rng_states,
    read_checkpoint,
    remove_partial_checkpoints,
    restore_attributes,
    restore_global_rng_states,
    restore_vec_env,
    resumed_logs_dir,
    run_dir_lock,
    setting_differences,
    write_checkpoint,
)
from prefrl.util.errors import PrefrlError
from prefrl.util.threads import background_nice, setup_background_thread

ARMS = ("learned", "true")
RELABEL_MODES = ("rollout", "step")
FIT_MODES = ("background", "inline", "lagged")
#: Segments (the most recent) on which the ensemble's output normalisation is refitted.
NORMALIZATION_SEGMENTS = 256
EVAL_COLUMNS = ["step", "mean_true_return", "std_true_return", "episodes", "mean_length"]


@dataclass(frozen=True)
class RunPaths:
    """Where a run writes.

    :param run_dir: config, logs, checkpoints, evaluation and summary
    :param clips_dir: clip pairs and the label database (``labels.sqlite``)
    """

    run_dir: Path
    clips_dir: Path


def run_name(task: str, arm: str, seed: int, when: datetime | None = None) -> str:
    """CleanRL-style ``env__exp__seed__time`` name, e.g. ``hopper__learned__1__20261123-153000``."""
    stamp = (when or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{task}__{arm}__{seed}__{stamp}"


def default_paths(task: str, arm: str, seed: int, root: Path = Path("runs")) -> RunPaths:
    name = run_name(task, arm, seed)
    return RunPaths(run_dir=root / name, clips_dir=Path("clips") / name)


# --------------------------------------------------------------------------- environments


def _env_factory(preset: Preset, evaluation: bool, clip_reward: bool, record_frames: bool):
    def factory() -> gym.Env:
        env = make_env(preset, evaluation=evaluation, record_frames=record_frames)
        # Monitor sits below any reward change, so episode returns it logs are true returns.
        env = Monitor(env)
        if clip_reward:
            env = gym.wrappers.ClipReward(env, -1.0, 1.0)
        # Outermost: hands out the exact env state for run checkpoints (env_method).
        return StatefulEnv(env)

    return factory


def _ignoring_stop_signals(factory):
    """``factory`` run in a ``SubprocVecEnv`` worker that ignores SIGINT and SIGTERM.

    Ctrl-C (and a group-wide SIGTERM) reaches every process of the group; a worker
    that died of it would take the trainer's chance to finish its rollout and save a
    checkpoint. The trainer stops and closes its workers itself (a worker also exits
    when the trainer dies: its pipe closes)."""

    def in_worker() -> gym.Env:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return factory()

    return in_worker


def policy_kwargs(ppo: PPOSettings) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` of the preset's PPO, the same for both arms.

    :param ppo: the preset's PPO settings
    """
    kwargs: dict[str, Any] = {
        "log_std_init": ppo.log_std_init, "ortho_init": ppo.ortho_init,
        "activation_fn": getattr(torch.nn, ACTIVATIONS[ppo.activation]),
    }
    if ppo.policy == "MlpPolicy":  # CnnPolicy keeps SB3's heads on the Nature CNN features
        kwargs["net_arch"] = list(ppo.net_arch)
    return kwargs


def make_vec_env(
    preset: Preset,
    n_envs: int,
    seed: int,
    *,
    evaluation: bool = False,
    clip_reward: bool = False,
    record_frames: bool = False,
) -> VecEnv:
    """Vectorised task env, seeded once (env ``i`` gets ``seed + i``)."""
    if preset.ppo.vec_env == "ale":
        # Atari only (presets.validate): the SB3 chain's envs, stepped on the emulators
        # directly with the frame processing batched (scripts/benchmark_speed.py --atari-envs).
        from prefrl.envs.ale_vec_env import make_ale_vec_env

        return make_ale_vec_env(preset, n_envs, seed, evaluation=evaluation,
                                clip_reward=clip_reward, record_frames=record_frames)
    factories = [_env_factory(preset, evaluation, clip_reward, record_frames) for _ in range(n_envs)]
    if preset.ppo.vec_env == "subproc" and n_envs > 1:
        venv: VecEnv = SubprocVecEnv([_ignoring_stop_signals(factory) for factory in factories])
    else:
        venv = DummyVecEnv(factories)
    venv.seed(seed)
    venv.action_space.seed(seed)
    return venv


# --------------------------------------------------------------------------- callbacks


class RolloutRelabelCallback(BaseCallback):
    """Writes the learned reward of a whole rollout into PPO's rollout buffer at once.

    The learned-reward wrapper (``deferred=True``) hands PPO placeholder zeros while the
    rollout is collected; at the rollout's end this callback (first in the callback
    list, so before anything reads the buffer) asks the wrapper for the rewards of all
    its steps in one batched ensemble call, adds them to the buffer and recomputes
    returns and advantages with the last values and dones of the rollout.

    *Adds*: SB3 has already added ``gamma * V(terminal observation)`` to the reward of
    every step truncated by the time limit (``collect_rollouts``); on top of the
    placeholder zero that term is exactly what the buffer holds, and it is kept.

    :param learned_env: the deferred learned-reward wrapper
    """

    def __init__(self, learned_env: LearnedRewardVecEnv) -> None:
        super().__init__()
        if not learned_env.deferred:
            raise PrefrlError("RolloutRelabelCallback needs a LearnedRewardVecEnv with deferred=True")
        self.learned_env = learned_env
        #: seconds spent relabelling (reward-model calls and return recomputation)
        self.seconds = 0.0

    def _on_rollout_start(self) -> None:
        self.learned_env.discard_pending()  # the steps of an abandoned rollout, if any

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        start = time.perf_counter()
        buffer = self.model.rollout_buffer
        try:
            rewards = self.learned_env.relabel()
        except FloatingPointError as exc:
            raise NonFiniteError(f"step {self.num_timesteps:,}: {exc}") from None
        if rewards.shape != buffer.rewards.shape:
            raise RuntimeError(
                f"relabelling: {rewards.shape[0]} kept steps for a rollout buffer of {buffer.rewards.shape[0]}; "
                "the learned-reward wrapper must be stepped only by PPO's rollout collection"
            )
        buffer.rewards += rewards
        buffer.compute_returns_and_advantage(last_values=self.locals["values"], dones=self.locals["dones"])
        self.seconds += time.perf_counter() - start


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


@dataclass(frozen=True)
class StoredPair:
    """In a checkpoint: a labelled pair that is read back from the run's label store."""

    pair_id: str


def _no_frames(segment: Segment) -> Segment:
    return segment if segment.frames is None else dataclasses.replace(segment, frames=None)


class PreferenceCallback(BaseCallback):
    """Every ``labels.update_every_steps`` (at a rollout end): ask the queries the
    schedule calls for, collect whatever answers have arrived, refit the reward ensemble
    on them (inline or in the background, see :class:`RewardFitter`), and log its
    quality."""

    def __init__(
        self,
        *,
        preset: Preset,
        reward_model: RewardModel,
        teacher: Teacher,
        store: LabelStore,
        buffer: SegmentBuffer,
        schedule: LabelSchedule,
        learned_env: LearnedRewardVecEnv,
        rng: np.random.Generator,
        step_offset: int = 0,
        asked: int = 0,
        labels_used: int = 0,
        fitter: RewardFitter | None = None,
    ) -> None:
        super().__init__()
        self.preset = preset
        self.reward_model = reward_model
        self.teacher = teacher
        self.store = store
        self.buffer = buffer
        self.schedule = schedule
        self.learned_env = learned_env
        self.rng = rng
        self.selector = make_selector(preset.labels.query_selection, rng)
        self.uniform = make_selector("uniform", rng)
        self.step_offset = step_offset
        self.asked = asked
        self.labels_used = labels_used
        #: number of the next query's pair id (``q000123``); follows ``asked`` unless a
        #: resume skipped ids (see :meth:`load_run_state`)
        self.next_query_id = asked
        self.last_stats: dict[str, float] = {}
        self.next_update = 0
        self.fitter = fitter or RewardFitter(reward_model, buffer, mode="inline")

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        step = self.num_timesteps
        if self.fitter.mode == "background":
            # The relabelling (or the steps) of this rollout already waited for the fit
            # started at the previous update point: collect its statistics.
            self.finish_fit()
        if step < self.next_update:
            return
        self.next_update = step + self.preset.labels.update_every_steps
        # Lagged: the fit started at the previous update point is used from now on.
        self.finish_fit()
        self.ask_due(step)
        new = self.collect(step)
        if new:
            self.fitter.start(self.preset.reward.epochs_per_update, self.preset.reward.max_pairs_per_update)
            if not self.fitter.background:
                self.finish_fit()
        for key, value in self.last_stats.items():
            self.logger.record(f"reward/{key}", value)
        self.logger.record("labels/used", self.labels_used)
        self.logger.record("labels/asked", self.asked)
        self.logger.record("labels/pending", self.teacher.pending())
        if self.learned_env.learned_episode_returns:
            self.logger.record("rollout/learned_ep_return", float(np.mean(self.learned_env.learned_episode_returns)))

    def run_state(self) -> dict[str, Any]:
        """Counters, the query randomness, the reward model, its fitter, the teacher and
        the segment buffer (for a run checkpoint, between rollouts)."""
        return {
            "asked": self.asked, "labels_used": self.labels_used, "next_update": self.next_update,
            "next_query_id": self.next_query_id,
            "last_stats": dict(self.last_stats), "rng": copy.deepcopy(self.rng.bit_generator.state),
            "fitter": self.fitter.run_state(),  # first: joins a running fit
            "reward_model": self._labels_by_reference(self.reward_model.run_state()),
            "teacher": teacher_state(self.teacher),
            "buffer": self.buffer,  # pickled at once; shares segments with the model's labels
        }

    def load_run_state(self, state: dict[str, Any]) -> None:
        self.asked, self.labels_used = int(state["asked"]), int(state["labels_used"])
        self.next_query_id = int(state.get("next_query_id", self.asked))
        self.next_update, self.last_stats = int(state["next_update"]), dict(state["last_stats"])
        # In place: the query selectors hold this very generator.
        self.rng.bit_generator.state = state["rng"]
        self.reward_model.load_run_state(self._labels_from_store(state["reward_model"]))
        self.fitter.load_run_state(state["fitter"])
        load_teacher_state(self.teacher, state["teacher"])
        # In place: the recorder, the fitter and this callback share the buffer.
        self.buffer.__dict__.update(state["buffer"].__dict__)
        if not self.teacher.replayable:
            # The interrupted session stored clips and pairs after this checkpoint that
            # this session will not retrace (a person answers at other moments, so the
            # reward, the policy and the segments differ): number new ones past them.
            # Those pairs stay in the store and count as asked (people see them, the
            # label budget includes them); their labels reach the trainer all the same.
            self.buffer.skip_ids(self.store.next_id_number("clips", "s"))
            stored = self.store.next_id_number("pairs", "q")
            if stored > self.next_query_id:
                self.asked += stored - self.next_query_id
                self.next_query_id = stored

    def _labels_by_reference(self, model_state: dict[str, Any]) -> dict[str, Any]:
        """Labelled pairs that are in the label store (all, normally) are checkpointed
        by id: their clips are on disk already (for Atari thousands of labels would
        otherwise make every checkpoint gigabytes)."""
        stored = {row[0] for row in self.store.connection.execute("SELECT pair_id FROM pairs")}
        model_state["labels"] = [label._replace(pair=StoredPair(label.pair.pair_id))
                                 if label.pair.pair_id in stored else label for label in model_state["labels"]]
        return model_state

    def _labels_from_store(self, model_state: dict[str, Any]) -> dict[str, Any]:
        """Read the pairs of :meth:`_labels_by_reference` back (bit-identical arrays;
        display frames are dropped, the reward model never reads them)."""
        loaded: dict[str, ClipPair] = {}

        def pair(ref: StoredPair) -> ClipPair:
            if ref.pair_id not in loaded:
                full = self.store.load_pair(ref.pair_id)
                loaded[ref.pair_id] = ClipPair(_no_frames(full.left), _no_frames(full.right), pair_id=full.pair_id)
            return loaded[ref.pair_id]

        labels = [label._replace(pair=pair(label.pair)) if isinstance(label.pair, StoredPair) else label
                  for label in model_state["labels"]]
        return {**model_state, "labels": labels}

    def finish_fit(self) -> None:
        """Wait for a running fit and keep its statistics (at the end of training too)."""
        stats = self.fitter.wait()
        if stats is not None:
            self.last_stats = stats

    def ask_due(self, step: int) -> int:
        due = min(self.schedule.target(step), self.preset.labels.budget) - self.asked
        if due <= 0 or len(self.buffer) < 2:
            return 0
        # An untrained ensemble's disagreement means nothing: the first queries are uniform.
        trained = self.reward_model.n_labels > 0
        queries = draw_queries(
            self.buffer, due, self.selector if trained else self.uniform, self.preset.labels.oversample, self.rng,
            preference_probabilities=self.reward_model.preference_probabilities if trained else None, prefix="q",
            first_id=self.next_query_id,
        )
        self.store.add_pairs(queries)
        self.teacher.ask(queries, step)
        self.asked += len(queries)
        self.next_query_id += len(queries)
        return len(queries)

    def collect(self, step: int) -> list[Preference]:
        answers = self.teacher.answers()
        if not getattr(self.teacher, "answers_in_store", False):
            for answer in answers:
                self.store.record_label(answer.pair.pair_id, answer.choice, answer.labeller)
        self.reward_model.add_preferences(answers)
        self.labels_used += sum(a.choice.target is not None for a in answers)
        return answers


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


class TrueReturnEvalCallback(BaseCallback):
    """Evaluate the policy on the true return with the task's real rules every
    ``eval.every_steps`` env steps and append a row to ``eval.csv``."""

    def __init__(self, eval_env: VecEnv, preset: Preset, csv_path: Path) -> None:
        super().__init__()
        self.eval_env = eval_env
        self.preset = preset
        self.csv_path = csv_path
        self.next_eval = 0
        self.last_mean = float("nan")
        #: rows of eval.csv so far (a resumed run rewrites the file from the checkpoint's)
        self.rows: list[list[float]] = []
        self.resumed = False
        self._write_rows()

    def _write_rows(self) -> None:
        text = io.StringIO()
        csv.writer(text).writerows([EVAL_COLUMNS, *self.rows])
        atomic_write_text(self.csv_path, text.getvalue())

    def run_state(self) -> dict[str, Any]:
        return {"next_eval": self.next_eval, "last_mean": self.last_mean, "rows": copy.deepcopy(self.rows)}

    def load_run_state(self, state: dict[str, Any]) -> None:
        """Continue a run: rows written after the checkpoint (by the interrupted
        process) are dropped, and training does not start with an evaluation."""
        self.next_eval, self.last_mean = int(state["next_eval"]), float(state["last_mean"])
        self.rows = copy.deepcopy(state["rows"])
        self.resumed = True
        self._write_rows()

    def _on_training_start(self) -> None:
        if self.resumed:
            return
        self.evaluate()  # the curve starts at the untrained policy
        self.next_eval = self.num_timesteps + self.preset.eval.every_steps

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next_eval:
            self.evaluate()
            self.next_eval += self.preset.eval.every_steps
        return True

    def evaluate(self) -> float:
        train_env = self.model.get_env()
        # Only the top VecNormalize is shared: the learned arm's reward wrappers below it
        # have no counterpart in the evaluation env (which runs on the true reward).
        if isinstance(train_env, VecNormalize) and isinstance(self.eval_env, VecNormalize) and train_env.norm_obs:
            self.eval_env.obs_rms = copy.deepcopy(train_env.obs_rms)
        returns, lengths = evaluate_policy(
            self.model, self.eval_env, n_eval_episodes=self.preset.eval.episodes,
            deterministic=self.preset.eval.deterministic, return_episode_rewards=True, warn=False,
        )
        if not np.all(np.isfinite(returns)):
            # Never write a NaN row: eval.csv and the final return must stay readable.
            raise NonFiniteError(f"step {self.num_timesteps:,}: an evaluation episode of the environment "
                                 f"returned a non-finite true return ({returns})")
        mean, std = float(np.mean(returns)), float(np.std(returns))
        row = [self.num_timesteps, mean, std, len(returns), float(np.mean(lengths))]
        self.rows.append(row)
        with open(self.csv_path, "a", newline="") as fh:
            csv.writer(fh).writerow(row)
        self.logger.record("eval/mean_true_return", mean)
        self.last_mean = mean
        return mean


class ProgressCallback(BaseCallback):
    """A tqdm bar over env steps with labels used and the recent true training return."""

    def __init__(self, total: int, prefs: PreferenceCallback | None, evals: TrueReturnEvalCallback) -> None:
        super().__init__()
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, smoothing=0.1)
        self.prefs = prefs
        self.evals = evals

    def _on_step(self) -> bool:
        self.bar.update(self.num_timesteps - self.bar.n)
        return True

    def _on_rollout_end(self) -> None:
        postfix: dict[str, Any] = {}
        if self.prefs is not None:
            postfix["labels"] = self.prefs.labels_used
        if self.model.ep_info_buffer:
            postfix["true_return"] = f"{np.mean([e['r'] for e in self.model.ep_info_buffer]):.1f}"
        if not np.isnan(self.evals.last_mean):
            postfix["eval"] = f"{self.evals.last_mean:.1f}"
        self.bar.set_postfix(postfix, refresh=False)

    def _on_training_end(self) -> None:
        self.bar.update(self.num_timesteps - self.bar.n)
        self.bar.close()


# --------------------------------------------------------------------------- crash safety

#: Teacher attributes that are connections or settings, not state.
_TEACHER_RESOURCES = ("store", "settings")
#: Settings that may differ when a run is resumed: they cannot change its result.
RESUME_IGNORED_SETTINGS = ("task.description",)
#: Settings added after runs had checkpoints, with the value that behaves as the
#: earlier prefrl did: a run started before a setting existed resumes as if it were set so.
SETTINGS_ADDED_LATER: dict[str, Any] = {
    "reward.max_pairs_per_update": 0, "ppo.log_std_init": 0.0, "ppo.ortho_init": True, "ppo.activation": "tanh",
}
#: ``version -> function(run_dir, config) -> config`` upgrading a run directory of that
#: layout version to the next (none yet: version 1 is the first with checkpoints).
RUN_DIR_MIGRATIONS: dict[int, Any] = {}


def teacher_state(teacher: Teacher) -> dict[str, Any]:
    """A teacher's state without its label store connection: the synthetic teacher's
    generator, return statistics and unread answers; the human teacher's cursor over
    the store's labels and the pairs it asked (its pending queries: the pairs themselves
    are in the label store, so restoring this re-attaches them)."""
    return {k: copy.deepcopy(v) for k, v in vars(teacher).items() if k not in _TEACHER_RESOURCES}


def load_teacher_state(teacher: Teacher, state: dict[str, Any]) -> None:
    """Put a :func:`teacher_state` into a teacher of the same kind (generators in place)."""
    restore_attributes(teacher, state)


class NonFiniteError(PrefrlError):
    """An environment or the reward model produced NaN or an infinity."""


class RunInterrupted(PrefrlError):
    """SIGINT or SIGTERM stopped the run after it saved a checkpoint.

    :param step: env steps of the saved checkpoint
    :param signum: the signal
    :param run_dir: the run directory
    """

    def __init__(self, step: int, signum: int, run_dir: Path) -> None:
        self.step, self.signum, self.run_dir = int(step), int(signum), run_dir
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step:,}; "
                         f"the run is saved in {checkpoint_path(run_dir)}")

    @property
    def exit_status(self) -> int:
        """The shell's convention for death by this signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class CheckpointWriteError(PrefrlError):
    """The checkpoint could not be written (full disk); the previous one is intact."""


class _Halt(Exception):
    """Raised at a rollout boundary after the stop checkpoint (caught by :func:`train`)."""

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


class StopRequest:
    """While learning, SIGINT and SIGTERM ask the run to stop at the next rollout
    boundary with a checkpoint (the rollout under way is finished and learned from:
    seconds for vector tasks). A second signal stops at once (``KeyboardInterrupt``);
    the last checkpoint on disk stays valid, it is only older.

    Signal handlers can only be set in the main thread; elsewhere (e.g. a worker
    thread of a sweep) this does nothing and signals keep their usual effect.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        #: the first signal received, or None
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\nprefrl: {signal.Signals(signum).name} received: finishing this rollout to save a checkpoint "
              "(send it again to stop at once and lose the steps since the last checkpoint)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _check_finite(name: str, values: Any) -> None:
    for tensor in values:
        if not torch.isfinite(torch.as_tensor(tensor)).all():
            raise NonFiniteError(f"{name} holds NaN or infinite values")


@dataclass
class RunParts:
    """The objects whose state makes up a run checkpoint, and how to take and restore it.

    A checkpoint is taken at the start of a rollout (after PPO learned from the previous
    one): nothing is half done then except a background reward fit, which is finished
    first (its result is the same whenever it finishes). Restoring the checkpoint into
    objects built with the same settings continues the run bit for bit: PPO (weights,
    Adam state, step and update counters, last observations), the env wrappers and
    simulations, normalisation statistics, the reward model with its labels and
    optimiser, the segment buffer, the teacher, the query counters and every random
    generator (global ones included).

    :param model: the PPO agent (its env is the training env)
    :param eval_env: the evaluation env
    :param evals: the evaluation callback
    :param prefs: the preference callback (learned arm), else None
    :param pretrain_steps: env steps before learning (random policy)
    :param wall_seconds: wall time of the run's earlier sessions
    """

    model: PPO
    eval_env: VecEnv
    evals: TrueReturnEvalCallback
    prefs: PreferenceCallback | None
    pretrain_steps: int = 0
    wall_seconds: float = 0.0
    session_start: float = 0.0

    def elapsed(self) -> float:
        """Wall seconds of all sessions so far."""
        return self.wall_seconds + time.time() - self.session_start

    def capture(self) -> dict[str, Any]:
        """The state to checkpoint.

        :raises NonFiniteError: a network or a normaliser holds NaN or infinities (a
            checkpoint must never keep them)
        """
        model = self.model
        prefs_state = self.prefs.run_state() if self.prefs is not None else None
        self.check_finite()
        return {
            "ppo": {
                "params": copy.deepcopy(model.get_parameters()),
                "num_timesteps": int(model.num_timesteps),
                "last_obs": copy.deepcopy(model._last_obs),
                "last_episode_starts": copy.deepcopy(model._last_episode_starts),
                "last_original_obs": copy.deepcopy(model._last_original_obs),
                "n_updates": int(model._n_updates),
                "progress_remaining": float(model._current_progress_remaining),
                "episode_num": int(model._episode_num),
                "ep_info_buffer": list(model.ep_info_buffer or []),
                "ep_success_buffer": list(model.ep_success_buffer or []),
            },
            "venv": capture_vec_env(model.get_env()),
            "eval_env": capture_vec_env(self.eval_env),
            "evals": self.evals.run_state(),
            "prefs": prefs_state,
            "pretrain_steps": int(self.pretrain_steps),
            "wall_seconds": self.elapsed(),
            "rng": global_rng_states(),
        }

    def check_finite(self) -> None:
        """:raises NonFiniteError: the policy, the reward model or a normaliser is not finite"""
        _check_finite("the policy's weights", self.model.policy.state_dict().values())
        if self.prefs is not None:
            rm = self.prefs.reward_model
            _check_finite("the reward model's weights", [*rm.net.state_dict().values(), rm.norm_mean, rm.norm_std])
        env = self.model.get_env()
        if isinstance(env, VecNormalize):
            # obs_rms exists only with norm_obs
            stats = [vars(env).get(name) for name in ("obs_rms", "ret_rms")]
            _check_finite("the normaliser statistics", [v for rms in stats if rms is not None for v in (rms.mean, rms.var)])

    def restore(self, state: dict[str, Any]) -> None:
        """Put a :meth:`capture` state into objects built with the same settings. The
        global random states come last: building the objects may have drawn from them."""
        model, ppo = self.model, state["ppo"]
        model.set_parameters(ppo["params"], exact_match=True, device="cpu")
        model.num_timesteps = ppo["num_timesteps"]
        model._last_obs = ppo["last_obs"]
        model._last_episode_starts = ppo["last_episode_starts"]
        model._last_original_obs = ppo["last_original_obs"]
        model._n_updates = ppo["n_updates"]
        model._current_progress_remaining = ppo["progress_remaining"]
        model._episode_num = ppo["episode_num"]
        model.ep_info_buffer = deque(ppo["ep_info_buffer"], maxlen=model._stats_window_size)
        model.ep_success_buffer = deque(ppo["ep_success_buffer"], maxlen=model._stats_window_size)
        restore_vec_env(model.get_env(), state["venv"])
        restore_vec_env(self.eval_env, state["eval_env"])
        self.evals.load_run_state(state["evals"])
        if self.prefs is not None:
            self.prefs.load_run_state(state["prefs"])
        self.pretrain_steps = int(state["pretrain_steps"])
        self.wall_seconds = float(state["wall_seconds"])
        restore_global_rng_states(state["rng"])


class RunCheckpointer(BaseCallback):
    """Writes the run checkpoint at rollout starts: the first one, then every
    ``every_steps`` env steps or ``every_seconds`` seconds (whichever comes first; 0
    turns either off), and when a stop was requested (then it halts the run). Also stops
    the run when an environment returns a non-finite observation or reward.

    :param run_dir: the run directory
    :param parts: what the checkpoint holds
    :param stop: the signal state
    :param every_steps: env steps between checkpoints (0: not by steps)
    :param every_seconds: seconds between checkpoints (0: not by time)
    :param saved_step: step of the checkpoint the run resumed from, else None
    """

    def __init__(self, run_dir: Path, parts: RunParts, stop: StopRequest, every_steps: int = 0,
                 every_seconds: float = 600.0, saved_step: int | None = None) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.parts = parts
        self.stop = stop
        self.every_steps = max(0, int(every_steps))
        self.every_seconds = max(0.0, float(every_seconds))
        #: step of the last checkpoint on disk (None: none yet)
        self.saved_step = saved_step
        self._saved_at = time.monotonic()
        #: checkpoints written by this session
        self.writes = 0

    def _due(self, step: int) -> bool:
        if self.saved_step is None:
            return True
        if step == self.saved_step:
            return False
        if self.every_steps and step - self.saved_step >= self.every_steps:
            return True
        return bool(self.every_seconds) and time.monotonic() - self._saved_at >= self.every_seconds

    def _on_rollout_start(self) -> None:
        step = self.num_timesteps
        stopping = self.stop.signum is not None
        if self._due(step) or (stopping and step != self.saved_step):
            self.save(step)
        if stopping:
            raise _Halt(step)

    def save(self, step: int) -> None:
        """Write the checkpoint now.

        :raises PrefrlError: the disk is full or unwritable (the previous checkpoint stays)
        """
        state = self.parts.capture()
        try:
            write_checkpoint(self.run_dir, step, state)
        except OSError as exc:
            kept = f"the checkpoint of step {self.saved_step:,} is kept" if self.saved_step is not None else "no checkpoint was written yet"
            raise CheckpointWriteError(
                f"writing the checkpoint of step {step:,} to {checkpoint_path(self.run_dir)} failed "
                f"({exc.strerror or exc}); {kept}: free space, then rerun the same command to resume"
            ) from None
        self.saved_step, self._saved_at = step, time.monotonic()
        self.writes += 1

    def _on_step(self) -> bool:
        check_step_finite(self.locals, self.num_timesteps)
        return True


def check_step_finite(step_locals: dict[str, Any], step: int) -> None:
    """Stop on a non-finite observation or reward of the vectorised step just taken.

    :param step_locals: SB3's ``collect_rollouts`` locals (``new_obs``, ``rewards``, ``infos``)
    :param step: env steps so far
    :raises NonFiniteError: naming the step, the env and what was not finite
    """
    rewards = np.asarray(step_locals["rewards"])
    infos = step_locals.get("infos") or []
    true_rewards = np.array([info.get("true_reward", 0.0) for info in infos], dtype=np.float64)
    observations = step_locals.get("new_obs")
    checks = [("reward", rewards), ("reward", true_rewards)]
    if isinstance(observations, np.ndarray) and np.issubdtype(observations.dtype, np.floating):
        checks.append(("observation", observations.reshape(len(observations), -1)))
    for what, values in checks:
        if values.size and not np.isfinite(values).all():
            bad = np.argwhere(~np.isfinite(values.reshape(len(values), -1)))[0]
            value = values.reshape(len(values), -1)[tuple(bad)]
            raise NonFiniteError(f"step {step:,}, env {int(bad[0])}: the environment returned a non-finite {what} ({value})")


def _comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``config.json`` that decide a run's result, flat (``ppo.gamma``)."""
    flat = {key: config.get(key) for key in ("task", "arm", "seed", "teacher", "relabel", "fit", "labels_from")}
    clips = config.get("clips_dir")
    flat["clips_dir"] = str(Path(clips).resolve()) if clips else None
    # The same JSON round trip config.json went through (tuples become lists, inf stays).
    preset = json.loads(json.dumps(config.get("preset") or {}))
    flat.update({k: v for k, v in flatten(preset).items() if k not in RESUME_IGNORED_SETTINGS})
    if preset:
        for key, value in SETTINGS_ADDED_LATER.items():
            flat.setdefault(key, value)
    return flat


def open_run_dir(run_dir: Path, config: dict[str, Any], force: bool = False) -> tuple[dict[str, Any] | None, list[str]]:
    """Decide what to do with a run directory (:func:`check_run_dir`) and read the
    checkpoint of a run to resume.

    :return: ``(checkpoint or None, differing settings accepted by force)``
    :raises PrefrlError: the directory cannot be used for this run
    """
    differences = check_run_dir(run_dir, config, force)
    if differences is None:
        return None, []
    return read_checkpoint(run_dir), differences


def check_run_dir(run_dir: Path, config: dict[str, Any], force: bool = False) -> list[str] | None:
    """Decide what to do with a run directory: start, resume, or refuse.

    - missing or empty: a new run;
    - ``config.json`` of this layout, no ``summary.json``: the same run again, resumed
      from ``checkpoint/state.pt`` (or started over if it stopped before its first
      checkpoint), if it was started with the same settings (``--force``: whatever
      differs is taken from the new settings);
    - finished (``summary.json``), files without ``config.json``, a layout without a
      version (made before runs had checkpoints; such finished runs stay readable by
      ``compare``, ``video`` and ``report``, nothing on disk changes) or of a newer
      version: refused.

    :param run_dir: the run directory
    :param config: the new run's ``config.json`` content
    :param force: resume even though settings differ
    :return: None for a new run, else the differing settings accepted by force (``[]``:
        the same run)
    :raises PrefrlError: the directory cannot be used for this run
    """
    if not run_dir.exists() or not any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        return None
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise PrefrlError(f"run directory '{run_dir}' already holds a run or other files (no config.json); "
                          "give a new --run-dir")
    try:
        stored = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise PrefrlError(f"cannot read {config_path} ({exc}); give a new --run-dir") from None
    if (run_dir / "summary.json").is_file():
        raise PrefrlError(f"run directory '{run_dir}' already holds a run that finished (summary.json); "
                          "give a new --run-dir")
    schema = stored.get("run_dir_schema")
    if schema is None:
        raise PrefrlError(f"run directory '{run_dir}' already holds a run of an earlier prefrl without checkpoints, "
                          "which cannot be resumed; give a new --run-dir")
    check_run_dir_schema(schema, str(config_path))
    while schema < RUN_DIR_SCHEMA:
        stored = RUN_DIR_MIGRATIONS[schema](run_dir, stored)
        schema += 1
    differences = setting_differences(_comparable_config(stored), _comparable_config(config))
    if differences and not force:
        raise PrefrlError(f"{run_dir} was started with different settings: {', '.join(differences)}; "
                          "resume with the same settings, or pass --force")
    return differences


def would_resume(preset: Preset, *, arm: str, seed: int, paths: RunPaths, teacher_kind: str = "synthetic",
                 labels_from: Path | None = None, relabel: str = "rollout", fit: str | None = None) -> bool:
    """Whether :func:`train` with these arguments (and no ``force``) would continue the
    run in ``paths.run_dir`` from its checkpoint: the one rule sweeps and benchmarks use
    to keep a killed run's folder rather than start it over."""
    if not checkpoint_path(paths.run_dir).is_file() or (paths.run_dir / "summary.json").is_file():
        return False
    config = _run_config(preset, arm, seed, paths, teacher_kind, labels_from, relabel, fit or preset.reward.fit_mode)
    try:
        return check_run_dir(paths.run_dir, config) == []
    except PrefrlError:
        return False


# --------------------------------------------------------------------------- the run


def collect_random_segments(venv: VecEnv, recorder: SegmentRecorder, n_segments: int, max_steps: int) -> int:
    """Step a uniformly random policy until the buffer holds ``n_segments`` segments.

    :return: env steps taken
    """
    venv.reset()
    steps = 0
    while len(recorder.buffer) < n_segments and steps < max_steps:
        actions = np.stack([venv.action_space.sample() for _ in range(venv.num_envs)])
        venv.step(actions)
        steps += venv.num_envs
    return steps


def pretrain_from_initial_labels(prefs: PreferenceCallback, recorder: SegmentRecorder, progress: bool) -> int:
    """Label pairs of a random policy's segments and pretrain the reward model on them.

    A synthetic teacher answers at once; with a person, wait (showing how many labels are
    still needed) only until the initial labels of the schedule are in.

    :return: env steps the random policy took
    """
    preset = prefs.preset
    initial = prefs.schedule.target(0)
    if initial <= 0:
        return 0
    wanted = min(max(2, initial), preset.labels.segment_buffer_size)
    steps = collect_random_segments(recorder, recorder, wanted,
                                    max_steps=wanted * preset.task.clip_length * 4 + recorder.num_envs)
    prefs.ask_due(0)
    prefs.collect(0)
    if prefs.teacher.pending():
        command = getattr(prefs.teacher, "viewer_command", "")
        print(f"waiting for {initial} initial labels; label them in another terminal with:\n  {command}", flush=True)
        from tqdm.auto import tqdm

        with tqdm(total=initial, initial=prefs.labels_used, unit="label", disable=not progress) as bar:
            while prefs.labels_used < initial and prefs.teacher.pending():
                time.sleep(1.0)
                prefs.collect(0)
                bar.update(prefs.labels_used - bar.n)
    if prefs.reward_model.n_labels and preset.labels.pretrain_epochs:
        prefs.last_stats = fit_reward_model(prefs.reward_model, prefs.buffer, preset.labels.pretrain_epochs)
    return steps


def pretrain_from_fixed_labels(prefs: PreferenceCallback, clips_dir: Path, recorder: SegmentRecorder) -> int:
    """Train the reward model once on the labelled pairs of another clips folder and ask
    no queries afterwards (``prefrl train TASK --labels-from clips/<name>``).

    :return: env steps taken to fill the segment buffer for output normalisation
    """
    from prefrl.feedback.labels import Choice

    source = LabelStore(clips_dir, prefs.preset.task.name)
    try:
        preferences = source.preferences()
    finally:
        source.close()
    usable = [p for p in preferences if p.choice is not Choice.CANT_TELL]
    if not usable:
        raise PrefrlError(f"no usable labels in '{clips_dir}'; label its pairs first with `prefrl label {clips_dir}`")
    prefs.store.add_pairs([p.pair for p in preferences])
    for pref in preferences:
        prefs.store.record_label(pref.pair.pair_id, pref.choice, pref.labeller)
    prefs.reward_model.add_preferences(preferences)
    prefs.labels_used = len(usable)
    prefs.asked = prefs.preset.labels.budget  # the fixed set is all there is: no queries
    steps = collect_random_segments(recorder, recorder, 64, max_steps=64 * prefs.preset.task.clip_length * 4)
    prefs.last_stats = fit_reward_model(prefs.reward_model, prefs.buffer, max(1, prefs.preset.labels.pretrain_epochs))
    return steps


def _run_config(preset: Preset, arm: str, seed: int, paths: RunPaths, teacher_kind: str,
                labels_from: Path | None, relabel: str, fit: str) -> dict[str, Any]:
    """The content of ``config.json``: what the run is (compared when it is resumed)."""
    learned = arm == "learned"
    return {
        "run_dir_schema": RUN_DIR_SCHEMA,
        "task": preset.task.name, "arm": arm, "seed": seed, "teacher": teacher_kind if learned else None,
        "run_dir": str(paths.run_dir), "clips_dir": str(paths.clips_dir) if learned else None,
        "labels_from": str(Path(labels_from).resolve()) if learned and labels_from is not None else None,
        "relabel": relabel if learned else None, "fit": fit if learned else None,
        "preset": preset.to_dict(), "python": platform.python_version(), "torch": torch.__version__,
        "started": datetime.now().isoformat(timespec="seconds"),
    }


def _write_config(run_dir: Path, config: dict[str, Any], resumed: dict[str, Any] | None,
                  changes: list[str]) -> None:
    """Write ``config.json`` (new run), or, when a run resumes with ``--force``, the new
    settings with the list of what was changed at which step."""
    if resumed is not None and not changes:
        return  # same settings: the file stays as the run's first session wrote it
    if resumed is not None:
        previous = json.loads((run_dir / "config.json").read_text())
        config = {**config, "started": previous.get("started", config["started"]),
                  "changed_on_resume": [*previous.get("changed_on_resume", []),
                                        {"step": resumed["step"], "changes": changes}]}
    atomic_write_json(run_dir / "config.json", config)


def train(
    preset: Preset,
    *,
    arm: str = "learned",
    seed: int = 0,
    paths: RunPaths | None = None,
    teacher_kind: str = "synthetic",
    labels_from: Path | None = None,
    progress: bool = True,
    verbose: int = 0,
    relabel: str = "rollout",
    fit: str | None = None,
    fit_threads: int = 1,
    checkpoint_steps: int = 0,
    checkpoint_seconds: float = 600.0,
    force: bool = False,
) -> dict[str, Any]:
    """Train one run and return its summary (also written to ``summary.json``).

    Given the directory of an interrupted run (same settings), the run continues from
    its last checkpoint and ends exactly as it would have without the interruption
    (see :func:`open_run_dir` and :class:`RunParts`).

    :param preset: the task's resolved settings
    :param arm: ``learned`` (PPO on the learned reward) or ``true`` (on the true reward)
    :param seed: seeds the env, PPO, the reward model, the teacher and query selection
    :param paths: run and clips folders (default ``runs/<name>``, ``clips/<name>``)
    :param teacher_kind: who answers the queries (learned arm only): ``synthetic`` or
        ``human`` (a person in ``prefrl label``; training never waits beyond the
        initial labels)
    :param labels_from: train the reward model on the labelled pairs of this clips
        folder only (no queries are asked)
    :param progress: show a progress bar
    :param verbose: SB3 verbosity
    :param relabel: learned arm: ``rollout`` (one batched reward-model call per rollout)
        or ``step`` (one per vectorised step); see the module docstring
    :param fit: learned arm: refit the ensemble in the ``background`` beside PPO (same
        result as ``inline``, where the agent waits for each fit) or ``lagged`` (rewards
        from the previous weights until the next update point); all deterministic.
        Default: the preset's ``reward.fit_mode``
    :param fit_threads: torch threads of the background fit
    :param checkpoint_steps: write the checkpoint every this many env steps (0: not by
        steps); always at the start of learning and on SIGINT/SIGTERM
    :param checkpoint_seconds: and at least every this many seconds (0: not by time)
    :param force: resume a run even though it was started with other settings
    :raises RunInterrupted: SIGINT/SIGTERM stopped the run after a checkpoint
    :raises NonFiniteError: an env or the reward model produced NaN or infinity (the
        last checkpoint is kept)
    """
    if arm not in ARMS:
        raise PrefrlError(f"unknown arm '{arm}'; use one of {', '.join(ARMS)}")
    if relabel not in RELABEL_MODES:
        raise PrefrlError(f"unknown relabel mode '{relabel}'; use one of {', '.join(RELABEL_MODES)}")
    fit = fit or preset.reward.fit_mode
    if fit not in FIT_MODES:
        raise PrefrlError(f"unknown fit mode '{fit}'; use one of {', '.join(FIT_MODES)}")
    paths = paths or default_paths(preset.task.name, arm, seed)
    with run_dir_lock(paths.run_dir):
        return _train(preset, arm=arm, seed=seed, paths=paths, teacher_kind=teacher_kind, labels_from=labels_from,
                      progress=progress, verbose=verbose, relabel=relabel, fit=fit, fit_threads=fit_threads,
                      checkpoint_steps=checkpoint_steps, checkpoint_seconds=checkpoint_seconds, force=force)


def _train(preset: Preset, *, arm: str, seed: int, paths: RunPaths, teacher_kind: str, labels_from: Path | None,
           progress: bool, verbose: int, relabel: str, fit: str, fit_threads: int, checkpoint_steps: int,
           checkpoint_seconds: float, force: bool) -> dict[str, Any]:
    """:func:`train` in a run directory this process holds."""
    task = preset.task.name
    run_dir = paths.run_dir
    config = _run_config(preset, arm, seed, paths, teacher_kind, labels_from, relabel, fit)
    resumed, changes = open_run_dir(run_dir, config, force)
    remove_partial_checkpoints(run_dir)
    _write_config(run_dir, config, resumed, changes)
    started = time.time()

    # Seeding: one block, everything derives from `seed` (a resumed run then takes
    # every generator's state from its checkpoint).
    random.seed(seed)
    np.random.seed(seed)
    set_random_seed(seed)
    rng = np.random.default_rng(seed)
    if preset.ppo.torch_threads > 0:
        torch.set_num_threads(preset.ppo.torch_threads)
    background_nice()  # a bad PREFRL_BACKGROUND_NICE stops here, not in a fitting thread

    p = preset.ppo
    # People watch Atari clips as RGB frames; MuJoCo clips are rendered from physics states.
    record_frames = arm == "learned" and teacher_kind == "human" and preset.task.domain == "atari"
    venv = make_vec_env(preset, p.n_envs, seed, clip_reward=(arm == "true" and p.clip_true_reward),
                        record_frames=record_frames)
    eval_env: VecEnv = make_vec_env(preset, 1, seed + 10_000, evaluation=True)

    reward_model: RewardModel | None = None
    prefs: PreferenceCallback | None = None
    relabeller: RolloutRelabelCallback | None = None
    learned_env: LearnedRewardVecEnv | None = None
    pretrain_steps = 0
    # Deferred relabelling takes over VecNormalize's reward scaling (replayed per rollout).
    scale_in_relabel = arm == "learned" and relabel == "rollout" and p.normalize_rewards
    if arm == "learned":
        buffer = SegmentBuffer(preset.task.clip_length, p.n_envs, preset.labels.segment_buffer_size)
        recorder = SegmentRecorder(venv, buffer, record_frames=record_frames)
        reward_model = RewardModel(venv.observation_space, venv.action_space, preset.reward, seed=seed)
        fitter = RewardFitter(reward_model, buffer, mode=fit, threads=fit_threads)
        learned_env = LearnedRewardVecEnv(
            recorder, fitter.guard(reward_model.predict), deferred=relabel == "rollout",
            normalizer=ReturnNormalizer(p.n_envs, p.gamma) if scale_in_relabel else None,
            # The Atari CNN costs ~1 ms a frame: label chunks of ~inference_batch frames in a
            # worker while the rollout goes on. The MLP's whole rollout takes ~1 ms at the end.
            prefetch_steps=max(1, reward_model.inference_batch // p.n_envs)
            if relabel == "rollout" and preset.reward.architecture == "atari_cnn" else 0,
        )
        if learned_env.deferred:
            relabeller = RolloutRelabelCallback(learned_env)
        venv = learned_env
        paths.clips_dir.mkdir(parents=True, exist_ok=True)
        store = LabelStore(paths.clips_dir, task)
        # The termination penalty is already in the recorded (training) reward: see envs.py.
        teacher = make_teacher(teacher_kind, preset.teacher, seed, termination_penalty=0.0, store=store)
        schedule = LabelSchedule(preset.labels.budget, preset.labels.initial_labels,
                                 preset.labels.rate_constant, p.total_steps)
        prefs = PreferenceCallback(
            preset=preset, reward_model=reward_model, teacher=teacher, store=store, buffer=buffer,
            schedule=schedule, learned_env=learned_env, rng=rng,
            fitter=fitter,
        )
        if resumed is not None:
            pass  # the reward model, its labels and the segments come from the checkpoint
        elif labels_from is not None:
            pretrain_steps = pretrain_from_fixed_labels(prefs, labels_from, recorder)
        else:
            pretrain_steps = pretrain_from_initial_labels(prefs, recorder, progress)

    if p.normalize_observations or (p.normalize_rewards and relabeller is None):
        # Above a deferred wrapper VecNormalize sees placeholder rewards: it must neither
        # scale them nor learn statistics from them.
        norm_cls = DeferredRewardVecNormalize if relabeller is not None else VecNormalize
        venv = norm_cls(venv, norm_obs=p.normalize_observations,
                        norm_reward=p.normalize_rewards and relabeller is None, gamma=p.gamma)
    if p.normalize_observations or p.normalize_rewards:
        eval_env = VecNormalize(eval_env, training=False, norm_obs=p.normalize_observations, norm_reward=False)

    model = PPO(
        p.policy, venv, n_steps=p.n_steps, batch_size=p.batch_size, n_epochs=p.n_epochs,
        learning_rate=p.learning_rate, gamma=p.gamma, gae_lambda=p.gae_lambda, clip_range=p.clip_range,
        ent_coef=p.ent_coef, vf_coef=p.vf_coef, max_grad_norm=p.max_grad_norm,
        policy_kwargs=policy_kwargs(p), seed=seed, verbose=verbose, device="cpu",
    )
    evals = TrueReturnEvalCallback(eval_env, preset, run_dir / "eval.csv")
    parts = RunParts(model, eval_env, evals, prefs, pretrain_steps=pretrain_steps, session_start=started)
    logs = run_dir / "logs"
    if resumed is not None:
        try:
            parts.restore(resumed["state"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise PrefrlError(f"the checkpoint {checkpoint_path(run_dir)} does not fit these settings "
                              f"({str(exc).splitlines()[0]}); resume with the settings that started the run") from None
        # The interrupted session's log stays as it is; this session logs beside it.
        logs = resumed_logs_dir(run_dir, model.num_timesteps)
        print(f"resuming {run_dir} at step {model.num_timesteps:,} of {p.total_steps:,}", flush=True)
    model.set_logger(configure(str(logs), ["csv", "tensorboard"]))
    stop = StopRequest()
    checkpointer = RunCheckpointer(run_dir, parts, stop, every_steps=checkpoint_steps, every_seconds=checkpoint_seconds,
                                   saved_step=resumed["step"] if resumed is not None else None)
    # The relabeller first: every other rollout-end callback sees the rollout's real
    # rewards. The checkpointer last: it saves what the others did at a rollout start.
    callbacks: list[BaseCallback] = [c for c in (relabeller, evals, prefs) if c is not None]
    if progress:
        callbacks.append(ProgressCallback(p.total_steps, prefs, evals))
    callbacks.append(checkpointer)
    learn_start, learn_cpu_start = time.perf_counter(), time.process_time()
    try:
        with stop:
            model.learn(total_timesteps=max(0, p.total_steps - model.num_timesteps), callback=CallbackList(callbacks),
                        reset_num_timesteps=resumed is None)
    except _Halt as halt:
        _close_run(venv, eval_env, prefs)
        raise RunInterrupted(halt.step, stop.signum or signal.SIGINT, run_dir) from None
    except CheckpointWriteError:
        _close_run(venv, eval_env, prefs)
        raise
    except (PrefrlError, FloatingPointError) as exc:
        # Non-finite values (ours, or the reward model's own check) and any other refusal
        # mid-run: say what happened and what is left to resume from.
        _close_run(venv, eval_env, prefs)
        where = "" if isinstance(exc, NonFiniteError) else f"step {model.num_timesteps:,}: "
        kept = (f"its checkpoint of step {checkpointer.saved_step:,} is kept; fix the cause, then rerun the "
                "same command to resume from it") if checkpointer.saved_step is not None else "no checkpoint was written"
        kind = NonFiniteError if isinstance(exc, (NonFiniteError, FloatingPointError)) else PrefrlError
        raise kind(f"{where}{exc}; the run is stopped, {kept}") from None
    learn_seconds = time.perf_counter() - learn_start
    learn_cpu_seconds = time.process_time() - learn_cpu_start  # all threads of the process
    final_wait = 0.0
    if prefs is not None:
        # The fit started at the last update point belongs to the saved model. Waiting
        # for it happens once per run, after the agent's last step: not in learn_seconds.
        waited = prefs.fitter.wait_seconds
        prefs.finish_fit()
        final_wait = prefs.fitter.wait_seconds - waited
    if evals.next_eval - preset.eval.every_steps < model.num_timesteps:
        evals.evaluate()  # always end with an evaluation of the final policy

    model.save(run_dir / "policy.zip")
    if isinstance(model.get_env(), VecNormalize):
        if scale_in_relabel and learned_env is not None and learned_env.normalizer is not None:
            # Keep the reward statistics the agent was trained with beside the obs statistics.
            model.get_env().ret_rms = copy.deepcopy(learned_env.normalizer.ret_rms)
        model.get_env().save(str(run_dir / "vecnormalize.pkl"))
    labels_used = 0
    if reward_model is not None and prefs is not None:
        reward_model.save(run_dir / "reward_model.pt")
        prefs.store.export_jsonl(run_dir / "labels.jsonl")
        labels_used = prefs.labels_used
    _close_run(venv, eval_env, prefs)

    summary = {
        "task": task, "arm": arm, "seed": seed, "env_steps": int(model.num_timesteps),
        "pretrain_env_steps": int(parts.pretrain_steps), "labels_used": int(labels_used),
        "label_budget": preset.labels.budget if arm == "learned" else 0,
        "final_true_return": evals.last_mean, "wall_seconds": round(parts.elapsed(), 1),
        "learn_seconds": round(learn_seconds, 2), "learn_cpu_seconds": round(learn_cpu_seconds, 2),
        "reward_model": dict(prefs.last_stats) if prefs is not None else {},
    }
    if resumed is not None:
        summary["resumed_at_step"] = int(resumed["step"])  # learn_* seconds: this session only
    if prefs is not None:
        summary["reward_fitting"] = {
            "mode": fit, "fits": prefs.fitter.fits, "fit_seconds": round(prefs.fitter.fit_seconds, 2),
            # Seconds the agent stood still for fitting during learn (inline: every fit;
            # background with Atari prefetching: also inside the relabel seconds).
            "agent_waited_seconds": round(prefs.fitter.wait_seconds - final_wait, 2) if prefs.fitter.background
            else round(prefs.fitter.fit_seconds, 2),
            "final_wait_seconds": round(final_wait, 2),
        }
        summary["relabel"] = {
            "mode": relabel, "seconds": round(relabeller.seconds, 2) if relabeller is not None else None,
        }
    # Last: summary.json marks the run finished (a finished run is never resumed).
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def _close_run(venv: VecEnv, eval_env: VecEnv, prefs: PreferenceCallback | None) -> None:
    """Release the envs (worker processes) and the label store."""
    if prefs is not None:
        prefs.fitter.join()  # a background fit must not outlive its run
        prefs.store.close()
    venv.close()
    eval_env.close()
