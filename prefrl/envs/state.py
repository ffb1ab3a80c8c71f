"""The exact state of environments, to checkpoint a run and continue it bit for bit.

What is captured is data: each layer's plain attributes (counters, flags, generators,
frame stacks), a MuJoCo simulation as a whole ``MjData`` (solver warm start and derived
quantities included: a qpos/qvel copy would change the next steps) and an Atari emulator
as ``cloneState(include_rng=True)``. The run checkpoint stores the last two through
their own byte serialisations (``MjData.__getstate__``, ``ALEState.serialize``).
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Iterable
from typing import Any

import gymnasium as gym
import numpy as np

#: Attribute values copied by :func:`capture_attributes`: data, not resources.
_PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes, np.generic)


def _is_plain(value: Any, depth: int = 0) -> bool:
    """True for data that can be copied and pickled safely: numbers, strings, numeric
    arrays, numpy generators and containers of them (not envs, spaces, simulators,
    files or locks)."""
    if depth > 6:
        return False
    if isinstance(value, _PLAIN_SCALARS) or isinstance(value, np.random.Generator):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype != object
    if isinstance(value, (list, tuple, set, frozenset, deque)):
        return all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(_is_plain(k, depth + 1) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def capture_attributes(obj: Any, skip: Iterable[str] = ()) -> dict[str, Any]:
    """Copies of the plain-data attributes of ``obj`` (see :func:`_is_plain`)."""
    skipped = set(skip)
    return {
        name: copy.deepcopy(value)
        for name, value in vars(obj).items()
        if name not in skipped and _is_plain(value)
    }


def restore_attributes(obj: Any, state: dict[str, Any]) -> None:
    """Put captured attributes back. Generators and same-shaped arrays are restored in
    place, so other objects holding the same generator or array see the restored state."""
    for name, saved in state.items():
        current = getattr(obj, name, None)
        if isinstance(current, np.random.Generator) and isinstance(saved, np.random.Generator):
            current.bit_generator.state = saved.bit_generator.state
        elif (isinstance(current, np.ndarray) and isinstance(saved, np.ndarray) and current.flags.writeable
              and current.shape == saved.shape and current.dtype == saved.dtype):
            current[...] = saved
        else:
            setattr(obj, name, copy.deepcopy(saved))


# --------------------------------------------------------------------------- environments

def _env_layers(env: gym.Env) -> list[gym.Env]:
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


def capture_env_state(env: gym.Env) -> list[dict[str, Any]]:
    """The exact state of one env and every wrapper around it, outermost first.

    Each layer's plain attributes (step counters, episode flags, ``np_random``, frame
    stacks, Monitor's episode statistics) are copied; a MuJoCo simulation is copied
    whole (``MjData``, so the continued physics is bit-identical, solver warm start
    included), an Atari emulator as ``cloneState(include_rng=True)`` (sticky-action
    randomness included).
    """
    states = []
    for layer in _env_layers(env):
        state: dict[str, Any] = {"class": type(layer).__name__, "attributes": capture_attributes(layer, skip=("env",))}
        data = getattr(layer, "data", None)
        if data is not None and type(data).__module__.startswith("mujoco") and type(data).__name__ == "MjData":
            state["mujoco_data"] = copy.deepcopy(data)
        ale = getattr(layer, "ale", None)
        if ale is not None and hasattr(ale, "cloneState"):
            state["ale_state"] = ale.cloneState(include_rng=True)
        states.append(state)
    return states


def restore_env_state(env: gym.Env, states: list[dict[str, Any]]) -> None:
    """Put an env built the same way into the state :func:`capture_env_state` copied.

    :raises PrefrlError: the env's wrapper chain differs from the captured one
    """
    from prefrl.util.errors import PrefrlError

    layers = _env_layers(env)
    wanted = [s["class"] for s in states]
    have = [type(layer).__name__ for layer in layers]
    if wanted != have:
        raise PrefrlError(f"the environment's wrappers {have} differ from the checkpoint's {wanted}; "
                          "resume with the prefrl version and settings that started the run")
    for layer, state in zip(layers, states):
        restore_attributes(layer, state["attributes"])
        if "mujoco_data" in state:
            import mujoco

            # In place: wrappers (render-state recording) hold this very MjData.
            mujoco.mj_copyData(layer.data, layer.model, state["mujoco_data"])
        if "ale_state" in state:
            layer.ale.restoreState(state["ale_state"])


class StatefulEnv(gym.Wrapper):
    """Outermost wrapper that lets a vectorised env (in this or a worker process) hand
    out and take back the exact state of its env, through ``VecEnv.env_method``."""

    def get_run_state(self) -> list[dict[str, Any]]:
        return capture_env_state(self.env)

    def set_run_state(self, states: list[dict[str, Any]]) -> None:
        restore_env_state(self.env, states)


def capture_vec_env(venv: Any) -> list[dict[str, Any]]:
    """The state of a vectorised env and its wrappers, outermost first.

    ``VecNormalize``: its running statistics; a wrapper with ``run_state()``: what that
    returns; the base env: every env's :class:`StatefulEnv` state and the seeds still
    pending for its next reset.
    """
    from stable_baselines3.common.vec_env import VecEnvWrapper, VecNormalize

    states: list[dict[str, Any]] = []
    layer = venv
    while True:
        state: dict[str, Any] = {"class": type(layer).__name__}
        if isinstance(layer, VecNormalize):
            # vars(): VecEnvWrapper's getattr would look for a missing one in the envs below.
            state["normalize"] = {name: copy.deepcopy(value) for name, value in vars(layer).items()
                                  if name in ("obs_rms", "ret_rms", "returns", "old_obs", "old_reward")}
        elif callable(getattr(type(layer), "run_state", None)):
            state["wrapper"] = layer.run_state()
        if not isinstance(layer, VecEnvWrapper):
            state["envs"] = layer.env_method("get_run_state")
            state["seeds"] = list(getattr(layer, "_seeds", []))
            state["options"] = copy.deepcopy(getattr(layer, "_options", []))
            states.append(state)
            return states
        states.append(state)
        layer = layer.venv


def restore_vec_env(venv: Any, states: list[dict[str, Any]]) -> None:
    """Put a vectorised env built the same way into a :func:`capture_vec_env` state.

    :raises PrefrlError: the wrapper chain differs from the captured one
    """
    from stable_baselines3.common.vec_env import VecEnvWrapper

    from prefrl.util.errors import PrefrlError

    layer = venv
    for index, state in enumerate(states):
        if type(layer).__name__ != state["class"]:
            raise PrefrlError(f"the vectorised env's wrapper {type(layer).__name__} differs from the checkpoint's "
                              f"{state['class']}; resume with the settings that started the run")
        if "normalize" in state:
            for name, value in state["normalize"].items():
                setattr(layer, name, copy.deepcopy(value))
        if "wrapper" in state:
            layer.load_run_state(state["wrapper"])
        if "envs" in state:
            for i, env_state in enumerate(state["envs"]):
                layer.env_method("set_run_state", env_state, indices=[i])
            layer._seeds = list(state["seeds"])
            layer._options = copy.deepcopy(state["options"])
        if index + 1 < len(states):
            if not isinstance(layer, VecEnvWrapper):
                raise PrefrlError("the vectorised env has fewer wrappers than the checkpoint's")
            layer = layer.venv
