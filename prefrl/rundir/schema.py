"""The run directory's layout version: which layouts this prefrl reads, and how an older
one is brought up to date before a run in it resumes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefrl.util.errors import PrefrlError

#: Layout version of a run directory, in its ``config.json`` (``run_dir_schema``) and in
#: its checkpoint. Directories without it were written before checkpoints existed.
#: 1: ``checkpoint/state.pt``, one pickle, holds everything a run needs to continue.
#: 2: the checkpoint is data files: ``checkpoint/state.json`` (the nested state as tagged
#: JSON, see :mod:`prefrl.rundir.state_format`) naming a tensors file
#: (``torch.load(weights_only=True)``) and an arrays file (``np.load(allow_pickle=False)``).
#: A prefrl that reads only 1 refuses such a directory because of its ``config.json``.
RUN_DIR_SCHEMA = 2


def check_run_dir_schema(schema: Any, where: str) -> None:
    """Refuse a run directory (or checkpoint) of a newer layout than this prefrl reads.

    :raises PrefrlError: newer or malformed version
    """
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise PrefrlError(f"{where} has an invalid run_dir_schema {schema!r}; it was not written by prefrl")
    if schema > RUN_DIR_SCHEMA:
        raise PrefrlError(
            f"{where} was written by a newer prefrl (run-dir schema {schema}, this prefrl reads up to "
            f"{RUN_DIR_SCHEMA}); resume it with that prefrl version"
        )


def upgrade_run_dir_1_to_2(run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Run-dir layout 1 to 2: only the checkpoint's format changed, which
    :func:`~prefrl.rundir.checkpoint_files.read_checkpoint` reads (with the user's consent)
    and :func:`~prefrl.rundir.checkpoint_files.write_checkpoint` replaces, marking
    ``config.json`` then; the settings stay as they are."""
    return {**config, "run_dir_schema": 2}


#: ``version -> function(run_dir, config) -> config`` upgrading a run directory of that
#: layout version to the next (version 1 is the first with checkpoints).
RUN_DIR_MIGRATIONS: dict[int, Callable[[Path, dict[str, Any]], dict[str, Any]]] = {1: upgrade_run_dir_1_to_2}
