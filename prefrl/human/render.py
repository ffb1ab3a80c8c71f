"""Display frames for segments: what a person sees of a clip.

Three sources, in order of preference:

- **recorded**: the RGB frames saved with the segment (Atari: ``info["frame"]``, score
  masked the way the agent sees it);
- **rendered**: MuJoCo physics states (``qpos ‖ qvel``) put back into a
  ``render_mode="rgb_array"`` env with ``set_state`` and rendered off-screen
  (``MUJOCO_GL=egl``), cached under ``<clips_dir>/render/`` so that a clip is rendered
  once per clips folder, however many viewers, undos and restarts see it;
- **plot**: a drawing of the observation values over time, for vector clips without
  either (classic control, or when MuJoCo cannot render here).

No pygame: the trainer may import this too.
"""

from __future__ import annotations

import contextlib
import math
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.data.segments import ClipPair, Segment
from prefrl.human.clips import RenderInfo
from prefrl.util.atomic import atomic_file
from prefrl.util.errors import PrefrlError
from prefrl.util.gl import use_headless_gl


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
        # Atomic: a viewer killed mid-write never leaves a torn cache entry.
        with atomic_file(path, "wb") as handle:
            np.savez(handle, frames=clip.frames, fps=np.asarray(clip.fps))

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
