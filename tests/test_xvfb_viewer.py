"""``prefrl label`` in a real X window (Xvfb): keys and a click sent with xdotool land in
the label store; a real screenshot shows the viewer drew its window.

Needs the Debian packages ``xvfb`` and ``xdotool`` (``make test`` installs them when it
runs as root); with ``x11-apps`` (``xwd``) it also checks a screenshot of the window. Set
``PREFRL_SCREENSHOT_DIR`` to keep that screenshot.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clip_fixtures import REPO, make_store

from prefrl.feedback.store import LabelStore
from prefrl.human.clips import RenderInfo
from prefrl.human.layout import Layout, Theme, clip_box

_spec = importlib.util.spec_from_file_location("viewer_screenshots", REPO / "scripts" / "viewer_screenshots.py")
assert _spec is not None and _spec.loader is not None
xtools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(xtools)

MISSING = [tool for tool in xtools.missing_tools() if tool != "xwd"]  # xwd only for the screenshot
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"{', '.join(MISSING)} not installed: apt-get install -y xvfb xdotool"
)
HAVE_XWD = "xwd" not in xtools.missing_tools()


@pytest.fixture(scope="module")
def display():  # type: ignore[no-untyped-def]
    with xtools.xvfb() as name:
        yield name


def test_keys_and_a_click_in_a_real_x_window_store_labels(display: str, tmp_path: Path) -> None:
    make_store(tmp_path, 6)  # Atari-like clips: the viewer finds the store's task and sniffs the domain
    viewer = xtools.start_viewer(display, tmp_path, name="xuser")
    assert viewer.stdout is not None
    reader = xtools.LineReader(viewer.stdout)
    try:
        reader.wait_for("event=shown pair=q000000", timeout=60)
        window = xtools.find_window(display)
        subprocess.run(["xdotool", "windowfocus", window], env={**os.environ, "DISPLAY": display}, timeout=30)

        layout = Layout.for_box(clip_box(RenderInfo(domain="atari")))
        if HAVE_XWD:  # (x11-apps) what a person sees: Atari 3x, dark header, game frames in the boxes
            shot = xtools.grab(display, window)
            assert shot.shape == (layout.height, layout.width, 3)
            assert tuple(shot[3, layout.width // 2]) == Theme().panel  # header
            x, y, w, h = layout.left_box
            assert len({tuple(p) for p in shot[y:y + h:7, x:x + w:7].reshape(-1, 3)}) > 20  # a clip, not blank
            if os.environ.get("PREFRL_SCREENSHOT_DIR"):
                xtools.save_png(shot, Path(os.environ["PREFRL_SCREENSHOT_DIR"]) / "xvfb_viewer.png")

        def key(name: str, expect: str) -> str:
            xtools.xdotool(display, "key", name)
            return reader.wait_for(expect, timeout=30)

        assert "choice=left" in key("Left", "event=label pair=q000000")
        assert "choice=right" in key("2", "event=label pair=q000001")
        key("BackSpace", "event=undo pair=q000001")
        assert "choice=tie" in key("equal", "event=label pair=q000001")
        assert "choice=cant_tell" in key("Down", "event=label pair=q000002")
        reader.wait_for("event=shown pair=q000003", timeout=30)
        rx, ry, rw, rh = layout.right_box
        xtools.xdotool(display, "mousemove", "--window", window, str(rx + rw // 2), str(ry + rh // 2), "click", "1")
        assert "choice=right" in reader.wait_for("event=label pair=q000003", timeout=30)
        assert "choice=cant_tell" in key("x", "event=label pair=q000004")
        key("u", "event=undo pair=q000004")
        assert "choice=tie" in key("Up", "event=label pair=q000004")
        key("q", "event=quit")
        assert viewer.wait(timeout=30) == 0
    finally:
        if viewer.poll() is None:
            viewer.kill()
            viewer.wait()
    with LabelStore(tmp_path, "testtask") as store:
        labels = {pair_id: (choice.value, who) for _, pair_id, choice, who, _ in store.labels_after(0)}
        assert store.counts() == {"pairs": 6, "pending": 1, "answered": 5, "leased": 0}
    assert labels == {
        "q000000": ("left", "xuser"), "q000001": ("tie", "xuser"), "q000002": ("cant_tell", "xuser"),
        "q000003": ("right", "xuser"), "q000004": ("tie", "xuser"),
    }


def test_viewer_without_a_display_fails_with_one_line(tmp_path: Path) -> None:
    make_store(tmp_path, 1)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "SDL_VIDEODRIVER", "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-m", "prefrl.cli", "label", str(tmp_path)], capture_output=True, text=True,
                            env=env, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith("prefrl: error: cannot open a window") and result.stderr.count("\n") == 1
