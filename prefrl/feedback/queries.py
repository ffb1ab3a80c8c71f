"""Query selection: which clip pairs to ask the teacher about.

The paper draws about ten times more candidate pairs than it asks and keeps those on
which the reward ensemble disagrees most; it also notes that this sometimes hurts, so
uniform selection stays available (``labels.query_selection`` in a preset).

The ensemble enters only as a callable ``preference_probabilities(pairs)`` returning a
``(members, pairs)`` array of predicted P(left better) (``RewardModel.preference_probabilities``),
so this module does not depend on torch.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np

from prefrl.data.segments import ClipPair, SegmentBuffer
from prefrl.util.errors import PrefrlError

#: ``pairs -> (members, pairs)`` predicted probability that the left clip is better.
PreferenceProbabilities = Callable[[Sequence[ClipPair]], np.ndarray]

#: Names accepted by :func:`make_selector` (same as ``prefrl.config.settings.QUERY_SELECTIONS``).
SELECTORS = ("uniform", "disagreement", "entropy")


class QuerySelector(abc.ABC):
    """Chooses ``n`` queries out of a pool of candidate pairs."""

    #: Whether :func:`draw_queries` should draw ``oversample`` times more candidates
    #: than it asks (pointless for a selector that ignores the candidates' content).
    oversamples: ClassVar[bool] = True

    @abc.abstractmethod
    def select(
        self,
        candidates: Sequence[ClipPair],
        n: int,
        preference_probabilities: PreferenceProbabilities | None = None,
    ) -> list[ClipPair]:
        """Pick at most ``n`` of the candidates (all of them if there are fewer).

        :param candidates: candidate clip pairs
        :param n: pairs wanted
        :param preference_probabilities: the reward ensemble's predictions, called at
            most once with all candidates
        """


class UniformSelector(QuerySelector):
    """``n`` candidates chosen uniformly at random, without replacement.

    :param rng: the selector's own generator
    """

    oversamples = False

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def select(
        self,
        candidates: Sequence[ClipPair],
        n: int,
        preference_probabilities: PreferenceProbabilities | None = None,
    ) -> list[ClipPair]:
        count = min(max(n, 0), len(candidates))
        picked = self.rng.choice(len(candidates), size=count, replace=False) if count else []
        return [candidates[int(i)] for i in picked]


class ScoredSelector(QuerySelector):
    """Keeps the ``n`` candidates with the highest score computed from the ensemble's
    predictions; equal scores keep the candidates' order (which is already random)."""

    @abc.abstractmethod
    def scores(self, probabilities: np.ndarray) -> np.ndarray:
        """``(members, pairs)`` predicted P(left better) -> ``(pairs,)`` scores."""

    def select(
        self,
        candidates: Sequence[ClipPair],
        n: int,
        preference_probabilities: PreferenceProbabilities | None = None,
    ) -> list[ClipPair]:
        count = min(max(n, 0), len(candidates))
        if count == 0:
            return []
        if preference_probabilities is None:
            raise PrefrlError(
                f"{type(self).__name__} needs the reward ensemble's preference_probabilities; "
                "pass it, or use query_selection = 'uniform'"
            )
        probabilities = np.asarray(preference_probabilities(candidates), dtype=np.float64)
        if probabilities.ndim == 1:  # a single predictor: one row
            probabilities = probabilities[None, :]
        if probabilities.ndim != 2 or probabilities.shape[1] != len(candidates):
            raise PrefrlError(
                f"preference_probabilities returned shape {probabilities.shape}, "
                f"expected (members, {len(candidates)})"
            )
        scores = self.scores(probabilities)
        order = np.argsort(-scores, kind="stable")[:count]
        return [candidates[int(i)] for i in order]


class DisagreementSelector(ScoredSelector):
    """The paper's choice: largest variance across ensemble members of P(left better)."""

    def scores(self, probabilities: np.ndarray) -> np.ndarray:
        return probabilities.var(axis=0)


class EntropySelector(ScoredSelector):
    """Largest binary entropy of the ensemble-mean P(left better): the pairs the model
    as a whole is least sure about (P closest to 0.5)."""

    def scores(self, probabilities: np.ndarray) -> np.ndarray:
        p = np.clip(probabilities.mean(axis=0), 1e-12, 1.0 - 1e-12)
        return -(p * np.log(p) + (1.0 - p) * np.log1p(-p))


def make_selector(name: str, rng: np.random.Generator) -> QuerySelector:
    """Build a selector by name.

    :param name: one of :data:`SELECTORS`
    :param rng: generator for selectors that draw at random
    :raises PrefrlError: unknown name
    """
    if name == "uniform":
        return UniformSelector(rng)
    if name == "disagreement":
        return DisagreementSelector()
    if name == "entropy":
        return EntropySelector()
    raise PrefrlError(f"unknown query selection '{name}'; valid selections: {', '.join(SELECTORS)}")


def _distinct_pairs(count: int, segments: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``count`` distinct unordered pairs of distinct segment indices, each in random
    left/right order (so neither side is systematically the older clip)."""
    total = segments * (segments - 1) // 2
    count = min(count, total)
    # Linear index m of the pair (i, j), i < j, is j*(j-1)/2 + i; Generator.choice
    # without replacement does not materialise the population when it is large.
    indices = rng.choice(total, size=count, replace=False)
    swap = rng.random(count) < 0.5
    pairs = []
    for m, s in zip(indices.tolist(), swap.tolist()):
        j = (1 + math.isqrt(1 + 8 * m)) // 2
        i = m - j * (j - 1) // 2
        pairs.append((j, i) if s else (i, j))
    return pairs


def _anchored_pairs(count: int, anchors: Sequence[int], segments: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``count`` distinct unordered pairs of distinct segment indices, each holding at least
    one index of ``anchors``, the other drawn from all ``segments``, in random left/right order.

    :param count: pairs wanted (capped by how many such pairs exist)
    :param anchors: indices of the segments every pair must touch
    :param segments: number of segments
    """
    n_anchors = len(anchors)
    possible = n_anchors * (n_anchors - 1) // 2 + n_anchors * (segments - n_anchors)
    count = min(count, possible)
    pairs: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    while len(pairs) < count:
        # Draw in batches; duplicates are rare unless the pool is nearly exhausted.
        firsts = rng.choice(np.asarray(anchors), size=count - len(pairs))
        seconds = rng.integers(0, segments - 1, size=len(firsts))
        swaps = rng.random(len(firsts)) < 0.5
        for a, b, swap in zip(firsts.tolist(), seconds.tolist(), swaps.tolist()):
            b += b >= a  # any segment but the anchor itself
            key = (min(a, b), max(a, b))
            if key in seen or len(pairs) == count:
                continue
            seen.add(key)
            pairs.append((b, a) if swap else (a, b))
    return pairs


def draw_queries(
    buffer: SegmentBuffer,
    n: int,
    selector: QuerySelector,
    oversample: int,
    rng: np.random.Generator,
    preference_probabilities: PreferenceProbabilities | None = None,
    prefix: str = "q",
    first_id: int = 0,
    recent_since: int | None = None,
) -> list[ClipPair]:
    """Draw candidate pairs from the segment buffer and select ``n`` queries.

    Candidates are distinct unordered pairs of distinct segments (a pair never shows the
    same two clips twice, in either order), ``n * oversample`` of them, or just ``n``
    for a selector that does not oversample, capped by the number of possible pairs.
    The selected pairs get ids ``f"{prefix}{first_id + k:06d}"``, ``k = 0, 1, ...``:
    the caller keeps the counter (advance it by ``len(result)``) so ids are unique
    across a run.

    :param buffer: segments to pair up
    :param n: queries wanted (fewer are returned only if the buffer has too few pairs)
    :param selector: how to choose among the candidates
    :param oversample: candidates drawn per query
    :param rng: generator for drawing candidates
    :param preference_probabilities: the reward ensemble's predictions, for selectors
        that need them
    :param prefix: pair id prefix
    :param first_id: number of the first pair id
    :param recent_since: if given, every candidate pair holds at least one segment that
        started at or after this env step (the current policy's behaviour: queries about
        where the agent is now, QPA), its partner drawn from the whole buffer (so recent
        behaviour is also ranked against older behaviour); all segments when none is recent
    :raises PrefrlError: fewer than two segments in the buffer
    """
    if n <= 0:
        return []
    segments = list(buffer)
    if len(segments) < 2:
        raise PrefrlError(
            f"need at least two segments in the buffer to draw queries, it has {len(segments)}; "
            "collect more experience first"
        )
    wanted = n * max(oversample, 1) if selector.oversamples else n
    anchors = [] if recent_since is None else [i for i, s in enumerate(segments) if s.start_step >= recent_since]
    if anchors:
        indices = _anchored_pairs(wanted, anchors, len(segments), rng)
    else:
        indices = _distinct_pairs(wanted, len(segments), rng)
    candidates = [
        ClipPair(segments[a], segments[b], pair_id=f"candidate{k}") for k, (a, b) in enumerate(indices)
    ]
    chosen = selector.select(candidates, n, preference_probabilities)
    return [
        dataclasses.replace(pair, pair_id=f"{prefix}{first_id + k:06d}")
        for k, pair in enumerate(chosen)
    ]
