"""``prefrl suite SUITE.toml [--address ADDR] [--max-parallel N] [--out DIR]``: run every
(task, arm, seed, label budget) of a sweep file (see :mod:`prefrl.experiments.suite`).

Heavy imports (Ray, torch, gymnasium, matplotlib) happen inside the handler.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefrl.cli.args import non_negative_int, positive_int


def add_commands(subparsers: Any) -> None:
    """Add ``suite``; it sets ``handler``.

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
    suite.set_defaults(handler=cmd_suite)


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
