"""Headless OpenGL for MuJoCo, chosen once by whoever starts rendering.

MuJoCo picks its GL backend when it is first imported: off-screen EGL works without a
display (and under Xvfb). Entry points (the CLI, the viewer) call :func:`use_headless_gl`
before anything imports MuJoCo; the renderers call it again before they make a render env,
which helps a library user who renders first. The user's own ``MUJOCO_GL`` always wins.
"""

from __future__ import annotations

import os


def use_headless_gl() -> None:
    """Default ``MUJOCO_GL`` to ``egl`` (and PyOpenGL's platform with it); idempotent."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] == "egl":
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
