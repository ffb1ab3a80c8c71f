"""``prefrl report``: one self-contained HTML page about tiny real runs, opened in
headless Chromium (Debian's ``chromium``, driven by playwright): no console errors, every
image decodes, every run is shown; plus a screenshot for people to look at."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from prefrl.analysis.html_report import read_progress
from prefrl.cli.main import main
from prefrl.config.presets import load_preset
from prefrl.training.run import RunPaths, train

TINY = [
    "ppo.total_steps=512", "ppo.n_steps=128", "ppo.batch_size=64", "ppo.n_epochs=2",
    "labels.budget=20", "labels.initial_labels=6", "labels.pretrain_epochs=3", "labels.update_every_steps=128",
    "reward.epochs_per_update=2", "eval.every_steps=256", "eval.episodes=1",
]
RUNS = [(task, arm) for task in ("cartpole", "pendulum") for arm in ("true", "learned")]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    """2 tasks x 2 arms of tiny real runs, and a short video in one of them."""
    from prefrl.analysis.video import record_video

    root = tmp_path_factory.mktemp("report_runs")
    for task, arm in RUNS:
        run_dir = root / f"{task}__{arm}__s0"
        train(load_preset(task, TINY), arm=arm, seed=0, paths=RunPaths(run_dir, run_dir / "clips"), progress=False)
    record_video(root / "cartpole__learned__s0", episodes=1, max_steps=5)
    return root


@pytest.fixture(scope="module")
def page(runs_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", str(runs_root), "--out", str(out)]) == 0
    return out


def test_page_is_self_contained(page, runs_root):
    text = page.read_text()
    assert "<script" not in text
    # Nothing is fetched: every image is inline, the only link target is the video file.
    sources = re.findall(r'src="([^"]+)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    hrefs = re.findall(r'href="([^"]+)"', text)
    assert [h for h in hrefs if not h.startswith("data:")] == [
        f"../{runs_root.name}/cartpole__learned__s0/video.mp4"]
    for heading in ("Final true return", "Learning curves", "Labels used over time", "Reward model over time",
                    "Learned vs true return", "Runs"):
        assert f"<h2>{heading}</h2>" in text
    # Ratios learned / true are in the table (one per task).
    assert len(re.findall(r"<td>-?\d+\.\d\d</td>", text)) >= 2


def test_report_of_nothing_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no finished runs" in err and err.count("\n") == 0


def test_page_in_headless_chromium(page, runs_root):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); the page was not opened")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright missing: pip install -e '.[test]'")

    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
            tab.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            tab.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            tab.goto(page.as_uri(), wait_until="load")
            images = tab.evaluate("Array.from(document.images).map(i => [i.alt, i.naturalWidth, i.naturalHeight])")
            body = tab.inner_text("body")
            shot = page.with_name("report.png")
            tab.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    assert not problems, problems
    # Learning curves, labels, accuracy, scatter and the video's first frame: all decoded.
    assert len(images) == 5, images
    assert all(width > 100 and height > 100 for _, width, height in images), images
    for task, arm in RUNS:
        assert f"{task}__{arm}__s0" in body, f"run {task}/{arm} missing from the page"
    assert "learned (20 labels)" in body and "true reward" in body
    assert shot.stat().st_size > 50_000
    print(f"screenshot: {shot}")


def test_progress_of_a_resumed_run_joins_its_sessions(tmp_path):
    logs = tmp_path / "logs"
    (logs / "resumed_at_2048").mkdir(parents=True)
    # The first session logged on past its last checkpoint (2048) before it was stopped;
    # the resumed session redid those steps, so only its rows count from 2048 on.
    (logs / "progress.csv").write_text("time/total_timesteps,a\n1024,1\n2048,2\n3072,99\n")
    (logs / "resumed_at_2048" / "progress.csv").write_text("time/total_timesteps,a,b\n3072,3,\n4096,4,7\n")
    progress = read_progress(tmp_path)
    assert progress["time/total_timesteps"].tolist() == [1024, 2048, 3072, 4096]
    assert progress["a"].tolist() == [1, 2, 3, 4]
    assert np.isnan(progress["b"][:3]).all() and progress["b"][3] == 7
    assert read_progress(tmp_path / "no-run") == {}
