"""The layout change moved code, not behaviour: the fixed-seed runs of ``tests/golden.py``
give the digests recorded before the move, and a run directory written by the old layout
resumes and ends as an uninterrupted run of today's code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import golden  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(golden.GOLDEN.read_text())


def test_pong_wrapper_chain_rollout_is_unchanged(recorded: dict) -> None:
    assert golden.pong_digest() == recorded["pong"]


@pytest.mark.parametrize("arm", ["learned", "true"])
def test_fixed_seed_runs_are_byte_identical(recorded: dict, arm: str, tmp_path: Path) -> None:
    if golden.processor() != recorded["processor"]:
        pytest.skip(f"digests recorded on {recorded['processor']!r}; torch may round differently on "
                    f"{golden.processor()!r} (run `python tests/golden.py` on the old commit there to compare)")
    assert golden.train_run(tmp_path, arm) == recorded[arm]
