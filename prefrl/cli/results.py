"""``prefrl`` commands that read finished runs: ``compare``, ``video`` and ``report``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefrl.cli.args import non_negative_int, positive_int, print_table


def add_commands(subparsers: Any) -> None:
    """Add ``compare``, ``video`` and ``report``; each sets ``handler``.

    :param subparsers: the object returned by ``parser.add_subparsers``
    """
    compare = subparsers.add_parser("compare", help="compare runs: comparison.png, comparison.md and a table")
    compare.add_argument("run_dirs", nargs="+", type=Path, help="run directories or folders holding them")
    compare.add_argument("--out", type=Path, help="output folder (default: the first argument)")
    compare.set_defaults(handler=cmd_compare)

    video = subparsers.add_parser("video", help="record evaluation episodes of a trained agent (mp4, rewards plotted)")
    video.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run (policy.zip, config.json)")
    video.add_argument("--episodes", type=positive_int, default=1, help="evaluation episodes (default 1)")
    video.add_argument("--out", type=Path, help="the .mp4 to write (default RUN_DIR/video.mp4)")
    video.add_argument("--max-steps", type=positive_int, help="cap each episode at this many agent steps")
    video.add_argument("--seed", type=non_negative_int, default=0, help="seed of the first episode (default 0)")
    video.add_argument("--stochastic", action="store_true", help="sample actions instead of the most likely one")
    video.set_defaults(handler=cmd_video)

    report = subparsers.add_parser("report", help="write one self-contained HTML page about runs")
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories or folders holding them")
    report.add_argument("--out", type=Path, help="the .html file (default: report.html in the first RUN_DIR)")
    report.set_defaults(handler=cmd_report)


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare runs: a table here, comparison.md and comparison.png in the output folder."""
    from prefrl.analysis.report import compare

    out = args.out or args.run_dirs[0]
    rows, _ = compare(args.run_dirs, out)
    print_table(rows)
    print(f"wrote {out / 'comparison.md'} and {out / 'comparison.png'}")
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
