"""Raw (unnormalised) rewards of the ensemble without gradients, in batches of about
``inference_batch`` frames: of single steps and of whole clips.

The reward model predicts and normalises with it; the trainer scores held-out clips.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from prefrl.data.segments import Segment
from prefrl.reward.losses import evenly_spaced
from prefrl.reward.nets import RewardNet, in_mode
from prefrl.util.errors import PrefrlError


class RawRewardScorer:
    """Runs ``net`` in eval mode on batches of steps, under ``lock``.

    :param net: the live (trained) ensemble
    :param lock: the reward model's lock, held per network call on ``net``
    :param inference_batch: frames per network call
    """

    def __init__(self, net: RewardNet, lock: threading.RLock, inference_batch: int) -> None:
        self.net = net
        self.lock = lock
        self.inference_batch = int(inference_batch)

    @torch.no_grad()
    def step_rewards(self, observations: np.ndarray, actions: np.ndarray | None, net: RewardNet | None = None) -> Tensor:
        """``(M, N)`` raw rewards of shared inputs, eval mode, in chunks.

        :param observations: ``(N, *obs_shape)`` as the env gives them
        :param actions: ``(N, *action_shape)``; may be None if the net does not read them
        :param net: another network of the same shape (the frozen copy); it is never
            trained, so it needs no lock
        """
        observations = np.asarray(observations)
        if tuple(observations.shape[1:]) != self.net.observation_shape:
            raise PrefrlError(
                f"reward model: observations of shape {observations.shape[1:]} given, the model was "
                f"built for {self.net.observation_shape} (check the channel order)"
            )
        n = len(observations)
        if self.net.uses_actions and actions is None:
            raise PrefrlError("reward model: this model needs actions beside the observations")
        out = torch.empty(self.net.n_members, n)
        net = self.net if net is None else net
        lock = self.lock if net is self.net else contextlib.nullcontext()
        with lock, in_mode(net, False):
            for start in range(0, n, self.inference_batch):
                stop = start + self.inference_batch
                out[:, start:stop] = net(
                    net.observations_tensor(observations[start:stop]),
                    None if actions is None else net.actions_tensor(np.asarray(actions)[start:stop]),
                )
        return out

    def segment_returns(self, segments: Sequence[Segment], frames_per_clip: int = 0) -> Tensor:
        """``(M, K)`` raw returns; segments are concatenated and run in chunks.

        :param segments: ``K`` segments (any lengths)
        :param frames_per_clip: score only this many evenly spaced frames of each longer
            segment, their sum scaled by ``T / k`` (an estimate of the return); 0 = all
        """
        m = self.net.n_members
        result = torch.empty(m, len(segments))
        lengths = np.array([len(seg) for seg in segments], dtype=np.int64)
        picks = [evenly_spaced(n, frames_per_clip) for n in lengths]
        used = np.array([n if pick is None else len(pick) for n, pick in zip(lengths, picks)], dtype=np.int64)
        scale = torch.as_tensor(lengths / used, dtype=torch.float32)
        for start, stop, raw in self.step_rewards_of_segments(segments, picks):
            owner = torch.as_tensor(np.repeat(np.arange(stop - start), used[start:stop]))
            sums = torch.zeros(m, stop - start).index_add_(1, owner, raw)
            result[:, start:stop] = sums * scale[start:stop]
        return result

    def step_rewards_of_segments(
        self, segments: Sequence[Segment], picks: Sequence[np.ndarray | None]
    ) -> Iterator[tuple[int, int, Tensor]]:
        """Raw per-step rewards ``(M, steps)`` of the picked steps (None: all) of whole
        segments, about ``inference_batch`` steps per network call (at least one segment):
        ``(start, stop, rewards)`` of ``segments[start:stop]``."""
        used = [len(seg) if pick is None else len(pick) for seg, pick in zip(segments, picks)]
        per_chunk = max(1, self.inference_batch // max(used))
        for start in range(0, len(segments), per_chunk):
            stop = min(start + per_chunk, len(segments))
            chunk = list(zip(segments[start:stop], picks[start:stop]))
            obs = np.concatenate([seg.observations if pick is None else seg.observations[pick] for seg, pick in chunk])
            act = None
            if self.net.uses_actions:
                act = np.concatenate([seg.actions if pick is None else seg.actions[pick] for seg, pick in chunk])
            yield start, stop, self.step_rewards(obs, act)
