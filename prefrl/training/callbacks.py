"""The SB3 callbacks of a run, one job each: :class:`PreferenceCallback` (query rounds and
reward refits), :class:`TrueReturnEvalCallback` (the true-return curve, as SB3's
``EvalCallback`` but on the task's real rules) and :class:`ProgressCallback` (the bar).
The checkpoint callback is :class:`prefrl.training.checkpointing.RunCheckpointer`.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from prefrl.config.settings import Preset
from prefrl.data.segments import ClipPair, Segment, SegmentBuffer
from prefrl.feedback.choices import Preference
from prefrl.feedback.queries import draw_queries, make_selector
from prefrl.feedback.schedule import LabelSchedule
from prefrl.feedback.store import LabelStore
from prefrl.feedback.teachers import Teacher
from prefrl.reward.fitter import RewardFitter
from prefrl.reward.model import RewardModel
from prefrl.reward.vec_env import LearnedRewardVecEnv
from prefrl.training.checkpointing import NonFiniteError
from prefrl.util.atomic import atomic_write_text

EVAL_COLUMNS = ["step", "mean_true_return", "std_true_return", "episodes", "mean_length"]


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
            "teacher": self.teacher.run_state(),
            "buffer": self.buffer.run_state(),  # itself, pickled at once: segments shared with labels
        }

    def load_run_state(self, state: dict[str, Any]) -> None:
        self.asked, self.labels_used = int(state["asked"]), int(state["labels_used"])
        self.next_query_id = int(state.get("next_query_id", self.asked))
        self.next_update, self.last_stats = int(state["next_update"]), dict(state["last_stats"])
        # In place: the query selectors hold this very generator.
        self.rng.bit_generator.state = state["rng"]
        self.reward_model.load_run_state(self._labels_from_store(state["reward_model"]))
        self.fitter.load_run_state(state["fitter"])
        self.teacher.load_run_state(state["teacher"])
        self.buffer.load_run_state(state["buffer"])
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
        stored = self.store.pair_ids()
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
            recent_since=step - self.preset.labels.query_window if self.preset.labels.query_window > 0 else None,
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
