"""The ALE-driven Atari VecEnv against the SB3 wrapper chain it replaces, step by step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.util import obs_space_info

from prefrl.config.loading import load_preset
from prefrl.envs.ale_vec_env import AleVectorEnv, make_ale_vec_env
from prefrl.envs.grayscale import gray_lut, rgb_to_gray
from prefrl.envs.state import capture_vec_env, restore_vec_env
from prefrl.envs.vec_env import make_vec_env
from prefrl.rundir.checkpoint_files import read_checkpoint, write_checkpoint
from prefrl.util.errors import PrefrlError


def _assert_same_info(ours: dict[str, Any], theirs: dict[str, Any], where: str) -> None:
    assert set(ours) == set(theirs), f"{where}: info keys differ by {set(ours) ^ set(theirs)}"
    for key, expected in theirs.items():
        got = ours[key]
        if key == "episode":  # "t" is wall-clock time
            assert (got["r"], got["l"]) == (expected["r"], expected["l"]), f"{where}: {got} != {expected}"
            assert set(got) == set(expected)
        elif isinstance(expected, np.ndarray):
            assert got.dtype == expected.dtype and np.array_equal(got, expected), f"{where}: info[{key!r}]"
        else:
            assert type(got) is type(expected) and got == expected, f"{where}: info[{key!r}] {got!r} != {expected!r}"


def _compare(preset, steps: int, *, n_envs: int = 2, seed: int = 3, action_choices: tuple[int, ...] = (),
             **kwargs: Any) -> dict[str, int]:
    """Step the SB3 chain and the ALE env with the same random actions (drawn from
    ``action_choices``, default all); everything prefrl reads must be equal. Returns
    counts of the events seen."""
    reference = make_vec_env(preset, n_envs, seed, **kwargs)
    ours = make_ale_vec_env(preset, n_envs, seed, **kwargs)
    counts = {"done": 0, "after_termination": 0, "episodes": 0, "restarts": 0}
    try:
        assert ours.observation_space == reference.observation_space
        assert ours.action_space == reference.action_space
        assert np.array_equal(ours.reset(), reference.reset())
        for i in range(n_envs):
            _assert_same_info(ours.reset_infos[i], reference.reset_infos[i], f"reset of env {i}")
        rng = np.random.default_rng(0)
        frame_numbers = [info["episode_frame_number"] for info in reference.reset_infos]
        for t in range(steps):
            choices = np.asarray(action_choices or range(reference.action_space.n))
            actions = choices[rng.integers(0, len(choices), n_envs)]
            obs, rewards, dones, infos = reference.step(actions)
            our_obs, our_rewards, our_dones, our_infos = ours.step(actions)
            assert our_obs.dtype == obs.dtype and np.array_equal(our_obs, obs), f"step {t}: observations"
            assert our_rewards.dtype == rewards.dtype and np.array_equal(our_rewards, rewards), f"step {t}: rewards"
            assert our_dones.dtype == dones.dtype and np.array_equal(our_dones, dones), f"step {t}: dones"
            for i in range(n_envs):
                _assert_same_info(our_infos[i], infos[i], f"step {t}, env {i}")
                if dones[i]:
                    _assert_same_info(ours.reset_infos[i], reference.reset_infos[i], f"step {t}, reset of env {i}")
                counts["after_termination"] += bool(infos[i].get("after_termination", False))
                counts["episodes"] += "episode" in infos[i]
                # A game restarted in place inside the episode: ALE's episode frame count drops.
                counts["restarts"] += not dones[i] and infos[i]["episode_frame_number"] < frame_numbers[i]
                frame_numbers[i] = (reference.reset_infos[i] if dones[i] else infos[i])["episode_frame_number"]
            counts["done"] += int(dones.sum())
    finally:
        reference.close()
        ours.close()
    return counts


def test_gray_lookup_is_gymnasiums_formula() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 50, 40, 3), dtype=np.uint8)
    expected = np.sum(np.multiply(frames, np.array([0.2125, 0.7154, 0.0721])), axis=-1).astype(np.uint8)
    assert np.array_equal(rgb_to_gray(frames), expected)
    assert gray_lut().shape == (1 << 24,)


def test_pong_training_matches_sb3_chain_true_arm_with_frames() -> None:
    # No-op starts off; clipped rewards (true arm), frames for people, two horizon ends per env.
    preset = load_preset("pong", ["task.horizon=150", "task.noop_max=0"])
    counts = _compare(preset, 320, clip_reward=True, record_frames=True)
    assert counts["done"] == 4 and counts["episodes"] == 4


def test_pong_no_op_starts_and_sticky_actions_match_too() -> None:
    # The no-op count comes from the env's own np_random and sticky actions from ALE's
    # seeded stream, exactly as in the chain.
    preset = load_preset("pong", ["task.horizon=100", "task.sticky_action_prob=0.25"])
    counts = _compare(preset, 220)
    assert counts["done"] == 4


def test_pong_frame_cap_restarts_in_place_without_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    # ALE's frame cap (108,000 frames in the presets) forced down to 300 frames on both
    # sides: a truncation restarts the game in place, not flagged as a termination.
    make = gym.make

    def capped(env_id: str, **kwargs: Any) -> gym.Env:
        kwargs.setdefault("max_num_frames_per_episode", 300)
        return make(env_id, **kwargs)

    monkeypatch.setattr(gym, "make", capped)
    preset = load_preset("pong", ["task.horizon=200", "task.noop_max=5", "task.termination_penalty=3"])
    counts = _compare(preset, 220, record_frames=True)
    assert counts["restarts"] >= 4 and counts["after_termination"] == 0 and counts["done"] == 2


def test_breakout_fire_reset_game_over_penalty_and_horizon_match_sb3_chain() -> None:
    # Random play loses Breakout's 5 lives within ~200 steps: game over restarts in place
    # (FIRE again, flagged, penalised) inside fixed-horizon episodes. People see the score
    # here (recorded before the mask), the agent does not.
    preset = load_preset("breakout", ["task.horizon=250", "task.noop_max=0", "task.show_unmasked_frames=true"])
    assert preset.task.fire_reset and preset.task.termination_penalty > 0
    counts = _compare(preset, 300, record_frames=True)
    assert counts["after_termination"] >= 1 and counts["done"] == 2 and counts["episodes"] == 2


@pytest.mark.parametrize("fire_after_life_loss", [True, False])
def test_breakout_never_pressing_fire_stops_the_game_only_without_fire_after_life_loss(
    fire_after_life_loss: bool,
) -> None:
    # A policy that never presses FIRE (NOOP, RIGHT, LEFT) loses the first ball; only if
    # the next action after a lost life becomes FIRE do the other four follow (game over
    # in ~150 steps), the same in both backends.
    flag = str(fire_after_life_loss).lower()
    preset = load_preset("breakout", ["task.horizon=400", "task.noop_max=0", f"task.fire_after_life_loss={flag}"])
    counts = _compare(preset, 400, action_choices=(0, 2, 3))
    assert (counts["after_termination"] >= 2) if fire_after_life_loss else (counts["after_termination"] == 0)
    evaluation = load_preset("breakout", ["eval.max_episode_steps=1000", f"task.fire_after_life_loss={flag}"])
    counts = _compare(evaluation, 400, evaluation=True, n_envs=1, action_choices=(0, 2, 3))
    assert counts["done"] == (1 if fire_after_life_loss else 0)


def test_breakout_evaluation_matches_sb3_chain() -> None:
    # Real rules: game over ends the episode, TimeLimit at eval.max_episode_steps.
    preset = load_preset("breakout", ["eval.max_episode_steps=120"])
    counts = _compare(preset, 300, evaluation=True, n_envs=1)
    assert counts["done"] >= 2 and counts["after_termination"] == 0


def test_seeding_is_deterministic_and_env_i_gets_seed_plus_i() -> None:
    preset = load_preset("pong", ["task.horizon=100"])  # no-op starts on: seeds matter

    def run(n_envs: int, seed: int) -> np.ndarray:
        venv = make_ale_vec_env(preset, n_envs, seed)
        rng = np.random.default_rng(1)
        frames = [venv.reset()]
        for _ in range(30):
            frames.append(venv.step(rng.integers(0, 6, n_envs))[0])
        venv.close()
        return np.stack(frames)

    first = run(2, 5)
    assert np.array_equal(first, run(2, 5))
    # Same actions for env 1 of seed 5 and env 0 of seed 6 (the action draws differ in
    # count, so compare only the reset frames, which depend on the seed alone).
    assert np.array_equal(first[0, 1], run(1, 6)[0, 0])
    assert not np.array_equal(first, run(2, 7))


def test_vec_env_interface() -> None:
    preset = load_preset("pong", ["task.horizon=50"])
    venv = make_ale_vec_env(preset, 2, 0)
    try:
        assert isinstance(venv, VecEnv) and venv.num_envs == 2
        keys, shapes, dtypes = obs_space_info(venv.observation_space)
        assert shapes[None] == (4, 84, 84) and dtypes[None] == np.uint8
        obs = venv.reset()
        assert obs.shape == (2, 4, 84, 84) and all(venv.observation_space.contains(o) for o in obs)
        obs, rewards, dones, infos = venv.step(np.array([venv.action_space.sample() for _ in range(2)]))
        assert rewards.dtype == np.float32 and dones.dtype == bool and len(infos) == 2
        # evaluate_policy looks for Monitor to trust info["episode"].
        assert venv.env_is_wrapped(Monitor) == [True, True]
        assert venv.env_is_wrapped(gym.wrappers.ClipReward) == [False, False]
        assert venv.get_attr("render_mode") == [None, None] and venv.render_mode is None
        assert not venv.has_attr("no_such_attribute")
        assert [image.shape for image in venv.get_images()] == [(210, 160, 3)] * 2
        with pytest.raises(PrefrlError, match="only get_run_state"):
            venv.env_method("get_action_meanings")
        with pytest.raises(PrefrlError):
            venv.set_attr("x", 1)
        with pytest.raises(PrefrlError, match="Atari tasks only"):
            AleVectorEnv(load_preset("cartpole"), 1)
    finally:
        venv.close()


def test_run_checkpoint_round_trip(tmp_path: Path) -> None:
    # prefrl's run checkpoints go through env_method("get_run_state"/"set_run_state").
    preset = load_preset("breakout", ["task.horizon=60", "task.sticky_action_prob=0.25"])
    venv = make_ale_vec_env(preset, 2, 0, record_frames=True)
    venv.reset()
    rng = np.random.default_rng(0)
    for _ in range(40):
        venv.step(rng.integers(0, 4, 2))
    write_checkpoint(tmp_path, 40, {"env": capture_vec_env(venv)})  # through the checkpoint's data files
    state = read_checkpoint(tmp_path)["state"]["env"]
    actions = rng.integers(0, 4, (50, 2))

    def play() -> list[Any]:
        out = []
        for a in actions:
            obs, rewards, dones, infos = venv.step(a)
            out.append((obs, rewards, dones, [{k: v for k, v in i.items() if k != "episode"} for i in infos]))
        return out

    first = play()
    restore_vec_env(venv, state)
    second = play()
    venv.close()
    for (o1, r1, d1, i1), (o2, r2, d2, i2) in zip(first, second):
        assert np.array_equal(o1, o2) and np.array_equal(r1, r2) and np.array_equal(d1, d2)
        for a, b in zip(i1, i2):
            _assert_same_info(a, b, "after restore")
    # A state from the SB3 chain (a list of wrapper states) is refused with a clear message.
    with pytest.raises(PrefrlError, match="another vec_env backend"):
        venv.set_run_state(0, [{"class": "TimeLimit"}])


def test_preset_accepts_ale_for_atari_only() -> None:
    assert load_preset("pong", ["ppo.vec_env=ale"]).ppo.vec_env == "ale"
    with pytest.raises(PrefrlError, match="Atari tasks only"):
        load_preset("cartpole", ["ppo.vec_env=ale"])


def test_ppo_learns_on_it() -> None:
    # SB3's rollout collection (terminal_observation bootstrap at the horizon) runs on it.
    from stable_baselines3 import PPO

    preset = load_preset("pong", ["task.horizon=20", "task.clip_length=10", "task.noop_max=0"])
    venv = make_ale_vec_env(preset, 2, 0)
    model = PPO("CnnPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(64)  # two rollouts of 16 steps per env: an episode of 20 ends in each env
    assert model.num_timesteps == 64 and len(model.ep_info_buffer) >= 2
    venv.close()
