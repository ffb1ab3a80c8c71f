"""A scripted labeller for tests: a real :class:`~prefrl.human.viewer.LabelViewer` in its own
process that answers every pair it is shown by posting key events.

Run as ``python tests/viewer_driver.py CLIPS_DIR TASK --name NAME [--delay S]``; prints
the viewer's event lines (``event=shown``, ``event=label ...``) and exits when no pair
is left for it (or after ``--max-seconds``). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

from prefrl.human.clips import RenderInfo  # noqa: E402
from prefrl.human.viewer import LabelViewer, import_pygame  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("clips_dir", type=Path)
    parser.add_argument("task")
    parser.add_argument("--name", default="driver")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds a pair stays on screen before the answer")
    parser.add_argument("--lease-seconds", type=float, default=60.0)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--idle-exit", type=float, default=1.0, help="quit after this long without a pair")
    args = parser.parse_args()
    pg = import_pygame()
    keys = [pg.K_LEFT, pg.K_RIGHT, pg.K_UP, pg.K_DOWN]
    viewer = LabelViewer(args.clips_dir, args.task, RenderInfo(task=args.task, domain="atari"), labeller=args.name,
                         lease_seconds=args.lease_seconds, poll_seconds=0.05, event_log=sys.stdout)
    started = time.monotonic()
    idle_since: float | None = None
    answered = 0
    with viewer:
        while viewer.step() and time.monotonic() - started < args.max_seconds:
            now = time.monotonic()
            if viewer.current is None:
                idle_since = idle_since or now
                if now - idle_since > args.idle_exit and viewer.prefetcher.idle:
                    break
                time.sleep(0.005)
                continue
            idle_since = None
            if now - viewer.shown_at >= args.delay:
                pg.event.post(pg.event.Event(pg.KEYDOWN, key=keys[answered % len(keys)]))
                answered += 1
            else:
                time.sleep(0.002)
    return 0


if __name__ == "__main__":
    sys.exit(main())
