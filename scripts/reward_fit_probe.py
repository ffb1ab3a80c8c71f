"""Can the reward model learn a task's reward from N rational labels at all? (offline)

No PPO: clips of a policy that acts uniformly at random (scaled by ``--action-scale``)
are paired and labelled by a perfectly rational teacher, the preset's reward model is
fitted as in a run (pretraining on the initial labels, then one refit per
``--labels-per-refit`` new labels, adaptive L2), and the mean member's predicted clip
returns are compared with the true ones on held-out clips.

``--reward-part`` labels by one term of the reward (a key of the env's ``info``, e.g.
``reward_ctrl`` or ``reward_dist`` on Reacher); ``--hide-observations`` zeroes the
observations the model sees (it then learns from the actions alone). These separate
what the network cannot learn from what the agent's behaviour makes hard.

Usage::

    python scripts/reward_fit_probe.py reacher                                # the preset, 700 labels
    python scripts/reward_fit_probe.py reacher --reward-part reward_ctrl
    python scripts/reward_fit_probe.py reacher --reward-part reward_ctrl --hide-observations
    python scripts/reward_fit_probe.py reacher --action-scale 0.3
"""

from __future__ import annotations

import argparse
import sys
import time

import gymnasium as gym
import numpy as np
import torch

from prefrl.config.loading import load_preset
from prefrl.data.segments import ClipPair, Segment
from prefrl.feedback.choices import Choice, Preference
from prefrl.reward.model import RewardModel
from prefrl.util.errors import PrefrlError


def random_clips(env: gym.Env, n: int, length: int, action_scale: float, part: str | None,
                 hide_observations: bool, seed: int) -> list[Segment]:
    """``n`` clips of consecutive steps of a (scaled) uniformly random policy."""
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=int(rng.integers(2**31)))
    clips = []
    while len(clips) < n:
        observations, actions, rewards = [], [], []
        for _ in range(length):
            action = (env.action_space.sample() * action_scale).astype(env.action_space.dtype)
            observations.append(obs)
            actions.append(action)
            obs, reward, terminated, truncated, info = env.step(action)
            if part is not None and part not in info:
                raise PrefrlError(f"--reward-part {part!r} is not in the env's info; "
                                  f"its reward terms: {', '.join(k for k in info if k.startswith('reward'))}")
            rewards.append(info[part] if part is not None else reward)
            if terminated or truncated:
                obs, _ = env.reset(seed=int(rng.integers(2**31)))
        observations = np.array(observations, np.float32)
        if hide_observations:
            observations = np.zeros_like(observations)
        clips.append(Segment(observations, np.array(actions, np.float32), np.array(rewards, np.float32),
                             np.zeros(length, bool)))
    return clips


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", help="a MuJoCo or classic preset, e.g. reacher")
    p.add_argument("--labels", type=int, default=700)
    p.add_argument("--labels-per-refit", type=int, default=20)
    p.add_argument("--test-clips", type=int, default=400)
    p.add_argument("--action-scale", type=float, default=1.0)
    p.add_argument("--reward-part", help="label by this info key instead of the reward, e.g. reward_ctrl")
    p.add_argument("--hide-observations", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    try:
        preset = load_preset(args.task, args.overrides)
        if preset.task.domain == "atari":
            raise PrefrlError(f"task {args.task!r} is an Atari game; the probe takes MuJoCo or classic tasks")
        if args.labels < 2 or args.labels_per_refit < 1 or args.test_clips < 3:
            raise PrefrlError("--labels must be at least 2, --labels-per-refit at least 1, --test-clips at least 3")
        torch.set_num_threads(1)
        env = gym.make(preset.task.env_id)
        length = preset.task.clip_length
        started = time.perf_counter()
        clips = random_clips(env, 2 * args.labels, length, args.action_scale, args.reward_part,
                             args.hide_observations, args.seed)
        test = random_clips(env, args.test_clips, length, args.action_scale, args.reward_part,
                            args.hide_observations, args.seed + 1)
    except PrefrlError as exc:
        print(f"reward_fit_probe: error: {exc}", file=sys.stderr)
        return 2
    prefs = [Preference(ClipPair(a, b), Choice.LEFT if a.true_return > b.true_return else Choice.RIGHT)
             for a, b in zip(clips[::2], clips[1::2])]
    model = RewardModel(env.observation_space, env.action_space, preset.reward, seed=args.seed)
    initial = min(preset.labels.initial_labels, args.labels)
    model.add_preferences(prefs[:initial])
    stats = model.train(preset.labels.pretrain_epochs)
    for start in range(initial, args.labels, args.labels_per_refit):
        model.add_preferences(prefs[start : start + args.labels_per_refit])
        stats = model.train(preset.reward.epochs_per_update, preset.reward.max_pairs_per_update)
    predicted = model.segment_returns(test).mean(axis=0)
    corr = float(np.corrcoef(predicted, [s.true_return for s in test])[0, 1])
    what = args.reward_part or "reward"
    print(f"{preset.task.name}: {args.labels} labels by {what}, actions x{args.action_scale:g}"
          f"{', observations hidden' if args.hide_observations else ''}: held-out accuracy "
          f"{stats['val_accuracy']:.3f}, val/train loss {stats['val_loss'] / stats['train_loss']:.2f}, "
          f"L2 {stats['l2']:.4g}, return correlation on {args.test_clips} test clips {corr:.3f} "
          f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
