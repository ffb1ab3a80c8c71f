"""The preference dataset: the kept labels, their validation split and the gathering
of minibatches of labelled clips for the network.

A :class:`LabelSet` is a snapshot, replaced (never changed) when labels arrive, so a fit
reads one set from start to end while labels arrive from another thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from prefrl.data.segments import ClipPair, Segment
from prefrl.feedback.choices import Preference
from prefrl.util.errors import PrefrlError


class _Label(NamedTuple):
    """One kept label. Run checkpoints pickle these under this module and name (see
    ``PREFRL_CLASSES`` in ``prefrl/rundir/legacy_pickle.py``): keep both.

    :param pair: the two clips
    :param target: probability that the left clip is better (1, 0 or 0.5 for a tie)
    :param is_val: held out for validation
    """

    pair: ClipPair
    target: float
    is_val: bool

    @property
    def left(self) -> Segment:
        return self.pair.left

    @property
    def right(self) -> Segment:
        return self.pair.right


class LabelSet:
    """A snapshot of the kept labels, replaced (never changed) when labels arrive.

    Training reads one snapshot from start to end, so labels may arrive from another
    thread meanwhile without shifting the indices under it.

    :param labels: kept labels, oldest first
    :param clip_length: steps of every clip
    :param obs_shape: observation shape
    :param obs_dtype: storage dtype of gathered observations (uint8 or float32)
    :param want_actions: gather actions too
    :param cache_bytes: copy the clips into contiguous arrays if they fit in this
    """

    def __init__(
        self,
        labels: list[_Label],
        clip_length: int,
        obs_shape: tuple[int, ...],
        obs_dtype: type,
        want_actions: bool,
        cache_bytes: int,
    ) -> None:
        self.labels = labels
        self.clip_length = clip_length
        self.obs_shape = obs_shape
        self.obs_dtype = obs_dtype
        self.want_actions = want_actions
        self.cache_bytes = cache_bytes
        self.targets = torch.tensor([lab.target for lab in labels], dtype=torch.float32)
        self.is_val = np.array([lab.is_val for lab in labels], dtype=bool)
        size = 2 * len(labels) * clip_length * int(np.prod(obs_shape)) * np.dtype(obs_dtype).itemsize
        self._use_cache = size <= cache_bytes
        self._cache: tuple[np.ndarray, np.ndarray | None] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def replaced(self, labels: list[_Label], clip_length: int) -> LabelSet:
        """Another snapshot of the same observation layout holding ``labels``."""
        return LabelSet(labels, clip_length, self.obs_shape, self.obs_dtype, self.want_actions, self.cache_bytes)

    def with_preferences(
        self, prefs: Sequence[Preference], rng: np.random.Generator, validation_fraction: float, max_labels: int
    ) -> LabelSet:
        """A snapshot with ``prefs`` added after the kept labels.

        As many of the new labels as keep the validation share closest to
        ``validation_fraction`` are held out, chosen at random.

        :param prefs: answers with a target (no "can't tell"), oldest first
        :param rng: draws the held-out labels
        :param validation_fraction: wanted share of held-out labels
        :param max_labels: keep only this many newest labels (0 = all)
        :raises PrefrlError: a clip of another observation shape or clip length
        """
        clip_length = self.clip_length
        for pref in prefs:
            length = len(pref.pair.left)
            if tuple(pref.pair.left.observations.shape[1:]) != self.obs_shape:
                raise PrefrlError(
                    f"preference {pref.pair.pair_id!r}: observations {pref.pair.left.observations.shape[1:]} "
                    f"do not match the reward model's {self.obs_shape}; its clips were recorded "
                    "from another task or observation settings: give clips of this task"
                )
            if clip_length == 0:
                clip_length = length
            elif length != clip_length:
                raise PrefrlError(
                    f"preference {pref.pair.pair_id!r}: clip length {length} differs from the "
                    f"{clip_length} steps of the earlier labels; use one task.clip_length per run"
                )
        n_new = len(prefs)
        wanted_val = round((len(self) + n_new) * validation_fraction) - int(self.is_val.sum())
        n_new_val = min(max(wanted_val, 0), n_new)
        is_val = np.zeros(n_new, dtype=bool)
        is_val[rng.choice(n_new, size=n_new_val, replace=False)] = True
        labels = self.labels + [
            _Label(p.pair, float(p.choice.target), bool(v))  # type: ignore[arg-type]
            for p, v in zip(prefs, is_val)
        ]
        if max_labels > 0:
            labels = labels[max(0, len(labels) - max_labels) :]
        return self.replaced(labels, clip_length)

    def _cached(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._cache is None:
            pairs = self.labels
            obs = np.stack([np.stack((lab.left.observations, lab.right.observations)) for lab in pairs])
            act = None
            if self.want_actions:
                act = np.stack([np.stack((lab.left.actions, lab.right.actions)) for lab in pairs])
            self._cache = (obs.astype(self.obs_dtype, copy=False), act)
        return self._cache

    def gather(self, idx: np.ndarray, frames: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Observations and actions of labelled pairs.

        :param idx: ``(M, B)`` label indices (each member its own)
        :param frames: ``(M, B, k)`` step indices used for both clips of a pair, or None
        :return: ``(M, B, 2, k, *obs_shape)`` observations and matching actions (or None)
        """
        if self._use_cache:
            all_obs, all_act = self._cached()
            if frames is None:
                return all_obs[idx], (all_act[idx] if all_act is not None else None)
            pick = (idx[:, :, None, None], np.arange(2)[None, None, :, None], frames[:, :, None, :])
            return all_obs[pick], (all_act[pick] if all_act is not None else None)
        # Large (image) label sets: copy only the frames of this minibatch out of the
        # segments, so Atari labels are not held twice in memory. The loop runs over
        # pairs but only moves memory; the network still sees one batch.
        steps = self.clip_length if frames is None else frames.shape[-1]
        flat = idx.reshape(-1)
        flat_frames = None if frames is None else frames.reshape(len(flat), steps)
        obs = np.empty((len(flat), 2, steps, *self.obs_shape), dtype=self.obs_dtype)
        act: np.ndarray | None = None
        for j, i in enumerate(flat.tolist()):
            lab = self.labels[i]
            sel = slice(None) if flat_frames is None else flat_frames[j]
            obs[j, 0] = lab.left.observations[sel]
            obs[j, 1] = lab.right.observations[sel]
            if self.want_actions:
                if act is None:
                    act = np.empty((len(flat), 2, steps, *lab.left.actions.shape[1:]), dtype=lab.left.actions.dtype)
                act[j, 0] = lab.left.actions[sel]
                act[j, 1] = lab.right.actions[sel]
        shape = (*idx.shape, 2, steps)
        return obs.reshape(*shape, *self.obs_shape), (
            act.reshape(*shape, *act.shape[3:]) if act is not None else None
        )

