"""What does a run's learned reward pay for? (MuJoCo and classic tasks, offline)

Loads a run's ``reward_model.pt``, takes start states of the task's env (its own reset
distribution), and prints the mean learned reward per step

- with every action set to one value (the same on each action dimension), and
- with one observation dimension at a time set to each of ``--values`` (actions zero),

so that a reward the true task does not have shows up as a number: an action cost the
task never charges, or a preference for one side of the track. The learned reward is
normalised (mean 0, std ``reward.output_std`` on recent segments), so compare rows with
each other, not with the task's reward.

Usage::

    python scripts/reward_sensitivity.py runs/<run>                           # actions -3..3
    python scripts/reward_sensitivity.py runs/<run> --actions -1 0 1 --values -0.2 0 0.2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np

from prefrl.config.settings import Preset
from prefrl.envs.factory import make_env
from prefrl.reward.model import RewardModel
from prefrl.rundir import RunDir
from prefrl.rundir.files import REWARD_MODEL_FILE
from prefrl.util.errors import PrefrlError


def start_states(preset: Preset, n: int, seed: int) -> tuple[gym.Env, np.ndarray]:
    """``n`` observations from the reset distribution of the task's training env (its
    wrapper chain: the observations the reward model saw)."""
    env = make_env(preset)
    rng = np.random.default_rng(seed)
    return env, np.array([env.reset(seed=int(rng.integers(2**31)))[0] for _ in range(n)], dtype=np.float32)


def sensitivity(model: RewardModel, states: np.ndarray, action_shape: tuple[int, ...],
                actions: list[float], values: list[float]) -> tuple[list[float], list[list[float]]]:
    """Mean learned reward for each constant action, and for each observation dimension
    set to each value (with zero actions)."""
    n = len(states)
    by_action = [float(model.predict(states, np.full((n, *action_shape), a, np.float32)).mean()) for a in actions]
    zero = np.zeros((n, *action_shape), np.float32)
    by_dimension = []
    for dim in range(states.shape[1]):
        row = []
        for v in values:
            changed = states.copy()
            changed[:, dim] = v
            row.append(float(model.predict(changed, zero).mean()))
        by_dimension.append(row)
    return by_action, by_dimension


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a finished or checkpointed learned-arm run")
    p.add_argument("--actions", type=float, nargs="+", default=[-3.0, -1.0, 0.0, 1.0, 3.0])
    p.add_argument("--values", type=float, nargs="+", default=[-0.5, -0.2, 0.0, 0.2, 0.5],
                   help="values each observation dimension is set to (raw env units)")
    p.add_argument("--states", type=int, default=2000, help="start states to average over")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        run = RunDir(args.run_dir)
        _, preset = run.load_preset()
        env_id = preset.task.env_id
        checkpoint = run.reward_model_path
        if not checkpoint.is_file():
            raise PrefrlError(f"{args.run_dir}: no {REWARD_MODEL_FILE} there; give a learned-arm run folder")
        model = RewardModel.from_checkpoint(checkpoint)
        if len(model.observation_shape) != 1:
            raise PrefrlError(f"{args.run_dir}: image observations; this probe takes vector-observation tasks")
        env, states = start_states(preset, args.states, args.seed)
        if not isinstance(env.action_space, gym.spaces.Box):
            raise PrefrlError(f"{env_id}: discrete actions; this probe sets continuous action values")
    except PrefrlError as exc:
        print(f"reward_sensitivity: error: {exc}", file=sys.stderr)
        return 2
    by_action, by_dimension = sensitivity(model, states, env.action_space.shape, args.actions, args.values)
    print(f"{env_id}, {args.states} start states, mean learned reward per step")
    print("actions   " + " ".join(f"{a:>+7g}" for a in args.actions))
    print("          " + " ".join(f"{r:>+7.2f}" for r in by_action))
    print("obs dim   " + " ".join(f"{v:>+7g}" for v in args.values))
    for dim, row in enumerate(by_dimension):
        print(f"{dim:<9} " + " ".join(f"{r:>+7.2f}" for r in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
