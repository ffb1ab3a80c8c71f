"""A training run with a human teacher: it waits only for the initial labels, then keeps
training while a (scripted) person labels in another process."""

import json
import subprocess
import sys
import time
from pathlib import Path

from prefrl.feedback.choices import Choice
from prefrl.feedback.store import LabelStore


def test_human_run_waits_for_initial_labels_then_trains_while_labels_arrive(tmp_path: Path) -> None:
    run_dir, clips = tmp_path / "run", tmp_path / "clips"
    command = [
        sys.executable, "-m", "prefrl.cli", "train", "pendulum", "--teacher", "human",
        "--run-dir", str(run_dir), "--clips-dir", str(clips), "--steps", "1024", "--no-progress",
        "--set", "labels.budget=16", "--set", "labels.initial_labels=4",
        "--set", "ppo.n_steps=256", "--set", "eval.every_steps=1024", "--set", "eval.episodes=1",
    ]
    trainer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    labelled = 0
    deadline = time.time() + 240
    store = None
    try:
        while trainer.poll() is None and time.time() < deadline:
            if store is None and (clips / "labels.sqlite").is_file():
                store = LabelStore(clips, "pendulum")
            if store is not None:
                pair_id = store.lease_next("scripted-person", lease_seconds=30)
                if pair_id is not None:
                    labelled += store.record_label(pair_id, Choice.LEFT, "scripted-person")
                    continue
            time.sleep(0.2)
        output = trainer.communicate(timeout=60)[0]
    finally:
        if trainer.poll() is None:
            trainer.kill()
        if store is not None:
            store.close()
    assert trainer.returncode == 0, output
    assert f"prefrl label {clips}" in output, "the run tells the person how to start the viewer"
    assert "waiting for 4 initial labels" in output
    summary = json.loads((run_dir / "summary.json").read_text())
    # labels given in the last few seconds may arrive after the run ended: never waited for
    assert 4 <= summary["labels_used"] <= labelled
    assert summary["env_steps"] >= 1024


def test_clips_then_labels_then_train_from_that_fixed_set(tmp_path: Path) -> None:
    clips = tmp_path / "pendulum_clips"
    done = subprocess.run([sys.executable, "-m", "prefrl.cli", "clips", "pendulum", "--pairs", "8",
                           "--out", str(clips)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with LabelStore(clips, "pendulum") as store:
        answers = [Choice.LEFT, Choice.RIGHT, Choice.TIE, Choice.CANT_TELL] * 2
        for choice in answers:
            pair_id = store.lease_next("person", lease_seconds=30)
            assert pair_id is not None
            assert store.record_label(pair_id, choice, "person")
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "prefrl.cli", "train", "pendulum", "--labels-from", str(clips),
                           "--run-dir", str(run_dir), "--clips-dir", str(tmp_path / "run_clips"),
                           "--steps", "512", "--set", "ppo.n_steps=256", "--set", "eval.every_steps=512",
                           "--set", "eval.episodes=1", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["labels_used"] == 6  # the two "can't tell" answers are not trained on
    exported = (run_dir / "labels.jsonl").read_text().splitlines()
    assert len(exported) == 8 and all(json.loads(line)["labeller"] == "person" for line in exported)
    # a folder without a label database is refused with a one-line error, exit 2
    done = subprocess.run([sys.executable, "-m", "prefrl.cli", "train", "pendulum", "--labels-from",
                           str(tmp_path / "nothing")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "nothing" in done.stderr and done.stderr.count("\n") == 1
