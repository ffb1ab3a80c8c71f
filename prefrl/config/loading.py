"""Reading presets: TOML files, type coercion and ``--set section.key=value`` overrides.

A TOML file sets any subset of a section's fields (:mod:`prefrl.config.settings`), the rest
take their defaults. Every value is checked against its field's type, so a typo or a
wrong type is an error naming the setting, never a silently ignored value; the result is
then validated (:mod:`prefrl.config.validation`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefrl.config.settings import SECTIONS, Preset
from prefrl.config.validation import check_env_id, toml_value, validate
from prefrl.util.errors import PrefrlError


def _preset_dir() -> Path:
    """The suite's preset files: the repository's top-level ``envs/``, installed with the
    package as ``prefrl._presets`` (a setuptools package-dir mapping in pyproject.toml).

    Code imported from a checkout reads that checkout's ``envs/``, even when another
    checkout is the one installed (an editable install maps ``prefrl._presets`` to its own
    folder, which may hold other presets than the code being run).
    """
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "envs").is_dir():
        return checkout / "envs"
    try:
        spec = importlib.util.find_spec("prefrl._presets")
    except ImportError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if Path(location).is_dir():
                return Path(location)
    return checkout / "envs"


#: Folder of the suite's preset files.
PRESET_DIR = _preset_dir()


def _coerce(where: str, annotation: Any, value: Any, example: Any = None, source: str = "") -> Any:
    """Check ``value`` against a field's type annotation and convert it.

    :param where: the setting as the user wrote it, e.g. ``--set ppo.n_steps``
    :param annotation: the field's type
    :param value: what the user gave (TOML-parsed)
    :param example: a valid value shown in the error message (the preset's own), if any
    :param source: the file the value came from, named in the error message
    :raises PrefrlError: naming the value, the type wanted and an example
    """
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.lower() in ("inf", "+inf", "-inf"):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        args = typing.get_args(annotation)
        if isinstance(value, (list, tuple)):
            try:
                if len(args) == 2 and args[1] is Ellipsis:
                    return tuple(_coerce(where, args[0], v) for v in value)
                if len(value) == len(args):
                    return tuple(_coerce(where, a, v) for a, v in zip(args, value))
            except PrefrlError:
                pass  # name the whole list below, not the element
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            try:
                return _coerce(where, arg, value)
            except PrefrlError:
                continue
    else:  # pragma: no cover - every field type is handled above
        return value
    wanted = _describe_type(annotation)
    hint = f", e.g. {toml_value(example)}" if example is not None and annotation is not bool else ""
    in_source = f" in {source}" if source else ""
    raise PrefrlError(f"{where} = {toml_value(value)}{in_source} is not {wanted}; give {wanted}{hint}")


def _describe_type(annotation: Any) -> str:
    """``int`` -> ``a whole number``: how a setting's type reads in an error message."""
    return _type_nouns(annotation)[0]


def _type_nouns(annotation: Any) -> tuple[str, str]:
    """``(singular, plural)`` of a setting's type, e.g. ``("a list of whole numbers", "lists of whole numbers")``."""
    nouns = {
        bool: ("true or false", "true/false values"),
        int: ("a whole number", "whole numbers"),
        float: ("a number", "numbers"),
        str: ("a string", "strings"),
    }
    if annotation in nouns:
        return nouns[annotation]
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            items = _type_nouns(args[0])[1]
        else:
            items = f"{len(args)} {_type_nouns(args[0])[1]}"
        return f"a list of {items}", f"lists of {items}"
    text = str(annotation).replace("typing.", "")  # pragma: no cover - no such field
    return text, text  # pragma: no cover


def _build_section(section: str, values: Mapping[str, Any], source: str) -> Any:
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise PrefrlError(
                f"unknown setting '{section}.{key}' in {source}; "
                f"valid keys of [{section}]: {', '.join(sorted(known))}"
            )
        # An empty default (env_id = "", mask_regions = []) is no example worth showing.
        example = defaults[key] if defaults[key] not in ("", ()) else None
        kwargs[key] = _coerce(f"{section}.{key}", hints[key], value, example, source)
    return cls(**kwargs)


def preset_from_dict(data: Mapping[str, Any], source: str, default_name: str = "") -> Preset:
    """Build and validate a :class:`Preset` from nested TOML-like data (the env id is
    looked up in Gymnasium's registry, see :func:`check_env_id`).

    :param data: ``{section: {key: value}}``
    :param source: where the data came from, named in error messages
    :param default_name: task name when ``task.name`` is not given
    """
    for section, values in data.items():
        if section not in SECTIONS:
            raise PrefrlError(
                f"unknown section [{section}] in {source}; valid sections: {', '.join(SECTIONS)}"
            )
        if not isinstance(values, Mapping):
            raise PrefrlError(f"'{section}' in {source} must be a table [{section}], got {values!r}")
    task_values = dict(data.get("task", {}))
    task_values.setdefault("name", default_name)
    sections = {
        name: _build_section(name, task_values if name == "task" else data.get(name, {}), source)
        for name in SECTIONS
    }
    preset = Preset(**sections)
    if preset.task.env_id:  # first: a typo in the id explains more than what it leads to
        check_env_id(preset.task.env_id, source)
    validate(preset, source)
    return preset


def _parse_value(text: str) -> Any:
    """Parse the value of ``--set key=value`` as TOML, else keep it as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(preset: Preset, overrides: list[str] | tuple[str, ...]) -> Preset:
    """Apply ``section.key=value`` strings (values in TOML syntax) and re-validate.

    :raises PrefrlError: malformed item, unknown key or a value of the wrong type
    """
    data = preset.to_dict()
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise PrefrlError(f"--set {item!r} is malformed; write section.key=value, e.g. ppo.total_steps=10000")
        if section not in SECTIONS:
            raise PrefrlError(f"--set {item!r}: unknown section '{section}'; valid sections: {', '.join(SECTIONS)}")
        known = {f.name for f in dataclasses.fields(SECTIONS[section])}
        if name not in known:
            raise PrefrlError(
                f"--set {item!r}: unknown setting '{key}'; valid keys of [{section}]: {', '.join(sorted(known))}"
            )
        hints = typing.get_type_hints(SECTIONS[section])
        current = getattr(getattr(preset, section), name)
        data[section][name] = _coerce(
            f"--set {key}", hints[name], _parse_value(text.strip()), current if current not in ("", ()) else None
        )
    return preset_from_dict(data, source="--set overrides")


def preset_path(task: str) -> Path:
    """Resolve a preset name (``hopper``) or a path to a ``.toml`` file."""
    candidate = Path(task)
    if candidate.suffix == ".toml" or candidate.exists():
        if candidate.is_dir():
            raise PrefrlError(f"preset '{task}' is a folder; give a .toml file or a task name (see `prefrl tasks`)")
        if not candidate.is_file():
            raise PrefrlError(f"preset file '{task}' not found; give an existing .toml path or a task name (see `prefrl tasks`)")
        return candidate
    path = PRESET_DIR / f"{task.lower()}.toml"
    if not path.is_file():
        names = ", ".join(available_tasks()) or "none found"
        raise PrefrlError(f"unknown task '{task}'; valid tasks: {names}")
    return path


def load_preset(task: str, overrides: list[str] | tuple[str, ...] = ()) -> Preset:
    """Load a preset by name or path and apply ``--set`` overrides.

    :param task: preset name (``hopper``) or path to a ``.toml`` file
    :param overrides: ``section.key=value`` strings
    :raises PrefrlError: unknown task or file, malformed TOML, unknown or invalid
        settings, an env id Gymnasium does not know
    """
    path = preset_path(task)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PrefrlError(f"malformed preset {path}: {exc}; fix the TOML syntax") from None
    except UnicodeDecodeError:
        raise PrefrlError(f"preset {path} is not UTF-8 text; give a TOML file") from None
    except OSError as exc:
        raise PrefrlError(f"cannot read preset {path}: {exc.strerror}; give a readable .toml file") from None
    preset = preset_from_dict(data, source=str(path), default_name=path.stem)
    return apply_overrides(preset, overrides) if overrides else preset


def available_tasks() -> list[str]:
    """Names of the preset files in ``envs/``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))
