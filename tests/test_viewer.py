"""The pygame viewer driven with posted events (``SDL_VIDEODRIVER=dummy``), and the
core-safe clip rendering it relies on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from clip_fixtures import DRIVER, make_pairs, make_store, subprocess_env  # noqa: E402

from prefrl.data.segments import Segment  # noqa: E402
from prefrl.feedback.choices import Choice  # noqa: E402
from prefrl.feedback.store import LabelStore  # noqa: E402
from prefrl.human.clips import RenderInfo  # noqa: E402
from prefrl.human.layout import clip_box  # noqa: E402
from prefrl.human.render import ClipRenderer, fit_frames, plot_frames  # noqa: E402
from prefrl.human.viewer import LabelViewer, import_pygame  # noqa: E402
from prefrl.rundir.clips import find_clips  # noqa: E402
from prefrl.util.errors import PrefrlError  # noqa: E402

pg = import_pygame()
TASK = "testtask"
ATARI = RenderInfo(task=TASK, domain="atari")


def open_viewer(clips_dir: Path, info: RenderInfo = ATARI, **kwargs: object) -> LabelViewer:
    options = {"labeller": "tester", "lease_seconds": 30.0, "poll_seconds": 0.02, **kwargs}
    return LabelViewer(clips_dir, TASK, info, **options).open()  # type: ignore[arg-type]


@pytest.fixture
def atari_viewer(tmp_path: Path) -> Iterator[LabelViewer]:
    make_store(tmp_path, 12)
    viewer = open_viewer(tmp_path)
    yield viewer
    viewer.close()


def wait_shown(viewer: LabelViewer, timeout: float = 10.0) -> str:
    """Step until a pair is on screen; returns its id."""
    deadline = time.monotonic() + timeout
    while viewer.current is None:
        assert time.monotonic() < deadline, "no pair came on screen"
        assert viewer.step()
        time.sleep(0.005)
    return viewer.current.pair_id


def press(viewer: LabelViewer, key: int) -> bool:
    pg.event.post(pg.event.Event(pg.KEYDOWN, key=key, mod=0, unicode="", scancode=0))
    return viewer.step()


def click(viewer: LabelViewer, pos: tuple[int, int]) -> bool:
    pg.event.post(pg.event.Event(pg.MOUSEBUTTONDOWN, pos=pos, button=1))
    return viewer.step()


def stored(clips_dir: Path) -> dict[str, str]:
    with LabelStore(clips_dir, TASK) as store:
        return {pair_id: choice.value for _, pair_id, choice, _, _ in store.labels_after(0)}


def centre(rect: tuple[int, int, int, int]) -> tuple[int, int]:
    x, y, w, h = rect
    return x + w // 2, y + h // 2


# --------------------------------------------------------------------------- keys and clicks


def test_every_answer_key_commits_its_choice_on_the_keypress(atari_viewer: LabelViewer, tmp_path: Path) -> None:
    keys = {
        pg.K_LEFT: "left", pg.K_1: "left", pg.K_KP1: "left",
        pg.K_RIGHT: "right", pg.K_2: "right", pg.K_KP2: "right",
        pg.K_UP: "tie", pg.K_EQUALS: "tie",
        pg.K_DOWN: "cant_tell", pg.K_x: "cant_tell",
    }
    expected = {}
    for key, choice in keys.items():
        pair_id = wait_shown(atari_viewer)
        assert press(atari_viewer, key)
        expected[pair_id] = choice
        # Committed already: another connection sees it before the next frame.
        assert stored(tmp_path)[pair_id] == choice
        assert atari_viewer.current is None or atari_viewer.current.pair_id != pair_id
    assert stored(tmp_path) == expected
    assert atari_viewer.session.session_labels == len(keys)
    assert {row for row in (atari_viewer.store.counts()["answered"],)} == {len(keys)}


def test_keys_without_meaning_and_answers_while_waiting_do_nothing(tmp_path: Path) -> None:
    make_store(tmp_path, 1)
    with LabelViewer(tmp_path, TASK, ATARI, labeller="tester", poll_seconds=0.02) as viewer:
        wait_shown(viewer)
        assert press(viewer, pg.K_a) and press(viewer, pg.K_F5)
        assert stored(tmp_path) == {}
        assert press(viewer, pg.K_RIGHT)
        assert press(viewer, pg.K_LEFT)  # nothing on screen any more: ignored, not a crash
        assert stored(tmp_path) == {"q000000": "right"}


def test_mouse_click_on_a_clip_chooses_it_and_help_items_are_buttons(atari_viewer: LabelViewer, tmp_path: Path) -> None:
    layout = atari_viewer.layout
    first = wait_shown(atari_viewer)
    assert click(atari_viewer, centre(layout.left_box))
    second = wait_shown(atari_viewer)
    assert click(atari_viewer, centre(layout.right_box))
    third = wait_shown(atari_viewer)
    # Between the clips: no choice.
    gap_x = layout.left_box[0] + layout.left_box[2] + 5
    assert click(atari_viewer, (gap_x, layout.left_box[1] + 50))
    assert atari_viewer.current is not None and atari_viewer.current.pair_id == third
    # The "equally good" help item.
    atari_viewer.step()
    tie_rect = next(rect for rect, action in atari_viewer._help_items if action.value == "tie")  # noqa: SLF001
    assert click(atari_viewer, centre(tie_rect))
    assert stored(tmp_path) == {first: "left", second: "right", third: "tie"}


def test_space_replays_from_the_first_frame(atari_viewer: LabelViewer) -> None:
    wait_shown(atari_viewer)
    shown = atari_viewer.current
    assert shown is not None
    later = atari_viewer.shown_at + 2.5 / shown.fps
    assert atari_viewer.session.frame_index(later) == 2
    # Loops: after the clip and the pause at its end, back to frame 0.
    period = len(shown.left) / shown.fps + atari_viewer.session.loop_pause
    assert atari_viewer.session.frame_index(atari_viewer.shown_at + period + 0.5 / shown.fps) == 0
    assert atari_viewer.session.frame_index(atari_viewer.shown_at + period - 0.01) == len(shown.left) - 1
    assert press(atari_viewer, pg.K_SPACE)
    assert atari_viewer.session.frame_index(time.monotonic()) == 0
    assert atari_viewer.current is shown  # replay keeps the pair


@pytest.mark.parametrize("undo_key", ["BACKSPACE", "u"])
def test_undo_brings_the_last_pair_back_and_it_can_be_answered_again(tmp_path: Path, undo_key: str) -> None:
    make_store(tmp_path, 5)
    key = pg.K_BACKSPACE if undo_key == "BACKSPACE" else pg.K_u
    with LabelViewer(tmp_path, TASK, ATARI, labeller="tester", poll_seconds=0.02) as viewer:
        first = wait_shown(viewer)
        press(viewer, pg.K_LEFT)
        second = wait_shown(viewer)
        assert second != first
        assert press(viewer, key)
        assert viewer.current is not None and viewer.current.pair_id == first
        assert stored(tmp_path) == {}
        assert viewer.session.session_labels == 0
        press(viewer, pg.K_RIGHT)
        assert stored(tmp_path) == {first: "right"}
        # The pair that was displaced by the undo comes next, not a new one.
        assert wait_shown(viewer) == second
        assert press(viewer, key) and viewer.current.pair_id == first
        assert press(viewer, key)  # nothing earlier to undo: a message, no crash
        assert viewer.current.pair_id == first


def test_undo_three_times_walks_back_beyond_what_is_kept_in_memory(tmp_path: Path) -> None:
    make_store(tmp_path, 6)
    with LabelViewer(tmp_path, TASK, ATARI, labeller="tester", poll_seconds=0.02) as viewer:
        answered = []
        for _ in range(3):
            answered.append(wait_shown(viewer))
            press(viewer, pg.K_DOWN)
        for pair_id in reversed(answered):
            press(viewer, pg.K_BACKSPACE)
            assert wait_shown(viewer) == pair_id  # the oldest is prepared again from the store
        assert stored(tmp_path) == {}
        for _ in range(3):
            pair_id = wait_shown(viewer)
            press(viewer, pg.K_UP)
        assert set(stored(tmp_path)) == set(answered)
        assert all(choice == "tie" for choice in stored(tmp_path).values())


@pytest.mark.parametrize("how", ["q", "escape", "window"])
def test_quit_stops_the_loop_and_gives_back_the_leases(tmp_path: Path, how: str) -> None:
    make_store(tmp_path, 4)
    viewer = open_viewer(tmp_path)
    try:
        wait_shown(viewer)
        viewer.prefetcher.wait_ready(5.0)
        assert viewer.store.counts()["leased"] >= 2  # on screen and prepared ahead
        if how == "window":
            pg.event.post(pg.event.Event(pg.QUIT))
            assert viewer.step() is False
        else:
            assert press(viewer, pg.K_q if how == "q" else pg.K_ESCAPE) is False
        assert viewer.run() == 0  # the loop ends at once too
    finally:
        viewer.close()
    with LabelStore(tmp_path, TASK) as store:
        assert store.counts()["leased"] == 0
    assert stored(tmp_path) == {}


def test_run_loop_with_max_seconds_draws_frames(atari_viewer: LabelViewer) -> None:
    started = time.monotonic()
    assert atari_viewer.run(max_seconds=0.3) == 0
    assert 0.25 < time.monotonic() - started < 5.0
    assert atari_viewer.session.pairs_shown == 1


def test_waiting_screen_polls_for_pairs_the_trainer_adds_later(tmp_path: Path) -> None:
    with LabelStore(tmp_path, TASK):
        pass
    with LabelViewer(tmp_path, TASK, ATARI, labeller="tester", poll_seconds=0.02) as viewer:
        deadline = time.monotonic() + 5.0
        while not viewer.prefetcher.idle and time.monotonic() < deadline:
            viewer.step()
            time.sleep(0.01)
        assert viewer.current is None and viewer.prefetcher.idle
        with LabelStore(tmp_path, TASK) as trainer_store:
            trainer_store.add_pairs(make_pairs(2))
        assert wait_shown(viewer, timeout=5.0) == "q000000"


def test_viewer_window_layout_and_clip_size() -> None:
    assert clip_box(ATARI) == (480, 630)  # Atari 3x
    assert clip_box(ATARI, screen=(1366, 768)) == (320, 420)  # a small screen: 2x
    mujoco = RenderInfo(task="hopper", domain="mujoco", env_id="Hopper-v5")
    assert clip_box(mujoco) == (480, 480)
    assert clip_box(RenderInfo(task="cartpole", domain="classic")) == (480, 480)


def test_missing_pygame_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pygame", None)  # import fails
    with pytest.raises(PrefrlError, match="needs pygame; install it"):
        import_pygame()


def test_core_modules_do_not_import_pygame() -> None:
    code = ("import sys; import prefrl.human.clips, prefrl.human.render, prefrl.human.prefetch, prefrl.human.session, "
            "prefrl.human.layout, prefrl.feedback.teachers, prefrl.feedback.store; "
            "sys.exit(int('pygame' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], env=subprocess_env()).returncode == 0


# --------------------------------------------------------------------------- two viewers


def test_two_viewers_on_one_store_never_share_a_pair(tmp_path: Path) -> None:
    make_store(tmp_path, 24)
    procs = [
        subprocess.Popen(
            [sys.executable, str(DRIVER), str(tmp_path), TASK, "--name", name, "--delay", "0.01"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
        )
        for name in ("ann", "bob")
    ]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [p.stderr.read() if p.stderr else "" for p in procs]
    shown = [{line.split("pair=")[1].split()[0] for line in out.splitlines() if line.startswith("event=shown")}
             for out in outputs]
    labelled = [[line.split("pair=")[1].split()[0] for line in out.splitlines()
                 if line.startswith("event=label") and "stored=1" in line] for out in outputs]
    assert shown[0] and shown[1], "both viewers should have worked"
    assert not shown[0] & shown[1]
    assert not set(labelled[0]) & set(labelled[1])
    assert sorted(labelled[0] + labelled[1]) == [f"q{k:06d}" for k in range(24)]
    with LabelStore(tmp_path, TASK) as store:
        rows = store.labels_after(0)
        assert len(rows) == 24 and len({r[1] for r in rows}) == 24
        assert {r[3] for r in rows} == {"ann", "bob"}
        assert store.counts() == {"pairs": 24, "pending": 0, "answered": 24, "leased": 0}


def test_leases_are_renewed_while_the_viewer_lives_and_released_when_it_quits(tmp_path: Path) -> None:
    from prefrl.human.prefetch import PairPrefetcher

    make_store(tmp_path, 3)
    with LabelStore(tmp_path, TASK) as store:
        first = store.lease_next("a", 0.2)
        assert store.renew_leases([first, "q000002"], "a", 60.0) == [first]  # q000002 was never a's
        assert store.lease_next("b", 60.0) == "q000001"
        store.record_label(first, Choice.LEFT, "ann")
        assert store.renew_leases([first], "a", 60.0) == []  # answered: nothing to renew
        store.lease_next("c", 0.05)
        time.sleep(0.1)
        assert store.lease_next("d", 60.0) == "q000002"  # c's lease expired, d took it
        assert store.renew_leases(["q000002"], "c", 60.0) == []  # lost

    make_store(tmp_path / "two", 2)
    prefetcher = PairPrefetcher(tmp_path / "two", TASK, "viewer", ATARI, (320, 420), ahead=2,
                                lease_seconds=0.4, poll_seconds=0.02).start()
    try:
        assert prefetcher.wait_ready(10.0)
        time.sleep(1.0)  # more than two lease lengths: only renewal keeps them
        with LabelStore(tmp_path / "two", TASK) as other:
            assert other.lease_next("someone-else", 60.0) is None
    finally:
        prefetcher.stop()
    with LabelStore(tmp_path / "two", TASK) as other:
        assert other.counts()["leased"] == 0 and other.lease_next("someone-else", 60.0) == "q000000"


# --------------------------------------------------------------------------- clip rendering


def test_recorded_frames_are_scaled_by_whole_factors_without_blur() -> None:
    frames = np.zeros((2, 210, 160, 3), dtype=np.uint8)
    frames[:, 10, 20] = 255
    scaled = fit_frames(frames, (480, 630), pixel_art=True)
    assert scaled.shape == (2, 630, 480, 3) and scaled.flags.c_contiguous
    assert (scaled[:, 30:33, 60:63] == 255).all() and scaled.sum() == 2 * 9 * 3 * 255
    smooth = fit_frames(np.zeros((1, 240, 240, 3), np.uint8), (480, 480), pixel_art=False)
    assert smooth.shape == (1, 480, 480, 3)
    assert fit_frames(frames, (400, 630), pixel_art=True).shape == (2, 420, 320, 3)  # 2x fits, 3x not


def test_vector_clips_become_observation_plots(tmp_path: Path) -> None:
    pair = make_pairs(1, kind="vector")[0]
    renderer = ClipRenderer(RenderInfo(task=TASK, domain="classic"), tmp_path / "render", plot_size=(320, 240))
    left, right = renderer.pair_frames(pair)
    assert left.kind == right.kind == "plot" and "plot" in left.note
    assert left.frames.shape == (len(pair.left), 240, 320, 3) and left.frames.dtype == np.uint8
    assert not np.array_equal(left.frames[0], left.frames[-1])  # the trace grows over time
    assert plot_frames(pair.left, (100, 80)).shape == (len(pair.left), 80, 100, 3)


def test_image_observations_without_frames_show_the_agents_view() -> None:
    segment = make_pairs(1)[0].left
    bare = Segment(segment.observations, segment.actions, segment.true_rewards, segment.after_termination, "x")
    clip = ClipRenderer(ATARI).frames(bare)
    assert clip.kind == "recorded" and clip.frames.shape == (len(bare), 84, 84, 3)


def _pendulum_segment(segment_id: str, steps: int = 4) -> Segment:
    gym = pytest.importorskip("gymnasium")
    env = gym.make("InvertedPendulum-v5")
    obs, _ = env.reset(seed=0)
    data = env.unwrapped.data
    states, observations = [], []
    for _ in range(steps):
        states.append(np.concatenate([data.qpos, data.qvel]))
        observations.append(obs)
        obs, *_ = env.step(env.action_space.sample())
    env.close()
    return Segment(
        observations=np.asarray(observations, dtype=np.float32), actions=np.zeros((steps, 1), np.float32),
        true_rewards=np.ones(steps, np.float32), after_termination=np.zeros(steps, bool),
        segment_id=segment_id, render_states=np.asarray(states),
    )


@pytest.fixture(scope="module")
def egl_renderer_ok() -> None:
    info = RenderInfo(task="invertedpendulum", domain="mujoco", env_id="InvertedPendulum-v5")
    renderer = ClipRenderer(info)
    try:
        if renderer._state_renderer() is None:  # noqa: SLF001
            pytest.skip(f"MuJoCo cannot render here: {renderer._render_error}")  # noqa: SLF001
    finally:
        renderer.close()


def test_mujoco_states_are_rendered_once_and_cached(tmp_path: Path, egl_renderer_ok: None) -> None:
    info = RenderInfo(task="invertedpendulum", domain="mujoco", env_id="InvertedPendulum-v5", render_size=(96, 96))
    segment = _pendulum_segment("s0000001")
    renderer = ClipRenderer(info, tmp_path / "render")
    try:
        clip = renderer.frames(segment)
        assert clip.kind == "rendered" and clip.frames.shape == (4, 96, 96, 3)
        assert clip.fps == pytest.approx(25.0)  # InvertedPendulum-v5: dt = 0.04 s
        assert clip.frames.std() > 5  # a scene, not a blank image
        assert renderer.rendered_frames == 4 and renderer.is_cached("s0000001")
        again = renderer.frames(segment)
        assert renderer.rendered_frames == 4  # from the cache
        np.testing.assert_array_equal(again.frames, clip.frames)
    finally:
        renderer.close()
    # A new renderer (another viewer, a restart) reads the cache without rendering.
    other = ClipRenderer(info, tmp_path / "render")
    assert other.frames(segment).frames.shape == (4, 96, 96, 3) and other.rendered_frames == 0


def test_viewer_shows_a_mujoco_pair(tmp_path: Path, egl_renderer_ok: None) -> None:
    from prefrl.data.segments import ClipPair

    info = RenderInfo(task=TASK, domain="mujoco", env_id="InvertedPendulum-v5", render_size=(120, 120))
    pair = ClipPair(_pendulum_segment("m0"), _pendulum_segment("m1"), pair_id="m000000")
    with LabelStore(tmp_path, TASK) as store:
        store.add_pairs([pair])
    with LabelViewer(tmp_path, TASK, info, labeller="tester", poll_seconds=0.02, mujoco_scale=2.0) as viewer:
        wait_shown(viewer, timeout=30.0)
        assert viewer.current.kind == "rendered" and viewer.current.left.shape == (4, 240, 240, 3)
        press(viewer, pg.K_RIGHT)
    assert stored(tmp_path) == {"m000000": "right"}
    assert len(list((tmp_path / "render").glob("*.npz"))) == 2


def test_render_failure_falls_back_to_a_plot_with_a_note() -> None:
    info = RenderInfo(task=TASK, domain="mujoco", env_id="NoSuchEnv-v0")
    segment = Segment(np.zeros((3, 4), np.float32), np.zeros((3, 1), np.float32), np.zeros(3, np.float32),
                      np.zeros(3, bool), "x", render_states=np.zeros((3, 4)))
    clip = ClipRenderer(info).frames(segment)
    assert clip.kind == "plot" and "unavailable" in clip.note


# --------------------------------------------------------------------------- locating a clips folder


def test_find_clips_from_a_run_dir_and_from_a_clips_folder(tmp_path: Path) -> None:
    clips_dir = tmp_path / "clips" / "pong__learned__0__x"
    make_store(clips_dir, 1, task="pong")
    run_dir = tmp_path / "runs" / "pong__learned__0__x"
    run_dir.mkdir(parents=True)
    config = {"task": "pong", "clips_dir": str(clips_dir),
              "preset": {"task": {"name": "pong", "domain": "atari", "env_id": "ALE/Pong-v5", "frame_skip": 4}}}
    (run_dir / "config.json").write_text(json.dumps(config))
    location = find_clips(run_dir)
    assert location.clips_dir == clips_dir and location.task == "pong" and location.run_dir == run_dir
    assert location.info.domain == "atari" and location.info.fps == 15.0
    # A relative clips_dir is resolved against the folder training ran in.
    config["clips_dir"] = "clips/pong__learned__0__x"
    (run_dir / "config.json").write_text(json.dumps(config))
    assert find_clips(run_dir).clips_dir == run_dir.parent.parent / "clips/pong__learned__0__x"
    # A clips folder: the task comes from the store; sniffing the first clip says Atari.
    direct = find_clips(clips_dir)
    assert direct.task == "pong" and direct.info.domain == "atari"
    with pytest.raises(PrefrlError, match="no label store"):
        find_clips(tmp_path)
    (run_dir / "config.json").write_text(json.dumps({"task": "pong", "clips_dir": None}))
    with pytest.raises(PrefrlError, match="true-reward run"):
        find_clips(run_dir)


# --------------------------------------------------------------------------- the label commands


def _parser():  # type: ignore[no-untyped-def]
    import argparse

    from prefrl.cli.labels import add_commands as add_label_commands

    class OneLineParser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            self.exit(2, f"{self.prog}: error: {message}\n")

    parser = OneLineParser(prog="prefrl")
    add_label_commands(parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser))
    return parser


def test_label_commands_parse_and_point_to_their_handlers(capsys: pytest.CaptureFixture[str]) -> None:
    from prefrl.cli import labels as cli_labels

    parser = _parser()
    args = parser.parse_args(["label", "runs/x", "--name", "ann"])
    assert args.handler is cli_labels.cmd_label and args.name == "ann" and args.path == Path("runs/x")
    args = parser.parse_args(["clips", "pong", "--pairs", "5", "--policy", "p.zip", "--seed", "3"])
    assert args.handler is cli_labels.cmd_clips and (args.pairs, args.seed) == (5, 3)
    assert parser.parse_args(["labels", "export", "r", "--out", "l.jsonl"]).handler is cli_labels.cmd_labels_export
    assert parser.parse_args(["labels", "import", "r", "l.jsonl"]).handler is cli_labels.cmd_labels_import
    for bad in (["clips", "pong"], ["clips", "pong", "--pairs", "0"], ["labels"], ["label"]):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(bad)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("prefrl") and err.count("\n") == 1


def test_labels_export_and_import_move_labels_between_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, target = tmp_path / "a", tmp_path / "b"
    make_store(source, 3)
    make_store(target, 3)
    with LabelStore(source, TASK) as store:
        store.record_label("q000000", Choice.LEFT, "ann")
        store.record_label("q000002", Choice.TIE, "bob")
    parser = _parser()
    out = tmp_path / "labels.jsonl"
    args = parser.parse_args(["labels", "export", str(source), "--out", str(out)])
    assert args.handler(args) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["pair_id"], r["choice"], r["labeller"]) for r in lines] == [("q000000", "left", "ann"), ("q000002", "tie", "bob")]
    assert set(lines[0]) == {"pair_id", "left_clip", "right_clip", "choice", "labeller", "time"}
    args = parser.parse_args(["labels", "import", str(target), str(out)])
    assert args.handler(args) == 0
    assert "imported 2 labels" in capsys.readouterr().out
    assert stored(target) == {"q000000": "left", "q000002": "tie"}
    with pytest.raises(PrefrlError, match="no label store"):
        args = parser.parse_args(["labels", "export", str(tmp_path), "--out", str(out)])
        args.handler(args)


def test_clips_samples_pairs_from_a_random_or_saved_policy(tmp_path: Path) -> None:
    pytest.importorskip("prefrl.envs.factory")
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from prefrl.config.loading import load_preset
    from prefrl.envs.factory import make_env

    parser = _parser()
    out = tmp_path / "random"
    args = parser.parse_args(["clips", "cartpole", "--pairs", "3", "--out", str(out), "--seed", "1"])
    assert args.handler(args) == 0
    with LabelStore(out, "cartpole") as store:
        assert store.counts()["pairs"] == 3
        pairs = [store.load_pair(f"c{k:06d}") for k in range(3)]
    clip_ids = {seg.segment_id for pair in pairs for seg in (pair.left, pair.right)}
    assert len(clip_ids) == 6  # every clip shown once
    assert all(pair.left.render_states is not None for pair in pairs)
    location = find_clips(out)
    assert location.task == "cartpole" and location.info.domain == "classic"
    with pytest.raises(PrefrlError, match="already holds a label store"):
        args.handler(args)

    preset = load_preset("cartpole")
    model = PPO("MlpPolicy", DummyVecEnv([lambda: make_env(preset)]), n_steps=64, batch_size=64, device="cpu")
    (tmp_path / "run").mkdir()
    model.save(tmp_path / "run" / "policy.zip")
    args = parser.parse_args(["clips", "cartpole", "--pairs", "2", "--out", str(tmp_path / "policy"),
                              "--policy", str(tmp_path / "run" / "policy.zip")])
    assert args.handler(args) == 0
    assert json.loads((tmp_path / "policy" / "clips.json").read_text())["policy"].endswith("policy.zip")
    with pytest.raises(PrefrlError, match="not found"):
        args = parser.parse_args(["clips", "cartpole", "--pairs", "2", "--out", str(tmp_path / "x"),
                                  "--policy", str(tmp_path / "missing.zip")])
        args.handler(args)


def test_atari_clips_show_the_masked_frames(tmp_path: Path) -> None:
    pytest.importorskip("prefrl.envs.factory")
    from prefrl.config.loading import load_preset
    from prefrl.training.sample_clips import collect_clip_pairs

    preset = load_preset("pong")
    summary = collect_clip_pairs(preset, 1, tmp_path, seed=0, log=lambda line: None)
    assert summary["pairs"] == 1
    with LabelStore(tmp_path, "pong") as store:
        pair = store.load_pair("c000000")
    assert pair.left.frames is not None and pair.left.frames.shape == (25, 210, 160, 3)
    top, bottom, left, right = preset.task.mask_regions[0]
    assert not pair.left.frames[:, top:bottom, left:right].any()  # the score is hidden
    assert pair.left.frames[:, bottom:].any()
    location = find_clips(tmp_path)
    assert location.info.domain == "atari" and location.info.fps == 15.0


def test_two_keys_in_one_frame_never_label_an_unseen_pair(atari_viewer: LabelViewer, tmp_path: Path) -> None:
    first = wait_shown(atari_viewer)
    atari_viewer.prefetcher.wait_ready(5.0)
    pg.event.post(pg.event.Event(pg.KEYDOWN, key=pg.K_LEFT))
    pg.event.post(pg.event.Event(pg.KEYDOWN, key=pg.K_RIGHT))
    atari_viewer.step()
    assert stored(tmp_path) == {first: "left"}
    assert atari_viewer.current is not None and atari_viewer.current.pair_id != first
