"""Argument types and the parser class shared by every ``prefrl`` subcommand module:
one-line errors that name the bad value, exit status 2."""

from __future__ import annotations

import argparse


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), exit status 2.

    Every refusal starts with ``prefrl: error:``, whichever subcommand's parser found it
    (scripts and people look for that one prefix); the subcommand is named after it, e.g.
    ``prefrl: error: train: argument --steps: -5 is not positive; give a positive whole
    number``.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print ``message`` as one line and exit with status 2.

        :param message: argparse's description of the problem
        """
        program, _, command = self.prog.partition(" ")
        where = f"{command}: " if command else ""
        self.exit(2, f"{program}: error: {where}{' '.join(message.split())}\n")


def _number(text: str, kind: type, want: str) -> float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {want}") from None


def positive_int(text: str) -> int:
    value = int(_number(text, int, "an integer; give a positive whole number"))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive; give a positive whole number")
    return value


def non_negative_int(text: str) -> int:
    value = int(_number(text, int, "an integer; give a whole number >= 0"))
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give a whole number >= 0")
    return value


def positive_float(text: str) -> float:
    value = float(_number(text, float, "a number; give a positive number"))
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{value} is not positive; give a positive number")
    return value


def print_table(rows) -> None:
    """Print the comparison rows (:class:`prefrl.analysis.report.GroupRow`) as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Learned reward vs true reward (final true evaluation return)")
    for col in ("task", "arm", "seeds", "env steps", "true return", "learned/true", "labels", "wall s"):
        table.add_column(col, justify="left" if col in ("task", "arm") else "right", no_wrap=True)
    for r in rows:
        arm = "true reward" if r.arm == "true" else f"learned ({r.label_budget})"
        table.add_row(r.task, arm, str(r.seeds), f"{r.env_steps:,}", f"{r.mean_return:.1f} ± {r.std_return:.1f}",
                      "" if r.ratio is None else f"{r.ratio:.2f}", f"{r.labels_used:.0f}", f"{r.wall_seconds:.0f}")
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # logs and pipes: don't squeeze the table to 80 columns
    console.print(table)
