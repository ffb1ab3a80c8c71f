"""No label lost: the short version of ``scripts/kill_test.py``. A human-teacher run with
two scripted labellers (real viewers in their own processes) is killed with SIGKILL
three times: the trainer, a viewer, both. Every label the labellers logged as committed
is in the store afterwards, the store passes ``PRAGMA integrity_check``, each killed
trainer resumes (rerun with the same command) and the run finishes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("kill_test", ROOT / "scripts" / "kill_test.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kill_test"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_kill_trainer_viewer_and_both_loses_no_label(tmp_path: Path) -> None:
    kill_test = _load_script()
    settings = kill_test.Settings(task="pendulum", kills=3, seed=3, steps=4096, budget=80, viewers=2,
                                  checkpoint_every="2s", plan=("trainer", "viewer", "both"), timeout=240)
    result = kill_test.run_kill_test(settings, tmp_path / "kill", log=lambda line: None)
    report = result.figure()
    assert result.kills == {"trainer": 1, "viewer": 1, "both": 1}, report
    assert result.committed > 0 and result.found == result.committed, report
    assert not result.missing and not result.wrong_choice, report
    assert result.labels_in_store >= result.committed, report
    assert result.integrity_checks >= 4 and result.integrity_ok == result.integrity_checks, report
    assert result.resume_attempts == 2 and result.resumes_ok == 2 and not result.resume_failures, report
    assert result.finished and result.summary["env_steps"] == 4096 and result.summary["labels_used"] > 0, report
    assert not result.errors and result.passed, report
    saved = json.loads((tmp_path / "kill" / "kill_test.json").read_text())
    assert saved["passed"] and saved["found"] == saved["committed"] == result.committed
