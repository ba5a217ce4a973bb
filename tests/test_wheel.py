"""Sluice installed as a wheel, outside the repository: `sluice demo` has everything it needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def _uv() -> list[str]:
    """uv, as `make setup` installs it (on PATH, or as the module of the Python that runs make)."""
    if found := shutil.which("uv"):
        return [found]
    for python in ("python3", "python"):
        if (path := shutil.which(python)) and subprocess.run([path, "-m", "uv", "--version"], capture_output=True).returncode == 0:
            return [path, "-m", "uv"]
    raise AssertionError("uv is not installed: run `make setup`")


def test_demo_runs_from_an_installed_wheel(tmp_path: Path) -> None:
    uv = _uv()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    dist, venv, elsewhere = tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([*uv, "build", "--wheel", "-q", "-o", str(dist), str(ROOT)], check=True, env=env, timeout=300)
    (wheel,) = dist.glob("sluice-*.whl")
    subprocess.run([*uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env, timeout=120)
    # the dependencies come from uv's cache (filled by `make setup`) or the package index
    subprocess.run([*uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(wheel)], check=True,
                   env=env, timeout=600)
    r = subprocess.run([str(venv / "bin" / "sluice"), "demo", "--events", "20000", "--dir", str(elsewhere / "demo")],
                       cwd=elsewhere, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4. fraud job over" in r.stdout and "small-then-large alerts" in r.stdout
    assert (elsewhere / "demo" / "fraud" / "alerts.jsonl").exists()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import sluice; print(sluice.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, env=env, check=True).stdout
    assert where.startswith(str(venv)), where  # the wheel's copy ran, not the repository's src/
