"""Fitting the reward ensemble to preferences: bootstrap resamples, minibatch Adam steps
with an L2 penalty, then an evaluation that adapts the L2 strength.

Each member trains on its own bootstrap resample of the training labels (Christiano et
al., 2017). Every minibatch of ``batch_size`` pairs per member is one forward and one
backward of the batched network for all members; the loss is computed for all
members, pairs and frames at once (no loop over pairs in Python).
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import torch
from torch import Tensor

from prefrl.config.settings import RewardSettings
from prefrl.reward.dataset import LabelSet
from prefrl.reward.inference import RawRewardScorer
from prefrl.reward.losses import adapt_l2, preference_loss, preference_probability, uses_frame_subset
from prefrl.reward.nets import EnsembleMLP, RewardNet, in_mode

#: At most this many in-bag pairs per member, and this many held-out pairs, are scored
#: after each ``fit`` (enough for the L2 ratio; bounds the cost on Atari, where
#: scoring a pair runs the CNN on all 50 frames of its clips).
MAX_EVAL_PAIRS = 512


def refit_minibatches(n_train: int, epochs: int, batch_size: int, max_pairs: int = 0) -> int:
    """Minibatches of one ``RewardModel.train`` call: whole epochs over ``n_train``
    labels, or, with ``max_pairs > 0``, at most as many as cover that many pairs (at
    least one)."""
    budget = epochs * math.ceil(n_train / batch_size)
    if max_pairs > 0:
        budget = min(budget, max(1, math.ceil(max_pairs / batch_size)))
    return budget


def evaluation_sizes(n_inbag: int, n_val: int, batch_size: int) -> tuple[int, int]:
    """``(in-bag, held-out)`` pairs scored after a ``train`` call: as many held-out
    pairs as there are, at most ``MAX_EVAL_PAIRS``; in-bag as many as that, at least one
    minibatch, at most the bootstrap sample."""
    held_out = min(n_val, MAX_EVAL_PAIRS)
    return min(n_inbag, max(held_out, batch_size)), held_out


class BootstrapTrainer:
    """Fits the members of ``net`` to a :class:`LabelSet`; holds the optimizer and the
    adaptive L2 strength.

    :param net: the ensemble to train (shared with the reward model, which predicts with it)
    :param settings: the reward section of a preset
    :param rng: source of the bootstrap resamples, minibatch orders, frame subsets and
        evaluation subsets (shared with the label split, so draws stay in one sequence)
    :param lock: held per minibatch, so a prediction of the reward model waits for at
        most one step
    :param scorer: scores the held-out clips (eval mode, in batches)
    """

    def __init__(
        self,
        net: RewardNet,
        settings: RewardSettings,
        rng: np.random.Generator,
        lock: threading.RLock,
        scorer: RawRewardScorer,
    ) -> None:
        self.net = net
        self.settings = settings
        self.rng = rng
        self.lock = lock
        self.scorer = scorer
        self.optimizer = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
        #: the L2 coefficient, adapted after each fit (see :func:`adapt_l2`)
        self.l2 = float(settings.initial_l2)
        #: completed :meth:`fit` calls
        self.train_calls = 0

    def fit(self, data: LabelSet, epochs: int | None = None, max_pairs: int = 0) -> dict[str, float]:
        """Fit the ensemble to the labels of ``data``, then adapt the L2 strength.

        The objective of each member is its mean preference loss plus ``l2`` times its
        squared weights. Arguments and return value: see ``RewardModel.train``.
        """
        start_time = time.perf_counter()
        s = self.settings
        epochs = s.epochs_per_update if epochs is None else int(epochs)
        m = self.net.n_members
        if isinstance(self.net, EnsembleMLP) and len(data) > 0 and epochs > 0:
            # Re-standardise the inputs on the clips of the kept labels, then refit.
            with self.lock:
                self.net.set_input_statistics(np.concatenate(
                    [np.concatenate((lab.left.observations, lab.right.observations)) for lab in data.labels]
                ))
        train_idx = np.flatnonzero(~data.is_val)
        val_idx = np.flatnonzero(data.is_val)
        n_train = len(train_idx)
        l2_used = self.l2
        fit_loss = math.nan
        steps = 0
        fit_seconds = 0.0
        boot = np.zeros((m, 0), dtype=np.int64)
        if n_train > 0 and epochs > 0:
            boot = train_idx[self.rng.integers(0, n_train, size=(m, n_train))]
            fit_start = time.perf_counter()
            budget = refit_minibatches(n_train, epochs, s.batch_size, max_pairs)
            while steps < budget:
                order = self.rng.permuted(boot, axis=1)
                losses = []
                for start in range(0, n_train, s.batch_size):
                    if steps >= budget:
                        break
                    idx = order[:, start : start + s.batch_size]
                    frames = self._draw_frames(idx.shape, data.clip_length)
                    losses.append(self._step(data, idx, frames))
                    steps += 1
                fit_loss = float(np.mean(losses))
            fit_seconds = time.perf_counter() - fit_start
        elif n_train > 0:
            # No epochs: still draw the resample, the evaluation scores its in-bag labels.
            boot = train_idx[self.rng.integers(0, n_train, size=(m, n_train))]
        with self.lock:
            train_loss, val_loss, val_accuracy = self._evaluate(data, boot, val_idx)
        self.l2 = adapt_l2(self.l2, train_loss, val_loss, s.l2_ratio_low, s.l2_ratio_high)
        self.train_calls += 1
        return {
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "l2": self.l2,
            "l2_used": l2_used,
            "fit_loss": fit_loss,
            "n_train": n_train,
            "n_val": len(val_idx),
            "steps": steps,
            "fit_seconds": fit_seconds,
            "seconds": time.perf_counter() - start_time,
        }

    def _step(self, data: LabelSet, idx: np.ndarray, frames: np.ndarray | None) -> float:
        """One Adam step on the pairs ``idx`` (``(M, B)``, each member its own);
        :return: the data loss (without the penalty)."""
        s = self.settings
        with self.lock, in_mode(self.net, True):
            left, right = self.pair_returns(data, idx, frames)
            targets = data.targets[torch.as_tensor(idx)]
            data_loss = preference_loss(left, right, targets, s.random_answer_prob)
            # data_loss averages over members, so the summed penalty is
            # divided by M to keep each member's own balance.
            loss = data_loss + (self.l2 / self.net.n_members) * self._penalty()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return float(data_loss.detach())

    def _penalty(self) -> Tensor:
        return sum((p.square().sum() for p in self.net.penalised_parameters()), torch.zeros(()))

    def _draw_frames(self, shape: tuple[int, int], clip_length: int) -> np.ndarray | None:
        k = self.settings.frames_per_clip
        if not uses_frame_subset(k, clip_length):
            return None
        # k distinct steps per pair (shared by its two clips), independent across pairs.
        return np.argsort(self.rng.random((*shape, clip_length)), axis=-1)[..., :k]

    def pair_returns(self, data: LabelSet, idx: np.ndarray, frames: np.ndarray | None) -> tuple[Tensor, Tensor]:
        """Raw predicted returns ``(M, B)`` of the left and right clips, one net call.

        With a frame subset the sum over ``k`` frames is scaled by ``T / k`` so that it
        estimates the full clip's return.

        :param data: the labels
        :param idx: ``(M, B)`` label indices, each member its own
        :param frames: ``(M, B, k)`` step indices used for both clips of a pair, or None
        """
        obs, act = data.gather(idx, frames)
        m, b, _, k = obs.shape[:4]
        out = self.net(
            self.net.observations_tensor(obs).reshape(m, b * 2 * k, *self.net.observation_shape),
            None if act is None else self.net.actions_tensor(act).reshape(m, b * 2 * k, *act.shape[4:]),
        )
        sums = out.reshape(m, b, 2, k).sum(-1)
        if k != data.clip_length:
            sums = sums * (data.clip_length / k)
        return sums[..., 0], sums[..., 1]

    @torch.no_grad()
    def _evaluate(self, data: LabelSet, boot: np.ndarray, val_idx: np.ndarray) -> tuple[float, float, float]:
        """In-bag training loss, validation loss and accuracy, eval mode, all frames.

        The training loss uses each member's own bootstrap sample (in-bag labels; a
        subsample as large as the validation set, at least one minibatch, at most
        ``MAX_EVAL_PAIRS``), so that ``val_loss / train_loss`` measures each
        member's overfitting. More held-out labels than ``MAX_EVAL_PAIRS`` are scored on
        a random subset of that size.
        """
        s = self.settings
        train_loss = val_loss = val_accuracy = math.nan
        size, held_out = evaluation_sizes(boot.shape[1], len(val_idx), s.batch_size)
        with in_mode(self.net, False):
            if boot.shape[1] > 0:
                cols = self.rng.choice(boot.shape[1], size=size, replace=False)
                idx = boot[:, cols]
                total = 0.0
                for start in range(0, size, s.batch_size):
                    chunk = idx[:, start : start + s.batch_size]
                    left, right = self.pair_returns(data, chunk, None)
                    loss = preference_loss(left, right, data.targets[torch.as_tensor(chunk)], s.random_answer_prob)
                    total += float(loss) * chunk.shape[1]
                train_loss = total / size
            if held_out < len(val_idx):  # a random subset estimates the held-out loss
                val_idx = np.sort(self.rng.choice(val_idx, size=held_out, replace=False))
            if len(val_idx) > 0:
                segments = [data.labels[i].left for i in val_idx] + [data.labels[i].right for i in val_idx]
                returns = self.scorer.segment_returns(segments)
                left, right = returns[:, : len(val_idx)], returns[:, len(val_idx) :]
                targets = data.targets[torch.as_tensor(val_idx)]
                val_loss = float(preference_loss(left, right, targets, s.random_answer_prob))
                prob = preference_probability(left, right, s.random_answer_prob).mean(0)
                decided = targets != 0.5
                if bool(decided.any()):
                    val_accuracy = float(((prob > 0.5) == (targets > 0.5))[decided].float().mean())
        return train_loss, val_loss, val_accuracy
