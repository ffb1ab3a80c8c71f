"""Preset files and their validation: every error is one line naming the bad value."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from prefrl.config import settings
from prefrl.config.loading import PRESET_DIR, apply_overrides, available_tasks, load_preset
from prefrl.util.errors import PrefrlError

SUITE = {
    "mujoco": {"hopper", "walker2d", "halfcheetah", "swimmer", "ant", "reacher",
               "invertedpendulum", "inverteddoublependulum"},
    "atari": {"pong", "beamrider", "breakout", "enduro", "qbert", "seaquest", "spaceinvaders"},
    "classic": {"cartpole", "pendulum"},
}
SECTIONS = ("[task]", "[ppo]", "[reward]", "[labels]", "[teacher]", "[eval]")


def _raises_one_line(match: str, func, *args) -> str:
    with pytest.raises(PrefrlError) as info:
        func(*args)
    message = str(info.value)
    assert "\n" not in message, message
    assert match in message, message
    return message


def test_every_suite_task_has_a_preset() -> None:
    assert set(available_tasks()) == set().union(*SUITE.values())


@pytest.mark.parametrize("name", available_tasks())
def test_preset_loads_and_states_every_section(name: str) -> None:
    preset = load_preset(name)
    assert preset.task.name == name
    assert preset.task.domain in SUITE and name in SUITE[preset.task.domain]
    assert preset.task.clip_length <= preset.task.horizon
    text = (PRESET_DIR / f"{name}.toml").read_text()
    for section in SECTIONS:
        assert section in text, f"{name}.toml lacks {section}"
    if preset.task.domain == "classic":
        assert preset.task.for_tests and "fast test preset" in preset.task.description
        assert preset.labels.budget <= 50 and preset.ppo.total_steps <= 4096
    else:
        assert not preset.task.for_tests


@pytest.mark.parametrize("name", sorted(SUITE["mujoco"]))
def test_mujoco_presets_use_the_paper_defaults(name: str) -> None:
    preset = load_preset(name)
    assert preset.task.env_id.endswith("-v5")
    # a fallen pendulum cannot rise again, a fallen hopper wasted most of each episode
    # lying on (docs/results.md): those restart in place; the others continue
    assert preset.task.on_termination == ("reset" if "pendulum" in name or name == "hopper" else "continue")
    assert (preset.labels.budget, preset.labels.initial_labels) == (700, 175)
    assert preset.labels.rate_constant == 2e6
    assert preset.reward.architecture == "mlp" and preset.reward.hidden_sizes == (64, 64)
    assert preset.reward.output_std == 1.0 and preset.reward.label_buffer_size == 0
    assert preset.ppo.policy == "MlpPolicy" and preset.ppo.normalize_observations
    assert math.isinf(preset.teacher.beta)


@pytest.mark.parametrize("name", sorted(SUITE["atari"]))
def test_atari_presets_use_the_paper_defaults(name: str) -> None:
    preset = load_preset(name)
    task = preset.task
    assert task.env_id == f"ALE/{task.env_id[4:-3]}-v5"
    assert task.on_termination == "reset" and task.clip_length == 25
    assert task.mask_regions, "the score must be hidden"
    assert task.termination_penalty > 0
    assert (preset.labels.budget, preset.labels.initial_labels) == (5500, 500)
    assert preset.labels.rate_constant == 5e6 and preset.labels.pretrain_epochs == 200
    assert preset.reward.architecture == "atari_cnn" and preset.reward.output_std == 0.05
    assert preset.reward.label_buffer_size == 3000
    ppo = preset.ppo
    assert (ppo.policy, ppo.n_envs, ppo.n_steps, ppo.batch_size, ppo.n_epochs) == ("CnnPolicy", 8, 128, 256, 4)
    assert (ppo.learning_rate, ppo.clip_range, ppo.ent_coef, ppo.vf_coef) == (2.5e-4, 0.1, 0.01, 0.5)
    assert ppo.clip_true_reward and not ppo.normalize_observations
    assert preset.eval.max_episode_steps == 27_000


def test_unknown_task_is_named() -> None:
    _raises_one_line("'no_such_task'", load_preset, "no_such_task")


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "custom.toml"
    path.write_text(text)
    return str(path)


MINIMAL = '[task]\nenv_id = "CartPole-v1"\ndomain = "classic"\nhorizon = 200\nclip_length = 20\n'


def test_a_minimal_file_takes_the_defaults(tmp_path: Path) -> None:
    preset = load_preset(_write(tmp_path, MINIMAL))
    assert preset.task.name == "custom" and preset.labels.budget == 700


def test_malformed_toml(tmp_path: Path) -> None:
    _raises_one_line("custom.toml", load_preset, _write(tmp_path, "[task\nenv_id = 'x'\n"))


def test_unknown_key(tmp_path: Path) -> None:
    _raises_one_line("task.horizn", load_preset, _write(tmp_path, MINIMAL + "horizn = 5\n"))


def test_unknown_section(tmp_path: Path) -> None:
    _raises_one_line("[rewards]", load_preset, _write(tmp_path, MINIMAL + "[rewards]\nbudget = 5\n"))


def test_unknown_on_termination(tmp_path: Path) -> None:
    _raises_one_line("'stop'", load_preset, _write(tmp_path, MINIMAL + 'on_termination = "stop"\n'))


def test_overrides_apply_with_type_checks() -> None:
    preset = load_preset("cartpole")
    assert apply_overrides(preset, ["ppo.total_steps=1000"]).ppo.total_steps == 1000
    assert load_preset("cartpole", ["task.on_termination=continue"]).task.on_termination == "continue"
    _raises_one_line("'abc'", apply_overrides, preset, ["ppo.total_steps=abc"])
    _raises_one_line("teacher.beta = true", apply_overrides, preset, ["teacher.beta=true"])
    _raises_one_line("ppo.total_stps", apply_overrides, preset, ["ppo.total_stps=5"])
    _raises_one_line("'ppo.total_steps'", apply_overrides, preset, ["ppo.total_steps"])


@pytest.mark.parametrize(
    "override, named",
    [
        ("labels.budget=0", "labels.budget = 0"),
        ("labels.budget=-5", "labels.budget = -5"),
        ("labels.initial_labels=41", "labels.initial_labels = 41"),
        ("task.clip_length=201", "task.clip_length = 201"),
        ("task.on_termination=restart", "task.on_termination = 'restart'"),
        ("task.mask_regions=[[10, 5, 0, 160]]", "[10, 5, 0, 160]"),
    ],
)
def test_invalid_values_are_named(override: str, named: str) -> None:
    _raises_one_line(named, apply_overrides, load_preset("cartpole"), [override])


@pytest.mark.parametrize("cls", [settings.Preset, *settings.SECTIONS.values()], ids=lambda cls: cls.__name__)
def test_every_setting_states_its_meaning_in_one_line(cls: type) -> None:
    # The reference of the preset keys is generated from these.
    for name, doc in settings.setting_docs(cls).items():
        assert doc.strip() and "\n" not in doc, f"{cls.__name__}.{name}: {doc!r}"
