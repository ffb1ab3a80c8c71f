"""The learned reward: a bootstrap ensemble of reward predictors fitted to preferences.

Christiano et al. (2017) model a labeller's choice between two clips with the
Bradley-Terry model on the clips' predicted returns, plus a fixed chance that the
labeller answered at random. An ensemble of predictors, each trained on its own
bootstrap resample of the labels and normalised separately, is averaged to give the
reward the agent sees.

Other implementations train and evaluate the members one at a time and compute the
loss pair by pair in Python. Here every member lives in the same batched network
(stacked weights, grouped convolutions): one forward and one backward per minibatch
cover all members, all pairs and all frames.

The training loop's only interface to rewards is :class:`RewardModel`.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import math
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import Tensor, nn

from prefrl.config.presets import RewardSettings
from prefrl.data.segments import ClipPair, Segment
from prefrl.feedback.labels import Choice, Preference
from prefrl.util.errors import PrefrlError

#: Negative slope of every leaky ReLU (the paper's value).
LEAKY_SLOPE = 0.01
#: Factor by which the L2 strength moves when val/train loss leaves its band.
L2_STEP = 1.5
#: Side of the square Atari observation the paper's CNN expects.
ATARI_SIDE = 84
#: At most this many in-bag pairs per member, and this many held-out pairs, are scored
#: after each ``train`` call (enough for the L2 ratio; bounds the cost on Atari, where
#: scoring a pair runs the CNN on all 50 frames of its clips).
MAX_EVAL_PAIRS = 512
#: Checkpoint format tag, bumped when the layout changes.
CHECKPOINT_FORMAT = "prefrl-reward-1"
#: The fix named when a checkpoint does not fit the model it is loaded into.
_OTHER_TASK = "the checkpoint is of another task or observation settings: give the reward_model.pt of a run of this task"


# --------------------------------------------------------------------------------------
# Losses (pure functions)
# --------------------------------------------------------------------------------------


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


def preference_probability(
    returns_left: Tensor, returns_right: Tensor, random_answer_prob: float = 0.1
) -> Tensor:
    """Probability that the labeller prefers the left clip.

    ``P = (1 - eps) * sigmoid(R_left - R_right) + eps / 2``: Bradley-Terry on the
    predicted returns, mixed with a uniformly random answer.

    :param returns_left: predicted returns of the left clips, any shape
    :param returns_right: predicted returns of the right clips, broadcastable
    :param random_answer_prob: ``eps``, the assumed chance of a random answer
    :return: probabilities of the broadcast shape
    """
    eps = float(random_answer_prob)
    return (1.0 - eps) * torch.sigmoid(returns_left - returns_right) + eps / 2.0


def _log_choice_probabilities(diff: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``log P(left)`` and ``log P(right)`` for return differences ``diff``.

    ``log((1 - eps) * sigmoid(d) + eps / 2)`` is evaluated as a log-sum-exp of
    ``log(1 - eps) + logsigmoid(d)`` and ``log(eps / 2)`` so that it stays finite and
    has a correct gradient for any ``d`` (``log(sigmoid(d))`` underflows to ``-inf``
    for ``d`` below about -100 in float32).
    """
    log_left = F.logsigmoid(diff)
    log_right = F.logsigmoid(-diff)
    if eps <= 0.0:
        return log_left, log_right
    log_keep = math.log1p(-eps)
    log_random = torch.full_like(diff, math.log(eps / 2.0))
    return (
        torch.logaddexp(log_left + log_keep, log_random),
        torch.logaddexp(log_right + log_keep, log_random),
    )


def preference_loss(
    returns_left: Tensor,
    returns_right: Tensor,
    targets: Tensor,
    random_answer_prob: float = 0.1,
) -> Tensor:
    """Mean cross-entropy of the Bradley-Terry preference model against labels.

    Works on any leading shape, e.g. ``(members, pairs)`` returns with ``(pairs,)`` or
    ``(members, pairs)`` targets: no loop over members or pairs.

    :param returns_left: predicted returns of the left clips
    :param returns_right: predicted returns of the right clips (same shape)
    :param targets: probability that left is better: 1 = left, 0 = right, 0.5 = tie;
        broadcastable to the returns' shape
    :param random_answer_prob: assumed chance that the labeller answered at random
    :return: scalar mean loss
    """
    log_left, log_right = _log_choice_probabilities(returns_left - returns_right, float(random_answer_prob))
    targets = targets.to(log_left.dtype)
    # Written out (not BCE-with-logits) because of the eps mixture; a target of
    # exactly 0 or 1 multiplies the other term by zero, never 0 * inf.
    return -(targets * log_left + (1.0 - targets) * log_right).mean()


def _uses_frame_subset(k: int, length: int) -> bool:
    """``reward.frames_per_clip = k`` picks a subset of a ``length``-step clip; 0 or at
    least the clip's length means all its frames."""
    return 0 < k < length


def _evenly_spaced(length: int, k: int) -> np.ndarray | None:
    """``k`` evenly spaced step indices of a ``length``-step clip (None: all steps)."""
    if not _uses_frame_subset(k, length):
        return None
    return np.round(np.linspace(0, length - 1, k)).astype(np.int64)


def adapt_l2(l2: float, train_loss: float, val_loss: float, low: float, high: float, step: float = L2_STEP) -> float:
    """Move the L2 strength so that ``val_loss / train_loss`` returns to ``[low, high]``.

    Overfitting (ratio above ``high``) strengthens the penalty, underfitting (below
    ``low``) weakens it. Missing metrics (NaN, no validation labels) leave it unchanged.

    :param l2: current coefficient
    :param train_loss: loss on (in-bag) training labels
    :param val_loss: loss on held-out labels
    :param low: lower bound of the wanted ratio
    :param high: upper bound of the wanted ratio
    :param step: multiplicative step
    :return: the new coefficient
    """
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)) or train_loss <= 0.0:
        return l2
    ratio = val_loss / train_loss
    if ratio > high:
        return l2 * step
    if ratio < low:
        return l2 / step
    return l2


# --------------------------------------------------------------------------------------
# Batched ensemble networks
# --------------------------------------------------------------------------------------


def _action_size(action_space: spaces.Space) -> int:
    """Width of the action encoding fed to an MLP (one-hot for discrete actions)."""
    if isinstance(action_space, spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, (spaces.Box, spaces.MultiBinary)):
        return int(np.prod(action_space.shape))
    raise PrefrlError(
        f"reward net: unsupported action space {action_space}; use Discrete, Box or MultiBinary"
    )


def _uniform_(tensor: Tensor, bound: float, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        tensor.uniform_(-bound, bound, generator=generator)


class RewardNet(nn.Module, abc.ABC):
    """An ensemble of ``n_members`` reward predictors evaluated in one batched call.

    ``forward`` accepts either member-specific inputs ``(M, N, *obs_shape)`` (training:
    each member sees its own bootstrap sample) or shared inputs ``(N, *obs_shape)``
    broadcast to every member (inference). It returns raw, unnormalised per-step
    rewards of shape ``(M, N)``.

    :param observation_space: the env's observation space (a ``Box``)
    :param action_space: the env's action space
    :param n_members: ensemble size ``M``
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, n_members: int) -> None:
        super().__init__()
        if not isinstance(observation_space, spaces.Box):
            raise PrefrlError(f"reward net: observation space must be a Box, got {observation_space}")
        if n_members < 1:
            raise PrefrlError(f"reward.ensemble_size = {n_members} must be at least 1")
        self.n_members = int(n_members)
        self.observation_shape: tuple[int, ...] = tuple(int(d) for d in observation_space.shape)
        self.action_space = action_space
        # uint8 observations are images: scale to [0, 1] inside the net, so that
        # callers can hand over what the env gives and batches stay small in memory.
        self.input_scale = 1.0 / 255.0 if observation_space.dtype == np.uint8 else 1.0

    @property
    @abc.abstractmethod
    def uses_actions(self) -> bool:
        """Whether ``forward`` reads the actions (callers may skip gathering them)."""

    def forward(self, observations: Tensor, actions: Tensor | None = None) -> Tensor:
        """Raw rewards of every member.

        :param observations: ``(M, N, *obs_shape)`` per member or ``(N, *obs_shape)`` shared
        :param actions: ``(M, N, *action_shape)`` / ``(N, *action_shape)`` matching
            ``observations``; may be ``None`` when ``uses_actions`` is false
        :return: ``(M, N)`` raw rewards
        """
        obs_dims = len(self.observation_shape)
        trailing = tuple(observations.shape[observations.ndim - obs_dims :])
        if trailing != self.observation_shape or observations.ndim not in (obs_dims + 1, obs_dims + 2):
            raise PrefrlError(
                f"reward net: observations of shape {tuple(observations.shape)} do not match the "
                f"observation space {self.observation_shape}; give (N, *obs_shape) or (members, N, *obs_shape)"
            )
        shared = observations.ndim == obs_dims + 1
        if not shared and observations.shape[0] != self.n_members:
            raise PrefrlError(
                f"reward net: per-member observations have {observations.shape[0]} members, "
                f"the ensemble has {self.n_members}"
            )
        if self.uses_actions and actions is None:
            raise PrefrlError("reward net: this network needs the actions beside the observations")
        return self._forward(observations, actions, shared)

    @abc.abstractmethod
    def _forward(self, observations: Tensor, actions: Tensor | None, shared: bool) -> Tensor:
        """``(M, N)`` raw rewards; ``shared`` tells which input layout was given."""

    def penalised_parameters(self) -> list[Tensor]:
        """The weights the L2 penalty applies to (not biases, not batch-norm scales)."""
        return [p for name, p in self.named_parameters() if p.ndim > 1 and "bias" not in name]


class EnsembleMLP(RewardNet):
    """The paper's MuJoCo predictor: an MLP on (observation, action), batched over members.

    Input is the flattened observation concatenated with the action (one-hot for
    ``Discrete``, raw for ``Box``); hidden layers use leaky ReLU (0.01). Member weights
    are stacked ``(M, in, out)`` tensors applied with one ``baddbmm`` per layer.

    :param observation_space: a ``Box``
    :param action_space: ``Discrete``, ``Box`` or ``MultiBinary``
    :param n_members: ensemble size
    :param hidden_sizes: hidden layer widths
    :param use_actions: concatenate the action to the observation
    :param generator: source of the initial weights
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        n_members: int,
        hidden_sizes: Sequence[int] = (64, 64),
        use_actions: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(observation_space, action_space, n_members)
        self._use_actions = bool(use_actions)
        self._discrete_actions = isinstance(action_space, spaces.Discrete)
        self.action_size = _action_size(action_space) if use_actions else 0
        self.obs_size = int(np.prod(self.observation_shape))
        sizes = [self.obs_size + self.action_size, *(int(h) for h in hidden_sizes), 1]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(n_members, fan_in, fan_out)) for fan_in, fan_out in zip(sizes[:-1], sizes[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(n_members, 1, fan_out)) for fan_out in sizes[1:])
        # Observations are standardised before the first layer (see set_input_statistics):
        # raw MuJoCo features differ in scale by orders of magnitude, and the decisive
        # ones (a pole angle near its 0.2 rad limit) are tiny; measured on
        # InvertedPendulum, 200 labels: segment-return correlation 0.72 raw, 0.91 standardised.
        self.register_buffer("input_mean", torch.zeros(self.obs_size))
        self.register_buffer("input_std", torch.ones(self.obs_size))
        self.reset_parameters(generator)

    def set_input_statistics(self, observations: np.ndarray) -> None:
        """Standardise observations with the mean and std of these ``(N, *obs_shape)``."""
        flat = np.asarray(observations, dtype=np.float64).reshape(len(observations), self.obs_size)
        flat = flat * self.input_scale
        self.input_mean.copy_(torch.as_tensor(flat.mean(axis=0), dtype=torch.float32))
        self.input_std.copy_(torch.as_tensor(np.maximum(flat.std(axis=0), 1e-6), dtype=torch.float32))

    @property
    def uses_actions(self) -> bool:
        return self._use_actions

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Each member initialised like ``nn.Linear`` (uniform, bound 1/sqrt(fan_in))."""
        for weight, bias in zip(self.weights, self.biases):
            bound = 1.0 / math.sqrt(weight.shape[1])
            _uniform_(weight, bound, generator)
            _uniform_(bias, bound, generator)

    def _inputs(self, observations: Tensor, actions: Tensor | None, lead: tuple[int, ...]) -> Tensor:
        x = observations.reshape(*lead, self.obs_size).to(torch.float32)
        if self.input_scale != 1.0:
            x = x * self.input_scale
        x = (x - self.input_mean) / self.input_std
        if not self._use_actions:
            return x
        assert actions is not None
        if self._discrete_actions:
            a = F.one_hot(actions.reshape(lead).long(), self.action_size).to(torch.float32)
        else:
            a = actions.reshape(*lead, self.action_size).to(torch.float32)
        return torch.cat((x, a), dim=-1)

    def _forward(self, observations: Tensor, actions: Tensor | None, shared: bool) -> Tensor:
        lead = tuple(observations.shape[: 1 if shared else 2])
        x = self._inputs(observations, actions, lead)
        n_layers = len(self.weights)
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if x.ndim == 2:  # shared inputs: broadcast (N, in) @ (M, in, out) -> (M, N, out)
                x = torch.matmul(x, weight) + bias
            else:
                x = torch.baddbmm(bias, x, weight)
            if i < n_layers - 1:
                x = F.leaky_relu(x, LEAKY_SLOPE)
        return x.squeeze(-1)


class _MaskedScale(torch.autograd.Function):
    """``x * mask * scale`` with a boolean mask, one pass forward and one backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, mask: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return torch.addcmul(x.new_zeros(()), x, mask, value=scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return torch.addcmul(grad.new_zeros(()), grad, mask, value=ctx.scale), None, None


def dropout(x: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Inverted dropout (training mode), several times faster than ``F.dropout`` on CPU.

    ``F.dropout`` draws one Bernoulli float per element, which costs far more than the
    convolutions around it on CPU. Here 16 random bits per element come from bulk
    64-bit draws, so ``p`` is rounded to a multiple of 1/65536. The mask has the
    memory format of ``x``.

    :param x: input (4-D tensors keep their memory format)
    :param p: probability of zeroing an element, in [0, 1)
    :param generator: random source (``None``: torch's global generator)
    """
    if p <= 0.0:
        return x
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
    bits = words.random_(-(2**63), None, generator=generator).view(torch.int16)[:n]
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        b, c, h, w = x.shape
        bits = bits.view(b, h, w, c).permute(0, 3, 1, 2)
    else:
        bits = bits.view(x.shape)
    threshold = round(p * 65536) - 32768  # int16 bits are uniform on [-32768, 32767]
    return _MaskedScale.apply(x, bits >= threshold, 1.0 / (1.0 - p))


def conv_output_side(side: int, kernel: int, stride: int) -> int:
    """Spatial size after an unpadded convolution."""
    return (side - kernel) // stride + 1


class EnsembleAtariCNN(RewardNet):
    """The paper's Atari predictor, all members in one grouped network.

    4 convolutions (7x7 stride 3, 5x5 stride 2, 3x3 stride 1, 3x3 stride 1, 16 filters
    each), each followed by batch norm, leaky ReLU (0.01) and dropout, then a fully
    connected layer of 64 and a scalar. Input: channel-first ``(C, 84, 84)`` uint8
    frame stacks, scaled to [0, 1]. Actions are not used.

    Members are the groups of grouped convolutions (``groups=M``, ``M * channels``),
    so batch norm (per channel) keeps separate statistics per member and one conv call
    runs all members. With shared inputs the first convolution needs no copy of the
    input per member: a grouped weight ``(M*16, C, 7, 7)`` is exactly the weight of a
    plain convolution from ``C`` to ``M*16`` channels.

    :param observation_space: ``Box`` of shape ``(C, 84, 84)``
    :param action_space: ignored (kept for a uniform factory signature)
    :param n_members: ensemble size
    :param batch_norm: batch norm after each convolution
    :param dropout: dropout probability after each convolution block
    :param channels_last: run convolutions in channels-last memory format
    :param generator: source of the initial weights
    """

    #: (kernel, stride) of the four convolutions
    CONVS: tuple[tuple[int, int], ...] = ((7, 3), (5, 2), (3, 1), (3, 1))
    FILTERS = 16
    HIDDEN = 64

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        n_members: int,
        batch_norm: bool = True,
        dropout: float = 0.5,
        channels_last: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        shape = tuple(getattr(observation_space, "shape", ()) or ())
        # The one place the channel order is checked: SB3 transposes images to
        # channel-first, Gymnasium's FrameStack gives (4, 84, 84); a channel-last
        # (84, 84, 4) space would silently mix pixels into channels.
        if len(shape) != 3 or shape[1:] != (ATARI_SIDE, ATARI_SIDE):
            looks_last = shape[:2] == (ATARI_SIDE, ATARI_SIDE)
            hint = " (it looks channel-last; transpose to (C, 84, 84))" if looks_last else ""
            raise PrefrlError(
                f"the Atari reward CNN needs channel-first observations (C, {ATARI_SIDE}, {ATARI_SIDE}), "
                f"got {shape}{hint}"
            )
        super().__init__(observation_space, action_space, n_members)
        self.channels = shape[0]
        self.channels_last = bool(channels_last)
        self.dropout_prob = float(dropout)
        m, f = n_members, self.FILTERS
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        in_channels, side = self.channels, ATARI_SIDE
        for kernel, stride in self.CONVS:
            self.convs.append(nn.Conv2d(m * in_channels, m * f, kernel, stride, groups=m, bias=not batch_norm))
            self.norms.append(nn.BatchNorm2d(m * f) if batch_norm else nn.Identity())
            in_channels, side = f, conv_output_side(side, kernel, stride)
        self.features = f * side * side
        self.fc_weight = nn.Parameter(torch.empty(m, self.features, self.HIDDEN))
        self.fc_bias = nn.Parameter(torch.empty(m, 1, self.HIDDEN))
        self.out_weight = nn.Parameter(torch.empty(m, self.HIDDEN, 1))
        self.out_bias = nn.Parameter(torch.empty(m, 1, 1))
        self.reset_parameters(generator)
        #: random source of the dropout masks (set by RewardModel for reproducibility)
        self.dropout_generator: torch.Generator | None = generator
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def uses_actions(self) -> bool:
        return False

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PyTorch's default init, drawn per member from ``generator``."""
        for conv in self.convs:
            bound = 1.0 / math.sqrt(conv.weight[0].numel())  # fan-in of one member's filter
            _uniform_(conv.weight, bound, generator)
            if conv.bias is not None:
                _uniform_(conv.bias, bound, generator)
        for weight, bias in ((self.fc_weight, self.fc_bias), (self.out_weight, self.out_bias)):
            bound = 1.0 / math.sqrt(weight.shape[1])
            _uniform_(weight, bound, generator)
            _uniform_(bias, bound, generator)

    def _input(self, observations: Tensor, shared: bool) -> Tensor:
        """Float32 NCHW input in the chosen memory format, converted in one pass.

        Per-member inputs ``(M, N, C, H, W)`` become ``(N, M*C, H, W)`` (member ``m``
        owns channels ``m*C .. m*C+C-1``, i.e. group ``m``). The 1/255 scale is not
        applied here but folded into the first convolution's weight: the input is the
        largest tensor of the network and every pass over it costs.
        """
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if shared:
            return observations.to(torch.float32, memory_format=fmt)
        m, n = observations.shape[:2]
        # Member-major to sample-major on the uint8 bytes (whole planes move), then the
        # float conversion and channels-last reorder in one pass: ~30% less CPU than
        # one strided copy straight from the transposed uint8 view.
        stacked = observations.transpose(0, 1).reshape(n, m * self.channels, ATARI_SIDE, ATARI_SIDE)
        return stacked.to(torch.float32, memory_format=fmt)

    def _forward(self, observations: Tensor, actions: Tensor | None, shared: bool) -> Tensor:
        m = self.n_members
        x = self._input(observations, shared)
        n = x.shape[0]
        drop = self.training and self.dropout_prob > 0.0
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            weight, groups = conv.weight, m
            if i == 0:
                weight = weight * self.input_scale
                if shared:
                    groups = 1  # all members read the same C input channels
            x = F.conv2d(x, weight, conv.bias, conv.stride, groups=groups)
            # In place: neither batch norm's nor the convolution's backward needs this output.
            x = F.leaky_relu_(norm(x), LEAKY_SLOPE)
            if drop:
                x = dropout(x, self.dropout_prob, self.dropout_generator)
        # Canonical (member, channel, row, col) flattening, whatever the memory format.
        x = x.reshape(n, m, self.features).transpose(0, 1)
        x = F.leaky_relu(torch.baddbmm(self.fc_bias, x, self.fc_weight), LEAKY_SLOPE)
        return torch.baddbmm(self.out_bias, x, self.out_weight).squeeze(-1)


def make_reward_net(
    observation_space: spaces.Space,
    action_space: spaces.Space,
    settings: RewardSettings,
    generator: torch.Generator | None = None,
    channels_last: bool = True,
) -> RewardNet:
    """Build the ensemble network named by ``settings.architecture``.

    :param observation_space: the env's observation space
    :param action_space: the env's action space
    :param settings: the reward section of a preset
    :param generator: source of the initial weights (seed it for reproducibility)
    :param channels_last: CNN only: channels-last memory format (faster on CPU)
    """
    if settings.architecture == "mlp":
        return EnsembleMLP(
            observation_space,
            action_space,
            settings.ensemble_size,
            hidden_sizes=settings.hidden_sizes,
            use_actions=settings.use_actions,
            generator=generator,
        )
    if settings.architecture == "atari_cnn":
        return EnsembleAtariCNN(
            observation_space,
            action_space,
            settings.ensemble_size,
            batch_norm=settings.batch_norm,
            dropout=settings.dropout,
            channels_last=channels_last,
            generator=generator,
        )
    raise PrefrlError(f"reward.architecture = {settings.architecture!r} is unknown; use 'mlp' or 'atari_cnn'")


# --------------------------------------------------------------------------------------
# The reward model
# --------------------------------------------------------------------------------------


class _Label(NamedTuple):
    pair: ClipPair
    target: float
    is_val: bool

    @property
    def left(self) -> Segment:
        return self.pair.left

    @property
    def right(self) -> Segment:
        return self.pair.right


class _LabelSet:
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
        self.targets = torch.tensor([lab.target for lab in labels], dtype=torch.float32)
        self.is_val = np.array([lab.is_val for lab in labels], dtype=bool)
        size = 2 * len(labels) * clip_length * int(np.prod(obs_shape)) * np.dtype(obs_dtype).itemsize
        self._use_cache = size <= cache_bytes
        self._cache: tuple[np.ndarray, np.ndarray | None] | None = None

    def __len__(self) -> int:
        return len(self.labels)

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


def _describe_space(space: spaces.Space) -> dict[str, Any]:
    """A plain description of a space, enough to rebuild it for the network."""
    if isinstance(space, spaces.Discrete):
        return {"kind": "discrete", "n": int(space.n)}
    if isinstance(space, spaces.MultiBinary):
        return {"kind": "multibinary", "n": int(np.prod(space.shape))}
    if isinstance(space, spaces.Box):
        return {"kind": "box", "shape": [int(d) for d in space.shape], "dtype": np.dtype(space.dtype).name}
    raise PrefrlError(f"reward model: unsupported space {space}")


def _space_from_description(desc: dict[str, Any]) -> spaces.Space:
    if desc["kind"] == "discrete":
        return spaces.Discrete(desc["n"])
    if desc["kind"] == "multibinary":
        return spaces.MultiBinary(desc["n"])
    dtype = np.dtype(desc["dtype"])
    if dtype == np.uint8:
        return spaces.Box(0, 255, tuple(desc["shape"]), dtype=np.uint8)
    return spaces.Box(-np.inf, np.inf, tuple(desc["shape"]), dtype=dtype)


def _net_view(desc: dict[str, Any]) -> tuple[Any, ...]:
    """What of a space description the network depends on: kind, shape, image or not."""
    if desc["kind"] == "box":
        return ("box", tuple(desc["shape"]), desc["dtype"] == "uint8")
    return (desc["kind"], desc["n"])


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


@contextlib.contextmanager
def _mode(module: nn.Module, training: bool) -> Iterator[None]:
    """Temporarily switch train/eval mode."""
    previous = module.training
    module.train(training)
    try:
        yield
    finally:
        module.train(previous)


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
        self._image = observation_space.dtype == np.uint8
        self._obs_dtype = np.uint8 if self._image else np.float32
        self._discrete = isinstance(action_space, spaces.Discrete)
        self.inference_batch = int(inference_batch or (128 if self._image else 16384))
        self.cache_bytes = int(cache_bytes)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=settings.learning_rate)
        self.l2 = float(settings.initial_l2)
        m = settings.ensemble_size
        self.norm_mean = torch.zeros(m)
        self.norm_std = torch.ones(m)
        self._data = self._label_set([], 0)
        self.train_calls = 0
        # One lock for the network, the labels and the generators: training may run in
        # a background thread while the env wrapper predicts and labels arrive. It is
        # held per minibatch, so a prediction waits for at most one step.
        self._lock = threading.RLock()
        self.net.eval()  # the resting state: ready to predict
        # (net, norm_mean, norm_std) that predict() serves while frozen, see freeze_predictions.
        self._frozen: tuple[RewardNet, Tensor, Tensor] | None = None
        self._frozen_net: RewardNet | None = None

    # ---------------------------------------------------------------- properties

    @property
    def n_members(self) -> int:
        return self.net.n_members

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

    def _label_set(self, labels: list[_Label], clip_length: int) -> _LabelSet:
        return _LabelSet(
            labels, clip_length, self.observation_shape, self._obs_dtype, self.net.uses_actions, self.cache_bytes
        )

    # ---------------------------------------------------------------- labels

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
            return self._add(usable)

    def _add(self, usable: list[Preference]) -> int:
        old = self._data
        clip_length = old.clip_length
        for pref in usable:
            length = len(pref.pair.left)
            if tuple(pref.pair.left.observations.shape[1:]) != self.observation_shape:
                raise PrefrlError(
                    f"preference {pref.pair.pair_id!r}: observations {pref.pair.left.observations.shape[1:]} "
                    f"do not match the reward model's {self.observation_shape}; its clips were recorded "
                    "from another task or observation settings: give clips of this task"
                )
            if clip_length == 0:
                clip_length = length
            elif length != clip_length:
                raise PrefrlError(
                    f"preference {pref.pair.pair_id!r}: clip length {length} differs from the "
                    f"{clip_length} steps of the earlier labels; use one task.clip_length per run"
                )
        n_new = len(usable)
        wanted_val = round((len(old) + n_new) * self.settings.validation_fraction) - int(old.is_val.sum())
        n_new_val = min(max(wanted_val, 0), n_new)
        is_val = np.zeros(n_new, dtype=bool)
        is_val[self._rng.choice(n_new, size=n_new_val, replace=False)] = True
        labels = old.labels + [
            _Label(p.pair, float(p.choice.target), bool(v))  # type: ignore[arg-type]
            for p, v in zip(usable, is_val)
        ]
        if self.settings.label_buffer_size > 0:
            labels = labels[max(0, len(labels) - self.settings.label_buffer_size) :]
        self._data = self._label_set(labels, clip_length)
        return n_new

    def _actions_tensor(self, actions: np.ndarray | None) -> Tensor | None:
        if actions is None or not self.net.uses_actions:
            return None
        dtype = torch.long if self._discrete else torch.float32
        return torch.as_tensor(np.ascontiguousarray(actions)).to(dtype)

    def _obs_tensor(self, observations: np.ndarray) -> Tensor:
        # ascontiguousarray: views with negative strides (e.g. a flipped stack) are not
        # tensors; contiguous inputs are not copied.
        return torch.as_tensor(np.ascontiguousarray(observations, dtype=self._obs_dtype))

    def _pair_returns(self, data: _LabelSet, idx: np.ndarray, frames: np.ndarray | None) -> tuple[Tensor, Tensor]:
        """Raw predicted returns ``(M, B)`` of the left and right clips, one net call.

        With a frame subset the sum over ``k`` frames is scaled by ``T / k`` so that it
        estimates the full clip's return.
        """
        obs, act = data.gather(idx, frames)
        m, b, _, k = obs.shape[:4]
        out = self.net(
            self._obs_tensor(obs).reshape(m, b * 2 * k, *self.observation_shape),
            None if act is None else self._actions_tensor(act).reshape(m, b * 2 * k, *act.shape[4:]),
        )
        sums = out.reshape(m, b, 2, k).sum(-1)
        if k != data.clip_length:
            sums = sums * (data.clip_length / k)
        return sums[..., 0], sums[..., 1]

    def _draw_frames(self, shape: tuple[int, int], clip_length: int) -> np.ndarray | None:
        k = self.settings.frames_per_clip
        if not _uses_frame_subset(k, clip_length):
            return None
        # k distinct steps per pair (shared by its two clips), independent across pairs.
        return np.argsort(self._rng.random((*shape, clip_length)), axis=-1)[..., :k]

    # ---------------------------------------------------------------- training

    def _penalty(self) -> Tensor:
        return sum((p.square().sum() for p in self.net.penalised_parameters()), torch.zeros(()))

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
        start_time = time.perf_counter()
        s = self.settings
        epochs = s.epochs_per_update if epochs is None else int(epochs)
        m = self.n_members
        data = self._data  # one snapshot for the whole call
        if isinstance(self.net, EnsembleMLP) and len(data) > 0 and epochs > 0:
            # Re-standardise the inputs on the clips of the kept labels, then refit.
            with self._lock:
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
            boot = train_idx[self._rng.integers(0, n_train, size=(m, n_train))]
            fit_start = time.perf_counter()
            budget = refit_minibatches(n_train, epochs, s.batch_size, max_pairs)
            while steps < budget:
                order = self._rng.permuted(boot, axis=1)
                losses = []
                for start in range(0, n_train, s.batch_size):
                    if steps >= budget:
                        break
                    idx = order[:, start : start + s.batch_size]
                    frames = self._draw_frames(idx.shape, data.clip_length)
                    with self._lock, _mode(self.net, True):
                        left, right = self._pair_returns(data, idx, frames)
                        targets = data.targets[torch.as_tensor(idx)]
                        data_loss = preference_loss(left, right, targets, s.random_answer_prob)
                        # data_loss averages over members, so the summed penalty is
                        # divided by M to keep each member's own balance.
                        loss = data_loss + (self.l2 / m) * self._penalty()
                        self.optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        self.optimizer.step()
                    losses.append(float(data_loss.detach()))
                    steps += 1
                fit_loss = float(np.mean(losses))
            fit_seconds = time.perf_counter() - fit_start
        elif n_train > 0:
            boot = train_idx[self._rng.integers(0, n_train, size=(m, n_train))]
        with self._lock:
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

    @torch.no_grad()
    def _evaluate(self, data: _LabelSet, boot: np.ndarray, val_idx: np.ndarray) -> tuple[float, float, float]:
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
        with _mode(self.net, False):
            if boot.shape[1] > 0:
                cols = self._rng.choice(boot.shape[1], size=size, replace=False)
                idx = boot[:, cols]
                total = 0.0
                for start in range(0, size, s.batch_size):
                    chunk = idx[:, start : start + s.batch_size]
                    left, right = self._pair_returns(data, chunk, None)
                    loss = preference_loss(left, right, data.targets[torch.as_tensor(chunk)], s.random_answer_prob)
                    total += float(loss) * chunk.shape[1]
                train_loss = total / size
            if held_out < len(val_idx):  # a random subset estimates the held-out loss
                val_idx = np.sort(self._rng.choice(val_idx, size=held_out, replace=False))
            if len(val_idx) > 0:
                segments = [data.labels[i].left for i in val_idx] + [data.labels[i].right for i in val_idx]
                returns = self._segment_raw_returns(segments)
                left, right = returns[:, : len(val_idx)], returns[:, len(val_idx) :]
                targets = data.targets[torch.as_tensor(val_idx)]
                val_loss = float(preference_loss(left, right, targets, s.random_answer_prob))
                prob = preference_probability(left, right, s.random_answer_prob).mean(0)
                decided = targets != 0.5
                if bool(decided.any()):
                    val_accuracy = float(((prob > 0.5) == (targets > 0.5))[decided].float().mean())
        return train_loss, val_loss, val_accuracy

    # ---------------------------------------------------------------- prediction

    @torch.no_grad()
    def _raw_rewards(self, observations: np.ndarray, actions: np.ndarray | None, net: RewardNet | None = None) -> Tensor:
        """``(M, N)`` raw rewards of shared inputs, eval mode, in chunks.

        :param net: another network of the same shape (the frozen copy); it is never
            trained, so it needs no lock
        """
        observations = np.asarray(observations)
        if tuple(observations.shape[1:]) != self.observation_shape:
            raise PrefrlError(
                f"reward model: observations of shape {observations.shape[1:]} given, the model was "
                f"built for {self.observation_shape} (check the channel order)"
            )
        n = len(observations)
        if self.net.uses_actions and actions is None:
            raise PrefrlError("reward model: this model needs actions beside the observations")
        out = torch.empty(self.n_members, n)
        net = self.net if net is None else net
        lock = self._lock if net is self.net else contextlib.nullcontext()
        with lock, _mode(net, False):
            for start in range(0, n, self.inference_batch):
                stop = start + self.inference_batch
                out[:, start:stop] = net(
                    self._obs_tensor(observations[start:stop]),
                    None if actions is None else self._actions_tensor(np.asarray(actions)[start:stop]),
                )
        return out

    def _normalised_rewards(self, observations: np.ndarray, actions: np.ndarray | None) -> Tensor:
        """``(M, N)`` normalised rewards (weights and statistics of the same moment)."""
        frozen = self._frozen
        if frozen is not None:
            net, mean, std = frozen
            raw = self._raw_rewards(observations, actions, net)
            return (raw - mean[:, None]) / std[:, None] * self.settings.output_std
        with self._lock:
            raw = self._raw_rewards(observations, actions)
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
            raw = self._raw_rewards(observations, actions)
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
            raw = torch.cat([chunk for _, _, chunk in self._raw_in_chunks(segments, [None] * len(segments))], dim=1)
            self.norm_mean = raw.mean(1)
            self.norm_std = raw.std(1, unbiased=False).clamp_min(1e-8)
            owner = torch.as_tensor(np.repeat(np.arange(len(segments)), lengths))
            sums = torch.zeros(self.n_members, len(segments)).index_add_(1, owner, raw)
            steps = torch.as_tensor(lengths, dtype=torch.float32)
            normalised = (sums - steps[None, :] * self.norm_mean[:, None]) / self.norm_std[:, None]
        return (normalised * self.settings.output_std).numpy().astype(np.float32)

    def _segment_raw_returns(self, segments: Sequence[Segment], frames_per_clip: int = 0) -> Tensor:
        """``(M, K)`` raw returns; segments are concatenated and run in chunks.

        :param frames_per_clip: score only this many evenly spaced frames of each longer
            segment, their sum scaled by ``T / k`` (an estimate of the return); 0 = all
        """
        m = self.n_members
        result = torch.empty(m, len(segments))
        lengths = np.array([len(seg) for seg in segments], dtype=np.int64)
        picks = [_evenly_spaced(n, frames_per_clip) for n in lengths]
        used = np.array([n if pick is None else len(pick) for n, pick in zip(lengths, picks)], dtype=np.int64)
        scale = torch.as_tensor(lengths / used, dtype=torch.float32)
        for start, stop, raw in self._raw_in_chunks(segments, picks):
            owner = torch.as_tensor(np.repeat(np.arange(stop - start), used[start:stop]))
            sums = torch.zeros(m, stop - start).index_add_(1, owner, raw)
            result[:, start:stop] = sums * scale[start:stop]
        return result

    def _raw_in_chunks(self, segments: Sequence[Segment], picks: Sequence[np.ndarray | None]
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
            yield start, stop, self._raw_rewards(obs, act)

    def segment_returns(self, segments: Sequence[Segment]) -> np.ndarray:
        """Normalised predicted return of each segment for every member.

        :param segments: ``K`` segments (any lengths)
        :return: ``(M, K)`` float32
        """
        if not segments:
            return np.zeros((self.n_members, 0), dtype=np.float32)
        lengths = torch.as_tensor([len(seg) for seg in segments], dtype=torch.float32)
        with self._lock:
            raw = self._segment_raw_returns(segments)
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
        returns = self._segment_raw_returns([p.left for p in pairs] + [p.right for p in pairs],
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
            "observation_space": _describe_space(self.observation_space),
            "action_space": _describe_space(self.action_space),
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "norm_mean": self.norm_mean.cpu(),
            "norm_std": self.norm_std.cpu(),
            "l2": self.l2,
            "train_calls": self.train_calls,
            "seed": self.seed,
            "rng_state": self._rng.bit_generator.state,
            "torch_generator_state": self._torch_generator.get_state(),
            "channels_last": bool(getattr(self.net, "channels_last", False)),
        }

    def save(self, path: str | Path) -> None:
        """Write a checkpoint (``torch.save`` of plain state dicts)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with self._lock:
            torch.save(self.state_dict(), tmp)
        tmp.replace(path)  # a crash mid-write never leaves a truncated checkpoint

    @staticmethod
    def _read(path: str | Path) -> dict[str, Any]:
        try:
            state = torch.load(Path(path), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise PrefrlError(f"reward checkpoint '{path}' not found; give the reward_model.pt of a learned-reward run") from None
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error
            # torch's own messages run to several sentences: keep the first.
            reason = " ".join(str(exc).split()).split(". ")[0]
            raise PrefrlError(
                f"reward checkpoint '{path}' is unreadable ({reason}); it may be truncated: "
                "restore it from a backup or train the run again"
            ) from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise PrefrlError(
                f"'{path}' is not a prefrl reward checkpoint ({CHECKPOINT_FORMAT}); "
                "give the reward_model.pt of a learned-reward run"
            )
        return state

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint into this model (in place).

        :raises PrefrlError: the checkpoint is for another observation or action space or
            another network
        """
        state = self._read(path)
        saved_obs = state["observation_space"]
        if _net_view(saved_obs) != _net_view(_describe_space(self.observation_space)):
            raise PrefrlError(
                f"reward checkpoint '{path}' is for observations {tuple(saved_obs.get('shape', ()))} "
                f"({saved_obs.get('dtype')}), this model has {self.observation_shape} "
                f"({np.dtype(self.observation_space.dtype).name}); {_OTHER_TASK}"
            )
        if _net_view(state["action_space"]) != _net_view(_describe_space(self.action_space)):
            raise PrefrlError(
                f"reward checkpoint '{path}' is for actions {state['action_space']}, "
                f"this model has {_describe_space(self.action_space)}; {_OTHER_TASK}"
            )
        saved = state["settings"]
        for key in ("architecture", "ensemble_size", "hidden_sizes", "use_actions", "batch_norm"):
            mine = getattr(self.settings, key)
            theirs = tuple(saved[key]) if isinstance(mine, tuple) else saved[key]
            if theirs != mine:
                raise PrefrlError(
                    f"reward checkpoint '{path}' has reward.{key} = {theirs!r}, this model {mine!r}; "
                    f"use the [reward] settings it was trained with (--set reward.{key}=...)"
                )
        with self._lock:
            self.net.load_state_dict(state["net"])
            self.optimizer.load_state_dict(state["optimizer"])
            for group in self.optimizer.param_groups:  # the preset's step size wins
                group["lr"] = self.settings.learning_rate
            self.norm_mean = state["norm_mean"]
            self.norm_std = state["norm_std"]
            self.l2 = float(state["l2"])
            self.train_calls = int(state["train_calls"])
            self._rng.bit_generator.state = state["rng_state"]
            self._torch_generator.set_state(state["torch_generator_state"])

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> RewardModel:
        """Build a model from a checkpoint alone (spaces and settings are stored in it).

        :param path: a file written by :meth:`save`
        :param kwargs: further constructor arguments (``inference_batch``, ``cache_bytes``)
        """
        state = cls._read(path)
        fields = {f.name for f in dataclasses.fields(RewardSettings)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in state["settings"].items() if k in fields}
        kwargs.setdefault("channels_last", state.get("channels_last", True))
        model = cls(
            _space_from_description(state["observation_space"]),
            _space_from_description(state["action_space"]),
            RewardSettings(**values),
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
        import copy

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
            self.optimizer.load_state_dict(state["optimizer"])
            self.norm_mean, self.norm_std = state["norm_mean"].clone(), state["norm_std"].clone()
            self.l2 = float(state["l2"])
            self.train_calls = int(state["train_calls"])
            self._rng.bit_generator.state = state["rng_state"]
            self._torch_generator.set_state(state["torch_generator_state"])
            self._data = self._label_set(list(state["labels"]), int(state["clip_length"]))
