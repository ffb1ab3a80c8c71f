"""One training run: PPO on the learned reward (``arm="learned"``) or on the true reward
(``arm="true"``), evaluated on the true return under the task's real rules.

Read top to bottom, :func:`train` is:

1. the run directory: a new run, or an unfinished one to resume (:mod:`prefrl.rundir.resume`);
2. seed everything, build the vectorised env (fixed horizon, Atari score masked);
3. learned arm: record segments of a random policy, ask the teacher about
   ``initial_labels`` pairs, pretrain the reward ensemble on the answers
   (:mod:`.pretraining`); PPO will learn on the ensemble's normalised reward, and every
   ``labels.update_every_steps`` (at a rollout end) new queries are drawn from recent
   segments as the label schedule asks, answers are collected (never waited for) and the
   ensemble is refitted (:class:`~.callbacks.PreferenceCallback`);
4. PPO learns; periodic evaluation episodes measure the true return;
5. the policy, the reward model, the labels and ``summary.json`` land in the run dir.

The true arm skips step 3 and trains the same PPO on the true reward.

Crash safety (:mod:`.checkpointing`): the run directory gets a checkpoint
(``checkpoint/``, data files written atomically) at the start of learning, then at rollout
starts every ``checkpoint_steps`` env steps or ``checkpoint_seconds`` seconds (CLI:
``--checkpoint-every 50000`` or ``10m``, the default), and when SIGINT or SIGTERM asks
the run to stop (it finishes the rollout under way, saves, and exits; a second signal
stops at once). Starting ``train`` again on the directory of an unfinished run (no
``summary.json``) continues it from the checkpoint, and a synthetic-teacher run ends
exactly as it would have without the interruption: same labels, reward weights, policy
and evaluations (:class:`~.checkpointing.RunParts` lists what is kept; MuJoCo, classic
control and Atari envs continue from their exact state). A run started with other
settings is refused with the differing keys unless ``force``. A non-finite observation
or reward (environment or reward model) stops the run without writing a checkpoint of it.

Speed (``scripts/benchmark_speed.py`` measures both against plain PPO):

- ``relabel="rollout"`` (default): the learned reward of a whole rollout is computed in
  one batched ensemble call at the rollout's end
  (:class:`~prefrl.reward.vec_env.RolloutRelabelCallback`); with
  ``ppo.normalize_rewards`` the reward scaling ``VecNormalize`` would apply moves into
  that step, exactly replayed. ``"step"`` is the plain per-step wrapper (same rewards
  within float rounding; kept for comparison and tests).
- ``fit="background"`` (default), ``"inline"`` or ``"lagged"``: where the ensemble is
  refitted (:mod:`prefrl.reward.fitter`); background gives exactly inline's result.
"""

from __future__ import annotations

import copy
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from prefrl.config.settings import Preset
from prefrl.envs.vec_env import make_vec_env
from prefrl.reward.vec_env import DeferredRewardVecNormalize
from prefrl.rundir import RunDir, RunPaths
from prefrl.rundir.checkpoint_files import remove_partial_checkpoints
from prefrl.rundir.paths import default_paths
from prefrl.rundir.resume import open_run_dir, run_config, write_config
from prefrl.training.callbacks import PreferenceCallback, ProgressCallback, TrueReturnEvalCallback
from prefrl.training.checkpointing import (
    CheckpointWriteError,
    Halt,
    NonFiniteError,
    RunCheckpointer,
    RunInterrupted,
    RunParts,
    StopRequest,
)
from prefrl.training.learned_arm import LearnedArm, build_learned_arm
from prefrl.training.options import RunOptions
from prefrl.training.ppo import make_ppo
from prefrl.util.atomic import atomic_write_json
from prefrl.util.errors import PrefrlError
from prefrl.util.threads import background_nice


def train(
    preset: Preset,
    *,
    arm: str = "learned",
    seed: int = 0,
    paths: RunPaths | None = None,
    teacher_kind: str = "synthetic",
    labels_from: Path | None = None,
    progress: bool = True,
    verbose: int = 0,
    relabel: str = "rollout",
    fit: str | None = None,
    fit_threads: int = 1,
    checkpoint_steps: int = 0,
    checkpoint_seconds: float = 600.0,
    force: bool = False,
    trust_old_checkpoint: bool = False,
) -> dict[str, Any]:
    """Train one run and return its summary (also written to ``summary.json``).

    Given the directory of an interrupted run (same settings), the run continues from
    its last checkpoint and ends exactly as it would have without the interruption
    (see :func:`~prefrl.rundir.resume.open_run_dir` and :class:`~.checkpointing.RunParts`).

    :param preset: the task's resolved settings
    :param arm: ``learned`` (PPO on the learned reward) or ``true`` (on the true reward)
    :param seed: seeds the env, PPO, the reward model, the teacher and query selection
    :param paths: run and clips folders (default ``runs/<name>``, ``clips/<name>``)
    :param teacher_kind: who answers the queries (learned arm only): ``synthetic`` or
        ``human`` (a person in ``prefrl label``; training never waits beyond the
        initial labels)
    :param labels_from: train the reward model on the labelled pairs of this clips
        folder only (no queries are asked)
    :param progress: show a progress bar
    :param verbose: SB3 verbosity
    :param relabel: learned arm: ``rollout`` (one batched reward-model call per rollout)
        or ``step`` (one per vectorised step); see the module docstring
    :param fit: learned arm: refit the ensemble in the ``background`` beside PPO (same
        result as ``inline``, where the agent waits for each fit) or ``lagged`` (rewards
        from the previous weights until the next update point); all deterministic.
        Default: the preset's ``reward.fit_mode``
    :param fit_threads: torch threads of the background fit
    :param checkpoint_steps: write the checkpoint every this many env steps (0: not by
        steps); always at the start of learning and on SIGINT/SIGTERM
    :param checkpoint_seconds: and at least every this many seconds (0: not by time)
    :param force: resume a run even though it was started with other settings
    :param trust_old_checkpoint: resume from a checkpoint of the old format (a pickle,
        read through an allow-list of data types); it is refused otherwise
    :raises RunInterrupted: SIGINT/SIGTERM stopped the run after a checkpoint
    :raises NonFiniteError: an env or the reward model produced NaN or infinity (the
        last checkpoint is kept)
    """
    opts = RunOptions(
        arm=arm, seed=seed, paths=paths or default_paths(preset.task.name, arm, seed), teacher_kind=teacher_kind,
        labels_from=labels_from, progress=progress, verbose=verbose, relabel=relabel,
        fit=fit or preset.reward.fit_mode, fit_threads=fit_threads, checkpoint_steps=checkpoint_steps,
        checkpoint_seconds=checkpoint_seconds, force=force, trust_old_checkpoint=trust_old_checkpoint,
    )
    with RunDir(opts.paths.run_dir).lock():
        return _train(preset, opts)


def _train(preset: Preset, opts: RunOptions) -> dict[str, Any]:
    """:func:`train` in a run directory this process holds."""
    run_dir, p = opts.paths.run_dir, preset.ppo
    run = RunDir(run_dir)
    config = run_config(preset, opts.arm, opts.seed, opts.paths, opts.teacher_kind, opts.labels_from,
                        opts.relabel, opts.fit)
    resumed, changes = open_run_dir(run_dir, config, opts.force, trust_old_checkpoint=opts.trust_old_checkpoint)
    remove_partial_checkpoints(run_dir)
    write_config(run_dir, config, resumed, changes)
    started = time.time()

    # Seeding: one block, everything derives from `seed` (a resumed run then takes
    # every generator's state from its checkpoint).
    random.seed(opts.seed)
    np.random.seed(opts.seed)
    set_random_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    if p.torch_threads > 0:
        torch.set_num_threads(p.torch_threads)
    background_nice()  # a bad PREFRL_BACKGROUND_NICE stops here, not in a fitting thread

    # People watch Atari clips as RGB frames; MuJoCo clips are rendered from physics states.
    record_frames = opts.learned and opts.teacher_kind == "human" and preset.task.domain == "atari"
    venv = make_vec_env(preset, p.n_envs, opts.seed, clip_reward=(not opts.learned and p.clip_true_reward),
                        record_frames=record_frames)
    eval_env: VecEnv = make_vec_env(preset, 1, opts.seed + 10_000, evaluation=True)
    learned = build_learned_arm(preset, opts, venv, rng, record_frames, resumed is not None) if opts.learned else None
    relabeller = learned.relabeller if learned is not None else None
    prefs = learned.prefs if learned is not None else None
    venv = learned.env if learned is not None else venv

    if p.normalize_observations or (p.normalize_rewards and relabeller is None):
        # Above a deferred wrapper VecNormalize sees placeholder rewards: it must neither
        # scale them nor learn statistics from them.
        norm_cls = DeferredRewardVecNormalize if relabeller is not None else VecNormalize
        venv = norm_cls(venv, norm_obs=p.normalize_observations,
                        norm_reward=p.normalize_rewards and relabeller is None, gamma=p.gamma)
    if p.normalize_observations or p.normalize_rewards:
        eval_env = VecNormalize(eval_env, training=False, norm_obs=p.normalize_observations, norm_reward=False)

    model = make_ppo(p, venv, opts.seed, opts.verbose)
    evals = TrueReturnEvalCallback(eval_env, preset, run.eval_path)
    parts = RunParts(model, eval_env, evals, prefs, pretrain_steps=learned.pretrain_steps if learned is not None else 0,
                     session_start=started)
    logs = run.logs_dir
    if resumed is not None:
        try:
            parts.restore(resumed["state"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise PrefrlError(f"the checkpoint {run.checkpoint_path} does not fit these settings "
                              f"({str(exc).splitlines()[0]}); resume with the settings that started the run") from None
        # The interrupted session's log stays as it is; this session logs beside it.
        logs = run.resumed_logs_dir(model.num_timesteps)
        print(f"resuming {run_dir} at step {model.num_timesteps:,} of {p.total_steps:,}", flush=True)
    model.set_logger(configure(str(logs), ["csv", "tensorboard"]))
    stop = StopRequest()
    checkpointer = RunCheckpointer(run_dir, parts, stop, every_steps=opts.checkpoint_steps,
                                   every_seconds=opts.checkpoint_seconds,
                                   saved_step=resumed["step"] if resumed is not None else None)
    # The relabeller first: every other rollout-end callback sees the rollout's real
    # rewards. The checkpointer last: it saves what the others did at a rollout start.
    callbacks: list[BaseCallback] = [c for c in (relabeller, evals, prefs) if c is not None]
    if opts.progress:
        callbacks.append(ProgressCallback(p.total_steps, prefs, evals))
    callbacks.append(checkpointer)

    learn_start, learn_cpu_start = time.perf_counter(), time.process_time()
    try:
        with stop:
            model.learn(total_timesteps=max(0, p.total_steps - model.num_timesteps), callback=CallbackList(callbacks),
                        reset_num_timesteps=resumed is None)
    except Halt as halt:
        _close_run(venv, eval_env, prefs)
        raise RunInterrupted(halt.step, stop.signum or signal.SIGINT, run_dir) from None
    except CheckpointWriteError:
        _close_run(venv, eval_env, prefs)
        raise
    except (PrefrlError, FloatingPointError) as exc:
        # Non-finite values (ours, or the reward model's own check) and any other refusal
        # mid-run: say what happened and what is left to resume from.
        _close_run(venv, eval_env, prefs)
        where = "" if isinstance(exc, NonFiniteError) else f"step {model.num_timesteps:,}: "
        kept = (f"its checkpoint of step {checkpointer.saved_step:,} is kept; fix the cause, then rerun the "
                "same command to resume from it") if checkpointer.saved_step is not None else "no checkpoint was written"
        kind = NonFiniteError if isinstance(exc, (NonFiniteError, FloatingPointError)) else PrefrlError
        raise kind(f"{where}{exc}; the run is stopped, {kept}") from None
    learn_seconds = time.perf_counter() - learn_start
    learn_cpu_seconds = time.process_time() - learn_cpu_start  # all threads of the process

    final_wait = 0.0
    if prefs is not None:
        # The fit started at the last update point belongs to the saved model. Waiting
        # for it happens once per run, after the agent's last step: not in learn_seconds.
        waited = prefs.fitter.wait_seconds
        prefs.finish_fit()
        final_wait = prefs.fitter.wait_seconds - waited
    if evals.next_eval - preset.eval.every_steps < model.num_timesteps:
        evals.evaluate()  # always end with an evaluation of the final policy
    _save_results(run, model, learned)
    _close_run(venv, eval_env, prefs)

    summary = {
        "task": preset.task.name, "arm": opts.arm, "seed": opts.seed, "env_steps": int(model.num_timesteps),
        "pretrain_env_steps": int(parts.pretrain_steps), "labels_used": int(prefs.labels_used if prefs is not None else 0),
        "label_budget": preset.labels.budget if opts.learned else 0,
        "final_true_return": evals.last_mean, "wall_seconds": round(parts.elapsed(), 1),
        "learn_seconds": round(learn_seconds, 2), "learn_cpu_seconds": round(learn_cpu_seconds, 2),
        "reward_model": dict(prefs.last_stats) if prefs is not None else {},
    }
    if resumed is not None:
        summary["resumed_at_step"] = int(resumed["step"])  # learn_* seconds: this session only
    if prefs is not None:
        summary["reward_fitting"] = {
            "mode": opts.fit, "fits": prefs.fitter.fits, "fit_seconds": round(prefs.fitter.fit_seconds, 2),
            # Seconds the agent stood still for fitting during learn (inline: every fit;
            # background with Atari prefetching: also inside the relabel seconds).
            "agent_waited_seconds": round(prefs.fitter.wait_seconds - final_wait, 2) if prefs.fitter.background
            else round(prefs.fitter.fit_seconds, 2),
            "final_wait_seconds": round(final_wait, 2),
        }
        summary["relabel"] = {
            "mode": opts.relabel, "seconds": round(relabeller.seconds, 2) if relabeller is not None else None,
        }
    # Last: summary.json marks the run finished (a finished run is never resumed).
    atomic_write_json(run.summary_path, summary)
    return summary


def _save_results(run: RunDir, model: PPO, learned: LearnedArm | None) -> None:
    """The policy, its normalisation statistics and (learned arm) the reward model and
    the labels, beside the run's logs."""
    model.save(run.policy_path)
    env = model.get_env()
    if isinstance(env, VecNormalize):
        if learned is not None and learned.env.normalizer is not None:
            # Keep the reward statistics the agent was trained with beside the obs statistics.
            env.ret_rms = copy.deepcopy(learned.env.normalizer.ret_rms)
        env.save(str(run.vecnormalize_path))
    if learned is not None:
        learned.prefs.reward_model.save(run.reward_model_path)
        learned.prefs.store.export_jsonl(run.labels_path)


def _close_run(venv: VecEnv, eval_env: VecEnv, prefs: PreferenceCallback | None) -> None:
    """Release the envs (worker processes) and the label store."""
    if prefs is not None:
        prefs.fitter.join()  # a background fit must not outlive its run
        prefs.store.close()
    venv.close()
    eval_env.close()
