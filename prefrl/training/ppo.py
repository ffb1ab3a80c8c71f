"""The PPO agent: how it is built from the preset, and its state for run checkpoints.

Every access to a private attribute of SB3's PPO lives here, each with the reason: SB3
saves an agent between runs (``model.save``), not in the middle of one, so the counters
and the last observations a run must continue from have no public accessor.
"""

from __future__ import annotations

import copy
from collections import deque
from typing import Any

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv

from prefrl.config.settings import ACTIVATIONS, PPOSettings


def policy_kwargs(ppo: PPOSettings) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` of the preset's PPO, the same for both arms.

    :param ppo: the preset's PPO settings
    """
    kwargs: dict[str, Any] = {
        "log_std_init": ppo.log_std_init, "ortho_init": ppo.ortho_init,
        "activation_fn": getattr(torch.nn, ACTIVATIONS[ppo.activation]),
    }
    if ppo.policy == "MlpPolicy":  # CnnPolicy keeps SB3's heads on the Nature CNN features
        kwargs["net_arch"] = list(ppo.net_arch)
    return kwargs


def make_ppo(ppo: PPOSettings, venv: VecEnv, seed: int, verbose: int = 0) -> PPO:
    """SB3 PPO on ``venv`` with the preset's settings, on the CPU.

    :param ppo: the preset's PPO settings
    :param venv: the training env (its reward is what PPO maximises)
    :param seed: seeds the policy's initialisation and sampling
    :param verbose: SB3 verbosity
    """
    return PPO(
        ppo.policy, venv, n_steps=ppo.n_steps, batch_size=ppo.batch_size, n_epochs=ppo.n_epochs,
        learning_rate=ppo.learning_rate, gamma=ppo.gamma, gae_lambda=ppo.gae_lambda, clip_range=ppo.clip_range,
        ent_coef=ppo.ent_coef, vf_coef=ppo.vf_coef, max_grad_norm=ppo.max_grad_norm,
        policy_kwargs=policy_kwargs(ppo), seed=seed, verbose=verbose, device="cpu",
    )


def ppo_run_state(model: PPO) -> dict[str, Any]:
    """What PPO carries from one rollout to the next, for a run checkpoint taken at a
    rollout start: weights and Adam state, step and update counters, the observations
    and episode starts the next rollout begins from, and the episode statistics.

    :param model: the agent
    """
    return {
        "params": copy.deepcopy(model.get_parameters()),
        "num_timesteps": int(model.num_timesteps),
        # Private: the next rollout starts from these (collect_rollouts reads them).
        "last_obs": copy.deepcopy(model._last_obs),
        "last_episode_starts": copy.deepcopy(model._last_episode_starts),
        "last_original_obs": copy.deepcopy(model._last_original_obs),
        # Private: the logged update count and the learning-rate / clip-range schedules.
        "n_updates": int(model._n_updates),
        "progress_remaining": float(model._current_progress_remaining),
        # Private: episode counter of off-policy logging, kept so the agent is whole.
        "episode_num": int(model._episode_num),
        "ep_info_buffer": list(model.ep_info_buffer or []),
        "ep_success_buffer": list(model.ep_success_buffer or []),
    }


def load_ppo_run_state(model: PPO, state: dict[str, Any]) -> None:
    """Put a :func:`ppo_run_state` into an agent built with the same settings.

    :param model: the agent
    :param state: what :func:`ppo_run_state` returned
    """
    model.set_parameters(state["params"], exact_match=True, device="cpu")
    model.num_timesteps = state["num_timesteps"]
    model._last_obs = state["last_obs"]
    model._last_episode_starts = state["last_episode_starts"]
    model._last_original_obs = state["last_original_obs"]
    model._n_updates = state["n_updates"]
    model._current_progress_remaining = state["progress_remaining"]
    model._episode_num = state["episode_num"]
    # Private: the window SB3 sized these buffers with (stats_window_size).
    model.ep_info_buffer = deque(state["ep_info_buffer"], maxlen=model._stats_window_size)
    model.ep_success_buffer = deque(state["ep_success_buffer"], maxlen=model._stats_window_size)
