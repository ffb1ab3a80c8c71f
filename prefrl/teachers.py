"""Teachers: whoever answers "which clip is better?".

The trainer talks to every teacher through the same asynchronous :class:`Teacher`
interface (hand over queries, later collect whatever answers have arrived), so it does
not know whether a synthetic oracle answers at once or a person answers over minutes
from another process.

:class:`SyntheticTeacher` is the B-Pref teacher (Lee et al., 2021): a perfectly
rational oracle by default, with each of B-Pref's irrationalities (stochastic, mistake,
skip, equal, myopic) one parameter of :class:`~prefrl.presets.TeacherSettings`.
"""

from __future__ import annotations

import abc
import math
from types import TracebackType
from typing import Sequence

import numpy as np

from prefrl.errors import PrefrlError
from prefrl.labels import Choice, Preference
from prefrl.presets import TeacherSettings
from prefrl.segments import ClipPair, Segment

#: Kinds accepted by :func:`make_teacher`.
TEACHER_KINDS = ("synthetic",)


class Teacher(abc.ABC):
    """Asynchronous source of preferences.

    The trainer calls :meth:`ask` with new queries and polls :meth:`answers` whenever it
    likes; neither call blocks on a labeller. A teacher may answer in any order and may
    answer "can't tell" (the trainer drops those).
    """

    @abc.abstractmethod
    def ask(self, pairs: Sequence[ClipPair], step: int) -> None:
        """Hand over queries.

        :param pairs: clip pairs with unique ``pair_id``
        :param step: global env step at which the queries are asked
        """

    @abc.abstractmethod
    def answers(self) -> list[Preference]:
        """All answers that arrived since the last call (possibly none); never blocks."""

    @abc.abstractmethod
    def pending(self) -> int:
        """Queries asked but not answered yet."""

    def close(self) -> None:
        """Release resources (files, connections); a no-op unless overridden."""

    def __enter__(self) -> Teacher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _RunningStd:
    """Running mean and variance (Welford / Chan et al. batch update)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        n_b = values.size
        if n_b == 0:
            return
        mean_b = float(values.mean())
        m2_b = float(np.sum((values - mean_b) ** 2))
        n_a = self.count
        total = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / total
        self.m2 += m2_b + delta * delta * n_a * n_b / total
        self.count = total

    @property
    def std(self) -> float:
        """Sample standard deviation; 1 while it is undefined or zero (nothing to scale by)."""
        if self.count < 2:
            return 1.0
        std = math.sqrt(max(self.m2, 0.0) / (self.count - 1))
        return std if std > 0.0 and math.isfinite(std) else 1.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warning for large |x| (beta of 1e6 is allowed).
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class SyntheticTeacher(Teacher):
    """B-Pref synthetic teacher: answers from the true reward, immediately.

    **Clip return.** For a clip of ``H`` steps with true rewards ``r_t``, the teacher
    sees ``R = sum_t gamma**(H-1-t) * (r_t - termination_penalty * after_termination_t)``:
    myopia (``gamma < 1``) weighs the end of the clip most, and each step spent after the
    underlying task would have terminated costs ``termination_penalty`` (episodes have a
    fixed horizon, so this is the only way the teacher learns that falling over is bad).
    Unlike B-Pref, which applies myopia only to the preference itself, the same ``R``
    is used for every rule below: a myopic person also judges ties and skips myopically.

    **Normalisation.** Raw returns differ by orders of magnitude between tasks (and are
    large compared with any sensible temperature), which makes a Boltzmann teacher with
    a fixed ``beta`` practically deterministic on one task and random on another. So
    the teacher divides every return by the running standard deviation of all clip
    returns it has been asked about so far (both clips of every pair, counted once per
    occurrence), updated with each :meth:`ask` batch *before* that batch is answered;
    the std is taken as 1 while it is undefined (fewer than two returns) or zero. Only
    the scale is normalised, not the mean, so the sign of a return keeps its meaning
    for the skip threshold. ``beta``, ``skip_threshold`` and ``equal_threshold`` are in
    these normalised units: the same settings mean the same irrationality on every
    task, and scaling all rewards by a constant does not change the answers.

    **Rules, in B-Pref's order**, with ``R1`` (left) and ``R2`` (right) normalised:

    1. skip: both ``R1`` and ``R2`` below ``skip_threshold`` -> ``CANT_TELL``;
    2. equal: ``|R1 - R2| < equal_threshold`` -> ``TIE``;
    3. preference: ``beta = inf`` -> the larger return (exactly equal -> ``TIE``);
       finite ``beta`` -> ``LEFT`` with probability ``sigmoid(beta * (R1 - R2))``;
    4. mistake: flip left/right with probability ``mistake_prob``.

    Every pair consumes the same random numbers whatever the settings, so the same
    pairs asked in the same order with the same seed get the same answers.

    :param settings: the irrationality parameters (defaults: perfectly rational)
    :param seed: an int seed or a ``np.random.Generator`` owned by the teacher
    :param termination_penalty: subtracted from the reward of each step after the
        underlying task would have terminated (``preset.task.termination_penalty``)
    """

    labeller = "synthetic"

    def __init__(
        self,
        settings: TeacherSettings | None = None,
        seed: int | np.random.Generator = 0,
        termination_penalty: float = 0.0,
    ) -> None:
        self.settings = settings if settings is not None else TeacherSettings()
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.termination_penalty = float(termination_penalty)
        self._stats = _RunningStd()
        self._answered: list[Preference] = []

    @property
    def return_std(self) -> float:
        """The scale returns are currently divided by."""
        return self._stats.std

    def clip_return(self, segment: Segment) -> float:
        """Myopic, penalised return of one clip, before normalisation."""
        return float(self._clip_returns([segment])[0])

    def _clip_returns(self, segments: Sequence[Segment]) -> np.ndarray:
        weights: dict[int, np.ndarray] = {}  # per clip length; batches may mix lengths
        returns = np.empty(len(segments))
        for i, segment in enumerate(segments):
            length = len(segment)
            if length not in weights:
                weights[length] = self.settings.gamma ** np.arange(length - 1, -1, -1, dtype=np.float64)
            penalty = self.termination_penalty * np.asarray(segment.after_termination, dtype=np.float64)
            returns[i] = (np.asarray(segment.true_rewards, dtype=np.float64) - penalty) @ weights[length]
        return returns

    def choices(self, pairs: Sequence[ClipPair]) -> list[Choice]:
        """Answer a batch synchronously (updates the normalisation, consumes randomness).

        :param pairs: the clip pairs, answered in order
        """
        if not pairs:
            return []
        s = self.settings
        n = len(pairs)
        raw = self._clip_returns([p.left for p in pairs] + [p.right for p in pairs])
        self._stats.update(raw)
        normalised = raw / self._stats.std
        left, right = normalised[:n], normalised[n:]
        diff = left - right
        # Drawn for every pair whatever the settings, so answers of pair k do not depend
        # on which rules fired for the pairs before it.
        u_choice, u_mistake = self.rng.random((2, n))

        if math.isinf(s.beta):
            prefer_left = diff > 0
            exact_tie = diff == 0
        else:
            prefer_left = u_choice < _sigmoid(s.beta * diff)
            exact_tie = np.zeros(n, dtype=bool)
        flipped = prefer_left ^ (u_mistake < s.mistake_prob)
        skip = np.maximum(left, right) < s.skip_threshold
        equal = np.abs(diff) < s.equal_threshold

        answers = []
        for k in range(n):
            if skip[k]:
                answers.append(Choice.CANT_TELL)
            elif equal[k] or exact_tie[k]:
                answers.append(Choice.TIE)
            else:
                answers.append(Choice.LEFT if flipped[k] else Choice.RIGHT)
        return answers

    def ask(self, pairs: Sequence[ClipPair], step: int) -> None:
        """Answer the queries at once; collect them with :meth:`answers`."""
        for pair, choice in zip(pairs, self.choices(pairs)):
            self._answered.append(Preference(pair=pair, choice=choice, labeller=self.labeller, step=step))

    def answers(self) -> list[Preference]:
        answered, self._answered = self._answered, []
        return answered

    def pending(self) -> int:
        return 0  # answers are computed inside ask()


def make_teacher(
    kind: str,
    settings: TeacherSettings | None = None,
    seed: int | np.random.Generator = 0,
    termination_penalty: float = 0.0,
) -> Teacher:
    """Build a teacher by name.

    :param kind: one of :data:`TEACHER_KINDS`
    :param settings: synthetic teacher settings (``preset.teacher``)
    :param seed: int seed or generator for the teacher's randomness
    :param termination_penalty: ``preset.task.termination_penalty``
    :raises PrefrlError: unknown kind
    """
    if kind == "synthetic":
        return SyntheticTeacher(settings, seed=seed, termination_penalty=termination_penalty)
    raise PrefrlError(f"unknown teacher kind '{kind}'; valid kinds: {', '.join(TEACHER_KINDS)}")
