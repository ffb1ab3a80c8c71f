"""Task presets: typed settings read from ``envs/<task>.toml``.

A preset holds everything that defines one suite task and how it is trained: the
environment and its wrappers, PPO, the reward model, the label schedule, the synthetic
teacher and the evaluation. Each section is a frozen dataclass; a TOML file sets any
subset of the fields, the rest take the domain's defaults (the paper's values, see
``../shared/design.md``). ``--set section.key=value`` overrides any field with type
checking, so a typo is an error and never a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefrl.util.errors import PrefrlError


def _preset_dir() -> Path:
    """The suite's preset files: the repository's top-level ``envs/``, installed with the
    package as ``prefrl._presets`` (a setuptools package-dir mapping in pyproject.toml)."""
    source_tree = Path(__file__).resolve().parents[2] / "envs"
    try:
        spec = importlib.util.find_spec("prefrl._presets")
    except ImportError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if Path(location).is_dir():
                return Path(location)
    return source_tree  # running from a checkout without installing


#: Folder of the suite's preset files.
PRESET_DIR = _preset_dir()

DOMAINS = ("mujoco", "atari", "classic")
#: ppo.activation's names and the torch.nn modules they stand for (tanh is SB3's default).
ACTIVATIONS = {"tanh": "Tanh", "relu": "ReLU"}
QUERY_SELECTIONS = ("uniform", "disagreement", "entropy")
REWARD_ARCHITECTURES = ("mlp", "atari_cnn")
#: How the ensemble is refitted beside PPO (prefrl.training.run.RewardFitter).
FIT_MODES = ("background", "inline", "lagged")
VEC_ENVS = ("dummy", "subproc", "ale")
#: Settings for which an infinite value means something (a perfectly rational teacher,
#: a teacher that never skips).
INFINITE_ALLOWED = ("teacher.beta", "teacher.skip_threshold")
#: Largest whole number a setting may have (integers beyond it do not fit numpy, torch or
#: SQLite, and are exactly representable as TOML floats like ``1e9`` only up to here).
MAX_INT = 2**53


@dataclass(frozen=True)
class TaskSettings:
    """The environment, its wrapper chain and the clip geometry.

    :param name: preset name, e.g. ``hopper`` (defaults to the file stem)
    :param description: one line shown by ``prefrl tasks``
    :param env_id: the underlying Gymnasium id, e.g. ``Hopper-v5`` or ``ALE/Pong-v5``
    :param domain: ``mujoco``, ``atari`` or ``classic``
    :param horizon: fixed length of a training episode in agent steps; early termination
        is removed because variable episode length leaks reward
    :param clip_length: agent steps per segment shown to the teacher (must be <= horizon)
    :param termination_penalty: subtracted from the training reward of each step flagged
        ``after_termination`` (fallen over, game over), in both arms and so also in what
        the synthetic teacher judges; evaluation returns never include it
    :param mask_regions: Atari only: ``[top, bottom, left, right]`` rectangles of the raw
        210x160 frame blacked out (score and other counters) before preprocessing
    :param frame_skip: Atari frame skip (max-pooled over the last two frames)
    :param noop_max: Atari: at most this many no-op actions after reset
    :param screen_size: Atari: side of the square grayscale observation
    :param frame_stack: Atari: number of stacked frames
    :param fire_reset: Atari: press FIRE after reset for games that need it to start
    :param fire_after_life_loss: Atari: the agent's next action after a lost life is FIRE,
        for games that wait for it to go on (Breakout's next ball), so a policy cannot
        stop the game by never pressing it; as SB3's and CleanRL's Atari chains do
        (their life-loss reset presses FIRE)
    :param show_unmasked_frames: Atari: show people the frames with the score (the agent
        and the reward model still see it blacked out); by default people see what the
        agent sees, so labels cannot depend on what the agent cannot observe
    :param for_tests: a small preset for fast tests, not part of the benchmark suite
    :param sticky_action_prob: Atari: probability that the emulator repeats the previous
        action instead of the new one (ALE's ``repeat_action_probability``); 0 as in the
        paper (ALE v5 would default to 0.25)
    :param on_termination: what a training episode does when the underlying task ends
        (fallen over, game over): ``continue`` stepping the same simulation (MuJoCo) or
        ``reset`` it in place (Atari, CartPole); either way the episode runs to ``horizon``
    """

    name: str = ""
    description: str = ""
    env_id: str = ""
    domain: str = "mujoco"
    horizon: int = 1000
    clip_length: int = 50
    termination_penalty: float = 0.0
    mask_regions: tuple[tuple[int, int, int, int], ...] = ()
    frame_skip: int = 4
    noop_max: int = 30
    screen_size: int = 84
    frame_stack: int = 4
    fire_reset: bool = False
    fire_after_life_loss: bool = False
    show_unmasked_frames: bool = False
    for_tests: bool = False
    sticky_action_prob: float = 0.0
    on_termination: str = "continue"


@dataclass(frozen=True)
class PPOSettings:
    """Stable-Baselines3 PPO, identical for the learned and the true-reward arm.

    :param total_steps: environment (agent) steps of one run
    :param policy: SB3 policy name (``MlpPolicy`` or ``CnnPolicy``)
    :param n_envs: parallel environments
    :param vec_env: ``dummy`` (in process), ``subproc`` or, Atari only, ``ale`` (the same
        envs on the emulators directly, ``prefrl.envs.ale_vec_env``)
    :param normalize_observations: wrap in ``VecNormalize`` for observations
    :param normalize_rewards: let ``VecNormalize`` scale the reward the agent sees
    :param clip_true_reward: clip the true reward to [-1, 1] in the true arm (Atari)
    :param torch_threads: torch CPU threads of the run (0 = torch's default); small MLPs
        run fastest on one thread
    :param log_std_init: initial log standard deviation of a continuous policy's actions
        (SB3's default 0: std 1; rl-baselines3-zoo's HalfCheetah and Hopper use -2)
    :param ortho_init: orthogonal initialisation of the policy and value nets (SB3's default)
    :param activation: hidden-layer activation of the policy and value nets, ``tanh``
        (SB3's default) or ``relu``
    """

    total_steps: int = 1_000_000
    policy: str = "MlpPolicy"
    n_envs: int = 1
    vec_env: str = "dummy"
    n_steps: int = 2048
    batch_size: int = 64
    n_epochs: int = 10
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    net_arch: tuple[int, ...] = (64, 64)
    normalize_observations: bool = True
    normalize_rewards: bool = False
    clip_true_reward: bool = False
    torch_threads: int = 1
    log_std_init: float = 0.0
    ortho_init: bool = True
    activation: str = "tanh"


@dataclass(frozen=True)
class RewardSettings:
    """The reward-predictor ensemble and how it is fitted.

    :param architecture: ``mlp`` on (observation, action) or the paper's ``atari_cnn``
    :param ensemble_size: members, each trained on its own bootstrap resample
    :param hidden_sizes: MLP hidden layers
    :param use_actions: feed the action to the MLP beside the observation
    :param output_std: each member's output is normalised to mean 0 and this std
    :param learning_rate: Adam step size
    :param batch_size: clip pairs per minibatch
    :param epochs_per_update: passes over the labels each time new labels arrived
    :param max_pairs_per_update: at most this many clip pairs per member in one refit
        (0 = no cap): once the labels outnumber it, a refit costs the same however many
        arrive, so a slow network keeps pace with PPO (pretraining is not capped)
    :param initial_l2: starting L2 strength, adapted so that validation loss stays
        between ``l2_ratio_low`` and ``l2_ratio_high`` times the training loss
    :param validation_fraction: share of labels held out to tune L2 (1/e in the paper)
    :param random_answer_prob: assumed chance that the labeller answered at random
    :param label_buffer_size: train on the newest this many labels (0 = all)
    :param batch_norm: CNN only: batch normalisation after each conv
    :param dropout: CNN only: dropout probability after each convolution block (the
        paper's 0.5 by default; the Atari presets use 0, since 0.5 kept the CNN from
        learning a few hundred labels in the refits a CPU run affords: docs/results.md,
        findings)
    :param frames_per_clip: frames of each clip used by the loss per minibatch (random) and
        by query selection's scores (evenly spaced); 0 = all
    :param fit_mode: ``background``: refit in a thread beside PPO, the next rewards wait
        for it (exactly the rewards of ``inline``, where the agent waits at once);
        ``lagged``: the agent's rewards come from the previous weights until the next
        update point, so a refit may take a whole update interval without stalling the
        agent (the paper's asynchronous training; for the slow Atari CNN)
    """

    architecture: str = "mlp"
    ensemble_size: int = 3
    hidden_sizes: tuple[int, ...] = (64, 64)
    use_actions: bool = True
    output_std: float = 1.0
    learning_rate: float = 3e-4
    batch_size: int = 64
    epochs_per_update: int = 10
    max_pairs_per_update: int = 0
    initial_l2: float = 0.001
    validation_fraction: float = 1.0 / math.e
    l2_ratio_low: float = 1.1
    l2_ratio_high: float = 1.5
    random_answer_prob: float = 0.1
    label_buffer_size: int = 0
    batch_norm: bool = True
    dropout: float = 0.5
    frames_per_clip: int = 0
    fit_mode: str = "background"


@dataclass(frozen=True)
class LabelSettings:
    """The label schedule and the choice of queries.

    :param budget: labels for the whole run
    :param initial_labels: labels collected from the random policy before RL starts
    :param rate_constant: ``c`` in the label rate ``c / (T + c)`` over env steps ``T``
    :param pretrain_epochs: reward-model epochs on the initial labels before RL starts
    :param query_selection: ``uniform``, ``disagreement`` (ensemble variance of the
        predicted preference) or ``entropy`` (of the mean predicted preference)
    :param oversample: candidate pairs drawn per query asked
    :param segment_buffer_size: most recent segments kept to draw queries from
    :param update_every_steps: env steps between rounds of queries and reward fitting
        (each round happens at the next PPO rollout end)
    """

    budget: int = 700
    initial_labels: int = 175
    rate_constant: float = 2e6
    pretrain_epochs: int = 200
    query_selection: str = "disagreement"
    oversample: int = 10
    segment_buffer_size: int = 1000
    update_every_steps: int = 5000


@dataclass(frozen=True)
class TeacherSettings:
    """The synthetic teacher (B-Pref); the defaults are a perfectly rational oracle.

    Returns are divided by the running standard deviation of the segment returns the
    teacher has seen before ``beta`` and the thresholds apply, so that the same
    settings mean the same irrationality on every task.

    :param beta: Boltzmann rationality; ``inf`` = always the larger return
    :param mistake_prob: probability of flipping the answer
    :param skip_threshold: "can't tell" when both normalised returns are below this
    :param equal_threshold: "tie" when normalised returns differ by less than this
    :param gamma: myopia: step ``t`` of an ``H``-step clip weighs ``gamma**(H-1-t)``
    """

    beta: float = math.inf
    mistake_prob: float = 0.0
    skip_threshold: float = -math.inf
    equal_threshold: float = 0.0
    gamma: float = 1.0


@dataclass(frozen=True)
class EvalSettings:
    """Evaluation on the true return under the task's real rules.

    :param every_steps: evaluate every this many env steps (and at the end)
    :param episodes: evaluation episodes each time
    :param max_episode_steps: cap on an evaluation episode (0 = the env's own limit)
    :param deterministic: evaluate the policy's most likely action instead of sampling
    """

    every_steps: int = 50_000
    episodes: int = 5
    max_episode_steps: int = 0
    deterministic: bool = True


@dataclass(frozen=True)
class Preset:
    """One suite task: every setting of a run except arm, seed and paths."""

    task: TaskSettings
    ppo: PPOSettings = field(default_factory=PPOSettings)
    reward: RewardSettings = field(default_factory=RewardSettings)
    labels: LabelSettings = field(default_factory=LabelSettings)
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), e.g. for ``config.json``."""
        return _jsonable(dataclasses.asdict(self))


SECTIONS: dict[str, type] = {
    "task": TaskSettings,
    "ppo": PPOSettings,
    "reward": RewardSettings,
    "labels": LabelSettings,
    "teacher": TeacherSettings,
    "eval": EvalSettings,
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


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
    hint = f", e.g. {_toml_value(example)}" if example is not None and annotation is not bool else ""
    in_source = f" in {source}" if source else ""
    raise PrefrlError(f"{where} = {_toml_value(value)}{in_source} is not {wanted}; give {wanted}{hint}")


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


def _toml_value(value: Any) -> str:
    """``value`` as it would be written in a preset or after ``--set key=``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        # A TOML literal string where it can be one (reads like Python's repr), else a basic string.
        return f"'{value}'" if value.isprintable() and "'" not in value else json.dumps(value)
    return repr(value)


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


def validate(preset: Preset, source: str = "preset") -> None:
    """Early, explicit sanity checks; raise :class:`PrefrlError` naming the bad value and
    what would be valid.

    Everything a run would otherwise trip over later (in SB3, torch or the label
    schedule, possibly hours in) is refused here, before anything is written.

    :param preset: the settings to check
    :param source: where they came from (a file, ``--set overrides``), named in messages
    """
    t, p, r, lab, te, ev = (
        preset.task, preset.ppo, preset.reward, preset.labels, preset.teacher, preset.eval
    )

    def bad(key: str, value: Any, want: str) -> PrefrlError:
        return PrefrlError(f"{key} = {_toml_value(value)} in {source} is invalid: {want}")

    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            value = getattr(getattr(preset, section), f.name)
            key = f"{section}.{f.name}"
            if isinstance(value, float) and math.isnan(value):
                raise bad(key, value, "give a number, not nan")
            if isinstance(value, float) and math.isinf(value) and key not in INFINITE_ALLOWED:
                raise bad(key, value, "give a finite number")
            # Beyond this no array, tensor or SQLite integer can hold it (1e300 parses as a
            # whole number); no setting means anything near it.
            numbers = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT for v in numbers):
                raise bad(key, value, "give a whole number below 2**53")
    if not t.env_id:
        raise bad("task.env_id", t.env_id, "set the Gymnasium id, e.g. 'Hopper-v5'")
    if t.domain not in DOMAINS:
        raise bad("task.domain", t.domain, f"use one of {', '.join(DOMAINS)}")
    if p.activation not in ACTIVATIONS:
        raise bad("ppo.activation", p.activation, f"use one of {', '.join(ACTIVATIONS)}")
    if t.on_termination not in ("continue", "reset"):
        raise bad("task.on_termination", t.on_termination, "use continue or reset")
    # The Atari wrapper chain passes ALE's own arguments (frameskip, sticky actions) to
    # gym.make, and the others record a simulation state an emulator does not have.
    is_ale = t.env_id.rpartition(":")[2].startswith("ALE/")
    if (t.domain == "atari") != is_ale:
        raise bad(
            "task.domain", t.domain,
            f"task.env_id = '{t.env_id}' is {'an' if is_ale else 'not an'} ALE game; "
            + ("use atari" if is_ale else "use mujoco or classic (atari is for ALE/... ids)"),
        )
    if t.domain == "atari" and t.on_termination != "reset":
        raise bad("task.on_termination", t.on_termination, "the emulator stops at game over; use reset for Atari")
    positive = {
        "task.horizon": t.horizon, "task.clip_length": t.clip_length,
        "task.frame_skip": t.frame_skip, "task.screen_size": t.screen_size, "task.frame_stack": t.frame_stack,
        "ppo.total_steps": p.total_steps, "ppo.n_envs": p.n_envs, "ppo.n_steps": p.n_steps,
        "ppo.batch_size": p.batch_size, "ppo.n_epochs": p.n_epochs,
        "ppo.learning_rate": p.learning_rate, "ppo.clip_range": p.clip_range, "ppo.max_grad_norm": p.max_grad_norm,
        "reward.ensemble_size": r.ensemble_size, "reward.batch_size": r.batch_size,
        "reward.epochs_per_update": r.epochs_per_update, "reward.learning_rate": r.learning_rate,
        "reward.output_std": r.output_std, "labels.budget": lab.budget,
        "labels.rate_constant": lab.rate_constant,
        "labels.oversample": lab.oversample, "labels.segment_buffer_size": lab.segment_buffer_size,
        "labels.update_every_steps": lab.update_every_steps,
        "eval.every_steps": ev.every_steps, "eval.episodes": ev.episodes,
    }
    for key, value in positive.items():
        if value <= 0:
            raise bad(key, value, "must be above 0; give a positive number")
    non_negative = {
        "task.noop_max": t.noop_max,
        "labels.initial_labels": lab.initial_labels, "labels.pretrain_epochs": lab.pretrain_epochs,
        "reward.label_buffer_size": r.label_buffer_size, "reward.frames_per_clip": r.frames_per_clip,
        "reward.max_pairs_per_update": r.max_pairs_per_update,
        "eval.max_episode_steps": ev.max_episode_steps, "reward.initial_l2": r.initial_l2,
        "ppo.torch_threads": p.torch_threads, "ppo.vf_coef": p.vf_coef,
        "teacher.equal_threshold": te.equal_threshold,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise bad(key, value, "must not be negative; give 0 or more")
    for key, sizes in {"ppo.net_arch": p.net_arch, "reward.hidden_sizes": r.hidden_sizes}.items():
        if any(size <= 0 for size in sizes):
            raise bad(key, sizes, "every layer needs at least one unit, e.g. [64, 64]")
    if t.clip_length > t.horizon:
        raise bad(
            "task.clip_length", t.clip_length,
            f"a clip is longer than task.horizon = {t.horizon} (a whole episode); "
            "lower task.clip_length or raise task.horizon",
        )
    if lab.initial_labels > lab.budget:
        raise bad(
            "labels.initial_labels", lab.initial_labels,
            f"it is above labels.budget = {lab.budget}; lower labels.initial_labels or raise "
            "labels.budget (--labels)",
        )
    if lab.query_selection not in QUERY_SELECTIONS:
        raise bad("labels.query_selection", lab.query_selection, f"use one of {', '.join(QUERY_SELECTIONS)}")
    if r.architecture not in REWARD_ARCHITECTURES:
        raise bad("reward.architecture", r.architecture, f"use one of {', '.join(REWARD_ARCHITECTURES)}")
    if r.fit_mode not in FIT_MODES:
        raise bad("reward.fit_mode", r.fit_mode, f"use one of {', '.join(FIT_MODES)}")
    if p.vec_env not in VEC_ENVS:
        raise bad("ppo.vec_env", p.vec_env, f"use one of {', '.join(VEC_ENVS)}")
    if p.vec_env == "ale" and t.domain != "atari":
        raise bad("ppo.vec_env", p.vec_env, f"ale runs Atari tasks only; use dummy or subproc for {t.domain}")
    if p.policy not in ("MlpPolicy", "CnnPolicy"):
        raise bad("ppo.policy", p.policy, "use MlpPolicy or CnnPolicy")
    # Both convolutional networks read stacked frames: only Atari observations are images.
    if t.domain != "atari" and p.policy == "CnnPolicy":
        raise bad("ppo.policy", p.policy, f"task.domain = '{t.domain}' has vector observations; use MlpPolicy")
    if t.domain != "atari" and r.architecture == "atari_cnn":
        raise bad("reward.architecture", r.architecture, f"task.domain = '{t.domain}' has vector observations; use mlp")
    if r.frames_per_clip > t.clip_length:
        raise bad(
            "reward.frames_per_clip", r.frames_per_clip,
            f"a clip has only task.clip_length = {t.clip_length} frames; lower it (0 = all frames)",
        )
    for key, value in {
        "reward.validation_fraction": r.validation_fraction,
        "reward.random_answer_prob": r.random_answer_prob,
        "teacher.mistake_prob": te.mistake_prob,
        "reward.dropout": r.dropout,
    }.items():
        if not 0.0 <= value < 1.0:
            raise bad(key, value, "give a probability in [0, 1)")
    for key, value in {"ppo.gae_lambda": p.gae_lambda, "task.sticky_action_prob": t.sticky_action_prob}.items():
        if not 0.0 <= value <= 1.0:
            raise bad(key, value, "give a number in [0, 1]")
    for key, value in {"ppo.gamma": p.gamma, "teacher.gamma": te.gamma}.items():
        if not 0.0 < value <= 1.0:
            raise bad(key, value, "give a discount in (0, 1]")
    if te.beta <= 0:
        raise bad("teacher.beta", te.beta, "must be positive (inf = perfectly rational)")
    if not 1.0 <= r.l2_ratio_low < r.l2_ratio_high:
        raise bad(
            "reward.l2_ratio_low", r.l2_ratio_low,
            f"need 1 <= reward.l2_ratio_low < reward.l2_ratio_high = {r.l2_ratio_high}",
        )
    # PPO normalises advantages over a minibatch: one sample has no spread (SB3 asserts).
    if p.batch_size < 2:
        raise bad("ppo.batch_size", p.batch_size, "PPO needs minibatches of at least 2 steps; give 2 or more")
    if p.batch_size > p.n_steps * p.n_envs:
        raise bad(
            "ppo.batch_size", p.batch_size,
            f"it is above ppo.n_steps * ppo.n_envs = {p.n_steps * p.n_envs} (one rollout); "
            "lower ppo.batch_size or raise ppo.n_steps",
        )
    for region in t.mask_regions:
        top, bottom, left, right = region
        if not (0 <= top < bottom and 0 <= left < right):
            raise bad(
                "task.mask_regions", list(region),
                "each region is [top, bottom, left, right] with top < bottom, left < right",
            )


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


def check_env_id(env_id: str, source: str) -> None:
    """Refuse an env id Gymnasium does not know, before a run creates anything.

    Looks the id up the way ``gymnasium.make`` does (importing the module of a
    ``module:Env-v0`` id, a missing version meaning the newest one) without building the
    env, so it costs microseconds and the error names the id instead of surfacing as a
    traceback from deep inside a run.

    :param env_id: ``task.env_id``
    :param source: where it came from, named in the message
    :raises PrefrlError: unknown, deprecated or unimportable id
    """
    import importlib

    import gymnasium as gym
    from gymnasium.envs.registration import find_highest_version, parse_env_id

    # The suite's own ids (prefrl/...) are registered by `import prefrl`, done before this runs.
    module, _, name = env_id.rpartition(":")
    try:
        if module:
            importlib.import_module(module)
        if name.startswith("ALE/"):
            import ale_py

            gym.register_envs(ale_py)
        namespace, base, version = parse_env_id(name)
        if version is None and find_highest_version(namespace, base) is not None:
            return
        gym.spec(name)
    except (gym.error.Error, ImportError) as exc:
        detail = " ".join(str(exc).split())
        raise PrefrlError(
            f"task.env_id = '{env_id}' in {source} is not a registered Gymnasium environment ({detail}); "
            "give an id gymnasium.make accepts, e.g. 'CartPole-v1', 'Hopper-v5' or 'ALE/Pong-v5'"
        ) from None


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
