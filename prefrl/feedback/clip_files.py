"""The clip files of a label store: one compressed numpy archive per segment.

``clips/<clip_id>.npz`` holds the arrays ``observations``, ``actions``, ``true_rewards``,
``after_termination``, ``start_step`` and, if the segment has them, ``render_states`` and
``frames``. Files are written atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from prefrl.data.segments import ClipPair, Segment
from prefrl.util.atomic import atomic_file
from prefrl.util.errors import PrefrlError

#: Arrays every clip file holds.
CLIP_ARRAYS = ("observations", "actions", "true_rewards", "after_termination")
#: Arrays a clip file holds when its segment has them.
OPTIONAL_ARRAYS = ("render_states", "frames")

_SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def is_safe_id(name: str) -> bool:
    """Whether ``name`` is a non-empty id that is safe as a file name."""
    return bool(name) and _SAFE_ID.fullmatch(name) is not None


def segments_by_id(pairs: Sequence[ClipPair]) -> dict[str, Segment]:
    """The segments of ``pairs`` by id (the first of each id), every id checked.

    :raises PrefrlError: a pair or segment id that is empty or unsafe as a file name
    """
    segments: dict[str, Segment] = {}
    for pair in pairs:
        if not is_safe_id(pair.pair_id):
            raise PrefrlError(f"pair id {pair.pair_id!r} is empty or unsafe; use letters, digits, '_', '-', '.'")
        for segment in (pair.left, pair.right):
            if not is_safe_id(segment.segment_id):
                raise PrefrlError(
                    f"segment id {segment.segment_id!r} is empty or unsafe as a file name; "
                    "use letters, digits, '_', '-', '.'"
                )
            segments.setdefault(segment.segment_id, segment)
    return segments


def clip_file_name(clip_id: str) -> str:
    """Path of a clip's file relative to the clips folder (as stored in ``clips.path``)."""
    return f"clips/{clip_id}.npz"


def write_clip(target: Path, segment: Segment) -> None:
    """Write one segment's clip file atomically.

    :raises OSError: the write failed (nothing was left at ``target``)
    """
    arrays = {name: np.asarray(getattr(segment, name)) for name in CLIP_ARRAYS}
    arrays["start_step"] = np.asarray(segment.start_step, dtype=np.int64)
    for name in OPTIONAL_ARRAYS:
        value = getattr(segment, name)
        if value is not None:
            arrays[name] = np.asarray(value)
    with atomic_file(target, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def read_clip(path: Path, clip_id: str, length: int) -> Segment:
    """Read a clip file back as a :class:`Segment`.

    :param path: the file
    :param clip_id: becomes the segment's id
    :param length: steps the store recorded for the clip
    :raises PrefrlError: the file is missing, truncated or malformed
    """
    try:
        # Our own handle: np.load leaks the one it opens when the archive is corrupt.
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise PrefrlError(f"clip file {path} is missing; restore it from a backup or drop this clips folder") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise PrefrlError(f"clip file {path} is unreadable ({type(exc).__name__}: {exc}); it may be truncated") from None
    missing = [name for name in CLIP_ARRAYS if name not in arrays]
    if missing:
        raise PrefrlError(f"clip file {path} lacks the arrays {', '.join(missing)}")
    if len(arrays["observations"]) != length:
        raise PrefrlError(
            f"clip file {path} has {len(arrays['observations'])} steps, the store says {length}"
        )
    try:
        return Segment(
            observations=arrays["observations"],
            actions=arrays["actions"],
            true_rewards=arrays["true_rewards"],
            after_termination=arrays["after_termination"].astype(bool),
            segment_id=clip_id,
            start_step=int(arrays["start_step"]) if "start_step" in arrays else 0,
            render_states=arrays.get("render_states"),
            frames=arrays.get("frames"),
        )
    except (ValueError, TypeError) as exc:
        raise PrefrlError(f"clip file {path} has malformed arrays: {exc}") from None
