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
import json
import os
import platform
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

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

from prefrl.envs import make_env
from prefrl.errors import PrefrlError
from prefrl.labels import LabelSchedule, LabelStore, Preference
from prefrl.presets import Preset
from prefrl.queries import draw_queries, make_selector
from prefrl.reward import RewardModel
from prefrl.segments import Segment, SegmentBuffer
from prefrl.teachers import Teacher, make_teacher
from prefrl.vec_wrappers import (
    DeferredRewardVecNormalize,
    LearnedRewardVecEnv,
    ReturnNormalizer,
    RewardFn,
    SegmentRecorder,
)

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
        return env

    return factory


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
    factories = [_env_factory(preset, evaluation, clip_reward, record_frames) for _ in range(n_envs)]
    if preset.ppo.vec_env == "subproc" and n_envs > 1:
        venv: VecEnv = SubprocVecEnv(factories)
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
        rewards = self.learned_env.relabel()
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

    def start(self, epochs: int) -> None:
        """Fit ``epochs`` epochs now (inline) or in a thread."""
        if self._thread is not None:
            raise RuntimeError("RewardFitter.start: the previous fit was not waited for")
        recent = list(self.buffer.segments)[-NORMALIZATION_SEGMENTS:]
        self.fits += 1
        self._result = self._error = None
        if not self.background:
            self._fit(epochs, recent, set_threads=False)
            return
        if self.mode == "lagged":
            self.reward_model.freeze_predictions()
        self._thread = threading.Thread(
            target=self._fit, args=(epochs, recent, True), name="prefrl-reward-fit", daemon=True
        )
        self._thread.start()

    def _fit(self, epochs: int, recent: list[Segment], set_threads: bool) -> None:
        start = time.perf_counter()
        try:
            if set_threads:
                torch.set_num_threads(self.threads)  # per thread: PPO's own count is untouched
            self._result = fit_reward_model(self.reward_model, recent, epochs)
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
        if self._thread is not None:
            self.join()
            self._thread = None
            if self.mode == "lagged":
                self.reward_model.thaw_predictions()
        result, error = self._result, self._error
        self._result = self._error = None
        if error is not None:
            raise error
        return result


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
            self.fitter.start(self.preset.reward.epochs_per_update)
            if not self.fitter.background:
                self.finish_fit()
        for key, value in self.last_stats.items():
            self.logger.record(f"reward/{key}", value)
        self.logger.record("labels/used", self.labels_used)
        self.logger.record("labels/asked", self.asked)
        self.logger.record("labels/pending", self.teacher.pending())
        if self.learned_env.learned_episode_returns:
            self.logger.record("rollout/learned_ep_return", float(np.mean(self.learned_env.learned_episode_returns)))

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
            preference_probabilities=self.reward_model.preference_probabilities if trained else None, prefix="q", first_id=self.asked,
        )
        self.store.add_pairs(queries)
        self.teacher.ask(queries, step)
        self.asked += len(queries)
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
    reward_model: RewardModel, segments: SegmentBuffer | Sequence[Segment], epochs: int
) -> dict[str, float]:
    """Train the ensemble, renormalise it on recent segments, and measure how well its
    segment returns follow the true ones (for the log only; never used for training).

    :param segments: the segment buffer, or the recent segments themselves (a snapshot)
    """
    stats = dict(reward_model.train(epochs))
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
        with open(csv_path, "w", newline="") as fh:
            csv.writer(fh).writerow(EVAL_COLUMNS)

    def _on_training_start(self) -> None:
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
        mean, std = float(np.mean(returns)), float(np.std(returns))
        with open(self.csv_path, "a", newline="") as fh:
            csv.writer(fh).writerow([self.num_timesteps, mean, std, len(returns), float(np.mean(lengths))])
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
    from prefrl.labels import Choice

    source = LabelStore(clips_dir, prefs.preset.task.name)
    try:
        preferences = [
            Preference(pair=source.load_pair(pair_id), choice=choice, labeller=labeller)
            for _, pair_id, choice, labeller, _ in source.labels_after(0)
        ]
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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


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
    fit: str = "background",
    fit_threads: int = 1,
) -> dict[str, Any]:
    """Train one run and return its summary (also written to ``summary.json``).

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
        from the previous weights until the next update point); all deterministic
    :param fit_threads: torch threads of the background fit
    """
    if arm not in ARMS:
        raise PrefrlError(f"unknown arm '{arm}'; use one of {', '.join(ARMS)}")
    if relabel not in RELABEL_MODES:
        raise PrefrlError(f"unknown relabel mode '{relabel}'; use one of {', '.join(RELABEL_MODES)}")
    if fit not in FIT_MODES:
        raise PrefrlError(f"unknown fit mode '{fit}'; use one of {', '.join(FIT_MODES)}")
    task = preset.task.name
    paths = paths or default_paths(task, arm, seed)
    run_dir = paths.run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        raise PrefrlError(f"run directory '{run_dir}' already holds a run; give a new --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    # Seeding: one block, everything derives from `seed`.
    random.seed(seed)
    np.random.seed(seed)
    set_random_seed(seed)
    rng = np.random.default_rng(seed)
    if preset.ppo.torch_threads > 0:
        torch.set_num_threads(preset.ppo.torch_threads)

    config = {
        "task": task, "arm": arm, "seed": seed, "teacher": teacher_kind if arm == "learned" else None,
        "run_dir": str(run_dir), "clips_dir": str(paths.clips_dir) if arm == "learned" else None,
        "relabel": relabel if arm == "learned" else None, "fit": fit if arm == "learned" else None,
        "preset": preset.to_dict(), "python": platform.python_version(), "torch": torch.__version__,
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    _write_json(run_dir / "config.json", config)

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
        if labels_from is not None:
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
        policy_kwargs={"net_arch": list(p.net_arch)} if p.policy == "MlpPolicy" else None,
        seed=seed, verbose=verbose, device="cpu",
    )
    model.set_logger(configure(str(run_dir / "logs"), ["csv", "tensorboard"]))
    evals = TrueReturnEvalCallback(eval_env, preset, run_dir / "eval.csv")
    # The relabeller first: every other rollout-end callback sees the rollout's real rewards.
    callbacks: list[BaseCallback] = [c for c in (relabeller, evals, prefs) if c is not None]
    if progress:
        callbacks.append(ProgressCallback(p.total_steps, prefs, evals))
    learn_start, learn_cpu_start = time.perf_counter(), time.process_time()
    model.learn(total_timesteps=p.total_steps, callback=CallbackList(callbacks))
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
        prefs.store.close()
        labels_used = prefs.labels_used
    venv.close()
    eval_env.close()

    summary = {
        "task": task, "arm": arm, "seed": seed, "env_steps": int(model.num_timesteps),
        "pretrain_env_steps": int(pretrain_steps), "labels_used": int(labels_used),
        "label_budget": preset.labels.budget if arm == "learned" else 0,
        "final_true_return": evals.last_mean, "wall_seconds": round(time.time() - started, 1),
        "learn_seconds": round(learn_seconds, 2), "learn_cpu_seconds": round(learn_cpu_seconds, 2),
        "reward_model": dict(prefs.last_stats) if prefs is not None else {},
    }
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
    _write_json(run_dir / "summary.json", summary)
    return summary
