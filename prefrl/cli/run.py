"""``prefrl`` commands that run training: ``tasks``, ``train`` and ``demo``."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from prefrl.cli.args import non_negative_int, positive_int, print_table
from prefrl.feedback.schema import STORE_FILE
from prefrl.util.errors import PrefrlError

#: The demo: a short run of both arms on a task PPO solves in minutes on a laptop CPU.
DEMO_TASK = "invertedpendulum"
# 800 labels: with 400 the learned arm failed on 3 seeds of 3 (2026-12-01, ~90 steps
# balanced: a young reward model charges large actions, which fell sooner in the random
# policy's clips); with 800 it reached 1000 on 4 of 5 (60k steps: 3 of 5, no better).
# Findings on the results page; scripts/reward_sensitivity.py shows such rewards.
DEMO_OVERRIDES = (
    "ppo.total_steps=40000",
    "labels.budget=800",
    "labels.initial_labels=100",
    "labels.rate_constant=20000",  # most labels early, as the paper's 1/T schedule does
    "eval.every_steps=5000",
    "eval.episodes=5",
)

#: Seconds between checkpoints of a run unless --checkpoint-every says otherwise.
DEFAULT_CHECKPOINT_SECONDS = 600.0
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def checkpoint_interval(text: str) -> tuple[int, float]:
    """``--checkpoint-every``: ``"50000"`` -> ``(50000, 0.0)`` (steps), ``"10m"`` ->
    ``(0, 600.0)`` (seconds; units s, m, h); ``"0"`` only at the start and on signals."""
    value = text.strip().lower()
    unit = _DURATION_UNITS.get(value[-1:]) if value else None
    number = value[:-1] if unit else value
    try:
        amount = float(number) if unit else int(number)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a number of steps nor a duration; give e.g. 50000, 90s, 10m or 1h") from None
    if not amount >= 0 or amount == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite interval >= 0; give e.g. 50000, 90s, 10m or 1h")
    return (0, amount * unit) if unit else (int(amount), 0.0)



def add_commands(subparsers: Any) -> None:
    """Add ``tasks``, ``train`` and ``demo``; each sets ``handler``.

    :param subparsers: the object returned by ``parser.add_subparsers``
    """
    tasks = subparsers.add_parser("tasks", help="list the suite presets in envs/")
    tasks.set_defaults(handler=cmd_tasks)

    train = subparsers.add_parser("train", help="train one run (learned or true reward)")
    train.add_argument("task", help="preset name (e.g. hopper, pong) or path to a preset .toml")
    train.add_argument("--reward", choices=("learned", "true"), default="learned",
                       help="learned: PPO on the reward model; true: PPO on the true reward")
    train.add_argument("--teacher", choices=("synthetic", "human"), default="synthetic",
                       help="who answers the queries: the synthetic oracle or a person in `prefrl label`")
    train.add_argument("--labels-from", type=Path, metavar="CLIPS_DIR",
                       help="train the reward model on the labelled pairs of this clips folder only")
    train.add_argument("--labels", type=positive_int, help="label budget (overrides labels.budget)")
    train.add_argument("--steps", type=positive_int, help="env steps (overrides ppo.total_steps)")
    train.add_argument("--seed", type=non_negative_int, default=0)
    train.add_argument("--run-dir", type=Path, help="default runs/<task>__<arm>__<seed>__<time>")
    train.add_argument("--clips-dir", type=Path,
                       help="clip pairs and label database (default clips/<run name>; with --run-dir, "
                            "that folder's path below runs/ joined by __)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a preset setting, e.g. --set ppo.n_envs=4 (repeatable)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--checkpoint-every", type=checkpoint_interval, default=(0, DEFAULT_CHECKPOINT_SECONDS),
                       metavar="STEPS|DURATION",
                       help="write the run's checkpoint every STEPS env steps (e.g. 50000) or every DURATION "
                            "(e.g. 90s, 10m, 1h; default 10m); also at the start of learning and on Ctrl-C/SIGTERM. "
                            "Rerunning the same command with the same --run-dir resumes an interrupted run")
    train.add_argument("--force", action="store_true",
                       help="resume a run even though it was started with other settings (they are listed otherwise)")
    train.add_argument("--trust-old-checkpoint", action="store_true",
                       help="resume from a checkpoint of an earlier prefrl (checkpoint/state.pt, a pickle: only "
                            "for run directories of your own)")
    train.set_defaults(handler=cmd_train)

    demo = subparsers.add_parser("demo", help="short learned-vs-true run on the default task (what `make demo` runs)")
    demo.add_argument("--seed", type=non_negative_int, default=0)
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder of the demo's runs")
    demo.set_defaults(handler=cmd_demo)


def _label_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.labels is not None:
        overrides.append(f"labels.budget={args.labels}")
    if args.steps is not None:
        overrides.append(f"ppo.total_steps={args.steps}")
    return overrides


def cmd_tasks(args: argparse.Namespace) -> int:
    """List the suite's tasks: name, env id, description."""
    from prefrl.config.loading import available_tasks, load_preset

    for name in available_tasks():
        preset = load_preset(name)
        marker = " [test preset]" if preset.task.for_tests else ""
        print(f"{name:<24} {preset.task.env_id:<28} {preset.task.description}{marker}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from prefrl.config.loading import load_preset
    from prefrl.rundir import RunPaths
    from prefrl.rundir.paths import default_paths
    from prefrl.training.checkpointing import RunInterrupted
    from prefrl.training.run import train

    preset = load_preset(args.task, _label_overrides(args))
    arm = args.reward
    paths = default_paths(preset.task.name, arm, args.seed)
    if args.run_dir is not None:
        paths = RunPaths(run_dir=args.run_dir, clips_dir=_stored_clips_dir(args.run_dir)
                         or default_clips_dir(args.run_dir))
    if args.clips_dir is not None:
        paths = RunPaths(run_dir=paths.run_dir, clips_dir=args.clips_dir)
    if args.labels_from is not None and not (args.labels_from / STORE_FILE).is_file():
        raise PrefrlError(f"--labels-from {args.labels_from}: no labels.sqlite there; give a folder made by `prefrl clips`")
    steps, seconds = args.checkpoint_every
    try:
        summary = train(preset, arm=arm, seed=args.seed, paths=paths, teacher_kind=args.teacher,
                        labels_from=args.labels_from, progress=not args.no_progress,
                        checkpoint_steps=steps, checkpoint_seconds=seconds, force=args.force,
                        trust_old_checkpoint=args.trust_old_checkpoint)
    except RunInterrupted as exc:
        print(f"prefrl: {exc}; resume with: {_resume_command(args, paths)}", file=sys.stderr, flush=True)
        return exc.exit_status
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once
        print(f"prefrl: interrupted; the last checkpoint (if one was written) is kept; resume with: "
              f"{_resume_command(args, paths)}", file=sys.stderr, flush=True)
        return 130
    print(f"run finished: {paths.run_dir}  final true return {summary['final_true_return']:.1f}  "
          f"labels {summary['labels_used']}  {summary['wall_seconds']:.0f} s")
    return 0


def _resume_command(args: argparse.Namespace, paths) -> str:
    """The command line that continues this run: the same one (naming the run folder
    when it was left to the default, whose name has a time stamp)."""
    command = shlex.join(["prefrl", *args.argv])
    if args.run_dir is None:
        command += f" --run-dir {shlex.quote(str(paths.run_dir))}"
    return command


def default_clips_dir(run_dir: Path) -> Path:
    """``clips/<run name>`` for a run folder given with ``--run-dir``, the name unique per
    folder: ``runs/sweep/a/seed0`` -> ``clips/sweep__a__seed0`` (its path below ``runs/``,
    or else below the working directory); a folder elsewhere gets its own name and a short
    hash of its full path. Two runs must never share a label database, and folders named
    alike (``.../a/seed0``, ``.../b/seed0``) are common."""
    import hashlib

    resolved, here = run_dir.resolve(), Path.cwd().resolve()
    for base in (here / "runs", here):
        if resolved.is_relative_to(base) and resolved != base:
            return Path("clips") / "__".join(resolved.relative_to(base).parts)
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
    return Path("clips") / f"{resolved.name or 'run'}-{digest}"


def _stored_clips_dir(run_dir: Path) -> Path | None:
    """The clips folder an unfinished run in ``run_dir`` was started with (so that
    rerunning the same command resumes it with its labels), else None."""
    from prefrl.rundir import RunDir

    try:
        clips = RunDir(run_dir).read_config().get("clips_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(clips) if isinstance(clips, str) and clips else None


def cmd_demo(args: argparse.Namespace) -> int:
    from prefrl.analysis.report import compare
    from prefrl.config.loading import load_preset
    from prefrl.rundir import RunPaths
    from prefrl.rundir.paths import run_name
    from prefrl.training.run import train

    preset = load_preset(DEMO_TASK, list(DEMO_OVERRIDES))
    out: Path = args.out / time.strftime("%Y%m%d-%H%M%S")
    print(f"prefrl demo: {DEMO_TASK}, {preset.ppo.total_steps:,} PPO steps per arm, "
          f"{preset.labels.budget} synthetic labels; runs in {out}")
    for arm in ("true", "learned"):
        name = run_name(DEMO_TASK, arm, args.seed)
        print(f"\n== {arm} reward arm ==")
        train(preset, arm=arm, seed=args.seed, paths=RunPaths(out / name, out / name / "clips"))
    rows, _ = compare([out], out)
    print()
    print_table(rows)
    print(f"wrote {out / 'comparison.md'} and {out / 'comparison.png'}")
    return 0
