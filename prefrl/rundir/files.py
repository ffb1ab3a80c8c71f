"""The names of everything a run directory holds: each file name of a run is spelled
here and nowhere else (the rest of prefrl asks :class:`~prefrl.rundir.RunDir` for paths).

Layout of ``runs/<env>__<arm>__<seed>__<time>/``::

    config.json          what the run is: settings, seed, arm (compared on resume)
    .prefrl.lock         held by the process training in the folder
    checkpoint/          state.json naming its tensors.*.pt and arrays.*.npz (old: state.pt)
    logs/                SB3 progress.csv and tensorboard; logs/resumed_at_<step>/ per resumed session
    eval.csv             the evaluation curve (true return against env steps)
    policy.zip           the trained SB3 PPO agent            } written when
    vecnormalize.pkl     its frozen normalisation statistics  } the run ends,
    reward_model.pt      the learned reward (learned arm)     } summary.json
    labels.jsonl         the labels it was trained on         } last
    summary.json         final numbers; marks the run finished
"""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
EVAL_FILE = "eval.csv"
POLICY_FILE = "policy.zip"
VECNORMALIZE_FILE = "vecnormalize.pkl"
REWARD_MODEL_FILE = "reward_model.pt"
LABELS_FILE = "labels.jsonl"
#: SB3's logs of the run's first session; each resumed session logs in a folder of its own below.
LOGS_DIR = "logs"
PROGRESS_FILE = "progress.csv"
#: ``logs/resumed_at_<step>``: the logs of a session resumed at that env step.
RESUMED_LOGS_PREFIX = "resumed_at_"
#: Held (``flock``) by the process training in a run directory.
LOCK_FILE = ".prefrl.lock"
CHECKPOINT_DIR = "checkpoint"
#: Where a run keeps its checkpoint, relative to the run directory: the file whose atomic
#: replacement commits a checkpoint (it names the data files that belong to it).
CHECKPOINT_FILE = Path(CHECKPOINT_DIR) / "state.json"
#: The checkpoint of run-dir layout 1 (a pickle: read only when the user trusts it).
LEGACY_CHECKPOINT_FILE = Path(CHECKPOINT_DIR) / "state.pt"
