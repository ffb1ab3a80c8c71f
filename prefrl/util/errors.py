"""The one error type a user sees as a one-line message (exit status 2 from the CLI)."""

from __future__ import annotations

from pathlib import Path


class PrefrlError(ValueError):
    """Bad input or state: the message names the bad value and the fix."""


def write_error(target: Path, exc: OSError, state: str) -> PrefrlError:
    """A one-line error for a failed write (disk full, permissions) that says what was kept.

    :param target: the file that could not be written
    :param exc: the error of the write
    :param state: what is as it was, e.g. ``"the file is as it was"``
    """
    reason = exc.strerror or str(exc)
    return PrefrlError(f"cannot write {target}: {reason}; {state}; free disk space or fix permissions and try again")
