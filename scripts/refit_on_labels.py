"""Refit a run's reward model offline on the answers the run collected, in their order.

Reads the labelled pairs of a run's label store (``<run>/clips``), builds the reward
model of the run's preset (changed by ``--set reward.key=value``), fits it on the first
``--first`` answers (default: the run's ``labels.initial_labels``) for
``--pretrain-epochs`` epochs, then adds ``--step`` answers per refit of ``--epochs``
epochs (at most ``reward.max_pairs_per_update`` pairs per member, as in a run) and prints
after every fit what a run logs: in-bag and held-out loss, held-out accuracy (non-tie
answers), the L2 strength; with ``--test N`` the newest N answers are never fitted
on and every fit is scored on them: accuracy on their non-tie pairs and the correlation
of predicted with true clip returns over their clips (what the agent's reward depends
on: a model can rank pairs well and still pay for things the game does not). No PPO
and no env steps: it tells whether a reward setting
can learn these answers at all, which a run mixes up with what its agent does.

Usage::

    python scripts/refit_on_labels.py runs/<run>                               # the run's settings
    python scripts/refit_on_labels.py runs/<run> --set reward.dropout=0.0 --pretrain-epochs 10 --refits 8
    python scripts/refit_on_labels.py runs/<run> --test 100 --set reward.frames_per_clip=0
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from prefrl.config.loading import apply_overrides
from prefrl.envs.factory import make_env
from prefrl.feedback.choices import Choice, Preference
from prefrl.feedback.store import LabelStore
from prefrl.reward.model import RewardModel
from prefrl.rundir import RunDir
from prefrl.util.errors import PrefrlError

COLUMNS = ("fit", "labels", "non_tie", "train_loss", "val_loss", "val_accuracy", "l2", "seconds")
TEST_COLUMNS = ("test_accuracy", "test_return_corr")


def stored_preferences(clips_dir: Path, task: str) -> list[Preference]:
    """Every answer of a label store, oldest first ("can't tell" dropped, as in training)."""
    store = LabelStore(clips_dir, task, readonly=True)
    try:
        return [p for p in store.preferences() if p.choice is not Choice.CANT_TELL]
    finally:
        store.close()


def test_scores(model: RewardModel, test: list[Preference]) -> dict[str, float]:
    """Accuracy on the non-tie answers of ``test`` (ensemble-mean return of all frames
    of each clip; equal returns count as wrong) and Pearson correlation of predicted
    with true clip returns over all clips of ``test`` (NaN where undefined).

    :param test: answers the model was not fitted on
    """
    segments = [seg for pref in test for seg in (pref.pair.left, pref.pair.right)]
    predicted = model.segment_returns(segments).mean(axis=0)
    true = np.array([seg.true_return for seg in segments], dtype=np.float64)
    left, right = predicted[0::2], predicted[1::2]
    wanted = [(i, p.choice) for i, p in enumerate(test) if p.choice in (Choice.LEFT, Choice.RIGHT)]
    hits = [(left[i] > right[i]) if choice is Choice.LEFT else (right[i] > left[i]) for i, choice in wanted]
    corr = math.nan
    if len(segments) >= 3 and np.std(predicted) > 0 and np.std(true) > 0:
        corr = float(np.corrcoef(predicted, true)[0, 1])
    return {"test_accuracy": float(np.mean(hits)) if hits else math.nan, "test_return_corr": corr}


def replay(model: RewardModel, prefs: list[Preference], first: int, step: int, refits: int,
           pretrain_epochs: int, epochs: int, max_pairs: int,
           test: list[Preference] | None = None) -> Iterator[dict[str, float]]:
    """Fit on ``prefs[:first]``, then ``refits`` times add ``step`` more and refit
    (fewer if the answers run out).

    :param test: answers to score every fit on (:func:`test_scores`), never fitted on
    :return: one row of :data:`COLUMNS` (and :data:`TEST_COLUMNS` with ``test``) per fit, as it ends
    """
    used = 0
    for fit in range(refits + 1):
        new = prefs[used : first if fit == 0 else used + step]
        if fit > 0 and not new:
            break
        model.add_preferences(new)
        used += len(new)
        stats = model.train(pretrain_epochs if fit == 0 else epochs, 0 if fit == 0 else max_pairs)
        non_tie = sum(p.choice is not Choice.TIE for p in prefs[:used])
        row = {"fit": fit, "labels": used, "non_tie": non_tie,
               **{k: stats[k] for k in ("train_loss", "val_loss", "val_accuracy", "l2", "seconds")}}
        if test:
            row.update(test_scores(model, test))
        yield row


def _cell(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value)}"
    return "nan" if math.isnan(value) else f"{value:.4g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a folder written by `prefrl train` (learned arm)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="reward.KEY=VALUE",
                   help="change a reward setting (repeatable)")
    p.add_argument("--first", type=int, default=None, help="answers of the first fit (default: labels.initial_labels)")
    p.add_argument("--step", type=int, default=10, help="answers added per refit")
    p.add_argument("--refits", type=int, default=20, help="refits after the first fit")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="epochs of the first fit (default: labels.pretrain_epochs)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per refit (default: reward.epochs_per_update)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--test", type=int, default=0,
                   help="keep the newest N answers out of every fit and score each fit on them")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        bad = [item for item in args.overrides if not item.strip().startswith("reward.")]
        if bad:
            raise PrefrlError(f"--set {bad[0]!r}: only reward.* settings change a refit; drop it")
        _, preset = RunDir(args.run_dir).load_preset()
        preset = apply_overrides(preset, args.overrides)
        clips_dir = args.run_dir / "clips"
        if not (clips_dir / "labels.sqlite").is_file():
            raise PrefrlError(f"{args.run_dir}: no clips/labels.sqlite; give a learned-arm run folder")
        prefs = stored_preferences(clips_dir, preset.task.name)
        if not prefs:
            raise PrefrlError(f"{clips_dir}: no answered pairs to fit on")
        for name, value, least in (("--first", args.first, 1), ("--step", args.step, 1),
                                   ("--refits", args.refits, 0), ("--test", args.test, 0)):
            if value is not None and value < least:
                raise PrefrlError(f"{name} {value} is too small; give at least {least}")
        if args.test >= len(prefs):
            raise PrefrlError(f"--test {args.test} leaves none of the {len(prefs)} answers to fit on; give fewer")
    except PrefrlError as exc:
        print(f"refit_on_labels: error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    env = make_env(preset)
    model = RewardModel(env.observation_space, env.action_space, preset.reward, seed=args.seed)
    env.close()
    test = prefs[len(prefs) - args.test:] if args.test else []
    prefs = prefs[: len(prefs) - args.test]
    first = args.first if args.first is not None else max(1, preset.labels.initial_labels)
    pretrain = args.pretrain_epochs if args.pretrain_epochs is not None else max(1, preset.labels.pretrain_epochs)
    epochs = args.epochs if args.epochs is not None else preset.reward.epochs_per_update
    print(f"{preset.task.name}: {len(prefs)} answers in {clips_dir}; first fit {first} answers x {pretrain} epochs, "
          f"then +{args.step} per refit x {epochs} epochs (<= {preset.reward.max_pairs_per_update or 'all'} pairs)")
    print(f"reward settings: {', '.join(args.overrides) or 'the run preset'}")
    if test:
        print(f"test: the newest {len(test)} answers ({sum(p.choice is not Choice.TIE for p in test)} not ties), never fitted on")
    columns = COLUMNS + (TEST_COLUMNS if test else ())
    print(" ".join(f"{c:>12}" for c in columns), flush=True)
    start = time.perf_counter()
    for row in replay(model, prefs, first, args.step, args.refits, pretrain, epochs,
                      preset.reward.max_pairs_per_update, test):
        print(" ".join(f"{_cell(row[c]):>12}" for c in columns), flush=True)
    print(f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
