"""The suite's tasks as Gymnasium ids: ``prefrl/<TaskName>``.

``import prefrl`` calls :func:`register_suite` (as ``import ale_py`` registers ``ALE/...``),
so ``gym.make("prefrl/Hopper")`` builds the training env and
``gym.make("prefrl/Hopper", evaluation=True)`` the evaluation env. Registration only lists the
preset files and names a string entry point: nothing heavy is imported until an env is made.
"""

from __future__ import annotations

import gymnasium as gym

from prefrl.config.loading import available_tasks

#: Namespace of the suite's Gymnasium ids.
NAMESPACE = "prefrl"

#: Preset names whose CamelCase cannot be derived from underscores.
_CAMEL_CASE = {
    "halfcheetah": "HalfCheetah",
    "invertedpendulum": "InvertedPendulum",
    "inverteddoublependulum": "InvertedDoublePendulum",
    "spaceinvaders": "SpaceInvaders",
    "beamrider": "BeamRider",
    "cartpole": "CartPole",
}


def task_env_id(preset_name: str) -> str:
    """The Gymnasium id of a preset: ``hopper`` -> ``prefrl/Hopper``,
    ``inverted_double_pendulum`` -> ``prefrl/InvertedDoublePendulum``.

    :param preset_name: the preset's file name without ``.toml``
    """
    name = preset_name.lower()
    camel = _CAMEL_CASE.get(name) or "".join(
        _CAMEL_CASE.get(part, part[:1].upper() + part[1:]) for part in name.split("_") if part
    )
    return f"{NAMESPACE}/{camel}"


def register_suite() -> list[str]:
    """Register every preset as ``prefrl/<TaskName>``; safe to call again.

    :return: the ids of all suite tasks
    """
    ids = []
    for name in available_tasks():
        env_id = task_env_id(name)
        if env_id not in gym.registry:
            # A string entry point keeps the spec picklable for subprocess vector envs.
            gym.register(id=env_id, entry_point="prefrl.envs.factory:make_task_env", kwargs={"task": name})
        ids.append(env_id)
    return ids
