"""PostgresSink and PostgresLookup against a real PostgreSQL (a throwaway cluster per session): the modes,
merge expressions applied row by row as written, changelog deletes, rows the table refuses, the commit
protocol's idempotence and zombie fencing, and secrets kept out of messages."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

import sluice as sl
from pg_util import execute, fresh_database, query, table
from sluice import testing
from sluice.connectors.api import SinkContext

pytestmark = pytest.mark.slow  # needs the PostgreSQL server


@pytest.fixture
def dsn(postgres_dsn: str) -> str:
    return fresh_database(postgres_dsn)


def run(flow: sl.Flow, tmp_path, batch_size: int = 50, **kw) -> sl.RunResult:
    return sl.run(flow, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0, batch_size=batch_size, **kw)


def test_append_creates_the_table_and_keeps_types_nulls_and_empty_strings(dsn: str, tmp_path) -> None:
    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    rows = pl.DataFrame({"id": [1, 2, 3], "name": ["a", "", None], "score": [1.5, None, float("inf")],
                         "ok": [True, None, False], "day": [date(2024, 5, 1)] * 3, "at": [t0, t0, None],
                         "note": ['x,"y"\nz', "ü", "\\N"]})
    flow = sl.Flow("app")
    flow.read("in", testing.rows(rows)).write("db", sl.PostgresSink("events", dsn, create=True))
    run(flow, tmp_path, batch_size=2)
    got = query(dsn, "SELECT id, name, score, ok, day, at, note FROM events ORDER BY id")
    assert got[0][1:] == ("a", 1.5, True, date(2024, 5, 1), t0, 'x,"y"\nz')
    assert got[1][1] == "" and got[1][2] is None and got[1][3] is None and got[1][6] == "ü"
    assert got[2][1] is None and got[2][2] == float("inf") and got[2][5] is None and got[2][6] == "\\N"
    types = dict(query(dsn, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'events'"))
    assert types["id"] == "bigint" and types["at"] == "timestamp with time zone" and types["ok"] == "boolean"
    assert query(dsn, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'sluice_stage%'") == [(0,)]


def test_upsert_keeps_each_keys_last_row_whatever_the_batch_size(dsn: str, tmp_path) -> None:
    execute(dsn, "CREATE TABLE users (id int PRIMARY KEY, name text, visits int)")
    rows = [{"id": i % 13, "name": f"n{i}", "visits": i} for i in range(120)]
    want = pl.DataFrame(rows).unique("id", keep="last").sort("id")
    for bs in (1, 7, 1000):
        execute(dsn, "TRUNCATE users")
        flow = sl.Flow(f"ups{bs}")
        flow.read("in", testing.rows(rows)).write("db", sl.PostgresSink("users", dsn, key="id", stage_rows=25))
        run(flow, tmp_path / str(bs), batch_size=bs)
        got = table(dsn, "users", "id")
        assert got.equals(want.cast(got.schema)), f"batch size {bs}"


def accumulate(rows: list[dict]) -> dict[str, tuple]:
    """The oracle of the summary below: one statement per row, in order."""
    out: dict[str, tuple] = {}
    for r in rows:
        c = r["customer"]
        if c not in out:
            out[c] = (1, r["amount"], r["day"], r["version"])
        else:
            n, total, last, v = out[c]
            if v < r["version"]:
                out[c] = (n + 1, total + r["amount"], max(last, r["day"]), r["version"])
    return out


def test_merge_expressions_accumulate_as_written_and_where_updates_only_newer(dsn: str, tmp_path) -> None:
    execute(dsn, "CREATE TABLE summary (customer text PRIMARY KEY, total_orders int NOT NULL, "
                 "total_amount numeric NOT NULL, last_order_date date, version int)")
    import random

    rng = random.Random(7)
    rows = [{"customer": f"c{rng.randrange(9)}", "amount": rng.randrange(1, 100), "day": date(2024, 1, 1 + rng.randrange(28)),
             "version": rng.randrange(1000)} for _ in range(2000)]  # versions out of order: many updates refused
    flow = sl.Flow("acc")
    (flow.read("in", testing.rows(rows)).select(sl.col("customer"), sl.lit(1).alias("total_orders"),
                                                sl.col("amount").alias("total_amount"),
                                                sl.col("day").alias("last_order_date"), sl.col("version"))
         .write("db", sl.PostgresSink("summary", dsn, key="customer", where="t.version < excluded.version", stage_rows=100, merge={
             "total_orders": "t.total_orders + 1",
             "total_amount": "t.total_amount + excluded.total_amount",
             "last_order_date": "GREATEST(t.last_order_date, excluded.last_order_date)"})))
    run(flow, tmp_path, batch_size=333)
    got = {r[0]: (r[1], int(r[2]), r[3], r[4]) for r in query(dsn, "SELECT * FROM summary")}
    assert got == accumulate(rows)
    execute(dsn, "TRUNCATE summary")
    sl.run(flow, batch_size=77)  # one epoch (no checkpoints) of many staged chunks
    assert {r[0]: (r[1], int(r[2]), r[3], r[4]) for r in query(dsn, "SELECT * FROM summary")} == accumulate(rows)


def test_a_changelog_is_applied_as_upserts_and_deletes(dsn: str, tmp_path) -> None:
    execute(dsn, "CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance int)")
    import random

    rng = random.Random(3)
    events, live = [], {}
    for i in range(3000):
        k = rng.randrange(40)
        if k in live and rng.random() < 0.3:
            events.append({"id": k, "owner": None, "balance": None, "op": "d"})
            del live[k]
        else:
            if k in live:
                events.append({"id": k, "owner": live[k][0], "balance": live[k][1], "op": "before"})
            live[k] = (f"o{i}", i)
            events.append({"id": k, "owner": live[k][0], "balance": i, "op": "u" if k in live else "c"})
    flow = sl.Flow("cdc")
    ops = {"c": "+I", "u": "+U", "d": "-D", "before": "-U"}
    (flow.read("in", testing.rows(events))
         .changelog(key="id", op=sl.col("op").replace_strict(ops, return_dtype=pl.String))
         .write("db", sl.PostgresSink("accounts", dsn, columns=["id", "owner", "balance"], stage_rows=150)))  # by its key
    run(flow, tmp_path, batch_size=97)
    got = sorted(query(dsn, "SELECT id, owner, balance FROM accounts"))
    assert got == sorted((k, o, b) for k, (o, b) in live.items()) and len(got) > 10
    execute(dsn, "TRUNCATE accounts")
    sl.run(flow, batch_size=97)  # one epoch (no checkpoints) of many staged chunks
    got = sorted(query(dsn, "SELECT id, owner, balance FROM accounts"))
    assert got == sorted((k, o, b) for k, (o, b) in live.items()) and len(got) > 10


def test_a_row_the_table_refuses_names_step_row_and_constraint(dsn: str, tmp_path) -> None:
    execute(dsn, "CREATE TABLE orders (id int PRIMARY KEY, amount int CONSTRAINT positive_amount CHECK (amount > 0))")
    rows = [{"id": i, "amount": -5 if i == 137 else i + 1} for i in range(300)]
    flow = sl.Flow("bad")
    flow.read("in", testing.rows(rows)).write("orders_out", sl.PostgresSink("orders", dsn, key="id"))
    with pytest.raises(sl.ConstraintError) as err:
        run(flow, tmp_path, batch_size=1000)
    msg = str(err.value)
    assert "'orders_out'" in msg and '"id": 137' in msg and '"amount": -5' in msg and "positive_amount" in msg
    assert err.value.constraint == "positive_amount"
    assert query(dsn, "SELECT count(*) FROM orders") == [(0,)]  # nothing of the epoch is visible


def test_with_dead_letters_refused_rows_go_there_and_the_rest_commits(dsn: str, tmp_path) -> None:
    execute(dsn, "CREATE TABLE orders (id int PRIMARY KEY, amount smallint NOT NULL CHECK (amount > 0))")
    bad = {17: -1, 140: None, 233: 70000}  # a check, a NOT NULL, a value too large for smallint (refused by COPY)
    rows = [{"id": i, "amount": bad.get(i, i + 1)} for i in range(300)]
    flow = sl.Flow("dl")
    flow.read("in", testing.rows(rows)).write("orders_out", sl.PostgresSink("orders", dsn, key="id",
                                                                            dead_letters="orders_rejected"))
    result = run(flow, tmp_path, batch_size=100)
    assert query(dsn, "SELECT count(*), sum(amount) FROM orders") == [(297, sum(i + 1 for i in range(300) if i not in bad))]
    dead = query(dsn, "SELECT step, position, reason, raw FROM orders_rejected ORDER BY raw")
    assert len(dead) == 3 and all(d[0] == "orders_out" for d in dead)
    reasons = " | ".join(d[2] for d in dead)
    assert "orders_amount_check" in reasons and "not-null" in reasons and "out of range" in reasons
    assert any('"id": 17' in d[3] or '"id":17' in d[3] for d in dead)
    assert result.stats["orders_out"].metrics["dead_lettered"] == 3


def ctx(step: str = "s", task: int | None = None) -> SinkContext:
    return SinkContext(step, exactly_once=True, flow="unit", task=task)


def test_commit_is_idempotent_and_recovery_drops_later_staging(dsn: str) -> None:
    execute(dsn, "CREATE TABLE c (k text PRIMARY KEY, n int)")
    spec = sl.PostgresSink("c", dsn, key="k", merge={"n": "t.n + excluded.n"})
    w = spec.open(ctx())
    w.recover(None)
    w.write(pl.DataFrame({"k": ["a", "b", "a"], "n": [1, 1, 1]}))
    t1 = w.prepare(1)
    w.commit(t1)
    w.commit(t1)  # again, as recovery does
    assert sorted(query(dsn, "SELECT * FROM c")) == [("a", 2), ("b", 1)]
    w.write(pl.DataFrame({"k": ["a"], "n": [10]}))
    w.prepare(2)  # staged, never recorded: the crash came before the manifest
    w.close()
    again = spec.open(ctx())
    again.recover(t1)  # the recorded epoch: committed already, nothing twice; epoch 2's staging dropped
    assert sorted(query(dsn, "SELECT * FROM c")) == [("a", 2), ("b", 1)]
    assert query(dsn, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'sluice_stage%'") == [(0,)]
    again.close()


def test_a_recorded_epoch_whose_staging_is_gone_is_an_error_not_a_silent_loss(dsn: str) -> None:
    execute(dsn, "CREATE TABLE c (k text PRIMARY KEY, n int)")
    w = sl.PostgresSink("c", dsn, key="k").open(ctx())
    w.recover(None)
    w.write(pl.DataFrame({"k": ["a"], "n": [1]}))
    txn = w.prepare(1)
    execute(dsn, f"DROP TABLE {txn['stage']}")
    with pytest.raises(sl.DatabaseError, match=r"staged rows of epoch 1 .* are gone"):
        w.commit(txn)
    w.close()


def test_two_owners_of_one_task_commit_an_epoch_once(dsn: str) -> None:
    """A zombie and its successor commit the same recorded epoch at once: the marker's row lock lets one."""
    execute(dsn, "CREATE TABLE c (k text PRIMARY KEY, n int)")
    spec = sl.PostgresSink("c", dsn, key="k", merge={"n": "t.n + excluded.n"})
    first = spec.open(ctx(task=3))
    first.recover(None)
    first.write(pl.DataFrame({"k": [f"k{i % 50}" for i in range(20_000)], "n": [1] * 20_000}))
    txn = first.prepare(5)
    writers = [spec.open(ctx(task=3)) for _ in range(4)]
    errors: list[BaseException] = []

    def commit(w) -> None:
        try:
            w.commit(txn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=commit, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert query(dsn, "SELECT count(*), sum(n) FROM c") == [(50, 20_000)]
    assert query(dsn, "SELECT epoch FROM sluice_commits WHERE writer = 'unit-s-t3'") == [(5,)]
    for w in [first, *writers]:
        w.close()


def test_a_new_job_starts_its_epochs_again(dsn: str, tmp_path) -> None:
    """A new checkpoint directory is a new lineage: its epoch 1 is not taken for the old job's."""
    execute(dsn, "CREATE TABLE c (k int PRIMARY KEY, n int)")
    for i in range(2):
        flow = sl.Flow("again")
        flow.read("in", testing.rows({"k": [1, 2, 3], "n": [1, 1, 1]})).write(
            "db", sl.PostgresSink("c", dsn, key="k", merge={"n": "t.n + excluded.n"}))
        run(flow, tmp_path / f"run{i}")
    assert sorted(query(dsn, "SELECT * FROM c")) == [(1, 2), (2, 2), (3, 2)]


def test_plan_errors_say_the_fix_and_never_the_password(postgres_dsn: str, dsn: str, tmp_path) -> None:
    password = postgres_dsn.split(":")[2].split("@")[0]
    execute(dsn, "CREATE TABLE nokey (k int, v int)")
    for sink, words in [(sl.PostgresSink("nokey", dsn, key="k"), "CREATE UNIQUE INDEX"),
                        (sl.PostgresSink("missing", dsn), "create=True"),
                        (sl.PostgresSink("nokey", dsn, mode="upsert"), "needs key=")]:
        flow = sl.Flow("p")
        flow.read("in", testing.rows({"k": [1], "v": [2]})).write("db", sink)
        with pytest.raises(sl.PlanError) as err:
            run(flow, tmp_path)
        assert words in str(err.value) and password not in str(err.value)
        assert password not in flow.explain() and password not in repr(flow.plan()) and password not in repr(sink)
        assert password not in str(flow.plan().to_dict())


def test_an_unreachable_server_stops_with_a_clear_error_without_the_password(dsn: str, tmp_path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    password = dsn.split(":")[2].split("@")[0]
    dead = dsn.replace(dsn.split("@")[1].split("/")[0], f"127.0.0.1:{port}")
    flow = sl.Flow("p")
    flow.read("in", testing.rows({"k": [1]})).write("db", sl.PostgresSink("t", dead, retry_timeout_s=0.5))
    with pytest.raises(sl.DatabaseError) as err:
        run(flow, tmp_path)
    msg = str(err.value)
    assert "'db'" in msg and "postgres:***@127.0.0.1" in msg and password not in msg and "run again" in msg


def test_lookup_join_from_postgres_with_types_and_a_cache(dsn: str) -> None:
    execute(dsn, "CREATE TABLE customers (id bigint PRIMARY KEY, name text, tier int, since date, vip boolean)",
            "INSERT INTO customers VALUES (1, 'Ada', 3, '2020-01-02', true), (2, 'Bob', 1, NULL, false)")
    execute(dsn, "CREATE TABLE calls (n int)", "CREATE OR REPLACE FUNCTION count_call() RETURNS void LANGUAGE sql AS "
            "'INSERT INTO calls VALUES (1)'")
    flow = sl.Flow("lk")
    orders = testing.rows({"customer": [1, 2, 1, 3, 1] * 200, "amount": [1.0, 2.0, 3.0, 4.0, 5.0] * 200})
    lookup = sl.PostgresLookup(dsn, "customers", key="id", columns=("name", "tier", "since", "vip"))
    out = testing.collect(flow.read("orders", orders).lookup_join("cust", lookup, by="customer",
                                                                  cache_ttl=timedelta(minutes=5)))
    result = sl.run(flow, batch_size=50)
    got = out.frame()
    assert got.height == 1000 and got.schema["tier"] == pl.Int64 and got.schema["since"] == pl.Date
    assert got.head(4).select("name", "tier", "since", "vip").rows() == [
        ("Ada", 3, date(2020, 1, 2), True), ("Bob", 1, None, False), ("Ada", 3, date(2020, 1, 2), True),
        (None, None, None, None)]
    assert result.rows_read == 1000
    inner = sl.Flow("lk2")
    kept = testing.collect(inner.read("o", testing.rows({"customer": [3, 2]})).lookup_join(
        "cust", lookup, by="customer", how="inner"))
    sl.run(inner)
    assert kept.frame().select("customer", "name").rows() == [(2, "Bob")]


def test_lookup_asks_postgres_once_per_batch_for_the_missing_keys(dsn: str) -> None:
    from sluice.core.batch import Batch
    from sluice.operators.lookup import LookupJoinOperator

    execute(dsn, "CREATE TABLE customers (id text PRIMARY KEY, name text)",
            "INSERT INTO customers SELECT 'c' || i, 'name' || i FROM generate_series(1, 100) i")
    op = LookupJoinOperator("cust", "c", sl.PostgresLookup(dsn, "customers", key="id", columns=("name",)), "left",
                            None, 1000)
    for keys in (["c1", "c2", "c1"], ["c2", "c3", "zz"], ["c1", "zz"]):
        [(_, out)] = op.on_batch(0, Batch(pl.DataFrame({"c": keys})))
        assert out.df["name"].to_list() == [None if k == "zz" else "name" + k[1:] for k in keys]
    assert op.fetched == 4  # c1 c2, then c3 zz; the third batch was all cached
    op.close()
