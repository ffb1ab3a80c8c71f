"""Segments (short clips of agent experience), clip pairs, and the buffer that cuts
segments out of PPO's rollouts.

The true reward is stored beside every step for the synthetic teacher and for
evaluation of the reward model; it is never an input of the agent or the reward model.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Segment:
    """``T`` consecutive agent steps of one episode.

    :param observations: ``(T, *obs_shape)`` what the agent saw (Atari: masked, stacked)
    :param actions: ``(T, *action_shape)`` the actions taken (``(T,)`` for discrete)
    :param true_rewards: ``(T,)`` float32, the task's reward for each step
    :param after_termination: ``(T,)`` bool, the step came after the underlying task would
        have ended the episode (fallen over, game over); the teacher may penalise it
    :param segment_id: unique within a run, e.g. ``"s000123"``
    :param start_step: global env step at which the segment began
    :param render_states: ``(T, S)`` float64 physics state (MuJoCo ``qpos`` + ``qvel``)
        for rendering clips to people, or ``None``
    :param frames: ``(T, H, W, 3)`` uint8 RGB frames to show people, or ``None``
    """

    observations: np.ndarray
    actions: np.ndarray
    true_rewards: np.ndarray
    after_termination: np.ndarray
    segment_id: str = ""
    start_step: int = 0
    render_states: np.ndarray | None = None
    frames: np.ndarray | None = None

    def __post_init__(self) -> None:
        length = len(self.observations)
        if length == 0:
            raise ValueError("a segment needs at least one step")
        for name in ("actions", "true_rewards", "after_termination"):
            value = getattr(self, name)
            if len(value) != length:
                raise ValueError(f"Segment.{name} has {len(value)} steps, observations have {length}")
        if self.true_rewards.ndim != 1 or self.after_termination.ndim != 1:
            raise ValueError("Segment.true_rewards and after_termination must be 1-D (T,)")
        for name in ("render_states", "frames"):
            value = getattr(self, name)
            if value is not None and len(value) != length:
                raise ValueError(f"Segment.{name} has {len(value)} steps, observations have {length}")
        if self.frames is not None and (self.frames.ndim != 4 or self.frames.shape[-1] != 3):
            raise ValueError(f"Segment.frames must be (T, H, W, 3), got {self.frames.shape}")

    def __len__(self) -> int:
        return len(self.observations)

    @property
    def true_return(self) -> float:
        return float(np.sum(self.true_rewards))


@dataclass(frozen=True)
class ClipPair:
    """Two segments of equal length shown side by side (left, right)."""

    left: Segment
    right: Segment
    pair_id: str = ""

    def __post_init__(self) -> None:
        if len(self.left) != len(self.right):
            raise ValueError(f"clip pair of unequal lengths {len(self.left)} and {len(self.right)}")
        if self.left.observations.shape[1:] != self.right.observations.shape[1:]:
            raise ValueError("clip pair with different observation shapes")


@dataclass
class _OpenTrajectory:
    """Steps of one environment since its segment started (not yet a full segment)."""

    observations: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    true_rewards: list = field(default_factory=list)
    after_termination: list = field(default_factory=list)
    render_states: list = field(default_factory=list)
    frames: list = field(default_factory=list)
    start_step: int = 0

    def clear(self, start_step: int) -> None:
        for values in (self.observations, self.actions, self.true_rewards,
                       self.after_termination, self.render_states, self.frames):
            values.clear()
        self.start_step = start_step


class SegmentBuffer:
    """Cuts non-overlapping segments of ``clip_length`` steps out of vectorised rollouts.

    Segments never cross an episode boundary. The buffer keeps the newest ``capacity``
    segments; queries are drawn from it.

    :param clip_length: steps per segment
    :param n_envs: number of environments of the vectorised env
    :param capacity: segments kept (oldest dropped first)
    :param stride: take a segment only every ``stride``-th chance, so a small buffer
        still spans a long stretch of training
    """

    def __init__(self, clip_length: int, n_envs: int, capacity: int, stride: int = 1) -> None:
        if clip_length <= 0 or n_envs <= 0 or capacity <= 0 or stride <= 0:
            raise ValueError("clip_length, n_envs, capacity and stride must be positive")
        self.clip_length = clip_length
        self.n_envs = n_envs
        self.stride = stride
        self.segments: deque[Segment] = deque(maxlen=capacity)
        self._open = [_OpenTrajectory() for _ in range(n_envs)]
        self._chances = 0
        self._next_id = 0

    def __len__(self) -> int:
        return len(self.segments)

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    @property
    def total_cut(self) -> int:
        """Segments cut so far (including those already dropped), plus ids skipped by
        :meth:`skip_ids`: the number of the next segment id."""
        return self._next_id

    def skip_ids(self, first_free: int) -> None:
        """Number the next segments from ``first_free`` on (if above the next number), so
        they do not reuse ids of segments stored elsewhere (e.g. by an interrupted run)."""
        self._next_id = max(self._next_id, int(first_free))

    def run_state(self) -> SegmentBuffer:
        """For a run checkpoint: the buffer itself. The checkpoint is pickled at once, so
        segments the reward model's labels also hold are stored once (checkpoints have
        held the buffer object so from the start)."""
        return self

    def load_run_state(self, state: SegmentBuffer) -> None:
        """Take over the content of a checkpointed buffer in place: the segment
        recorder, the reward fitter and the trainer hold this very buffer."""
        self.__dict__.update(state.__dict__)

    def add_step(
        self,
        step: int,
        observations: np.ndarray,
        actions: np.ndarray,
        true_rewards: np.ndarray,
        dones: np.ndarray,
        after_termination: np.ndarray | None = None,
        render_states: Sequence[np.ndarray | None] | None = None,
        frames: Sequence[np.ndarray | None] | None = None,
    ) -> None:
        """Record one vectorised step.

        :param step: global env-step counter at this step
        :param observations: ``(n_envs, *obs_shape)`` observations the actions were taken on
        :param actions: ``(n_envs, *action_shape)``
        :param true_rewards: ``(n_envs,)``
        :param dones: ``(n_envs,)`` the episode ended with this step
        :param after_termination: ``(n_envs,)`` bool or None
        :param render_states: per env a state vector or None
        :param frames: per env an RGB frame or None
        """
        for i in range(self.n_envs):
            traj = self._open[i]
            if not traj.observations:
                traj.start_step = step
            traj.observations.append(np.array(observations[i], copy=True))
            traj.actions.append(np.array(actions[i], copy=True))
            traj.true_rewards.append(float(true_rewards[i]))
            traj.after_termination.append(bool(after_termination[i]) if after_termination is not None else False)
            if render_states is not None and render_states[i] is not None:
                traj.render_states.append(np.asarray(render_states[i], dtype=np.float64))
            if frames is not None and frames[i] is not None:
                traj.frames.append(np.asarray(frames[i], dtype=np.uint8))
            if len(traj.observations) == self.clip_length:
                self._cut(traj)
                traj.clear(step + 1)
            elif dones[i]:
                traj.clear(step + 1)  # a partial segment at an episode end is dropped

    def _cut(self, traj: _OpenTrajectory) -> None:
        self._chances += 1
        if (self._chances - 1) % self.stride:
            return
        has_states = len(traj.render_states) == self.clip_length
        has_frames = len(traj.frames) == self.clip_length
        segment = Segment(
            observations=np.stack(traj.observations),
            actions=np.stack(traj.actions),
            true_rewards=np.asarray(traj.true_rewards, dtype=np.float32),
            after_termination=np.asarray(traj.after_termination, dtype=bool),
            segment_id=f"s{self._next_id:07d}",
            start_step=traj.start_step,
            render_states=np.stack(traj.render_states) if has_states else None,
            frames=np.stack(traj.frames) if has_frames else None,
        )
        self._next_id += 1
        self.segments.append(segment)

    def sample_pairs(self, n: int, rng: np.random.Generator, prefix: str = "p") -> list[ClipPair]:
        """Draw ``n`` pairs of two distinct segments uniformly at random.

        :raises ValueError: fewer than two segments in the buffer
        """
        if len(self.segments) < 2:
            raise ValueError("need at least two segments to form a pair")
        count = len(self.segments)
        left = rng.integers(0, count, size=n)
        offset = rng.integers(1, count, size=n)  # never pair a segment with itself
        right = (left + offset) % count
        return [
            ClipPair(self.segments[a], self.segments[b], pair_id=f"{prefix}{k}")
            for k, (a, b) in enumerate(zip(left.tolist(), right.tolist()))
        ]
