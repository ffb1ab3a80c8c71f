"""Answers about clip pairs: :class:`Choice` and :class:`Preference`."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from prefrl.data.segments import ClipPair
from prefrl.util.errors import PrefrlError


class Choice(str, enum.Enum):
    """An answer about a clip pair."""

    LEFT = "left"
    RIGHT = "right"
    TIE = "tie"
    CANT_TELL = "cant_tell"

    @property
    def target(self) -> float | None:
        """Probability that the left clip is better; ``None`` = not trained on."""
        return {"left": 1.0, "right": 0.0, "tie": 0.5, "cant_tell": None}[self.value]


def parse_choice(choice: Choice | str) -> Choice:
    """``choice`` as a :class:`Choice`.

    :param choice: a Choice or its value (``left``, ``right``, ``tie``, ``cant_tell``)
    :raises PrefrlError: not one of them
    """
    try:
        return Choice(choice)
    except ValueError:
        raise PrefrlError(
            f"invalid choice {choice!r}; use one of {', '.join(c.value for c in Choice)}"
        ) from None


@dataclass(frozen=True)
class Preference:
    """A labeller's answer about one clip pair.

    :param pair: the two clips
    :param choice: left / right better, tie, or can't tell
    :param labeller: who answered, e.g. ``synthetic`` or a person's name
    :param step: global env step at which the answer reached the trainer
    """

    pair: ClipPair
    choice: Choice
    labeller: str = "synthetic"
    step: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.pair, ClipPair):
            raise ValueError(f"Preference.pair must be a ClipPair, got {type(self.pair).__name__}")
        if not isinstance(self.choice, Choice):
            raise ValueError(f"Preference.choice must be a Choice, got {self.choice!r}")
        if self.step < 0:
            raise ValueError(f"Preference.step must be >= 0, got {self.step}")
