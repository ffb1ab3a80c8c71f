"""``prefrl`` subcommands for people and their labels: ``label``, ``clips`` and ``labels``.

The lead's CLI wires them in with::

    from prefrl.cli.labels import LABEL_COMMANDS, add_label_commands
    add_label_commands(sub)                # sub = parser.add_subparsers(...)
    ...
    if args.command in LABEL_COMMANDS:
        return args.label_handler(args)    # PrefrlError -> "prefrl: error: ..." exit 2

- ``prefrl label RUN_OR_CLIPS_DIR [--name NAME]``: open the viewer on a run's (or a
  clips folder's) pending pairs;
- ``prefrl clips TASK --pairs N [--policy policy.zip] [--out DIR] [--seed N]``: sample
  clip pairs from a random or saved policy into ``clips/<name>/`` to label without a run;
- ``prefrl labels export RUN_DIR --out labels.jsonl`` and
  ``prefrl labels import RUN_DIR labels.jsonl``: move labels between runs (one JSON
  object a line: ``pair_id``, ``left_clip``, ``right_clip``, ``choice``, ``labeller``,
  ``time``; see :mod:`prefrl.feedback.exchange`).

Heavy imports (pygame, gymnasium, SB3) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.cli.args import non_negative_int, positive_float, positive_int
from prefrl.util.errors import PrefrlError

#: Top-level commands added by :func:`add_label_commands`.
LABEL_COMMANDS = ("label", "clips", "labels")

Handler = Callable[[argparse.Namespace], int]





def default_labeller() -> str:
    """The login name, else ``human``."""
    try:
        return os.environ.get("USER") or getpass.getuser() or "human"
    except (KeyError, OSError):
        return "human"


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``prefrl label``."""
    parser.add_argument("path", type=Path, metavar="RUN_OR_CLIPS_DIR",
                        help="a run directory (its config.json names the clips folder) or a clips folder")
    parser.add_argument("--name", default=default_labeller(), help="your name, stored with each label (default: login name)")
    parser.add_argument("--scale", type=positive_int, default=3, help="Atari frames are shown this many times larger (default 3)")
    parser.add_argument("--ahead", type=positive_int, default=2, help="pairs prepared ahead of the one on screen (default 2)")
    parser.add_argument("--lease-seconds", type=positive_float, default=60.0,
                        help="a pair stays reserved this long after a viewer dies (default 60)")
    parser.add_argument("--max-seconds", type=positive_float, default=None, help="close the window after this long")
    parser.add_argument("--events", action="store_true", help="print one line per event (shown, label, undo, quit) for scripts")


def add_label_commands(subparsers: Any) -> None:
    """Add ``label``, ``clips`` and ``labels {export,import}`` to the ``prefrl`` parser.

    Each sets ``label_handler`` (a function of the parsed arguments returning the exit
    status) in the namespace.

    :param subparsers: the object returned by ``parser.add_subparsers``
    """
    label = subparsers.add_parser("label", help="label clip pairs in a window (a run's or a clips folder's)")
    add_label_arguments(label)
    label.set_defaults(label_handler=cmd_label)

    clips = subparsers.add_parser("clips", help="sample clip pairs from a random or saved policy to label")
    clips.add_argument("task", help="preset name (e.g. pong, hopper) or path to a preset .toml")
    clips.add_argument("--pairs", type=positive_int, required=True, help="number of clip pairs")
    clips.add_argument("--policy", type=Path, help="a saved SB3 PPO policy.zip (default: random actions)")
    clips.add_argument("--out", type=Path, help="clips folder to create (default clips/<task>__clips__<seed>__<time>)")
    clips.add_argument("--seed", type=non_negative_int, default=0)
    clips.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a preset setting, e.g. --set task.clip_length=30 (repeatable)")
    clips.set_defaults(label_handler=cmd_clips)

    labels = subparsers.add_parser("labels", help="export or import labels (JSON lines)")
    actions = labels.add_subparsers(dest="labels_command", required=True)
    export = actions.add_parser("export", help="write a run's labels to a .jsonl file")
    export.add_argument("path", type=Path, metavar="RUN_DIR", help="a run directory or a clips folder")
    export.add_argument("--out", type=Path, required=True, help="the .jsonl file to write")
    export.set_defaults(label_handler=cmd_labels_export)
    imported = actions.add_parser("import", help="add the labels of a .jsonl file to a run's store")
    imported.add_argument("path", type=Path, metavar="RUN_DIR", help="a run directory or a clips folder")
    imported.add_argument("file", type=Path, metavar="LABELS_JSONL", help="a file written by `prefrl labels export`")
    imported.set_defaults(label_handler=cmd_labels_import)


# --------------------------------------------------------------------------- label


def cmd_label(args: argparse.Namespace) -> int:
    """Open the viewer until the person quits."""
    from prefrl.human.clips import find_clips
    from prefrl.human.viewer import LabelViewer

    location = find_clips(args.path)
    viewer = LabelViewer(
        location.clips_dir, location.task, location.info, labeller=args.name, ahead=args.ahead,
        lease_seconds=args.lease_seconds, atari_scale=args.scale, event_log=sys.stdout if args.events else None,
    )
    with viewer:
        counts = viewer.store.counts()
        print(f"prefrl label: {location.clips_dir} (task {location.task}): {counts['pending']} pending, "
              f"{counts['answered']} labelled; labelling as '{args.name}'", flush=True)
        print("keys: Left/1 left better, Right/2 right better, Up/= tie, Down/x can't tell, "
              "Space replay, Backspace/u undo, q/Esc quit", flush=True)
        labelled = viewer.run(max_seconds=args.max_seconds)
        counts = viewer.store.counts()
    print(f"{labelled} labels saved this session; {counts['answered']} of {counts['pairs']} pairs labelled, "
          f"{counts['pending']} pending", flush=True)
    return 0


# --------------------------------------------------------------------------- clips


def _default_clips_dir(task: str, seed: int) -> Path:
    return Path("clips") / f"{task}__clips__{seed}__{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def collect_clip_pairs(
    preset: Any,
    n_pairs: int,
    out: Path,
    *,
    policy_path: Path | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run a random (or saved) policy, cut ``2 * n_pairs`` segments and store them as
    ``n_pairs`` pairs (each segment in one pair) in a new clips folder.

    :param preset: the task preset
    :param n_pairs: pairs wanted
    :param out: clips folder to create (must not hold pairs yet)
    :param policy_path: an SB3 PPO ``policy.zip``; a ``vecnormalize.pkl`` beside it is applied
    :param seed: seeds the env, the policy's sampling and the pairing
    :param log: where progress lines go
    :return: what was written (also saved as ``clips.json`` in ``out``)
    """
    from stable_baselines3.common.vec_env import DummyVecEnv

    from prefrl.data.recorder import SegmentRecorder
    from prefrl.data.segments import ClipPair, SegmentBuffer
    from prefrl.envs.factory import make_env
    from prefrl.feedback.store import LabelStore
    from prefrl.human.clips import write_clips_info

    task = preset.task
    if (out / "labels.sqlite").is_file():
        raise PrefrlError(f"{out} already holds a label store; give a new --out folder")
    if policy_path is not None and not policy_path.is_file():
        raise PrefrlError(f"policy file '{policy_path}' not found; give the policy.zip of a finished run")
    wanted = 2 * n_pairs
    record_frames = task.domain != "mujoco"  # MuJoCo clips carry physics states instead
    venv = DummyVecEnv([lambda: make_env(preset, record_frames=record_frames)])
    venv.seed(seed)
    venv.action_space.seed(seed)
    buffer = SegmentBuffer(task.clip_length, 1, capacity=wanted)
    recorder = SegmentRecorder(venv, buffer, record_frames=record_frames)
    stepper: Any = recorder
    model = None
    if policy_path is not None:
        from stable_baselines3 import PPO
        from stable_baselines3.common.vec_env import VecNormalize

        try:
            model = PPO.load(policy_path, device="cpu")
        except Exception as exc:  # noqa: BLE001 - SB3 raises many types for a bad file
            raise PrefrlError(f"cannot load policy {policy_path}: {exc}") from None
        normalizer = policy_path.parent / "vecnormalize.pkl"
        if normalizer.is_file():
            stepper = VecNormalize.load(str(normalizer), recorder)
            stepper.training = False
            stepper.norm_reward = False
        model.set_random_seed(seed)
    obs = stepper.reset()
    max_steps = wanted * task.clip_length * 4 + task.horizon
    steps = 0
    last_report = time.monotonic()
    while len(buffer) < wanted and steps < max_steps:
        if model is not None:
            actions, _ = model.predict(obs, deterministic=False)
        else:
            actions = np.stack([venv.action_space.sample()])
        obs, _, _, _ = stepper.step(actions)
        steps += 1
        if time.monotonic() - last_report > 5.0:
            log(f"  {len(buffer)} / {wanted} clips after {steps} steps")
            last_report = time.monotonic()
    stepper.close()
    if len(buffer) < 2:
        raise PrefrlError(f"only {len(buffer)} clips after {steps} steps; is task.clip_length <= task.horizon?")
    rng = np.random.default_rng(seed)
    segments = list(buffer.segments)
    order = rng.permutation(len(segments))
    pairs = [
        ClipPair(segments[order[2 * k]], segments[order[2 * k + 1]], pair_id=f"c{k:06d}")
        for k in range(len(segments) // 2)
    ]
    out.mkdir(parents=True, exist_ok=True)
    with LabelStore(out, task.name) as store:
        store.add_pairs(pairs)
    summary = {
        "task": task.name, "env_id": task.env_id, "domain": task.domain, "pairs": len(pairs), "env_steps": steps,
        "policy": str(policy_path) if policy_path is not None else "random", "seed": seed,
        "created": datetime.now().isoformat(timespec="seconds"),
        "task_settings": preset.to_dict()["task"],
    }
    write_clips_info(out, summary)
    return summary


def cmd_clips(args: argparse.Namespace) -> int:
    """Sample clip pairs into a new clips folder and print how to label them."""
    from prefrl.config.loading import load_preset

    preset = load_preset(args.task, list(getattr(args, "overrides", []) or []))
    out = args.out or _default_clips_dir(preset.task.name, args.seed)
    source = f"policy {args.policy}" if args.policy else "a random policy"
    print(f"sampling {args.pairs} clip pairs of {preset.task.name} from {source} into {out}", flush=True)
    summary = collect_clip_pairs(preset, args.pairs, out, policy_path=args.policy, seed=args.seed,
                                 log=lambda line: print(line, flush=True))
    print(f"wrote {summary['pairs']} pairs ({summary['env_steps']} env steps) to {out}")
    print(f"label them with:  prefrl label {out}")
    return 0


# --------------------------------------------------------------------------- labels export / import


def _open_store(path: Path, readonly: bool = False) -> Any:
    """The label store of a run directory or clips folder.

    :param path: what the user gave
    :param readonly: open it read-only (nothing in the folder changes)
    """
    from prefrl.feedback.store import LabelStore
    from prefrl.human.clips import find_clips

    location = find_clips(path)
    return LabelStore(location.clips_dir, location.task, readonly=readonly)


def cmd_labels_export(args: argparse.Namespace) -> int:
    """Write all labels of a run (or clips folder) to a JSON-lines file.

    Read-only: safe while a run or a viewer writes to the store, so it doubles as a backup.
    """
    with _open_store(args.path, readonly=True) as store:
        count = store.export_jsonl(args.out)
    print(f"wrote {count} labels to {args.out}")
    return 0


def cmd_labels_import(args: argparse.Namespace) -> int:
    """Add the labels of a JSON-lines file to a run's (or clips folder's) store."""
    with _open_store(args.path) as store:
        counts = store.import_jsonl(args.file)
    print(f"imported {counts['imported']} labels from {args.file}; skipped {counts['already_labelled']} "
          f"already labelled and {counts['unknown_pair']} of pairs unknown here")
    return 0
