"""DeltaSink and DeltaSource (delta-rs): append with partitions, MERGE with update expressions, inserts and
changelog deletes, schema evolution, the change data feed as a changelog stream, and the app-transaction
version that makes a commit idempotent, only go forward, and fence a second writer of the same epoch.
Read back with polars and DuckDB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

import sluice as sl
from sluice import testing
from sluice.connectors.api import SourceContext
from sluice.connectors.delta import DeltaWriter


def ctx(tmp: Path | None, task: int | None = None) -> sl.SinkContext:
    return sl.SinkContext("to_delta", exactly_once=True, flow="f", task=task,
                          staging_dir=str(tmp / "staging") if tmp is not None else None)


def duck(path: Path, sql: str) -> pl.DataFrame:
    con = duckdb.connect()
    con.register("t", DeltaTable(str(path)).to_pyarrow_dataset())
    return con.sql(sql).pl()


def test_append_partitioned_read_back_with_polars_and_duckdb(tmp_path: Path) -> None:
    rows = [{"id": i, "country": ["de", "fr", "us"][i % 3], "amount": i * 1.5} for i in range(300)]
    flow = sl.Flow("app")
    flow.read("in", testing.rows(rows)).write("t", sl.DeltaSink(tmp_path / "t", partition_by="country"))
    sl.run(flow, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0, batch_size=40)
    got = pl.read_delta(str(tmp_path / "t")).sort("id")
    assert got.equals(pl.DataFrame(rows).select(got.columns))
    assert sorted(p.name for p in (tmp_path / "t").glob("country=*")) == ["country=de", "country=fr", "country=us"]
    by = duck(tmp_path / "t", "SELECT country, count(*) AS n, sum(amount) AS s FROM t GROUP BY ALL ORDER BY 1")
    assert by["n"].to_list() == [100, 100, 100]
    assert DeltaTable(str(tmp_path / "t")).version() >= 7  # one commit per checkpoint


def test_schema_evolution_on_append(tmp_path: Path) -> None:
    table = tmp_path / "t"
    write_deltalake(str(table), pl.DataFrame({"id": [0], "a": ["x"]}).to_arrow())
    flow = sl.Flow("evolve")
    flow.read("in", testing.rows([{"id": 1, "a": "y", "b": 2.5}])).write(
        "t", sl.DeltaSink(table, schema_mode="merge"))
    sl.run(flow)
    got = pl.read_delta(str(table)).sort("id")
    assert got.columns == ["id", "a", "b"] and got["b"].to_list() == [None, 2.5]
    flow = sl.Flow("strict")
    flow.read("in", testing.rows([{"id": 2, "c": True}])).write("t", sl.DeltaSink(table))
    with pytest.raises(sl.SinkError, match=r"'t'.*schema.*schema_mode='merge'"):
        sl.run(flow)


def test_merge_accumulates_with_update_expressions_and_inserts(tmp_path: Path) -> None:
    events = [{"user": f"u{i % 7}", "n": 1, "last": i} for i in range(200)]
    merge = sl.DeltaMerge(on="user", update={"n": "target.n + source.n", "last": "source.last"},
                          combine={"n": "sum", "last": "max"})
    flow = sl.Flow("acc")
    flow.read("in", testing.rows(events)).write("t", sl.DeltaSink(tmp_path / "t", mode="merge", merge=merge))
    sl.run(flow, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0, batch_size=30)
    got = duck(tmp_path / "t", "SELECT * FROM t ORDER BY user")
    want = pl.DataFrame(events).group_by("user").agg(pl.col("n").sum(), pl.col("last").max()).sort("user")
    assert got.equals(want.select(got.columns).cast(got.schema))


@pytest.mark.parametrize("batch_size", [1, 7, 65536])
def test_repeated_keys_are_merged_in_turn_as_separate_merges_would(tmp_path: Path, batch_size: int) -> None:
    # `seen = target.seen + 1` counts rows (it does not compose: folding rows first would count one); the
    # average is count-weighted; GREATEST keeps the largest; rows of one key in one epoch apply in order
    rows = [{"user": f"u{i % 5}", "n": i % 3 + 1, "avg": float(i % 7), "big": (i * 37) % 101, "seen": 1, "last": i}
            for i in range(120)]
    table = tmp_path / "t"
    write_deltalake(str(table), pl.DataFrame(rows[:1]).with_columns(pl.lit("u0").alias("user")).to_arrow())
    merge = sl.DeltaMerge(on="user", update={
        "n": "target.n + source.n", "avg": "(target.avg * target.n + source.avg * source.n) / (target.n + source.n)",
        "big": "GREATEST(target.big, source.big)", "seen": "target.seen + 1", "last": "source.last"})
    flow = sl.Flow("dups")
    flow.read("in", testing.rows(rows)).write("to_delta", sl.DeltaSink(table, mode="merge", merge=merge))
    sl.run(flow, checkpoint_dir=tmp_path / "ck", checkpoint_interval=1.0, batch_size=batch_size)
    con = duckdb.connect()
    # the table's first row, then the stream's, in order
    con.register("r", pl.DataFrame([rows[0], *rows]).with_row_index("pos").to_arrow())
    want = con.sql("SELECT user, sum(n) AS n, sum(avg * n) / sum(n) AS avg, max(big) AS big, count(*) AS seen, "
                   "arg_max(last, pos) AS last FROM r GROUP BY ALL ORDER BY user").pl()
    got = pl.read_delta(str(table)).sort("user").select(want.columns)
    assert got.drop("avg").equals(want.drop("avg").cast(got.drop("avg").schema))
    assert ((got["avg"] - want["avg"]).abs() <= 1e-9 * want["avg"].abs()).all()


def test_repeated_keys_with_a_custom_predicate_are_refused(tmp_path: Path) -> None:
    merge = sl.DeltaMerge(on="user", update={"n": "target.n + source.n"}, predicate="target.user = source.user")
    flow = sl.Flow("dups")
    flow.read("in", testing.rows([{"user": "a", "n": 1}, {"user": "a", "n": 2}])).write(
        "to_delta", sl.DeltaSink(tmp_path / "t", mode="merge", merge=merge))
    with pytest.raises(sl.EncodeError, match=r"'to_delta'.*share a merge key.*combine"):
        sl.run(flow)


def test_a_changelog_upserts_and_deletes(tmp_path: Path) -> None:
    table = tmp_path / "t"
    write_deltalake(str(table), pl.DataFrame({"id": [1, 2, 9], "name": ["a", "b", "z"]}).to_arrow())
    changes = [{"id": 3, "name": "c", "_op": "+I"}, {"id": 1, "name": "a", "_op": "-U"},
               {"id": 1, "name": "a2", "_op": "+U"}, {"id": 2, "name": None, "_op": "-D"},
               {"id": 3, "name": "c", "_op": "-U"}, {"id": 3, "name": "c3", "_op": "+U"}]
    flow = sl.Flow("cdc")
    flow.read("in", testing.rows(changes)).changelog("id").write(
        "t", sl.DeltaSink(table, mode="merge", merge=sl.DeltaMerge(on="id")))
    sl.run(flow, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0, batch_size=4)
    got = pl.read_delta(str(table)).sort("id")
    assert got.rows() == [(1, "a2"), (3, "c3"), (9, "z")]  # no _op column in the table


def test_the_change_data_feed_is_read_as_a_changelog_and_resumes(tmp_path: Path) -> None:
    table = str(tmp_path / "t")
    write_deltalake(table, pl.DataFrame({"id": [1, 2], "v": [10, 20]}).to_arrow(),
                    configuration={"delta.enableChangeDataFeed": "true"})
    dt = DeltaTable(table)
    dt.update(updates={"v": "v + 1"}, predicate="id = 1")
    dt.delete("id = 2")

    def read(checkpoints: Path) -> pl.DataFrame:
        out = sl.CollectSink()
        flow = sl.Flow("feed")
        flow.read("cdf", sl.DeltaSource(table, change_data_feed=True)).write("c", out)
        sl.run(flow, checkpoint_dir=checkpoints, batch_size=1)
        return out.frame()

    first = read(tmp_path / "ck")
    assert first.select("id", "v", "_op", "_commit_version").rows() == [
        (1, 10, "+I", 0), (2, 20, "+I", 0), (1, 10, "-U", 1), (1, 11, "+U", 1), (2, 20, "-D", 2)]
    write_deltalake(table, pl.DataFrame({"id": [3], "v": [30]}).to_arrow(), mode="append")
    again = read(tmp_path / "ck")  # resumed: only the commit made since
    assert again.select("id", "_op", "_commit_version").rows() == [(3, "+I", 3)]

    # the feed applied as a table reproduces the source table
    out = tmp_path / "copy"
    flow = sl.Flow("mirror")
    flow.read("cdf", sl.DeltaSource(table, change_data_feed=True)).select("id", "v", "_op") \
        .changelog("id").write("copy", sl.DeltaSink(out, mode="merge", merge=sl.DeltaMerge(on="id")))
    sl.run(flow)
    assert pl.read_delta(str(out)).sort("id").equals(pl.read_delta(table).sort("id"))


def test_the_snapshot_source_resumes_mid_file_and_pins_its_version(tmp_path: Path) -> None:
    table = str(tmp_path / "t")
    for part in range(3):
        write_deltalake(table, pl.DataFrame({"id": range(part * 100, part * 100 + 100), "p": part}).to_arrow(),
                        mode="append", partition_by=["p"])
    reader = sl.DeltaSource(table).open(SourceContext("snap", None, 30, "fail"))
    it = reader.batches()
    seen = [next(it)[1].df for _ in range(5)]
    pos = reader.position()
    write_deltalake(table, pl.DataFrame({"id": [999], "p": 9}).to_arrow(), mode="append", partition_by=["p"])
    resumed = sl.DeltaSource(table).open(SourceContext("snap", None, 30, "fail"))
    resumed.seek(pos)
    rest = [b.df for port, b in resumed.batches() if b.height]
    ids = pl.concat([*seen, *rest])["id"].sort().to_list()
    assert ids == list(range(300))  # each row once; the row appended after the run began is not in its snapshot


@pytest.mark.parametrize("runtime", ["sl.run", "kafka-task"])
def test_commit_is_idempotent_and_versions_only_go_forward(tmp_path: Path, runtime: str) -> None:
    table = tmp_path / "t"
    c = ctx(tmp_path) if runtime == "sl.run" else ctx(None, task=0)
    w = sl.DeltaSink(table).open(c)
    w.recover(None)
    w.write(pl.DataFrame({"id": [1, 2]}))
    t1 = w.prepare(1)
    if runtime == "kafka-task":  # staged next to the table, where any worker on the shared filesystem finds it
        assert Path(t1["staged"]).parent == table / "_sluice_staging" / "f-to_delta-t0"
    assert not DeltaTable.is_deltatable(str(table))
    w.commit(t1)
    w.commit(t1)  # recovery commits the recorded epoch again: skipped
    w.write(pl.DataFrame({"id": [3]}))
    t2 = w.prepare(2)
    w.commit(t2)
    dt = DeltaTable(str(table))
    assert dt.transaction_version(w.app_id) == 2 and pl.read_delta(str(table))["id"].sort().to_list() == [1, 2, 3]
    # an epoch behind the table's version is not applied (delta-rs itself would take it, and go back)
    w.write(pl.DataFrame({"id": [4]}))
    w.commit(w.prepare(1))
    dt = DeltaTable(str(table))
    assert dt.transaction_version(w.app_id) == 2 and pl.read_delta(str(table)).height == 3
    assert w.metrics()["epochs_skipped"] == 2


def test_a_zombie_is_fenced_by_the_app_transaction(tmp_path: Path) -> None:
    table = tmp_path / "t"
    merge = sl.DeltaMerge(on="k", update={"n": "target.n + source.n"})
    old = sl.DeltaSink(table, mode="merge", merge=merge).open(ctx(None, task=1))
    old.recover(None)
    old.write(pl.DataFrame({"k": ["a"], "n": [1]}))
    recorded = old.prepare(1)
    old.commit(recorded)
    new = sl.DeltaSink(table, mode="merge", merge=merge).open(ctx(None, task=1))
    new.recover(recorded)
    assert new.app_id == old.app_id
    old.write(pl.DataFrame({"k": ["a"], "n": [100]}))
    zombie = old.prepare(2)
    new.write(pl.DataFrame({"k": ["a"], "n": [10]}))
    new.commit(new.prepare(2))
    new.write(pl.DataFrame({"k": ["a"], "n": [10]}))
    new.commit(new.prepare(3))
    old.commit(zombie)  # refused: the table is at epoch 3
    assert pl.read_delta(str(table))["n"].to_list() == [21]


class _Stale(DeltaWriter):
    """Bases its first commit on the snapshot it loaded before another writer committed the same epoch."""

    def _table(self) -> Any:
        if getattr(self, "stale", None) is not None:
            stale, self.stale = self.stale, None
            return stale
        return super()._table()


def test_a_second_writer_of_the_same_epoch_is_refused(tmp_path: Path) -> None:
    table = tmp_path / "t"
    merge = sl.DeltaMerge(on="k", update={"n": "target.n + source.n"})
    first = sl.DeltaSink(table, mode="merge", merge=merge).open(ctx(None, task=2))
    first.recover(None)
    first.write(pl.DataFrame({"k": ["a"], "n": [1]}))
    first.commit(first.prepare(1))
    second = _Stale(sl.DeltaSink(table, mode="merge", merge=merge), ctx(None, task=2))
    second.recover({"epoch": 1, "lineage": first.lineage})
    second.stale = DeltaTable(str(table))  # both loaded the table at epoch 1
    first.write(pl.DataFrame({"k": ["a"], "n": [10]}))
    first.commit(first.prepare(2))
    second.write(pl.DataFrame({"k": ["a"], "n": [1000]}))
    second.commit(second.prepare(2))  # its MERGE conflicts (same app id); the retry sees epoch 2 and skips
    assert pl.read_delta(str(table))["n"].to_list() == [11]
    assert second.metrics()["epochs_skipped"] == 1


def test_without_checkpoints_rows_are_committed_in_pieces(tmp_path: Path) -> None:
    flow = sl.Flow("plain")
    flow.read("in", testing.rows([{"id": i} for i in range(250)])).write(
        "t", sl.DeltaSink(tmp_path / "t", rows_per_commit=100))
    sl.run(flow, batch_size=50)
    assert pl.read_delta(str(tmp_path / "t")).height == 250
    assert DeltaTable(str(tmp_path / "t")).version() == 2  # 100 + 100 + the last 50
