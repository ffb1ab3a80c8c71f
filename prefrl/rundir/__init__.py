"""The run directory and everything stored in it: file names, readers, the lock, the
layout version, the resume rule and the checkpoint files.

``RunDir(path)`` is the entry point; :mod:`prefrl.rundir.files` spells each file name.
"""

from prefrl.rundir.paths import RunPaths
from prefrl.rundir.rundir import RunDir

__all__ = ["RunDir", "RunPaths"]
