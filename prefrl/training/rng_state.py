"""The global random states a run checkpoint holds: SB3 draws from Python's, NumPy's and
torch's global generators, so a resumed run must continue each of them."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def global_rng_states() -> dict[str, Any]:
    """The global random states of Python, NumPy and torch (SB3 draws from all three)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def restore_global_rng_states(states: dict[str, Any]) -> None:
    """Put back what :func:`global_rng_states` returned."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
