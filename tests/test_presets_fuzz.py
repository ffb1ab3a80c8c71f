"""Fuzz ``--set`` overrides: any key and value either gives a valid preset or a one-line
PrefrlError naming the key; never another exception, never a half-applied preset."""

import dataclasses
import tomllib

from hypothesis import given, settings
from hypothesis import strategies as st

from prefrl.config.loading import apply_overrides, available_tasks, load_preset
from prefrl.config.settings import SECTIONS
from prefrl.config.validation import validate
from prefrl.util.errors import PrefrlError

KEYS = [f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
VALUES = st.one_of(
    st.integers(min_value=-10**9, max_value=10**9).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "inf", "-inf", "nan", "''", "[]", "[64, 64]", "[[0, 10, 0, 160]]",
                     '"uniform"', '"disagreement"', '"MlpPolicy"', '"subproc"', "abc", "1e400", "{}"]),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(task=st.sampled_from(available_tasks()), key=st.sampled_from(KEYS + ["ppo.nope", "nosection.x", "ppo"]),
       value=VALUES)
def test_any_override_is_valid_or_a_one_line_error(task: str, key: str, value: str) -> None:
    preset = load_preset(task)
    try:
        result = apply_overrides(preset, [f"{key}={value}"])
    except PrefrlError as exc:
        message = str(exc)
        assert "\n" not in message
        assert key.split(".")[-1] in message or key in message
        return
    validate(result)  # what came back is a fully valid preset
    for section_name in SECTIONS:
        for f in dataclasses.fields(SECTIONS[section_name]):
            setting = getattr(getattr(result, section_name), f.name)
            assert not (isinstance(setting, float) and setting != setting), f"{section_name}.{f.name} is nan"
    # The override took effect on its key and nowhere else.
    section, _, name = key.partition(".")
    new = getattr(getattr(result, section), name)
    old = getattr(getattr(preset, section), name)
    restored = dataclasses.replace(result, **{section: dataclasses.replace(getattr(result, section), **{name: old})})
    assert restored == preset, f"--set {key}={value} changed other settings too"
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = None
    if isinstance(parsed, (int, float)) and isinstance(new, (int, float)):  # bools are ints too
        assert new == parsed and isinstance(new, bool) == isinstance(parsed, bool), (key, value, new)
