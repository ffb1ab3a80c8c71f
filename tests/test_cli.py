"""The command line: listing, bad input (one line, exit 2), a tiny train + compare."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefrl.cli.main import main
from prefrl.config.loading import available_tasks, load_preset
from prefrl.config.settings import PPOSettings


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefrl.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_tasks_lists_every_preset(capsys):
    assert main(["tasks"]) == 0
    rows = [line.split(maxsplit=2) for line in capsys.readouterr().out.splitlines()]
    presets = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "envs").glob("*.toml"))
    assert [row[0] for row in rows] == presets  # one line per preset file, in name order
    assert {"hopper", "halfcheetah", "pong", "beamrider", "cartpole"} <= set(presets)
    for name, env_id, description in rows:
        task = load_preset(name).task
        assert env_id == task.env_id and description == task.description + (" [test preset]" if task.for_tests else "")


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "nosuchtask"], f"unknown task 'nosuchtask'; valid tasks: {', '.join(available_tasks())}"),
        (["train", "pendulum", "--set", "ppo.nosuchkey=1"],
         "--set 'ppo.nosuchkey=1': unknown setting 'ppo.nosuchkey'; valid keys of [ppo]: "
         + ", ".join(sorted(f.name for f in dataclasses.fields(PPOSettings)))),
        (["train", "pendulum", "--set", "ppo.total_steps=abc"],
         "--set ppo.total_steps = 'abc' is not a whole number; give a whole number, e.g. 2048"),
        (["train", "pendulum", "--set", "nonsense"],
         "--set 'nonsense' is malformed; write section.key=value, e.g. ppo.total_steps=10000"),
        (["train", "pendulum", "--labels", "0"], "train: argument --labels: 0 is not positive; give a positive whole number"),
        (["train", "pendulum", "--steps", "-5"], "train: argument --steps: -5 is not positive; give a positive whole number"),
        (["train", "pendulum", "--set", "labels.initial_labels=999"],
         "labels.initial_labels = 999 in --set overrides is invalid: it is above labels.budget = 40; "
         "lower labels.initial_labels or raise labels.budget (--labels)"),
        (["train", "pendulum", "--set", "task.clip_length=500"],
         "task.clip_length = 500 in --set overrides is invalid: a clip is longer than task.horizon = 200 "
         "(a whole episode); lower task.clip_length or raise task.horizon"),
        (["compare", "/nonexistent/run"],
         "run directory '/nonexistent/run' does not exist; give a folder written by `prefrl train`"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        sys.exit(main(args))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == f"prefrl: error: {message}\n"


def test_malformed_preset_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[task\nenv_id = 'x'")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.toml" in err and err.count("\n") == 0


def test_train_and_compare_from_the_command_line(tmp_path):
    common = ["--steps", "512", "--set", "ppo.n_steps=256", "--set", "eval.every_steps=512",
              "--set", "eval.episodes=1", "--no-progress"]
    for arm in ("true", "learned"):
        done = run_cli("train", "pendulum", "--reward", arm, "--labels", "20", "--run-dir", str(tmp_path / arm),
                       "--clips-dir", str(tmp_path / f"clips_{arm}"), *common)
        assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "learned" / "summary.json").read_text())
    assert summary["arm"] == "learned" and summary["label_budget"] == 20
    done = run_cli("compare", str(tmp_path), "--out", str(tmp_path / "cmp"))
    assert done.returncode == 0, done.stderr
    assert "pendulum" in done.stdout and (tmp_path / "cmp" / "comparison.png").is_file()


def test_run_folders_named_alike_get_their_own_clips_folders(tmp_path, monkeypatch):
    from prefrl.cli.run import default_clips_dir

    monkeypatch.chdir(tmp_path)
    # Sweeps name run folders alike (.../uniform/seed3, .../disagreement/seed3): two runs
    # sharing a label database would stop the second at its first query.
    assert default_clips_dir(Path("runs/qsel/uniform/seed3")) == Path("clips/qsel__uniform__seed3")
    assert default_clips_dir(Path("runs/qsel/disagreement/seed3")) == Path("clips/qsel__disagreement__seed3")
    assert default_clips_dir(tmp_path / "elsewhere" / "seed3") == Path("clips/elsewhere__seed3")
    outside = [default_clips_dir(Path(f"/{top}/seed3")) for top in ("a", "b")]
    assert outside[0] != outside[1] and all(p.parent == Path("clips") and p.name.startswith("seed3-") for p in outside)
