"""Teachers: whoever answers "which clip is better?".

The trainer talks to every teacher through the same asynchronous :class:`Teacher`
interface (hand over queries, later collect whatever answers have arrived), so it does
not know whether a synthetic oracle answers at once or a person answers over minutes
from another process.

:class:`SyntheticTeacher` is the B-Pref teacher (Lee et al., 2021): a perfectly
rational oracle by default, with each of B-Pref's irrationalities (stochastic, mistake,
skip, equal, myopic) one parameter of :class:`~prefrl.config.settings.TeacherSettings`.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import math
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import numpy as np

from prefrl.config.settings import TeacherSettings
from prefrl.data.segments import ClipPair, Segment
from prefrl.feedback.choices import Choice, Preference
from prefrl.feedback.store import LabelStore
from prefrl.util.errors import PrefrlError

#: Kinds accepted by :func:`make_teacher`.
TEACHER_KINDS = ("synthetic", "human")


class Teacher(abc.ABC):
    """Asynchronous source of preferences.

    The trainer calls :meth:`ask` with new queries and polls :meth:`answers` whenever it
    likes; neither call blocks on a labeller. A teacher may answer in any order and may
    answer "can't tell" (the trainer drops those).
    """

    #: The answers are already in the label store when :meth:`answers` returns them
    #: (the human teacher reads them from there), so the trainer must not record them
    #: again: re-recording could bring back a label a person just undid.
    answers_in_store: bool = False
    #: Asked the same queries at the same steps, the teacher gives the same answers at the
    #: same points (the synthetic teacher), so a run resumed from a checkpoint retraces the
    #: interrupted session exactly, down to the ids of its clips and pairs. A person does
    #: not: a resumed run then takes other turns, and its new clips and pairs must not
    #: reuse the ids the interrupted session stored after the checkpoint.
    replayable: bool = True
    #: Attributes that are connections or settings, not state (left out of :meth:`run_state`).
    _resources: tuple[str, ...] = ("store", "settings")

    def run_state(self) -> dict[str, Any]:
        """The teacher's state for a run checkpoint, without its label store connection
        and settings: the synthetic teacher's generator, return statistics and unread
        answers; the human teacher's cursor over the store's labels and the pairs it
        asked (its pending queries: the pairs themselves are in the label store, so
        restoring this re-attaches them)."""
        return {k: copy.deepcopy(v) for k, v in vars(self).items() if k not in self._resources}

    def load_run_state(self, state: dict[str, Any]) -> None:
        """Put a :meth:`run_state` of a teacher of the same kind back; generators in
        place, so whoever else holds this teacher's generator sees the restored state."""
        for name, saved in state.items():
            current = getattr(self, name, None)
            if isinstance(current, np.random.Generator) and isinstance(saved, np.random.Generator):
                current.bit_generator.state = saved.bit_generator.state
            else:
                setattr(self, name, copy.deepcopy(saved))

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

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
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


class HumanTeacher(Teacher):
    """People answering in viewers (``prefrl label``), possibly in other processes.

    :meth:`ask` stores the pairs as pending queries in the label store; viewers lease
    them, and commit each answer to the store on the keypress. :meth:`answers` reads the
    labels that arrived since the last call (a cursor over ``label_id``) and turns them
    into :class:`Preference` objects whose pairs are loaded from the store, so the
    trainer sees exactly what the person saw. Nothing here waits for a person.

    **Undo.** A viewer can take back its last answer (``undo_label``). Labels younger
    than ``settle_seconds`` are therefore held back for a moment, so an answer undone
    right after the keypress never reaches the trainer. A label undone later than that
    was already handed over; when the pair is answered again the new label is handed
    over too (the trainer cannot take a label back) and counted in :attr:`revised`.

    Labels of pairs this teacher did not ask about (imported with ``prefrl labels
    import``, or from an earlier session on the same clips folder) are handed over as
    well: every label in the store reaches the trainer exactly once.

    :param store: the run's label store (its connection is used from the calling thread)
    :param settle_seconds: hold back labels younger than this (see Undo above)
    :param keep_frames: keep the clips' display frames in the returned pairs; off by
        default because the reward model never reads them and Atari frames would
        triple the memory of its label buffer
    """

    labeller = "human"
    answers_in_store = True
    replayable = False

    def __init__(self, store: LabelStore, settle_seconds: float = 3.0, keep_frames: bool = False) -> None:
        if settle_seconds < 0:
            raise PrefrlError(f"settle_seconds = {settle_seconds} is negative; give 0 or more seconds")
        self.store = store
        self.settle_seconds = float(settle_seconds)
        self.keep_frames = keep_frames
        self._cursor = 0
        self._asked: set[str] = set()
        self._answered: set[str] = set()
        self._step = 0
        #: labels that replaced a label of the same pair handed over earlier
        self.revised = 0
        #: ``(pair_id, message)`` of labels whose clips could not be read (skipped)
        self.unreadable: list[tuple[str, str]] = []

    @property
    def viewer_command(self) -> str:
        """The command a person runs to answer this teacher's queries."""
        return f"prefrl label {self.store.clips_dir}"

    def ask(self, pairs: Sequence[ClipPair], step: int) -> None:
        """Store the queries as pending pairs (a no-op for pairs already stored)."""
        self.store.add_pairs(pairs)
        self._asked.update(pair.pair_id for pair in pairs)
        self._step = max(self._step, int(step))

    def answers(self) -> list[Preference]:
        """New labels from the store, oldest first; ``step`` is that of the latest ask.

        "Can't tell" answers are included (the trainer drops them), so that
        :meth:`pending` counts them as answered.
        """
        now = time.time()
        preferences: list[Preference] = []
        for label_id, pair_id, choice, labeller, created in self.store.labels_after(self._cursor):
            if now - created < self.settle_seconds:
                break  # rows come in label_id order: keep this and later ones for next time
            self._cursor = label_id
            try:
                pair = self.store.load_pair(pair_id)
            except PrefrlError as exc:
                self.unreadable.append((pair_id, str(exc)))
                continue
            if not self.keep_frames:
                pair = ClipPair(_without_frames(pair.left), _without_frames(pair.right), pair_id=pair.pair_id)
            if pair_id in self._answered:
                self.revised += 1
            self._answered.add(pair_id)
            preferences.append(Preference(pair=pair, choice=choice, labeller=labeller, step=self._step))
        return preferences

    def pending(self) -> int:
        """Pairs asked by this teacher that no answer handed over covers yet."""
        return len(self._asked - self._answered)


def _without_frames(segment: Segment) -> Segment:
    return segment if segment.frames is None else dataclasses.replace(segment, frames=None)


def make_teacher(
    kind: str,
    settings: TeacherSettings | None = None,
    seed: int | np.random.Generator = 0,
    termination_penalty: float = 0.0,
    *,
    store: LabelStore | None = None,
) -> Teacher:
    """Build a teacher by name.

    :param kind: one of :data:`TEACHER_KINDS`
    :param settings: synthetic teacher settings (``preset.teacher``)
    :param seed: int seed or generator for the teacher's randomness
    :param termination_penalty: ``preset.task.termination_penalty``
    :param store: the run's label store; required by the human teacher
    :raises PrefrlError: unknown kind, or a human teacher without a store
    """
    if kind == "synthetic":
        return SyntheticTeacher(settings, seed=seed, termination_penalty=termination_penalty)
    if kind == "human":
        if store is None:
            raise PrefrlError("the human teacher needs the run's label store: make_teacher('human', ..., store=store)")
        return HumanTeacher(store)
    raise PrefrlError(f"unknown teacher kind '{kind}'; valid kinds: {', '.join(TEACHER_KINDS)}")
