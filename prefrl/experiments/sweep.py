"""What a sweep is: its runs (:class:`RunSpec`, one type for every front-end), their
names, and sweep files (``suites/*.toml``).

A sweep file holds defaults at its top level and any number of ``[[sweep]]`` blocks
that inherit and may override them::

    name = "mujoco_paper"              # default: the file's stem
    out = "runs/suites/mujoco_paper"   # default: runs/suites/<name>
    arms = ["true", "learned"]         # default: both
    seeds = [0, 1, 2]                  # default: [0]
    label_budgets = [350, 700, 1400]   # learned arm only; default: the preset's budget
    initial_label_fraction = 0.25      # labels from the random policy, as a share of the
                                       # budget (default: the preset's, capped by the budget)
    set = ["eval.episodes=5"]          # --set style overrides for every run
    threads_per_run = 1                # default: cores / --max-parallel

    [[sweep]]
    tasks = ["hopper", "walker2d"]
    set = ["ppo.total_steps=500000"]   # appended to the top-level ``set``
    tag = "short"                      # optional: names the variant, see below

Without ``[[sweep]]`` blocks the top level is the one block (it needs ``tasks``). The
true-reward arm does not depend on the label budget, so it runs once per (task, seed).

Every run of a sweep file has a deterministic name, ``<task>[-<tag>]__<arm>__s<seed>``
(:func:`sweep_run_name`, e.g. ``hopper__learned-700__s0``, ``hopper__true__s0``), and
directory ``<out>/<name>`` (its clips in ``<out>/<name>/clips``). A tag also renames the
task in the run's summary (``task.name = <task>-<tag>``), so ``prefrl compare`` keeps
variants apart.
"""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefrl.config.loading import load_preset
from prefrl.config.settings import Preset
from prefrl.util.errors import PrefrlError

#: The arms a sweep may list (same names as ``prefrl train --reward``).
SWEEP_ARMS = ("true", "learned")
#: Keys a sweep block may set; the top level also takes ``name``, ``out`` and ``sweep``.
BLOCK_KEYS = ("tasks", "tag", "arms", "seeds", "label_budgets", "initial_label_fraction", "set", "threads_per_run")
TOP_KEYS = BLOCK_KEYS + ("name", "out", "sweep")
#: Folder (inside a sweep's output folder) of the Ray runner's per-run bookkeeping files.
STATE_DIR = ".suite"


@dataclass(frozen=True)
class RunSpec:
    """One training run of a sweep, whichever front-end planned it and whichever runner
    runs it.

    :param name: unique within its sweep; what progress lines and tables call the run
    :param task: preset name or path, as the front-end was given it
    :param arm: ``learned`` or ``true``
    :param seed: the run's seed
    :param label_budget: labels of the learned arm (0 for the true arm)
    :param overrides: every ``--set`` item the preset is loaded with, in order
    :param out: the sweep's output folder
    :param rel_dir: the run's folder, relative to ``out`` (also where its records and a
        replaced copy go)
    :param preset: the fully resolved settings, ``load_preset(task, overrides)``
    """

    name: str
    task: str
    arm: str
    seed: int
    label_budget: int
    overrides: tuple[str, ...]
    out: Path
    rel_dir: Path
    preset: Preset = field(compare=False, repr=False)

    @classmethod
    def create(cls, name: str, task: str, arm: str, seed: int, label_budget: int, overrides: tuple[str, ...],
               out: Path, rel_dir: Path) -> RunSpec:
        """A spec with its preset loaded (and so validated) now.

        :raises PrefrlError: unknown task or a bad override
        """
        return cls(name, task, arm, seed, label_budget, tuple(overrides), out, rel_dir,
                   load_preset(task, list(overrides)))

    @property
    def run_dir(self) -> Path:
        return self.out / self.rel_dir

    @property
    def steps(self) -> int:
        """Env steps the run trains for."""
        return self.preset.ppo.total_steps

    def to_json(self) -> dict[str, Any]:
        """Everything but the preset, which :meth:`from_json` loads again."""
        return {"name": self.name, "task": self.task, "arm": self.arm, "seed": self.seed,
                "label_budget": self.label_budget, "overrides": list(self.overrides), "out": str(self.out),
                "rel_dir": str(self.rel_dir)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSpec:
        return cls.create(data["name"], data["task"], data["arm"], int(data["seed"]), int(data["label_budget"]),
                          tuple(data["overrides"]), Path(data["out"]), Path(data["rel_dir"]))


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file.

    :param name: the sweep's name
    :param out: its output folder, as given
    :param runs: every run, in file order
    :param threads_per_run: CPU threads per run, if the file fixes it
    """

    name: str
    out: Path
    runs: tuple[RunSpec, ...]
    threads_per_run: int | None = None


def arm_name(arm: str, label_budget: int) -> str:
    """``true`` or ``learned-<budget>``: the arm part of every run name and folder."""
    return f"learned-{label_budget}" if arm == "learned" else arm


def sweep_run_name(task: str, arm: str, seed: int, label_budget: int, tag: str = "") -> str:
    """Deterministic name of a sweep-file run, e.g. ``hopper__learned-700__s0`` or
    ``pong-short__true__s1`` (unlike ``prefrl.training.run.run_name`` no time stamp: a
    sweep started again finds its runs by name)."""
    task_part = f"{task}-{tag}" if tag else task
    return f"{task_part}__{arm_name(arm, label_budget)}__s{seed}"


def state_files(spec: RunSpec) -> tuple[Path, Path]:
    """``(<out>/.suite/<name>.json, <out>/.suite/<name>.log)``: where a Ray worker says it
    has started the run, and the run's stdout and stderr."""
    folder = spec.out / STATE_DIR
    return folder / f"{spec.name}.json", folder / f"{spec.name}.log"


# --------------------------------------------------------------------------- sweep files


def _int_list(value: Any, key: str, source: str, *, minimum: int) -> list[int]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in items):
        raise PrefrlError(f"{key} = {value!r} in {source} is invalid: give a list of whole numbers >= {minimum}")
    return list(items)


def _str_list(value: Any, key: str, source: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise PrefrlError(f"{key} = {value!r} in {source} is invalid: give a list of non-empty strings")
    return list(items)


def _block_runs(block: dict[str, Any], source: str, out: Path) -> list[RunSpec]:
    """Expand one (already merged) sweep block into its runs."""
    if "tasks" not in block:
        raise PrefrlError(f"a sweep block in {source} has no 'tasks'; list the presets to run, e.g. tasks = [\"hopper\"]")
    tasks = _str_list(block["tasks"], "tasks", source)
    arms = _str_list(block.get("arms", list(SWEEP_ARMS)), "arms", source)
    for arm in arms:
        if arm not in SWEEP_ARMS:
            raise PrefrlError(f"arms contains {arm!r} in {source}: use {' and/or '.join(SWEEP_ARMS)}")
    seeds = _int_list(block.get("seeds", [0]), "seeds", source, minimum=0)
    budgets = _int_list(block["label_budgets"], "label_budgets", source, minimum=1) if "label_budgets" in block else None
    overrides = _str_list(block["set"], "set", source) if block.get("set") else []
    tag = block.get("tag", "")
    if not isinstance(tag, str) or any(c in tag for c in "/\\ _"):
        raise PrefrlError(f"tag = {tag!r} in {source} is invalid: a short word without spaces, slashes or underscores")
    fraction = block.get("initial_label_fraction")
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1):
        raise PrefrlError(f"initial_label_fraction = {fraction!r} in {source} is invalid: give a number in (0, 1]")

    def spec(task: str, arm: str, seed: int, budget: int, task_name: str, settings: list[str]) -> RunSpec:
        name = sweep_run_name(task_name, arm, seed, budget, tag)
        return RunSpec.create(name, task, arm, seed, budget, tuple(settings), out, Path(name))

    runs: list[RunSpec] = []
    for task in tasks:
        try:
            base = load_preset(task, overrides)
        except PrefrlError as exc:
            raise PrefrlError(f"{source}, task {task!r}: {exc}") from None
        task_name = f"{base.task.name}-{tag}" if tag else base.task.name
        renamed = [f"task.name={json.dumps(task_name)}"] if tag else []
        for seed in seeds:
            for arm in arms:
                if arm == "true":
                    runs.append(spec(task, arm, seed, 0, base.task.name, overrides + renamed))
                    continue
                for budget in budgets or [base.labels.budget]:
                    if fraction is not None:
                        initial = max(1, round(fraction * budget))
                    else:
                        initial = min(base.labels.initial_labels, budget)
                    extra = [f"labels.budget={budget}", f"labels.initial_labels={initial}"]
                    try:
                        runs.append(spec(task, arm, seed, budget, base.task.name, overrides + renamed + extra))
                    except PrefrlError as exc:
                        raise PrefrlError(f"{source}, task {task!r}, {budget} labels: {exc}") from None
    return runs


def load_sweep(path: Path, out: Path | None = None) -> Sweep:
    """Read and expand a sweep file; every preset is loaded and validated here, so a typo
    fails before anything is launched.

    :param path: the ``.toml`` sweep file
    :param out: output folder (default: the file's ``out``, else ``runs/suites/<name>``);
        the runs' ``out`` is its absolute path (Ray workers may run in another directory)
    :raises PrefrlError: unreadable file, unknown keys, bad values, duplicate run names
    """
    if not path.is_file():
        raise PrefrlError(f"sweep file '{path}' not found; give a .toml file such as suites/small.toml")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PrefrlError(f"malformed sweep file {path}: {exc}; fix the TOML syntax") from None
    source = str(path)
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise PrefrlError(f"unknown key(s) {', '.join(unknown)} in {source}; valid keys: {', '.join(TOP_KEYS)}")
    blocks = data.get("sweep", [])
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise PrefrlError(f"'sweep' in {source} must be a list of [[sweep]] tables")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise PrefrlError(f"name = {name!r} in {source} is invalid: give a non-empty string")
    threads = data.get("threads_per_run")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise PrefrlError(f"threads_per_run = {threads!r} in {source} is invalid: give a whole number >= 1")
    folder = out or Path(data.get("out", f"runs/suites/{name}"))

    defaults = {k: v for k, v in data.items() if k in BLOCK_KEYS}
    runs: list[RunSpec] = []
    for i, block in enumerate(blocks or [{}]):
        bad = sorted(set(block) - set(BLOCK_KEYS))
        if bad:
            raise PrefrlError(f"unknown key(s) {', '.join(bad)} in [[sweep]] block {i + 1} of {source}; "
                              f"valid keys: {', '.join(BLOCK_KEYS)}")
        combined = {**defaults, **block}
        # Overrides accumulate (top level first) instead of replacing each other, so a
        # block can add to the shared settings.
        combined["set"] = list(defaults.get("set", [])) + list(block.get("set", []))
        runs.extend(_block_runs(combined, source, folder.resolve()))
    names = Counter(r.name for r in runs)
    dupes = sorted(n for n, c in names.items() if c > 1)
    if dupes:
        raise PrefrlError(f"{source} lists run(s) {', '.join(dupes)} more than once; give the blocks different "
                          "tasks, seeds or budgets, or a 'tag' each")
    return Sweep(name=name, out=folder, runs=tuple(runs), threads_per_run=threads)
