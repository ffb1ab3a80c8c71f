"""The one error type a user sees as a one-line message (exit status 2 from the CLI)."""


class PrefrlError(ValueError):
    """Bad input or state: the message names the bad value and the fix."""
