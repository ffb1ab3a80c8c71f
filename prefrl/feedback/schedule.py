"""How many labels a run should have asked for by each env step."""

from __future__ import annotations

import math

from prefrl.config.settings import LabelSettings
from prefrl.util.errors import PrefrlError


class LabelSchedule:
    """How many labels a run should have asked for by env step ``T``.

    The paper lowers the label rate over training, roughly as ``1/T``: the rate is
    ``dN/dT = k * c / (T + c)`` with rate constant ``c`` (2e6 MuJoCo, 5e6 Atari).
    Integrating from 0 gives ``N(T) = N0 + k * c * ln(1 + T/c)``; ``k`` is fixed by
    ``N(total_steps) = budget``, so

        ``target(T) = initial + (budget - initial) * ln(1 + T/c) / ln(1 + total_steps/c)``

    floored to an integer. ``target(0) = initial`` (the labels collected from the random
    policy before RL starts), ``target(total_steps) = budget``, monotone in between and
    clamped to ``[initial, budget]`` outside.

    :param budget: labels for the whole run
    :param initial_labels: labels wanted before RL starts
    :param rate_constant: ``c``, in env steps
    :param total_steps: env steps of the run
    """

    def __init__(self, budget: int, initial_labels: int, rate_constant: float, total_steps: int) -> None:
        if budget <= 0 or not 0 <= initial_labels <= budget:
            raise PrefrlError(
                f"label schedule needs 0 <= initial_labels <= budget and budget > 0, "
                f"got initial_labels = {initial_labels}, budget = {budget}"
            )
        if rate_constant <= 0 or total_steps <= 0:
            raise PrefrlError(
                f"label schedule needs a positive rate_constant and total_steps, "
                f"got {rate_constant} and {total_steps}"
            )
        self.budget = int(budget)
        self.initial_labels = int(initial_labels)
        self.rate_constant = float(rate_constant)
        self.total_steps = int(total_steps)
        self._scale = math.log1p(self.total_steps / self.rate_constant)

    @classmethod
    def from_settings(cls, settings: LabelSettings, total_steps: int) -> LabelSchedule:
        """The schedule of a preset: ``from_settings(preset.labels, preset.ppo.total_steps)``."""
        return cls(settings.budget, settings.initial_labels, settings.rate_constant, total_steps)

    def target(self, step: int) -> int:
        """Cumulative labels wanted by env step ``step``."""
        if step <= 0:
            return self.initial_labels
        if step >= self.total_steps:
            return self.budget
        fraction = math.log1p(step / self.rate_constant) / self._scale
        wanted = self.initial_labels + (self.budget - self.initial_labels) * fraction
        return min(self.budget, max(self.initial_labels, math.floor(wanted)))

    def rate(self, step: int) -> float:
        """Labels per env step wanted at ``step`` (the derivative of :meth:`target`)."""
        return (self.budget - self.initial_labels) / self._scale / (max(step, 0) + self.rate_constant)

    def due(self, step: int, asked_so_far: int) -> int:
        """Labels to ask for now, given how many were asked already (never negative)."""
        return max(0, self.target(step) - asked_so_far)
