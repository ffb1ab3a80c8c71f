"""The learned reward: a bootstrap ensemble of reward predictors fitted to preferences.

An ensemble of predictors, each trained on its own bootstrap resample of the labels
(:mod:`prefrl.reward.trainer`) and normalised separately, is averaged to give the reward
the agent sees. :class:`RewardModel` is the training loop's only interface to rewards:
it keeps the labels (:mod:`prefrl.reward.dataset`), has the trainer fit the batched
network (:mod:`prefrl.reward.nets`) to them, predicts in batches without gradients,
normalises each member's output and saves itself (:mod:`prefrl.reward.serialisation`).
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from prefrl.config.settings import RewardSettings
from prefrl.data.segments import ClipPair, Segment
from prefrl.feedback.choices import Choice, Preference
from prefrl.reward.dataset import LabelSet
from prefrl.reward.inference import RawRewardScorer
from prefrl.reward.losses import preference_probability
from prefrl.reward.nets import RewardNet, make_reward_net
from prefrl.reward.serialisation import (
    CHECKPOINT_FORMAT,
    check_fits,
    describe_space,
    read_checkpoint,
    settings_from_checkpoint,
    space_from_description,
    write_checkpoint,
)
from prefrl.reward.trainer import BootstrapTrainer
from prefrl.util.errors import PrefrlError


def _finite(rewards: np.ndarray) -> np.ndarray:
    """``rewards`` if every one is a number, else a :class:`PrefrlError`: one NaN would
    poison the agent's returns and advantages for the rest of the run.

    :param rewards: predicted rewards, any shape
    """
    if np.isfinite(rewards).all():
        return rewards
    bad = int(np.size(rewards) - np.isfinite(rewards).sum())
    raise PrefrlError(
        f"the reward model predicted non-finite rewards (nan or inf) for {bad} of {np.size(rewards)} steps: its "
        "training diverged or the observations hold nan/inf; lower reward.learning_rate or check the environment"
    )


class RewardModel:
    """The ensemble, its labels, its training and its normalised predictions.

    All randomness (initial weights, validation split, bootstrap resamples,
    minibatches, frame subsets, dropout) comes from generators seeded with ``seed``:
    the same seed and the same calls give the same weights. Torch's global RNG state
    and thread count are left as they were.

    :param observation_space: the env's observation space (Atari: ``(C, 84, 84)`` uint8)
    :param action_space: the env's action space
    :param settings: the reward section of a preset
    :param seed: seed of every random choice of the model
    :param channels_last: CNN only: channels-last memory format (measured faster on CPU,
        see ``scripts/benchmark_reward.py``)
    :param inference_batch: frames per network call when predicting (``None``: 128
        for images, 16384 for vectors; on CPU larger image batches are slower per
        frame, their activations no longer fit in cache)
    :param cache_bytes: copy the labelled clips into contiguous arrays when they take
        at most this many bytes (fast vectorised minibatch gathering for small
        observations); above it minibatches are gathered from the segments
        themselves, so Atari labels are not held twice in memory
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        settings: RewardSettings,
        seed: int,
        channels_last: bool = True,
        inference_batch: int | None = None,
        cache_bytes: int = 256 * 2**20,
    ) -> None:
        self.settings = settings
        self.observation_space = observation_space
        self.action_space = action_space
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        self._torch_generator = torch.Generator().manual_seed(self.seed)
        self.net = make_reward_net(
            observation_space, action_space, settings, generator=self._torch_generator, channels_last=channels_last
        )
        self.observation_shape = self.net.observation_shape
        self.cache_bytes = int(cache_bytes)
        m = settings.ensemble_size
        self.norm_mean = torch.zeros(m)
        self.norm_std = torch.ones(m)
        self._data = LabelSet(
            [], 0, self.observation_shape, self.net.storage_dtype, self.net.uses_actions, self.cache_bytes
        )
        # One lock for the network, the labels and the generators: training may run in
        # a background thread while the env wrapper predicts and labels arrive. It is
        # held per minibatch, so a prediction waits for at most one step.
        self._lock = threading.RLock()
        image = observation_space.dtype == np.uint8
        self.scorer = RawRewardScorer(self.net, self._lock, inference_batch or (128 if image else 16384))
        self.trainer = BootstrapTrainer(self.net, settings, self._rng, self._lock, self.scorer)
        self.net.eval()  # the resting state: ready to predict
        # (net, norm_mean, norm_std) that predict() serves while frozen, see freeze_predictions.
        self._frozen: tuple[RewardNet, Tensor, Tensor] | None = None
        self._frozen_net: RewardNet | None = None

    # ---------------------------------------------------------------- properties

    @property
    def n_members(self) -> int:
        return self.net.n_members

    @property
    def inference_batch(self) -> int:
        """Frames per network call when predicting."""
        return self.scorer.inference_batch

    @property
    def n_labels(self) -> int:
        """Labels kept (training and validation)."""
        return len(self._data)

    @property
    def n_train(self) -> int:
        return int((~self._data.is_val).sum())

    @property
    def n_val(self) -> int:
        return int(self._data.is_val.sum())

    @property
    def labels(self) -> list[tuple[ClipPair, float, bool]]:
        """``(pair, target, is_validation)`` of each kept label, oldest first."""
        return [(lab.pair, lab.target, lab.is_val) for lab in self._data.labels]

    @property
    def l2(self) -> float:
        """The current L2 coefficient (adapted after each :meth:`train`)."""
        return self.trainer.l2

    @l2.setter
    def l2(self, value: float) -> None:
        self.trainer.l2 = float(value)

    @property
    def train_calls(self) -> int:
        """Completed :meth:`train` calls."""
        return self.trainer.train_calls

    # ---------------------------------------------------------------- labels and training

    def add_preferences(self, prefs: Sequence[Preference]) -> int:
        """Add new labels; "can't tell" answers are dropped.

        A share ``validation_fraction`` of the labels is held out: each call picks, at
        random, as many new labels for validation as keep the kept labels' validation
        share closest to that fraction. Only the newest ``label_buffer_size`` labels
        are kept (0 = all).

        :param prefs: answers, oldest first
        :return: number of labels added
        """
        usable = [p for p in prefs if p.choice is not Choice.CANT_TELL and p.choice.target is not None]
        if not usable:
            return 0
        with self._lock:
            self._data = self._data.with_preferences(
                usable, self._rng, self.settings.validation_fraction, self.settings.label_buffer_size
            )
        return len(usable)

    def train(self, epochs: int | None = None, max_pairs: int = 0) -> dict[str, float]:
        """Fit the ensemble to the kept labels, then adapt the L2 strength.

        Each member trains on a fresh bootstrap resample (as many draws as training
        labels) of the training labels. Every minibatch of ``batch_size`` pairs per
        member is one forward and one backward for all members. The objective of each
        member is its mean preference loss plus ``l2`` times its squared weights.

        :param epochs: passes over the training labels (default ``epochs_per_update``)
        :param max_pairs: stop after this many pairs per member (whole minibatches, the
            last epoch then covers a random part of the resample); 0 = no cap. A refit
            with a cap costs the same however many labels have arrived, so a slow
            network (the Atari CNN on a CPU) keeps pace with PPO (``max_pairs_per_update``)
        :return: ``train_loss`` (in-bag, eval mode), ``val_loss``, ``val_accuracy``
            (non-tie held-out labels, ensemble mean probability), ``l2`` (after
            adaptation), ``l2_used``, ``fit_loss`` (mean minibatch loss of the last
            epoch), ``n_train``, ``n_val``, ``steps`` (optimizer steps), ``fit_seconds``
            (the epochs alone), ``seconds`` (with evaluation);
            metrics that cannot be computed are NaN
        """
        return self.trainer.fit(self._data, epochs, max_pairs)  # one snapshot of the labels for the whole call

    # ---------------------------------------------------------------- prediction

    def _normalised_rewards(self, observations: np.ndarray, actions: np.ndarray | None) -> Tensor:
        """``(M, N)`` normalised rewards (weights and statistics of the same moment)."""
        frozen = self._frozen
        if frozen is not None:
            net, mean, std = frozen
            raw = self.scorer.step_rewards(observations, actions, net)
            return (raw - mean[:, None]) / std[:, None] * self.settings.output_std
        with self._lock:
            raw = self.scorer.step_rewards(observations, actions)
            return (raw - self.norm_mean[:, None]) / self.norm_std[:, None] * self.settings.output_std

    def freeze_predictions(self) -> None:
        """Serve :meth:`predict` and :meth:`member_rewards` from a copy of the current
        weights and output normalisation until :meth:`thaw_predictions`.

        Training can then run in another thread while the agent's rewards keep coming
        from one fixed model, so they do not depend on how far training has got (a run
        stays deterministic) and prediction never waits for a training minibatch.
        Everything else (segment returns, preference probabilities, normalisation
        updates) keeps using the live, trained network.
        """
        with self._lock:
            if self._frozen_net is None:
                # A throwaway generator: building the copy must not draw from torch's global RNG.
                self._frozen_net = make_reward_net(
                    self.observation_space, self.action_space, self.settings,
                    generator=torch.Generator().manual_seed(0),
                    channels_last=bool(getattr(self.net, "channels_last", True)),
                )
                self._frozen_net.requires_grad_(False)
            self._frozen_net.load_state_dict(self.net.state_dict())
            self._frozen_net.eval()
            self._frozen = (self._frozen_net, self.norm_mean.clone(), self.norm_std.clone())

    def thaw_predictions(self) -> None:
        """Predict with the live network again (see :meth:`freeze_predictions`)."""
        self._frozen = None

    @property
    def predictions_frozen(self) -> bool:
        return self._frozen is not None

    def member_rewards(self, observations: np.ndarray, actions: np.ndarray | None = None) -> np.ndarray:
        """Normalised reward of every member for each step.

        :param observations: ``(N, *obs_shape)`` as the env gives them
        :param actions: ``(N, *action_shape)`` (``(N,)`` for discrete actions)
        :return: ``(M, N)`` float32
        """
        return _finite(self._normalised_rewards(observations, actions).numpy().astype(np.float32))

    def predict(self, observations: np.ndarray, actions: np.ndarray | None = None) -> np.ndarray:
        """The learned reward: mean over members of the normalised rewards.

        :param observations: ``(N, *obs_shape)`` as the env gives them (uint8 images or
            float vectors)
        :param actions: ``(N, *action_shape)`` (``(N,)`` for discrete actions)
        :return: ``(N,)`` float32
        """
        return _finite(self._normalised_rewards(observations, actions).mean(0).numpy().astype(np.float32))

    @torch.no_grad()
    def update_normalization(
        self, observations: np.ndarray, actions: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fit each member's output normalisation on a sample of recent inputs.

        Afterwards each member's rewards on these inputs have mean 0 and standard
        deviation ``output_std``; the statistics are part of checkpoints.

        :param observations: ``(N, *obs_shape)``, e.g. the steps of the segment buffer
        :param actions: matching actions
        :return: per-member raw ``(mean, std)``
        """
        if len(observations) == 0:
            raise PrefrlError("update_normalization needs at least one input step")
        with self._lock:
            raw = self.scorer.step_rewards(observations, actions)
            self.norm_mean = raw.mean(1)
            # A constant member (e.g. before training) must not divide by zero.
            self.norm_std = raw.std(1, unbiased=False).clamp_min(1e-8)
            return self.norm_mean.numpy().copy(), self.norm_std.numpy().copy()

    @torch.no_grad()
    def normalize_on_segments(self, segments: Sequence[Segment]) -> np.ndarray:
        """:meth:`update_normalization` on every step of ``segments``, then their
        :meth:`segment_returns`, with a single pass of the network over the steps.

        :param segments: e.g. the most recent segments of the buffer
        :return: ``(M, K)`` float32 normalised segment returns (after the update)
        """
        if not segments:
            raise PrefrlError("normalize_on_segments needs at least one segment")
        lengths = np.array([len(seg) for seg in segments], dtype=np.int64)
        with self._lock:
            chunks = self.scorer.step_rewards_of_segments(segments, [None] * len(segments))
            raw = torch.cat([chunk for _, _, chunk in chunks], dim=1)
            self.norm_mean = raw.mean(1)
            self.norm_std = raw.std(1, unbiased=False).clamp_min(1e-8)
            owner = torch.as_tensor(np.repeat(np.arange(len(segments)), lengths))
            sums = torch.zeros(self.n_members, len(segments)).index_add_(1, owner, raw)
            steps = torch.as_tensor(lengths, dtype=torch.float32)
            normalised = (sums - steps[None, :] * self.norm_mean[:, None]) / self.norm_std[:, None]
        return (normalised * self.settings.output_std).numpy().astype(np.float32)

    def segment_returns(self, segments: Sequence[Segment]) -> np.ndarray:
        """Normalised predicted return of each segment for every member.

        :param segments: ``K`` segments (any lengths)
        :return: ``(M, K)`` float32
        """
        if not segments:
            return np.zeros((self.n_members, 0), dtype=np.float32)
        lengths = torch.as_tensor([len(seg) for seg in segments], dtype=torch.float32)
        with self._lock:
            raw = self.scorer.segment_returns(segments)
            # Sum of normalised steps = (raw sum - T * mean) / std * output_std.
            normalised = (raw - lengths[None, :] * self.norm_mean[:, None]) / self.norm_std[:, None]
        return (normalised * self.settings.output_std).numpy().astype(np.float32)

    def preference_probabilities(self, pairs: Sequence[ClipPair]) -> np.ndarray:
        """Each member's probability that the labeller prefers the left clip.

        Uses the raw (trained) returns and the same model as the loss, including the
        random-answer share. For query selection: disagreement is the variance over
        members, uncertainty the entropy of the mean. With ``frames_per_clip`` set, the
        returns are estimated from that many evenly spaced frames of each clip.

        :param pairs: ``N`` clip pairs
        :return: ``(M, N)`` float32
        """
        if not pairs:
            return np.zeros((self.n_members, 0), dtype=np.float32)
        # The loss's frame budget serves here too: scoring hundreds of candidate Atari
        # clips on all frames stalled the agent for seconds at every update point.
        returns = self.scorer.segment_returns([p.left for p in pairs] + [p.right for p in pairs],
                                            self.settings.frames_per_clip)
        n = len(pairs)
        prob = preference_probability(returns[:, :n], returns[:, n:], self.settings.random_answer_prob)
        return prob.numpy().astype(np.float32)

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore predictions and continue training (not labels).

        Like ``nn.Module.state_dict`` the tensors are the live ones; :meth:`save` writes
        them under the model's lock.
        """
        return {
            "format": CHECKPOINT_FORMAT,
            "settings": dataclasses.asdict(self.settings),
            "observation_space": describe_space(self.observation_space),
            "action_space": describe_space(self.action_space),
            "net": self.net.state_dict(),
            "optimizer": self.trainer.optimizer.state_dict(),
            "norm_mean": self.norm_mean.cpu(),
            "norm_std": self.norm_std.cpu(),
            "l2": self.trainer.l2,
            "train_calls": self.trainer.train_calls,
            "seed": self.seed,
            "rng_state": self._rng.bit_generator.state,
            "torch_generator_state": self._torch_generator.get_state(),
            "channels_last": bool(getattr(self.net, "channels_last", False)),
        }

    def save(self, path: str | Path) -> None:
        """Write a checkpoint (``torch.save`` of plain state dicts)."""
        write_checkpoint(self.state_dict(), path, self._lock)

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint into this model (in place).

        :raises PrefrlError: the checkpoint is for another observation or action space or
            another network
        """
        state = read_checkpoint(path)
        check_fits(state, path, self.observation_space, self.action_space, self.settings)
        with self._lock:
            self.net.load_state_dict(state["net"])
            self._load_training_state(state)
            for group in self.trainer.optimizer.param_groups:  # the preset's step size wins
                group["lr"] = self.settings.learning_rate
            self.norm_mean = state["norm_mean"]
            self.norm_std = state["norm_std"]

    def _load_training_state(self, state: dict[str, Any]) -> None:
        """The optimizer, L2 strength, fit count and generators of a :meth:`state_dict`."""
        self.trainer.optimizer.load_state_dict(state["optimizer"])
        self.trainer.l2 = float(state["l2"])
        self.trainer.train_calls = int(state["train_calls"])
        self._rng.bit_generator.state = state["rng_state"]
        self._torch_generator.set_state(state["torch_generator_state"])

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> RewardModel:
        """Build a model from a checkpoint alone (spaces and settings are stored in it).

        :param path: a file written by :meth:`save`
        :param kwargs: further constructor arguments (``inference_batch``, ``cache_bytes``)
        """
        state = read_checkpoint(path)
        kwargs.setdefault("channels_last", state.get("channels_last", True))
        model = cls(
            space_from_description(state["observation_space"]),
            space_from_description(state["action_space"]),
            settings_from_checkpoint(state),
            seed=int(state["seed"]),
            **kwargs,
        )
        model.load(path)
        return model

    # ---------------------------------------------------------------- run checkpoints

    def run_state(self) -> dict[str, Any]:
        """Everything to continue exactly where the model is: :meth:`state_dict` plus
        the kept labels (with their validation split) and, while predictions are
        frozen, the frozen weights. Copies, taken under the model's lock."""
        with self._lock:
            state = copy.deepcopy(self.state_dict())
            state["labels"] = list(self._data.labels)
            state["clip_length"] = self._data.clip_length
            state["frozen"] = None
            if self._frozen is not None:
                net, mean, std = self._frozen
                state["frozen"] = {"net": copy.deepcopy(net.state_dict()), "norm_mean": mean.clone(), "norm_std": std.clone()}
            return state

    def load_run_state(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`run_state` into a model built with the same settings."""
        with self._lock:
            if state["frozen"] is not None:
                # freeze_predictions copies the live network: load the frozen one first.
                self.net.load_state_dict(state["frozen"]["net"])
                self.norm_mean, self.norm_std = state["frozen"]["norm_mean"], state["frozen"]["norm_std"]
                self.freeze_predictions()
            else:
                self.thaw_predictions()
            self.net.load_state_dict(state["net"])
            self._load_training_state(state)
            self.norm_mean, self.norm_std = state["norm_mean"].clone(), state["norm_std"].clone()
            self._data = self._data.replaced(list(state["labels"]), int(state["clip_length"]))
