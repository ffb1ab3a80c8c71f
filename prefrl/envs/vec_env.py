"""Vectorised task envs: what PPO steps (training) and what evaluation runs on.

Each env of the SB3 chain is ``StatefulEnv(ClipReward?(Monitor(make_env(preset))))``;
``ppo.vec_env = "ale"`` (Atari only) gives the same envs stepped on the emulators
directly (:mod:`prefrl.envs.ale_vec_env`).
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import gymnasium as gym
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from prefrl.config.settings import Preset
from prefrl.envs.factory import make_env
from prefrl.envs.state import StatefulEnv

EnvFactory = Callable[[], gym.Env]


def _env_factory(preset: Preset, evaluation: bool, clip_reward: bool, record_frames: bool) -> EnvFactory:
    def factory() -> gym.Env:
        env = make_env(preset, evaluation=evaluation, record_frames=record_frames)
        # Monitor sits below any reward change, so episode returns it logs are true returns.
        env = Monitor(env)
        if clip_reward:
            env = gym.wrappers.ClipReward(env, -1.0, 1.0)
        # Outermost: hands out the exact env state for run checkpoints (env_method).
        return StatefulEnv(env)

    return factory


def _ignoring_stop_signals(factory: EnvFactory) -> EnvFactory:
    """``factory`` run in a ``SubprocVecEnv`` worker that ignores SIGINT and SIGTERM.

    Ctrl-C (and a group-wide SIGTERM) reaches every process of the group; a worker
    that died of it would take the trainer's chance to finish its rollout and save a
    checkpoint. The trainer stops and closes its workers itself (a worker also exits
    when the trainer dies: its pipe closes)."""

    def in_worker() -> gym.Env:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return factory()

    return in_worker


def make_vec_env(
    preset: Preset,
    n_envs: int,
    seed: int,
    *,
    evaluation: bool = False,
    clip_reward: bool = False,
    record_frames: bool = False,
) -> VecEnv:
    """Vectorised task env, seeded once (env ``i`` gets ``seed + i``).

    :param preset: the task's resolved settings (``ppo.vec_env`` picks the backend)
    :param n_envs: parallel environments
    :param seed: seed of env 0 (and of the action space)
    :param evaluation: the task's real rules instead of the fixed-horizon training env
    :param clip_reward: clip rewards to [-1, 1] (the true arm on Atari)
    :param record_frames: RGB frames for people in ``info["frame"]``
    """
    if preset.ppo.vec_env == "ale":
        # Atari only (prefrl.config.validation): the SB3 chain's envs, stepped on the emulators
        # directly with the frame processing batched (scripts/benchmark_speed.py --atari-envs).
        from prefrl.envs.ale_vec_env import make_ale_vec_env

        return make_ale_vec_env(preset, n_envs, seed, evaluation=evaluation,
                                clip_reward=clip_reward, record_frames=record_frames)
    factories = [_env_factory(preset, evaluation, clip_reward, record_frames) for _ in range(n_envs)]
    if preset.ppo.vec_env == "subproc" and n_envs > 1:
        venv: VecEnv = SubprocVecEnv([_ignoring_stop_signals(factory) for factory in factories])
    else:
        venv = DummyVecEnv(factories)
    venv.seed(seed)
    venv.action_space.seed(seed)
    return venv
