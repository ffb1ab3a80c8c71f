"""The learned arm of a run, built in the order its parts depend on each other: segment
buffer and recorder on the env with the true reward, the reward ensemble and its fitter,
the reward-replacing wrapper, the label store, the teacher and the query rounds; then,
for a new run, the reward model pretrained before PPO learns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from prefrl.config.settings import Preset
from prefrl.data.recorder import SegmentRecorder
from prefrl.data.segments import SegmentBuffer
from prefrl.feedback.schedule import LabelSchedule
from prefrl.feedback.store import LabelStore
from prefrl.feedback.teachers import make_teacher
from prefrl.reward.fitter import RewardFitter
from prefrl.reward.model import RewardModel
from prefrl.reward.vec_env import LearnedRewardVecEnv, ReturnNormalizer, RolloutRelabelCallback
from prefrl.training.callbacks import PreferenceCallback
from prefrl.training.options import RunOptions
from prefrl.training.pretraining import pretrain_from_fixed_labels, pretrain_from_initial_labels


@dataclass(frozen=True)
class LearnedArm:
    """The learned arm's parts: the reward wrapper PPO steps, its relabelling callback
    (``relabel="rollout"``), the query rounds and the pretraining's env steps."""

    env: LearnedRewardVecEnv
    relabeller: RolloutRelabelCallback | None
    prefs: PreferenceCallback
    pretrain_steps: int


def build_learned_arm(preset: Preset, opts: RunOptions, venv: VecEnv, rng: np.random.Generator,
                      record_frames: bool, resuming: bool) -> LearnedArm:
    """Build the learned arm on ``venv`` (the env with the true reward) and, for a new
    run, pretrain the reward model (a resumed run takes the model, its labels and the
    segments from the checkpoint)."""
    p = preset.ppo
    buffer = SegmentBuffer(preset.task.clip_length, p.n_envs, preset.labels.segment_buffer_size)
    recorder = SegmentRecorder(venv, buffer, record_frames=record_frames)
    reward_model = RewardModel(venv.observation_space, venv.action_space, preset.reward, seed=opts.seed)
    fitter = RewardFitter(reward_model, buffer, mode=opts.fit, threads=opts.fit_threads)
    # Deferred relabelling takes over VecNormalize's reward scaling (replayed per rollout).
    scale_in_relabel = opts.relabel == "rollout" and p.normalize_rewards
    learned_env = LearnedRewardVecEnv(
        recorder, fitter.guard(reward_model.predict), deferred=opts.relabel == "rollout",
        normalizer=ReturnNormalizer(p.n_envs, p.gamma) if scale_in_relabel else None,
        # The Atari CNN costs ~1 ms a frame: label chunks of ~inference_batch frames in a
        # worker while the rollout goes on. The MLP's whole rollout takes ~1 ms at the end.
        prefetch_steps=max(1, reward_model.inference_batch // p.n_envs)
        if opts.relabel == "rollout" and preset.reward.architecture == "atari_cnn" else 0,
    )
    relabeller = RolloutRelabelCallback(learned_env) if learned_env.deferred else None
    opts.paths.clips_dir.mkdir(parents=True, exist_ok=True)
    store = LabelStore(opts.paths.clips_dir, preset.task.name)
    # The termination penalty is already in the recorded (training) reward: see envs.py.
    teacher = make_teacher(opts.teacher_kind, preset.teacher, opts.seed, termination_penalty=0.0, store=store)
    schedule = LabelSchedule(preset.labels.budget, preset.labels.initial_labels,
                             preset.labels.rate_constant, p.total_steps)
    prefs = PreferenceCallback(preset=preset, reward_model=reward_model, teacher=teacher, store=store, buffer=buffer,
                               schedule=schedule, learned_env=learned_env, rng=rng, fitter=fitter)
    pretrain_steps = 0
    if resuming:
        pass  # the reward model, its labels and the segments come from the checkpoint
    elif opts.labels_from is not None:
        pretrain_steps = pretrain_from_fixed_labels(prefs, opts.labels_from, recorder)
    else:
        pretrain_steps = pretrain_from_initial_labels(prefs, recorder, opts.progress)
    return LearnedArm(learned_env, relabeller, prefs, pretrain_steps)
