"""Labels as JSON lines, to move them between runs and machines (``prefrl labels export``
and ``prefrl labels import``).

Format, one object per line::

    {"pair_id": "q000012", "left_clip": "s0000031", "right_clip": "s0000007",
     "choice": "left", "labeller": "alice", "time": 1700000000.0}

``choice`` is one of ``left``, ``right``, ``tie``, ``cant_tell``; ``time`` is unix seconds
(when the answer was given). Clips are referred to by id; copy the ``clips/`` folder
along for another machine. :meth:`~prefrl.feedback.store.LabelStore.export_jsonl` and
:meth:`~prefrl.feedback.store.LabelStore.import_jsonl` move them in and out of a store.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prefrl.feedback.choices import Choice
from prefrl.util.atomic import atomic_file
from prefrl.util.errors import PrefrlError, write_error

#: Keys of each line, in the order they are written.
JSONL_KEYS = ("pair_id", "left_clip", "right_clip", "choice", "labeller", "time")


@dataclass(frozen=True)
class ExchangedLabel:
    """One label with the clips of its pair, as a line of the exchange file.

    :param pair_id: the pair
    :param left_clip: clip id of its left segment
    :param right_clip: clip id of its right segment
    :param choice: the answer
    :param labeller: who answered
    :param time: when, in unix seconds
    """

    pair_id: str
    left_clip: str
    right_clip: str
    choice: Choice
    labeller: str
    time: float

    def __post_init__(self) -> None:
        if not isinstance(self.choice, Choice):
            raise ValueError(f"ExchangedLabel.choice must be a Choice, got {self.choice!r}")

    def to_json(self) -> str:
        values = (self.pair_id, self.left_clip, self.right_clip, self.choice.value, self.labeller, self.time)
        return json.dumps(dict(zip(JSONL_KEYS, values)))


def write_labels(path: str | os.PathLike[str], labels: Sequence[ExchangedLabel]) -> None:
    """Write ``labels`` to ``path`` atomically (its folder is created if missing).

    :raises PrefrlError: the write failed; the file is as it was
    """
    target = Path(path)

    try:
        with atomic_file(target, "w") as handle:
            for label in labels:
                handle.write(label.to_json() + "\n")
    except OSError as exc:
        raise write_error(target, exc, f"{target} is as it was") from None


def read_labels(path: str | os.PathLike[str]) -> list[ExchangedLabel]:
    """Every label of a file written by :func:`write_labels` (blank lines are skipped).

    :raises PrefrlError: the file is missing, not UTF-8, or a line is malformed
    """
    source = Path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PrefrlError(
            f"cannot read labels file {source}: {exc.strerror}; give a file written by `prefrl labels export`"
        ) from None
    except UnicodeDecodeError:
        raise PrefrlError(f"labels file {source} is not UTF-8 text; give a file written by `prefrl labels export`") from None
    labels = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            missing = [key for key in JSONL_KEYS if key not in record]
            if missing:
                raise ValueError(f"missing keys {', '.join(missing)}")
            labels.append(ExchangedLabel(
                pair_id=str(record["pair_id"]), left_clip=str(record["left_clip"]), right_clip=str(record["right_clip"]),
                choice=Choice(record["choice"]), labeller=str(record["labeller"]), time=float(record["time"]),
            ))
        except (ValueError, TypeError, AttributeError) as exc:
            raise PrefrlError(f"{source}:{number} is not a valid label line ({exc})") from None
    return labels
