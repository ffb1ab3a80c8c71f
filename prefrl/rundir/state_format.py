"""A run's nested state as data only: tagged JSON, a flat dict of tensors, a flat dict of
numpy arrays. Reading it back calls no function that the files name, unlike a pickle.

JSON holds str, int, float, bool, None, lists and dicts with str keys as they are; every
other value is an object ``{"$": tag, ...}``:

- ``tuple``, ``set``, ``frozenset``, ``deque`` (with ``maxlen``), ``odict``
  (``OrderedDict``) and ``dict`` (keys other than str) with their ``items``;
- ``float`` (NaN and infinities, as ``repr``), ``complex``, ``bytes`` (base64, or a uint8
  array when large), ``npscalar`` (dtype and raw bytes);
- ``ndarray`` / ``tensor``: a key into the arrays (``np.load(allow_pickle=False)``) or the
  tensors (``torch.load(weights_only=True)``);
- ``generator``: a NumPy ``Generator`` as its ``bit_generator.state``;
- ``ale_state`` / ``mjdata``: an emulator or MuJoCo state as its own byte serialisation;
- ``record``: an instance of one of :data:`RECORD_CLASSES`, as its ``__dict__`` (a
  NamedTuple: its ``items``);
- ``shared`` / ``ref``: an object met more than once (a pickle keeps such sharing, and
  restoring a run relies on it), stored once and referred to by id.

Dicts and records keep their key order: a restored run iterates them as the original did.
"""

from __future__ import annotations

import base64
import importlib
import math
from collections import OrderedDict, deque
from typing import Any

import numpy as np
import torch

from prefrl.rundir.legacy_pickle import PREFRL_CLASSES

#: The classes a checkpoint may hold as records: name -> module. prefrl's own data
#: classes are those of :data:`PREFRL_CLASSES` (where a moved class is updated).
RECORD_CLASSES: dict[str, str] = {
    **{name: module for (_, name), module in PREFRL_CLASSES.items()},
    "RunningMeanStd": "stable_baselines3.common.running_mean_std",
}
#: Bytes up to this size are inlined as base64; longer ones (an emulator or MuJoCo
#: state) go to the arrays file.
INLINE_BYTES = 1024
TAG = "$"


def _kind(value: Any) -> tuple[str, str]:
    return type(value).__module__, type(value).__qualname__


class StateEncoder:
    """Turns a nested state into JSON-ready data, collecting its tensors and arrays.

    Each object is visited once: a second occurrence becomes a ``ref`` and its first one
    is wrapped in ``shared`` in place (``_memo`` keeps where it was put). Objects made
    while encoding are kept alive to the end, so no two share an ``id``.
    """

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self._memo: dict[int, list[Any]] = {}  # id -> [object, holder, slot, shared id or None]
        self._open: set[int] = set()
        self._shared = 0
        self._temporaries: list[Any] = []

    def encode(self, state: Any) -> Any:
        """:raises TypeError: the state holds a type that a checkpoint may not hold"""
        root: list[Any] = [None]
        self._put(root, 0, state)
        return root[0]

    def _put(self, holder: Any, slot: Any, value: Any) -> None:
        if value is None or type(value) in (bool, str, int):
            holder[slot] = value
            return
        if type(value) is float:
            holder[slot] = value if math.isfinite(value) else {TAG: "float", "repr": repr(value)}
            return
        seen = self._memo.get(id(value))
        if seen is not None:
            if id(value) in self._open:
                raise TypeError(f"the state holds a cycle through a {type(value).__name__}, which a checkpoint cannot")
            if seen[3] is None:
                seen[3], self._shared = self._shared, self._shared + 1
                seen[1][seen[2]] = {TAG: "shared", "id": seen[3], "value": seen[1][seen[2]]}
            holder[slot] = {TAG: "ref", "id": seen[3]}
            return
        self._memo[id(value)] = [value, holder, slot, None]
        self._open.add(id(value))
        holder[slot] = self._node(value)
        self._open.discard(id(value))

    def _items(self, values: Any) -> list[Any]:
        items: list[Any] = [None] * len(values)
        for i, value in enumerate(values):
            self._put(items, i, value)
        return items

    def _pairs(self, mapping: dict[Any, Any]) -> list[Any]:
        pairs = []
        for key, value in mapping.items():
            pair: list[Any] = [None, None]
            pairs.append(pair)
            self._put(pair, 0, key)
            self._put(pair, 1, value)
        return pairs

    def _fields(self, mapping: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for key, value in mapping.items():
            fields[key] = None
            self._put(fields, key, value)
        return fields

    def _node(self, value: Any) -> Any:
        kind = type(value)
        if kind is list:
            return self._items(value)
        if kind is dict:
            if all(type(key) is str for key in value) and TAG not in value:
                return self._fields(value)
            return {TAG: "dict", "items": self._pairs(value)}
        if kind is OrderedDict:
            return {TAG: "odict", "items": self._pairs(value)}
        if kind in (tuple, set, frozenset):
            return {TAG: kind.__name__, "items": self._items(value)}
        if kind is deque:
            return {TAG: "deque", "maxlen": value.maxlen, "items": self._items(value)}
        if kind is complex:
            return {TAG: "complex", "repr": repr(value)}
        if kind is bytes:
            return self._bytes(value)
        if kind is np.ndarray:
            if value.dtype.hasobject:
                raise TypeError("a checkpoint cannot hold a numpy array of Python objects")
            key = f"a{len(self.arrays)}"
            self.arrays[key] = value
            return {TAG: "ndarray", "key": key}
        if isinstance(value, np.generic) and not value.dtype.hasobject:
            return {TAG: "npscalar", "dtype": value.dtype.str, "b64": base64.b64encode(value.tobytes()).decode()}
        if isinstance(value, torch.Tensor):
            key = f"t{len(self.tensors)}"
            self.tensors[key] = value
            return {TAG: "tensor", "key": key}
        if kind is np.random.Generator:
            state = value.bit_generator.state
            self._temporaries.append(state)  # alive until the end: its id must not be reused
            node = {TAG: "generator", "state": None}
            self._put(node, "state", state)
            return node
        if _kind(value) == ("ale_py._ale_py", "ALEState"):
            return {TAG: "ale_state", "bytes": self._bytes(value.serialize())}
        if _kind(value) == ("mujoco._structs", "MjData"):
            return {TAG: "mjdata", "bytes": self._bytes(value.__getstate__())}
        module, name = _kind(value)
        if RECORD_CLASSES.get(name) == module:
            if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple
                return {TAG: "record", "class": name, "items": self._items(value)}
            if not hasattr(value, "__dict__") or type(value).__getstate__ is not object.__getstate__:
                raise TypeError(f"{module}.{name} keeps its state in a way a checkpoint record cannot hold")
            return {TAG: "record", "class": name, "fields": self._fields(vars(value))}
        raise TypeError(f"a checkpoint cannot hold a {module}.{name} (not data, or not in RECORD_CLASSES)")

    def _bytes(self, data: bytes) -> dict[str, Any]:
        if len(data) <= INLINE_BYTES:
            return {TAG: "bytes", "b64": base64.b64encode(data).decode()}
        key = f"a{len(self.arrays)}"
        self.arrays[key] = np.frombuffer(data, dtype=np.uint8)
        return {TAG: "bytes", "key": key}


class StateDecoder:
    """Rebuilds what :class:`StateEncoder` encoded. Only the tags above are understood;
    records only of :data:`RECORD_CLASSES`.

    :param tensors: the tensors file's dict
    :param arrays: the arrays file (an ``NpzFile`` or a dict)
    """

    def __init__(self, tensors: dict[str, torch.Tensor], arrays: Any) -> None:
        self._tensors = tensors
        self._arrays = arrays
        self._loaded: dict[str, np.ndarray] = {}
        self._shared: dict[int, Any] = {}

    def decode(self, node: Any) -> Any:
        """:raises ValueError: an unknown tag, class or key (not a file this code wrote)"""
        kind = type(node)
        if node is None or kind in (bool, str, int, float):
            return node
        if kind is list:
            return [self.decode(item) for item in node]
        if kind is not dict:
            raise ValueError(f"unexpected {kind.__name__} in the state")
        tag = node.get(TAG)
        if tag is None:
            return {key: self.decode(value) for key, value in node.items()}
        method = getattr(self, f"_tag_{tag}", None) if isinstance(tag, str) else None
        if method is None:
            raise ValueError(f"unknown tag {tag!r} in the state")
        return method(node)

    def _array(self, key: str) -> np.ndarray:
        if key not in self._loaded:
            self._loaded[key] = self._arrays[key]
        return self._loaded[key]

    def _pairs(self, node: dict[str, Any]) -> list[tuple[Any, Any]]:
        return [(self.decode(key), self.decode(value)) for key, value in node["items"]]

    def _tag_shared(self, node: dict[str, Any]) -> Any:
        value = self.decode(node["value"])
        self._shared[int(node["id"])] = value
        return value

    def _tag_ref(self, node: dict[str, Any]) -> Any:
        return self._shared[int(node["id"])]

    def _tag_dict(self, node: dict[str, Any]) -> dict[Any, Any]:
        return dict(self._pairs(node))

    def _tag_odict(self, node: dict[str, Any]) -> OrderedDict:
        return OrderedDict(self._pairs(node))

    def _tag_tuple(self, node: dict[str, Any]) -> tuple:
        return tuple(self.decode(node["items"]))

    def _tag_set(self, node: dict[str, Any]) -> set:
        return set(self.decode(node["items"]))

    def _tag_frozenset(self, node: dict[str, Any]) -> frozenset:
        return frozenset(self.decode(node["items"]))

    def _tag_deque(self, node: dict[str, Any]) -> deque:
        return deque(self.decode(node["items"]), maxlen=node["maxlen"])

    def _tag_float(self, node: dict[str, Any]) -> float:
        return float(node["repr"])

    def _tag_complex(self, node: dict[str, Any]) -> complex:
        return complex(node["repr"])

    def _tag_bytes(self, node: dict[str, Any]) -> bytes:
        if "key" in node:
            return self._array(node["key"]).tobytes()
        return base64.b64decode(node["b64"], validate=True)

    def _tag_npscalar(self, node: dict[str, Any]) -> np.generic:
        dtype = np.dtype(node["dtype"])
        if dtype.hasobject:
            raise ValueError("a numpy scalar of Python objects")
        return np.frombuffer(base64.b64decode(node["b64"], validate=True), dtype=dtype)[0]

    def _tag_ndarray(self, node: dict[str, Any]) -> np.ndarray:
        return self._array(node["key"])

    def _tag_tensor(self, node: dict[str, Any]) -> torch.Tensor:
        return self._tensors[node["key"]]

    def _tag_generator(self, node: dict[str, Any]) -> np.random.Generator:
        state = self.decode(node["state"])
        bit_generator = getattr(np.random, str(state["bit_generator"]), None)
        if not (isinstance(bit_generator, type) and issubclass(bit_generator, np.random.BitGenerator)):
            raise ValueError(f"unknown bit generator {state['bit_generator']!r}")
        generator = np.random.Generator(bit_generator())
        generator.bit_generator.state = state
        return generator

    def _tag_ale_state(self, node: dict[str, Any]) -> Any:
        from ale_py import ALEState

        return ALEState(self._tag_bytes(node["bytes"]))

    def _tag_mjdata(self, node: dict[str, Any]) -> Any:
        import mujoco

        data = mujoco.MjData.__new__(mujoco.MjData)
        data.__setstate__(self._tag_bytes(node["bytes"]))
        return data

    def _tag_record(self, node: dict[str, Any]) -> Any:
        name = node["class"]
        if name not in RECORD_CLASSES:
            raise ValueError(f"it names the class {name!r}, which a checkpoint never holds")
        cls = getattr(importlib.import_module(RECORD_CLASSES[name]), name)
        if "items" in node:  # a NamedTuple
            return cls.__new__(cls, *self.decode(node["items"]))
        obj = cls.__new__(cls)
        fields = self.decode(node["fields"])
        # As unpickling does: the instance dict as it was, frozen dataclasses included.
        if hasattr(cls, "__setstate__"):
            obj.__setstate__(fields)
        else:
            obj.__dict__.update(fields)
        return obj
