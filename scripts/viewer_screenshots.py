"""Real X11 screenshots of ``prefrl label`` under Xvfb: an Atari (Pong) and a MuJoCo
(Hopper) pair, as a person sees them.

    .venv/bin/python scripts/viewer_screenshots.py [--out DIR] [--tasks pong hopper]

Needs the Debian packages ``xvfb`` and ``xdotool`` (``apt-get install -y xvfb
xdotool``). For each task it samples two clip pairs from a random policy (``prefrl
clips``), starts the viewer in a real X window on a private Xvfb display, lets the clips
play, grabs the window with ``xwd`` (read here, no ImageMagick needed), presses Left and
grabs the window again (the next pair, with the answer's flash), then quits with ``q``.

The helpers (:func:`xvfb`, :func:`read_xwd`, :func:`grab`, :class:`LineReader`) are also
used by ``tests/test_xvfb_viewer.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def missing_tools() -> list[str]:
    """Names of the X tools this needs that are not installed."""
    return [tool for tool in ("Xvfb", "xdotool", "xwd") if shutil.which(tool) is None]


@contextlib.contextmanager
def xvfb(size: tuple[int, int] = (1280, 1024)) -> Iterator[str]:
    """A private Xvfb server; yields its ``DISPLAY`` (Xvfb picks a free number itself)."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{size[0]}x{size[1]}x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as pipe:
            number = pipe.readline().strip()  # written once the server accepts clients
        if not number:
            raise RuntimeError("Xvfb did not start")
        yield f":{number}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_xwd(data: bytes) -> np.ndarray:
    """An ``xwd`` dump (ZPixmap, 24/32 bits a pixel) as an ``(H, W, 3)`` uint8 RGB array."""
    header = struct.unpack(">25I", data[:100])
    header_size, _, pixmap_format, depth, width, height = header[:6]
    byte_order, bits_per_pixel, bytes_per_line = header[7], header[11], header[12]
    red_mask, green_mask, blue_mask = header[14:17]
    ncolors = header[19]
    if pixmap_format != 2 or bits_per_pixel != 32 or depth < 24:
        raise ValueError(f"unsupported xwd image: format {pixmap_format}, depth {depth}, {bits_per_pixel} bpp")
    start = header_size + 12 * ncolors
    rows = np.frombuffer(data, dtype="<u4" if byte_order == 0 else ">u4", count=height * bytes_per_line // 4,
                         offset=start).reshape(height, bytes_per_line // 4)[:, :width]

    def channel(mask: int) -> np.ndarray:
        shift = (mask & -mask).bit_length() - 1
        return ((rows & mask) >> shift).astype(np.uint8)

    return np.stack([channel(red_mask), channel(green_mask), channel(blue_mask)], axis=-1)


def grab(display: str, window: str | None = None) -> np.ndarray:
    """Screenshot of a window (or the whole screen) of an X display."""
    target = ["-id", window] if window else ["-root"]
    data = subprocess.run(["xwd", "-silent", *target, "-display", display], check=True,
                          capture_output=True, timeout=30).stdout
    return read_xwd(data)


def find_window(display: str, timeout: float = 30.0) -> str:
    """Id of the viewer's window (X class ``prefrl``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = subprocess.run(["xdotool", "search", "--classname", "prefrl"], capture_output=True, text=True,
                               env={**os.environ, "DISPLAY": display}).stdout.split()
        if found:
            return found[-1]
        time.sleep(0.1)
    raise TimeoutError("the viewer window did not appear")


def xdotool(display: str, *args: str) -> None:
    subprocess.run(["xdotool", *args], check=True, env={**os.environ, "DISPLAY": display}, timeout=30)


class LineReader:
    """Reads a process's output lines in a thread, so tests can wait with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, prefix: str, timeout: float = 30.0) -> str:
        """The next line starting with ``prefix`` (earlier lines are kept in ``lines``)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line starting with {prefix!r}; got {self.lines[-5:]}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise EOFError(f"the process ended before {prefix!r}; got {self.lines[-5:]}")
            self.lines.append(line)
            if line.startswith(prefix):
                return line


def start_viewer(display: str, clips_dir: Path, name: str = "screenshot") -> subprocess.Popen[str]:
    """``prefrl label CLIPS_DIR --events`` in a real X window on ``display``."""
    env = {k: v for k, v in os.environ.items() if k != "SDL_VIDEODRIVER"}
    env.update(DISPLAY=display, SDL_AUDIODRIVER="dummy", PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "prefrl.cli", "label", str(clips_dir), "--name", name, "--events"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )


def save_png(image: np.ndarray, path: Path) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image[..., ::-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/screenshots"))
    parser.add_argument("--tasks", nargs="+", default=["pong", "hopper"])
    args = parser.parse_args()
    if missing_tools():
        print(f"missing: {', '.join(missing_tools())}; apt-get install -y xvfb xdotool x11-apps", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    from prefrl.config.loading import load_preset
    from prefrl.training.sample_clips import collect_clip_pairs

    with tempfile.TemporaryDirectory() as tmp, xvfb() as display:
        for task in args.tasks:
            clips_dir = Path(tmp) / task
            collect_clip_pairs(load_preset(task), 2, clips_dir, seed=1, log=lambda line: None)
            viewer = start_viewer(display, clips_dir)
            assert viewer.stdout is not None
            reader = LineReader(viewer.stdout)
            try:
                reader.wait_for("event=shown", timeout=120)
                window = find_window(display)
                time.sleep(1.0)  # let the clips play a little
                save_png(grab(display, window), args.out / f"viewer_{task}.png")
                xdotool(display, "key", "Left")
                reader.wait_for("event=shown", timeout=120)
                # At once: still inside the answer's flash.
                save_png(grab(display, window), args.out / f"viewer_{task}_answered.png")
                xdotool(display, "key", "q")
                viewer.wait(timeout=30)
            finally:
                if viewer.poll() is None:
                    viewer.kill()
                    viewer.wait()
            print(f"{task}: {args.out / f'viewer_{task}.png'} and {args.out / f'viewer_{task}_answered.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
