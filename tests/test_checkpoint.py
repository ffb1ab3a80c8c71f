"""Atomic writes: a failure at any moment (a full disk included) keeps the old file.
The checkpoint format: data only, every value comes back exactly, no pickle is read, and
an old-format pickle is refused unless trusted, then read through an allow-list."""

import errno
import json
import os
import pickle
import random
import threading
from collections import OrderedDict, deque

import numpy as np
import pytest
import torch
from clip_fixtures import make_pairs

from prefrl.reward import serialisation
from prefrl.rundir.checkpoint_files import (
    CHECKPOINT_FORMAT,
    OldCheckpointWarning,
    checkpoint_path,
    read_checkpoint,
    write_checkpoint,
)
from prefrl.rundir.files import LEGACY_CHECKPOINT_FILE
from prefrl.training.rng_state import global_rng_states, restore_global_rng_states
from prefrl.util.atomic import atomic_file, atomic_save_with, atomic_write_json
from prefrl.util.errors import PrefrlError


def test_atomic_write_replaces_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_json(target, {"step": 1})
    atomic_write_json(target, {"step": 2})
    assert target.read_text().strip().endswith("}") and '"step": 2' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_full_disk_keeps_the_previous_file(tmp_path):
    target = tmp_path / "reward_model.pt"
    serialisation.write_checkpoint({"w": torch.ones(3)}, target, threading.RLock())
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


# --------------------------------------------------------------------------- checkpoint format


def _same(a, b, where="state"):
    """Equal values of the same types, all the way down (arrays: dtype, shape and bytes)."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert list(a) == list(b), where  # key order too: a resumed run iterates as the original
        for key in a:
            _same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple, deque)):
        assert len(a) == len(b) and getattr(a, "maxlen", None) == getattr(b, "maxlen", None), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, (np.ndarray, np.generic)):
        assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes()), where
    elif isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.requires_grad) == (b.dtype, b.shape, b.requires_grad), where
        assert torch.equal(a, b), where
    elif isinstance(a, np.random.Generator):
        _same(a.bit_generator.state, b.bit_generator.state, where)
    elif isinstance(a, float):
        assert repr(a) == repr(b), where  # NaN, -0.0 and infinities too
    elif hasattr(a, "__dict__"):
        _same(vars(a), vars(b), where)
    else:
        assert a == b, where


def _state():
    shared = [1, 2]
    weights = torch.arange(6.0).reshape(2, 3)
    pair = make_pairs(1, kind="vector")[0]
    return {
        "scalars": [None, True, 0, -(2**70), 1.5, -0.0, float("inf"), float("nan"), "text", 2 + 3j],
        "containers": ((1, "a"), {3, 4}, frozenset({5}), deque([1, 2], maxlen=3), OrderedDict(b=1, a=2)),
        "odd_keys": {1: "int key", (2, 3): "tuple key", "$": "the tag"},
        "bytes": [b"small", bytes(range(256)) * 20],
        "numpy": [np.arange(12, dtype=np.int16).reshape(3, 4), np.asfortranarray(np.ones((2, 3))),
                  np.zeros((), dtype=bool), np.float32(0.1), np.int64(7)],
        "torch": {"weights": weights, "row": weights[1], "rng": torch.get_rng_state(),
                  "param": torch.nn.Parameter(torch.ones(2))},
        "generators": [np.random.default_rng(3), np.random.Generator(np.random.MT19937(4))],
        "python_rng": random.getstate(),
        "records": [pair, pair.left],
        "shared": [shared, shared],
    }


def test_a_checkpoint_holds_data_only_and_round_trips_exactly(tmp_path):
    state = _state()
    write_checkpoint(tmp_path, 7, state)
    names = sorted(p.name.split(".")[0] for p in (tmp_path / "checkpoint").iterdir())
    assert names == ["arrays", "state", "tensors"]
    back = read_checkpoint(tmp_path)
    assert back["step"] == 7
    _same(state, back["state"])
    restored = back["state"]
    assert restored["shared"][0] is restored["shared"][1]  # shared objects stay shared
    assert restored["records"][0].left is restored["records"][1]
    # A second checkpoint replaces the first, leaving no file of it.
    write_checkpoint(tmp_path, 8, {"x": np.ones(2)})
    assert len(list((tmp_path / "checkpoint").iterdir())) == 3 and read_checkpoint(tmp_path)["step"] == 8


def test_a_new_format_checkpoint_is_read_without_any_pickle(tmp_path, monkeypatch):
    write_checkpoint(tmp_path, 1, _state())

    def no_pickle(*args, **kwargs):
        raise AssertionError("a pickle was read")

    for name in ("Unpickler", "load", "loads"):
        monkeypatch.setattr(pickle, name, no_pickle)
    assert read_checkpoint(tmp_path)["step"] == 1


def test_a_checkpoint_refuses_what_is_not_data(tmp_path):
    with pytest.raises(TypeError, match="a checkpoint cannot hold a builtins.builtin_function_or_method"):
        write_checkpoint(tmp_path, 1, {"f": print})
    assert not checkpoint_path(tmp_path).exists()
    write_checkpoint(tmp_path, 1, {"x": 1})
    manifest = json.loads(checkpoint_path(tmp_path).read_text())
    manifest["state"] = {"x": {"$": "record", "class": "Popen", "fields": {}}}  # a hand-made file
    checkpoint_path(tmp_path).write_text(json.dumps(manifest))
    with pytest.raises(PrefrlError, match="unreadable \\(it names the class 'Popen', which a checkpoint never holds"):
        read_checkpoint(tmp_path)


class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_an_old_format_checkpoint_is_refused_unless_trusted(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / LEGACY_CHECKPOINT_FILE
    path.parent.mkdir()
    path.write_bytes(pickle.dumps({"format": CHECKPOINT_FORMAT, "schema": 1, "step": 5, "state": _Planted(marker)}))
    with pytest.raises(PrefrlError) as refused:
        read_checkpoint(tmp_path)
    message = str(refused.value)
    assert "\n" not in message and "a pickle" in message and "can run code" in message
    assert "--trust-old-checkpoint" in message
    with pytest.warns(OldCheckpointWarning), pytest.raises(PrefrlError) as refused:
        read_checkpoint(tmp_path, trust_old_checkpoint=True)
    assert "\n" not in str(refused.value) and "it names posix.system" in str(refused.value)
    assert not marker.exists()

    # A harmless one is read when trusted; the next checkpoint replaces it in the new format.
    path.write_bytes(pickle.dumps({"format": CHECKPOINT_FORMAT, "schema": 1, "step": 5,
                                   "state": {"w": torch.ones(2), "a": np.arange(3), "q": deque([1])}}))
    with pytest.warns(OldCheckpointWarning, match="a pickle, which can run code"):
        state = read_checkpoint(tmp_path, trust_old_checkpoint=True)["state"]
    write_checkpoint(tmp_path, 6, state)
    assert not path.exists() and read_checkpoint(tmp_path)["step"] == 6
