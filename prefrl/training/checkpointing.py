"""Crash safety of a run: the checkpoint taken at rollout starts, stopping on SIGINT or
SIGTERM after one, and stopping on non-finite values.

Every object whose state a checkpoint holds offers it as :class:`Checkpointable`;
:class:`RunParts` gathers them (the PPO agent through :mod:`prefrl.training.ppo`, the
envs through :mod:`prefrl.envs.state`), and :class:`RunCheckpointer` writes the
result (:mod:`prefrl.rundir.checkpoint_files`). The layout of the checkpoint dict is
fixed: old checkpoints must still resume.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from prefrl.envs.state import capture_vec_env, restore_vec_env
from prefrl.rundir.checkpoint_files import checkpoint_path, write_checkpoint
from prefrl.training.ppo import load_ppo_run_state, ppo_run_state
from prefrl.training.rng_state import global_rng_states, restore_global_rng_states
from prefrl.util.errors import PrefrlError

if TYPE_CHECKING:
    from prefrl.training.callbacks import PreferenceCallback


class Checkpointable(Protocol):
    """An object whose state a run checkpoint holds. A checkpoint is taken between
    rollouts; restoring it into an object built with the same settings must continue
    the run bit for bit. (The segment buffer is the one exception to the dict: it is
    checkpointed as itself, see ``SegmentBuffer.run_state``.)"""

    def run_state(self) -> dict[str, Any]:
        """Copies of everything that changes during the run (nothing shared with the live object)."""
        ...

    def load_run_state(self, state: dict[str, Any]) -> None:
        """Put a :meth:`run_state` back (generators and shared objects in place)."""
        ...


class NonFiniteError(PrefrlError):
    """An environment or the reward model produced NaN or an infinity."""


class RunInterrupted(PrefrlError):
    """SIGINT or SIGTERM stopped the run after it saved a checkpoint.

    :param step: env steps of the saved checkpoint
    :param signum: the signal
    :param run_dir: the run directory
    """

    def __init__(self, step: int, signum: int, run_dir: Path) -> None:
        self.step, self.signum, self.run_dir = int(step), int(signum), run_dir
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step:,}; "
                         f"the run is saved in {checkpoint_path(run_dir)}")

    @property
    def exit_status(self) -> int:
        """The shell's convention for death by this signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class CheckpointWriteError(PrefrlError):
    """The checkpoint could not be written (full disk); the previous one is intact."""


class Halt(Exception):
    """Raised at a rollout boundary after the stop checkpoint (caught by :func:`train`)."""

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


class StopRequest:
    """While learning, SIGINT and SIGTERM ask the run to stop at the next rollout
    boundary with a checkpoint (the rollout under way is finished and learned from:
    seconds for vector tasks). A second signal stops at once (``KeyboardInterrupt``);
    the last checkpoint on disk stays valid, it is only older.

    Signal handlers can only be set in the main thread; elsewhere (e.g. a worker
    thread of a sweep) this does nothing and signals keep their usual effect.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        #: the first signal received, or None
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\nprefrl: {signal.Signals(signum).name} received: finishing this rollout to save a checkpoint "
              "(send it again to stop at once and lose the steps since the last checkpoint)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _check_finite_tensors(name: str, values: Any) -> None:
    for tensor in values:
        if not torch.isfinite(torch.as_tensor(tensor)).all():
            raise NonFiniteError(f"{name} contain NaN or infinite values")


@dataclass
class RunParts:
    """The objects whose state makes up a run checkpoint, and how to take and restore it.

    A checkpoint is taken at the start of a rollout (after PPO learned from the previous
    one): nothing is half done then except a background reward fit, which is finished
    first (its result is the same whenever it finishes). Restoring the checkpoint into
    objects built with the same settings continues the run bit for bit: PPO (weights,
    Adam state, step and update counters, last observations), the env wrappers and
    simulations, normalisation statistics, the reward model with its labels and
    optimiser, the segment buffer, the teacher, the query counters and every random
    generator (global ones included).

    :param model: the PPO agent (its env is the training env)
    :param eval_env: the evaluation env
    :param evals: the evaluation callback
    :param prefs: the preference callback (learned arm), else None
    :param pretrain_steps: env steps before learning (random policy)
    :param wall_seconds: wall time of the run's earlier sessions
    """

    model: PPO
    eval_env: VecEnv
    evals: Checkpointable
    prefs: PreferenceCallback | None
    pretrain_steps: int = 0
    wall_seconds: float = 0.0
    session_start: float = 0.0

    def elapsed(self) -> float:
        """Wall seconds of all sessions so far."""
        return self.wall_seconds + time.time() - self.session_start

    def capture(self) -> dict[str, Any]:
        """The state to checkpoint.

        :raises NonFiniteError: a network or a normaliser holds NaN or infinities (a
            checkpoint must never keep them)
        """
        model = self.model
        prefs_state = self.prefs.run_state() if self.prefs is not None else None
        self.check_finite()
        return {
            "ppo": ppo_run_state(model),
            "venv": capture_vec_env(model.get_env()),
            "eval_env": capture_vec_env(self.eval_env),
            "evals": self.evals.run_state(),
            "prefs": prefs_state,
            "pretrain_steps": int(self.pretrain_steps),
            "wall_seconds": self.elapsed(),
            "rng": global_rng_states(),
        }

    def check_finite(self) -> None:
        """:raises NonFiniteError: the policy, the reward model or a normaliser is not finite"""
        _check_finite_tensors("the policy's weights", self.model.policy.state_dict().values())
        if self.prefs is not None:
            rm = self.prefs.reward_model
            _check_finite_tensors("the reward model's weights", [*rm.net.state_dict().values(), rm.norm_mean, rm.norm_std])
        env = self.model.get_env()
        if isinstance(env, VecNormalize):
            # obs_rms exists only with norm_obs
            stats = [vars(env).get(name) for name in ("obs_rms", "ret_rms")]
            _check_finite_tensors("the normaliser statistics", [v for rms in stats if rms is not None for v in (rms.mean, rms.var)])

    def restore(self, state: dict[str, Any]) -> None:
        """Put a :meth:`capture` state into objects built with the same settings. The
        global random states come last: building the objects may have drawn from them."""
        model = self.model
        load_ppo_run_state(model, state["ppo"])
        restore_vec_env(model.get_env(), state["venv"])
        restore_vec_env(self.eval_env, state["eval_env"])
        self.evals.load_run_state(state["evals"])
        if self.prefs is not None:
            self.prefs.load_run_state(state["prefs"])
        self.pretrain_steps = int(state["pretrain_steps"])
        self.wall_seconds = float(state["wall_seconds"])
        restore_global_rng_states(state["rng"])


class RunCheckpointer(BaseCallback):
    """Writes the run checkpoint at rollout starts: the first one, then every
    ``every_steps`` env steps or ``every_seconds`` seconds (whichever comes first; 0
    turns either off), and when a stop was requested (then it halts the run). Also stops
    the run when an environment returns a non-finite observation or reward.

    :param run_dir: the run directory
    :param parts: what the checkpoint holds
    :param stop: the signal state
    :param every_steps: env steps between checkpoints (0: not by steps)
    :param every_seconds: seconds between checkpoints (0: not by time)
    :param saved_step: step of the checkpoint the run resumed from, else None
    """

    def __init__(self, run_dir: Path, parts: RunParts, stop: StopRequest, every_steps: int = 0,
                 every_seconds: float = 600.0, saved_step: int | None = None) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.parts = parts
        self.stop = stop
        self.every_steps = max(0, int(every_steps))
        self.every_seconds = max(0.0, float(every_seconds))
        #: step of the last checkpoint on disk (None: none yet)
        self.saved_step = saved_step
        self._saved_at = time.monotonic()
        #: checkpoints written by this session
        self.writes = 0

    def _due(self, step: int) -> bool:
        if self.saved_step is None:
            return True
        if step == self.saved_step:
            return False
        if self.every_steps and step - self.saved_step >= self.every_steps:
            return True
        return bool(self.every_seconds) and time.monotonic() - self._saved_at >= self.every_seconds

    def _on_rollout_start(self) -> None:
        step = self.num_timesteps
        stopping = self.stop.signum is not None
        if self._due(step) or (stopping and step != self.saved_step):
            self.save(step)
        if stopping:
            raise Halt(step)

    def save(self, step: int) -> None:
        """Write the checkpoint now.

        :raises PrefrlError: the disk is full or unwritable (the previous checkpoint stays)
        """
        state = self.parts.capture()
        try:
            write_checkpoint(self.run_dir, step, state)
        except OSError as exc:
            kept = f"the checkpoint of step {self.saved_step:,} is kept" if self.saved_step is not None else "no checkpoint was written yet"
            raise CheckpointWriteError(
                f"writing the checkpoint of step {step:,} to {checkpoint_path(self.run_dir)} failed "
                f"({exc.strerror or exc}); {kept}: free space, then rerun the same command to resume"
            ) from None
        self.saved_step, self._saved_at = step, time.monotonic()
        self.writes += 1

    def _on_step(self) -> bool:
        check_step_finite(self.locals, self.num_timesteps)
        return True


def check_step_finite(step_locals: dict[str, Any], step: int) -> None:
    """Stop on a non-finite observation or reward of the vectorised step just taken.

    :param step_locals: SB3's ``collect_rollouts`` locals (``new_obs``, ``rewards``, ``infos``)
    :param step: env steps so far
    :raises NonFiniteError: naming the step, the env and what was not finite
    """
    rewards = np.asarray(step_locals["rewards"])
    infos = step_locals.get("infos") or []
    true_rewards = np.array([info.get("true_reward", 0.0) for info in infos], dtype=np.float64)
    observations = step_locals.get("new_obs")
    checks = [("reward", rewards), ("reward", true_rewards)]
    if isinstance(observations, np.ndarray) and np.issubdtype(observations.dtype, np.floating):
        checks.append(("observation", observations.reshape(len(observations), -1)))
    for what, values in checks:
        if values.size and not np.isfinite(values).all():
            bad = np.argwhere(~np.isfinite(values.reshape(len(values), -1)))[0]
            value = values.reshape(len(values), -1)[tuple(bad)]
            raise NonFiniteError(f"step {step:,}, env {int(bad[0])}: the environment returned a non-finite {what} ({value})")
