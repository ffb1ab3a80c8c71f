"""Query selection: uniform, ensemble disagreement, entropy, and drawing from the buffer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from prefrl.config.settings import QUERY_SELECTIONS
from prefrl.data.segments import ClipPair, Segment, SegmentBuffer
from prefrl.feedback.queries import (
    SELECTORS,
    DisagreementSelector,
    EntropySelector,
    UniformSelector,
    draw_queries,
    make_selector,
)
from prefrl.util.errors import PrefrlError


def make_segment(k: int, length: int = 3) -> Segment:
    return Segment(
        observations=np.full((length, 2), k, dtype=np.float32),
        actions=np.zeros((length,), dtype=np.int64),
        true_rewards=np.full(length, float(k), dtype=np.float32),
        after_termination=np.zeros(length, dtype=bool),
        segment_id=f"s{k:07d}",
    )


def candidates(n: int) -> list[ClipPair]:
    return [ClipPair(make_segment(2 * k), make_segment(2 * k + 1), pair_id=f"c{k}") for k in range(n)]


def filled_buffer(segments: int, clip_length: int = 3) -> SegmentBuffer:
    buffer = SegmentBuffer(clip_length=clip_length, n_envs=2, capacity=segments)
    step = 0
    while len(buffer) < segments:
        buffer.add_step(
            step,
            observations=np.full((2, 2), step, dtype=np.float32),
            actions=np.zeros(2, dtype=np.int64),
            true_rewards=np.ones(2),
            dones=np.zeros(2, dtype=bool),
        )
        step += 1
    return buffer


class FakeEnsemble:
    """Stands in for ``RewardModel.preference_probabilities``: P(left) per member from a
    fixed table keyed by the pair's clips; records every call."""

    def __init__(self, table: dict[tuple[str, str], np.ndarray] | None = None, members: int = 3, seed: int = 0) -> None:
        self.table = table if table is not None else {}
        self.members = members
        self.rng = np.random.default_rng(seed)
        self.calls: list[int] = []

    def __call__(self, pairs: Sequence[ClipPair]) -> np.ndarray:
        self.calls.append(len(pairs))
        columns = []
        for pair in pairs:
            key = (pair.left.segment_id, pair.right.segment_id)
            if key not in self.table:
                self.table[key] = self.rng.uniform(0.0, 1.0, size=self.members)
            columns.append(self.table[key])
        return np.stack(columns, axis=1)


def test_selector_names_match_presets() -> None:
    assert SELECTORS == QUERY_SELECTIONS
    rng = np.random.default_rng(0)
    assert isinstance(make_selector("uniform", rng), UniformSelector)
    assert isinstance(make_selector("disagreement", rng), DisagreementSelector)
    assert isinstance(make_selector("entropy", rng), EntropySelector)
    with pytest.raises(PrefrlError, match="unknown query selection 'random'.*uniform, disagreement, entropy"):
        make_selector("random", rng)


def test_uniform_returns_n_distinct_pairs() -> None:
    pool = candidates(50)
    chosen = UniformSelector(np.random.default_rng(1)).select(pool, 10)
    assert len(chosen) == 10 and len({p.pair_id for p in chosen}) == 10
    assert UniformSelector(np.random.default_rng(1)).select(pool, 10) == chosen  # seeded
    assert len(UniformSelector(np.random.default_rng(1)).select(pool[:4], 10)) == 4

    queries = draw_queries(filled_buffer(20), 8, make_selector("uniform", np.random.default_rng(2)),
                           oversample=10, rng=np.random.default_rng(3), prefix="q", first_id=120)
    assert [q.pair_id for q in queries] == [f"q{k:06d}" for k in range(120, 128)]
    clip_sets = {frozenset((q.left.segment_id, q.right.segment_id)) for q in queries}
    assert len(clip_sets) == 8 and all(len(s) == 2 for s in clip_sets)  # distinct pairs, never a clip with itself


def test_disagreement_picks_largest_member_variance() -> None:
    pool = candidates(40)
    ensemble = FakeEnsemble(seed=4)
    chosen = DisagreementSelector().select(pool, 5, ensemble)
    assert ensemble.calls == [40]  # one batched call over all candidates
    variance = {p.pair_id: ensemble.table[(p.left.segment_id, p.right.segment_id)].var() for p in pool}
    expected = sorted(variance, key=variance.get, reverse=True)[:5]
    assert [p.pair_id for p in chosen] == expected


def test_entropy_picks_mean_probability_closest_to_half() -> None:
    pool = candidates(6)
    means = [0.05, 0.48, 0.9, 0.6, 0.3, 0.51]
    # Members disagree a lot on the pairs the entropy selector should *not* pick, so a
    # variance-based choice would differ.
    spread = [0.04, 0.0, 0.1, 0.0, 0.29, 0.01]
    table = {
        (p.left.segment_id, p.right.segment_id): np.array([m - s, m, m + s])
        for p, m, s in zip(pool, means, spread)
    }
    chosen = EntropySelector().select(pool, 3, FakeEnsemble(table))
    assert [p.pair_id for p in chosen] == ["c5", "c1", "c3"]
    assert [p.pair_id for p in DisagreementSelector().select(pool, 3, FakeEnsemble(table))] == ["c4", "c2", "c0"]


def test_scored_selectors_need_probabilities_of_the_right_shape() -> None:
    pool = candidates(4)
    with pytest.raises(PrefrlError, match="preference_probabilities"):
        DisagreementSelector().select(pool, 2, None)
    with pytest.raises(PrefrlError, match=r"expected \(members, 4\)"):
        EntropySelector().select(pool, 2, lambda pairs: np.zeros((3, 5)))


@pytest.mark.parametrize("name", ["disagreement", "entropy"])
def test_draw_queries_oversamples_and_selects_n(name: str) -> None:
    buffer = filled_buffer(30)
    ensemble = FakeEnsemble(seed=5)
    queries = draw_queries(buffer, 7, make_selector(name, np.random.default_rng(0)), oversample=10,
                           rng=np.random.default_rng(6), preference_probabilities=ensemble, prefix="q")
    assert ensemble.calls == [70]
    assert len(queries) == 7
    assert [q.pair_id for q in queries] == [f"q{k:06d}" for k in range(7)]
    assert len({frozenset((q.left.segment_id, q.right.segment_id)) for q in queries}) == 7


def test_draw_queries_uniform_draws_only_n_and_caps_at_possible_pairs() -> None:
    ensemble = FakeEnsemble()
    queries = draw_queries(filled_buffer(30), 7, make_selector("uniform", np.random.default_rng(0)), 10,
                           np.random.default_rng(1), preference_probabilities=ensemble)
    assert len(queries) == 7 and ensemble.calls == []
    # Three segments make only three distinct pairs, however many are wanted.
    queries = draw_queries(filled_buffer(3), 5, DisagreementSelector(), 10, np.random.default_rng(2), FakeEnsemble())
    assert len({frozenset((q.left.segment_id, q.right.segment_id)) for q in queries}) == len(queries) == 3
    # Both sides get the older clip sometimes: no systematic position.
    sides = [q.left.segment_id < q.right.segment_id
             for q in draw_queries(filled_buffer(40), 200, UniformSelector(np.random.default_rng(3)), 1,
                                   np.random.default_rng(4))]
    assert 0.35 < np.mean(sides) < 0.65
    with pytest.raises(PrefrlError, match="at least two segments"):
        draw_queries(filled_buffer(1), 1, DisagreementSelector(), 10, np.random.default_rng(0), FakeEnsemble())


def test_a_query_window_puts_a_recent_clip_in_every_candidate() -> None:
    buffer = filled_buffer(20)  # two envs, clips of 3 steps: segment k starts at step 3 * (k // 2)
    since = max(s.start_step for s in buffer) - 3  # the newest four segments are recent
    recent = {s.segment_id for s in buffer if s.start_step >= since}
    assert len(recent) == 4
    seen = FakeEnsemble()
    queries = draw_queries(buffer, 5, DisagreementSelector(), 10, np.random.default_rng(0),
                           preference_probabilities=seen, recent_since=since)
    assert len(queries) == 5 and seen.calls == [50]
    assert all(q.left.segment_id in recent or q.right.segment_id in recent for q in queries)
    # Partners come from the whole buffer, and every pair is distinct in either order.
    partners = {q.left.segment_id for q in queries} | {q.right.segment_id for q in queries}
    assert partners - recent
    assert len({frozenset((q.left.segment_id, q.right.segment_id)) for q in queries}) == 5
    # Capped at the pairs that touch a recent clip: 4 * 3 / 2 + 4 * 16 = 70.
    assert len(draw_queries(buffer, 200, UniformSelector(np.random.default_rng(1)), 1, np.random.default_rng(2),
                            recent_since=since)) == 70


def test_without_recent_clips_the_window_falls_back_to_the_whole_buffer() -> None:
    buffer = filled_buffer(6)
    late = max(s.start_step for s in buffer) + 100
    a = draw_queries(buffer, 4, UniformSelector(np.random.default_rng(3)), 1, np.random.default_rng(4),
                     recent_since=late)
    b = draw_queries(buffer, 4, UniformSelector(np.random.default_rng(3)), 1, np.random.default_rng(4))
    assert [(q.left.segment_id, q.right.segment_id) for q in a] == [(q.left.segment_id, q.right.segment_id) for q in b]
