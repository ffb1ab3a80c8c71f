"""A run directory as an object: the path of each file a run writes, and readers for them.

Everything heavy (torch, SB3, the reward model) is imported by the method that needs it,
so that reading a run's numbers stays light (``compare``, ``report``, the label viewer).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prefrl.rundir import files
from prefrl.rundir.progress import newest_progress, progress_files, resumed_logs_dir
from prefrl.util.errors import PrefrlError

if TYPE_CHECKING:
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    from prefrl.config.settings import Preset, RewardSettings
    from prefrl.feedback.exchange import ExchangedLabel
    from prefrl.reward.model import RewardModel


@dataclass(frozen=True)
class EvalCurve:
    """A run's evaluation curve (``eval.csv``).

    :param steps: env steps of each evaluation
    :param true_returns: mean true return of the evaluation episodes at each
    """

    steps: np.ndarray
    true_returns: np.ndarray


@dataclass(frozen=True)
class Agent:
    """A finished run's SB3 PPO agent with its observation statistics, frozen.

    :param model: the PPO agent (on the CPU)
    :param statistics: the run's ``VecNormalize`` (``training`` off), None if it had none
    """

    model: PPO
    statistics: VecNormalize | None

    def normalize(self, observations: np.ndarray) -> np.ndarray:
        """A batch of raw observations as the agent saw them in training."""
        return observations if self.statistics is None else self.statistics.normalize_obs(observations)

    def policy(self, deterministic: bool) -> Callable[[np.ndarray], np.ndarray]:
        """One raw observation -> one action (the caller steps the env itself, so the raw
        observation, which the reward model reads, stays at hand).

        :param deterministic: take the policy's most likely action
        """
        def act(observation: np.ndarray) -> np.ndarray:
            return self.model.predict(self.normalize(np.asarray(observation)[None]), deterministic=deterministic)[0][0]

        return act


@dataclass(frozen=True)
class RunDir:
    """A folder written by ``prefrl train`` (or a records copy of its small files).

    Nothing is read when it is made: the readers raise when a file is missing or bad.

    :param path: the run directory
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ----------------------------------------------------------------- paths

    @property
    def config_path(self) -> Path:
        """What the run is (settings, arm, seed; compared when it is resumed)."""
        return self.path / files.CONFIG_FILE

    @property
    def summary_path(self) -> Path:
        """Final numbers; written last, it marks the run finished."""
        return self.path / files.SUMMARY_FILE

    @property
    def eval_path(self) -> Path:
        """The evaluation curve (true return against env steps)."""
        return self.path / files.EVAL_FILE

    @property
    def policy_path(self) -> Path:
        """The trained SB3 PPO agent."""
        return self.path / files.POLICY_FILE

    @property
    def vecnormalize_path(self) -> Path:
        """The agent's ``VecNormalize`` statistics (only with normalisation)."""
        return self.path / files.VECNORMALIZE_FILE

    @property
    def reward_model_path(self) -> Path:
        """The learned reward model (learned arm)."""
        return self.path / files.REWARD_MODEL_FILE

    @property
    def labels_path(self) -> Path:
        """The labels the reward model was trained on, as exchange JSON lines (learned arm)."""
        return self.path / files.LABELS_FILE

    @property
    def logs_dir(self) -> Path:
        """SB3's csv and tensorboard logs of the run's first session."""
        return self.path / files.LOGS_DIR

    @property
    def progress_path(self) -> Path:
        """SB3's ``progress.csv`` of the run's first session (see :meth:`progress_files`)."""
        return self.logs_dir / files.PROGRESS_FILE

    @property
    def checkpoint_path(self) -> Path:
        """The checkpoint (current format) a killed run resumes from."""
        return self.path / files.CHECKPOINT_FILE

    @property
    def legacy_checkpoint_path(self) -> Path:
        """The checkpoint of the old pickle format (run-dir layout 1)."""
        return self.path / files.LEGACY_CHECKPOINT_FILE

    def resumed_logs_dir(self, step: int) -> Path:
        """Where a session resumed at ``step`` logs."""
        return resumed_logs_dir(self.path, step)

    # ----------------------------------------------------------------- state

    @property
    def is_finished(self) -> bool:
        """The run ended (it wrote ``summary.json``): it is never resumed."""
        return self.summary_path.is_file()

    @property
    def has_checkpoint(self) -> bool:
        """A checkpoint of either format is there (whether it is read is :meth:`read_checkpoint`'s call)."""
        return self.checkpoint_path.is_file() or self.legacy_checkpoint_path.is_file()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory for this process (see :func:`prefrl.rundir.lock.run_dir_lock`).

        :raises PrefrlError: another process holds it
        """
        from prefrl.rundir.lock import run_dir_lock

        with run_dir_lock(self.path):
            yield

    # ----------------------------------------------------------------- readers

    def read_config(self) -> dict[str, Any]:
        """``config.json`` as it is.

        :raises OSError: no or unreadable file
        :raises ValueError: not JSON
        """
        return json.loads(self.config_path.read_text())

    def read_summary(self) -> dict[str, Any]:
        """``summary.json`` as it is.

        :raises OSError: no or unreadable file (the run has not finished)
        :raises ValueError: not JSON
        """
        return json.loads(self.summary_path.read_text())

    def load_preset(self) -> tuple[dict[str, Any], Preset]:
        """``(config.json, the Preset the run was made with)``.

        :raises PrefrlError: no or unreadable ``config.json``
        """
        from prefrl.config.loading import preset_from_dict

        path = self.config_path
        try:
            config = self.read_config()
            preset = preset_from_dict(config["preset"], source=str(path))
        except FileNotFoundError:
            raise PrefrlError(f"'{self.path}' is not a run directory (no {files.CONFIG_FILE}); give a folder written "
                              "by `prefrl train`") from None
        except (ValueError, KeyError) as exc:
            raise PrefrlError(f"{path} is unreadable ({exc}); give a folder written by `prefrl train`") from None
        return config, preset

    def eval_curve(self) -> EvalCurve:
        """The evaluation curve.

        :raises OSError: no or unreadable ``eval.csv``
        :raises ValueError, KeyError: a malformed row
        """
        steps, returns = [], []
        with open(self.eval_path, newline="") as fh:
            for row in csv.DictReader(fh):
                steps.append(int(row["step"]))
                returns.append(float(row["mean_true_return"]))
        return EvalCurve(steps=np.asarray(steps), true_returns=np.asarray(returns))

    def progress_files(self) -> list[tuple[int, Path]]:
        """Each session's ``progress.csv`` with the step it started at (:func:`~prefrl.rundir.progress.progress_files`)."""
        return progress_files(self.path)

    def newest_progress(self) -> tuple[int, dict[str, str]] | None:
        """A live run's newest numbers (:func:`~prefrl.rundir.progress.newest_progress`)."""
        return newest_progress(self.path)

    def labels(self) -> list[ExchangedLabel]:
        """The labels a finished learned-arm run was trained on.

        :raises PrefrlError: no ``labels.jsonl`` (a true-reward run, or not finished) or a malformed one
        """
        from prefrl.feedback.exchange import read_labels

        return read_labels(self.labels_path)

    def read_checkpoint(self, *, trust_old_checkpoint: bool = False) -> dict[str, Any] | None:
        """The checkpoint (:func:`~prefrl.rundir.checkpoint_files.read_checkpoint`), None without one."""
        from prefrl.rundir.checkpoint_files import read_checkpoint

        return read_checkpoint(self.path, trust_old_checkpoint=trust_old_checkpoint)

    # ----------------------------------------------------------------- models

    def check_policy(self) -> None:
        """:raises PrefrlError: the run has no ``policy.zip`` (cheap: call before building envs)"""
        if not self.policy_path.is_file():
            raise PrefrlError(f"'{self.path}' has no {files.POLICY_FILE}; is the run finished? "
                              "(`prefrl train` writes it at the end)")

    def load_agent(self, env: gym.Env) -> Agent:
        """The finished run's PPO agent, with its ``VecNormalize`` statistics frozen.

        :param env: the task's env (only its spaces are used)
        :raises PrefrlError: no or unreadable ``policy.zip``
        """
        from stable_baselines3 import PPO
        from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

        self.check_policy()
        try:
            model = PPO.load(self.policy_path, device="cpu")
        except Exception as exc:  # noqa: BLE001 - SB3 raises many types for a bad file
            raise PrefrlError(f"cannot load policy {self.policy_path}: {exc}") from None
        statistics = None
        if self.vecnormalize_path.is_file():
            statistics = VecNormalize.load(str(self.vecnormalize_path), DummyVecEnv([lambda: env]))
            statistics.training = False
        return Agent(model=model, statistics=statistics)

    def load_reward_model(self, observation_space: gym.Space | None = None, action_space: gym.Space | None = None,
                          settings: RewardSettings | None = None) -> RewardModel:
        """The run's learned reward model (learned arm).

        Given the spaces and settings of the task it is meant for, the model is built from
        them and the checkpoint must fit them; else from the checkpoint alone.

        :raises PrefrlError: no, unreadable or unfitting ``reward_model.pt``
        """
        from prefrl.reward.model import RewardModel

        if not self.reward_model_path.is_file():
            raise PrefrlError(f"'{self.path}' has no {files.REWARD_MODEL_FILE}; only a finished learned-reward run has one")
        if observation_space is None or action_space is None or settings is None:
            return RewardModel.from_checkpoint(self.reward_model_path)
        model = RewardModel(observation_space, action_space, settings, seed=0)
        model.load(self.reward_model_path)
        return model


def find_finished_runs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Finished run directories among ``paths`` or below them (any folder with ``summary.json``).

    :raises PrefrlError: a path does not exist, or no finished run is found
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise PrefrlError(f"run directory '{path}' does not exist; give a folder written by `prefrl train`")
        if RunDir(path).is_finished:
            found.append(path)
        else:
            found.extend(sorted(p.parent for p in path.rglob(files.SUMMARY_FILE)))
    if not found:
        raise PrefrlError(f"no finished runs ({files.SUMMARY_FILE}) in {', '.join(map(str, paths))}; train some first")
    return sorted(set(found))
