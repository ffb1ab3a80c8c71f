"""What differs between the settings a finished run was made with (its ``config.json``)
and the settings it would get now: the staleness rule of every sweep, and what the
results page flags as outdated."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from prefrl.config.settings import SECTIONS
from prefrl.rundir.resume import flatten, setting_differences

#: Preset sections that shape each arm's result (the true arm never uses the reward
#: model, its labels or the teacher).
ARM_SECTIONS = {"true": ("task", "ppo", "eval"), "learned": ("task", "ppo", "reward", "labels", "teacher", "eval")}
#: Settings that may differ without making a finished run stale: the thread count follows
#: the machine (a sweep runner fits it to each run's share of the cores), not the experiment.
IGNORED_SETTINGS = ("ppo.torch_threads",)


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples and lists, inf and Infinity alike


def changed_settings(arm: str, stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a finished run's preset and the one it would run with now, as
    ``section.key (old -> new)`` (the form ``train`` refuses a resume with). Only the
    sections that shape ``arm``'s result count. A key the stored preset lacks is a setting
    added since, which then behaved as its default; one it has and the preset no longer
    knows is ignored.

    :param arm: ``true`` or ``learned``
    :param stored: the ``preset`` of the run's ``config.json``
    :param current: ``Preset.to_dict()`` of the settings it would get now
    """
    old, new = {}, {}
    for section in ARM_SECTIONS[arm]:
        defaults = {f.name: (f.default_factory() if f.default is dataclasses.MISSING else f.default)
                    for f in dataclasses.fields(SECTIONS[section])}
        new[section] = current.get(section, {})
        old[section] = {key: stored.get(section, {}).get(key, defaults.get(key)) for key in new[section]}
    old_flat, new_flat = flatten(_plain(old)), flatten(_plain(new))
    for key in IGNORED_SETTINGS:
        old_flat.pop(key, None)
        new_flat.pop(key, None)
    return setting_differences(old_flat, new_flat)
