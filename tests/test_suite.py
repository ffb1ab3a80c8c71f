"""Sweeps through Ray on this machine: a tiny 2 tasks x 2 arms x 1 seed sweep, one run
killed on purpose, the sweep started again (finished runs reused, the killed one rerun);
sweep-file parsing, and the live table's file polling."""

from __future__ import annotations

import io
import json
import os
import signal
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from prefrl.cli.main import main
from prefrl.experiments.plan import prepare, prepare_run_dir, run_state
from prefrl.experiments.progress import RunProgress, progress_table
from prefrl.experiments.ray_runner import execute_run
from prefrl.experiments.suite import run_suite
from prefrl.experiments.sweep import load_sweep, state_files
from prefrl.rundir.progress import tail_row
from prefrl.util.errors import PrefrlError

TINY = [
    "ppo.total_steps=512", "ppo.n_steps=128", "ppo.batch_size=64", "ppo.n_epochs=2",
    "labels.initial_labels=6", "labels.pretrain_epochs=3", "labels.update_every_steps=128",
    "reward.epochs_per_update=2", "eval.every_steps=256", "eval.episodes=1",
]
#: The run killed on purpose: it starts last (runs are submitted in file order).
VICTIM = "pendulum__learned-20__s0"


def write_sweep(folder: Path, body: str) -> Path:
    path = folder / "sweep.toml"
    path.write_text(textwrap.dedent(body))
    return path


def tiny_sweep(folder: Path) -> Path:
    return write_sweep(folder, f"""
        name = "tiny"
        tasks = ["cartpole", "pendulum"]
        arms = ["true", "learned"]
        seeds = [0]
        label_budgets = [20]
        set = {json.dumps(TINY)}
    """)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (starting Ray costs seconds)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_sweep_survives_a_killed_run_and_resumes(tmp_path, local_ray):
    sweep = load_sweep(tiny_sweep(tmp_path), tmp_path / "out")
    out = sweep.out.resolve()
    assert [r.name for r in sweep.runs] == [
        "cartpole__true__s0", "cartpole__learned-20__s0", "pendulum__true__s0", VICTIM,
    ]
    killed: dict[str, object] = {}

    def kill_victim(runs: list[RunProgress]) -> None:
        """Once the victim's training has started, SIGKILL its Ray worker (a crash)."""
        victim = next(r for r in runs if r.spec.name == VICTIM)
        status, _ = state_files(victim.spec)
        if killed or victim.state != "running" or not (out / VICTIM / "config.json").is_file():
            return
        killed["finished_before_kill"] = (out / VICTIM / "summary.json").exists()
        pid = json.loads(status.read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid

    log = io.StringIO()
    first = run_suite(sweep, max_parallel=2, console=Console(file=log, width=200), refresh_seconds=0.1,
                      on_poll=kill_victim)
    assert killed.get("pid") and killed["finished_before_kill"] is False, killed
    states = {r.spec.name: r.state for r in first.runs}
    assert states == {"cartpole__true__s0": "done", "cartpole__learned-20__s0": "done",
                      "pendulum__true__s0": "done", VICTIM: "failed"}, log.getvalue()
    victim = next(r for r in first.runs if r.spec.name == VICTIM)
    assert "Worker" in victim.error or "died" in victim.error.lower(), victim.error
    assert f"failed: {VICTIM}" in log.getvalue().replace("[bold red]", "")
    assert (out / VICTIM / "config.json").is_file() and not (out / VICTIM / "summary.json").exists()
    assert run_state(victim.spec) == ("todo", [])
    # The others were compared although one run failed.
    assert len(first.rows) == 3 and (out / "comparison.md").is_file()

    mtimes = {r.spec.name: (out / r.spec.name / "summary.json").stat().st_mtime_ns
              for r in first.runs if r.state == "done"}
    second = run_suite(sweep, console=Console(file=io.StringIO(), width=200), refresh_seconds=0.1)
    states = {r.spec.name: r.state for r in second.runs}
    assert states == {name: "skipped" for name in mtimes} | {VICTIM: "done"}
    for name, mtime in mtimes.items():
        assert (out / name / "summary.json").stat().st_mtime_ns == mtime, f"{name} was rerun"
    summary = json.loads((out / VICTIM / "summary.json").read_text())
    assert summary["env_steps"] >= 512 and summary["labels_used"] >= 6
    assert not second.failed and len(second.rows) == 4
    table = (out / "comparison.md").read_text()
    assert "cartpole" in table and "pendulum" in table and "learned (20 labels)" in table

    # The CLI's dry run now sees every run finished, without starting Ray.
    assert main(["suite", str(tmp_path / "sweep.toml"), "--out", str(tmp_path / "out"), "--dry-run"]) == 0


def test_a_failing_run_returns_its_error_instead_of_raising(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    spec = load_sweep(tiny_sweep(tmp_path), not_a_folder).runs[0]
    result = execute_run(spec, threads=1)
    assert result["ok"] is False and result["name"] == spec.name
    assert "Error" in result["error"] and "Traceback" in result["traceback"]


def test_sweep_file_expansion(tmp_path):
    path = write_sweep(tmp_path, """
        seeds = [0, 1]
        set = ["ppo.total_steps=1000"]
        initial_label_fraction = 0.25

        [[sweep]]
        tasks = ["invertedpendulum"]
        label_budgets = [40, 80]

        [[sweep]]
        tasks = ["invertedpendulum"]
        tag = "long"
        arms = ["learned"]
        seeds = [3]
        set = ["ppo.total_steps=2000"]
    """)
    sweep = load_sweep(path)
    assert sweep.name == "sweep" and sweep.out == Path("runs/suites/sweep")
    assert sweep.runs[0].run_dir == Path("runs/suites/sweep").resolve() / "invertedpendulum__true__s0"
    by_name = {r.name: r for r in sweep.runs}
    assert list(by_name) == [
        "invertedpendulum__true__s0", "invertedpendulum__learned-40__s0", "invertedpendulum__learned-80__s0",
        "invertedpendulum__true__s1", "invertedpendulum__learned-40__s1", "invertedpendulum__learned-80__s1",
        "invertedpendulum-long__learned-700__s3",
    ]
    short = by_name["invertedpendulum__learned-80__s1"].preset
    assert (short.labels.budget, short.labels.initial_labels, short.ppo.total_steps) == (80, 20, 1000)
    long = by_name["invertedpendulum-long__learned-700__s3"]
    # Overrides accumulate; a tag renames the task so comparisons keep the variant apart.
    assert long.preset.ppo.total_steps == 2000 and long.preset.task.name == "invertedpendulum-long"
    assert long.preset.labels.initial_labels == 175


def test_budget_below_the_presets_initial_labels_caps_them(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, 'tasks = ["cartpole"]\narms = ["learned"]\nlabel_budgets = [5]'))
    assert (sweep.runs[0].preset.labels.budget, sweep.runs[0].preset.labels.initial_labels) == (5, 5)


@pytest.mark.parametrize("body, needle", [
    ('tasks = ["cartpole"]\nsedes = [0]', "sedes"),
    ('tasks = ["nosuchtask"]', "nosuchtask"),
    ('tasks = ["cartpole"]\narms = ["both"]', "both"),
    ('tasks = ["cartpole"]\nseeds = [-1]', "seeds"),
    ('tasks = ["cartpole"]\nset = ["ppo.nosuchkey=1"]', "ppo.nosuchkey"),
    ('[[sweep]]\ntasks = ["cartpole"]\n[[sweep]]\ntasks = ["cartpole"]', "more than once"),
    ('arms = ["true"]', "tasks"),
    ('tasks = ["cartpole"]\ninitial_label_fraction = 2', "initial_label_fraction"),
])
def test_bad_sweep_files_name_the_problem(tmp_path, body, needle):
    path = write_sweep(tmp_path, body)
    with pytest.raises(PrefrlError, match=needle):
        load_sweep(path)


def test_cli_suite_errors_are_one_line(tmp_path, capsys):
    assert main(["suite", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.toml" in err and err.count("\n") == 0


def test_progress_is_read_from_a_growing_log(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "logs" / "progress.csv").write_text(
        "time/total_timesteps,labels/used,rollout/ep_rew_mean\n128,9,\n256,13,-7.5\n384,17,-3")  # last row half written
    (run_dir / "eval.csv").write_text("step,mean_true_return,std_true_return,episodes,mean_length\n0,1.5,0,1,9\n")
    assert tail_row(run_dir / "logs" / "progress.csv") == {
        "time/total_timesteps": "256", "labels/used": "13", "rollout/ep_rew_mean": "-7.5"}
    sweep = load_sweep(tiny_sweep(tmp_path), tmp_path / "out")
    progress = RunProgress(sweep.runs[1], state="running")
    progress.read_files(run_dir)
    assert (progress.steps, progress.labels, progress.train_return, progress.eval_return) == (256, 13, -7.5, 1.5)
    console = Console(file=io.StringIO(), width=200)
    console.print(progress_table(sweep, [progress] + [RunProgress(s) for s in sweep.runs[2:]]))
    text = console.file.getvalue()
    assert "cartpole__learned-20__s0" in text and "256 / 512" in text and "1 running, 2 queued" in text
    # A resumed run logs on in logs/resumed_at_<step>/: its newest session's numbers are read.
    (run_dir / "logs" / "resumed_at_256").mkdir()
    (run_dir / "logs" / "resumed_at_256" / "progress.csv").write_text(
        "time/total_timesteps,labels/used,rollout/ep_rew_mean\n384,17,-3\n512,20,-1\n")
    progress.read_files(run_dir)
    assert (progress.steps, progress.labels, progress.train_return) == (512, 20, -1.0)
    # Resumed again from the checkpoint at 384 after logging up to 512: the new session
    # redoes those steps, and until its first row the run stands at its checkpoint.
    (run_dir / "logs" / "resumed_at_384").mkdir()
    (run_dir / "logs" / "resumed_at_384" / "progress.csv").write_text("")
    progress.read_files(run_dir)
    assert progress.steps == 384


def test_a_finished_run_made_with_other_settings_is_rerun(tmp_path, capsys):
    """The sweep's staleness rule (no Ray needed): a finished run counts only with the
    settings the sweep would give it now; the thread count may differ."""
    from prefrl.config.loading import apply_overrides

    sweep = load_sweep(tiny_sweep(tmp_path), tmp_path / "out")
    same, other, threads = sweep.runs[:3]

    def finished_run(spec, preset) -> None:
        spec.run_dir.mkdir(parents=True)
        (spec.run_dir / "summary.json").write_text("{}")
        (spec.run_dir / "config.json").write_text(json.dumps({"arm": spec.arm, "seed": spec.seed,
                                                               "preset": preset.to_dict()}))

    finished_run(same, same.preset)
    finished_run(other, apply_overrides(other.preset, ["reward.epochs_per_update=5"]))
    finished_run(threads, apply_overrides(threads.preset, ["ppo.torch_threads=7"]))
    assert run_state(same) == ("done", [])
    assert run_state(other) == ("stale", ["reward.epochs_per_update (5 -> 2)"])
    assert run_state(threads) == ("done", [])
    assert main(["suite", str(tmp_path / "sweep.toml"), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    said = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert " stale: " in said[other.name] and said[same.name].endswith(" done")

    plan = prepare(sweep.runs)
    assert plan.done == [same, threads] and plan.todo == [other, sweep.runs[3]]
    assert plan.stale == {other: ["reward.epochs_per_update (5 -> 2)"]}
    assert not other.run_dir.exists()  # rerun from scratch ...
    kept = list((sweep.out / "replaced").glob(f"{other.name}-*/summary.json"))
    assert len(kept) == 1  # ... and the finished run made with the old settings is kept aside


def test_a_killed_run_with_a_checkpoint_of_the_same_settings_is_resumed(tmp_path):
    from prefrl.config.loading import apply_overrides
    from prefrl.rundir.files import CHECKPOINT_FILE

    sweep = load_sweep(tiny_sweep(tmp_path), tmp_path / "out")
    spec = next(r for r in sweep.runs if r.name == VICTIM)
    run_dir = sweep.out / spec.name

    def killed_attempt(preset) -> None:
        from prefrl.rundir import RunPaths
        from prefrl.rundir.resume import run_config

        (run_dir / CHECKPOINT_FILE).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / CHECKPOINT_FILE).write_bytes(b"checkpoint")
        config = run_config(preset, spec.arm, spec.seed, RunPaths(run_dir, run_dir / "clips"), "synthetic", None,
                            "rollout", preset.reward.fit_mode)
        (run_dir / "config.json").write_text(json.dumps(config))

    killed_attempt(spec.preset)
    assert prepare_run_dir(spec) is True
    assert (run_dir / CHECKPOINT_FILE).read_bytes() == b"checkpoint"  # kept for train() to resume
    # Started with other settings (here another thread count): deleted, run from scratch.
    killed_attempt(apply_overrides(spec.preset, ["ppo.torch_threads=7"]))
    assert prepare_run_dir(spec) is False
    assert not run_dir.exists()
    # Killed before its first checkpoint: nothing to resume.
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    assert prepare_run_dir(spec) is False and not run_dir.exists()


def test_a_killed_run_with_an_old_format_checkpoint_is_kept_for_its_owner(tmp_path):
    """A checkpoint of the old pickle format (run-dir layout 1) is a checkpoint too: the
    sweep keeps the folder, and train asks for --trust-old-checkpoint instead of the run
    being deleted and redone from scratch."""
    from prefrl.rundir import RunPaths
    from prefrl.rundir.files import CONFIG_FILE, LEGACY_CHECKPOINT_FILE
    from prefrl.rundir.resume import run_config
    from prefrl.training.run import train

    sweep = load_sweep(tiny_sweep(tmp_path), tmp_path / "out")
    spec = next(r for r in sweep.runs if r.name == VICTIM)
    run_dir = sweep.out / spec.name
    paths = RunPaths(run_dir, run_dir / "clips")
    (run_dir / LEGACY_CHECKPOINT_FILE).parent.mkdir(parents=True)
    (run_dir / LEGACY_CHECKPOINT_FILE).write_bytes(b"an old pickle")
    config = run_config(spec.preset, spec.arm, spec.seed, paths, "synthetic", None, "rollout",
                        spec.preset.reward.fit_mode)
    (run_dir / CONFIG_FILE).write_text(json.dumps({**config, "run_dir_schema": 1}))
    assert prepare_run_dir(spec) is True
    assert (run_dir / LEGACY_CHECKPOINT_FILE).read_bytes() == b"an old pickle"
    with pytest.raises(PrefrlError, match="resume with --trust-old-checkpoint"):
        train(spec.preset, arm=spec.arm, seed=spec.seed, paths=paths, progress=False)
    assert (run_dir / LEGACY_CHECKPOINT_FILE).read_bytes() == b"an old pickle"
