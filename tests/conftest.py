from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


# Fixtures that start a broker: a test using one is slow (`make test-fast` skips it) wherever it lives.
BROKER_FIXTURES = {"kafka_broker", "kafka_bootstrap", "kafka_sasl_ssl", "registry_url", "cassandra_server",
                   "cassandra_contact"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """A real Redis server on a free loopback port, for this test session only.
    `make test` installs redis-server (scripts/install-services.sh); without it this fails, not skips."""
    import shutil
    import socket
    import time

    server = shutil.which("redis-server")
    assert server, "redis-server is not installed: run `make services` (scripts/install-services.sh)"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(workdir), "--requirepass", "s3cret-pass"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://:s3cret-pass@127.0.0.1:{port}/0"
    import redis

    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory):
    """A real Apache Kafka broker (KRaft, jars from Maven Central) on free loopback ports, for this session:
    a PLAINTEXT listener and a SASL/PLAIN-over-TLS one (self-signed certificate, random password)."""
    directory = tmp_path_factory.mktemp("kafka")
    script = ROOT / "scripts" / "kafka.sh"
    r = subprocess.run(["bash", str(script), "up", str(directory)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    bootstrap = r.stdout.strip().splitlines()[-1].removeprefix("bootstrap=")
    yield {"bootstrap": bootstrap, "dir": directory}
    subprocess.run(["bash", str(script), "down", str(directory)], timeout=120)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: dict) -> str:
    return str(kafka_broker["bootstrap"])


@pytest.fixture(scope="session")
def kafka_sasl_ssl(kafka_broker: dict) -> tuple[str, dict[str, str]]:
    """(bootstrap, client settings) of the broker's SASL_SSL listener."""
    d = kafka_broker["dir"]
    config = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "sluice",
              "sasl.password": (d / "sasl_password").read_text().strip(), "ssl.ca.location": str(d / "tls" / "ca.pem")}
    return (d / "sasl_ssl").read_text().strip(), config


@pytest.fixture(scope="session")
def registry_url(tmp_path_factory: pytest.TempPathFactory):
    """A real Apicurio Registry (Maven Central), its Confluent-compatible API, for this session."""
    directory = tmp_path_factory.mktemp("registry")
    script = ROOT / "scripts" / "registry.sh"
    r = subprocess.run(["bash", str(script), "up", str(directory)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    yield r.stdout.strip().splitlines()[-1].removeprefix("registry=")
    subprocess.run(["bash", str(script), "down", str(directory)], timeout=60)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory):
    """A throwaway PostgreSQL cluster (Debian's package: initdb + pg_ctl, scripts/postgres.sh) on a free
    loopback port, with a password, for this session: {"dsn", "dir"}. Tests that use it are slow."""
    directory = tmp_path_factory.mktemp("postgres")
    script = ROOT / "scripts" / "postgres.sh"
    r = subprocess.run(["bash", str(script), "up", str(directory)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    yield {"dsn": r.stdout.strip().splitlines()[-1].removeprefix("dsn="), "dir": directory}
    subprocess.run(["bash", str(script), "down", str(directory)], timeout=60)


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: dict) -> str:
    return str(postgres_server["dsn"])


@pytest.fixture(scope="session")
def cassandra_server(tmp_path_factory: pytest.TempPathFactory):
    """A real Apache Cassandra 5 (cassandra-all jars from Maven Central, our cassandra.yaml) on free loopback
    ports, for this session: one server (its start takes 20–30 s here), user cassandra/cassandra."""
    directory = tmp_path_factory.mktemp("cassandra")
    script = ROOT / "scripts" / "cassandra.sh"
    r = subprocess.run(["bash", str(script), "up", str(directory)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    yield {"contact": r.stdout.strip().splitlines()[-1].removeprefix("contact="), "dir": directory, "script": script}
    subprocess.run(["bash", str(script), "down", str(directory)], timeout=120)


@pytest.fixture(scope="session")
def cassandra_contact(cassandra_server: dict) -> str:
    return str(cassandra_server["contact"])
