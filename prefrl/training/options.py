"""The options of one run: :func:`prefrl.training.run.train`'s arguments, checked and
resolved once, then read by every part of the run that needs them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefrl.config.settings import FIT_MODES
from prefrl.rundir import RunPaths
from prefrl.util.errors import PrefrlError

ARMS = ("learned", "true")
RELABEL_MODES = ("rollout", "step")


@dataclass(frozen=True)
class RunOptions:
    """How one run is carried out (each field is the :func:`~prefrl.training.run.train`
    argument of that name; ``fit`` and ``paths`` are resolved from the preset's defaults).

    :raises PrefrlError: an unknown arm, relabel mode or fit mode
    """

    arm: str
    seed: int
    paths: RunPaths
    teacher_kind: str
    labels_from: Path | None
    progress: bool
    verbose: int
    relabel: str
    fit: str
    fit_threads: int
    checkpoint_steps: int
    checkpoint_seconds: float
    force: bool
    trust_old_checkpoint: bool = False

    def __post_init__(self) -> None:
        if self.arm not in ARMS:
            raise PrefrlError(f"unknown arm '{self.arm}'; use one of {', '.join(ARMS)}")
        if self.relabel not in RELABEL_MODES:
            raise PrefrlError(f"unknown relabel mode '{self.relabel}'; use one of {', '.join(RELABEL_MODES)}")
        if self.fit not in FIT_MODES:
            raise PrefrlError(f"unknown fit mode '{self.fit}'; use one of {', '.join(FIT_MODES)}")

    @property
    def learned(self) -> bool:
        return self.arm == "learned"
