"""Early, explicit sanity checks of a preset: every error is one line naming the bad value
and what would be valid.

Everything a run would otherwise trip over later (in SB3, torch or the label schedule,
possibly hours in) is refused here, before anything is written. :func:`check_env_id`
looks the env id up in Gymnasium's registry without building the env.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from prefrl.config.settings import (
    ACTIVATIONS,
    DOMAINS,
    FIT_MODES,
    INFINITE_ALLOWED,
    MAX_INT,
    ON_TERMINATION,
    QUERY_SELECTIONS,
    REWARD_ARCHITECTURES,
    SECTIONS,
    VEC_ENVS,
    Preset,
)
from prefrl.util.errors import PrefrlError


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
        return PrefrlError(f"{key} = {toml_value(value)} in {source} is invalid: {want}")

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
    if t.on_termination not in ON_TERMINATION:
        raise bad("task.on_termination", t.on_termination, "use continue, reset or show_then_reset")
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
        "labels.query_window": lab.query_window,
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


def toml_value(value: Any) -> str:
    """``value`` as it would be written in a preset or after ``--set key=``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        # A TOML literal string where it can be one (reads like Python's repr), else a basic string.
        return f"'{value}'" if value.isprintable() and "'" not in value else json.dumps(value)
    return repr(value)


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
