"""The tables and notes of the learning-quality results page, computed from the
benchmark's records (:mod:`prefrl.analysis.quality_records`): per-setting tables, the
targets' verdicts, what has not been run, and the limits of the numbers."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.analysis.quality_protocol import (
    ATARI_TARGET_MIN_FRAMES,
    ATARI_TARGET_NORMALISED,
    ATARI_TASKS,
    CLEAR_MARGIN,
    DEFAULT_LABELS,
    DEFAULT_SEEDS,
    DEFAULT_TASKS,
    MUJOCO_REPORT_TASKS,
    MUJOCO_TARGET_LABELS,
    MUJOCO_TARGET_MIN_STEPS,
    MUJOCO_TARGET_RATIO,
    MUJOCO_TARGET_TASKS,
    TARGET_SEEDS,
    atari_label_budget,
    default_steps,
    run_overrides,
)
from prefrl.analysis.quality_records import UNRECORDED_MACHINE, Setting, read_commands, run_host_record, run_load
from prefrl.analysis.run_settings import changed_settings
from prefrl.config.loading import load_preset
from prefrl.rundir import RunDir


def _fmt(x: float) -> str:
    return f"{x:,.1f}" if abs(x) < 10_000 else f"{x:,.0f}"


def _ratio(learned: float, true: float) -> float | None:
    """learned / true; undefined when the true return is not positive (Reacher's returns
    are negative: a ratio of negatives would reward doing worse)."""
    return learned / true if true > 0 else None


def _normalised(learned: float, true: float, random: float) -> float | None:
    """(learned - random) / (true - random); undefined unless the true arm beats random."""
    return (learned - random) / (true - random) if true > random else None


def clearly_beats_random(true_returns: Sequence[float], random: dict[str, Any]) -> tuple[bool, float, float]:
    """true mean - random mean > CLEAR_MARGIN x pooled std, the pooled std being
    sqrt((std_true^2 + std_random^2) / 2) with std_true over seeds' final returns and
    std_random over the random policy's episodes.

    :return: (verdict, margin = true mean - random mean, pooled std)
    """
    true_mean = float(np.mean(true_returns))
    pooled = math.sqrt((float(np.std(true_returns)) ** 2 + float(random["std"]) ** 2) / 2)
    margin = true_mean - float(random["mean"])
    return margin > CLEAR_MARGIN * pooled and margin > 0, margin, pooled


def _group(runs: Iterable[Any]) -> dict[tuple[str, int], list[Any]]:
    groups: dict[tuple[str, int], list[Any]] = defaultdict(list)
    for r in runs:
        groups[(r.arm, r.label_budget)].append(r)
    return groups


def machines_note(runs: Sequence[Any]) -> str:
    """Which machines a table's runs ran on, with how many runs each."""
    counts: dict[str, int] = defaultdict(int)
    for r in runs:
        counts[run_host_record(r.run_dir).get("machine") or UNRECORDED_MACHINE] += 1
    return "Runs on: " + "; ".join(f"{m} ({n} run{'s' if n > 1 else ''})" for m, n in sorted(counts.items())) + ".\n"


def reward_model_note(members: Sequence[Any]) -> str:
    """Mean held-out preference accuracy and correlation of learned with true segment
    returns (recent segments) of the runs' last reward fit: what limits a learned arm."""
    acc, corr = [], []
    for r in members:
        try:
            stats = RunDir(r.run_dir).read_summary().get("reward_model") or {}
        except (OSError, ValueError):
            continue
        if "val_accuracy" in stats:
            acc.append(float(stats["val_accuracy"]))
        if "segment_return_corr" in stats:
            corr.append(float(stats["segment_return_corr"]))
    parts = []
    if acc:
        parts.append(f"held-out accuracy {np.mean(acc):.2f}")
    if corr:
        parts.append(f"return corr. {np.mean(corr):.2f}")
    return ", ".join(parts) if parts else "—"


def setting_table(s: Setting) -> str:
    groups = _group(s.runs)
    true_runs = groups.get(("true", 0), [])
    true_mean = float(np.mean([r.final_true_return for r in true_runs])) if true_runs else None
    lines = ["| arm | seeds | env steps | final true return (mean ± std) | learned / true "
             "| normalised (vs random) | labels used | wall time per run (mean) | reward model at the end |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (arm, budget), members in sorted(groups.items(), key=lambda kv: (kv[0][0] != "true", -kv[0][1])):
        finals = np.array([r.final_true_return for r in members])
        mean, std = float(finals.mean()), float(finals.std())
        ratio = norm = ""
        if arm != "true" and true_mean is not None:
            rr = _ratio(mean, true_mean)
            ratio = f"{rr:.2f}" if rr is not None else "n/a (true ≤ 0)"
            if s.random is not None:
                nn = _normalised(mean, true_mean, float(s.random["mean"]))
                norm = f"{nn:.2f}" if nn is not None else "n/a (true ≤ random)"
        name = "true reward" if arm == "true" else f"learned, {budget} labels"
        steps = int(np.mean([r.env_steps for r in members]))
        labels = f"{np.mean([r.labels_used for r in members]):.0f}" if arm != "true" else "—"
        wall = float(np.mean([r.wall_seconds for r in members]))
        loads = [run_load(r.run_dir) for r in members]
        loads = [x for x in loads if x is not None]
        load_txt = f" (load {np.mean(loads):.1f})" if loads else " (load not recorded)"
        seeds = ", ".join(str(r.seed) for r in sorted(members, key=lambda r: r.seed))
        per_seed = ", ".join(_fmt(r.final_true_return) for r in sorted(members, key=lambda r: r.seed))
        spread = f" (seeds: {per_seed})" if len(members) > 1 else ""
        lines.append(f"| {name} | {len(members)} ({seeds}) | {steps:,} | {_fmt(mean)} ± {_fmt(std)}{spread} | {ratio} "
                     f"| {norm} | {labels} | {wall / 60:.1f} min{load_txt} | {reward_model_note(members)} |")
    if s.random is not None:
        lines.append(f"| uniform-random policy | {s.random['episodes']} episodes | — | {_fmt(s.random['mean'])} "
                     f"± {_fmt(s.random['std'])} | | 0 (by definition) | — | — | |")
    return "\n".join(lines) + "\n"


def _protocol_note(n_seeds: int, steps: int, min_steps: int) -> str:
    notes = []
    if n_seeds < TARGET_SEEDS:
        notes.append(f"{n_seeds} of {TARGET_SEEDS} seeds")
    if steps < min_steps:
        notes.append(f"{steps:,} < {min_steps:,} steps")
    return f" (provisional: {', '.join(notes)})" if notes else ""


def target_rows(settings: Sequence[Setting]) -> tuple[list[str], list[str]]:
    """Rows of the targets table for MuJoCo and Atari."""
    mujoco, atari = [], []
    by_task: dict[str, list[Setting]] = defaultdict(list)
    for s in settings:
        if not s.overrides:  # a verdict is about the presets as shipped; variants have their own section
            by_task[s.task].append(s)
    for task in MUJOCO_TARGET_TASKS + MUJOCO_REPORT_TASKS:
        for budget in (MUJOCO_TARGET_LABELS, MUJOCO_TARGET_LABELS // 2):
            what = "target" if budget == MUJOCO_TARGET_LABELS else "also reported"
            found = False
            for s in by_task.get(task, []):
                g = _group(s.runs)
                t, learned = g.get(("true", 0)), g.get(("learned", budget))
                if not t or not learned:
                    continue
                found = True
                tm = float(np.mean([r.final_true_return for r in t]))
                lm = float(np.mean([r.final_true_return for r in learned]))
                ratio = _ratio(lm, tm)
                seeds = min(len(t), len(learned))
                note = _protocol_note(seeds, s.steps, MUJOCO_TARGET_MIN_STEPS)
                # Negative true returns (Reacher): "learned as good as true" is a normalised
                # score of at least the ratio's target instead.
                score = ratio
                if ratio is None and s.random is not None:
                    score = _normalised(lm, tm, float(s.random["mean"]))
                verdict = "n/a" if score is None else ("**MET**" if score >= MUJOCO_TARGET_RATIO else "**NOT MET**")
                rtxt = "n/a" if ratio is None else f"{ratio:.2f}"
                if ratio is None and score is not None:
                    rtxt = f"n/a (true ≤ 0); normalised {score:.2f}"
                mujoco.append(f"| {task} | {budget} ({what}) | {s.steps:,} | {seeds} | {rtxt} "
                              f"| ≥ {MUJOCO_TARGET_RATIO:.1f} | {verdict}{note} |")
            if not found:
                mujoco.append(f"| {task} | {budget} ({what}) | — | 0 | — | ≥ {MUJOCO_TARGET_RATIO:.1f} "
                              f"| not yet run |")
    for s in settings:
        if s.domain != "atari":
            continue
        g = _group(s.runs)
        t = g.get(("true", 0))
        learned_groups = [(b, m) for (a, b), m in g.items() if a == "learned"]
        if not t or s.random is None:
            atari.append(f"| {s.task} | {s.steps * s.frame_skip:,} | — | — | — | — | — | not yet run |")
            continue
        finals = [r.final_true_return for r in t]
        clear, margin, pooled = clearly_beats_random(finals, s.random)
        beat = (f"yes ({_fmt(margin)} > {CLEAR_MARGIN:g} × {_fmt(pooled)})" if clear
                else f"no ({_fmt(margin)} ≤ {CLEAR_MARGIN:g} × {_fmt(pooled)})")
        tm = float(np.mean(finals))
        excluded = ("excluded: the true arm does not clearly beat random at this budget"
                    + _protocol_note(len(t), s.steps * s.frame_skip, ATARI_TARGET_MIN_FRAMES))
        if not learned_groups:
            # Whether the game counts is the true arm's alone: say so before any learned run.
            verdict = "learned arm not yet run" if clear else excluded
            atari.append(f"| {s.task} | {s.steps * s.frame_skip:,} | {_fmt(float(s.random['mean']))} | {_fmt(tm)} "
                         f"| — | {beat} | — | {verdict} |")
        for budget, members in sorted(learned_groups):
            lm = float(np.mean([r.final_true_return for r in members]))
            seeds = min(len(t), len(members))
            note = _protocol_note(seeds, s.steps * s.frame_skip, ATARI_TARGET_MIN_FRAMES)
            if clear:
                n = _normalised(lm, tm, float(s.random["mean"]))
                ntxt = f"{n:.2f}"
                verdict = ("**MET**" if n >= ATARI_TARGET_NORMALISED else "**NOT MET**") + note
            else:
                ntxt = "— (excluded)"
                verdict = excluded
            atari.append(f"| {s.task} | {s.steps * s.frame_skip:,} | {_fmt(float(s.random['mean']))} | {_fmt(tm)} "
                         f"| {_fmt(lm)} ({budget} labels) | {beat} | {ntxt} | {verdict} |")
    measured = {s.task for s in settings if s.domain == "atari"}
    atari += [f"| {task} | — | — | — | — | — | — | not yet run |" for task in ATARI_TASKS if task not in measured]
    return mujoco, atari


def missing_runs(out: Path, settings: Sequence[Setting]) -> tuple[list[str], list[str]]:
    """(runs of invoked plans that have not finished, default-suite tasks not yet run)."""
    pending = []
    seen = set()
    for entry in read_commands(out):
        for d in entry.get("planned", []):
            if d in seen:
                continue
            seen.add(d)
            if not RunDir(d).is_finished:
                pending.append(d)
    not_run = []
    for task in DEFAULT_TASKS:
        preset = load_preset(task)
        steps = default_steps(task, preset)
        budgets = [atari_label_budget(steps, preset.task.frame_skip)] if preset.task.domain == "atari" \
            else list(DEFAULT_LABELS)
        expected = len(DEFAULT_SEEDS) * (1 + len(budgets))
        finished = sum(len(s.runs) for s in settings
                       if s.task == task and s.steps == steps and not s.overrides)
        if finished == 0:
            not_run.append(task)
        elif finished < expected:
            not_run.append(f"{task} ({finished} of its {expected} default runs finished)")
    return pending, not_run


def trend_note(s: Setting) -> str:
    """Whether each arm's mean curve was still rising over the last quarter of the run."""
    parts = []
    for (arm, budget), members in sorted(_group(s.runs).items(), key=lambda kv: (kv[0][0] != "true", -kv[0][1])):
        def window(r: Any, lo: float, hi: float) -> float:
            inside = (r.eval_steps > lo * r.env_steps) & (r.eval_steps <= hi * r.env_steps)
            return float(np.mean(r.eval_returns[inside])) if inside.any() else float(r.eval_returns[-1])

        # Mean evaluation over the last quarter against the quarter before: robust to one bad evaluation.
        end = float(np.mean([window(r, 0.75, 1.0) for r in members if len(r.eval_returns)]))
        quarter = float(np.mean([window(r, 0.5, 0.75) for r in members if len(r.eval_returns)]))
        scale = max(abs(end), abs(quarter), 1e-9)
        rising = end - quarter > 0.05 * scale
        name = "true arm" if arm == "true" else f"learned arm ({budget})"
        parts.append(f"{name} {'still rising' if rising else 'flat or falling'} (mean evaluation "
                     f"{_fmt(quarter)} in the third quarter of the run, {_fmt(end)} in the last)")
    return "Mean curves: " + "; ".join(parts) + ": longer runs could change these numbers." \
        if any("still rising" in p for p in parts) else "Mean curves: " + "; ".join(parts) + "."


def outdated_runs(setting: Setting) -> list[str]:
    """One line per recorded run whose settings differ from those the plan would give it now."""
    base = load_preset(setting.task, setting.overrides)
    lines = []
    for run in setting.runs:
        try:
            stored = RunDir(run.run_dir).read_config()["preset"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        overrides = run_overrides(base, setting.steps, run.arm, run.label_budget, setting.overrides)
        changes = changed_settings(run.arm, stored, load_preset(setting.task, list(overrides)).to_dict()) if stored else []
        if changes:
            arm = "true" if run.arm == "true" else f"learned-{run.label_budget}"
            lines.append(f"- {setting.task}/{arm}/seed{run.seed}: recorded with other settings than the preset's now "
                         f"({'; '.join(changes)}); the next plan runs it again.")
    return lines


def setting_title(setting: Setting) -> str:
    """``task, N env steps`` (and its overrides): which section of the page a note is about."""
    overrides = f" with `{' '.join(setting.overrides)}`" if setting.overrides else ""
    return f"{setting.task}, {setting.steps:,} env steps{overrides}"


def limits(settings: Sequence[Setting]) -> list[str]:
    """Facts that bound what the tables can show, computed from the settings."""
    notes = []
    for s in settings:
        if not s.runs:
            continue
        notes += outdated_runs(s)
        name = setting_title(s)
        preset_steps = load_preset(s.task, s.overrides).ppo.total_steps
        seeds = sorted({r.seed for r in s.runs})
        if s.steps < preset_steps:
            notes.append(f"- {name}: the preset's full budget is {preset_steps:,}. {trend_note(s)}")
        if len(seeds) < TARGET_SEEDS:
            spread = "not measured" if len(seeds) == 1 else f"measured on {len(seeds)} seeds only"
            notes.append(f"- {name}: {len(seeds)} of {TARGET_SEEDS} seeds; the spread over seeds is "
                         f"{spread} and a verdict is provisional.")
        ev = load_preset(s.task, s.overrides).eval
        how = "deterministic" if ev.deterministic else "sampled-action"
        notes.append(f"- {name}: each final return is one evaluation of {ev.episodes} {how} "
                     "episodes; a seed's final number can differ from its curve's trend.")
    notes.append("- Synthetic labels from a perfectly rational teacher (an upper bound on label quality); "
                 "a person or a B-Pref irrational teacher gives noisier labels.")
    return notes


def evaluation_modes(settings: Sequence[Setting]) -> str:
    """How each domain's presets act in evaluation (``eval.deterministic``), e.g.
    "MuJoCo: the policy's most likely action; Atari: actions sampled from the policy"
    (the presets' comments say why)."""
    modes: dict[str, set[bool]] = defaultdict(set)
    for s in settings:
        if s.runs:
            modes[s.domain].add(load_preset(s.task, s.overrides).eval.deterministic)
    words = {True: "the policy's most likely action", False: "actions sampled from the policy"}
    names = {"atari": "Atari", "mujoco": "MuJoCo"}
    parts = [f"{names.get(domain, domain)}: " + " or ".join(words[m] for m in sorted(found, reverse=True))
             for domain, found in sorted(modes.items())]
    return "; ".join(parts) or "no runs"
