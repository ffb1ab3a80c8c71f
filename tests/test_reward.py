"""Tests of the reward model: loss, batched ensembles, training, normalisation, checkpoints."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from prefrl.config.settings import RewardSettings
from prefrl.data.segments import ClipPair, Segment
from prefrl.feedback.choices import Choice, Preference
from prefrl.reward.dropout import dropout
from prefrl.reward.losses import adapt_l2, preference_loss, preference_probability
from prefrl.reward.model import RewardModel
from prefrl.reward.nets import EnsembleAtariCNN, EnsembleMLP, make_reward_net
from prefrl.util.errors import PrefrlError

OBS_DIM = 4
ACT_DIM = 2
OBS_SPACE = spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
ACT_SPACE = spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
ATARI_SPACE = spaces.Box(0, 255, (4, 84, 84), np.uint8)
SMALL = RewardSettings(hidden_sizes=(32, 32), batch_size=32, learning_rate=3e-3, epochs_per_update=5)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is an order of magnitude faster than two on a busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------- helpers


def make_segment(rng: np.random.Generator, length: int = 10, name: str = "") -> Segment:
    """Random vector observations; the true reward is the first coordinate."""
    obs = rng.normal(size=(length, OBS_DIM)).astype(np.float32)
    actions = rng.uniform(-1, 1, size=(length, ACT_DIM)).astype(np.float32)
    return Segment(obs, actions, obs[:, 0].copy(), np.zeros(length, dtype=bool), segment_id=name)


def oracle(pair: ClipPair) -> Choice:
    return Choice.LEFT if pair.left.true_return > pair.right.true_return else Choice.RIGHT


def make_prefs(rng: np.random.Generator, n: int, length: int = 10, choice=oracle) -> list[Preference]:
    prefs = []
    for k in range(n):
        pair = ClipPair(make_segment(rng, length, f"a{k}"), make_segment(rng, length, f"b{k}"), pair_id=f"p{k}")
        prefs.append(Preference(pair, choice(pair) if callable(choice) else choice))
    return prefs


def make_atari_segment(rng: np.random.Generator, length: int = 3) -> Segment:
    obs = rng.integers(0, 256, size=(length, 4, 84, 84), dtype=np.uint8)
    actions = rng.integers(0, 6, size=length)
    return Segment(obs, actions, rng.normal(size=length).astype(np.float32), np.zeros(length, bool))


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- loss


def test_preference_loss_matches_hand_computed_values():
    sig = 1.0 / (1.0 + math.exp(-1.0))  # sigmoid(1)
    left, right = torch.tensor([1.0]), torch.tensor([0.0])
    cases = {
        1.0: -math.log(0.9 * sig + 0.05),
        0.0: -math.log(0.9 * (1 - sig) + 0.05),
        0.5: -0.5 * (math.log(0.9 * sig + 0.05) + math.log(0.9 * (1 - sig) + 0.05)),
    }
    for target, expected in cases.items():
        got = preference_loss(left, right, torch.tensor([target]), random_answer_prob=0.1)
        assert float(got) == pytest.approx(expected, rel=1e-6)
    # eps = 0: plain Bradley-Terry, -log sigmoid(1) = log(1 + e^-1)
    got = preference_loss(left, right, torch.tensor([1.0]), random_answer_prob=0.0)
    assert float(got) == pytest.approx(math.log(1 + math.exp(-1.0)), rel=1e-6)
    prob = preference_probability(left, right, 0.1)
    assert float(prob) == pytest.approx(0.9 * sig + 0.05, rel=1e-6)


def test_preference_loss_batched_shapes_and_mean():
    left = torch.tensor([[1.0, 0.0], [2.0, -1.0], [0.0, 0.0]])  # (members, pairs)
    right = torch.zeros(3, 2)
    targets = torch.tensor([1.0, 0.0])  # broadcast over members
    got = preference_loss(left, right, targets, 0.1)
    expected = np.mean(
        [
            -math.log(0.9 / (1 + math.exp(-(left[m, p] - right[m, p]).item())) + 0.05)
            if targets[p] == 1.0
            else -math.log(0.9 / (1 + math.exp((left[m, p] - right[m, p]).item())) + 0.05)
            for m in range(3)
            for p in range(2)
        ]
    )
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_preference_loss_is_stable_for_large_differences():
    left = torch.tensor([-1000.0, 1000.0, -200.0], requires_grad=True)
    right = torch.zeros(3)
    loss = preference_loss(left, right, torch.tensor([1.0, 0.0, 1.0]), 0.1)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(-math.log(0.05), rel=1e-5)  # capped by the random answer
    loss.backward()
    assert torch.isfinite(left.grad).all()
    # eps = 0: log sigmoid(-200) = -200 without underflow
    loss0 = preference_loss(torch.tensor([-200.0]), torch.tensor([0.0]), torch.tensor([1.0]), 0.0)
    assert float(loss0) == pytest.approx(200.0, rel=1e-5)


def test_adapt_l2_directions():
    assert adapt_l2(1.0, train_loss=0.1, val_loss=0.5, low=1.1, high=1.5) == pytest.approx(1.5)
    assert adapt_l2(1.0, train_loss=0.5, val_loss=0.5, low=1.1, high=1.5) == pytest.approx(1 / 1.5)
    assert adapt_l2(1.0, train_loss=0.5, val_loss=0.6, low=1.1, high=1.5) == 1.0
    assert adapt_l2(1.0, train_loss=0.5, val_loss=math.nan, low=1.1, high=1.5) == 1.0


# ---------------------------------------------------------------------- batched nets


def test_dropout_masks_scales_and_is_reproducible():
    x = torch.ones(64, 16, 10, 10).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = dropout(x, 0.25, torch.Generator().manual_seed(0))
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)  # gradient flows through kept units only
    again = dropout(x.detach(), 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(again, y.detach())
    assert dropout(x, 0.0) is x




def member_mlp(net: EnsembleMLP, m: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (w, b) in enumerate(zip(net.weights, net.biases)):
        lin = nn.Linear(w.shape[1], w.shape[2])
        lin.weight.data = w.data[m].T.clone()
        lin.bias.data = b.data[m, 0].clone()
        layers.append(lin)
        if i < len(net.weights) - 1:
            layers.append(nn.LeakyReLU(0.01))
    return nn.Sequential(*layers)


@pytest.mark.parametrize("action_space", [ACT_SPACE, spaces.Discrete(5)])
def test_mlp_ensemble_equals_member_by_member(action_space):
    gen = torch.Generator().manual_seed(0)
    net = EnsembleMLP(OBS_SPACE, action_space, n_members=3, hidden_sizes=(16, 8), generator=gen)
    obs = torch.randn(3, 7, OBS_DIM)
    if isinstance(action_space, spaces.Discrete):
        act = torch.randint(0, 5, (3, 7))
        encoded = nn.functional.one_hot(act, 5).float()
    else:
        act = torch.rand(3, 7, ACT_DIM) * 2 - 1
        encoded = act
    batched = net(obs, act)
    assert batched.shape == (3, 7)
    for m in range(3):
        single = member_mlp(net, m)(torch.cat((obs[m], encoded[m]), -1)).squeeze(-1)
        torch.testing.assert_close(batched[m], single, atol=1e-5, rtol=1e-5)
    # shared inputs are broadcast to every member
    shared = net(obs[0], act[0])
    for m in range(3):
        single = member_mlp(net, m)(torch.cat((obs[0], encoded[0]), -1)).squeeze(-1)
        torch.testing.assert_close(shared[m], single, atol=1e-5, rtol=1e-5)


def member_cnn(net: EnsembleAtariCNN, m: int) -> nn.Sequential:
    f = net.FILTERS
    layers: list[nn.Module] = []
    in_channels = net.channels
    for conv, norm in zip(net.convs, net.norms):
        single = nn.Conv2d(in_channels, f, conv.kernel_size, conv.stride, bias=conv.bias is not None)
        single.weight.data = conv.weight.data[m * f : (m + 1) * f].clone().contiguous()
        if conv.bias is not None:
            single.bias.data = conv.bias.data[m * f : (m + 1) * f].clone()
        layers.append(single)
        if isinstance(norm, nn.BatchNorm2d):
            bn = nn.BatchNorm2d(f)
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).data = getattr(norm, name).data[m * f : (m + 1) * f].clone()
            layers.append(bn)
        layers.append(nn.LeakyReLU(0.01))
        in_channels = f
    fc, out = nn.Linear(net.features, net.HIDDEN), nn.Linear(net.HIDDEN, 1)
    fc.weight.data, fc.bias.data = net.fc_weight.data[m].T.clone(), net.fc_bias.data[m, 0].clone()
    out.weight.data, out.bias.data = net.out_weight.data[m].T.clone(), net.out_bias.data[m, 0].clone()
    return nn.Sequential(*layers, nn.Flatten(), fc, nn.LeakyReLU(0.01), out)


def randomise_batch_norm(net: EnsembleAtariCNN, gen: torch.Generator) -> None:
    """Non-trivial batch-norm state, so that a member/channel mix-up would show."""
    for norm in net.norms:
        norm.running_mean.uniform_(-0.5, 0.5, generator=gen)
        norm.running_var.uniform_(0.5, 2.0, generator=gen)
        norm.weight.data.uniform_(0.5, 1.5, generator=gen)
        norm.bias.data.uniform_(-0.5, 0.5, generator=gen)


@pytest.mark.parametrize("channels_last", [True, False])
def test_cnn_ensemble_equals_member_by_member(channels_last):
    gen = torch.Generator().manual_seed(1)
    net = EnsembleAtariCNN(ATARI_SPACE, spaces.Discrete(6), n_members=3, channels_last=channels_last, generator=gen)
    randomise_batch_norm(net, gen)
    net.eval()
    obs = torch.randint(0, 256, (3, 5, 4, 84, 84), dtype=torch.uint8, generator=gen)
    with torch.no_grad():
        batched = net(obs)
        shared = net(obs[0])
        assert batched.shape == shared.shape == (3, 5)
        for m in range(3):
            single = member_cnn(net, m).eval()
            torch.testing.assert_close(batched[m], single(obs[m].float() / 255).squeeze(-1), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(shared[m], single(obs[0].float() / 255).squeeze(-1), atol=1e-5, rtol=1e-5)


def test_cnn_batch_norm_statistics_stay_per_member_in_training():
    """Train mode (batch statistics) without dropout also equals separate members."""
    gen = torch.Generator().manual_seed(2)
    net = EnsembleAtariCNN(ATARI_SPACE, spaces.Discrete(6), n_members=2, dropout=0.0, generator=gen).train()
    obs = torch.randint(0, 256, (2, 4, 4, 84, 84), dtype=torch.uint8, generator=gen)
    with torch.no_grad():
        batched = net(obs)
        for m in range(2):
            single = member_cnn(net, m).train()
            torch.testing.assert_close(batched[m], single(obs[m].float() / 255).squeeze(-1), atol=1e-5, rtol=1e-5)


def test_cnn_dropout_applies_in_training_only_and_is_reproducible():
    """With dropout, train-mode outputs depend on the mask source alone (same generator
    state, same outputs) and eval mode ignores it."""
    obs = torch.randint(0, 256, (2, 3, 4, 84, 84), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def outputs(dropout: float, train: bool, mask_seed: int) -> torch.Tensor:
        net = EnsembleAtariCNN(ATARI_SPACE, spaces.Discrete(6), n_members=2, dropout=dropout,
                               generator=torch.Generator().manual_seed(1)).train(train)
        net.dropout_generator = torch.Generator().manual_seed(mask_seed)
        with torch.no_grad():
            return net(obs)

    assert torch.equal(outputs(0.5, True, 3), outputs(0.5, True, 3))
    assert not torch.allclose(outputs(0.5, True, 3), outputs(0.5, True, 4))
    assert not torch.allclose(outputs(0.5, True, 3), outputs(0.0, True, 3))
    assert torch.equal(outputs(0.5, False, 3), outputs(0.0, False, 4))


def test_cnn_refuses_channel_last_observations():
    with pytest.raises(PrefrlError, match=r"channel-first.*\(84, 84, 4\)"):
        EnsembleAtariCNN(spaces.Box(0, 255, (84, 84, 4), np.uint8), spaces.Discrete(6), n_members=3)
    settings = RewardSettings(architecture="atari_cnn")
    with pytest.raises(PrefrlError, match="channel-first"):
        RewardModel(spaces.Box(0, 255, (84, 84, 4), np.uint8), spaces.Discrete(6), settings, seed=0)
    net = make_reward_net(ATARI_SPACE, spaces.Discrete(6), settings)
    assert isinstance(net, EnsembleAtariCNN)


def test_cnn_does_not_mix_channels():
    settings = RewardSettings(architecture="atari_cnn", ensemble_size=2)
    model = RewardModel(ATARI_SPACE, spaces.Discrete(6), settings, seed=0)
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, size=(3, 4, 84, 84), dtype=np.uint8)
    reward = model.predict(obs)
    assert reward.shape == (3,) and reward.dtype == np.float32
    assert not np.allclose(reward, model.predict(obs[:, ::-1]))  # reversed frame stack
    with pytest.raises(PrefrlError, match=r"\(84, 84, 4\)"):
        model.predict(np.ascontiguousarray(obs.transpose(0, 2, 3, 1)))


# ---------------------------------------------------------------------- training


def test_training_learns_a_known_reward():
    rng = np.random.default_rng(0)
    model = RewardModel(OBS_SPACE, ACT_SPACE, SMALL, seed=0)
    assert model.add_preferences(make_prefs(rng, 300)) == 300
    for _ in range(3):
        metrics = model.train(10)
    assert metrics["n_train"] + metrics["n_val"] == 300
    assert metrics["val_accuracy"] > 0.9
    segments = [make_segment(rng) for _ in range(200)]
    true = np.array([s.true_return for s in segments])
    learned = model.segment_returns(segments)
    assert learned.shape == (3, 200)
    for member in learned:
        assert np.corrcoef(member, true)[0, 1] > 0.9
    assert np.corrcoef(learned.mean(0), true)[0, 1] > 0.9


def test_training_with_frame_subsets_learns():
    rng = np.random.default_rng(1)
    model = RewardModel(OBS_SPACE, ACT_SPACE, dataclasses.replace(SMALL, frames_per_clip=4), seed=0)
    model.add_preferences(make_prefs(rng, 200))
    for _ in range(3):
        metrics = model.train(10)
    assert metrics["val_accuracy"] > 0.85


@pytest.mark.parametrize("cache_bytes", [2**30, 0])
def test_frame_subset_returns_are_scaled_sums(cache_bytes):
    """The gathered frames are the chosen steps of each clip, scaled by T / k."""
    rng = np.random.default_rng(2)
    model = RewardModel(OBS_SPACE, ACT_SPACE, SMALL, seed=0, cache_bytes=cache_bytes)
    prefs = make_prefs(rng, 6, length=10)
    model.add_preferences(prefs)
    idx = np.array([[0, 3], [5, 5], [2, 1]])
    frames = np.array([[[0, 4, 9], [1, 2, 3]], [[7, 8, 9], [0, 1, 2]], [[5, 0, 6], [9, 1, 4]]])
    with torch.no_grad():
        left, right = model.trainer.pair_returns(model._data, idx, frames)
    for m in range(3):
        for j in range(2):
            lab = model._data.labels[idx[m, j]]
            for side, got in ((lab.left, left), (lab.right, right)):
                with torch.no_grad():
                    raw = model.net(torch.as_tensor(side.observations), torch.as_tensor(side.actions))[m]
                expected = raw[frames[m, j]].sum() * 10 / 3
                assert float(got[m, j]) == pytest.approx(float(expected), rel=1e-5)


def test_gathering_from_segments_equals_the_cache():
    rng = np.random.default_rng(3)
    prefs = make_prefs(rng, 40)
    settings = dataclasses.replace(SMALL, frames_per_clip=5)
    a = RewardModel(OBS_SPACE, ACT_SPACE, settings, seed=4)
    b = RewardModel(OBS_SPACE, ACT_SPACE, settings, seed=4, cache_bytes=0)
    for model in (a, b):
        model.add_preferences(prefs)
        model.train(2)
    assert a._data._use_cache and not b._data._use_cache
    assert state_equal(a.net.state_dict(), b.net.state_dict())


def test_same_seed_same_weights_different_seed_different():
    rng = np.random.default_rng(4)
    prefs = make_prefs(rng, 60)
    settings = dataclasses.replace(SMALL, frames_per_clip=5)

    def run(seed: int) -> tuple[RewardModel, dict]:
        model = RewardModel(OBS_SPACE, ACT_SPACE, settings, seed=seed)
        model.add_preferences(prefs[:30])
        model.train(2)
        model.add_preferences(prefs[30:])
        return model, model.train(2)

    (a, metrics_a), (b, metrics_b), (c, _) = run(7), run(7), run(8)
    assert state_equal(a.net.state_dict(), b.net.state_dict())
    assert metrics_a["val_loss"] == metrics_b["val_loss"]
    assert [v for _, _, v in a.labels] == [v for _, _, v in b.labels]
    assert not state_equal(a.net.state_dict(), c.net.state_dict())


def test_cnn_training_is_deterministic_and_leaves_global_rng_alone():
    rng = np.random.default_rng(5)
    prefs = [
        Preference(ClipPair(make_atari_segment(rng), make_atari_segment(rng)), Choice.LEFT if k % 2 else Choice.RIGHT)
        for k in range(6)
    ]
    settings = RewardSettings(architecture="atari_cnn", ensemble_size=2, batch_size=4, frames_per_clip=2)
    states = []
    for _ in range(2):
        model = RewardModel(ATARI_SPACE, spaces.Discrete(6), settings, seed=3)
        model.add_preferences(prefs)
        torch.manual_seed(123)
        before = torch.get_rng_state()
        metrics = model.train(2)
        assert torch.equal(torch.get_rng_state(), before)
        assert metrics["steps"] == 2 and math.isfinite(metrics["train_loss"])
        states.append(model.net.state_dict())
    assert state_equal(*states)


# ---------------------------------------------------------------------- labels


def test_cant_tell_is_dropped_and_ties_are_half():
    rng = np.random.default_rng(6)
    prefs = make_prefs(rng, 3, choice=Choice.TIE) + make_prefs(rng, 4, choice=Choice.CANT_TELL)
    prefs += make_prefs(rng, 2, choice=Choice.LEFT) + make_prefs(rng, 2, choice=Choice.RIGHT)
    model = RewardModel(OBS_SPACE, ACT_SPACE, SMALL, seed=0)
    assert model.add_preferences(prefs) == 7
    assert [target for _, target, _ in model.labels] == [0.5, 0.5, 0.5, 1.0, 1.0, 0.0, 0.0]
    assert model.add_preferences(make_prefs(rng, 2, choice=Choice.CANT_TELL)) == 0
    assert model.n_labels == 7


def test_label_buffer_keeps_newest_and_validation_share():
    rng = np.random.default_rng(7)
    model = RewardModel(OBS_SPACE, ACT_SPACE, dataclasses.replace(SMALL, label_buffer_size=50), seed=0)
    prefs = make_prefs(rng, 120)
    for start in range(0, 120, 15):
        model.add_preferences(prefs[start : start + 15])
    assert model.n_labels == 50
    assert [pair.pair_id for pair, _, _ in model.labels] == [p.pair.pair_id for p in prefs[-50:]]
    assert abs(model.n_val - 50 / math.e) <= 3  # held-out share stays near 1/e

    fresh = RewardModel(OBS_SPACE, ACT_SPACE, SMALL, seed=0)
    fresh.add_preferences(prefs[:100])
    assert fresh.n_val == round(100 / math.e)


def test_too_few_labels_still_train():
    rng = np.random.default_rng(8)
    model = RewardModel(OBS_SPACE, ACT_SPACE, SMALL, seed=0)
    empty = model.train(3)
    assert empty["n_train"] == 0 and math.isnan(empty["train_loss"]) and math.isnan(empty["val_loss"])
    model.add_preferences(make_prefs(rng, 1))  # round(1/e) = 0 validation labels
    metrics = model.train(3)
    assert metrics["n_train"] == 1 and metrics["n_val"] == 0
    assert math.isfinite(metrics["train_loss"])
    assert math.isnan(metrics["val_loss"]) and math.isnan(metrics["val_accuracy"])
    assert metrics["l2"] == SMALL.initial_l2  # nothing to adapt to


def test_l2_grows_when_overfitting():
    rng = np.random.default_rng(9)
    # Random labels on 12 pairs: the members memorise the training labels and the
    # held-out loss rises far above the training loss.
    prefs = make_prefs(rng, 12, choice=lambda pair: Choice.LEFT if rng.random() < 0.5 else Choice.RIGHT)
    settings = dataclasses.replace(SMALL, hidden_sizes=(64, 64), learning_rate=1e-2, initial_l2=1e-6)
    model = RewardModel(OBS_SPACE, ACT_SPACE, settings, seed=0)
    model.add_preferences(prefs)
    metrics = model.train(150)
    assert metrics["val_loss"] > 1.5 * metrics["train_loss"]
    assert metrics["l2"] == pytest.approx(1.5e-6)
    # A strong penalty flattens the net: train and val losses meet (~log 2), l2 shrinks.
    model.l2 = 10.0
    metrics = model.train(150)
    assert metrics["val_loss"] < 1.1 * metrics["train_loss"]
    assert metrics["l2"] == pytest.approx(10.0 / 1.5)


def test_training_in_a_thread_while_predicting_and_labelling():
    """The training loop may fit the reward in the background while PPO asks for rewards."""
    import threading

    rng = np.random.default_rng(15)
    model = RewardModel(OBS_SPACE, ACT_SPACE, SMALL, seed=0)
    model.add_preferences(make_prefs(rng, 100))
    later = make_prefs(rng, 50)
    obs = rng.normal(size=(16, OBS_DIM)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(16, ACT_DIM)).astype(np.float32)
    results: list[dict] = []
    worker = threading.Thread(target=lambda: results.append(model.train(20)))
    worker.start()
    predictions = 0
    while worker.is_alive() or predictions < 2:
        assert np.isfinite(model.predict(obs, act)).all()
        if predictions == 1:
            model.add_preferences(later)  # arrives mid-training: used from the next call
        predictions += 1
    worker.join()
    assert results and results[0]["n_train"] + results[0]["n_val"] == 100
    assert model.n_labels == 150 and not model.net.training


# ---------------------------------------------------------------------- prediction


def test_normalisation_gives_mean_zero_and_output_std():
    rng = np.random.default_rng(10)
    settings = dataclasses.replace(SMALL, output_std=0.05)
    model = RewardModel(OBS_SPACE, ACT_SPACE, settings, seed=0)
    model.add_preferences(make_prefs(rng, 40))
    model.train(2)
    obs = rng.normal(size=(500, OBS_DIM)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(500, ACT_DIM)).astype(np.float32)
    model.update_normalization(obs, act)
    rewards = model.member_rewards(obs, act)
    assert rewards.shape == (3, 500) and rewards.dtype == np.float32
    np.testing.assert_allclose(rewards.mean(1), 0.0, atol=1e-4)
    np.testing.assert_allclose(rewards.std(1), 0.05, rtol=1e-3)
    np.testing.assert_allclose(model.predict(obs, act), rewards.mean(0), rtol=1e-5, atol=1e-6)
    # segment returns are sums of the normalised step rewards
    segments = [make_segment(rng) for _ in range(5)]
    returns = model.segment_returns(segments)
    for k, seg in enumerate(segments):
        expected = model.member_rewards(seg.observations, seg.actions).sum(1)
        np.testing.assert_allclose(returns[:, k], expected, rtol=1e-4, atol=1e-5)


def test_segment_returns_of_mixed_lengths_across_chunks():
    rng = np.random.default_rng(14)
    model = RewardModel(OBS_SPACE, ACT_SPACE, SMALL, seed=0, inference_batch=8)
    segments = [make_segment(rng, length) for length in (3, 5, 7, 2, 8, 1)]
    returns = model.segment_returns(segments)
    assert returns.shape == (3, 6)
    for k, seg in enumerate(segments):
        expected = model.member_rewards(seg.observations, seg.actions).sum(1)
        np.testing.assert_allclose(returns[:, k], expected, rtol=1e-5, atol=1e-5)


def test_inference_chunks_and_preference_probabilities():
    rng = np.random.default_rng(11)
    model = RewardModel(OBS_SPACE, ACT_SPACE, SMALL, seed=0, inference_batch=7)
    big = RewardModel(OBS_SPACE, ACT_SPACE, SMALL, seed=0)
    obs = rng.normal(size=(50, OBS_DIM)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(50, ACT_DIM)).astype(np.float32)
    np.testing.assert_allclose(model.predict(obs, act), big.predict(obs, act), rtol=1e-5, atol=1e-6)
    pairs = [p.pair for p in make_prefs(rng, 9)]
    probs = model.preference_probabilities(pairs)
    assert probs.shape == (3, 9) and probs.dtype == np.float32
    assert ((probs >= 0.05) & (probs <= 0.95)).all()  # eps = 0.1 bounds the model
    np.testing.assert_allclose(probs, big.preference_probabilities(pairs), rtol=1e-5)


def test_discrete_actions_with_mlp():
    rng = np.random.default_rng(12)
    model = RewardModel(OBS_SPACE, spaces.Discrete(3), SMALL, seed=0)
    obs = rng.normal(size=(8, 10, OBS_DIM)).astype(np.float32)
    acts = rng.integers(0, 3, size=(8, 10))
    segs = [Segment(o, a, o[:, 0].copy(), np.zeros(10, bool)) for o, a in zip(obs, acts)]
    prefs = [Preference(ClipPair(segs[i], segs[i + 1]), Choice.LEFT) for i in range(0, 8, 2)]
    model.add_preferences(prefs)
    assert math.isfinite(model.train(2)["train_loss"])
    assert model.predict(obs[0], acts[0]).shape == (10,)


# ---------------------------------------------------------------------- checkpoints


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(13)
    model = RewardModel(OBS_SPACE, ACT_SPACE, SMALL, seed=0)
    model.add_preferences(make_prefs(rng, 40))
    model.train(3)
    obs = rng.normal(size=(64, OBS_DIM)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(64, ACT_DIM)).astype(np.float32)
    model.update_normalization(obs, act)
    path = tmp_path / "reward.pt"
    model.save(path)

    other = RewardModel(OBS_SPACE, ACT_SPACE, SMALL, seed=99)
    other.load(path)
    np.testing.assert_array_equal(other.predict(obs, act), model.predict(obs, act))
    assert other.l2 == model.l2
    restored = RewardModel.from_checkpoint(path)
    np.testing.assert_array_equal(restored.predict(obs, act), model.predict(obs, act))

    wrong = RewardModel(spaces.Box(-np.inf, np.inf, (5,), np.float32), ACT_SPACE, SMALL, seed=0)
    with pytest.raises(PrefrlError, match=r"\(4,\).*\(5,\)") as info:
        wrong.load(path)
    assert "\n" not in str(info.value)


def test_cnn_checkpoint_refuses_other_observation_space(tmp_path):
    settings = RewardSettings(architecture="atari_cnn", ensemble_size=2)
    model = RewardModel(ATARI_SPACE, spaces.Discrete(6), settings, seed=0)
    path = tmp_path / "cnn.pt"
    model.save(path)
    three = RewardModel(spaces.Box(0, 255, (3, 84, 84), np.uint8), spaces.Discrete(6), settings, seed=0)
    with pytest.raises(PrefrlError, match=r"\(4, 84, 84\).*\(3, 84, 84\)"):
        three.load(path)
    # a checkpoint written with one memory format loads into the other
    plain = RewardModel(ATARI_SPACE, spaces.Discrete(6), settings, seed=1, channels_last=False)
    plain.load(path)
    obs = np.random.default_rng(0).integers(0, 256, size=(2, 4, 84, 84), dtype=np.uint8)
    np.testing.assert_allclose(plain.predict(obs), model.predict(obs), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- refit cap


def test_max_pairs_caps_the_minibatches_of_a_refit():
    """100 labels, 1/e held out: 63 training pairs, 2 minibatches of 32 per epoch. A cap
    of 70 pairs is 3 minibatches (ceil(70 / 32)) instead of 5 epochs x 2."""
    rng = np.random.default_rng(5)
    model = RewardModel(OBS_SPACE, ACT_SPACE, SMALL, seed=0)
    model.add_preferences(make_prefs(rng, 100))
    assert model.n_train == 63
    assert model.train(5)["steps"] == 10
    assert model.train(5, max_pairs=70)["steps"] == 3
    assert model.train(5, max_pairs=1)["steps"] == 1  # at least one minibatch
    assert model.train(1, max_pairs=10_000)["steps"] == 2  # a cap above the epochs changes nothing


def test_a_cap_above_the_work_gives_the_uncapped_weights():
    """Determinism: an uncapped refit and one whose cap does not bind draw the same
    minibatches (the MuJoCo presets' results do not move when the cap exists)."""
    rng = np.random.default_rng(6)
    prefs = make_prefs(rng, 50)
    models = []
    for cap in (0, 10**6):
        model = RewardModel(OBS_SPACE, ACT_SPACE, SMALL, seed=3)
        model.add_preferences(prefs)
        model.train(3, max_pairs=cap)
        models.append(model)
    assert state_equal(models[0].net.state_dict(), models[1].net.state_dict())


def test_a_capped_refit_still_learns():
    rng = np.random.default_rng(7)
    model = RewardModel(OBS_SPACE, ACT_SPACE, SMALL, seed=0)
    model.add_preferences(make_prefs(rng, 300))
    for _ in range(15):
        metrics = model.train(10, max_pairs=96)  # 3 minibatches per refit, ~half an epoch
        assert metrics["steps"] == 3
    assert metrics["val_accuracy"] > 0.85


def test_held_out_labels_beyond_the_cap_are_scored_on_a_random_subset(monkeypatch):
    import prefrl.reward.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "MAX_EVAL_PAIRS", 8)
    rng = np.random.default_rng(8)
    model = RewardModel(OBS_SPACE, ACT_SPACE, SMALL, seed=0)
    model.add_preferences(make_prefs(rng, 60))
    scored = []
    segment_returns = model.scorer.segment_returns
    monkeypatch.setattr(model.scorer, "segment_returns", lambda segments: scored.append(len(segments))
                        or segment_returns(segments))
    metrics = model.train(2)
    assert metrics["n_val"] == model.n_val == 22  # every held-out label is kept ...
    assert scored == [16]  # ... and 8 of them (16 clips) are scored
    assert math.isfinite(metrics["val_loss"]) and 0 <= metrics["val_accuracy"] <= 1


def test_query_scores_use_evenly_spaced_frames_when_the_loss_subsamples():
    rng = np.random.default_rng(11)
    prefs = make_prefs(rng, 30, length=10)
    pairs = [p.pair for p in prefs[:6]]
    full = RewardModel(OBS_SPACE, ACT_SPACE, SMALL, seed=0)
    full.add_preferences(prefs)
    full.train(2)
    sub = RewardModel(OBS_SPACE, ACT_SPACE, dataclasses.replace(SMALL, frames_per_clip=4), seed=0)
    sub.net.load_state_dict(full.net.state_dict())
    steps = np.array([0, 3, 6, 9])  # 4 evenly spaced steps of 10

    def estimate(segment: Segment) -> np.ndarray:
        raw = sub.scorer.step_rewards(segment.observations[steps], segment.actions[steps]).numpy()
        return raw.sum(axis=1) * 10 / 4

    left = np.stack([estimate(p.left) for p in pairs], axis=1)
    right = np.stack([estimate(p.right) for p in pairs], axis=1)
    expected = preference_probability(torch.as_tensor(left), torch.as_tensor(right), SMALL.random_answer_prob)
    np.testing.assert_allclose(sub.preference_probabilities(pairs), expected.numpy(), rtol=1e-5, atol=1e-6)
    # Without a frame budget every step counts, and the two models then agree.
    all_frames = RewardModel(OBS_SPACE, ACT_SPACE, SMALL, seed=0)
    all_frames.net.load_state_dict(full.net.state_dict())
    np.testing.assert_allclose(all_frames.preference_probabilities(pairs), full.preference_probabilities(pairs),
                               rtol=1e-6)
    assert not np.allclose(sub.preference_probabilities(pairs), full.preference_probabilities(pairs))
