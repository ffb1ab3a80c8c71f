"""Fuzz ``--set`` overrides: any key and value either gives a valid preset or a one-line
PrefrlError naming the key; never another exception, never a half-applied preset."""

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from prefrl.config.presets import SECTIONS, apply_overrides, available_tasks, load_preset, validate
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
            value = getattr(getattr(result, section_name), f.name)
            assert not (isinstance(value, float) and value != value), f"{section_name}.{f.name} is nan"
    section, _, name = key.partition(".")
    assert dataclasses.replace(getattr(result, section)) == getattr(result, section)
