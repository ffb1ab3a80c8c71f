"""``prefrl report``: one self-contained HTML page about a set of runs.

Everything is in the one file: plots are matplotlib PNGs embedded as base64, styles are
inline, there is no script. Sections:

1. final true return per (task, arm, label budget), with the learned / true ratio
   (the rows of :func:`prefrl.analysis.report.summarize`);
2. learning curves of both arms (true evaluation return against env steps,
   :func:`prefrl.analysis.report.plot_curves`);
3. labels used over time, per learned run;
4. the reward model over time: validation accuracy on held-out labels and the
   correlation of predicted with true segment returns;
5. learned against true training-episode return, one scatter per learned run (each
   point one logged rollout, coloured by env step), the reward-hacking check;
6. every run: its settings, numbers and the first frame of each of its videos
   (``prefrl video``), linked to the video file.

The per-step numbers come from each run's ``logs/progress.csv`` (SB3's logger; a resumed run's
sessions joined at the checkpoint steps):
``labels/used``, ``reward/val_accuracy``, ``reward/segment_return_corr``,
``rollout/learned_ep_return`` and ``rollout/ep_rew_mean`` against ``time/total_timesteps``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.analysis.report import GroupRow, RunResult, load_run, plot_curves, summarize
from prefrl.rundir.progress import progress_files
from prefrl.rundir.rundir import find_finished_runs
from prefrl.util.atomic import atomic_write_text

#: Where ``prefrl video`` may have left videos, relative to a run directory.
VIDEO_PATTERNS = ("*.mp4", "videos/*.mp4")
#: Width of a video thumbnail on the page.
THUMB_WIDTH = 240

STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
p.note { color: #555; font-size: 0.92em; max-width: 60em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: right; vertical-align: top; }
th { background: #f4f4f4; }
td.l, th.l { text-align: left; }
tr.true td { background: #f7faff; }
img.plot { max-width: 100%; border: 1px solid #eee; }
.videos a { display: inline-block; margin: 0 0.6em 0.6em 0; text-decoration: none; color: #246; font-size: 0.85em; }
.videos img { display: block; border: 1px solid #ccc; }
code { font-size: 0.95em; }
"""


# --------------------------------------------------------------------------- data


def read_progress(run_dir: Path) -> dict[str, np.ndarray]:
    """Columns of a run's SB3 ``progress.csv`` as float arrays (NaN where a row has no
    value: SB3 leaves keys empty in rows where they were not logged). A resumed run's
    sessions are joined: each session's rows up to the step the next one resumed at
    (the later rows were logged after the checkpoint and redone by the next session)."""
    sessions = progress_files(run_dir)
    rows: list[dict[str, str]] = []
    for index, (_, path) in enumerate(sessions):
        with open(path, newline="") as fh:
            session_rows = list(csv.DictReader(fh))
        if index + 1 < len(sessions):
            resumed_at = sessions[index + 1][0]
            session_rows = [row for row in session_rows if _step(row) <= resumed_at]
        rows.extend(session_rows)
    columns: dict[str, list[float]] = defaultdict(list)
    keys = {k for row in rows for k in row if k}
    for row in rows:
        for key in keys:
            text = row.get(key) or ""
            try:
                columns[key].append(float(text))
            except ValueError:
                columns[key].append(math.nan)
    return {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}


def _step(row: dict[str, str]) -> float:
    """A progress row's env step (rows without one sort first: they are kept)."""
    try:
        return float(row.get("time/total_timesteps") or "-inf")
    except ValueError:
        return -math.inf


def series(progress: dict[str, np.ndarray], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(env steps, values)`` of one logged key, rows without a value dropped."""
    steps, values = progress.get("time/total_timesteps"), progress.get(key)
    if steps is None or values is None:
        return np.zeros(0), np.zeros(0)
    keep = np.isfinite(steps) & np.isfinite(values)
    return steps[keep], values[keep]


def run_label(run: RunResult) -> str:
    arm = "true reward" if run.arm == "true" else f"learned, {run.label_budget} labels"
    return f"{arm}, seed {run.seed}"


def find_videos(run_dir: Path) -> list[Path]:
    return sorted({p for pattern in VIDEO_PATTERNS for p in run_dir.glob(pattern)})


# --------------------------------------------------------------------------- plots


def _png(fig: Any) -> str:
    """A matplotlib figure as a base64 PNG (and close it)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: render to memory
    import matplotlib.pyplot as plt

    return plt


def learning_curves_png(runs: Sequence[RunResult]) -> str:
    """The comparison plot of :mod:`prefrl.analysis.report` (mean and spread over seeds per arm)."""
    plt = _pyplot()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "curves.png"
        plot_curves(runs, path)
        data = path.read_bytes()
    plt.close("all")
    return base64.b64encode(data).decode("ascii")


def per_run_lines_png(
    learned: Sequence[RunResult], progress: dict[Path, dict[str, np.ndarray]], keys: Sequence[tuple[str, str]]
) -> str | None:
    """One row of subplots per ``(key, y label)``, one column per task, one line per run.

    :return: base64 PNG, or ``None`` when no run logged any of the keys
    """
    tasks = sorted({r.task for r in learned})
    if not tasks or not any(series(progress[r.run_dir], k)[0].size for r in learned for k, _ in keys):
        return None
    plt = _pyplot()
    cols = min(3, len(tasks))
    task_rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(task_rows * len(keys), cols, figsize=(5.2 * cols, 3.2 * task_rows * len(keys)),
                             squeeze=False)
    for k, (key, ylabel) in enumerate(keys):
        for i, task in enumerate(tasks):
            ax = axes[(i // cols) * len(keys) + k, i % cols]
            for run in sorted((r for r in learned if r.task == task), key=lambda r: (r.label_budget, r.seed)):
                x, y = series(progress[run.run_dir], key)
                if x.size:
                    ax.plot(x, y, marker="." if x.size < 30 else None, label=run_label(run))
            ax.set_title(task)
            ax.set_xlabel("environment steps")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize="small")
    for row in range(axes.shape[0]):
        for col in range(cols):
            if (row // len(keys)) * cols + col >= len(tasks):  # the last row of tasks may be short
                axes[row, col].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def scatter_png(learned: Sequence[RunResult], progress: dict[Path, dict[str, np.ndarray]]) -> str | None:
    """Learned vs true training-episode return per learned run, coloured by env step.

    Both are means over SB3's recent episodes at each rollout end. A cloud that rises
    to the right means the learned reward tracks the task; learned return rising while
    the true return stalls is the sign of reward hacking.
    """
    panels = []
    for run in learned:
        p = progress[run.run_dir]
        steps, learned_ret, true_ret = (p.get("time/total_timesteps"), p.get("rollout/learned_ep_return"),
                                        p.get("rollout/ep_rew_mean"))
        if steps is None or learned_ret is None or true_ret is None:
            continue
        keep = np.isfinite(steps) & np.isfinite(learned_ret) & np.isfinite(true_ret)
        if keep.any():
            panels.append((run, steps[keep], learned_ret[keep], true_ret[keep]))
    if not panels:
        return None
    plt = _pyplot()
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (run, steps, x, y) in zip(axes.flat, panels):
        points = ax.scatter(x, y, c=steps, cmap="viridis", s=18)
        title = f"{run.task}\n{run_label(run)}"
        if len(np.unique(x)) >= 3 and np.std(y) > 0:  # r of two distinct points is always ±1: say nothing
            title += f" (r = {np.corrcoef(x, y)[0, 1]:.2f})"
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("learned episode return")
        ax.set_ylabel("true episode return")
        ax.grid(alpha=0.3)
        fig.colorbar(points, ax=ax, label="env steps")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _png(fig)


def video_thumbnail(path: Path) -> str | None:
    """The first frame of a video as a base64 PNG ``THUMB_WIDTH`` wide (``None`` if unreadable)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        ok, frame = capture.read()
    finally:
        capture.release()
    if not ok or frame is None:
        return None
    height = max(1, round(frame.shape[0] * THUMB_WIDTH / frame.shape[1]))
    thumb = cv2.resize(frame, (THUMB_WIDTH, height), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".png", thumb)
    return base64.b64encode(data.tobytes()).decode("ascii") if ok else None


# --------------------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(data: str | None, alt: str, missing: str) -> str:
    if data is None:
        return f'<p class="note">{_e(missing)}</p>'
    return f'<img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value: float | None, digits: int = 1) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:,.{digits}f}"


def group_table(rows: Sequence[GroupRow]) -> str:
    head = ("<tr><th class=l>task</th><th class=l>arm</th><th>seeds</th><th>env steps</th>"
            "<th>final true return (mean ± std)</th><th>learned / true</th><th>labels used</th><th>wall time (s)</th></tr>")
    body = []
    for r in rows:
        arm = "true reward" if r.arm == "true" else f"learned ({r.label_budget} labels)"
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
        body.append(
            f'<tr class="{_e(r.arm)}"><td class=l>{_e(r.task)}</td><td class=l>{_e(arm)}</td><td>{r.seeds}</td>'
            f"<td>{r.env_steps:,}</td><td>{_fmt(r.mean_return)} ± {_fmt(r.std_return)}</td><td>{ratio}</td>"
            f"<td>{r.labels_used:.0f}</td><td>{r.wall_seconds:.0f}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def runs_table(runs: Sequence[RunResult], progress: dict[Path, dict[str, np.ndarray]], page_dir: Path) -> str:
    head = ("<tr><th class=l>run</th><th class=l>task</th><th class=l>arm</th><th>seed</th><th>label budget</th>"
            "<th>labels used</th><th>env steps</th><th>final true return</th><th>reward val. accuracy</th>"
            "<th>wall time (s)</th><th class=l>videos</th></tr>")
    body = []
    for run in runs:
        _, accuracy = series(progress[run.run_dir], "reward/val_accuracy")
        videos = []
        for video in find_videos(run.run_dir):
            href = _e(Path(os.path.relpath(video.resolve(), page_dir.resolve())).as_posix())
            thumb = video_thumbnail(video)
            inner = (f'<img alt="first frame of {_e(video.name)}" width="{THUMB_WIDTH}" '
                     f'src="data:image/png;base64,{thumb}">' if thumb else "")
            videos.append(f'<a href="{href}">{inner}{_e(video.name)}</a>')
        body.append(
            f'<tr class="{_e(run.arm)}"><td class=l><code>{_e(run.run_dir.name)}</code></td><td class=l>{_e(run.task)}</td>'
            f"<td class=l>{_e(run.arm)}</td><td>{run.seed}</td><td>{run.label_budget or ''}</td>"
            f"<td>{run.labels_used if run.arm != 'true' else ''}</td><td>{run.env_steps:,}</td>"
            f"<td>{_fmt(run.final_true_return)}</td><td>{_fmt(accuracy[-1], 2) if accuracy.size else ''}</td>"
            f"<td>{run.wall_seconds:.0f}</td><td class=\"l videos\">{''.join(videos)}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def render_report(run_dirs: Sequence[Path], page_dir: Path, title: str = "Learned reward vs true reward") -> str:
    """The report page as an HTML string.

    :param run_dirs: run directories or folders holding them (as for ``prefrl compare``)
    :param page_dir: folder the page will be saved in (video links are relative to it)
    :param title: the page's heading
    """
    runs = sorted((load_run(d) for d in find_finished_runs(run_dirs)),
                  key=lambda r: (r.task, r.arm != "true", r.label_budget, r.seed))
    rows = summarize(runs)
    progress = {r.run_dir: read_progress(r.run_dir) for r in runs}
    learned = [r for r in runs if r.arm != "true"]
    tasks = sorted({r.task for r in runs})
    labels_png = per_run_lines_png(learned, progress, [("labels/used", "labels used")])
    accuracy_png = per_run_lines_png(learned, progress, [
        ("reward/val_accuracy", "validation accuracy"),
        ("reward/segment_return_corr", "corr(predicted, true) segment return"),
    ])
    scatter = scatter_png(learned, progress)
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    none_learned = "No learned-reward run among these runs."
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # An empty icon: without it the browser asks for /favicon.ico and logs a failure.
        '<link rel="icon" href="data:,">',
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="note">{len(runs)} runs on {len(tasks)} task(s): {_e(", ".join(tasks))}. '
        f"Written {stamp} by <code>prefrl report</code>. Every return is the true environment return of "
        "separate evaluation episodes under the task's real rules, never the learned reward.</p>",
        "<h2>Final true return</h2>",
        '<p class="note">Mean and standard deviation over seeds of the last evaluation. learned / true: ratio of '
        "the learned arm's mean to the true-reward arm's mean on the same task (1 = parity).</p>",
        group_table(rows),
        "<h2>Learning curves</h2>",
        '<p class="note">True evaluation return against environment steps; line: mean over seeds, band: ± one '
        "standard deviation.</p>",
        _img(learning_curves_png(runs), "learning curves of both arms", "no evaluations logged"),
        "<h2>Labels used over time</h2>",
        '<p class="note">Labels the reward model was trained on, at each PPO rollout end.</p>',
        _img(labels_png, "labels used over time", none_learned),
        "<h2>Reward model over time</h2>",
        '<p class="note">Top: accuracy of the ensemble on held-out labels. Bottom: correlation of its predicted '
        "segment returns with the true ones on recent segments (logged for inspection only; never used for "
        "training).</p>",
        _img(accuracy_png, "reward-model accuracy over time", none_learned),
        "<h2>Learned vs true return</h2>",
        '<p class="note">Each point: mean learned and mean true return of the recent training episodes at one '
        "rollout end, coloured by environment step. Learned return rising while the true return does not is "
        "the mark of reward hacking.</p>",
        _img(scatter, "learned vs true episode return per run", none_learned),
        "<h2>Runs</h2>",
        '<p class="note">Videos: first frame of each <code>prefrl video</code> recording, linked to the file.</p>',
        runs_table(runs, progress, page_dir),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(run_dirs: Sequence[Path], out: Path, title: str = "Learned reward vs true reward") -> Path:
    """Write the report page to ``out`` (atomically) and return its path.

    :param run_dirs: run directories or folders holding them
    :param out: the ``.html`` file
    :param title: the page's heading
    :raises PrefrlError: no finished run found, or a run directory is corrupt
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    page = render_report(run_dirs, out.parent, title)
    atomic_write_text(out, page)
    return out
