"""Argument types and the parser class shared by every ``prefrl`` subcommand module:
one-line errors that name the bad value, exit status 2."""

from __future__ import annotations

import argparse


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


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
