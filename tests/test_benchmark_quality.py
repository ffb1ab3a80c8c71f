"""The learning-quality benchmark (scripts/benchmark_quality.py and the library behind
it): the plan, resuming, the random-policy baseline and the results page (on fabricated
run folders; no training here)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefrl.analysis.quality_protocol import ATARI_DEFAULT_STEPS, atari_label_budget, atari_rate_constant
from prefrl.analysis.quality_records import (
    UNRECORDED_MACHINE,
    Setting,
    host_record,
    log_stem,
    machine_line,
    record_dir,
    save_records,
)
from prefrl.analysis.quality_tables import clearly_beats_random, evaluation_modes
from prefrl.analysis.results_page import write_results
from prefrl.config.loading import load_preset
from prefrl.experiments.local_runner import LocalRunner
from prefrl.experiments.plan import checkpoint_step, is_finished, prepare, stale_changes
from prefrl.experiments.quality_plan import (
    build_plan,
    lift_overrides,
    measure_random_policy,
    random_baseline,
    write_setting_files,
)
from prefrl.experiments.quality_run import current_step, execute, run_status
from prefrl.feedback.schedule import LabelSchedule
from prefrl.rundir.checkpoint_files import checkpoint_path, write_checkpoint
from prefrl.rundir.progress import progress_files
from prefrl.util.errors import PrefrlError

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "benchmark_quality.py"


def test_plan_is_tasks_by_seeds_by_arms(tmp_path):
    plan = build_plan(["pendulum"], [0, 1], [40, 20], tmp_path)
    assert [s.name for s in plan] == [
        "pendulum/true/seed0", "pendulum/learned-40/seed0", "pendulum/learned-20/seed0",
        "pendulum/true/seed1", "pendulum/learned-40/seed1", "pendulum/learned-20/seed1",
    ]
    assert len({s.run_dir for s in plan}) == 6
    # Not in the step table: the preset's own total_steps.
    assert all(s.steps == load_preset("pendulum").ppo.total_steps for s in plan)
    learned = plan[1]
    assert learned.label_budget == 40 and "labels.budget=40" in learned.overrides
    assert "labels.initial_labels=10" in learned.overrides  # 25% of the budget
    assert not any(o.startswith("labels.") for o in plan[0].overrides)
    # Every spec loads as a valid preset with the planned steps and budget.
    preset = load_preset(learned.task, list(learned.overrides))
    assert preset.labels.budget == 40 and preset.ppo.total_steps == learned.steps


def test_plan_steps_overrides_and_folders(tmp_path):
    plan = build_plan(["pendulum"], [3], [20], tmp_path, steps=1024, user_overrides=["ppo.n_epochs=2"])
    assert {s.steps for s in plan} == {1024}
    assert plan[0].run_dir.parent.parent.name.startswith("1024steps-set")
    assert plan[1].overrides[-1] == "ppo.n_epochs=2"  # user overrides come last
    other = build_plan(["pendulum"], [3], [20], tmp_path, steps=1024)
    assert other[0].run_dir != plan[0].run_dir  # different settings never share folders
    with pytest.raises(PrefrlError):
        build_plan(["pendulum"], [0], [20], tmp_path, user_overrides=["labels.budget=5"])
    with pytest.raises(PrefrlError):
        build_plan(["no_such_task"], [0], [20], tmp_path)


def test_set_total_steps_and_budget_become_plan_settings():
    lifted = lift_overrides(["ppo.total_steps=2048", "labels.budget=30", "ppo.n_epochs=2"], None, [700, 350])
    assert lifted == (["ppo.n_epochs=2"], 2048, [30])


def test_atari_budget_scaled_from_the_paper(tmp_path):
    assert atari_label_budget(250_000, 4) == 500  # 1M frames: 66, floored to 500
    assert atari_label_budget(12_500_000, 4) == 3300  # the paper's 50M frames
    plan = build_plan(["pong"], [0], [700, 350], tmp_path)
    assert [s.name for s in plan] == ["pong/true/seed0", "pong/learned-500/seed0"]
    assert plan[0].steps == ATARI_DEFAULT_STEPS == 250_000
    # Five evaluations per run (the preset's every 200k steps would give two points).
    assert all("eval.every_steps=50000" in s.overrides for s in plan)
    assert all(not any(o.startswith("eval.") for o in s.overrides)
               for s in build_plan(["pendulum"], [0], [20], tmp_path / "p"))


def test_atari_label_schedule_scaled_with_the_budget(tmp_path):
    # The presets' c = 5e6 agent steps, scaled by 1M / 50M frames: 100,000 steps.
    assert atari_rate_constant(250_000, 4, 5e6) == 100_000
    true_arm, learned = build_plan(["breakout"], [0], [], tmp_path)
    assert "labels.rate_constant=100000" in learned.overrides
    assert not any(o.startswith("labels.") for o in true_arm.overrides)
    preset = load_preset("breakout", list(learned.overrides))
    schedule = LabelSchedule.from_settings(preset.labels, learned.steps)
    # Most labels early, as in the paper: over half of those after the first 125 by 40% of
    # the run (a constant rate would give 40%).
    asked = (schedule.target(100_000) - 125) / (500 - 125)
    assert 0.5 < asked < 0.7
    # A constant the user sets wins over the scaled one; MuJoCo keeps its preset schedule.
    (user,) = [s for s in build_plan(["breakout"], [0], [], tmp_path / "u",
                                        user_overrides=["labels.rate_constant=7"]) if s.arm == "learned"]
    assert load_preset("breakout", list(user.overrides)).labels.rate_constant == 7
    assert not any("rate_constant" in o for s in build_plan(["hopper"], [0], [700], tmp_path / "h")
                   for o in s.overrides)


def test_arms_option_plans_one_arm(tmp_path):
    """The script's command line, as a user runs it."""
    args = ["pong", "breakout", "--seeds", "0", "1", "--arms", "true", "--dry-run", "--out", str(tmp_path),
            "--records", str(tmp_path / "records")]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == [
        "pong/true/seed0", "pong/true/seed1", "breakout/true/seed0", "breakout/true/seed1"]
    assert not tmp_path.joinpath("pong").exists()  # a dry run writes nothing
    bad = subprocess.run([sys.executable, str(SCRIPT), "pong", "--arms", "both", "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'both'" in bad.stderr


def test_resume_reuses_finished_and_removes_unfinished(tmp_path):
    plan = build_plan(["pendulum"], [0], [20], tmp_path)
    finished, unfinished = plan
    finished.run_dir.mkdir(parents=True)
    (finished.run_dir / "summary.json").write_text("{}")
    unfinished.run_dir.mkdir(parents=True)
    (unfinished.run_dir / "config.json").write_text("{}")
    ready = prepare(plan)
    assert ready.done == [finished] and ready.todo == [unfinished]
    assert (finished.run_dir / "summary.json").exists()
    assert not unfinished.run_dir.exists()  # starts clean, so train() accepts the folder


def test_resume_keeps_a_checkpoint_of_the_same_settings_only(tmp_path):
    """The rule of train() itself (prefrl.training.run.would_resume): a killed run's folder
    is kept when train would continue it, removed when its settings differ."""
    from prefrl.rundir import RunPaths
    from prefrl.rundir.files import CHECKPOINT_FILE
    from prefrl.rundir.resume import run_config

    plan = build_plan(["pendulum"], [0], [20], tmp_path)

    def killed_attempt(spec, overrides) -> None:
        preset = load_preset(spec.task, list(overrides))
        (spec.run_dir / CHECKPOINT_FILE).parent.mkdir(parents=True, exist_ok=True)
        (spec.run_dir / CHECKPOINT_FILE).write_bytes(b"checkpoint")
        config = run_config(preset, spec.arm, spec.seed, RunPaths(spec.run_dir, spec.run_dir / "clips"),
                            "synthetic", None, "rollout", preset.reward.fit_mode)
        (spec.run_dir / "config.json").write_text(json.dumps(config))

    same, other = plan
    killed_attempt(same, same.overrides)
    killed_attempt(other, [*other.overrides, "ppo.learning_rate=0.5"])
    ready = prepare(plan)
    assert ready.done == [] and ready.todo == plan
    assert (same.run_dir / CHECKPOINT_FILE).read_bytes() == b"checkpoint"  # train() resumes it
    assert not other.run_dir.exists()  # train() would refuse it: started clean instead


def test_random_policy_on_a_tiny_task():
    preset = load_preset("pendulum")
    first = measure_random_policy(preset, episodes=2, seed=7)
    again = measure_random_policy(preset, episodes=2, seed=7)
    assert first["lengths"] == [200, 200]  # the evaluation env's own time limit
    assert all(r < 0 for r in first["returns"])  # Pendulum's reward is a cost
    assert first["returns"] == again["returns"]  # seeded
    assert first["mean"] == pytest.approx(sum(first["returns"]) / 2)


def test_clearly_beats_random():
    random = {"mean": 0.0, "std": 1.0}
    assert clearly_beats_random([10.0, 11.0, 12.0], random)[0]
    assert not clearly_beats_random([1.0, 1.2], random)[0]
    assert not clearly_beats_random([-5.0], random)[0]


def _fake_run(run_dir: Path, task: str, arm: str, seed: int, budget: int, final: float, steps: int) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({
        "task": task, "arm": arm, "seed": seed, "env_steps": steps, "labels_used": budget,
        "label_budget": budget, "final_true_return": final, "wall_seconds": 60.0,
    }))
    (run_dir / "config.json").write_text(json.dumps({"started": "2026-01-01T10:00:00"}))
    with open(run_dir / "eval.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "mean_true_return", "std_true_return", "episodes", "mean_length"])
        w.writerow([0, 0.0, 0.0, 1, 10])
        w.writerow([steps, final, 0.0, 1, 10])


def test_results_page_from_finished_runs_only(tmp_path):
    out = tmp_path / "runs"
    plan = build_plan(["halfcheetah", "pong"], [0, 1, 2], [700], out, steps=300_000)
    write_setting_files(plan, [])
    finals = {("halfcheetah", "true"): 1000.0, ("halfcheetah", "learned"): 1100.0,
              ("pong", "true"): -15.0, ("pong", "learned"): -20.0}
    for spec in plan:
        if spec.seed == 2 and spec.task == "halfcheetah":
            continue  # not finished: listed as missing, not in the tables
        _fake_run(spec.run_dir, spec.task, spec.arm, spec.seed, spec.label_budget,
                  finals[(spec.task, spec.arm)] + spec.seed, spec.steps)
    (out / "pong" / "300000steps" / "random.json").write_text(json.dumps({"episodes": 3, "mean": -20.5, "std": 0.5}))
    (out / "commands.jsonl").write_text(json.dumps({"date": "2026-01-01T10:00:00", "command": "python x",
                                                    "planned": [str(s.run_dir) for s in plan]}) + "\n")
    page = write_results(out, tmp_path / "docs" / "results.md").read_text()
    assert "| halfcheetah | 700 (target) | 300,000 | 2 | 1.10 | ≥ 1.0 | **MET** (provisional: 2 of 3 seeds) |" in page
    assert "| hopper | 700 (target) | — | 0 | — | ≥ 1.0 | not yet run |" in page
    # Pong: true -14 vs random -20.5 ± 0.5 clearly beats random; normalised (-19 + 20.5) / 6.5.
    assert "| 0.23 | **NOT MET** |" in page
    assert "halfcheetah/300000steps/true/seed2" in page  # listed as still missing
    assert "hopper, swimmer" in page
    assert (tmp_path / "docs" / "results" / "halfcheetah-300000steps.png").is_file()
    assert "](results/halfcheetah-300000steps.png)" in page
    assert "cores (" in page and "python x" in page
    assert "## Findings" not in page
    (tmp_path / "findings.md").write_text("Reacher's reward model memorises clips.\n")
    page = write_results(out, tmp_path / "docs" / "results.md").read_text()
    assert "## Findings (written by hand" in page and "Reacher's reward model memorises clips." in page


def test_negative_true_returns_are_judged_by_the_normalised_score(tmp_path):
    out = tmp_path / "runs"
    plan = build_plan(["reacher"], [0], [700], out, steps=300_000)
    write_setting_files(plan, [])
    for spec in plan:
        _fake_run(spec.run_dir, spec.task, spec.arm, spec.seed, spec.label_budget,
                  -5.0 if spec.arm == "true" else -20.0, spec.steps)
    (out / "reacher" / "300000steps" / "random.json").write_text(json.dumps({"episodes": 3, "mean": -42.0,
                                                                               "std": 1.0}))
    page = write_results(out, tmp_path / "docs" / "results.md").read_text()
    # (-20 + 42) / (-5 + 42) = 0.59
    assert ("| reacher | 700 (target) | 300,000 | 1 | n/a (true ≤ 0); normalised 0.59 | ≥ 1.0 | **NOT MET** "
            "(provisional: 1 of 3 seeds) |") in page


def test_a_game_is_excluded_on_its_true_arm_alone(tmp_path):
    """Whether a game counts is decided by the true arm; the page says so before any
    learned run exists."""
    out = tmp_path / "runs"
    plan = [s for s in build_plan(["qbert", "seaquest"], [0], [], out) if s.arm == "true"]
    write_setting_files(plan, [])
    for spec in plan:
        _fake_run(spec.run_dir, spec.task, spec.arm, spec.seed, 0, 250.0, spec.steps)
    (out / "qbert" / "250000steps" / "random.json").write_text(json.dumps({"episodes": 10, "mean": 172.5,
                                                                             "std": 139.4}))
    (out / "seaquest" / "250000steps" / "random.json").write_text(json.dumps({"episodes": 10, "mean": 80.0,
                                                                                "std": 20.0}))
    page = write_results(out, tmp_path / "docs" / "results.md").read_text()
    # Qbert: 77.5 above random, pooled std sqrt(139.4^2 / 2) = 98.6.
    assert ("| qbert | 1,000,000 | 172.5 | 250.0 | — | no (77.5 ≤ 2 × 98.6) | — | excluded: the true arm "
            "does not clearly beat random at this budget (provisional: 1 of 3 seeds) |") in page
    assert "| seaquest | 1,000,000 | 80.0 | 250.0 | — | yes (170.0 > 2 × 14.1) | — | learned arm not yet run |" in page
    # Every suite game has a row: the ones never run say so.
    assert "| beamrider | — | — | — | — | — | — | not yet run |" in page
    assert "| qbert | — |" not in page


def test_records_survive_the_run_folders(tmp_path):
    """A fresh clone has the records but not the runs: the page keeps the numbers and
    the plan does not run them again."""
    out, records = tmp_path / "runs", tmp_path / "records"
    plan = build_plan(["halfcheetah"], [0], [700], out, steps=300_000)
    write_setting_files(plan, [])
    for spec in plan:
        _fake_run(spec.run_dir, spec.task, spec.arm, spec.seed, spec.label_budget,
                  1000.0 if spec.arm == "true" else 900.0, spec.steps)
    (out / "commands.jsonl").write_text(json.dumps({"date": "2026-01-01T10:00:00", "command": "python x",
                                                    "planned": [str(s.run_dir) for s in plan]}) + "\n")
    true_run = next(spec.run_dir for spec in plan if spec.arm == "true")
    (out / "logs").mkdir()
    host = host_record(true_run, [0.5, 1.0, 1.5])
    assert host["mean_load1"] == 1.0 and host["machine"] == machine_line()
    host["machine"] = "2 cores (Test CPU)"  # as if recorded on another machine
    (out / "logs" / f"{log_stem(true_run)}.load.json").write_text(json.dumps(host))
    save_records(out, records)
    save_records(out, records)  # idempotent: the command log is not doubled
    assert len((records / "commands.jsonl").read_text().splitlines()) == 1
    for spec in plan:
        kept = record_dir(spec.run_dir, records)
        assert sorted(p.name for p in kept.iterdir()) == ["config.json", "eval.csv", "summary.json"]
    import shutil
    shutil.rmtree(out)
    ready = prepare(plan, records)
    assert (len(ready.done), len(ready.todo)) == (2, 0)
    page = write_results(records, tmp_path / "results.md").read_text()
    assert "| halfcheetah | 700 (target) | 300,000 | 1 | 0.90 |" in page
    # Records gather runs from several machines: each table says which ran what.
    assert f"Runs on: 2 cores (Test CPU) (1 run); {UNRECORDED_MACHINE} (1 run)." in page
    assert "(load 1.0)" in page


def test_protocol_states_each_domains_evaluation_mode_from_the_presets():
    def setting(task, domain, overrides=(), runs=(object(),)):
        return Setting(Path(task), task, 1000, list(overrides), domain, 4, False, list(runs), None)

    assert evaluation_modes([setting("hopper", "mujoco"), setting("breakout", "atari")]) == (
        "Atari: actions sampled from the policy; MuJoCo: the policy's most likely action")
    both = [setting("breakout", "atari"), setting("pong", "atari", ["eval.deterministic=true"])]
    assert evaluation_modes(both) == "Atari: the policy's most likely action or actions sampled from the policy"
    assert evaluation_modes([setting("hopper", "mujoco", runs=())]) == "no runs"


def test_runs_made_with_other_settings_are_run_again_and_flagged(tmp_path):
    """A finished run (here or in the records) counts only with the settings the plan
    would use now; the page says which records are outdated, the plan runs them again and
    keeps the old folder aside."""
    out, records = tmp_path / "runs", tmp_path / "records"
    plan = build_plan(["breakout"], [0], [], out)
    write_setting_files(plan, [])
    true_spec, learned_spec = plan
    for spec in plan:
        _fake_run(spec.run_dir, spec.task, spec.arm, spec.seed, spec.label_budget, 2.0, spec.steps)
        preset = load_preset(spec.task, list(spec.overrides)).to_dict()
        if spec.arm == "learned":
            preset["reward"]["dropout"] = 0.5  # the reward model differs: the learned arm only
        del preset["task"]["fire_after_life_loss"]  # a setting added since: its default was False
        (spec.run_dir / "config.json").write_text(json.dumps({"started": "2026-01-01T10:00:00", "preset": preset}))
    assert stale_changes(true_spec) == ["task.fire_after_life_loss (false -> true)"]
    assert stale_changes(learned_spec) == ["reward.dropout (0.5 -> 0.0)", "task.fire_after_life_loss (false -> true)"]
    hopper = build_plan(["hopper"], [0], [700], out)[0]
    _fake_run(hopper.run_dir, "hopper", "true", 0, 0, 1.0, hopper.steps)
    (hopper.run_dir / "config.json").write_text(json.dumps({"preset": load_preset("hopper", list(hopper.overrides)).to_dict()}))
    assert stale_changes(hopper) == [] and is_finished(hopper)

    save_records(out, records)
    page = write_results(records, tmp_path / "results.md").read_text()
    assert ("- breakout/learned-500/seed0: recorded with other settings than the preset's now "
            "(reward.dropout (0.5 -> 0.0); task.fire_after_life_loss (false -> true)); the next plan runs it again.") in page

    ready = prepare(plan, records)
    assert ready.done == [] and ready.todo == plan
    assert ready.stale[true_spec] == ["task.fire_after_life_loss (false -> true)"]
    assert not true_spec.run_dir.exists()
    kept = list((out / "replaced" / "breakout" / true_spec.run_dir.parts[-3] / "true").glob("seed0-*/summary.json"))
    assert len(kept) == 1  # nothing finished is lost


def test_random_baseline_is_measured_again_when_the_task_changes(tmp_path):
    preset = load_preset("pendulum")
    first = random_baseline(tmp_path, preset, 1)
    assert first["settings"]["task"]["env_id"] == "Pendulum-v1"
    assert random_baseline(tmp_path, preset, 1) == first
    longer = load_preset("pendulum", ["eval.max_episode_steps=20"])
    assert random_baseline(tmp_path, longer, 1)["lengths"] == [20]


def test_current_step_follows_a_resumed_run(tmp_path):
    assert current_step(tmp_path) == 0  # nothing logged yet
    logs = tmp_path / "logs"
    (logs / "progress.csv").parent.mkdir(parents=True)
    (logs / "progress.csv").write_text("time/total_timesteps,x\n1024,0\n2048,0\n3072,0\n")
    assert current_step(tmp_path) == 3072
    # Resumed from the checkpoint at 2048: the steps after it are being redone, and the
    # new session's file is empty until its first row.
    (logs / "resumed_at_2048").mkdir()
    (logs / "resumed_at_2048" / "progress.csv").write_text("")
    assert current_step(tmp_path) == 2048
    # After a resume the old file stops and the run logs on in logs/resumed_at_<step>/.
    (logs / "resumed_at_2048" / "progress.csv").write_text("time/total_timesteps,x\n3072,0\n4096,\n")
    assert current_step(tmp_path) == 4096
    # Sessions in step order, not name order (resumed_at_10240 sorts before _2048 as text).
    (logs / "resumed_at_10240").mkdir()
    (logs / "resumed_at_10240" / "progress.csv").write_text("time/total_timesteps\n11264\n")
    assert [(step, p.parent.name) for step, p in progress_files(tmp_path)] == [
        (0, "logs"), (2048, "resumed_at_2048"), (10240, "resumed_at_10240")]


def test_checkpoint_step_counts_what_a_resumed_run_keeps(tmp_path):
    assert checkpoint_step(tmp_path) == 0  # no checkpoint: the run starts clean
    write_checkpoint(tmp_path, 926_208, {"anything": 1})
    assert checkpoint_step(tmp_path) == 926_208
    checkpoint_path(tmp_path).write_bytes(b"not a pickle")  # the run itself reports this one
    assert checkpoint_step(tmp_path) == 0


def test_an_interrupted_run_is_not_reported_as_failed(tmp_path):
    log = tmp_path / "run.log"
    assert run_status(0, True, 90.0, log) == "finished in 1.5 min"
    # A run stopped by a signal has written its checkpoint: the plan resumes it.
    for rc in (130, 143):
        assert "rerun the same command to resume" in run_status(rc, False, 5.0, log)
    assert run_status(1, False, 5.0, log) == f"FAILED (exit 1), see {log}"
    assert run_status(0, False, 5.0, log).startswith("FAILED")  # exit 0 without a summary


def test_the_plan_counts_only_finished_runs_as_done(tmp_path, capsys):
    plan = build_plan(["pendulum"], [0, 1], [20], tmp_path)  # a true and a learned run per seed
    finishes, interrupted, no_summary, crashes = plan
    exits = {finishes: 0, interrupted: 130, no_summary: 0, crashes: 1}

    class ExitAtOnce(LocalRunner):
        """Runs whose process ends as soon as it starts: the first with its summary, the
        second stopped by a signal (exit 130), the third with exit 0 but no summary, the
        last with exit 1."""

        def spawn(self, spec_path, log):
            spec = next(s for s in plan if str(s.rel_dir).replace("/", "__") in spec_path.name)
            if spec == finishes:
                spec.run_dir.mkdir(parents=True)
                (spec.run_dir / "summary.json").write_text("{}")
            return subprocess.Popen([sys.executable, "-c", f"raise SystemExit({exits[spec]})"])

    results = dict(execute(plan, plan, jobs=4, out=tmp_path, runner=ExitAtOnce(tmp_path / "logs")))
    # Exit 0 without a summary is a failure (main's exit status counts it), not a finish.
    assert results == {finishes: "finished", interrupted: "interrupted", no_summary: "failed", crashes: "failed"}
    line = [text for text in capsys.readouterr().out.splitlines() if text.startswith("[")][-1]
    # The unfinished runs' steps are still to do: a quarter of the plan, one run of four done.
    assert "plan 25% of" in line and "runs 1/4 (3 not finished)" in line
    assert len(list((tmp_path / "logs").glob("*.load.json"))) == 4  # the machine's load, per run
