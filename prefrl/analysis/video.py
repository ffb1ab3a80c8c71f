"""``prefrl video``: evaluation episodes of a trained agent as an mp4 (OpenCV), each frame
above a running plot of the true reward and, for a learned-reward run, the reward the
agent was trained on.

The two curves tell a person whether the agent does what the task wants and whether it
found a way to collect learned reward without doing so (reward hacking): steps where
the learned reward is high while the true reward is not stand out.

The episodes follow the task's evaluation rules (real termination, ``eval.max_episode_steps``)
with the agent's observation normalisation (``vecnormalize.pkl``) and the reward model
of the run (``reward_model.pt``). The learned reward of a step is computed exactly as in
training: from the raw observation before the step and the action taken. MuJoCo renders
headless through EGL (``MUJOCO_GL=egl`` unless set otherwise).

The plot is drawn with OpenCV line primitives, not matplotlib: it is redrawn for every
frame, and a matplotlib figure per frame would cost more than the simulation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from prefrl.rundir import RunDir
from prefrl.util.errors import PrefrlError
from prefrl.util.gl import use_headless_gl

if TYPE_CHECKING:
    import gymnasium as gym

    from prefrl.config.settings import Preset


#: Video frames are at least this wide: small frames (Atari's 160 pixels) are scaled up
#: by a whole factor so that pixels stay sharp.
MIN_WIDTH = 480
#: Height of each reward strip under the frame.
STRIP_HEIGHT = 90
#: Height of the text line above the strips.
HEADER_HEIGHT = 28
#: The x axis spans at least this many steps, so the first steps don't fill the width.
MIN_PLOT_STEPS = 100
# BGR colours (OpenCV order).
BACKGROUND = (28, 28, 28)
GRID = (70, 70, 70)
TEXT = (230, 230, 230)
TRUE_COLOUR = (90, 200, 90)
LEARNED_COLOUR = (40, 150, 255)


@dataclass
class VideoResult:
    """What :func:`record_video` wrote.

    :param path: the mp4 file
    :param frames: frames written
    :param width: frame width in pixels
    :param height: frame height in pixels
    :param fps: frames per second
    :param true_returns: true return of each episode
    :param learned_returns: learned return of each episode (empty for a true-reward run)
    """

    path: Path
    frames: int
    width: int
    height: int
    fps: float
    true_returns: list[float] = field(default_factory=list)
    learned_returns: list[float] = field(default_factory=list)


def _upscale(frame: np.ndarray) -> np.ndarray:
    factor = max(1, math.ceil(MIN_WIDTH / frame.shape[1]))
    if factor == 1:
        return frame
    return cv2.resize(frame, (frame.shape[1] * factor, frame.shape[0] * factor), interpolation=cv2.INTER_NEAREST)


def _even(n: int) -> int:
    return n + (n % 2)  # most mp4 players want even frame sides


def draw_strip(
    canvas: np.ndarray, top: int, values: Sequence[float], colour: tuple[int, int, int], label: str
) -> None:
    """Draw one running reward curve into rows ``top .. top + STRIP_HEIGHT`` of ``canvas``.

    The y axis fits the values seen so far (labelled with its range), the x axis spans
    ``max(len(values), MIN_PLOT_STEPS)`` steps; a dashed line marks reward 0.

    :param canvas: BGR image, modified in place
    :param top: first row of the strip
    :param values: rewards of the steps so far
    :param colour: BGR colour of the curve
    :param label: name shown in the strip's corner
    """
    width = canvas.shape[1]
    left, right, pad = 8, width - 8, 14
    y0, y1 = top + pad, top + STRIP_HEIGHT - 6
    cv2.rectangle(canvas, (left, top + 2), (right, top + STRIP_HEIGHT - 2), GRID, 1)
    low, high = (float(np.min(values)), float(np.max(values))) if len(values) else (0.0, 0.0)
    if high - low < 1e-6:
        low, high = low - 1.0, high + 1.0
    span = high - low

    def y_of(v: np.ndarray | float) -> np.ndarray:
        return np.round(y1 - (np.asarray(v, dtype=np.float64) - low) / span * (y1 - y0)).astype(np.int32)

    if low < 0.0 < high:
        zero = int(y_of(0.0))
        for x in range(left, right, 12):
            cv2.line(canvas, (x, zero), (min(x + 5, right), zero), GRID, 1)
    if len(values):
        steps = max(len(values), MIN_PLOT_STEPS)
        xs = np.arange(len(values), dtype=np.float64)
        if len(values) > right - left:  # more points than pixels: keep one per pixel column
            keep = np.unique(np.linspace(0, len(values) - 1, right - left).astype(int))
            xs, vals = xs[keep], np.asarray(values)[keep]
        else:
            vals = np.asarray(values)
        px = np.round(left + xs / max(steps - 1, 1) * (right - left)).astype(np.int32)
        points = np.stack([px, y_of(vals)], axis=1).reshape(-1, 1, 2)
        cv2.polylines(canvas, [points], False, colour, 2, cv2.LINE_AA)
    text = f"{label}  [{low:.3g}, {high:.3g}]  now {values[-1]:.3g}" if len(values) else label
    cv2.putText(canvas, text, (left + 4, top + pad - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, 1, cv2.LINE_AA)


def compose_frame(
    frame: np.ndarray,
    true_rewards: Sequence[float],
    learned_rewards: Sequence[float] | None,
    header: str,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """One video frame: the env's RGB frame above a header line and the reward strips.

    :param frame: the env's ``render()`` output, RGB ``(H, W, 3)`` uint8
    :param true_rewards: true rewards of the episode's steps so far
    :param learned_rewards: learned rewards so far, or ``None`` for a true-reward run
    :param header: text above the strips (episode, step, returns)
    :param size: ``(width, height)`` of the output; the first frame decides it
    :return: BGR ``(height, width, 3)`` uint8, ready for ``cv2.VideoWriter``
    """
    image = cv2.cvtColor(_upscale(np.ascontiguousarray(frame)), cv2.COLOR_RGB2BGR)
    strips = 1 if learned_rewards is None else 2
    width = size[0] if size else _even(image.shape[1])
    height = size[1] if size else _even(image.shape[0] + HEADER_HEIGHT + strips * STRIP_HEIGHT)
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    frame_h = min(image.shape[0], height - HEADER_HEIGHT - strips * STRIP_HEIGHT)
    frame_w = min(image.shape[1], width)
    canvas[:frame_h, :frame_w] = image[:frame_h, :frame_w]
    scale = 0.5
    while scale > 0.3 and cv2.getTextSize(header, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width - 16:
        scale -= 0.02  # shrink the header until it fits a narrow frame
    cv2.putText(canvas, header, (8, frame_h + 19), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT, 1, cv2.LINE_AA)
    top = frame_h + HEADER_HEIGHT
    draw_strip(canvas, top, true_rewards, TRUE_COLOUR, "true reward")
    if learned_rewards is not None:
        draw_strip(canvas, top + STRIP_HEIGHT, learned_rewards, LEARNED_COLOUR, "learned reward (what the agent optimised)")
    return canvas


def _video_fps(env: gym.Env, preset: Preset) -> float:
    if preset.task.domain == "atari":
        return 60.0 / max(1, preset.task.frame_skip)  # the emulator runs at 60 frames a second
    fps = env.metadata.get("render_fps") or 30
    return float(fps)


def record_video(
    run_dir: Path,
    out: Path | None = None,
    *,
    episodes: int = 1,
    max_steps: int | None = None,
    seed: int = 0,
    deterministic: bool | None = None,
) -> VideoResult:
    """Record evaluation episodes of a run's trained agent to an mp4.

    :param run_dir: a finished run (``config.json``, ``policy.zip``; ``vecnormalize.pkl``
        and ``reward_model.pt`` when the run has them)
    :param out: the mp4 to write (default ``run_dir/video.mp4``)
    :param episodes: episodes recorded one after another
    :param max_steps: cap each episode at this many agent steps (default: the task's
        evaluation limit)
    :param seed: the first episode's seed (episode ``i`` uses ``seed + i``)
    :param deterministic: take the policy's most likely action (default: the run's
        ``eval.deterministic``)
    :raises PrefrlError: not a finished run, or the video cannot be written
    """
    from prefrl.config.loading import apply_overrides
    from prefrl.envs.factory import make_env

    run = RunDir(run_dir)
    config, preset = run.load_preset()
    run.check_policy()  # before the (slow) env is built
    if max_steps is not None:
        preset = apply_overrides(preset, [f"eval.max_episode_steps={max_steps}"])
    deterministic = preset.eval.deterministic if deterministic is None else deterministic
    out = out or run_dir / "video.mp4"
    out.parent.mkdir(parents=True, exist_ok=True)

    use_headless_gl()
    env = make_env(preset, evaluation=True, render_mode="rgb_array")
    try:
        act = run.load_agent(env).policy(deterministic)
        reward_model = None
        if config.get("arm") == "learned" and run.reward_model_path.is_file():
            reward_model = run.load_reward_model(env.observation_space, env.action_space, preset.reward)

        fps = _video_fps(env, preset)
        writer: cv2.VideoWriter | None = None
        size: tuple[int, int] | None = None
        frames = 0
        result = VideoResult(path=out, frames=0, width=0, height=0, fps=fps)
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            true_rewards: list[float] = []
            learned: list[float] | None = [] if reward_model is not None else None
            done = False
            while True:
                header = (f"{config.get('task', preset.task.name)} {config.get('arm', '')} s{config.get('seed', '')}"
                          f" | ep {episode + 1}/{episodes} step {len(true_rewards)} | return: true "
                          f"{sum(true_rewards):.1f}" + (f", learned {sum(learned):.1f}" if learned is not None else ""))
                image = compose_frame(env.render(), true_rewards, learned, header, size)
                if writer is None:
                    size = (image.shape[1], image.shape[0])
                    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
                    if not writer.isOpened():
                        raise PrefrlError(f"OpenCV cannot write {out}; give a writable .mp4 path")
                writer.write(image)
                frames += 1
                if done:
                    break
                action = act(obs)
                if reward_model is not None and learned is not None:
                    learned.append(float(reward_model.predict(np.asarray(obs)[None], np.asarray(action)[None])[0]))
                obs, reward, terminated, truncated, _ = env.step(action)
                true_rewards.append(float(reward))
                done = bool(terminated or truncated)
            result.true_returns.append(float(sum(true_rewards)))
            if learned is not None:
                result.learned_returns.append(float(sum(learned)))
        if writer is not None:
            writer.release()
    finally:
        env.close()
    result.frames = frames
    result.width, result.height = size or (0, 0)
    return result
