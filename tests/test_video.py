"""``prefrl video`` on a tiny MuJoCo run (trained) and a tiny Atari run (policy and
reward model made directly): playable mp4 files, read back with OpenCV."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from prefrl.analysis.video import HEADER_HEIGHT, STRIP_HEIGHT, compose_frame, record_video
from prefrl.cli.main import main
from prefrl.config.loading import load_preset
from prefrl.rundir import RunPaths
from prefrl.training.run import train

TINY_MUJOCO = [
    "ppo.total_steps=256", "ppo.n_steps=128", "ppo.batch_size=64", "ppo.n_epochs=1",
    "labels.budget=10", "labels.initial_labels=4", "labels.pretrain_epochs=2", "labels.update_every_steps=128",
    "reward.epochs_per_update=1", "eval.every_steps=256", "eval.episodes=1", "eval.max_episode_steps=20",
]


def read_back(path: Path) -> tuple[int, int, int, list[np.ndarray]]:
    """``(frame count, width, height, frames)`` as a player would decode them."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"{path} does not open"
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    capture.release()
    return len(frames), width, height, frames


@pytest.fixture(scope="module")
def mujoco_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("video") / "invertedpendulum_learned"
    train(load_preset("invertedpendulum", TINY_MUJOCO), arm="learned", seed=0,
          paths=RunPaths(run_dir, run_dir / "clips"), progress=False)
    return run_dir


def test_mujoco_video_from_the_command_line(mujoco_run, tmp_path, capsys):
    out = tmp_path / "pendulum.mp4"
    assert main(["video", str(mujoco_run), "--episodes", "2", "--max-steps", "12", "--out", str(out)]) == 0
    assert "true returns" in capsys.readouterr().out
    count, width, height, frames = read_back(out)
    # Each episode: its first frame plus one per step (at most 12 steps).
    assert 4 <= count <= 2 * 13
    # InvertedPendulum renders 480x480: the frame, the header and two reward strips.
    assert (width, height) == (480, 480 + HEADER_HEIGHT + 2 * STRIP_HEIGHT)
    assert all(f.shape == (height, width, 3) for f in frames)
    scene = frames[-1][:480]
    assert scene.std() > 5, "the rendered scene is blank"


def test_mujoco_video_api_reports_both_returns(mujoco_run, tmp_path):
    result = record_video(mujoco_run, tmp_path / "v.mp4", episodes=1, max_steps=8)
    assert len(result.true_returns) == len(result.learned_returns) == 1
    count, width, height, _ = read_back(result.path)
    assert (count, width, height) == (result.frames, result.width, result.height)
    assert result.fps == 25  # InvertedPendulum's dt = 0.04 s


def make_atari_run(run_dir: Path, max_steps: int) -> Path:
    """A learned-arm Pong run directory as `prefrl train` leaves it, with an untrained
    policy and reward model (training either would take minutes)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from prefrl.envs.factory import make_env
    from prefrl.reward.model import RewardModel

    preset = load_preset("pong", [f"eval.max_episode_steps={max_steps}", "ppo.n_steps=16", "ppo.batch_size=16"])
    run_dir.mkdir(parents=True)
    venv = DummyVecEnv([lambda: make_env(preset)])
    PPO("CnnPolicy", venv, n_steps=16, batch_size=16, seed=0, device="cpu").save(run_dir / "policy.zip")
    RewardModel(venv.observation_space, venv.action_space, preset.reward, seed=0).save(run_dir / "reward_model.pt")
    venv.close()
    config = {"task": "pong", "arm": "learned", "seed": 0, "preset": preset.to_dict()}
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def test_atari_video(tmp_path):
    run_dir = make_atari_run(tmp_path / "pong_learned", max_steps=20)
    result = record_video(run_dir, episodes=1)
    assert result.path == run_dir / "video.mp4"
    count, width, height, frames = read_back(result.path)
    assert count == result.frames == 21  # the first frame and 20 steps (eval.max_episode_steps)
    # The 160x210 Atari frame is scaled 3x; the learned and the true reward are plotted.
    assert (width, height) == (480, 630 + HEADER_HEIGHT + 2 * STRIP_HEIGHT)
    assert result.fps == 15  # 60 emulator frames a second, frame skip 4
    assert len(result.learned_returns) == 1 and np.isfinite(result.learned_returns[0])
    # The learned-reward strip has a curve drawn in its colour (orange, BGR ~ (40, 150, 255)).
    strip = frames[-1][630 + HEADER_HEIGHT + STRIP_HEIGHT:]
    orange = (strip[..., 2] > 200) & (strip[..., 1] > 100) & (strip[..., 0] < 120)
    assert orange.sum() > 50


def test_compose_frame_true_run_has_one_strip():
    frame = np.zeros((100, 200, 3), np.uint8)
    image = compose_frame(frame, [0.0, 1.0, -1.0], None, "header")
    assert image.shape == (300 + HEADER_HEIGHT + STRIP_HEIGHT, 600, 3)  # 200 px wide: 3x to reach 480


def test_video_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["video", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(tmp_path) in err and err.count("\n") == 0
