"""CassandraSink against a real Cassandra 5 (one server per test session, tests/conftest.py).

The final table is compared with the oracle: for each primary key, the last row of the input in input
order, absent if that row is a delete (-U rows are not versions)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import sluice as sl
from sluice import testing
from sluice.connectors.api import SinkContext

pytestmark = pytest.mark.slow
KS = "sluice_test"
USER = {"username": "cassandra", "password": "cassandra"}


def connect(contact: str) -> Any:
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster

    host, port = contact.rsplit(":", 1)
    for attempt in range(60):  # the default superuser is made just after start-up
        cluster = Cluster([(host, int(port))], auth_provider=PlainTextAuthProvider("cassandra", "cassandra"))
        try:
            return cluster, cluster.connect()
        except Exception:
            cluster.shutdown()
            if attempt == 59:
                raise
            time.sleep(1)
    raise AssertionError


@pytest.fixture(scope="module")
def cql(cassandra_contact: str) -> Any:
    cluster, session = connect(cassandra_contact)
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {KS} WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    yield session
    cluster.shutdown()


def make_table(cql: Any, name: str, extra: str = "") -> None:
    cql.execute(f"DROP TABLE IF EXISTS {KS}.{name}")
    cql.execute(f"CREATE TABLE {KS}.{name} (g text, k int, v bigint, s text{extra}, PRIMARY KEY ((g), k))")


def table_rows(cql: Any, name: str) -> pl.DataFrame:
    rows = [tuple(r) for r in cql.execute(f"SELECT g, k, v, s FROM {KS}.{name}")]
    schema = {"g": pl.String, "k": pl.Int64, "v": pl.Int64, "s": pl.String}
    return pl.DataFrame(rows, schema=schema, orient="row").sort("g", "k")


def changes(n: int, keys: int = 300, seed: int = 1) -> pl.DataFrame:
    """A changelog: upserts of `keys` keys in 10 partitions, an update-before now and then, deletes."""
    import random

    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        k = rnd.randrange(keys)
        op = rnd.choices(["+I", "+U", "-U", "-D"], [4, 4, 1, 1])[0]
        rows.append({"g": f"g{k % 10}", "k": k, "v": i, "s": f"row-{i}", "op": op})
    return pl.DataFrame(rows)


def oracle(df: pl.DataFrame) -> pl.DataFrame:
    last = (df.filter(pl.col("op") != "-U").with_row_index("i").sort("i")
            .group_by("g", "k").agg(pl.all().last()))
    return last.filter(pl.col("op") != "-D").select("g", pl.col("k").cast(pl.Int64), "v", "s").sort("g", "k")


def sink(contact: str, table: str, **kw: Any) -> sl.CassandraSink:
    return sl.CassandraSink(contact, KS, table, **USER, **kw)


# --- the plain path --------------------------------------------------------------------------------
def test_changelog_upserts_and_deletes_with_a_ttl_equal_the_oracle(cassandra_contact: str, cql: Any, tmp_path: Path) -> None:
    make_table(cql, "plain")
    data = changes(5000)
    flow = sl.Flow("cass_plain")
    (flow.read("in", testing.rows(data)).select("g", "k", "v", "s", _op=pl.col("op")).changelog(["g", "k"])
         .write("out", sink(cassandra_contact, "plain", ttl=timedelta(days=1))))
    result = sl.run(flow, checkpoint_dir=str(tmp_path / "ck"), checkpoint_interval=0, batch_size=500)
    assert table_rows(cql, "plain").equals(oracle(data))
    ttl = cql.execute(f"SELECT TTL(v) FROM {KS}.plain LIMIT 1").one()[0]
    assert 86000 < ttl <= 86400
    metrics = result.stats["out"].metrics
    assert metrics["epochs_committed"] == 10 and metrics["deleted"] == data.filter(pl.col("op") == "-D").height
    # resumed at the end: nothing is written again
    again = sl.run(flow, checkpoint_dir=str(tmp_path / "ck"))
    assert (again.stats["out"].metrics["upserted"], again.stats["out"].metrics["deleted"]) == (0, 0)
    assert table_rows(cql, "plain").equals(oracle(data))


def test_without_checkpoints_rows_are_written_as_they_come(cassandra_contact: str, cql: Any) -> None:
    make_table(cql, "direct")
    data = changes(2000, seed=2).filter(pl.col("op") != "-D").drop("op")
    flow = sl.Flow("cass_direct")
    flow.read("in", testing.rows(data)).write("out", sink(cassandra_contact, "direct", batch="row"))
    sl.run(flow, batch_size=300)
    assert table_rows(cql, "direct").equals(oracle(data.with_columns(op=pl.lit("+U"))))


# --- kill -9 at each step of the commit ----------------------------------------------------------
JOB = """
import os, signal, sys
import polars as pl
import sluice as sl
from sluice.core import failpoints
from sluice.connectors import cassandra

inp, contact, table, ckpt, armed = sys.argv[1:6]
if armed == "mid_apply@4":  # half of the 4th epoch's rows are in the table, then the process dies
    real, calls = cassandra._Table.apply, []
    def apply(self, rows, ts0, changelog):
        calls.append(1)
        if len(calls) == 4:
            real(self, rows.head(rows.height // 2), ts0, changelog)
            os.kill(os.getpid(), signal.SIGKILL)
        real(self, rows, ts0, changelog)
    cassandra._Table.apply = apply
elif armed:
    failpoints.arm([armed])
flow = sl.Flow("cass_crash_" + table)
stream = flow.read("in", sl.JsonLinesSource(inp), schema={"g": str, "k": int, "v": int, "s": str, "op": str})
rows = stream.select("g", "k", "v", "s", _op=pl.col("op")).changelog(["g", "k"])
rows.write("out", sl.CassandraSink(contact, "sluice_test", table, username="cassandra", password="cassandra"))
stream.write("copy", sl.JsonLinesSink(ckpt + "-copy"))  # a second participant: kills between the sinks' commits
sl.run(flow, batch_size=100, checkpoint_dir=ckpt, checkpoint_interval=0)
"""


@pytest.mark.parametrize("place", ["after_prepare@5", "after_manifest@5", "after_sink_commit@5",
                                   "between_sink_commits@5", "during_restore", "mid_apply@4"])
def test_killed_during_the_commit_the_final_table_equals_the_oracle(
        cassandra_contact: str, cql: Any, tmp_path: Path, place: str) -> None:
    table = "crash_" + place.split("@")[0]
    make_table(cql, table)
    data = changes(2000, keys=150, seed=3)
    data.write_ndjson(tmp_path / "in.jsonl")
    script = tmp_path / "job.py"
    script.write_text(JOB)

    def run(armed: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(script), str(tmp_path / "in.jsonl"), cassandra_contact, table,
                               str(tmp_path / "ck"), armed], capture_output=True, text=True, timeout=300)

    if place == "during_restore":  # die once in the middle of an epoch, then again while restoring it
        first = run("after_manifest@5")
        assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    killed = run(place)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    if place.startswith("after_prepare"):  # staged, not recorded: none of the killed epoch is in the table
        assert table_rows(cql, table).equals(oracle(data.head(400)))
    resumed = run("")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert table_rows(cql, table).equals(oracle(data))
    assert not list((tmp_path / "ck" / "staging" / "out").glob("*.arrow")), "staged epochs left behind"


# --- the fence and the timestamps, one writer at a time ----------------------------------------
def _ctx(flow: str, staging: Path | None, task: int | None = None) -> SinkContext:
    return SinkContext("out", exactly_once=True, flow=flow, task=task, staging_dir=None if staging is None else str(staging))


def _rows(v: int, keys: range = range(20)) -> pl.DataFrame:
    return pl.DataFrame({"g": [f"g{k % 3}" for k in keys], "k": list(keys), "v": [v] * len(keys),
                         "s": [f"v{v}"] * len(keys)})


def test_a_recommitted_epoch_is_skipped_by_the_fence(cassandra_contact: str, cql: Any, tmp_path: Path) -> None:
    make_table(cql, "fence_skip")
    w = sink(cassandra_contact, "fence_skip").open(_ctx("fence_skip", tmp_path))
    w.recover(None)
    w.write(_rows(1))
    txn = w.prepare(1)
    staged = Path(txn["staged"]).read_bytes()
    w.commit(txn)
    # a crash after the rows and the fence, before the staged file was deleted: recovery commits it again
    Path(txn["staged"]).write_bytes(staged)
    w.commit(txn)
    w.recover(txn)
    assert w.metrics()["epochs_committed"] == 1 and w.metrics()["epochs_skipped"] == 2
    assert w.metrics()["upserted"] == 20, "a committed epoch was written again"
    w.close()


def test_a_zombie_cannot_overwrite_a_newer_epoch_and_is_told_it_is_stale(
        cassandra_contact: str, cql: Any) -> None:
    """Two owners of one Kafka-runtime task (task 0, no staging directory: epochs staged in Cassandra).
    The old owner (a zombie) passes the fence check for epoch 2 just before the new owner commits epochs 2
    and 3; its late writes of epoch 2 must lose to epoch 3, and its marker must be refused."""
    make_table(cql, "zombie")
    spec = sink(cassandra_contact, "zombie")
    old = spec.open(_ctx("zombie", None, task=0))
    old.recover(None)
    old.write(_rows(1))
    old.commit(old.prepare(1))
    old.write(_rows(2))
    txn2 = old.prepare(2)  # recorded by the runtime; the old owner stalls before committing it
    # the old owner reads the fence and its staged rows: epoch 2 is not committed yet, so it goes ahead ...
    stale_fence, staged = old.db.read_fence(old.writer), old.stage.get(txn2)

    new = spec.open(_ctx("zombie", None, task=0))
    new.recover(txn2)  # the task moved: the new owner commits the recorded epoch 2 ...
    new.write(_rows(3))
    new.commit(new.prepare(3))  # ... and goes on to epoch 3
    assert set(table_rows(cql, "zombie")["v"]) == {3}

    # ... and only now, after the new owner's epoch 3, do its writes of epoch 2 arrive
    old.db.read_fence = lambda writer: stale_fence  # type: ignore[method-assign]
    old.stage.get = lambda txn: staged  # type: ignore[method-assign,union-attr]
    with pytest.raises(sl.CassandraError, match=r"fenced.*epoch 3.*stale"):
        old.commit(txn2)
    assert set(table_rows(cql, "zombie")["v"]) == {3}, "the zombie's late epoch overwrote a newer one"
    assert not list(cql.execute(f"SELECT stage FROM {KS}.sluice_staging WHERE writer = 'zombie-out-t0'"))
    old.close()
    new.close()


def test_a_new_checkpoint_directory_is_a_new_lineage(cassandra_contact: str, cql: Any, tmp_path: Path) -> None:
    make_table(cql, "lineage")
    flow = sl.Flow("cass_lineage")
    flow.read("in", testing.rows(_rows(1))).write("out", sink(cassandra_contact, "lineage"))
    sl.run(flow, checkpoint_dir=str(tmp_path / "a"), checkpoint_interval=0, batch_size=5)
    flow2 = sl.Flow("cass_lineage")
    flow2.read("in", testing.rows(_rows(2))).write("out", sink(cassandra_contact, "lineage"))
    result = sl.run(flow2, checkpoint_dir=str(tmp_path / "b"), checkpoint_interval=0, batch_size=5)
    assert result.stats["out"].metrics["epochs_skipped"] == 0
    assert set(table_rows(cql, "lineage")["v"]) == {2}


# --- bad input, credentials, counters ------------------------------------------------------------
def test_a_row_the_table_rejects_names_the_step_the_row_and_the_fix(cassandra_contact: str, cql: Any) -> None:
    make_table(cql, "bad", ", small int")
    rows = [{"g": "a", "k": 1, "v": 1, "s": "x", "small": 1},
            {"g": "a", "k": 2, "v": 2, "s": "y", "small": 3_000_000_000}]
    flow = sl.Flow("cass_bad")
    flow.read("in", testing.rows(rows)).write("cass", sink(cassandra_contact, "bad"))
    with pytest.raises(sl.EncodeError) as info:
        sl.run(flow)
    message = str(info.value)
    assert "'cass'" in message and "row 1 written to sluice_test.bad" in message
    assert "'small' is out of the range of int" in message and "3000000000" in message
    assert "Fix: correct such rows upstream" in message and "dead_letters=" in message


def test_null_keys_go_to_the_dead_letter_sink(cassandra_contact: str, cql: Any, tmp_path: Path) -> None:
    make_table(cql, "dead")
    rows = [{"g": "a", "k": i, "v": i, "s": "x"} for i in range(10)]
    rows[3]["k"] = None
    rows[7]["g"] = ""
    flow = sl.Flow("cass_dead")
    flow.read("in", testing.rows(rows)).write(
        "out", sink(cassandra_contact, "dead", dead_letters=sl.JsonLinesSink(str(tmp_path / "rejected.jsonl"))))
    result = sl.run(flow, checkpoint_dir=str(tmp_path / "ck"), checkpoint_interval=0, batch_size=4)
    assert table_rows(cql, "dead")["k"].to_list() == [0, 1, 2, 4, 5, 6, 8, 9]
    letters = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert [(d["step"], d["position"]) for d in letters] == [
        ("out", "row 3 written to sluice_test.dead"), ("out", "row 7 written to sluice_test.dead")]
    assert "'k' (part of the primary key) is null" in letters[0]["reason"]
    assert "partition key) is empty" in letters[1]["reason"] and json.loads(letters[1]["raw"])["k"] == 7
    assert result.stats["out"].metrics["dead_lettered"] == 2


def test_a_wrong_password_is_a_clear_error_that_does_not_show_it(cassandra_contact: str, cql: Any) -> None:
    make_table(cql, "auth")
    flow = sl.Flow("cass_auth")
    spec = sl.CassandraSink(cassandra_contact, KS, "auth", username="cassandra", password="Wr0ng-s3cret")
    flow.read("in", testing.rows(_rows(1))).write("out", spec)
    with pytest.raises(sl.CassandraError, match=r"cannot connect to Cassandra at 127\.0\.0\.1") as info:
        sl.run(flow)
    assert "Wr0ng-s3cret" not in str(info.value) and "Wr0ng-s3cret" not in repr(spec)
    assert "Wr0ng-s3cret" not in json.dumps(flow.plan().to_dict(), default=str)
    missing = sl.Flow("cass_missing")
    missing.read("in", testing.rows(_rows(1))).write("out", sink(cassandra_contact, "no_such_table"))
    with pytest.raises(sl.CassandraError, match=r"table sluice_test.no_such_table does not exist.*create it first"):
        sl.run(missing)


def test_counter_tables_are_refused(cassandra_contact: str, cql: Any) -> None:
    cql.execute(f"CREATE TABLE IF NOT EXISTS {KS}.counts (k int PRIMARY KEY, n counter)")
    flow = sl.Flow("cass_counter")
    flow.read("in", testing.rows([{"k": 1, "n": 1}])).write("out", sink(cassandra_contact, "counts"))
    with pytest.raises(sl.PlanError, match=r"counter columns.*counts twice"):
        sl.run(flow)


# --- the server restarts mid-run (last: it restarts the session's server) -------------------------
SLOW_JOB = """
import sys, time
import polars as pl
import sluice as sl

inp, contact, ckpt, retry = sys.argv[1:5]
def slow(row):
    time.sleep(0.002)
    return row
flow = sl.Flow("cass_restart")
(flow.read("in", sl.JsonLinesSource(inp), schema={"g": str, "k": int, "v": int, "s": str, "op": str})
     .map(slow).select("g", "k", "v", "s", _op=pl.col("op")).changelog(["g", "k"])
     .write("out", sl.CassandraSink(contact, "sluice_test", "restart", username="cassandra", password="cassandra",
                                    retry_timeout=sl_timedelta(float(retry)))))
sl.run(flow, batch_size=100, checkpoint_dir=ckpt, checkpoint_interval=0)
""".replace("sl_timedelta(", "__import__('datetime').timedelta(seconds=")


def test_a_server_restart_mid_run_stops_with_a_clear_error_and_a_rerun_finishes(
        cassandra_server: dict, cql: Any, tmp_path: Path) -> None:
    contact, script, directory = cassandra_server["contact"], cassandra_server["script"], cassandra_server["dir"]
    make_table(cql, "restart")
    data = changes(4000, keys=200, seed=4)
    data.write_ndjson(tmp_path / "in.jsonl")
    (tmp_path / "job.py").write_text(SLOW_JOB)
    args = [sys.executable, str(tmp_path / "job.py"), str(tmp_path / "in.jsonl"), contact, str(tmp_path / "ck")]
    job = subprocess.Popen([*args, "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # wait until a few epochs are in
            fence = cql.execute(f"SELECT epoch FROM {KS}.sluice_commits WHERE writer = 'cass_restart-out'").one()
            if fence is not None and fence.epoch >= 3:
                break
            assert job.poll() is None, job.communicate()[1][-3000:]
            time.sleep(0.1)
        subprocess.run(["bash", str(script), "down", str(directory)], check=True, timeout=120)
        _, err = job.communicate(timeout=180)
        assert job.returncode == 1, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert "CassandraError: write step 'out': Cassandra at" in last and "did not take" in last, last
        assert "run again with the same checkpoint directory" in last
    finally:
        if job.poll() is None:
            job.kill()
        r = subprocess.run(["bash", str(script), "start", str(directory)], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
    rerun = subprocess.run([*args, "60"], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    cluster, session = connect(contact)
    try:
        assert table_rows(session, "restart").equals(oracle(data))
    finally:
        cluster.shutdown()
