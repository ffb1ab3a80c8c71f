"""Which behaviour does a learned reward prefer? Score finished runs' agents with learned rewards.

Rolls out the final policy of each given run (both arms; the run's own
``eval.deterministic``) and prints, per run: the mean true return and episode length under
the task's evaluation rules (the protocol's measure), and, on episodes of the training
env's fixed horizon (what the reward model was fitted on and PPO optimised; a fall costs
``task.termination_penalty`` there and the episode goes on), the teacher's return and the
mean learned return under each judge's reward model. A fixed horizon matters: under the
evaluation rules an agent that falls early has shorter episodes, so a learned reward with
a negative mean would rank it higher for being short. It separates
two reasons for a learned-arm run that ends below its true arm: its reward model ranks
the better behaviour lower (a reward problem), or it ranks it higher and PPO did not
find it (an optimisation problem).

Learned rewards are normalised per model (mean 0, std ``reward.output_std`` on recent
segments), so compare the rows of one judge's column, not one judge with another.
Vector-observation tasks (MuJoCo, classic); the runs' folders need ``policy.zip``.

Usage::

    python scripts/reward_ranks_policies.py runs/bq_swim1m/swimmer/1000000steps/*/seed*
    python scripts/reward_ranks_policies.py RUN... --judges RUN --episodes 5
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from prefrl.envs.factory import make_env
from prefrl.reward.model import RewardModel
from prefrl.rundir import RunDir
from prefrl.rundir.files import POLICY_FILE, REWARD_MODEL_FILE
from prefrl.util.errors import PrefrlError

Policy = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Episode:
    """One evaluation episode: raw observations ``(T, *obs_shape)`` (what the reward model
    reads), actions ``(T, *action_shape)`` and the true return."""

    observations: np.ndarray
    actions: np.ndarray
    true_return: float


def rollout(env: gym.Env, policy: Policy, episodes: int, seed: int) -> list[Episode]:
    """``episodes`` episodes of ``policy`` in ``env``, episode ``i`` reset with ``seed + i``.

    :param env: the task's evaluation env
    :param policy: raw observation -> action
    """
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        observations, actions, total, done = [], [], 0.0, False
        while not done:
            action = policy(obs)
            observations.append(obs)
            actions.append(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        out.append(Episode(np.asarray(observations, np.float32), np.asarray(actions, np.float32), total))
    return out


def learned_return(model: RewardModel, episodes: list[Episode]) -> float:
    """Mean over ``episodes`` of the summed learned reward (ensemble mean)."""
    return float(np.mean([model.predict(e.observations, e.actions).sum() for e in episodes]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="finished runs of one task (folders with policy.zip)")
    p.add_argument("--judges", type=Path, nargs="+",
                   help="runs whose reward_model.pt scores the episodes (default: every given run that has one)")
    p.add_argument("--episodes", type=int, default=3, help="evaluation episodes per run")
    p.add_argument("--seed", type=int, default=100, help="first episode's reset seed (the same for every run)")
    args = p.parse_args(argv)
    try:
        if args.episodes < 1:
            raise PrefrlError(f"--episodes {args.episodes} is invalid: give at least 1")
        presets = {run: RunDir(run).load_preset()[1] for run in args.runs}
        for run in args.runs:  # all checked before the first, slow, rollout
            if not RunDir(run).policy_path.is_file():
                raise PrefrlError(f"'{run}' has no {POLICY_FILE}; give finished runs (`prefrl train` writes it at the end)")
        env_ids = {preset.task.env_id for preset in presets.values()}
        if len(env_ids) > 1:
            raise PrefrlError(f"the runs are of several tasks ({', '.join(sorted(env_ids))}); give runs of one task")
        env_id = env_ids.pop()
        judge_dirs = args.judges or [run for run in args.runs if RunDir(run).reward_model_path.is_file()]
        if not judge_dirs:
            raise PrefrlError(f"none of the runs has a {REWARD_MODEL_FILE}; give a learned-arm run with --judges")
        judges = {}
        for run in judge_dirs:
            if not RunDir(run).reward_model_path.is_file():
                raise PrefrlError(f"'{run}' has no {REWARD_MODEL_FILE}; give learned-arm runs with --judges")
            judge_env = RunDir(run).load_preset()[1].task.env_id
            if judge_env != env_id:
                raise PrefrlError(f"judge '{run}' is a {judge_env} run, the runs are {env_id}; give a judge of the same task")
            judges[run] = RunDir(run).load_reward_model()
            if len(judges[run].observation_shape) != 1:
                raise PrefrlError(f"'{run}': image observations; this probe takes vector-observation tasks")
    except PrefrlError as exc:
        print(f"reward_ranks_policies: error: {exc}", file=sys.stderr)
        return 2

    names = [str(run) for run in judges]
    print(f"{env_id}, {args.episodes} episodes per run (reset seeds {args.seed}..{args.seed + args.episodes - 1})")
    for i, name in enumerate(names):
        print(f"judge {i}: {name}")
    width = max(len(str(run)) for run in args.runs)
    print(f"{'run':<{width}}  {'true':>9}  {'length':>7}  {'teacher':>9}  " + "  ".join(f"{f'judge {i}':>9}" for i in range(len(names))))
    for run, preset in presets.items():
        envs = {evaluation: make_env(preset, evaluation=evaluation) for evaluation in (True, False)}
        try:
            # Loaded once: the two envs differ in their rules, not in their spaces.
            policy = RunDir(run).load_agent(envs[True]).policy(preset.eval.deterministic)
            rollouts = {evaluation: rollout(env, policy, args.episodes, args.seed) for evaluation, env in envs.items()}
        finally:
            for env in envs.values():
                env.close()
        true_mean = float(np.mean([e.true_return for e in rollouts[True]]))
        length = float(np.mean([len(e.observations) for e in rollouts[True]]))
        teacher = float(np.mean([e.true_return for e in rollouts[False]]))
        scores = [learned_return(model, rollouts[False]) for model in judges.values()]
        print(f"{str(run):<{width}}  {true_mean:>9.1f}  {length:>7.0f}  {teacher:>9.1f}  "
              + "  ".join(f"{s:>9.1f}" for s in scores), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
