"""Readers of a finished run's files, shared by the tests that compare two runs."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a nested checkpoint, with its path (state dicts, optimizer, stats)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from tensors(value, f"{prefix}.{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from tensors(value, f"{prefix}[{i}]")


def eval_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's ``eval.csv``."""
    with open(run_dir / "eval.csv", newline="") as handle:
        return list(csv.DictReader(handle))
