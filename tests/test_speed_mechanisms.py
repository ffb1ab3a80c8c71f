"""The speed mechanisms change nothing the agent learns from: batched (per-rollout)
relabelling gives the rewards, returns and advantages of step-by-step relabelling, the
replayed reward scaling is VecNormalize's, and fitting in a background thread gives the
weights of fitting inline."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from prefrl.config.settings import RewardSettings
from prefrl.data.segments import ClipPair, Segment, SegmentBuffer
from prefrl.feedback.choices import Choice, Preference
from prefrl.reward.fitter import RewardFitter
from prefrl.reward.model import RewardModel
from prefrl.reward.vec_env import (
    DeferredRewardVecNormalize,
    LearnedRewardVecEnv,
    ReturnNormalizer,
    RolloutRelabelCallback,
)

SETTINGS = RewardSettings(hidden_sizes=(32, 32), batch_size=16, learning_rate=3e-3, epochs_per_update=3)


def _venv(env_id: str, n: int, max_steps: int | None = None) -> DummyVecEnv:
    return DummyVecEnv([lambda: gym.make(env_id, max_episode_steps=max_steps) for _ in range(n)])


def _reward_model(venv, seed: int = 0) -> RewardModel:
    """A model with non-trivial weights and normalisation (its rewards vary by step)."""
    model = RewardModel(venv.observation_space, venv.action_space, SETTINGS, seed=seed)
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(64, *venv.observation_space.shape)).astype(np.float32)
    venv.action_space.seed(seed)
    actions = np.stack([venv.action_space.sample() for _ in range(64)])
    model.update_normalization(obs, actions)
    return model


class _Capture(BaseCallback):
    """Copies the rollout buffer at every rollout end (after any relabelling)."""

    def __init__(self) -> None:
        super().__init__()
        self.rollouts: list[dict[str, np.ndarray]] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buf = self.model.rollout_buffer
        self.rollouts.append({k: getattr(buf, k).copy() for k in ("rewards", "returns", "advantages", "values")})


def _ppo_rollouts(env_id: str, deferred: bool, normalize: bool, n_rollouts: int = 2, horizon: int | None = None,
                  prefetch: int = 0):
    venv = _venv(env_id, 2, horizon)
    model = _reward_model(venv)
    gamma = 0.95
    learned = LearnedRewardVecEnv(
        venv, model.predict, deferred=deferred,
        normalizer=ReturnNormalizer(venv.num_envs, gamma) if (deferred and normalize) else None,
        prefetch_steps=prefetch,
    )
    norm_cls = DeferredRewardVecNormalize if deferred else VecNormalize
    env = norm_cls(learned, norm_obs=True, norm_reward=normalize and not deferred, gamma=gamma)
    ppo = PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=1, gamma=gamma, seed=0, device="cpu",
              policy_kwargs={"net_arch": [16]})
    capture = _Capture()
    callbacks = ([RolloutRelabelCallback(learned)] if deferred else []) + [capture]
    ppo.learn(total_timesteps=n_rollouts * 128 * 2, callback=callbacks)
    reward_rms = learned.normalizer.ret_rms if learned.normalizer is not None else env.ret_rms
    env.close()
    return capture.rollouts, learned, (reward_rms.mean, reward_rms.var, reward_rms.count)


@pytest.mark.parametrize(
    "env_id, normalize, horizon, prefetch",
    [
        ("Pendulum-v1", True, 100, 0),  # continuous actions, reward scaling, time-limit bootstraps
        ("Pendulum-v1", False, 100, 0),
        ("CartPole-v1", True, None, 0),  # discrete actions, real terminations
        ("CartPole-v1", True, None, 24),  # chunks labelled by the worker during the rollout
    ],
)
def test_batched_relabel_equals_step_by_step(env_id, normalize, horizon, prefetch):
    stepwise, step_env, step_rms = _ppo_rollouts(env_id, deferred=False, normalize=normalize, horizon=horizon)
    batched, batch_env, batch_rms = _ppo_rollouts(env_id, deferred=True, normalize=normalize, horizon=horizon,
                                                  prefetch=prefetch)
    if normalize:  # the reward statistics the agent's scaling came from agree too
        np.testing.assert_allclose(batch_rms, step_rms, rtol=1e-5)
    assert len(stepwise) == len(batched) == 2
    for a, b in zip(stepwise, batched):
        assert np.any(a["rewards"] != 0)
        for key in ("rewards", "returns", "advantages", "values"):
            np.testing.assert_allclose(b[key], a[key], atol=1e-5, rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(list(batch_env.learned_episode_returns), list(step_env.learned_episode_returns),
                               atol=1e-4)
    if horizon is not None:  # the episodes ended by truncation inside the rollouts
        assert len(step_env.learned_episode_returns) >= 2


def test_return_normalizer_replays_vecnormalize():
    rng = np.random.default_rng(1)
    steps, n, gamma = 300, 3, 0.97
    rewards = rng.normal(2.0, 3.0, size=(steps, n)).astype(np.float32)
    dones = rng.random((steps, n)) < 0.02

    class Scripted(DummyVecEnv):
        def __init__(self):
            super().__init__([lambda: gym.make("CartPole-v1")] * n)
            self.t = 0

        def step_wait(self):
            obs, _, _, infos = super().step_wait()
            r, d = rewards[self.t], dones[self.t]
            self.t += 1
            return obs, r.copy(), d.copy(), infos

    vn = VecNormalize(Scripted(), norm_obs=False, norm_reward=True, gamma=gamma)
    vn.reset()
    expected = np.stack([vn.step(np.zeros(n, dtype=np.int64))[1] for _ in range(steps)])
    normalizer = ReturnNormalizer(n, gamma)
    got = np.concatenate([normalizer(rewards[:128], dones[:128]), normalizer(rewards[128:], dones[128:])])
    np.testing.assert_array_equal(got, expected)
    assert normalizer.ret_rms.var == pytest.approx(vn.ret_rms.var)


def test_deferred_wrapper_hides_the_true_reward_until_relabelled():
    seen = []

    def reward_fn(obs, actions):
        seen.append(len(obs))
        return obs[:, 0] * 10.0 + actions[:, 0]

    venv = LearnedRewardVecEnv(_venv("Pendulum-v1", 2), reward_fn, deferred=True)
    obs = [venv.reset()]
    acts = []
    for t in range(5):
        action = np.array([[0.1 * t], [-0.1 * t]], dtype=np.float32)
        new_obs, rewards, _, infos = venv.step(action)
        np.testing.assert_array_equal(rewards, 0.0)  # placeholders, never the true reward
        assert all(info["true_reward"] < 0 for info in infos)  # Pendulum's true reward is a cost
        obs.append(new_obs)
        acts.append(action)
    assert seen == [] and venv.pending_steps == 5
    labelled = venv.relabel()
    assert seen == [10]  # one call for the whole rollout
    expected = np.stack([o[:, 0] * 10.0 + a[:, 0] for o, a in zip(obs[:-1], acts)])
    np.testing.assert_allclose(labelled, expected, rtol=1e-6)
    assert venv.pending_steps == 0 and venv.relabel().shape == (0, 2)


def test_prefetching_worker_labels_chunks_during_the_rollout():
    calls = []

    def reward_fn(obs, actions):
        calls.append(len(obs))
        return obs[:, 0] * 10.0 + actions[:, 0]

    plain = LearnedRewardVecEnv(_venv("Pendulum-v1", 2), lambda o, a: o[:, 0] * 10.0 + a[:, 0], deferred=True)
    ahead = LearnedRewardVecEnv(_venv("Pendulum-v1", 2), reward_fn, deferred=True, prefetch_steps=2)
    for venv in (plain, ahead):
        venv.seed(0)
        venv.reset()
    for t in range(5):
        action = np.array([[0.1 * t], [-0.1 * t]], dtype=np.float32)
        plain.step(action)
        ahead.step(action)
    np.testing.assert_allclose(ahead.relabel(), plain.relabel(), rtol=1e-6)
    # Two chunks of 2 steps (of 2 envs) went to the worker, the remaining step at the end.
    assert sorted(calls) == [2, 4, 4]
    ahead.close()


def _prefs(rng: np.random.Generator, n: int, length: int = 10) -> list[Preference]:
    def segment() -> Segment:
        obs = rng.normal(size=(length, 3)).astype(np.float32)
        return Segment(obs, rng.uniform(-2, 2, size=(length, 1)).astype(np.float32),
                       obs[:, 0].copy(), np.zeros(length, bool))

    out = []
    for _ in range(n):
        pair = ClipPair(segment(), segment())
        out.append(Preference(pair, Choice.LEFT if pair.left.true_return > pair.right.true_return else Choice.RIGHT))
    return out


def test_background_and_lagged_fits_give_the_weights_of_an_inline_fit():
    space_env = _venv("Pendulum-v1", 1)
    prefs = _prefs(np.random.default_rng(0), 60)
    buffer = SegmentBuffer(clip_length=10, n_envs=1, capacity=100)
    for pref in prefs:
        buffer.segments.append(pref.pair.left)
    probe = np.random.default_rng(5).normal(size=(7, 3)).astype(np.float32)
    probe_act = np.zeros((7, 1), np.float32)

    models = {}
    for mode in ("inline", "background", "lagged"):
        model = RewardModel(space_env.observation_space, space_env.action_space, SETTINGS, seed=3)
        model.add_preferences(prefs)
        fitter = RewardFitter(model, buffer, mode=mode)
        predict = fitter.guard(model.predict)
        before = predict(probe, probe_act)
        fitter.start(3)
        if mode == "lagged":  # the agent keeps the weights of before the fit
            assert model.predictions_frozen
            np.testing.assert_array_equal(predict(probe, probe_act), before)
        if mode == "background":  # the next reward waits for the fit: the fitted weights
            after = predict(probe, probe_act)
            assert not fitter.running or not fitter._thread.is_alive()
        stats = fitter.wait()
        assert stats is not None and stats["steps"] > 0
        assert not model.predictions_frozen and fitter.wait() is None
        if mode == "background":
            np.testing.assert_array_equal(after, model.predict(probe, probe_act))
        models[mode] = model
    inline = models["inline"]
    for other in (models["background"], models["lagged"]):
        for (key, a), b in zip(inline.net.state_dict().items(), other.net.state_dict().values()):
            assert torch.equal(a, b), key
        assert torch.equal(inline.norm_mean, other.norm_mean) and torch.equal(inline.norm_std, other.norm_std)
        np.testing.assert_array_equal(inline.predict(probe, probe_act), other.predict(probe, probe_act))


def test_background_fit_errors_reach_the_main_thread():
    space_env = _venv("Pendulum-v1", 1)
    model = RewardModel(space_env.observation_space, space_env.action_space, SETTINGS, seed=0)
    model.add_preferences(_prefs(np.random.default_rng(0), 10))

    def broken(*_a, **_k):
        raise FloatingPointError("boom")

    model.train = broken  # type: ignore[method-assign]
    fitter = RewardFitter(model, SegmentBuffer(10, 1, 10), mode="lagged")
    fitter.start(1)
    with pytest.raises(FloatingPointError, match="boom"):
        fitter.wait()
    assert not model.predictions_frozen


def test_normalize_on_segments_matches_update_then_segment_returns():
    space_env = _venv("Pendulum-v1", 1)
    prefs = _prefs(np.random.default_rng(2), 20)
    segments = [p.pair.left for p in prefs] + [p.pair.right for p in prefs]
    one = RewardModel(space_env.observation_space, space_env.action_space, SETTINGS, seed=1)
    two = RewardModel(space_env.observation_space, space_env.action_space, SETTINGS, seed=1, inference_batch=25)
    one.add_preferences(prefs)
    one.train(2)
    two.add_preferences(prefs)
    two.train(2)  # same seed, labels and calls: the same weights as `one`
    returns = two.normalize_on_segments(segments)  # several chunks of whole segments
    one.update_normalization(np.concatenate([s.observations for s in segments]),
                             np.concatenate([s.actions for s in segments]))
    np.testing.assert_allclose(two.norm_mean, one.norm_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(two.norm_std, one.norm_std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(returns, one.segment_returns(segments), rtol=1e-4, atol=1e-4)


TINY = ["ppo.total_steps=768", "ppo.n_steps=128", "ppo.batch_size=64", "ppo.n_epochs=1", "labels.budget=16",
        "labels.initial_labels=6", "labels.pretrain_epochs=2", "reward.epochs_per_update=2",
        "labels.update_every_steps=256", "eval.every_steps=100000", "eval.episodes=1", "ppo.normalize_rewards=true"]


def _labels_and_weights(run_dir):
    import json

    labels = [json.loads(line) for line in (run_dir / "labels.jsonl").read_text().splitlines()]
    weights = torch.load(run_dir / "reward_model.pt", weights_only=False)["net"]
    return [(x["pair_id"], x["left_clip"], x["right_clip"], x["choice"]) for x in labels], weights


def test_train_background_fit_equals_inline_and_every_mode_runs(tmp_path):
    from prefrl.config.loading import load_preset
    from prefrl.rundir import RunPaths
    from prefrl.training.run import train

    preset = load_preset("pendulum", TINY)
    summaries, results = {}, {}
    for relabel, fit in (("rollout", "inline"), ("rollout", "background"), ("step", "inline"), ("rollout", "lagged")):
        run_dir = tmp_path / f"{relabel}_{fit}"
        summary = train(preset, seed=0, paths=RunPaths(run_dir, run_dir / "clips"), progress=False,
                        relabel=relabel, fit=fit)
        assert summary["env_steps"] >= 768 and summary["labels_used"] > 6
        assert summary["reward_fitting"]["mode"] == fit and summary["reward_fitting"]["fits"] >= 2
        assert summary["relabel"]["mode"] == relabel
        summaries[relabel, fit] = summary
        results[relabel, fit] = _labels_and_weights(run_dir)
    # Background fitting changes when the work happens, not what the agent learns from.
    labels_inline, weights_inline = results["rollout", "inline"]
    labels_bg, weights_bg = results["rollout", "background"]
    assert labels_bg == labels_inline and len(labels_bg) > 6
    assert weights_bg.keys() == weights_inline.keys()
    for key in weights_inline:
        assert torch.equal(weights_bg[key], weights_inline[key]), key
    assert summaries["rollout", "background"]["final_true_return"] == summaries["rollout", "inline"]["final_true_return"]
    # Step-by-step relabelling gives the agent the rewards of batched relabelling (up to
    # float rounding of one-row predictions): the same answers and final return.
    labels_step, _ = results["step", "inline"]
    assert labels_step == labels_inline and summaries["step", "inline"]["relabel"]["seconds"] is None
    assert summaries["step", "inline"]["final_true_return"] == pytest.approx(
        summaries["rollout", "inline"]["final_true_return"], rel=1e-5)
    # Lagged fitting does change what the agent learns from (rewards one update staler), so
    # its reward model ends elsewhere: it is not inline or background under another name.
    _, weights_lagged = results["rollout", "lagged"]
    assert any(not torch.equal(weights_lagged[key], weights_inline[key]) for key in weights_inline)
