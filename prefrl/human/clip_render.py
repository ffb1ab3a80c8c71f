"""What a person sees of a clip: display frames for segments, and pairs prepared ahead.

Core-safe (no pygame): the viewer imports this, the trainer may too. Three sources of
display frames, in order of preference:

- **recorded**: the RGB frames saved with the segment (Atari: ``info["frame"]``, score
  masked the way the agent sees it);
- **rendered**: MuJoCo physics states (``qpos ‖ qvel``) put back into a
  ``render_mode="rgb_array"`` env with ``set_state`` and rendered off-screen
  (``MUJOCO_GL=egl``), cached under ``<clips_dir>/render/`` so that a clip is rendered
  once per clips folder, however many viewers, undos and restarts see it;
- **plot**: a drawing of the observation values over time, for vector clips without
  either (classic control, or when MuJoCo cannot render here).

:class:`PairPrefetcher` is the background worker of a viewer: it leases the next
pairs, loads, renders and scales them ahead, so a keypress never waits for any of it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import tempfile
import threading
import time
import zipfile
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.data.segments import ClipPair, Segment
from prefrl.feedback.labels import LabelStore
from prefrl.util.errors import PrefrlError
from prefrl.util.gl import use_headless_gl

#: Name of the file ``prefrl clips`` writes into a clips folder to describe its task.
CLIPS_INFO_FILE = "clips.json"
#: Sub-folder of a clips folder holding rendered clips.
RENDER_DIR = "render"

ATARI_FRAME = (210, 160)  # height, width of a raw ALE frame


@dataclass(frozen=True)
class RenderInfo:
    """How to turn this task's clips into frames for people.

    :param task: preset name
    :param domain: ``atari``, ``mujoco``, ``classic`` or ``unknown``
    :param env_id: Gymnasium id used to render MuJoCo states (empty: cannot render)
    :param fps: playback speed of recorded frames (Atari: 60 / frame skip, real time)
    :param render_size: ``(width, height)`` of MuJoCo renders (shown 1.5x larger: 320
        costs ~30% more than 240 per frame in software and looks much sharper at 480)
    :param max_fps: MuJoCo clips faster than this are shown every k-th state, still in
        real time (Hopper's 125 steps/s would otherwise mean 125 renders a second)
    :param fast_render: switch off shadows and reflections (about 10x faster with
        software EGL; the motion a person judges is unchanged)
    """

    task: str = ""
    domain: str = "unknown"
    env_id: str = ""
    fps: float = 15.0
    render_size: tuple[int, int] = (320, 320)
    max_fps: float = 30.0
    fast_render: bool = True

    @classmethod
    def from_task_settings(cls, settings: Any, **overrides: Any) -> RenderInfo:
        """From a preset's ``task`` section (a dict as in ``config.json``, or the dataclass)."""
        get = settings.get if isinstance(settings, Mapping) else lambda key, default=None: getattr(settings, key, default)
        domain = str(get("domain", "unknown") or "unknown")
        fps = 60.0 / max(1, int(get("frame_skip", 4) or 4)) if domain == "atari" else 15.0
        values: dict[str, Any] = {
            "task": str(get("name", "") or ""), "domain": domain, "env_id": str(get("env_id", "") or ""), "fps": fps,
        }
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "domain": self.domain, "env_id": self.env_id, "fps": self.fps,
                "render_size": list(self.render_size), "max_fps": self.max_fps, "fast_render": self.fast_render}


@dataclass(frozen=True)
class ClipFrames:
    """Display frames of one clip.

    :param frames: ``(N, H, W, 3)`` uint8 RGB
    :param fps: playback speed (frames per second, real time where known)
    :param kind: ``recorded``, ``rendered`` or ``plot``
    :param note: why a fallback was used (shown to the person), else empty
    """

    frames: np.ndarray
    fps: float
    kind: str
    note: str = ""


# --------------------------------------------------------------------------- locating clips


@dataclass(frozen=True)
class ClipsLocation:
    """A clips folder with its store's task and how to render its clips.

    :param clips_dir: folder holding ``labels.sqlite``
    :param task: the store's task name
    :param info: rendering settings
    :param run_dir: the run directory when the user gave one
    """

    clips_dir: Path
    task: str
    info: RenderInfo
    run_dir: Path | None = None


def read_store_task(clips_dir: Path) -> str:
    """The task a label store belongs to, read without opening it as a :class:`LabelStore`.

    :raises PrefrlError: no store in the folder, or not a label store
    """
    db_path = Path(clips_dir) / "labels.sqlite"
    if not db_path.is_file():
        raise PrefrlError(f"no label store in {clips_dir} (labels.sqlite is missing); give a run directory or a clips folder")
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30.0)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'task'").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise PrefrlError(f"{db_path} is not a usable label store ({exc})") from None
    if row is None:
        raise PrefrlError(f"{db_path} has no task recorded; it is not a prefrl label store")
    return str(row[0])


def _resolve_clips_dir(run_dir: Path, configured: str) -> Path:
    configured_path = Path(configured)
    candidates = [configured_path] if configured_path.is_absolute() else [
        configured_path, run_dir / configured_path, run_dir.parent.parent / configured_path,
    ]
    for candidate in candidates:
        if (candidate / "labels.sqlite").is_file():
            return candidate
    raise PrefrlError(
        f"run {run_dir} keeps its labels in '{configured}', which holds no labels.sqlite yet; "
        "start the run first (or give the clips folder itself)"
    )


def _info_from_preset_name(task: str) -> RenderInfo | None:
    try:
        from prefrl.config.presets import load_preset

        return RenderInfo.from_task_settings(load_preset(task).task, task=task)
    except PrefrlError:
        return None


def _sniff_info(clips_dir: Path, task: str) -> RenderInfo:
    """Last resort: look at one stored clip (recorded frames look like Atari)."""
    try:
        conn = sqlite3.connect(f"file:{clips_dir / 'labels.sqlite'}?mode=ro", uri=True, timeout=30.0)
        try:
            row = conn.execute("SELECT path FROM clips ORDER BY created LIMIT 1").fetchone()
        finally:
            conn.close()
        if row is not None:
            with open(clips_dir / row[0], "rb") as handle, np.load(handle, allow_pickle=False) as data:
                if "frames" in data.files:
                    return RenderInfo(task=task, domain="atari" if data["frames"].shape[1:3] == ATARI_FRAME else "unknown")
    except (OSError, ValueError, KeyError, sqlite3.DatabaseError, zipfile.BadZipFile, zlib.error):
        pass
    return RenderInfo(task=task)


def find_clips(path: str | os.PathLike[str]) -> ClipsLocation:
    """Resolve what ``prefrl label PATH`` was given: a run directory or a clips folder.

    A run directory has a ``config.json`` whose ``clips_dir`` names its clips folder and
    whose ``preset`` says how to render; a clips folder has ``labels.sqlite`` and, when
    ``prefrl clips`` made it, a ``clips.json``; otherwise the store's task names a preset.

    :raises PrefrlError: neither, or a true-reward run (which has no labels)
    """
    given = Path(path)
    if not given.is_dir():
        raise PrefrlError(f"'{given}' is not a directory; give a run directory or a clips folder")
    config_path = given / "config.json"
    if config_path.is_file() and not (given / "labels.sqlite").is_file():
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as exc:
            raise PrefrlError(f"cannot read {config_path}: {exc}") from None
        configured = config.get("clips_dir")
        if not configured:
            raise PrefrlError(f"run {given} has no clips folder (a true-reward run asks no labels)")
        clips_dir = _resolve_clips_dir(given, str(configured))
        task = read_store_task(clips_dir)
        preset_task = (config.get("preset") or {}).get("task") or {}
        info = RenderInfo.from_task_settings(preset_task, task=task) if preset_task else (
            _info_from_preset_name(task) or _sniff_info(clips_dir, task)
        )
        return ClipsLocation(clips_dir=clips_dir, task=task, info=info, run_dir=given)
    task = read_store_task(given)
    info_path = given / CLIPS_INFO_FILE
    info: RenderInfo | None = None
    if info_path.is_file():
        try:
            data = json.loads(info_path.read_text())
            info = RenderInfo.from_task_settings(data.get("task_settings") or {}, task=task)
        except (OSError, ValueError, TypeError):
            info = None
    info = info or _info_from_preset_name(task) or _sniff_info(given, task)
    return ClipsLocation(clips_dir=given, task=task, info=info)


# --------------------------------------------------------------------------- frames


def _image_observation_frames(observations: np.ndarray) -> np.ndarray | None:
    """Grayscale image observations (e.g. ``(T, 4, 84, 84)``) as RGB: newest frame of the stack."""
    if observations.dtype != np.uint8 or observations.ndim != 4:
        return None
    shape = observations.shape[1:]
    if shape[0] <= 4 and shape[1] >= 16 and shape[2] >= 16:  # channels first
        gray = observations[:, -1]
    elif shape[2] <= 4 and shape[0] >= 16 and shape[1] >= 16:  # channels last
        gray = observations[..., -1]
    else:
        return None
    return np.repeat(gray[..., None], 3, axis=-1)


_PLOT_COLORS = np.array([
    (86, 156, 255), (255, 170, 60), (110, 210, 140), (240, 100, 120), (190, 140, 255),
    (90, 210, 220), (230, 210, 90), (255, 130, 200), (160, 160, 170), (140, 200, 90),
], dtype=np.uint8)


def plot_frames(segment: Segment, size: tuple[int, int] = (480, 480), scale: float | None = None) -> np.ndarray:
    """A line plot of the observation values over the clip, drawn up to each step.

    :param segment: a clip with vector observations (flattened if not 1-D)
    :param size: ``(width, height)`` of each frame
    :param scale: values are divided by this (give both clips of a pair the same);
        default: the largest absolute value of the clip
    :return: ``(T, height, width, 3)`` uint8
    """
    import cv2

    width, height = size
    obs = np.asarray(segment.observations, dtype=np.float64).reshape(len(segment), -1)[:, :16]
    steps, dims = obs.shape
    scale = float(scale if scale is not None else np.max(np.abs(obs)) if obs.size else 1.0) or 1.0
    left, right, top, bottom = 12, width - 12, 28, height - 12
    xs = left + (right - left) * np.arange(steps) / max(steps - 1, 1)
    ys = (top + bottom) / 2 - (bottom - top) / 2 * np.clip(obs / scale, -1, 1) * 0.92
    points = np.stack([np.broadcast_to(xs[:, None], ys.shape), ys], axis=-1).round().astype(np.int32)
    traces = [np.ascontiguousarray(points[:, d]) for d in range(dims)]  # cv2 wants contiguous (N, 2)

    base = np.full((height, width, 3), (24, 27, 34), dtype=np.uint8)
    for frac in (0.25, 0.5, 0.75):  # grid
        y = int(top + (bottom - top) * frac)
        cv2.line(base, (left, y), (right, y), (48, 52, 62) if frac != 0.5 else (70, 75, 88), 1)
    cv2.putText(base, f"observations ({dims} values, |x| <= {scale:.3g})", (left, 18),
                cv2.FONT_HERSHEY_SIMPLEX, 0.42, (150, 156, 170), 1, cv2.LINE_AA)
    frames = np.empty((steps, height, width, 3), dtype=np.uint8)
    for t in range(steps):
        frame = base.copy()
        for d in range(dims):
            color = tuple(int(c) for c in _PLOT_COLORS[d % len(_PLOT_COLORS)])
            if t > 0:
                cv2.polylines(frame, [traces[d][: t + 1]], False, color, 2, cv2.LINE_AA)
            cv2.circle(frame, tuple(int(v) for v in traces[d][t]), 3, color, -1, cv2.LINE_AA)
        x = int(xs[t])
        cv2.line(frame, (x, top), (x, bottom), (200, 200, 210), 1)
        frames[t] = frame
    return frames


class StateRenderer:
    """Renders MuJoCo physics states with an off-screen Gymnasium env.

    The env and its GL context belong to the thread that first renders: use one
    renderer per thread.

    :param env_id: a Gymnasium MuJoCo id, e.g. ``Hopper-v5``
    :param size: ``(width, height)`` in pixels
    :param fast: no shadows, no reflections (about 10x faster in software)
    """

    def __init__(self, env_id: str, size: tuple[int, int] = (320, 320), fast: bool = True) -> None:
        self.env_id = env_id
        self.size = size
        self.fast = fast
        self._env: Any = None

    def _make(self) -> Any:
        import gymnasium as gym

        use_headless_gl()
        env = gym.make(self.env_id, render_mode="rgb_array", width=self.size[0], height=self.size[1])
        env.reset(seed=0)
        model = env.unwrapped.model
        if self.fast:
            # Public model fields, so this survives Gymnasium's renderer internals changing.
            model.light_castshadow[:] = 0
            model.mat_reflectance[:] = 0
        return env

    @property
    def env(self) -> Any:
        if self._env is None:
            self._env = self._make()
        return self._env

    @property
    def state_size(self) -> int:
        model = self.env.unwrapped.model
        return int(model.nq + model.nv)

    @property
    def fps(self) -> float:
        """Simulated steps per second of the env (one render state per step)."""
        return 1.0 / float(self.env.unwrapped.dt)

    def render(self, states: np.ndarray) -> np.ndarray:
        """:param states: ``(N, nq + nv)`` ``qpos ‖ qvel``; returns ``(N, H, W, 3)`` uint8."""
        env = self.env.unwrapped
        nq = env.model.nq
        if states.ndim != 2 or states.shape[1] != self.state_size:
            raise PrefrlError(
                f"render states of shape {states.shape} do not fit {self.env_id} "
                f"(nq + nv = {self.state_size})"
            )
        frames = []
        for state in states:
            env.set_state(state[:nq], state[nq:])
            frames.append(np.asarray(self.env.render(), dtype=np.uint8))
        return np.stack(frames)

    def close(self) -> None:
        if self._env is not None:
            with contextlib.suppress(Exception):
                self._env.close()
            self._env = None


class ClipRenderer:
    """Segments to display frames, MuJoCo renders cached on disk.

    :param info: the task's rendering settings
    :param cache_dir: where rendered clips are kept (``<clips_dir>/render``); None = no cache
    :param plot_size: ``(width, height)`` of observation plots
    """

    def __init__(self, info: RenderInfo, cache_dir: Path | None = None, plot_size: tuple[int, int] = (480, 480)) -> None:
        self.info = info
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.plot_size = plot_size
        self._renderer: StateRenderer | None = None
        self._render_error = ""
        #: frames rendered (not read from the cache) and seconds spent rendering them
        self.rendered_frames = 0
        self.render_seconds = 0.0

    # ---------------------------------------------------------------- cache

    def cache_path(self, clip_id: str) -> Path | None:
        if self.cache_dir is None:
            return None
        w, h = self.info.render_size
        fast = "f" if self.info.fast_render else "q"
        env = self.info.env_id.replace("/", "_")
        return self.cache_dir / f"{clip_id}-{w}x{h}{fast}-{env}.npz"

    def is_cached(self, clip_id: str) -> bool:
        path = self.cache_path(clip_id)
        return path is not None and path.is_file()

    def _read_cache(self, clip_id: str) -> ClipFrames | None:
        path = self.cache_path(clip_id)
        if path is None or not path.is_file():
            return None
        try:
            with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
                return ClipFrames(frames=data["frames"], fps=float(data["fps"]), kind="rendered")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
            return None  # a damaged cache entry is simply rendered again

    def _write_cache(self, clip_id: str, clip: ClipFrames) -> None:
        path = self.cache_path(clip_id)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Atomic: a viewer killed mid-write leaves a stray temp file, never a torn cache entry.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, frames=clip.frames, fps=np.asarray(clip.fps))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # ---------------------------------------------------------------- frames

    def _state_renderer(self) -> StateRenderer | None:
        if self._renderer is None and not self._render_error:
            if self.info.domain != "mujoco" or not self.info.env_id:
                self._render_error = "no MuJoCo env id to render with"
                return None
            renderer = StateRenderer(self.info.env_id, self.info.render_size, self.info.fast_render)
            try:
                renderer.env  # noqa: B018 - create the env (and GL context) now to report failures once
            except Exception as exc:  # noqa: BLE001 - any GL/EGL/import failure means "plot instead"
                self._render_error = f"MuJoCo rendering unavailable ({type(exc).__name__}: {exc})".splitlines()[0][:160]
                renderer.close()
                return None
            self._renderer = renderer
        return self._renderer

    def render_states(self, segment: Segment) -> ClipFrames | None:
        """MuJoCo frames of a segment (from the cache when there), or None if impossible."""
        if segment.render_states is None:
            return None
        cached = self._read_cache(segment.segment_id) if segment.segment_id else None
        if cached is not None:
            return cached
        renderer = self._state_renderer()
        if renderer is None:
            return None
        stride = max(1, math.ceil(renderer.fps / self.info.max_fps - 1e-9))
        started = time.perf_counter()
        try:
            frames = renderer.render(np.asarray(segment.render_states, dtype=np.float64)[::stride])
        except PrefrlError as exc:
            self._render_error = str(exc)
            return None
        self.render_seconds += time.perf_counter() - started
        self.rendered_frames += len(frames)
        clip = ClipFrames(frames=frames, fps=renderer.fps / stride, kind="rendered")
        if segment.segment_id:
            self._write_cache(segment.segment_id, clip)
        return clip

    def frames(self, segment: Segment, plot_scale: float | None = None) -> ClipFrames:
        """Display frames of one clip: recorded, else rendered, else image observations,
        else a plot of the observations.

        :param plot_scale: value scale of a plot (share it between the clips of a pair)
        """
        if segment.frames is not None:
            return ClipFrames(frames=np.asarray(segment.frames, dtype=np.uint8), fps=self.info.fps, kind="recorded")
        # Classic-control states are not rendered: their renderer needs pygame, which the
        # core never imports; a plot of the observations shows the same motion.
        mujoco = self.info.domain == "mujoco"
        rendered = self.render_states(segment) if mujoco else None
        if rendered is not None:
            return rendered
        note = self._render_error if mujoco and segment.render_states is not None else ""
        images = _image_observation_frames(np.asarray(segment.observations))
        if images is not None:
            return ClipFrames(frames=images, fps=self.info.fps, kind="recorded", note=note or "agent's view (no frames recorded)")
        return ClipFrames(frames=plot_frames(segment, self.plot_size, plot_scale), fps=self.info.fps, kind="plot",
                          note=note or "no frames recorded: plot of the observations")

    def pair_frames(self, pair: ClipPair) -> tuple[ClipFrames, ClipFrames]:
        """Display frames of both clips; plots of a pair share one value scale."""
        scale = float(max(np.max(np.abs(pair.left.observations)), np.max(np.abs(pair.right.observations)))) or 1.0
        return self.frames(pair.left, scale), self.frames(pair.right, scale)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def fit_frames(frames: np.ndarray, box: tuple[int, int], pixel_art: bool) -> np.ndarray:
    """Scale frames to fit ``box`` = ``(width, height)``, keeping the aspect ratio.

    Pixel art (recorded Atari frames) is scaled by a whole factor with nearest
    neighbour, so every game pixel stays a sharp square; renders are scaled smoothly.

    :return: ``(N, h, w, 3)`` C-contiguous uint8 with ``w <= box[0]``, ``h <= box[1]``
    """
    import cv2

    height, width = frames.shape[1:3]
    factor = min(box[0] / width, box[1] / height)
    if pixel_art and factor >= 1:
        factor = math.floor(factor)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    if size == (width, height):
        return np.ascontiguousarray(frames)
    interpolation = cv2.INTER_NEAREST if pixel_art else (cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    out = np.empty((len(frames), size[1], size[0], 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = cv2.resize(frame, size, interpolation=interpolation)
    return out


# --------------------------------------------------------------------------- prefetching


@dataclass
class PreparedPair:
    """A leased pair ready to show: both clips scaled for the screen.

    :param pair_id: the pair
    :param left: ``(N, h, w, 3)`` uint8 frames of the left clip, scaled
    :param right: the same for the right clip (same N)
    :param fps: playback speed
    :param kind: ``recorded``, ``rendered`` or ``plot``
    :param note: fallback note to show, else empty
    :param left_clip: clip id of the left segment
    :param right_clip: clip id of the right segment
    :param prepare_seconds: time spent loading, rendering and scaling
    """

    pair_id: str
    left: np.ndarray
    right: np.ndarray
    fps: float
    kind: str
    note: str = ""
    left_clip: str = ""
    right_clip: str = ""
    prepare_seconds: float = 0.0


def prepare_pair(pair: ClipPair, renderer: ClipRenderer, box: tuple[int, int]) -> PreparedPair:
    """Load-independent part of preparing: frames of both clips, scaled into ``box``."""
    started = time.perf_counter()
    left, right = renderer.pair_frames(pair)
    count = min(len(left.frames), len(right.frames))  # equal unless one clip fell back
    pixel_art = left.kind == "recorded" and right.kind == "recorded"
    return PreparedPair(
        pair_id=pair.pair_id,
        left=fit_frames(left.frames[:count], box, pixel_art),
        right=fit_frames(right.frames[:count], box, pixel_art),
        fps=min(left.fps, right.fps),
        kind=left.kind if left.kind == right.kind else f"{left.kind}/{right.kind}",
        note=left.note or right.note,
        left_clip=pair.left.segment_id,
        right_clip=pair.right.segment_id,
        prepare_seconds=time.perf_counter() - started,
    )


@dataclass
class _PrefetchState:
    ready: deque[PreparedPair] = field(default_factory=deque)
    held: set[str] = field(default_factory=set)
    wanted: deque[str] = field(default_factory=deque)
    errors: deque[str] = field(default_factory=deque)
    broken: set[str] = field(default_factory=set)
    idle: bool = False
    preparing: str | None = None


class PairPrefetcher:
    """Background thread that keeps the next ``ahead`` pairs leased and ready.

    It owns its own :class:`LabelStore` connection and renderer (both bound to its
    thread). Leases of every pair it holds (ready, on screen, or being prepared) are
    renewed well before they expire; if this process is killed they expire after
    ``lease_seconds`` and other viewers get the pairs.

    :param clips_dir: the clips folder
    :param task: the store's task
    :param owner: lease owner name, unique to this viewer
    :param info: rendering settings
    :param box: ``(width, height)`` every clip is scaled to fit
    :param ahead: pairs kept ready (leased) beyond the one on screen
    :param lease_seconds: length of a lease
    :param poll_seconds: pause between looks at the store when nothing is pending
    """

    def __init__(
        self,
        clips_dir: Path,
        task: str,
        owner: str,
        info: RenderInfo,
        box: tuple[int, int],
        ahead: int = 2,
        lease_seconds: float = 60.0,
        poll_seconds: float = 0.5,
    ) -> None:
        if ahead < 1 or lease_seconds <= 0 or poll_seconds <= 0:
            raise PrefrlError("prefetch needs ahead >= 1 and positive lease and poll seconds")
        self.clips_dir = Path(clips_dir)
        self.task = task
        self.owner = owner
        self.info = info
        self.box = box
        self.ahead = ahead
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self._state = _PrefetchState()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefrl-prefetch", daemon=True)
        self._started = False
        self._fatal: BaseException | None = None
        #: seconds each preparation took (for the benchmark)
        self.prepare_times: list[float] = []

    # ---------------------------------------------------------------- API of the viewer thread

    def start(self) -> PairPrefetcher:
        self._thread.start()
        self._started = True
        return self

    def take(self, pair_id: str | None = None) -> PreparedPair | None:
        """The next ready pair (or the ready pair ``pair_id``), or None; never waits."""
        self._raise_fatal()
        with self._lock:
            ready = self._state.ready
            if pair_id is None:
                prepared = ready.popleft() if ready else None
            else:
                prepared = next((p for p in ready if p.pair_id == pair_id), None)
                if prepared is not None:
                    ready.remove(prepared)
        if prepared is not None:
            self._wake.set()  # room for one more
        return prepared

    def wait_ready(self, timeout: float) -> bool:
        """Wait until a pair is ready (tests and benchmarks); returns whether one is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._raise_fatal()
            with self._lock:
                if self._state.ready:
                    return True
            time.sleep(0.005)
        return False

    def put_back(self, prepared: PreparedPair) -> None:
        """Return a pair taken with :meth:`take` to the front of the queue (undo shows
        an earlier pair first; the displaced pair is still leased to us)."""
        with self._lock:
            self._state.ready.appendleft(prepared)
            self._state.held.add(prepared.pair_id)

    def request(self, pair_id: str) -> None:
        """Prepare this pair before any other (it is already leased to us, e.g. by undo)."""
        with self._lock:
            self._state.held.add(pair_id)
            self._state.wanted.append(pair_id)
        self._wake.set()

    def hold(self, pair_id: str) -> None:
        """Keep renewing the lease of a pair leased to us outside the prefetcher."""
        with self._lock:
            self._state.held.add(pair_id)

    def answered(self, pair_id: str) -> None:
        """The pair got its label: stop renewing its lease."""
        with self._lock:
            self._state.held.discard(pair_id)

    def errors(self) -> list[str]:
        """Messages about pairs that could not be prepared since the last call."""
        with self._lock:
            messages = list(self._state.errors)
            self._state.errors.clear()
        return messages

    @property
    def ready_count(self) -> int:
        """Pairs prepared and waiting to be shown."""
        with self._lock:
            return len(self._state.ready)

    @property
    def preparing(self) -> str | None:
        """The pair being loaded and rendered right now, if any."""
        with self._lock:
            return self._state.preparing

    @property
    def idle(self) -> bool:
        """Nothing ready and the store had no pending pair free at the last look."""
        with self._lock:
            return self._state.idle and not self._state.ready

    def poke(self) -> None:
        """Look at the store now (e.g. after an undo freed a pair)."""
        self._wake.set()

    def stop(self, release: bool = True) -> None:
        """Stop the thread and (by default) give back every lease still held."""
        self._stop.set()
        self._wake.set()
        if self._started:
            self._thread.join(timeout=30.0)
        if release:
            with self._lock:
                held = list(self._state.held)
                self._state.held.clear()
                self._state.ready.clear()
            if held:
                with contextlib.suppress(PrefrlError, sqlite3.Error), LabelStore(self.clips_dir, self.task) as store:
                    for pair_id in held:
                        store.release(pair_id, self.owner)

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            raise PrefrlError(f"clip preparation stopped: {self._fatal}")

    # ---------------------------------------------------------------- the worker thread

    def _run(self) -> None:
        try:
            with LabelStore(self.clips_dir, self.task) as store:
                renderer = ClipRenderer(self.info, self.clips_dir / RENDER_DIR, plot_size=self.box)
                try:
                    self._loop(store, renderer)
                finally:
                    renderer.close()
        except BaseException as exc:  # noqa: BLE001 - surfaced to the viewer thread by _raise_fatal
            self._fatal = exc

    def _loop(self, store: LabelStore, renderer: ClipRenderer) -> None:
        renew_every = self.lease_seconds / 4
        last_renew = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last_renew >= renew_every:
                self._renew(store)
                last_renew = time.monotonic()
            pair_id, urgent = self._next_to_prepare(store)
            if pair_id is None:
                self._wake.wait(min(self.poll_seconds, renew_every))
                self._wake.clear()
                continue
            self._prepare_one(store, renderer, pair_id, urgent)

    def _renew(self, store: LabelStore) -> None:
        with self._lock:
            held = list(self._state.held)
        if not held:
            return
        kept = set(store.renew_leases(held, self.owner, self.lease_seconds))
        lost = [pair_id for pair_id in held if pair_id not in kept]
        if lost:
            with self._lock:
                # A ready pair whose lease went to someone else must not be shown here too.
                self._state.ready = deque(p for p in self._state.ready if p.pair_id not in lost)
                for pair_id in lost:
                    self._state.held.discard(pair_id)

    def _next_to_prepare(self, store: LabelStore) -> tuple[str | None, bool]:
        """``(pair id, requested by the viewer)`` or ``(None, False)`` when nothing to do."""
        with self._lock:
            if self._state.wanted:
                return self._state.wanted.popleft(), True
            if len(self._state.ready) >= self.ahead:
                return None, False
        pair_id = store.lease_next(self.owner, self.lease_seconds)
        with self._lock:
            self._state.idle = pair_id is None
            if pair_id is not None:
                self._state.held.add(pair_id)
        return pair_id, False

    def _prepare_one(self, store: LabelStore, renderer: ClipRenderer, pair_id: str, urgent: bool) -> None:
        started = time.perf_counter()
        with self._lock:
            self._state.preparing = pair_id
        try:
            pair = store.load_pair(pair_id)
            prepared = prepare_pair(pair, renderer, self.box)
        except PrefrlError as exc:
            with self._lock:
                self._state.preparing = None
            # Keep the lease (so this viewer does not lease the broken pair again and
            # again) and tell the person; it is released when the viewer quits.
            with self._lock:
                self._state.broken.add(pair_id)
                self._state.errors.append(f"pair {pair_id} cannot be shown: {exc}")
            return
        prepared.prepare_seconds = time.perf_counter() - started
        self.prepare_times.append(prepared.prepare_seconds)
        with self._lock:
            self._state.preparing = None
            if pair_id not in self._state.held:
                return  # answered or lost meanwhile
            if any(p.pair_id == pair_id for p in self._state.ready):
                return
            if urgent:
                self._state.ready.appendleft(prepared)
            else:
                self._state.ready.append(prepared)

