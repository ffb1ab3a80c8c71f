"""Learning quality: PPO on a reward learned from synthetic preferences vs the same PPO
on the true reward, over tasks x seeds x label budgets; writes ``docs/results.md``.

A thin command line over the library: the protocol (default tasks, steps, label budgets,
targets) is :mod:`prefrl.analysis.quality_protocol`, the plan and its random-policy
baseline :mod:`prefrl.experiments.quality_plan`, what is finished, stale or resumable
:mod:`prefrl.experiments.plan`, the runs (one subprocess each, a pid-file lock on the
output folder) :mod:`prefrl.experiments.quality_run` and
:mod:`prefrl.experiments.local_runner`, and the results page (``docs/results.md``, plots
in ``docs/results/``, records of every finished run in ``docs/results/runs``)
:mod:`prefrl.analysis.results_page`.

Runs go to ``<out>/<task>/<setting>/<arm>/seed<k>/`` (arm = ``true`` | ``learned-<budget>``;
``<setting>`` is ``<steps>steps`` plus a short hash of any ``--set`` overrides). The plan
is resumable: a finished run is reused, an interrupted run continues from its last
checkpoint, a run finished with other settings is run again.

Usage::

    python scripts/benchmark_quality.py                                   # the full default plan
    python scripts/benchmark_quality.py invertedpendulum --seeds 0 1 2 --labels 700 350 --steps 50000
    python scripts/benchmark_quality.py pendulum --seeds 0 --labels 40 --set ppo.total_steps=2048 \\
        --out /tmp/bq --results /tmp/bq/results.md                        # a tiny smoke test
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from prefrl.analysis.quality_protocol import (  # noqa: E402
    ARMS,
    ATARI_DEFAULT_STEPS,
    DEFAULT_LABELS,
    DEFAULT_RANDOM_EPISODES,
    DEFAULT_SEEDS,
    DEFAULT_STEPS,
    DEFAULT_TASKS,
)
from prefrl.experiments.local_runner import run_one  # noqa: E402
from prefrl.experiments.quality_plan import lift_overrides  # noqa: E402
from prefrl.experiments.quality_run import BenchmarkOptions, publish, run_benchmark  # noqa: E402
from prefrl.util.errors import PrefrlError  # noqa: E402


def _display_command(argv: Sequence[str]) -> str:
    script = os.path.relpath(Path(__file__).resolve(), Path.cwd())
    return "python " + shlex.join([script, *argv])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tasks", nargs="*", default=list(DEFAULT_TASKS),
                   help=f"preset names (default: {' '.join(DEFAULT_TASKS)})")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    p.add_argument("--labels", type=int, nargs="+", default=list(DEFAULT_LABELS),
                   help="label budgets of the learned arm, MuJoCo/classic tasks (default 700 350)")
    p.add_argument("--atari-labels", type=int, nargs="+",
                   help="label budgets of Atari tasks (default: the paper's 3,300 scaled to the frames, floor 500)")
    p.add_argument("--steps", type=int,
                   help="env steps of every run (default per task: " + ", ".join(
                       f"{k} {v:,}" for k, v in DEFAULT_STEPS.items()) + f", Atari {ATARI_DEFAULT_STEPS:,})")
    p.add_argument("--out", type=Path, default=Path("runs/benchmark_quality"), help="folder of the runs")
    p.add_argument("--results", type=Path, default=Path("docs/results.md"), help="results page to write")
    p.add_argument("--records", type=Path, default=Path("docs/results/runs"),
                   help="small files of every finished run (summary, eval curve, config), kept in the repo; "
                        "the page is built from them and finished runs found there are not run again")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                   help="arms to run (default both); e.g. --arms true first shows on which Atari games the "
                        "true arm clearly beats random before the learned arms are paid for")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="preset override passed to every run (repeatable)")
    p.add_argument("--random-episodes", type=int, default=DEFAULT_RANDOM_EPISODES,
                   help="episodes of the uniform-random policy per task")
    p.add_argument("--report-only", action="store_true", help="only rebuild the results page")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--run-one", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.run_one is not None:  # one run's subprocess, as started by earlier versions
        return run_one(args.run_one)
    try:
        if args.report_only:
            print(f"wrote {publish(args.out, args.records, args.results)}")
            return 0
        if args.jobs < 1 or args.random_episodes < 1 or any(b < 1 for b in args.labels):
            raise PrefrlError("--jobs, --random-episodes and --labels must be positive")
        overrides, steps, labels = lift_overrides(args.overrides, args.steps, args.labels)
        options = BenchmarkOptions(
            tasks=tuple(args.tasks), seeds=tuple(args.seeds), labels=tuple(labels),
            atari_labels=tuple(args.atari_labels) if args.atari_labels else None, steps=steps, out=args.out,
            results=args.results, records=args.records, arms=tuple(args.arms), jobs=args.jobs,
            overrides=tuple(overrides), random_episodes=args.random_episodes,
        )
        return run_benchmark(options, _display_command(argv), dry_run=args.dry_run)
    except PrefrlError as exc:
        print(f"benchmark_quality: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("benchmark_quality: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
