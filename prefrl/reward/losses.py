"""The preference objective as pure functions: the labeller model, its loss, the L2
strength's adaptation and the frame subsets a clip's return is estimated from.

Christiano et al. (2017) model a labeller's choice between two clips with the
Bradley-Terry model on the clips' predicted returns, plus a fixed chance that the
labeller answered at random.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: Factor by which the L2 strength moves when val/train loss leaves its band.
L2_STEP = 1.5


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


def uses_frame_subset(k: int, length: int) -> bool:
    """``reward.frames_per_clip = k`` picks a subset of a ``length``-step clip; 0 or at
    least the clip's length means all its frames."""
    return 0 < k < length


def evenly_spaced(length: int, k: int) -> np.ndarray | None:
    """``k`` evenly spaced step indices of a ``length``-step clip (None: all steps)."""
    if not uses_frame_subset(k, length):
        return None
    return np.round(np.linspace(0, length - 1, k)).astype(np.int64)
