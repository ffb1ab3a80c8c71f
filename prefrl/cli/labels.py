"""``prefrl`` subcommands for people and their labels: ``label``, ``clips`` and ``labels``.

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
from datetime import datetime
from pathlib import Path
from typing import Any

from prefrl.cli.args import non_negative_int, positive_float, positive_int


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


def add_commands(subparsers: Any) -> None:
    """Add ``label``, ``clips`` and ``labels {export,import}`` to the ``prefrl`` parser.

    Each sets ``handler`` (a function of the parsed arguments returning the exit status).

    :param subparsers: the object returned by ``parser.add_subparsers``
    """
    label = subparsers.add_parser("label", help="label clip pairs in a window (a run's or a clips folder's)")
    add_label_arguments(label)
    label.set_defaults(handler=cmd_label)

    clips = subparsers.add_parser("clips", help="sample clip pairs from a random or saved policy to label")
    clips.add_argument("task", help="preset name (e.g. pong, hopper) or path to a preset .toml")
    clips.add_argument("--pairs", type=positive_int, required=True, help="number of clip pairs")
    clips.add_argument("--policy", type=Path, help="a saved SB3 PPO policy.zip (default: random actions)")
    clips.add_argument("--out", type=Path, help="clips folder to create (default clips/<task>__clips__<seed>__<time>)")
    clips.add_argument("--seed", type=non_negative_int, default=0)
    clips.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a preset setting, e.g. --set task.clip_length=30 (repeatable)")
    clips.set_defaults(handler=cmd_clips)

    labels = subparsers.add_parser("labels", help="export or import labels (JSON lines)")
    actions = labels.add_subparsers(dest="labels_command", required=True)
    export = actions.add_parser("export", help="write a run's labels to a .jsonl file")
    export.add_argument("path", type=Path, metavar="RUN_DIR", help="a run directory or a clips folder")
    export.add_argument("--out", type=Path, required=True, help="the .jsonl file to write")
    export.set_defaults(handler=cmd_labels_export)
    imported = actions.add_parser("import", help="add the labels of a .jsonl file to a run's store")
    imported.add_argument("path", type=Path, metavar="RUN_DIR", help="a run directory or a clips folder")
    imported.add_argument("file", type=Path, metavar="LABELS_JSONL", help="a file written by `prefrl labels export`")
    imported.set_defaults(handler=cmd_labels_import)


# --------------------------------------------------------------------------- label


def cmd_label(args: argparse.Namespace) -> int:
    """Open the viewer until the person quits."""
    from prefrl.human.viewer import LabelViewer
    from prefrl.rundir.clips import find_clips

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


def cmd_clips(args: argparse.Namespace) -> int:
    """Sample clip pairs into a new clips folder and print how to label them."""
    from prefrl.config.loading import load_preset

    preset = load_preset(args.task, list(getattr(args, "overrides", []) or []))
    out = args.out or _default_clips_dir(preset.task.name, args.seed)
    source = f"policy {args.policy}" if args.policy else "a random policy"
    print(f"sampling {args.pairs} clip pairs of {preset.task.name} from {source} into {out}", flush=True)
    from prefrl.training.sample_clips import collect_clip_pairs

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
    from prefrl.rundir.clips import find_clips

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
