"""scripts/refit_on_labels.py: refit a run's reward model on the answers it collected."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from clip_fixtures import vector_segment

from prefrl.config.loading import load_preset
from prefrl.data.segments import ClipPair
from prefrl.feedback.choices import Choice
from prefrl.feedback.store import LabelStore

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "refit_on_labels.py"
spec = importlib.util.spec_from_file_location("refit_on_labels", SCRIPT)
refit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(refit)


def make_run(run_dir: Path, n_pairs: int) -> None:
    """A CartPole run folder whose answers prefer the clip with the larger first observation."""
    preset = load_preset("cartpole", ["reward.hidden_sizes=[8]"])
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"preset": preset.to_dict()}))
    rng = np.random.default_rng(0)
    with LabelStore(run_dir / "clips", preset.task.name) as store:
        pairs = [ClipPair(vector_segment(f"s{2 * k}", rng, obs_dim=4), vector_segment(f"s{2 * k + 1}", rng, obs_dim=4),
                          pair_id=f"q{k}") for k in range(n_pairs)]
        store.add_pairs(pairs)
        for k, pair in enumerate(pairs):
            if k == 3:
                choice = Choice.CANT_TELL
            elif k == 4:
                choice = Choice.TIE
            else:
                left, right = pair.left.observations[:, 0].sum(), pair.right.observations[:, 0].sum()
                choice = Choice.LEFT if left > right else Choice.RIGHT
            store.record_label(pair.pair_id, choice, "test")


def test_replays_the_answers_in_order_and_prints_a_row_per_fit(tmp_path, capsys):
    make_run(tmp_path / "run", 25)
    prefs = refit.stored_preferences(tmp_path / "run" / "clips", "cartpole")
    assert len(prefs) == 24 and [p.pair.pair_id for p in prefs[:4]] == ["q0", "q1", "q2", "q4"]

    args = ["--first", "10", "--step", "5", "--refits", "5", "--pretrain-epochs", "100", "--epochs", "50"]
    assert refit.main([str(tmp_path / "run"), *args, "--set", "reward.dropout=0.0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("cartpole: 24 answers in ") and lines[1] == "reward settings: reward.dropout=0.0"
    rows = [line.split() for line in lines[3:-1]]
    # 10 answers, then +5, +5 and the last 4: the answers run out before 5 refits.
    assert [(r[0], r[1], r[2]) for r in rows] == [("0", "10", "9"), ("1", "15", "14"), ("2", "20", "19"), ("3", "24", "23")]
    # The answers follow a simple rule (the larger first observation wins): the fits learn
    # it, in the answers' direction (a loss of ln 2 is chance; swapped sides would score ~0).
    train_loss, val_loss, val_accuracy = (float(rows[-1][i]) for i in (3, 4, 5))
    assert train_loss < math.log(2) and val_loss < math.log(2) and val_accuracy >= 0.75, rows[-1]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert refit.main([str(tmp_path / "missing")]) == 2
    make_run(tmp_path / "run", 3)
    assert refit.main([str(tmp_path / "run"), "--set", "ppo.n_envs=2"]) == 2
    assert refit.main([str(tmp_path / "run"), "--step", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("refit_on_labels: error: ") for line in err)
    assert "not a run directory" in err[0] and "only reward.* settings" in err[1] and "--step 0 is too small" in err[2]


class _FixedReturns:
    """Stands in for a reward model: the predicted return of a clip is its first observation."""

    def segment_returns(self, segments):
        return np.array([[float(seg.observations[0, 0]) for seg in segments]] * 2, dtype=np.float32)


def _pref(rng, left_pred, right_pred, left_true, right_true, choice):
    left, right = vector_segment("a", rng, obs_dim=1), vector_segment("b", rng, obs_dim=1)
    for seg, pred, true in ((left, left_pred, left_true), (right, right_pred, right_true)):
        seg.observations[0, 0] = pred
        seg.true_rewards[:] = 0.0
        seg.true_rewards[0] = true
    return refit.Preference(ClipPair(left, right), choice)


def test_test_scores_by_hand():
    rng = np.random.default_rng(0)
    test = [
        _pref(rng, 2.0, 1.0, 3.0, 0.0, Choice.LEFT),   # ranked right
        _pref(rng, 0.0, 1.0, 0.0, 1.0, Choice.RIGHT),  # ranked right
        _pref(rng, 5.0, 4.0, 0.0, 2.0, Choice.RIGHT),  # ranked wrong
        _pref(rng, 1.0, 1.0, 1.0, 1.0, Choice.TIE),    # not in the accuracy
    ]
    scores = refit.test_scores(_FixedReturns(), test)
    assert scores["test_accuracy"] == 2 / 3
    predicted = [2, 1, 0, 1, 5, 4, 1, 1]
    true = [3, 0, 0, 1, 0, 2, 1, 1]
    assert np.isclose(scores["test_return_corr"], np.corrcoef(predicted, true)[0, 1])


def test_held_out_test_answers_are_scored_and_never_fitted(tmp_path, capsys, monkeypatch):
    scored = []
    score = refit.test_scores

    def recording_scores(model, test):
        scores = score(model, test)
        scored.append(([p.pair.pair_id for p in test], scores))
        return scores

    monkeypatch.setattr(refit, "test_scores", recording_scores)
    make_run(tmp_path / "run", 25)
    args = ["--first", "10", "--step", "5", "--refits", "1", "--pretrain-epochs", "2", "--epochs", "1", "--test", "8"]
    assert refit.main([str(tmp_path / "run"), *args]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[2].startswith("test: the newest 8 answers")
    assert lines[3].split()[-2:] == ["test_accuracy", "test_return_corr"]
    rows = [line.split() for line in lines[4:-1]]
    # 24 answers, 8 held out: 16 to fit on; 10 then 15.
    assert [r[1] for r in rows] == ["10", "15"]
    # Every fit is scored on the newest 8 answers (q17..q24), and the row shows those scores.
    newest = [f"q{k}" for k in range(17, 25)]
    assert [ids for ids, _ in scored] == [newest, newest]
    assert [(float(r[-2]), float(r[-1])) for r in rows] == [
        pytest.approx((s["test_accuracy"], s["test_return_corr"]), rel=1e-3) for _, s in scored]
    # Never fitted on: the fits are those of a run that only ever had the first 16 answers.
    make_run(tmp_path / "first_16", 17)
    assert refit.main([str(tmp_path / "first_16"), *args[:-2]]) == 0
    alone = [line.split()[:7] for line in capsys.readouterr().out.strip().splitlines()[3:-1]]
    assert [r[:7] for r in rows] == alone  # all but the time
    assert refit.main([str(tmp_path / "run"), "--test", "24"]) == 2
    assert "--test 24 leaves none of the 24 answers" in capsys.readouterr().err
