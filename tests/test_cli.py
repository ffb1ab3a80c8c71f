"""The command line: listing, bad input (one line, exit 2), a tiny train + compare."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefrl.cli.main import main


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefrl.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_tasks_lists_every_preset(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("hopper", "halfcheetah", "pong", "beamrider", "cartpole"):
        assert name in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "nosuchtask"], "nosuchtask"),
        (["train", "pendulum", "--set", "ppo.nosuchkey=1"], "ppo.nosuchkey"),
        (["train", "pendulum", "--set", "ppo.total_steps=abc"], "abc"),
        (["train", "pendulum", "--set", "nonsense"], "nonsense"),
        (["train", "pendulum", "--labels", "0"], "0"),
        (["train", "pendulum", "--steps", "-5"], "-5"),
        (["train", "pendulum", "--set", "labels.initial_labels=999"], "999"),
        (["train", "pendulum", "--set", "task.clip_length=500"], "500"),
        (["compare", "/nonexistent/run"], "/nonexistent/run"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        sys.exit(main(args))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert needle in err and err.startswith("prefrl")


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
    from prefrl.cli.main import default_clips_dir

    monkeypatch.chdir(tmp_path)
    # Sweeps name run folders alike (.../uniform/seed3, .../disagreement/seed3): two runs
    # sharing a label database would stop the second at its first query.
    assert default_clips_dir(Path("runs/qsel/uniform/seed3")) == Path("clips/qsel__uniform__seed3")
    assert default_clips_dir(Path("runs/qsel/disagreement/seed3")) == Path("clips/qsel__disagreement__seed3")
    assert default_clips_dir(tmp_path / "elsewhere" / "seed3") == Path("clips/elsewhere__seed3")
    outside = [default_clips_dir(Path(f"/{top}/seed3")) for top in ("a", "b")]
    assert outside[0] != outside[1] and all(p.parent == Path("clips") and p.name.startswith("seed3-") for p in outside)
