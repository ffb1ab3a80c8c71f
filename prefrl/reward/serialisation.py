"""The reward checkpoint file (``reward_model.pt``): writing, reading without running
code from it, and checking that it fits the model it is loaded into.

A checkpoint is a ``torch.save`` of plain data (state dicts, numbers, lists), so it is
read with ``torch.load(weights_only=True)``; the spaces are stored as plain
descriptions, enough to rebuild the network without the environment.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from prefrl.config.settings import RewardSettings
from prefrl.util.atomic import atomic_file
from prefrl.util.errors import PrefrlError

#: Checkpoint format tag, bumped when the layout changes.
CHECKPOINT_FORMAT = "prefrl-reward-1"
#: The fix named when a checkpoint does not fit the model it is loaded into.
_OTHER_TASK = "the checkpoint is of another task or observation settings: give the reward_model.pt of a run of this task"
#: Settings that shape the network: a checkpoint loads only into a model with the same.
_NET_SETTINGS = ("architecture", "ensemble_size", "hidden_sizes", "use_actions", "batch_norm")


def describe_space(space: spaces.Space) -> dict[str, Any]:
    """A plain description of a space, enough to rebuild it for the network."""
    if isinstance(space, spaces.Discrete):
        return {"kind": "discrete", "n": int(space.n)}
    if isinstance(space, spaces.MultiBinary):
        return {"kind": "multibinary", "n": int(np.prod(space.shape))}
    if isinstance(space, spaces.Box):
        return {"kind": "box", "shape": [int(d) for d in space.shape], "dtype": np.dtype(space.dtype).name}
    raise PrefrlError(f"reward model: unsupported space {space}")


def space_from_description(desc: dict[str, Any]) -> spaces.Space:
    """The space of a :func:`describe_space` description (Box bounds are not stored:
    0..255 for images, unbounded otherwise)."""
    if desc["kind"] == "discrete":
        return spaces.Discrete(desc["n"])
    if desc["kind"] == "multibinary":
        return spaces.MultiBinary(desc["n"])
    dtype = np.dtype(desc["dtype"])
    if dtype == np.uint8:
        return spaces.Box(0, 255, tuple(desc["shape"]), dtype=np.uint8)
    return spaces.Box(-np.inf, np.inf, tuple(desc["shape"]), dtype=dtype)


def _net_view(desc: dict[str, Any]) -> tuple[Any, ...]:
    """What of a space description the network depends on: kind, shape, image or not."""
    if desc["kind"] == "box":
        return ("box", tuple(desc["shape"]), desc["dtype"] == "uint8")
    return (desc["kind"], desc["n"])


def settings_from_checkpoint(state: dict[str, Any]) -> RewardSettings:
    """The reward settings stored in a checkpoint (fields this prefrl lacks are dropped)."""
    fields = {f.name for f in dataclasses.fields(RewardSettings)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in state["settings"].items() if k in fields}
    return RewardSettings(**values)


def write_checkpoint(state: dict[str, Any], path: str | Path, lock: threading.RLock) -> None:
    """``torch.save`` ``state`` to ``path`` under ``lock`` (its tensors are live ones).

    :param state: plain state dicts and values
    :param path: the file; its folder is created
    :param lock: held while the tensors are written
    """
    # A crash or a full disk mid-write never leaves a truncated checkpoint; written through
    # a file object, a write error stays an OSError (torch's own zip writer on a path turns
    # it into a RuntimeError about file positions).
    with lock, atomic_file(path, "wb") as handle:
        torch.save(state, handle)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state in a reward checkpoint.

    :raises PrefrlError: missing, unreadable or not a reward checkpoint
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PrefrlError(f"reward checkpoint '{path}' not found; give the reward_model.pt of a learned-reward run") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error
        # torch's own messages run to several sentences: keep the first.
        reason = " ".join(str(exc).split()).split(". ")[0]
        raise PrefrlError(
            f"reward checkpoint '{path}' is unreadable ({reason}); it may be truncated: "
            "restore it from a backup or train the run again"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise PrefrlError(
            f"'{path}' is not a prefrl reward checkpoint ({CHECKPOINT_FORMAT}); "
            "give the reward_model.pt of a learned-reward run"
        )
    return state


def check_fits(
    state: dict[str, Any],
    path: str | Path,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    settings: RewardSettings,
) -> None:
    """Refuse a checkpoint whose network differs from the one these spaces and settings build.

    :param state: what :func:`read_checkpoint` returned
    :param path: its file (named in the errors)
    :raises PrefrlError: another observation or action space or another network
    """
    saved_obs = state["observation_space"]
    if _net_view(saved_obs) != _net_view(describe_space(observation_space)):
        raise PrefrlError(
            f"reward checkpoint '{path}' is for observations {tuple(saved_obs.get('shape', ()))} "
            f"({saved_obs.get('dtype')}), this model has {tuple(int(d) for d in observation_space.shape)} "
            f"({np.dtype(observation_space.dtype).name}); {_OTHER_TASK}"
        )
    if _net_view(state["action_space"]) != _net_view(describe_space(action_space)):
        raise PrefrlError(
            f"reward checkpoint '{path}' is for actions {state['action_space']}, "
            f"this model has {describe_space(action_space)}; {_OTHER_TASK}"
        )
    saved = state["settings"]
    for key in _NET_SETTINGS:
        mine = getattr(settings, key)
        theirs = tuple(saved[key]) if isinstance(mine, tuple) else saved[key]
        if theirs != mine:
            raise PrefrlError(
                f"reward checkpoint '{path}' has reward.{key} = {theirs!r}, this model {mine!r}; "
                f"use the [reward] settings it was trained with (--set reward.{key}=...)"
            )
