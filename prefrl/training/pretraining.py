"""Before PPO learns (learned arm): segments of a random policy, the first labels, and the
reward ensemble pretrained on them, so the agent's first rewards already mean something.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from prefrl.data.recorder import SegmentRecorder
from prefrl.feedback.choices import Choice
from prefrl.feedback.store import LabelStore
from prefrl.reward.fitter import fit_reward_model
from prefrl.training.callbacks import PreferenceCallback
from prefrl.util.errors import PrefrlError


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
