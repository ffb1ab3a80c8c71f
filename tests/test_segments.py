"""Segment and clip-pair data classes and the buffer that cuts segments from rollouts."""

import numpy as np
import pytest

from prefrl.data.segments import ClipPair, Segment, SegmentBuffer


def make_segment(length: int = 5, obs_dim: int = 3, value: float = 0.0, seg_id: str = "s") -> Segment:
    return Segment(
        observations=np.full((length, obs_dim), value, dtype=np.float32),
        actions=np.zeros((length, 1), dtype=np.float32),
        true_rewards=np.full(length, value, dtype=np.float32),
        after_termination=np.zeros(length, dtype=bool),
        segment_id=seg_id,
    )


def test_segment_checks_shapes():
    with pytest.raises(ValueError, match="actions"):
        Segment(np.zeros((5, 3)), np.zeros((4, 1)), np.zeros(5), np.zeros(5, dtype=bool))
    with pytest.raises(ValueError, match="1-D"):
        Segment(np.zeros((5, 3)), np.zeros((5, 1)), np.zeros((5, 1)), np.zeros(5, dtype=bool))
    with pytest.raises(ValueError, match="frames"):
        Segment(np.zeros((5, 3)), np.zeros((5, 1)), np.zeros(5), np.zeros(5, dtype=bool),
                frames=np.zeros((5, 10, 10), dtype=np.uint8))
    assert make_segment(value=2.0).true_return == pytest.approx(10.0)


def test_clip_pair_needs_equal_lengths():
    with pytest.raises(ValueError, match="unequal"):
        ClipPair(make_segment(5), make_segment(6))


def test_buffer_cuts_segments_within_episodes():
    buffer = SegmentBuffer(clip_length=3, n_envs=2, capacity=10)
    dones = np.zeros(2, dtype=bool)
    for step in range(7):
        done = dones.copy()
        done[1] = step == 4  # env 1's episode ends after its 5th step: partial segment dropped
        buffer.add_step(step * 2, np.full((2, 2), step, dtype=np.float32), np.zeros((2, 1)),
                        np.array([step, -step], dtype=np.float32), done)
    # env 0: steps 0-2 and 3-5; env 1: steps 0-2, then 3-4 dropped at the episode end, 5-6 open
    assert len(buffer) == 3
    first = buffer.segments[0]
    np.testing.assert_array_equal(first.true_rewards, [0, 1, 2])
    assert first.start_step == 0
    assert all(len(s) == 3 for s in buffer)
    assert len({s.segment_id for s in buffer}) == 3


def test_buffer_capacity_and_pairs():
    buffer = SegmentBuffer(clip_length=2, n_envs=1, capacity=4)
    for step in range(20):
        buffer.add_step(step, np.zeros((1, 2)), np.zeros((1, 1)), np.zeros(1), np.zeros(1, dtype=bool))
    assert len(buffer) == 4 and buffer.total_cut == 10
    pairs = buffer.sample_pairs(50, np.random.default_rng(0))
    assert len(pairs) == 50
    assert all(p.left.segment_id != p.right.segment_id for p in pairs)
