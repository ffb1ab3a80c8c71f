"""A non-editable install has every task: the presets in the repository's envs/ are
installed inside the package (``prefrl._presets``), and ``import prefrl`` registers them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(path.stem for path in (ROOT / "envs").glob("*.toml"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy of what the wheel needs, so setuptools' build/ folder stays out of
    # the checkout; no build isolation: the venv's setuptools builds it, nothing is downloaded.
    source = out / "source"
    for folder in ("prefrl", "envs"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / file, source / file)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(out), str(source)], check=True, cwd=out)
    (found,) = out.glob("prefrl-*.whl")
    return found


def test_the_wheel_holds_every_preset(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(Path(name).stem for name in names if name.startswith("prefrl/_presets/")) == PRESETS
    assert not any(name.startswith("envs/") for name in names)


def test_an_installed_copy_lists_and_makes_every_task(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
                    "--target", str(target), str(wheel)], check=True)
    # Run outside the checkout, with the installed copy first on the path: the repository's
    # envs/ cannot be what it finds.
    env = {**os.environ, "PYTHONPATH": str(target)}
    listed = subprocess.run([sys.executable, "-m", "prefrl.cli", "tasks"], capture_output=True, text=True,
                            cwd=tmp_path, env=env, check=True).stdout
    assert sorted(line.split()[0] for line in listed.splitlines() if line.strip()) == PRESETS
    code = ("import prefrl, gymnasium as gym; print(prefrl.__file__); "
            "env = gym.make('prefrl/Hopper'); print(env.reset(seed=0)[0].shape)")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                           check=True).stdout.splitlines()
    assert Path(shown[0]).is_relative_to(target)
    assert shown[1] == "(11,)"  # Hopper's observation
