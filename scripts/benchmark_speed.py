"""Throughput of the learned-reward pipeline against plain SB3 PPO on the true reward.

For each task, in one process and alternating (true, learned, true, learned, ...: machine
load drifts, alternation spreads it over both arms), the same PPO hyperparameters and
step count run through the real ``prefrl.training.run.train`` path:

- ``true``: PPO on the true reward (what plain SB3 does, with the suite's env chain);
- ``learned``: the full pipeline with a synthetic teacher: segment recording, the
  learned-reward wrapper, relabelling, query selection, labelling into the label store
  and reward fitting, at the preset's label rate (the schedule of a full run, so the
  benchmark window sees the labels a run sees over its first steps).

Throughput is env steps per second of PPO's ``learn`` (setup, pretraining, the wait for
the refit started at the last update point, once per run, and the final save are not
counted; that wait is reported beside). Besides the ratio it reports the CPU time of
both arms, the reward model's training throughput (preference pairs per second of one
epoch, on the fitting thread's torch threads), the ensemble's inference cost per
vectorised step (step by step and a whole rollout at once), and what the preset's own
fitting workload costs per update compared with PPO's time between updates.
``--atari-envs`` also times Atari vector envs and checks ale-py's frames against ours.

Usage::

    python scripts/benchmark_speed.py                       # pong and halfcheetah, ~15 min
    python scripts/benchmark_speed.py --tasks halfcheetah --steps 20480 --repeats 3
    python scripts/benchmark_speed.py --relabel step --fit inline   # the unoptimised pipeline
    python scripts/benchmark_speed.py --atari-envs --out docs/speed.md

Per-task settings of the window (printed with the results) live in ``TASK_DEFAULTS``;
``--set task:section.key=value`` adds more.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prefrl.config.loading import load_preset
from prefrl.config.settings import Preset
from prefrl.data.segments import ClipPair, Segment
from prefrl.envs.factory import make_env
from prefrl.feedback.choices import Choice, Preference
from prefrl.reward.model import RewardModel
from prefrl.reward.trainer import evaluation_sizes, refit_minibatches
from prefrl.rundir import RunPaths
from prefrl.training.run import train
from prefrl.util.threads import NICE_VARIABLE, background_nice

#: Window settings per task: steps and repeats of each arm, and overrides of the learned
#: arm's preset. Every override is printed beside the results.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "pong": {
        # Two update points of the preset (every 10,240 steps): one lagged refit runs
        # beside PPO over a whole interval inside the window.
        "steps": 20480,
        "repeats": 2,
        # Pretraining happens before PPO's learn (not timed) and would take most of an
        # hour on a CPU (200 epochs of the CNN on 500 labels): the window starts from the
        # initial labels untrained. Every refit is the preset's own (8 frames per clip,
        # at most reward.max_pairs_per_update pairs).
        "learned": ["labels.pretrain_epochs=0"],
    },
    # Short runs, more of them: HalfCheetah's ratio is close to 1 and machine load is noisy.
    "halfcheetah": {"steps": 10240, "repeats": 4, "learned": []},
}
#: Evaluation is outside the comparison: one 1-step episode at the start and end.
EVAL_OFF = ["eval.every_steps=1000000000", "eval.episodes=1", "eval.max_episode_steps=1"]
TARGETS = {"pong": 0.90, "halfcheetah": 0.95}


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, str]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "load": f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


# --------------------------------------------------------------------------- the arms


def window_overrides(preset: Preset, steps: int) -> list[str]:
    """Overrides that keep the full run's label schedule over a window of ``steps``.

    The schedule's target is ``initial + (budget - initial) * ln(1 + T/c) / ln(1 +
    total/c)``: with ``total = steps`` the budget is scaled by the ratio of the logs,
    so the window asks for the labels a full run asks for in its first ``steps``.
    """
    lab, total = preset.labels, preset.ppo.total_steps
    share = math.log1p(steps / lab.rate_constant) / math.log1p(total / lab.rate_constant)
    budget = lab.initial_labels + math.ceil((lab.budget - lab.initial_labels) * share)
    return [f"ppo.total_steps={steps}", f"labels.budget={max(budget, lab.initial_labels, 1)}"]


def run_arm(task: str, arm: str, steps: int, extra: list[str], root: Path, index: int,
            args: argparse.Namespace) -> dict[str, Any]:
    base = load_preset(task)
    overrides = EVAL_OFF + window_overrides(base, steps) + (extra if arm == "learned" else [])
    preset = load_preset(task, overrides)
    run_dir = root / f"{task}_{arm}_{index}"
    summary = train(
        preset, arm=arm, seed=args.seed + index, paths=RunPaths(run_dir, run_dir / "clips"), progress=False,
        relabel=args.relabel, fit=args.fit, fit_threads=args.fit_threads,
    )
    result = {
        "arm": arm, "steps": int(summary["env_steps"]), "seconds": float(summary["learn_seconds"]),
        "labels": int(summary["labels_used"]), "cpu": float(summary["learn_cpu_seconds"]),
    }
    result["rate"] = result["steps"] / result["seconds"]
    if arm == "learned":
        result["fit"] = summary["reward_fitting"]
        result["relabel_seconds"] = summary["relabel"]["seconds"]
    torch.set_num_threads(args.ppo_threads_restore)
    return result


# --------------------------------------------------------------------------- reward model costs


def _random_prefs(rng: np.random.Generator, n: int, length: int, obs_space, act_space) -> list[Preference]:
    def segment() -> Segment:
        if obs_space.dtype == np.uint8:
            obs = rng.integers(0, 256, size=(length, *obs_space.shape), dtype=np.uint8)
        else:
            obs = rng.normal(size=(length, *obs_space.shape)).astype(np.float32)
        actions = np.stack([act_space.sample() for _ in range(length)])
        return Segment(obs, actions, rng.normal(size=length).astype(np.float32), np.zeros(length, bool))

    return [Preference(ClipPair(segment(), segment()), Choice.LEFT if rng.random() < 0.5 else Choice.RIGHT)
            for _ in range(n)]


def refit_workload(preset: Preset, kept: int) -> tuple[float, int]:
    """Pairs trained per member and frames evaluated in one refit of ``kept`` labels
    (the same rules as ``RewardModel.train``)."""
    r = preset.reward
    n_val = round(kept * r.validation_fraction)
    n_train = kept - n_val
    steps = refit_minibatches(n_train, r.epochs_per_update, r.batch_size, r.max_pairs_per_update)
    pairs = float(min(steps * r.batch_size, r.epochs_per_update * n_train))
    in_bag, held_out = evaluation_sizes(n_train, n_val, r.batch_size)
    return pairs, (held_out + in_bag) * 2 * preset.task.clip_length


def reward_costs(preset: Preset, threads: int, quick: bool) -> dict[str, float]:
    """Training pairs/s of one epoch, inference ms per vectorised step, renormalisation s."""
    env = make_env(preset)
    obs_space, act_space = env.observation_space, env.action_space
    act_space.seed(0)
    env.close()
    image = obs_space.dtype == np.uint8
    rng = np.random.default_rng(0)
    settings = dataclasses.replace(preset.reward, validation_fraction=0.0)
    n_pairs = (32 if quick else 64) if image else 512
    prefs = _random_prefs(rng, n_pairs, preset.task.clip_length, obs_space, act_space)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = RewardModel(obs_space, act_space, settings, seed=0)
        model.add_preferences(prefs)
        model.train(1)  # warm-up
        epoch = min(model.train(1)["fit_seconds"] for _ in range(2))
        out = {"pairs_per_s": model.n_train / epoch}
        n_envs, n_steps = preset.ppo.n_envs, preset.ppo.n_steps
        if image:
            obs = rng.integers(0, 256, size=(n_steps * n_envs, *obs_space.shape), dtype=np.uint8)
        else:
            obs = np.stack([obs_space.sample() for _ in range(n_steps * n_envs)])
        acts = np.stack([act_space.sample() for _ in range(n_steps * n_envs)])
        model.predict(obs[:n_envs], acts[:n_envs])
        best_step = best_batch = math.inf
        for _ in range(2):
            start = time.perf_counter()
            for i in range(0, len(obs), n_envs):
                model.predict(obs[i : i + n_envs], acts[i : i + n_envs])
            best_step = min(best_step, time.perf_counter() - start)
            start = time.perf_counter()
            model.predict(obs, acts)
            best_batch = min(best_batch, time.perf_counter() - start)
        out["predict_step_ms"] = 1000 * best_step / n_steps
        out["predict_rollout_ms"] = 1000 * best_batch / n_steps
        # The fit's fixed part: normalisation and segment returns on 256 recent segments.
        segments = [p.pair.left for p in prefs] * max(1, 256 // len(prefs))
        start = time.perf_counter()
        model.normalize_on_segments(segments[:256])
        out["renormalize_s"] = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    return out


# --------------------------------------------------------------------------- Atari envs

GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])  # gymnasium's GrayscaleObservation


def gray_lut() -> np.ndarray:
    """uint8 gray of every 24-bit RGB colour, computed exactly as GrayscaleObservation
    does (float64 weighted sum, truncated): max-pooled frames can hold any colour."""
    lut = np.empty(1 << 24, np.uint8)
    g, b = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    for r in range(256):
        rgb = np.stack([np.full_like(g, r), g, b], axis=-1)
        lut[r << 16 : (r + 1) << 16] = np.sum(np.multiply(rgb, GRAY_WEIGHTS), axis=-1).astype(np.uint8).reshape(-1)
    return lut


def atari_envs(steps: int) -> tuple[list[tuple[str, str, str]], str]:
    """Agent steps/s of 8 Pong envs with random actions: our wrapper chain in SB3's
    DummyVecEnv and SubprocVecEnv, prefrl's ``AleVectorEnv`` (the same env on the
    emulators directly), and ale-py's C++ ``AtariVectorEnv``, natively (its
    own resize: the score mask cannot be applied to the raw frame) and as RGB frames
    that get our mask, grayscale, resize and stack in numpy. Also checks that the latter
    gives our chain's frames exactly (no-op starts off on both sides, same actions)."""
    import cv2
    from ale_py.vector_env import AtariVectorEnv

    from prefrl.envs.ale_vec_env import make_ale_vec_env
    from prefrl.envs.vec_env import make_vec_env

    preset = load_preset("pong")
    task = preset.task
    n = preset.ppo.n_envs
    rows = []
    lut = gray_lut()

    def time_it(step, reset) -> float:
        reset()
        rng = np.random.default_rng(0)
        for _ in range(10):
            step(rng.integers(0, 6, n))
        start = time.perf_counter()
        for _ in range(steps):
            step(rng.integers(0, 6, n))
        return steps * n / (time.perf_counter() - start)

    def preprocess(frames: np.ndarray, exact: str) -> np.ndarray:
        """(k, 210, 160, 3) RGB -> (k, 84, 84): mask, gray, resize as our chain does."""
        frames = frames.copy()
        for top, bottom, left, right in task.mask_regions:
            frames[:, top:bottom, left:right] = 0
        if exact == "lut":
            keys = (frames[..., 0].astype(np.int32) << 16) | (frames[..., 1].astype(np.int32) << 8) | frames[..., 2]
            gray = lut[keys]
        else:
            gray = np.sum(np.multiply(frames, GRAY_WEIGHTS), axis=-1).astype(np.uint8)
        return np.stack([cv2.resize(g, (task.screen_size,) * 2, interpolation=cv2.INTER_AREA) for g in gray])

    for kind in ("dummy", "subproc"):
        p = dataclasses.replace(preset, ppo=dataclasses.replace(preset.ppo, vec_env=kind))
        venv = make_vec_env(p, n, 0)
        rate = time_it(venv.step, venv.reset)
        venv.close()
        rows.append((f"our chain, SB3 {kind}", "yes (the reference)", f"{rate:,.0f}"))
    # The whole training env (fixed horizon, restarts, penalty, Monitor) on the emulators
    # directly; tests/test_ale_vec_env.py checks it against the chain step by step.
    venv = make_ale_vec_env(preset, n, 0)
    rate = time_it(venv.step, venv.reset)
    venv.close()
    rows.append(("prefrl AleVectorEnv (ppo.vec_env = \"ale\"): one ALE per env, gray lookup table, numpy",
                 "yes, and rewards, dones, infos, no-op starts, seeding, checkpoints (tested)", f"{rate:,.0f}"))
    for threads in (1, 2):
        common = dict(num_threads=threads, noop_max=task.noop_max, reward_clipping=False, use_fire_reset=False,
                      autoreset_mode="SameStep", frameskip=task.frame_skip, repeat_action_probability=0.0)
        env = AtariVectorEnv("pong", n, **common)
        rate = time_it(env.step, lambda: env.reset(seed=0))
        env.close()
        rows.append((f"AtariVectorEnv, own 84x84 gray stack 4, {threads} thread(s)",
                     "no: frames are resized in C++ before any mask could apply", f"{rate:,.0f}"))
        for exact in ("formula", "lut"):
            env = AtariVectorEnv("pong", n, img_height=210, img_width=160, grayscale=False, stack_num=1, **common)
            stack = np.zeros((n, task.frame_stack, task.screen_size, task.screen_size), np.uint8)

            def step(actions, env=env, stack=stack, exact=exact):
                frames = env.step(actions)[0].reshape(n, 210, 160, 3)
                stack[:, :-1] = stack[:, 1:]
                stack[:, -1] = preprocess(frames, exact)
                return stack

            rate = time_it(step, lambda env=env: env.reset(seed=0))
            env.close()
            how = "gymnasium's grayscale formula" if exact == "formula" else "a 24-bit gray lookup table"
            rows.append((f"AtariVectorEnv RGB + mask, {how}, resize, stack in numpy, {threads} thread(s)",
                         "frames yes (checked below); fixed horizon, restarts, penalty, Monitor not ported",
                         f"{rate:,.0f}"))

    # Same frames? No-op starts off on both sides (their random streams differ), same actions.
    ours = make_env(load_preset("pong", ["task.noop_max=0"]))
    obs, _ = ours.reset(seed=0)
    ale = AtariVectorEnv("pong", 1, num_threads=1, noop_max=0, reward_clipping=False, use_fire_reset=False,
                         autoreset_mode="SameStep", img_height=210, img_width=160, grayscale=False, stack_num=1,
                         frameskip=task.frame_skip, repeat_action_probability=0.0)
    raw, _ = ale.reset(seed=0)
    same = [np.array_equal(preprocess(raw.reshape(1, 210, 160, 3), "lut")[0], obs[-1])]
    rng = np.random.default_rng(0)
    for _ in range(300):
        action = int(rng.integers(0, 6))
        obs = ours.step(action)[0]
        raw = ale.step(np.array([action]))[0]
        same.append(np.array_equal(preprocess(raw.reshape(1, 210, 160, 3), "lut")[0], obs[-1]))
    ours.close()
    ale.close()
    check = f"{sum(same)} of {len(same)} frames (reset + 300 random steps) identical to our chain's"
    return rows, check


# --------------------------------------------------------------------------- report


def fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:,.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["pong", "halfcheetah"])
    parser.add_argument("--steps", type=int, default=0, help="env steps per run (0: per-task default)")
    parser.add_argument("--repeats", type=int, default=0, help="runs per arm, alternating (0: per-task default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--relabel", choices=("rollout", "step"), default="rollout")
    parser.add_argument("--fit", choices=("background", "inline", "lagged"), default=None,
                        help="reward fitting of the learned arm (default: each preset's reward.fit_mode)")
    parser.add_argument("--fit-threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="TASK:KEY=VALUE",
                        help="extra override of the learned arm of a task, e.g. pong:reward.epochs_per_update=2")
    parser.add_argument("--atari-envs", action="store_true", help="also time Atari vector envs")
    parser.add_argument("--quick", action="store_true", help="smaller reward-model and env measurements")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    args.ppo_threads_restore = torch.get_num_threads()

    started = machine()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines: list[str] = []

    def emit(text: str = "") -> None:
        lines.append(text)
        print(text, flush=True)

    emit("# Pipeline speed: learned-reward PPO against plain PPO")
    emit()
    emit(f"- machine: {started['cores']} cores, {started['cpu']}; Python {started['python']}, torch {started['torch']}")
    emit(f"- date: {datetime.now().isoformat(timespec='minutes')}")
    emit(f"- command: `{command}`")
    emit(f"- learned arm: relabel `{args.relabel}`, reward fitting `{args.fit or 'the preset reward.fit_mode'}` "
         f"({args.fit_threads} torch thread{'s' if args.fit_threads > 1 else ''} when in the background; "
         f"background threads at nice +{background_nice()}, `{NICE_VARIABLE}`)")
    emit(f"- load average (1/5/15 min) at start: {started['load']}")
    emit()

    results: dict[str, list[dict[str, Any]]] = {}
    extra_by_task: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="prefrl-speed-") as tmp:
        root = Path(tmp)
        for task in args.tasks:
            defaults = TASK_DEFAULTS.get(task, {"steps": 10240, "repeats": 2, "learned": []})
            steps = args.steps or defaults["steps"]
            extra = list(defaults["learned"]) + [s.split(":", 1)[1] for s in args.set if s.split(":", 1)[0] == task]
            extra_by_task[task] = extra
            results[task] = []
            for rep in range(args.repeats or defaults["repeats"]):
                for arm in ("true", "learned"):
                    res = run_arm(task, arm, steps, extra, root, rep, args)
                    results[task].append(res)
                    print(f"  {task} {arm} #{rep + 1}: {res['steps']} steps in {res['seconds']:.1f} s = "
                          f"{res['rate']:.1f} steps/s", file=sys.stderr, flush=True)

    emit("## Throughput (env steps per second of PPO's learn, each run)")
    emit()
    emit("| task | steps per run | plain PPO (true reward), steps/s | learned pipeline, steps/s | "
         "ratio: median of back-to-back pairs (each pair) | target | met | CPU s per 1k steps, true / learned |")
    emit("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for task, runs in results.items():
        true = [r["rate"] for r in runs if r["arm"] == "true"]
        learned = [r["rate"] for r in runs if r["arm"] == "learned"]
        # Pairwise (true_i, learned_i) ratios: each pair ran back to back.
        pair_ratios = [lr / tr for tr, lr in zip(true, learned)]
        # The median: a load spike from another process hits one run of a pair.
        ratio = float(np.median(pair_ratios))

        def cpu_per_k(arm: str, runs=runs) -> float:
            chosen = [r for r in runs if r["arm"] == arm]
            return 1000 * sum(r["cpu"] for r in chosen) / sum(r["steps"] for r in chosen)

        target = TARGETS.get(task)
        met = ("yes" if ratio >= target else "no") if target else "-"
        emit(f"| {task} | {runs[0]['steps']:,} | {', '.join(fmt(x) for x in true)} | "
             f"{', '.join(fmt(x) for x in learned)} | {ratio:.3f} ({', '.join(f'{x:.3f}' for x in pair_ratios)}) | "
             f"{'≥ %.2f' % target if target else '-'} | {met} | {cpu_per_k('true'):.1f} / {cpu_per_k('learned'):.1f} |")
    emit()
    emit("## Where the learned arm's time goes (mean over its runs)")
    emit()
    emit("| task | learn s | relabel s (Atari: includes waiting for a background fit) | reward fits | fitting s | "
         "main thread waited for fits during learn, s | "
         "wait for the last fit after learn, s | labels used | learned-arm overrides |")
    emit("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for task, runs in results.items():
        learned_runs = [r for r in runs if r["arm"] == "learned"]
        mean = lambda key: float(np.mean([r[key] for r in learned_runs]))  # noqa: E731
        fit_mean = lambda key: float(np.mean([r["fit"][key] for r in learned_runs]))  # noqa: E731
        relabel = [r["relabel_seconds"] for r in learned_runs if r["relabel_seconds"] is not None]
        emit(f"| {task} | {fmt(mean('seconds'))} | {fmt(float(np.mean(relabel)), 2) if relabel else 'per step'} | "
             f"{fit_mean('fits'):.1f} | {fmt(fit_mean('fit_seconds'))} | {fmt(fit_mean('agent_waited_seconds'))} | "
             f"{fmt(fit_mean('final_wait_seconds'))} | "
             f"{mean('labels'):.0f} | {'; '.join(f'`{o}`' for o in extra_by_task[task]) or 'none'} |")
    emit()

    emit(f"## Reward model costs (torch threads: {args.fit_threads}, the fitting thread's)")
    emit()
    emit("| task | ensemble | training, pairs/s per epoch | inference ms per vec step, step by step | "
         "inference ms per vec step, whole rollout at once | PPO ms per vec step (true arm) | "
         "renormalise on 256 segments, s |")
    emit("| --- | --- | --- | --- | --- | --- | --- |")
    costs: dict[str, dict[str, float]] = {}
    for task, runs in results.items():
        preset = load_preset(task)
        c = reward_costs(preset, args.fit_threads, args.quick)
        costs[task] = c
        true_rate = float(np.mean([r["rate"] for r in runs if r["arm"] == "true"]))
        ppo_ms = 1000 * preset.ppo.n_envs / true_rate
        r = preset.reward
        net = (f"{r.architecture} x{r.ensemble_size}, {r.frames_per_clip or preset.task.clip_length} of "
               f"{preset.task.clip_length} frames, batch {r.batch_size}")
        emit(f"| {task} | {net} | {fmt(c['pairs_per_s'])} | {fmt(c['predict_step_ms'], 2)} | "
             f"{fmt(c['predict_rollout_ms'], 2)} | {fmt(ppo_ms, 1)} | {fmt(c['renormalize_s'], 1)} |")
    emit()

    emit("## The preset's own refit workload against PPO's time between refits")
    emit()
    emit("Pairs per refit = `epochs_per_update` x training labels (1 - 1/e of the kept labels), at most "
         "`max_pairs_per_update` (rounded up to whole minibatches); seconds at the measured training rate "
         "(preset's frames per clip), plus the evaluation on held-out and in-bag pairs (all frames, at the "
         "measured batched inference rate) and the renormalisation; PPO's seconds between refits = "
         "`update_every_steps` / plain PPO steps/s. A background refit is free while it takes less than "
         "PPO's time between refits and a core is free for it.")
    emit()
    emit("| task | when | labels kept | pairs per refit | train s | evaluate s | refit s | PPO s between refits "
         "| fits beside PPO |")
    emit("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for task, runs in results.items():
        preset = load_preset(task)
        true_rate = float(np.mean([r["rate"] for r in runs if r["arm"] == "true"]))
        interval = preset.labels.update_every_steps / true_rate
        kept_end = preset.labels.budget if preset.reward.label_buffer_size <= 0 else min(
            preset.labels.budget, preset.reward.label_buffer_size)
        for when, kept in (("start", preset.labels.initial_labels), ("end", kept_end)):
            pairs, eval_frames = refit_workload(preset, kept)
            train_s = pairs / costs[task]["pairs_per_s"]
            eval_s = eval_frames * costs[task]["predict_rollout_ms"] / 1000 / preset.ppo.n_envs
            seconds = train_s + eval_s + costs[task]["renormalize_s"]
            emit(f"| {task} | {when} of run | {kept:,} | {pairs:,.0f} | {fmt(train_s)} | {fmt(eval_s)} | "
                 f"{fmt(seconds)} | {fmt(interval)} | "
                 f"{'yes' if seconds < interval else f'no ({seconds / interval:.1f}x)'} |")
    emit()
    emit("The training rate is measured with the task's own reward settings (Pong: 8 of 25 frames "
         "per clip unless `--set` changes the preset); the window above refits with the same settings "
         "(its overrides are listed).")
    emit()

    if args.atari_envs:
        emit("## Atari vector envs: 8 Pong envs, random actions")
        emit()
        emit("| env | same observations as the suite's chain | agent steps/s |")
        emit("| --- | --- | --- |")
        rows, check = atari_envs(200 if args.quick else 500)
        for row in rows:
            emit(f"| {' | '.join(row)} |")
        emit()
        emit(f"AtariVectorEnv RGB frames with our masking and preprocessing: {check}.")
        emit()

    ended = machine()
    emit(f"Load average (1/5/15 min) at the end: {ended['load']}. Other processes on the machine "
         "slow every figure; runs alternate so that both arms share the drift.")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
