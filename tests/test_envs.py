"""The environment factory: wrapper chains, fixed horizon, score masking, registration."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from prefrl.config.loading import apply_overrides, available_tasks, load_preset
from prefrl.envs.factory import make_env
from prefrl.envs.registration import register_suite, task_env_id
from prefrl.envs.wrappers import ContinuePastTermination, FixedHorizon, ResetOnNonFinite
from prefrl.util.errors import PrefrlError

ATARI = [name for name in available_tasks() if load_preset(name).task.domain == "atari"]
MUJOCO = [name for name in available_tasks() if load_preset(name).task.domain == "mujoco"]


def _quiet_check(env: gym.Env) -> None:
    with warnings.catch_warnings():
        # check_env warns that a wrapped env is not its unwrapped version: intended here.
        warnings.simplefilter("ignore")
        check_env(env, skip_render_check=True)


@pytest.mark.parametrize("name", available_tasks())
def test_training_env_passes_gymnasium_checker(name: str) -> None:
    # Through the registered id: the full wrapper stack, with a spec that check_env can
    # re-make.
    env = gym.make(task_env_id(name))
    try:
        _quiet_check(env)
        obs, info = env.reset(seed=0)
        assert info["after_termination"] is False
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert isinstance(info["after_termination"], bool)
        if load_preset(name).task.domain != "atari":
            assert info["render_state"].dtype == np.float64
    finally:
        env.close()


@pytest.mark.parametrize("name", available_tasks())
def test_evaluation_env_builds(name: str) -> None:
    """The task's real rules (none of the training wrappers; its own time limit, or
    ``eval.max_episode_steps``) with the training env's spaces, so a trained agent fits it."""
    preset = load_preset(name)
    env, training_env = make_env(preset, evaluation=True), make_env(preset)
    try:
        assert env.observation_space == training_env.observation_space
        assert env.action_space == training_env.action_space
        chain, inner = [], env
        while isinstance(inner, gym.Wrapper):
            chain.append(inner)
            inner = inner.env
        assert not [w for w in chain if isinstance(w, (FixedHorizon, ContinuePastTermination, ResetOnNonFinite))]
        limits = [w for w in chain if isinstance(w, gym.wrappers.TimeLimit)]
        cap = preset.eval.max_episode_steps
        wanted = cap if cap > 0 else gym.spec(preset.task.env_id).max_episode_steps
        assert (limits[0]._max_episode_steps if limits else None) == wanted
        obs, info = env.reset(seed=0)
        assert env.observation_space.contains(obs) and "after_termination" not in info
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and np.isfinite(reward)
        assert "after_termination" not in info
    finally:
        env.close()
        training_env.close()


def _run_episode(env: gym.Env, seed: int, max_steps: int = 100_000) -> tuple[int, bool, list[dict]]:
    env.reset(seed=seed)
    env.action_space.seed(seed)
    infos = []
    for step in range(1, max_steps + 1):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        infos.append(info)
        if terminated or truncated:
            return step, terminated, infos
    raise AssertionError("episode did not end")


def test_hopper_training_episode_has_fixed_length_and_flags_the_fall() -> None:
    """Continue mode (Walker2d and Ant; Hopper with an override): the fallen robot lies on."""
    preset = load_preset("hopper", ["task.on_termination=continue", "task.termination_penalty=5"])
    env = make_env(preset)
    length, terminated, infos = _run_episode(env, seed=1)
    assert length == preset.task.horizon == 1000
    assert not terminated
    flags = np.array([info["after_termination"] for info in infos])
    first = int(np.argmax(flags))
    assert flags.any() and first < 200, "a random Hopper falls early"
    assert flags[first:].all(), "every step after the fall is flagged"
    states = np.stack([info["render_state"] for info in infos])
    assert states.shape == (1000, env.unwrapped.model.nq + env.unwrapped.model.nv)
    assert np.isfinite(states).all()


def test_hopper_restarts_in_place_after_a_fall_with_the_penalty() -> None:
    """The Hopper preset: each fall flags one step, costs the penalty, and a fresh hopper goes on."""
    preset = load_preset("hopper")
    assert preset.task.on_termination == "reset"
    env = make_env(preset)
    env.reset(seed=1)
    env.action_space.seed(1)
    falls, rewards = [], []
    for _ in range(preset.task.horizon):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        falls.append(info["after_termination"])
        rewards.append(reward)
    assert not terminated and truncated, "the fixed horizon ends the episode, not a fall"
    falls_at = np.flatnonzero(falls)
    assert len(falls_at) >= 5, "a random Hopper falls again and again"
    assert all(rewards[i] < -preset.task.termination_penalty + 5 for i in falls_at)


def test_show_then_reset_shows_the_fallen_state_and_charges_the_step_after_it() -> None:
    """With ``reset`` the fallen pole is never an observation (the next one is the start
    state); ``show_then_reset`` returns it, and the step taken from it carries the flag and
    the penalty before the env restarts in place."""
    preset = load_preset("invertedpendulum", ["task.on_termination=show_then_reset"])
    env = make_env(preset)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    observations, rewards, flags = [obs], [], []
    for _ in range(200):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-3, 3, size=1).astype(np.float32))
        assert not (terminated or truncated)
        observations.append(obs)
        rewards.append(reward)
        flags.append(info["after_termination"])
    charged = np.flatnonzero(flags)
    assert len(charged) >= 5, "a random policy drops the pole again and again"
    for t in charged:
        assert abs(observations[t][1]) > 0.2, "the step is taken from the fallen state"
        assert rewards[t] == -preset.task.termination_penalty
        assert abs(observations[t + 1][1]) < 0.05, "then the pole starts upright again"


def test_hopper_evaluation_episode_ends_at_the_fall() -> None:
    length, terminated, _ = _run_episode(make_env(load_preset("hopper"), evaluation=True), seed=1)
    assert terminated and length < 1000


def test_mujoco_clip_is_about_one_and_a_half_seconds() -> None:
    for name in MUJOCO:
        preset = load_preset(name)
        dt = gym.make(preset.task.env_id).unwrapped.dt
        clip = preset.task.clip_length
        wanted = min(60, 1.5 / dt, preset.task.horizon / 2)  # paper's 60-step cap; Reacher's horizon
        assert abs(clip - wanted) <= 1, (name, clip, wanted)


def test_cartpole_resets_in_place_and_flags_the_terminating_step_only() -> None:
    env = make_env(load_preset("cartpole"))
    length, terminated, infos = _run_episode(env, seed=0)
    flags = [info["after_termination"] for info in infos]
    assert length == 200 and not terminated
    assert 2 <= sum(flags) < 100, "a random policy drops the pole every ~20 steps"
    first = flags.index(True)
    assert not flags[first + 1], "only the terminating step is flagged"


def test_registered_ids_give_training_and_evaluation_envs() -> None:
    assert register_suite() == register_suite()  # idempotent
    assert task_env_id("hopper") == "prefrl/Hopper"
    assert task_env_id("halfcheetah") == "prefrl/HalfCheetah"
    assert task_env_id("inverted_double_pendulum") == "prefrl/InvertedDoublePendulum"
    assert task_env_id("spaceinvaders") == "prefrl/SpaceInvaders"
    assert task_env_id("beamrider") == "prefrl/BeamRider"
    assert task_env_id("cartpole") == "prefrl/CartPole"
    training = gym.make("prefrl/Hopper")
    length, terminated, _ = _run_episode(training, seed=1)
    assert (length, terminated) == (1000, False)
    evaluation = gym.make("prefrl/Hopper", evaluation=True)
    length, terminated, _ = _run_episode(evaluation, seed=1)
    assert terminated and length < 1000


@pytest.mark.parametrize("name", ATARI)
def test_atari_observation_is_channel_first_uint8(name: str) -> None:
    env = make_env(load_preset(name), evaluation=True)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (4, 84, 84)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    env.close()


def test_pong_score_is_masked_while_it_changes() -> None:
    preset = load_preset("pong")
    (top, bottom, left, right), = preset.task.mask_regions
    env = make_env(preset, record_frames=True)
    obs0, info0 = env.reset(seed=0)
    ale = env.unwrapped.ale
    raw0 = ale.getScreenRGB().copy()
    env.action_space.seed(0)
    points, steps_since_point = 0, 0
    while steps_since_point < 10:  # the digits are redrawn a few frames after the point
        obs, reward, _, _, info = env.step(env.action_space.sample())
        points += reward != 0
        steps_since_point += points > 0
    raw1 = ale.getScreenRGB()
    assert not np.array_equal(raw0[top:bottom, left:right], raw1[top:bottom, left:right]), "the score changed"
    for frame in (info0["frame"], info["frame"]):
        assert frame.shape == (210, 160, 3) and frame.dtype == np.uint8
        assert not frame[top:bottom, left:right].any()
    assert info["frame"][bottom:].any(), "the playfield stays visible"
    # 84x84 rows whose source rows lie wholly inside the mask (resize factor 210/84)
    rows = int(bottom * 84 / 210)
    assert rows >= 8
    assert np.array_equal(obs0[:, :rows], obs[:, :rows])
    assert not obs[:, :rows].any()


def test_atari_game_over_restarts_in_place_with_the_game_reward_only() -> None:
    preset = load_preset("pong")
    penalty = preset.task.termination_penalty
    assert penalty > 0
    evaluation = make_env(preset, evaluation=True)
    evaluation.reset(seed=3)
    rng = np.random.default_rng(3)
    actions, rewards = [], []
    terminated = False
    while not terminated:
        actions.append(int(rng.integers(evaluation.action_space.n)))
        _, reward, terminated, truncated, _ = evaluation.step(actions[-1])
        rewards.append(reward)
        assert not truncated
    assert set(rewards) <= {-1.0, 0.0, 1.0} and sum(rewards) <= -1

    training = make_env(preset)
    training.reset(seed=3)  # same seed and actions: the same game, step for step
    for k, action in enumerate(actions):
        _, reward, terminated, truncated, info = training.step(action)
        game_over = k == len(actions) - 1
        # the raw game reward passes through, and game over costs the preset's penalty once
        assert reward == rewards[k] - (penalty if game_over else 0.0)
        assert not terminated and not truncated
        assert info["after_termination"] == game_over
    assert info["episode_frame_number"] < 200, "a new game began in place"
    _, _, terminated, truncated, info = training.step(0)
    assert not (terminated or truncated or info["after_termination"])


def test_breakout_life_loss_is_no_signal() -> None:
    env = make_env(load_preset("breakout"))
    _, info = env.reset(seed=0)
    lives = info["lives"]
    env.action_space.seed(0)
    for _ in range(2000):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert reward >= 0 and not terminated and not truncated and not info["after_termination"]
        if info["lives"] < lives:
            return
    raise AssertionError("no life lost")


def test_mask_outside_the_frame_is_rejected() -> None:
    preset = apply_overrides(load_preset("pong"), ["task.mask_regions=[[0, 300, 0, 10]]"])
    with pytest.raises(PrefrlError, match="300"):
        make_env(preset)


def test_fixed_horizon_refuses_an_env_that_ends_early() -> None:
    env = FixedHorizon(gym.make("CartPole-v1"), horizon=1000)
    env.reset(seed=0)
    with pytest.raises(RuntimeError, match="ContinuePastTermination"):
        for _ in range(1000):
            env.step(0)


class _BlowUpEnv(gym.Env):
    """Returns NaN on its third step."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2), {}

    def step(self, action):
        self.t += 1
        obs = np.full(2, np.nan if self.t == 3 else float(self.t))
        return obs, 1.0, False, False, {}


def test_nonfinite_observation_restarts_the_simulation_in_place() -> None:
    env = FixedHorizon(ContinuePastTermination(ResetOnNonFinite(_BlowUpEnv())), horizon=5)
    env.reset(seed=0)
    results = [env.step(0) for _ in range(5)]
    obs, reward, terminated, truncated, info = results[2]
    assert np.array_equal(obs, np.zeros(2)) and reward == 0.0 and info["nonfinite_reset"]
    assert not terminated and not truncated
    assert [r[3] for r in results] == [False] * 4 + [True]
    assert all(np.isfinite(r[0]).all() for r in results)


def test_people_may_be_shown_the_unmasked_frames_while_the_agent_is_not() -> None:
    masked_preset = load_preset("pong")
    unmasked_preset = load_preset("pong", ["task.show_unmasked_frames=true"])
    top, bottom, left, right = masked_preset.task.mask_regions[0]
    frames = {}
    for name, preset in (("masked", masked_preset), ("unmasked", unmasked_preset)):
        env = make_env(preset, record_frames=True)
        obs, _ = env.reset(seed=0)
        for _ in range(5):
            obs, _, _, _, info = env.step(0)
        frames[name] = (obs, info["frame"])
    # the agent's observation is the same either way; only what people see differs
    np.testing.assert_array_equal(frames["masked"][0], frames["unmasked"][0])
    assert not frames["masked"][1][top:bottom, left:right].any()
    assert frames["unmasked"][1][top:bottom, left:right].any(), "the score area is visible to people"
