from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def generate(kind: str, n: int, path: Path, **opts: int) -> Path:
    args = [sys.executable, str(ROOT / "bench" / "gen_events.py"), kind, "--n", str(n), "--out", str(path)]
    for k, v in opts.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    subprocess.run(args, check=True)
    return path


@pytest.fixture(scope="session")
def events_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,500 events over 10 minutes: small enough for batch size 1."""
    return generate("events", 1500, tmp_path_factory.mktemp("ev") / "small.jsonl", users=40, span_s=600)


@pytest.fixture(scope="session")
def events_medium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60,000 events over 30 minutes."""
    return generate("events", 60_000, tmp_path_factory.mktemp("ev") / "medium.jsonl", users=300, span_s=1800)
