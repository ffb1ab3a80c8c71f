"""Reading checkpoints of the first format (one pickle, ``checkpoint/state.pt``) without
running code from them.

A pickle names the functions it calls to rebuild its objects; ``pickle.load`` calls whatever
it names, so opening a pickle someone sent runs their code. This unpickler resolves only the
globals in :data:`ALLOWED` (containers, numpy arrays and generators, tensors, the emulator's
state and prefrl's own data classes) and refuses every other one before anything is called.
Tensor storages inside the pickle are read with ``torch.load(weights_only=True)``.

It also maps the classes of the single-module layout (``prefrl.segments.Segment``, ...) to
where they live now.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO

#: prefrl's classes that checkpoints hold: (module, name) as a pickle of the single-module
#: layout names them -> the module that defines them now. Moving one of these classes means
#: changing its entry here (:data:`ALLOWED` and the current format's
#: ``prefrl.rundir.state_format.RECORD_CLASSES`` follow from it).
PREFRL_CLASSES = {
    ("prefrl.segments", "Segment"): "prefrl.data.segments",
    ("prefrl.segments", "SegmentBuffer"): "prefrl.data.segments",
    ("prefrl.segments", "_OpenTrajectory"): "prefrl.data.segments",
    ("prefrl.segments", "ClipPair"): "prefrl.data.segments",
    ("prefrl.training", "StoredPair"): "prefrl.training.callbacks",
    ("prefrl.reward", "_Label"): "prefrl.reward.dataset",
    ("prefrl.teachers", "_RunningStd"): "prefrl.feedback.teachers",
}

#: Globals a run checkpoint may name (after :data:`MOVED_MODULES`), nothing else.
ALLOWED = {
    ("collections", "OrderedDict"), ("collections", "deque"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"), ("builtins", "slice"),
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.random._pickle", "__generator_ctor"), ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._pcg64", "PCG64"), ("numpy.random._mt19937", "MT19937"),
    ("numpy.random.bit_generator", "SeedSequence"), ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch.storage", "_load_from_bytes"), ("torch", "Size"),
    ("ale_py._ale_py", "ALEState"), ("mujoco._structs", "MjData"), ("mujoco._structs", "MjModel"),
    ("stable_baselines3.common.running_mean_std", "RunningMeanStd"),
} | {(module, name) for (_, name), module in PREFRL_CLASSES.items()}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The pickle names a global outside :data:`ALLOWED`."""


def _storage_from_bytes(data: bytes) -> Any:
    """``torch.storage._load_from_bytes`` with torch's own restricted loader."""
    import torch

    return torch.load(io.BytesIO(data), weights_only=True)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module = PREFRL_CLASSES.get((module, name), module)
        if (module, name) not in ALLOWED:
            raise UnsafeCheckpointError(f"it names {module}.{name}, which a run checkpoint never holds")
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _storage_from_bytes
        return super().find_class(module, name)


def load_legacy_pickle(handle: BinaryIO) -> Any:
    """Unpickle a first-format checkpoint, refusing any global outside :data:`ALLOWED`.

    :param handle: the open file
    :raises UnsafeCheckpointError: the file names another global (nothing of it was called)
    """
    return _RestrictedUnpickler(handle).load()
