"""Every Python example in the README and the design notes runs, as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KAFKA_DOC = ROOT / "docs" / "kafka.md"  # its blocks talk to the real broker and registry: run once, in order
REDIS_DOC = ROOT / "docs" / "redis.md"  # its blocks talk to the test session's Redis server (REDIS)
POSTGRES_DOC = ROOT / "docs" / "postgres.md"  # its blocks talk to a real PostgreSQL (DSN): run once, in order
CASSANDRA_DOC = ROOT / "docs" / "cassandra.md"  # the same, against a real Cassandra
SERVER_DOCS = (KAFKA_DOC, REDIS_DOC, POSTGRES_DOC, CASSANDRA_DOC)
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if p not in SERVER_DOCS)]


def blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


CASES = [(p, i, code) for p in DOCS for i, code in enumerate(blocks(p))]


def test_docs_have_examples() -> None:
    assert len(CASES) >= 3


@pytest.mark.parametrize(("path", "index", "code"), CASES, ids=[f"{p.name}#{i}" for p, i, _ in CASES])
def test_example_runs(path: Path, index: int, code: str, tmp_path: Path) -> None:
    namespace: dict[str, object] = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        # blocks of one page share a namespace, as a reader would run them one after another
        for earlier in blocks(path)[:index]:
            exec(compile(earlier, f"{path.name}#earlier", "exec"), namespace)
        exec(compile(code, f"{path.name}#{index}", "exec"), namespace)
    finally:
        os.chdir(cwd)


def test_kafka_page_runs_against_the_real_broker(kafka_bootstrap: str, registry_url: str, tmp_path: Path) -> None:
    code = blocks(KAFKA_DOC)
    assert len(code) >= 3
    namespace: dict[str, object] = {"BOOTSTRAP": kafka_bootstrap, "REGISTRY": registry_url}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for i, block in enumerate(code):
            exec(compile(block, f"kafka.md#{i}", "exec"), namespace)
    finally:
        os.chdir(cwd)
    result = namespace["result"]
    assert result.records == 20_000 and result.commits >= 1  # type: ignore[attr-defined]


def run_page(path: Path, namespace: dict[str, object], tmp_path: Path) -> None:
    """Every block of a page that talks to a server, in order, in one namespace."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for i, block in enumerate(blocks(path)):
            exec(compile(block, f"{path.name}#{i}", "exec"), namespace)
    finally:
        os.chdir(cwd)


def test_redis_page_runs_against_the_real_server(redis_url: str, tmp_path: Path) -> None:
    import redis

    assert blocks(REDIS_DOC)
    redis.Redis.from_url(redis_url).flushdb()
    run_page(REDIS_DOC, {"REDIS": redis_url}, tmp_path)


@pytest.mark.slow
def test_postgres_page_runs_against_the_real_server(postgres_dsn: str, tmp_path: Path) -> None:
    from pg_util import fresh_database

    assert len(blocks(POSTGRES_DOC)) >= 4
    run_page(POSTGRES_DOC, {"DSN": fresh_database(postgres_dsn)}, tmp_path)


@pytest.mark.slow
def test_cassandra_page_runs_against_a_real_cassandra(cassandra_contact: str, tmp_path: Path) -> None:
    assert len(blocks(CASSANDRA_DOC)) >= 3
    run_page(CASSANDRA_DOC, {"CONTACT": cassandra_contact}, tmp_path)
    assert '"position":"row 1 written to shop.carts"' in (tmp_path / "rejected.jsonl").read_text()
