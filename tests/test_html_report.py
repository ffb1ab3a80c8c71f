"""``prefrl report``: one self-contained HTML page about a few run folders, opened in
headless Chromium (Debian's ``chromium``, driven by playwright): no console errors, every
image decodes, every run is shown; plus a screenshot for people to look at."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from prefrl.analysis.html_report import read_progress
from prefrl.cli.main import main

RUNS = [(task, arm) for task in ("cartpole", "pendulum") for arm in ("true", "learned")]
#: Final true returns: learned / true is 0.50 on CartPole and 2.00 on Pendulum (returns < 0).
FINAL = {("cartpole", "true"): 200.0, ("cartpole", "learned"): 100.0,
         ("pendulum", "true"): -150.0, ("pendulum", "learned"): -300.0}


def _write_run(run_dir: Path, task: str, arm: str) -> None:
    """The files of a finished 512-step run that the report reads, as ``prefrl train``
    writes them: ``summary.json``, ``eval.csv`` and SB3's ``logs/progress.csv`` (one row
    per 128-step rollout; the reward model's keys empty where no fit was logged)."""
    learned, final = arm == "learned", FINAL[task, arm]
    (run_dir / "logs").mkdir(parents=True)
    summary = {"task": task, "arm": arm, "seed": 0, "env_steps": 512, "pretrain_env_steps": 0,
               "labels_used": 20 if learned else 0, "label_budget": 20 if learned else 0,
               "final_true_return": final, "wall_seconds": 12.3}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "eval.csv").write_text("step,mean_true_return,std_true_return,episodes,mean_length\n"
                                      f"0,{final * 0.2},0.0,1,200.0\n256,{final * 0.6},0.0,1,200.0\n512,{final},0.0,1,200.0\n")
    columns = ["time/total_timesteps", "rollout/ep_rew_mean"]
    if learned:
        columns += ["labels/used", "reward/val_accuracy", "reward/segment_return_corr", "rollout/learned_ep_return"]
    rows = [",".join(columns)]
    for k, step in enumerate((128, 256, 384, 512)):
        row = [step, final * (0.4 + 0.2 * k)]
        if learned:
            fitted = k != 2  # a rollout end without a fit: SB3 leaves those keys empty
            row += [6 + 4 * k, 0.5 + 0.1 * k if fitted else "", 0.2 * k if fitted else "", 3.0 * k - 5.0]
        rows.append(",".join(map(str, row)))
    (run_dir / "logs" / "progress.csv").write_text("\n".join(rows) + "\n")


def _write_video(path: Path, frames: int = 5) -> None:
    """A short mp4 as ``prefrl video`` writes it (OpenCV, mp4v)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (160, 120))
    for k in range(frames):
        frame = np.zeros((120, 160, 3), np.uint8)
        frame[:, : 32 * (k + 1)] = (40, 120, 220)
        writer.write(frame)
    writer.release()


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    """2 tasks x 2 arms of run folders, and a short video in one of them."""
    root = tmp_path_factory.mktemp("report_runs")
    for task, arm in RUNS:
        _write_run(root / f"{task}__{arm}__s0", task, arm)
    _write_video(root / "cartpole__learned__s0" / "video.mp4")
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
    ratios = re.findall(r'<tr class="learned"><td class=l>(\w+)</td><td class=l>learned \(20 labels\)</td>'
                        r"(?:<td>[^<]*</td>){3}<td>([^<]*)</td>", text)
    assert ratios == [("cartpole", "0.50"), ("pendulum", "2.00")]
    # Every run's row: its final true return and, learned, its last logged validation accuracy.
    for task, arm in RUNS:
        accuracy = "0.80" if arm == "learned" else ""
        assert (f"<td>{FINAL[task, arm]:,.1f}</td><td>{accuracy}</td><td>12</td>") in text, (task, arm)
    # The video's first frame is shown: a decodable PNG in the runs table.
    assert 'alt="first frame of video.mp4"' in text


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
