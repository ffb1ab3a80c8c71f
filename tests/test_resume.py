"""Crash-safe runs: an interrupted run resumed from its checkpoint ends exactly as an
uninterrupted one; changed settings are refused; signals, a full disk, non-finite
values and run directories of other layout versions are handled with clear messages."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from clip_fixtures import make_pairs
from run_fixtures import eval_rows, tensors
from stable_baselines3 import PPO

import prefrl.envs.vec_env as vec_env
import prefrl.rundir.checkpoint_files as checkpoint
import prefrl.rundir.resume as run_dirs
import prefrl.training.pretraining as pretraining
from prefrl.cli.main import main
from prefrl.config.loading import load_preset
from prefrl.envs.factory import make_env
from prefrl.envs.state import capture_env_state, restore_env_state
from prefrl.feedback.choices import Choice
from prefrl.feedback.store import LabelStore
from prefrl.feedback.teachers import HumanTeacher
from prefrl.reward.model import RewardModel
from prefrl.rundir import RunDir, RunPaths
from prefrl.rundir.checkpoint_files import checkpoint_path, read_checkpoint
from prefrl.rundir.schema import RUN_DIR_SCHEMA
from prefrl.training.callbacks import StoredPair
from prefrl.training.checkpointing import NonFiniteError, RunCheckpointer, RunInterrupted
from prefrl.training.run import train
from prefrl.util.errors import PrefrlError

ROOT = Path(__file__).resolve().parents[1]
#: Four rollouts of 256 steps; a query round at every rollout end.
TINY = [
    "ppo.total_steps=1024", "ppo.n_steps=256", "ppo.batch_size=64", "ppo.n_epochs=2",
    "labels.budget=40", "labels.initial_labels=8", "labels.pretrain_epochs=3", "labels.rate_constant=1000",
    "labels.update_every_steps=256", "reward.epochs_per_update=2", "reward.hidden_sizes=[16,16]",
    "ppo.net_arch=[16,16]", "eval.every_steps=512", "eval.episodes=1",
]


def _train(task: str, run_dir: Path, extra: tuple[str, ...] = (), **kwargs) -> dict:
    preset = load_preset(task, TINY + list(extra))
    kwargs.setdefault("checkpoint_steps", 256)
    return train(preset, paths=RunPaths(run_dir, run_dir / "clips"), progress=False, **kwargs)


def _checkpoint_files(run_dir: Path) -> list[str]:
    """The kinds of file in a run's checkpoint folder (``tensors.<token>.pt`` -> ``tensors``)."""
    return sorted(p.name.split(".")[0] for p in (run_dir / "checkpoint").iterdir())


def _interrupt_at(monkeypatch, step: int, how: str = "sigint") -> None:
    """At the first env step >= ``step``: send SIGINT to this process, or crash like a
    SIGKILL (no more writes of any kind)."""
    real = RunCheckpointer._on_step

    def on_step(self) -> bool:
        if self.num_timesteps >= step and not getattr(self, "_fired", False):
            self._fired = True
            if how == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise _Crash(self.num_timesteps)
        return real(self)

    monkeypatch.setattr(RunCheckpointer, "_on_step", on_step)


class _Crash(BaseException):
    """A simulated hard kill: not an Exception, so nothing on the way handles it."""


def _labels(run_dir: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run_dir / "labels.jsonl").read_text().splitlines()]
    return [(r["pair_id"], r["left_clip"], r["right_clip"], r["choice"]) for r in rows]


def _assert_same_run(a: Path, b: Path, learned: bool = True) -> None:
    """Same policy weights, evaluation curve and (learned arm) labels and reward weights."""
    policy_a = PPO.load(a / "policy.zip", device="cpu").policy.state_dict()
    policy_b = PPO.load(b / "policy.zip", device="cpu").policy.state_dict()
    for key in policy_a:
        assert torch.equal(policy_a[key], policy_b[key]), key
    assert eval_rows(a) == eval_rows(b)
    summary_a, summary_b = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for key in ("env_steps", "labels_used", "final_true_return", "pretrain_env_steps"):
        assert summary_a[key] == summary_b[key], key
    if learned:
        assert _labels(a) == _labels(b)
        net_a = torch.load(a / "reward_model.pt", weights_only=False)
        net_b = torch.load(b / "reward_model.pt", weights_only=False)
        for key in ("net", "optimizer"):  # the weights, and Adam's moments and step counts
            tensors_a, tensors_b = dict(tensors(net_a[key], key)), dict(tensors(net_b[key], key))
            assert tensors_a.keys() == tensors_b.keys() and tensors_a, key
            for name in tensors_a:
                assert torch.equal(tensors_a[name], tensors_b[name]), name
        assert net_a["optimizer"]["param_groups"] == net_b["optimizer"]["param_groups"]
        assert torch.equal(net_a["norm_mean"], net_b["norm_mean"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted learned pendulum run."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    _train("pendulum", run_dir)
    return run_dir


# --------------------------------------------------------------------------- exact resume


def test_sigint_then_resume_ends_as_the_uninterrupted_run(reference, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    _interrupt_at(monkeypatch, 300)
    with pytest.raises(RunInterrupted, match="interrupted by SIGINT at step 512") as info:
        _train("pendulum", run_dir)
    assert info.value.exit_status == 130
    assert "finishing this rollout to save a checkpoint" in capsys.readouterr().err
    saved = read_checkpoint(run_dir)
    assert saved["step"] == 512 and not (run_dir / "summary.json").exists()
    labels_then = saved["state"]["prefs"]["labels_used"]
    # Labelled pairs are kept by id: their clips are in the label store already.
    kept = saved["state"]["prefs"]["reward_model"]["labels"]
    assert kept and all(isinstance(label.pair, StoredPair) for label in kept)
    monkeypatch.undo()

    summary = _train("pendulum", run_dir)
    assert summary["resumed_at_step"] == 512
    assert labels_then < summary["labels_used"]  # query rounds happened after the resume
    _assert_same_run(reference, run_dir)


def test_a_hard_kill_resumes_from_the_last_checkpoint(reference, tmp_path, monkeypatch):
    """Killed after a query round the checkpoint does not know of: its labels are in the
    label store already; the resumed run asks the same pairs and ends the same."""
    run_dir = tmp_path / "run"
    _interrupt_at(monkeypatch, 900, how="crash")
    with pytest.raises(_Crash):
        _train("pendulum", run_dir, checkpoint_steps=512)
    assert read_checkpoint(run_dir)["step"] == 512
    monkeypatch.undo()
    _train("pendulum", run_dir, checkpoint_steps=512)
    _assert_same_run(reference, run_dir)


def test_a_run_killed_before_its_first_checkpoint_starts_over(reference, tmp_path, monkeypatch):
    """Killed while pretraining (labels asked and stored, no checkpoint yet): the same
    command starts the run over in its directory and ends as the uninterrupted run."""
    real_fit = pretraining.fit_reward_model

    def crash(*args, **kwargs):
        raise _Crash(0)

    monkeypatch.setattr(pretraining, "fit_reward_model", crash)
    run_dir = tmp_path / "run"
    with pytest.raises(_Crash):
        _train("pendulum", run_dir)
    assert not checkpoint_path(run_dir).exists() and (run_dir / "clips" / "labels.sqlite").is_file()
    monkeypatch.setattr(pretraining, "fit_reward_model", real_fit)
    (run_dir / "checkpoint").mkdir()
    (run_dir / "checkpoint" / ".state.json.x1y2.tmp").write_bytes(b"torn")  # a write cut by a kill
    (run_dir / "checkpoint" / "tensors.0-x1y2.pt").write_bytes(b"torn")  # a data file never committed
    _train("pendulum", run_dir)
    _assert_same_run(reference, run_dir)
    assert _checkpoint_files(run_dir) == ["arrays", "state", "tensors"]


def test_mujoco_run_with_normalisation_resumes_exactly(tmp_path, monkeypatch):
    """InvertedPendulum, observations and rewards normalised, lagged fitting (frozen
    predictions across the checkpoint)."""
    extra = ("ppo.total_steps=768", "labels.budget=24")
    _train("invertedpendulum", tmp_path / "ref", extra, fit="lagged")
    _interrupt_at(monkeypatch, 300)
    with pytest.raises(RunInterrupted):
        _train("invertedpendulum", tmp_path / "run", extra, fit="lagged")
    monkeypatch.undo()
    _train("invertedpendulum", tmp_path / "run", extra, fit="lagged")
    _assert_same_run(tmp_path / "ref", tmp_path / "run")


@pytest.mark.parametrize("task", ["cartpole", "invertedpendulum", "pong"])
def test_env_state_restores_exactly(task, tmp_path):
    """A captured env state put into another env (other seed) continues identically:
    classic control, MuJoCo (whole MjData) and Atari (emulator with its RNG), also
    after a trip through the checkpoint files."""
    preset = load_preset(task, ["task.sticky_action_prob=0.25"] if task == "pong" else [])
    source, target = make_env(preset), make_env(preset)
    source.reset(seed=1)
    target.reset(seed=2)
    source.action_space.seed(0)
    actions = [source.action_space.sample() for _ in range(120)]
    for action in actions[:40]:
        source.step(action)
    checkpoint.write_checkpoint(tmp_path, 40, {"env": capture_env_state(source)})
    restore_env_state(target, read_checkpoint(tmp_path)["state"]["env"])
    for action in actions[40:]:
        obs_a, reward_a, *_ = source.step(action)
        obs_b, reward_b, *_ = target.step(action)
        assert np.array_equal(obs_a, obs_b) and reward_a == reward_b


# --------------------------------------------------------------------------- settings and signals


def test_sigterm_checkpoints_and_changed_settings_are_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    sets = ["ppo.n_steps=256", "ppo.batch_size=64", "ppo.n_epochs=2", "ppo.net_arch=[16,16]",
            "eval.every_steps=512", "eval.episodes=1"]
    args = ["train", "pendulum", "--reward", "true", "--run-dir", str(run_dir), "--no-progress",
            "--checkpoint-every", "0", "--steps", "2048", *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.Popen([sys.executable, "-m", "prefrl.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    while not checkpoint_path(run_dir).is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM at step" in err
    assert f"resume with: prefrl train pendulum --reward true --run-dir {run_dir}" in err
    step = read_checkpoint(run_dir)["step"]
    assert 0 <= step < 2048

    # Other settings: refused, naming each key with its old and new value.
    assert main(args + ["--set", "ppo.learning_rate=0.01", "--seed", "3"]) == 2
    message = capsys.readouterr().err.strip()
    assert message == (f"prefrl: error: {run_dir} was started with different settings: ppo.learning_rate "
                       "(0.001 -> 0.01), seed (0 -> 3); resume with the same settings, or pass --force")
    assert read_checkpoint(run_dir)["step"] == step  # untouched

    # --force continues with the new settings and records what changed.
    assert main(args + ["--set", "eval.episodes=2", "--force"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 2048 and summary["resumed_at_step"] == step
    config = json.loads((run_dir / "config.json").read_text())
    assert config["changed_on_resume"] == [{"step": step, "changes": ["eval.episodes (1 -> 2)"]}]
    assert config["preset"]["eval"]["episodes"] == 2 and config["run_dir_schema"] == RUN_DIR_SCHEMA


def test_a_run_started_before_a_setting_existed_resumes_with_its_old_behaviour(tmp_path):
    """config.json of an earlier prefrl lacks reward.max_pairs_per_update: it resumes
    when the new run leaves the setting at the old behaviour (0), and is refused when
    the new run sets it."""
    preset = load_preset("pendulum")
    config = {"task": "pendulum", "arm": "learned", "seed": 0, "run_dir_schema": RUN_DIR_SCHEMA,
              "preset": json.loads(json.dumps(preset.to_dict()))}
    old = json.loads(json.dumps(config))
    del old["preset"]["reward"]["max_pairs_per_update"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(old))
    assert run_dirs.open_run_dir(run_dir, config) == (None, [])
    capped = json.loads(json.dumps(config))
    capped["preset"]["reward"]["max_pairs_per_update"] = 768
    with pytest.raises(PrefrlError, match=r"reward.max_pairs_per_update \(0 -> 768\)"):
        run_dirs.open_run_dir(run_dir, capped)


def test_a_run_directory_in_use_is_refused(tmp_path):
    """A second trainer (here: a second open of the lock, as flock locks are per open
    file) is refused while the first holds the directory."""
    run_dir = tmp_path / "run"
    with RunDir(run_dir).lock():
        with pytest.raises(PrefrlError, match=f"run directory '{run_dir}' is in use by another prefrl train "
                                              f"\\(pid {os.getpid()}\\); wait for it to finish or stop it first"):
            _train("pendulum", run_dir, arm="true")
    with RunDir(run_dir).lock():  # free again
        pass


@pytest.mark.parametrize("text, expected", [("50000", (50000, 0.0)), ("10m", (0, 600.0)), ("90s", (0, 90.0)),
                                            ("1.5h", (0, 5400.0)), ("0", (0, 0.0))])
def test_checkpoint_interval_option(text, expected):
    from prefrl.cli.run import checkpoint_interval

    assert checkpoint_interval(text) == expected


@pytest.mark.parametrize("text", ["-5", "ten", "5x", "nanm", "infs", ""])
def test_bad_checkpoint_interval_is_refused(text, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "pendulum", "--checkpoint-every", text])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prefrl: error: train: argument --checkpoint-every:") and "\n" not in err
    assert "give e.g. 50000, 90s, 10m or 1h" in err


def test_a_finished_run_is_not_resumed(reference):
    with pytest.raises(PrefrlError, match="already holds a run that finished"):
        _train("pendulum", reference)


# --------------------------------------------------------------------------- failures


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real_atomic_file = checkpoint.atomic_file
    committed = []

    class FullDisk:
        """A file that fills up after a few kilobytes."""

        def __init__(self, handle):
            self.handle, self.left = handle, 4096

        def write(self, data):
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= len(data)
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    @contextlib.contextmanager
    def atomic_file(path, mode="wb"):
        """From the third checkpoint on, each of its files fills the disk."""
        with real_atomic_file(path, mode) as handle:
            yield FullDisk(handle) if len(committed) >= 2 else handle
        if Path(path).name == "state.json":
            committed.append(path)

    monkeypatch.setattr(checkpoint, "atomic_file", atomic_file)
    run_dir = tmp_path / "run"
    with pytest.raises(PrefrlError, match=r"writing the checkpoint of step 512 .* failed \(No space left on device\); "
                                          r"the checkpoint of step 256 is kept"):
        _train("pendulum", run_dir, arm="true")
    assert read_checkpoint(run_dir)["step"] == 256
    assert _checkpoint_files(run_dir) == ["arrays", "state", "tensors"]


class _NanRewardAfter(gym.Wrapper):
    def __init__(self, env, steps):
        super().__init__(env)
        self.left = steps

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.left -= 1
        return obs, float("nan") if self.left < 0 else reward, terminated, truncated, info


@pytest.mark.parametrize("arm", ["true", "learned"])
def test_a_nan_env_reward_stops_the_run_and_keeps_the_checkpoint(tmp_path, monkeypatch, arm):
    def nan_env(preset, evaluation=False, **kwargs):
        env = make_env(preset, evaluation=evaluation, **kwargs)
        # The learned arm's random policy takes 200 steps before learning starts.
        return env if evaluation else _NanRewardAfter(env, 600 if arm == "true" else 800)

    monkeypatch.setattr(vec_env, "make_env", nan_env)
    run_dir = tmp_path / "run"
    # Learned arm: the env reward is the true reward the teacher judges by (info["true_reward"]).
    with pytest.raises(NonFiniteError, match=r"step 601, env 0: the environment returned a non-finite reward "
                                             r"\(nan\); the run is stopped, its checkpoint of step 512 is kept"):
        _train("pendulum", run_dir, arm=arm)
    assert read_checkpoint(run_dir)["step"] == 512


def test_a_nan_learned_reward_stops_the_run(tmp_path, monkeypatch):
    real_predict = RewardModel.predict
    calls = []

    def predict(self, observations, actions=None):
        calls.append(1)
        rewards = real_predict(self, observations, actions)
        return rewards * np.nan if len(calls) >= 2 else rewards

    monkeypatch.setattr(RewardModel, "predict", predict)
    with pytest.raises(NonFiniteError, match=r"step 512: the reward model returned a non-finite reward; "
                                             r"the run is stopped, its checkpoint of step 256 is kept"):
        _train("pendulum", tmp_path / "run")
    assert read_checkpoint(tmp_path / "run")["step"] == 256


# --------------------------------------------------------------------------- run-dir versions


def _config(run_dir: Path, **values) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"task": "pendulum", "arm": "true", "seed": 0, **values}))


def test_run_directory_versions(tmp_path):
    newer = tmp_path / "newer"
    _config(newer, run_dir_schema=RUN_DIR_SCHEMA + 1)
    with pytest.raises(PrefrlError, match=f"written by a newer prefrl \\(run-dir schema {RUN_DIR_SCHEMA + 1}, "
                                          f"this prefrl reads up to {RUN_DIR_SCHEMA}\\)"):
        _train("pendulum", newer, arm="true")

    # Made before runs had checkpoints: finished ones stay as they are, unfinished ones
    # cannot be continued.
    old_finished = tmp_path / "old_finished"
    _config(old_finished)
    (old_finished / "summary.json").write_text("{}")
    with pytest.raises(PrefrlError, match="already holds a run that finished"):
        _train("pendulum", old_finished, arm="true")
    old_unfinished = tmp_path / "old_unfinished"
    _config(old_unfinished)
    with pytest.raises(PrefrlError, match="earlier prefrl without checkpoints, which cannot be resumed"):
        _train("pendulum", old_unfinished, arm="true")

    # A checkpoint of a newer layout is refused too.
    preset = load_preset("pendulum", TINY)
    current = tmp_path / "current"
    config = run_dirs.run_config(preset, "true", 0, RunPaths(current, current / "clips"), "synthetic", None,
                                 "rollout", "background")
    current.mkdir()
    (current / "config.json").write_text(json.dumps(config))
    checkpoint.write_checkpoint(current, 0, {})
    manifest = json.loads(checkpoint_path(current).read_text())
    checkpoint_path(current).write_text(json.dumps({**manifest, "schema": RUN_DIR_SCHEMA + 1}))
    with pytest.raises(PrefrlError, match="checkpoint/state.json was written by a newer prefrl"):
        _train("pendulum", current, arm="true")


def test_a_human_teachers_pending_queries_come_back(tmp_path):
    """The queries a person has not answered yet stay pending after a resume, and only
    labels the trainer has not read yet are handed over."""
    pairs = make_pairs(3, kind="vector")
    store = LabelStore(tmp_path, "testtask")
    teacher = HumanTeacher(store, settle_seconds=0.0)
    teacher.ask(pairs, step=100)
    store.record_label(pairs[0].pair_id, Choice.LEFT, "alice")
    assert [a.pair.pair_id for a in teacher.answers()] == [pairs[0].pair_id]
    checkpoint.write_checkpoint(tmp_path / "run", 0, teacher.run_state())
    state = read_checkpoint(tmp_path / "run")["state"]  # as through a checkpoint file
    store.close()

    store = LabelStore(tmp_path, "testtask")  # the resumed process
    resumed = HumanTeacher(store, settle_seconds=0.0)
    resumed.load_run_state(state)
    assert resumed.pending() == 2
    store.record_label(pairs[2].pair_id, Choice.RIGHT, "alice")  # answered while the trainer was down
    answers = resumed.answers()
    assert [(a.pair.pair_id, a.choice, a.step) for a in answers] == [(pairs[2].pair_id, Choice.RIGHT, 100)]
    assert resumed.pending() == 1
    store.close()


def test_a_human_run_killed_rounds_after_its_checkpoint_resumes(tmp_path, monkeypatch):
    """A person's answers arrive at other moments in a resumed run, so it takes other
    turns than the killed session did after the checkpoint: its new clips and pairs get
    ids past the killed session's (reusing them was refused as a clips folder of another
    run), whose pairs stay, count as asked and have their labels handed over."""
    import threading

    run_dir, clips = tmp_path / "run", tmp_path / "run" / "clips"
    stop = threading.Event()

    def person() -> None:  # answers every pair as soon as it is there
        store = None
        while not stop.is_set():
            if store is None and (clips / "labels.sqlite").is_file():
                store = LabelStore(clips, "pendulum")
            pair_id = store.lease_next("person", lease_seconds=30) if store is not None else None
            if pair_id is None:
                time.sleep(0.02)
            else:
                store.record_label(pair_id, Choice.LEFT if len(pair_id) % 2 else Choice.RIGHT, "person")
        if store is not None:
            store.close()

    labeller = threading.Thread(target=person, daemon=True)
    labeller.start()
    try:
        # Checkpoint only at the start of learning; killed after three query rounds.
        _interrupt_at(monkeypatch, 900, how="crash")
        with pytest.raises(_Crash):
            _train("pendulum", run_dir, teacher_kind="human", checkpoint_steps=10**6, checkpoint_seconds=0)
        assert read_checkpoint(run_dir)["step"] == 0
        monkeypatch.undo()
        with LabelStore(clips, "pendulum", readonly=True) as store:
            killed_pairs = {row[0]: tuple(row[1:]) for row in
                            store.connection.execute("SELECT pair_id, left_clip, right_clip FROM pairs")}
        orphans = 1 + max(int(p[1:]) for p in killed_pairs)  # the killed session asked q000000 .. here
        time.sleep(3.5)  # the labels of the killed session's pairs settle: this session reads them early
        summary = _train("pendulum", run_dir, teacher_kind="human", checkpoint_steps=10**6, checkpoint_seconds=0)
    finally:
        stop.set()
        labeller.join(timeout=30)
    assert summary["env_steps"] == 1024 and summary["resumed_at_step"] == 0
    with LabelStore(clips, "pendulum", readonly=True) as store:
        pairs = {row[0]: tuple(row[1:]) for row in
                 store.connection.execute("SELECT pair_id, left_clip, right_clip FROM pairs")}
        assert store.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert orphans > 8 and all(pairs[p] == clips_of for p, clips_of in killed_pairs.items())  # kept as they were
    assert len(pairs) <= 40  # the budget counts the killed session's pairs too
    new = [p for p in pairs if p not in killed_pairs]
    assert new and all(int(p[1:]) >= orphans for p in new)


def _old_layout_run(run_dir: Path) -> Path:
    shutil.copytree(Path(__file__).resolve().parent / "fixtures" / "old_layout_run", run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    config["clips_dir"] = str(run_dir / "clips")  # recorded where the fixture was made
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def test_a_run_directory_of_the_old_layout_resumes(reference, tmp_path):
    """``tests/fixtures/old_layout_run`` was written by the single-module layout (before
    the package was split into stages), killed after its checkpoint at step 512."""
    run_dir = _old_layout_run(tmp_path / "run")
    # A pickle: opened only when the user says the run directory is theirs.
    with pytest.raises(PrefrlError) as refused:
        _train("pendulum", run_dir, checkpoint_steps=512)
    assert "--trust-old-checkpoint" in str(refused.value) and "\n" not in str(refused.value)
    with pytest.warns(checkpoint.OldCheckpointWarning, match="can run code"):
        summary = _train("pendulum", run_dir, checkpoint_steps=512, trust_old_checkpoint=True)
    assert summary["resumed_at_step"] == 512
    _assert_same_run(reference, run_dir)


def test_a_run_resumed_from_the_old_format_goes_on_in_the_new_one(reference, tmp_path):
    """Its next checkpoint replaces the pickle, and ``config.json`` gets the new layout
    version, so that an older prefrl refuses the directory instead of starting over."""
    run_dir = _old_layout_run(tmp_path / "run")
    with pytest.warns(checkpoint.OldCheckpointWarning):
        _train("pendulum", run_dir, checkpoint_steps=256, trust_old_checkpoint=True)
    _assert_same_run(reference, run_dir)
    assert _checkpoint_files(run_dir) == ["arrays", "state", "tensors"]
    assert read_checkpoint(run_dir)["step"] == 768
    assert json.loads((run_dir / "config.json").read_text())["run_dir_schema"] == RUN_DIR_SCHEMA


class _Planted:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_old_checkpoint_is_refused_and_never_run(tmp_path):
    """Someone's run directory whose ``checkpoint/state.pt`` runs code when unpickled:
    refused in one line without the flag, refused by the allow-list with it."""
    run_dir = _old_layout_run(tmp_path / "run")
    marker = tmp_path / "marker"
    planted = {"format": checkpoint.CHECKPOINT_FORMAT, "schema": 1, "step": 512, "state": _Planted(marker)}
    (run_dir / "checkpoint" / "state.pt").write_bytes(pickle.dumps(planted))
    with pytest.raises(PrefrlError, match=r"state\.pt is a checkpoint of an earlier prefrl, a pickle: opening a "
                                          r"pickle can run code .* resume with --trust-old-checkpoint") as refused:
        _train("pendulum", run_dir, checkpoint_steps=512)
    assert "\n" not in str(refused.value)
    with pytest.warns(checkpoint.OldCheckpointWarning), pytest.raises(PrefrlError) as refused:
        _train("pendulum", run_dir, checkpoint_steps=512, trust_old_checkpoint=True)
    assert "was refused: it names posix.system, which a run checkpoint never holds" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert not marker.exists()
    assert (run_dir / "checkpoint" / "state.pt").is_file()  # left as it was
