"""The synthetic (B-Pref) teacher: one test per irrationality parameter."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prefrl.config.settings import TeacherSettings
from prefrl.data.segments import ClipPair, Segment
from prefrl.feedback.choices import Choice, Preference
from prefrl.feedback.teachers import SyntheticTeacher, Teacher, make_teacher
from prefrl.util.errors import PrefrlError


def segment(rewards: list[float] | np.ndarray, after: list[bool] | None = None, sid: str = "") -> Segment:
    rewards = np.asarray(rewards, dtype=np.float32)
    length = len(rewards)
    return Segment(
        observations=np.zeros((length, 2), dtype=np.float32),
        actions=np.zeros((length, 1), dtype=np.float32),
        true_rewards=rewards,
        after_termination=np.asarray(after if after is not None else [False] * length, dtype=bool),
        segment_id=sid,
    )


def pair_of_returns(left: float, right: float, length: int = 4, k: int = 0) -> ClipPair:
    """Constant-reward clips with the given (undiscounted) returns."""
    return ClipPair(
        segment([left / length] * length, sid=f"l{k}"),
        segment([right / length] * length, sid=f"r{k}"),
        pair_id=f"p{k}",
    )


def random_pairs(n: int, seed: int, scale: float = 1.0) -> list[ClipPair]:
    rng = np.random.default_rng(seed)
    returns = rng.normal(0.0, 10.0, size=(n, 2))
    return [pair_of_returns(a * scale, b * scale, k=k) for k, (a, b) in enumerate(returns)]


def ask_choices(teacher: Teacher, pairs: list[ClipPair], step: int = 0) -> list[Choice]:
    teacher.ask(pairs, step)
    answers = teacher.answers()
    assert [a.pair.pair_id for a in answers] == [p.pair_id for p in pairs]
    return [a.choice for a in answers]


def test_rational_picks_larger_return_and_is_asynchronous_interface() -> None:
    teacher = make_teacher("synthetic", TeacherSettings(), seed=0)
    assert isinstance(teacher, SyntheticTeacher)
    pairs = [pair_of_returns(1.0, 2.0, k=0), pair_of_returns(5.0, -3.0, k=1), pair_of_returns(2.0, 2.0, k=2)]
    teacher.ask(pairs, step=123)
    assert teacher.pending() == 0
    answers = teacher.answers()
    assert [a.choice for a in answers] == [Choice.RIGHT, Choice.LEFT, Choice.TIE]
    assert all(isinstance(a, Preference) and a.labeller == "synthetic" and a.step == 123 for a in answers)
    assert teacher.answers() == []  # drained
    teacher.close()


def test_normalisation_is_running_std_of_all_clip_returns() -> None:
    teacher = SyntheticTeacher(TeacherSettings(), seed=0)
    assert teacher.return_std == 1.0
    first, second = random_pairs(30, seed=1), random_pairs(50, seed=2, scale=3.0)
    teacher.ask(first, 0)
    teacher.ask(second, 0)
    seen = [teacher.clip_return(s) for p in first + second for s in (p.left, p.right)]
    assert teacher.return_std == pytest.approx(np.std(seen, ddof=1), rel=1e-9)
    constant = SyntheticTeacher(TeacherSettings(), seed=0)
    constant.ask([pair_of_returns(2.0, 2.0)], 0)
    assert constant.return_std == 1.0  # std = 0 is guarded


def test_finite_beta_matches_sigmoid_and_large_beta_is_rational() -> None:
    beta = 1.0
    # Groups of pairs with one return difference each; the std of all returns is then
    # known after the ask, and the fraction of LEFT answers in each group must match
    # sigmoid(beta * dR / std).
    deltas = [-4.0, -1.0, 0.5, 2.0, 6.0]
    per_group = 2000
    pairs = [
        pair_of_returns(10.0 + d / 2, 10.0 - d / 2, k=g * per_group + i)
        for g, d in enumerate(deltas)
        for i in range(per_group)
    ]
    teacher = SyntheticTeacher(TeacherSettings(beta=beta), seed=3)
    choices = ask_choices(teacher, pairs)
    std = teacher.return_std
    for g, d in enumerate(deltas):
        group = choices[g * per_group:(g + 1) * per_group]
        assert set(group) <= {Choice.LEFT, Choice.RIGHT}
        left = np.mean([c is Choice.LEFT for c in group])
        expected = 1.0 / (1.0 + math.exp(-beta * d / std))
        assert abs(left - expected) < 0.04, (d, left, expected)
    mixed = np.mean([c is Choice.LEFT for c in choices[per_group:2 * per_group]])
    assert 0.2 < mixed < 0.8  # small beta: answers really are mixed

    pairs = random_pairs(500, seed=4)
    rational = ask_choices(SyntheticTeacher(TeacherSettings(), seed=0), pairs)
    near = ask_choices(SyntheticTeacher(TeacherSettings(beta=1e6), seed=0), pairs)
    assert near == rational


def test_mistake_flips_about_ten_percent() -> None:
    pairs = random_pairs(6000, seed=5)
    rational = ask_choices(SyntheticTeacher(TeacherSettings(), seed=0), pairs)
    noisy = ask_choices(SyntheticTeacher(TeacherSettings(mistake_prob=0.1), seed=6), pairs)
    flipped = np.mean([a != b for a, b in zip(rational, noisy)])
    assert abs(flipped - 0.1) < 0.015  # ~3.8 standard deviations at n = 6000
    assert all({a, b} == {Choice.LEFT, Choice.RIGHT} for a, b in zip(rational, noisy) if a != b)


def test_skip_threshold_cant_tell_when_both_below() -> None:
    pairs = [
        pair_of_returns(-5.0, -4.0, k=0),   # both low -> can't tell
        pair_of_returns(-5.0, 20.0, k=1),   # one high -> answered
        pair_of_returns(15.0, 10.0, k=2),
        pair_of_returns(-30.0, -1.0, k=3),  # both low
    ]
    raw = np.array([[p.left.true_return, p.right.true_return] for p in pairs])
    std = np.std(raw, ddof=1)
    threshold = 0.0
    teacher = SyntheticTeacher(TeacherSettings(skip_threshold=threshold), seed=0)
    choices = ask_choices(teacher, pairs)
    assert teacher.return_std == pytest.approx(std)
    assert choices == [Choice.CANT_TELL, Choice.RIGHT, Choice.LEFT, Choice.CANT_TELL]
    # In normalised units: a threshold between the normalised values decides.
    teacher = SyntheticTeacher(TeacherSettings(skip_threshold=12.0 / std), seed=0)
    assert ask_choices(teacher, pairs)[1:3] == [Choice.RIGHT, Choice.LEFT]
    teacher = SyntheticTeacher(TeacherSettings(skip_threshold=16.0 / std), seed=0)
    assert ask_choices(teacher, pairs)[1:3] == [Choice.RIGHT, Choice.CANT_TELL]


def test_equal_threshold_ties() -> None:
    pairs = [pair_of_returns(10.0, 10.5, k=0), pair_of_returns(10.0, 20.0, k=1), pair_of_returns(0.0, -9.0, k=2)]
    raw = [s.true_return for p in pairs for s in (p.left, p.right)]
    std = float(np.std(raw, ddof=1))
    teacher = SyntheticTeacher(TeacherSettings(equal_threshold=1.0 / std), seed=0)
    assert ask_choices(teacher, pairs) == [Choice.TIE, Choice.RIGHT, Choice.LEFT]
    # Ties win over mistakes and over Boltzmann noise.
    teacher = SyntheticTeacher(TeacherSettings(equal_threshold=1.0 / std, beta=0.1, mistake_prob=0.5), seed=0)
    assert ask_choices(teacher, pairs)[0] is Choice.TIE


def test_myopic_gamma_weights_late_steps_more() -> None:
    early = segment([1.0, 0.0, 0.0, 0.0], sid="early")
    late = segment([0.0, 0.0, 0.0, 0.6], sid="late")
    pair = ClipPair(early, late, pair_id="p")
    assert ask_choices(SyntheticTeacher(TeacherSettings(gamma=1.0)), [pair]) == [Choice.LEFT]
    myopic = SyntheticTeacher(TeacherSettings(gamma=0.5))
    assert myopic.clip_return(early) == pytest.approx(0.125)
    assert myopic.clip_return(late) == pytest.approx(0.6)
    assert ask_choices(myopic, [pair]) == [Choice.RIGHT]


def test_termination_penalty_counts() -> None:
    fallen = segment([1.0] * 4, after=[False, True, True, True], sid="fallen")
    upright = segment([0.8] * 4, sid="upright")
    pair = ClipPair(fallen, upright, pair_id="p")
    assert ask_choices(make_teacher("synthetic", TeacherSettings(), 0, termination_penalty=0.0), [pair]) == [Choice.LEFT]
    teacher = make_teacher("synthetic", TeacherSettings(), 0, termination_penalty=1.0)
    assert ask_choices(teacher, [pair]) == [Choice.RIGHT]
    assert isinstance(teacher, SyntheticTeacher) and teacher.clip_return(fallen) == pytest.approx(1.0)


def test_normalisation_makes_answers_scale_invariant() -> None:
    settings = TeacherSettings(beta=1.0, mistake_prob=0.1, skip_threshold=-0.5, equal_threshold=0.05, gamma=0.9)
    teacher, scaled_teacher = SyntheticTeacher(settings, seed=7), SyntheticTeacher(settings, seed=7)
    for batch in range(3):
        pairs = random_pairs(400, seed=10 + batch)
        scaled = random_pairs(400, seed=10 + batch, scale=1000.0)
        answers = ask_choices(teacher, pairs)
        assert ask_choices(scaled_teacher, scaled) == answers
        assert len(set(answers)) == 4  # every rule fired somewhere: the test means something


def test_same_seed_same_answers() -> None:
    settings = TeacherSettings(beta=0.5, mistake_prob=0.2)
    pairs = random_pairs(300, seed=8)
    first = ask_choices(SyntheticTeacher(settings, seed=11), pairs)
    assert ask_choices(SyntheticTeacher(settings, seed=11), pairs) == first
    assert ask_choices(SyntheticTeacher(settings, seed=np.random.default_rng(11)), pairs) == first
    assert ask_choices(SyntheticTeacher(settings, seed=12), pairs) != first


def test_unknown_kind_is_a_one_line_error() -> None:
    with pytest.raises(PrefrlError, match="unknown teacher kind 'oracle'.*synthetic") as info:
        make_teacher("oracle", TeacherSettings(), 0)
    assert "\n" not in str(info.value)
