"""Atomic writes: a failure at any moment (a full disk included) keeps the old file."""

import errno
import random

import numpy as np
import pytest
import torch

from prefrl.training.checkpoint import (
    atomic_file,
    atomic_save_with,
    atomic_torch_save,
    atomic_write_json,
    global_rng_states,
    restore_global_rng_states,
)


def test_atomic_write_replaces_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_json(target, {"step": 1})
    atomic_write_json(target, {"step": 2})
    assert target.read_text().strip().endswith("}") and '"step": 2' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_full_disk_keeps_the_previous_file(tmp_path):
    target = tmp_path / "reward_model.pt"
    atomic_torch_save({"w": torch.ones(3)}, target)
    before = target.read_bytes()
    with pytest.raises(OSError, match="No space"):
        with atomic_file(target, "wb") as handle:
            handle.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_bytes() == before
    assert torch.load(target)["w"].sum() == 3
    assert [p.name for p in tmp_path.iterdir()] == ["reward_model.pt"]


def test_library_save_functions_are_made_atomic(tmp_path):
    target = tmp_path / "policy.zip"
    atomic_save_with(target, lambda path: path.write_bytes(b"v1"))

    def crash(path):
        path.write_bytes(b"torn")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic_save_with(target, crash)
    assert target.read_bytes() == b"v1"
    assert [p.name for p in tmp_path.iterdir()] == ["policy.zip"]


def test_global_rng_states_roundtrip():
    states = global_rng_states()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_global_rng_states(states)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
