"""``prefrl`` subcommands for sweeps and results: ``suite``, ``video`` and ``report``.

The lead's CLI wires them in with::

    from prefrl.cli.suite import add_suite_commands
    add_suite_commands(sub)                # sub = parser.add_subparsers(...)
    ...
    handler = getattr(args, "label_handler", None) or getattr(args, "suite_handler", None)

- ``prefrl suite SUITE.toml [--address ADDR] [--max-parallel N] [--out DIR]``: run every
  (task, arm, seed, label budget) of a sweep file through Ray (see :mod:`prefrl.experiments.suite`);
- ``prefrl video RUN_DIR [--episodes N] [--out file.mp4]``: evaluation episodes of a
  trained agent with its learned and true reward plotted under the frames;
- ``prefrl report RUN_DIR... [--out report.html]``: one self-contained HTML page.

Heavy imports (Ray, torch, gymnasium, matplotlib) happen inside the handlers.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefrl.cli.args import non_negative_int, positive_int

#: Top-level commands added by :func:`add_suite_commands`.
SUITE_COMMANDS = ("suite", "video", "report")

Handler = Callable[[argparse.Namespace], int]


def add_suite_commands(subparsers: Any) -> None:
    """Add ``suite``, ``video`` and ``report`` to the ``prefrl`` parser.

    Each sets ``suite_handler`` (a function of the parsed arguments returning the exit
    status) in the namespace.

    :param subparsers: the object returned by ``parser.add_subparsers``
    """
    suite = subparsers.add_parser("suite", help="run a sweep file (tasks x arms x seeds x label budgets) with Ray")
    suite.add_argument("sweep", type=Path, metavar="SUITE.toml", help="a sweep file, e.g. suites/small.toml")
    suite.add_argument("--address", help="join this Ray cluster (e.g. HEAD:6379 or auto); default: Ray on this machine")
    suite.add_argument("--max-parallel", type=positive_int, metavar="N",
                       help="runs at once (default: one per core; each run gets cores / N threads)")
    suite.add_argument("--out", type=Path, help="output folder (default: the sweep's 'out', else runs/suites/<name>)")
    suite.add_argument("--retries", type=non_negative_int, default=0,
                       help="rerun a run whose worker died this many times (default 0)")
    suite.add_argument("--dry-run", action="store_true", help="list the runs and what is done, run nothing")
    suite.set_defaults(suite_handler=cmd_suite)

    video = subparsers.add_parser("video", help="record evaluation episodes of a trained agent (mp4, rewards plotted)")
    video.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run (policy.zip, config.json)")
    video.add_argument("--episodes", type=positive_int, default=1, help="evaluation episodes (default 1)")
    video.add_argument("--out", type=Path, help="the .mp4 to write (default RUN_DIR/video.mp4)")
    video.add_argument("--max-steps", type=positive_int, help="cap each episode at this many agent steps")
    video.add_argument("--seed", type=non_negative_int, default=0, help="seed of the first episode (default 0)")
    video.add_argument("--stochastic", action="store_true", help="sample actions instead of the most likely one")
    video.set_defaults(suite_handler=cmd_video)

    report = subparsers.add_parser("report", help="write one self-contained HTML page about runs")
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories or folders holding them")
    report.add_argument("--out", type=Path, help="the .html file (default: report.html in the first RUN_DIR)")
    report.set_defaults(suite_handler=cmd_report)


def cmd_suite(args: argparse.Namespace) -> int:
    """Run (or list) a sweep; exit 1 when a run failed, 0 otherwise."""
    from rich.console import Console

    from prefrl.experiments.plan import run_state
    from prefrl.experiments.suite import run_suite
    from prefrl.experiments.sweep import load_sweep

    sweep = load_sweep(args.sweep, args.out)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # logs and pipes: don't squeeze the table to 80 columns
    if args.dry_run:
        for spec in sweep.runs:
            state, changes = run_state(spec)
            why = f": made with other settings ({'; '.join(changes)}); a run reruns it" if changes else ""
            console.print(f"{spec.name:<48} {state}{why}", highlight=False)
        console.print(f"{len(sweep.runs)} runs in {sweep.out}")
        return 0
    result = run_suite(sweep, address=args.address, max_parallel=args.max_parallel, retries=args.retries,
                       console=console)
    if result.rows:
        from prefrl.analysis.html_report import write_report
        from prefrl.cli.args import print_table

        print_table(result.rows)
        page = write_report(result.run_dirs, sweep.out / "report.html")
        console.print(f"wrote {sweep.out / 'comparison.md'}, {sweep.out / 'comparison.png'} and {page}")
    failed = result.failed
    if failed:
        console.print(f"[bold red]{len(failed)} of {len(result.runs)} runs did not finish[/]; logs in "
                      f"{sweep.out / '.suite'}; start the sweep again to rerun them")
        return 1
    return 0


def cmd_video(args: argparse.Namespace) -> int:
    """Record a run's agent to an mp4."""
    from prefrl.analysis.video import record_video  # sets MUJOCO_GL=egl before MuJoCo loads

    result = record_video(args.run_dir, args.out, episodes=args.episodes, max_steps=args.max_steps,
                          seed=args.seed, deterministic=False if args.stochastic else None)
    returns = ", ".join(f"{r:.1f}" for r in result.true_returns)
    learned = ""
    if result.learned_returns:
        learned = "; learned returns " + ", ".join(f"{r:.1f}" for r in result.learned_returns)
    print(f"wrote {result.path}: {result.frames} frames {result.width}x{result.height} at {result.fps:g} fps; "
          f"true returns {returns}{learned}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the HTML report of runs."""
    from prefrl.analysis.html_report import write_report

    out = args.out or args.run_dirs[0] / "report.html"
    page = write_report(args.run_dirs, out)
    print(f"wrote {page}")
    return 0
