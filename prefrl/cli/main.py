"""The ``prefrl`` command line. One module per command group, each adding its commands
with a ``handler`` (a function of the parsed arguments returning the exit status):

- :mod:`prefrl.cli.run`: ``tasks``, ``train``, ``demo``;
- :mod:`prefrl.cli.labels`: ``label``, ``clips``, ``labels export|import``;
- :mod:`prefrl.cli.results`: ``compare``, ``video``, ``report``;
- :mod:`prefrl.cli.suite`: ``suite``.

Every bad input ends with a one-line ``prefrl: error: ...`` naming the bad value and the
fix, and exit status 2. Heavy imports happen inside the handlers, so ``prefrl --help`` is quick.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prefrl.cli import labels, results, run, suite
from prefrl.cli.args import OneLineErrorParser
from prefrl.util.errors import PrefrlError
from prefrl.util.gl import use_headless_gl


def build_parser() -> argparse.ArgumentParser:
    """The ``prefrl`` parser with every command group's commands."""
    parser = OneLineErrorParser(prog="prefrl", description="Deep RL from preferences: learned reward vs true reward.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    for group in (run, labels, results, suite):
        group.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``prefrl`` command; the process's exit status.

    :param argv: the arguments (default ``sys.argv[1:]``)
    """
    use_headless_gl()  # before anything imports MuJoCo
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # for "resume with: ..." hints
    try:
        return args.handler(args)
    except PrefrlError as exc:
        print(f"prefrl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prefrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
