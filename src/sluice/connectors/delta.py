"""Delta Lake (delta-rs, the `deltalake` package): a sink that appends or MERGEs, and a source that reads a
table, or its change data feed, as a stream.

Exactly-once (a checkpointed `sl.run`, or the Kafka runtime) rests on Delta's application transactions
(`txn` actions: app id → version, committed atomically with the data):

    prepare    the epoch's rows go to an Arrow file: under the checkpoint's staging directory (sl.run), or
               under the Kafka runtime in `<table>/_sluice_staging/<txn_prefix>/`, so that whichever
               worker a task moves to finds them (the table must be on a filesystem every worker shares)
    commit     load the table's newest snapshot and read its txn version for the app id
               `sluice-<txn_prefix>-<lineage>`: at or past this epoch → applied already, skip. Otherwise
               append / MERGE the staged rows with `Transaction(app_id, epoch)` in the same commit, based
               on that snapshot. delta-rs accepts a txn version that goes backwards, so this check is what
               keeps versions going forward; a concurrent commit of the same app id (a zombie writing the
               same epoch) makes one of the two fail with CommitFailedError, and its retry sees the epoch
               and skips it
    recover    the recorded epoch is committed again (skipped if the table has it); later staging dropped

Without checkpoints the rows are committed at the end of the run (and every `rows_per_commit` rows).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from sluice.connectors.api import SinkContext, SourceContext
from sluice.connectors.staging import StagedFiles, lineage_of, new_lineage
from sluice.core.batch import OFFSET, Batch, Origin, user_columns
from sluice.core.changelog import DELETE, INSERT, OP, UPDATE_AFTER, UPDATE_BEFORE
from sluice.core.errors import EncodeError, PlanError, SinkAheadError, SinkError

log = logging.getLogger("sluice.connectors")
MODES = ("append", "merge")
COMBINE = ("sum", "min", "max", "first", "last")
STAGING = "_sluice_staging"
CHANGE_RANK = {"update_preimage": 0, "delete": 1, "update_postimage": 2, "insert": 2}
CHANGE_TYPES = {"insert": INSERT, "update_preimage": UPDATE_BEFORE, "update_postimage": UPDATE_AFTER, "delete": DELETE}


@dataclass(frozen=True)
class DeltaMerge:
    """How `DeltaSink(mode="merge")` applies an epoch's rows to the table (a Delta MERGE).

    `on`: the key columns (the predicate `target.k = source.k AND …`; `predicate` replaces it).
    `update`: when matched, column → SQL expression over `target.` and `source.` columns, e.g.
    `{"n": "target.n + source.n"}`; None updates every column from the source row.
    `insert`: when not matched, insert the source row. A changelog input's -D rows delete the matched row
    (`delete=False` ignores them) and its -U rows are skipped.
    `combine`: several rows of one key in one epoch are folded into one first (MERGE allows one source row
    per target row): column → "sum" | "min" | "max" | "first" | "last" (other columns: the last row's).
    Without it, an upsert (update=None) or a changelog keeps each key's last row, and update expressions
    are applied to a key's rows one after the other, in their order, as separate MERGEs would (the rows of
    keys that repeat in an epoch are put together from the table's row with DuckDB, then written in the
    epoch's one commit) — so an accumulating merge of a window's deltas is exact whatever an epoch holds."""

    on: str | Sequence[str]
    update: Mapping[str, str] | None = None
    insert: bool = True
    delete: bool = True
    predicate: str | None = None
    combine: Mapping[str, str] | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.on,) if isinstance(self.on, str) else tuple(self.on)

    def condition(self) -> str:
        return self.predicate or " AND ".join(f"target.{k} = source.{k}" for k in self.keys)


@dataclass(frozen=True)
class DeltaSink:
    """Write to a Delta table (created on the first commit). mode="append" adds the rows
    (`partition_by` columns at creation; `schema_mode="merge"` adds new columns); mode="merge" applies
    them with `merge=sl.DeltaMerge(...)`. `configuration`: table properties when the table is created,
    e.g. {"delta.enableChangeDataFeed": "true"}."""

    path: str | Path
    mode: str = "append"
    partition_by: str | Sequence[str] | None = None
    merge: DeltaMerge | None = None
    schema_mode: str | None = None
    configuration: Mapping[str, str] | None = None
    storage_options: Mapping[str, str] | None = None
    rows_per_commit: int = 1_000_000  # without checkpoints: commit whenever this many rows are waiting

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PlanError(f"DeltaSink: mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "merge" and self.merge is None:
            raise PlanError("DeltaSink(mode='merge') needs merge=sl.DeltaMerge(on=<key columns>, ...)")
        if self.mode == "append" and self.merge is not None:
            raise PlanError("DeltaSink: merge= is given but mode is 'append'; pass mode='merge'")
        if self.schema_mode not in (None, "merge"):
            raise PlanError(f"DeltaSink: schema_mode must be None or 'merge', got {self.schema_mode!r}")
        for col, how in (self.merge.combine or {}).items() if self.merge else ():
            if how not in COMBINE:
                raise PlanError(f"DeltaMerge: combine[{col!r}] must be one of {COMBINE}, got {how!r}")

    def describe(self) -> str:
        return f"delta {self.path} ({self.mode})"

    def open(self, ctx: SinkContext) -> DeltaWriter:
        return DeltaWriter(self, ctx)


def _partitions(spec: DeltaSink) -> list[str] | None:
    p = spec.partition_by
    return None if p is None else [p] if isinstance(p, str) else list(p)


class DeltaWriter:
    """The writer of a DeltaSink (see the module docstring)."""

    def __init__(self, spec: DeltaSink, ctx: SinkContext) -> None:
        self.spec, self.ctx = spec, ctx
        self.uri = str(spec.path)
        self.frames: list[pl.DataFrame] = []
        self.rows = 0
        self.ready: list[pl.DataFrame] = []  # without checkpoints: prepared, committed at commit
        self.lineage = new_lineage()
        self.changelog = ctx.changelog_key is not None
        self.table: Any = None
        self.committed_rows = 0
        self.epochs_skipped = 0
        self.files: StagedFiles | None = None
        if ctx.exactly_once:
            if ctx.staging_dir is not None:
                self.files = StagedFiles(Path(ctx.staging_dir) / ctx.step, "delta")
            elif "://" in self.uri and not self.uri.startswith("file://"):
                raise PlanError(f"sink {ctx.step!r}: under the Kafka runtime a Delta sink stages each epoch in "
                                f"<table>/{STAGING}/ on a filesystem every worker shares; {self.uri!r} is an object "
                                "store. Write to a shared filesystem path, or run it with sl.run and checkpoints")
            else:
                root = Path(self.uri.removeprefix("file://"))
                self.files = StagedFiles(root / STAGING / ctx.txn_prefix, "delta")

    @property
    def app_id(self) -> str:
        return f"sluice-{self.ctx.txn_prefix}-{self.lineage}"

    # --- rows ---------------------------------------------------------------------------------------
    def write(self, df: pl.DataFrame) -> None:
        df = user_columns(df)
        if df.height == 0:
            return
        self.frames.append(df)
        self.rows += df.height
        if not self.ctx.exactly_once and self.rows >= self.spec.rows_per_commit:
            self._apply(self._table(), self._take(), None)

    def _take(self) -> pl.DataFrame:
        frames, self.frames, self.rows = self.frames, [], 0
        df = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
        return self._merge_source(df) if self.spec.mode == "merge" else df

    def _merge_source(self, df: pl.DataFrame) -> pl.DataFrame:
        """One source row per key: MERGE refuses a target row matched by several source rows."""
        m = self.spec.merge
        assert m is not None
        missing = [k for k in m.keys if k not in df.columns]
        if missing:
            raise PlanError(f"sink {self.ctx.step!r}: merge key {missing[0]!r} is not a column of the stream "
                            f"(its columns: {', '.join(df.columns)})")
        if self.changelog and OP in df.columns:
            df = df.filter(pl.col(OP) != UPDATE_BEFORE)
        null_keys = df.filter(pl.any_horizontal(pl.col(k).is_null() for k in m.keys))
        if null_keys.height:
            raise EncodeError(self.ctx.step, f"the row {null_keys.row(0, named=True)!r}",
                              f"the merge key ({', '.join(m.keys)}) is null", "fill or filter out rows without a key")
        if m.combine:
            rest = [c for c in df.columns if c not in m.keys and c not in m.combine]
            aggs = [getattr(pl.col(c), how)() for c, how in m.combine.items()] + [pl.col(c).last() for c in rest]
            return df.group_by(list(m.keys), maintain_order=True).agg(aggs).select(df.columns)
        if self.changelog or m.update is None:
            return df.unique(subset=list(m.keys), keep="last", maintain_order=True)
        dup = df.filter(pl.struct(list(m.keys)).is_duplicated())
        if dup.height and m.predicate is not None:
            raise EncodeError(self.ctx.step, f"the rows with key {dup.select(m.keys).row(0, named=True)!r}",
                              f"{dup.height} rows of one commit share a merge key, and a MERGE may match a table row "
                              "with one source row only; with a custom predicate they cannot be applied in turn",
                              "say how to fold them, e.g. DeltaMerge(..., combine={'n': 'sum'}), or aggregate by the "
                              "key before the sink")
        return df

    # --- the table ----------------------------------------------------------------------------------
    def _table(self) -> Any:
        """The table at its newest version (None if it does not exist yet)."""
        from deltalake import DeltaTable

        if self.table is not None:
            self.table.update_incremental()
            return self.table
        if DeltaTable.is_deltatable(self.uri, storage_options=self._options()):
            self.table = DeltaTable(self.uri, storage_options=self._options())
        return self.table

    def _options(self) -> dict[str, str] | None:
        return dict(self.spec.storage_options) if self.spec.storage_options else None

    def _apply(self, table: Any, df: pl.DataFrame, props: Any) -> None:
        """Append or merge `df` in one Delta commit carrying `props` (the app transaction)."""
        from deltalake.exceptions import SchemaMismatchError

        try:
            self._write(table, df, props)
        except SchemaMismatchError as exc:
            raise SinkError(f"sink {self.ctx.step!r}: the rows do not fit the schema of the Delta table {self.uri}: "
                            f"{exc}. Fix: DeltaSink(..., schema_mode='merge') adds new columns; otherwise select and "
                            "cast the stream's columns to the table's") from None

    def _write(self, table: Any, df: pl.DataFrame, props: Any) -> None:
        from deltalake import write_deltalake

        if df.height == 0 and props is None:
            return
        config = dict(self.spec.configuration) if self.spec.configuration else None
        if self.spec.mode == "append":
            options: dict[str, Any] = {"partition_by": _partitions(self.spec), "schema_mode": self.spec.schema_mode,
                                       "configuration": config, "commit_properties": props}
            if table is None:
                options["storage_options"] = self._options()
            write_deltalake(table if table is not None else self.uri, df.to_arrow(), mode="append", **options)
            self.committed_rows += df.height
            return
        m = self.spec.merge
        assert m is not None
        has_op = OP in df.columns and self.changelog
        if table is None:  # the table's first version: its columns, no rows
            empty = (df.drop(OP) if has_op else df).clear().to_arrow()
            write_deltalake(self.uri, empty, mode="append", partition_by=_partitions(self.spec),
                            configuration=config, storage_options=self._options())
            table = self._table()
        rows = df.height
        folded = m.update is not None and not has_op and df.select(pl.struct(list(m.keys)).is_duplicated().any()).item()
        if folded:
            df = _apply_in_turn(table, df, m)
        merger = table.merge(df.to_arrow(), m.condition(), source_alias="source", target_alias="target",
                             merge_schema=self.spec.schema_mode == "merge", commit_properties=props)
        keep = None
        except_cols = None
        if has_op:
            keep, except_cols = f"source.{OP} <> '{DELETE}'", [OP]
            if m.delete:
                merger = merger.when_matched_delete(f"source.{OP} = '{DELETE}'")
        if folded:  # rows of repeated keys come as the table's row after all of them: set every column
            keep, except_cols = f"NOT source.{FOLDED}", [FOLDED]
            merger = merger.when_matched_update_all(predicate=f"source.{FOLDED}", except_cols=except_cols)
        if m.update is not None:
            merger = merger.when_matched_update(dict(m.update), predicate=keep)
        else:
            merger = merger.when_matched_update_all(predicate=keep, except_cols=except_cols)
        if m.insert:
            merger = merger.when_not_matched_insert_all(predicate=None if folded else keep, except_cols=except_cols)
        merger.execute()
        self.committed_rows += rows

    # --- the epoch commit ---------------------------------------------------------------------------
    def prepare(self, epoch: int) -> dict[str, Any]:
        txn: dict[str, Any] = {"epoch": epoch, "lineage": self.lineage}
        if not self.frames:
            return txn
        df = self._take()
        if self.files is None:
            self.ready.append(df)
            txn["memory"] = True
            return txn
        txn["staged"] = self.files.put(self.lineage, epoch, df)
        txn["rows"] = df.height
        return txn

    def commit(self, txn: dict[str, Any]) -> None:
        if txn.get("memory"):
            ready, self.ready = self.ready, []
            for df in ready:
                self._apply(self._table(), df, None)
            return
        if "staged" not in txn:
            return
        from deltalake import CommitProperties, Transaction
        from deltalake.exceptions import CommitFailedError

        epoch = int(txn["epoch"])
        app_id = f"sluice-{self.ctx.txn_prefix}-{txn['lineage']}"
        for _ in range(20):
            table = self._table()
            done = table.transaction_version(app_id) if table is not None else None
            if done is not None and done >= epoch:
                if done > epoch:
                    log.warning("sink %r: epoch %d not applied: the table records epoch %d for %s (a newer writer "
                                "of this task has committed; this one is a zombie)", self.ctx.step, epoch, done, app_id)
                self.epochs_skipped += 1
                break
            staged = StagedFiles.get(txn["staged"])
            if staged is None:
                raise SinkError(f"sink {self.ctx.step!r}: the staged rows of epoch {epoch} ({txn['staged']}) are gone, "
                                f"but the table records {done} for {app_id}, so the epoch was not applied. Either a newer "
                                "owner of this task recovered it and dropped this writer's staging (this writer is a "
                                "zombie and must stop), or it was deleted by hand")
            props = CommitProperties(app_transactions=[Transaction(app_id, epoch)],
                                     custom_metadata={"sluice.step": self.ctx.step, "sluice.epoch": str(epoch)})
            try:
                self._apply(table, staged, props)
            except CommitFailedError as exc:
                # another writer committed in between (a zombie of this task, or an unrelated writer): look again
                log.info("sink %r: commit of epoch %d conflicted (%s); retrying on the new snapshot",
                         self.ctx.step, epoch, exc)
                continue
            break
        else:
            raise SinkError(f"sink {self.ctx.step!r}: committing epoch {epoch} to {self.uri} conflicted 20 times in "
                            "a row; another writer keeps committing to the table")
        StagedFiles.drop(txn["staged"])

    def abort(self, txn: dict[str, Any]) -> None:
        if "staged" in txn:
            StagedFiles.drop(txn["staged"])
        self.ready = []

    def recover(self, txn: dict[str, Any] | None) -> None:
        self.frames, self.rows, self.ready = [], 0, []
        self.lineage = lineage_of(txn)
        if txn and txn.get("epoch") is not None:
            table = self._table()
            app_id = f"sluice-{self.ctx.txn_prefix}-{self.lineage}"
            applied = table.transaction_version(app_id) if table is not None else None
            if applied is not None and applied > int(txn["epoch"]):
                raise SinkAheadError(self.ctx.step, f"the Delta table {self.uri}", int(applied), int(txn["epoch"]))
        if txn:
            self.commit(txn)
        if self.files is not None:
            self.files.drop_all()

    def close(self) -> None:
        pass

    def metrics(self) -> dict[str, int]:
        return {"rows_committed": self.committed_rows, "epochs_skipped": self.epochs_skipped}


FOLDED = "__sl_folded"


def _apply_in_turn(table: Any, df: pl.DataFrame, m: DeltaMerge) -> pl.DataFrame:
    """The MERGE source for an epoch in which keys repeat: rows of keys seen once as they are (FOLDED
    false); for each repeated key, the row the table would hold after MERGE-ing its rows one by one
    (FOLDED true), computed with DuckDB from the table's current row: round r applies every key's r-th
    row — the update expressions where a row exists, else an insert (if m.insert)."""
    import duckdb

    keys = list(m.keys)
    repeated = pl.struct(keys).is_duplicated()
    single = df.filter(~repeated).with_columns(pl.lit(False).alias(FOLDED))
    many = df.filter(repeated).with_columns(pl.int_range(pl.len()).over(keys).alias("__sl_rank"))
    assert m.update is not None
    con = duckdb.connect()
    con.register("tbl", table.to_pyarrow_dataset())
    con.register("many", many.to_arrow())
    on = " AND ".join(f'target."{k}" IS NOT DISTINCT FROM source."{k}"' for k in keys)
    cols = [f.name for f in table.schema().fields]
    con.execute(f"CREATE TEMP TABLE acc AS SELECT target.* FROM tbl AS target "
                f"WHERE EXISTS (SELECT 1 FROM many AS source WHERE {on})")
    sets = ", ".join(f'({m.update[c]}) AS "{c}"' if c in m.update else f'target."{c}"' for c in cols)
    for r in range(int(many["__sl_rank"].max()) + 1):  # type: ignore[arg-type]
        con.execute(f"CREATE OR REPLACE TEMP TABLE src AS SELECT * EXCLUDE (__sl_rank) FROM many WHERE __sl_rank = {r}")
        matched = f"SELECT {sets} FROM acc AS target JOIN src AS source ON {on}"
        untouched = f"SELECT target.* FROM acc AS target WHERE NOT EXISTS (SELECT 1 FROM src AS source WHERE {on})"
        parts = [matched, untouched]
        if m.insert:
            parts.append(f"SELECT source.* FROM src AS source WHERE NOT EXISTS (SELECT 1 FROM acc AS target WHERE {on})")
        con.execute("CREATE OR REPLACE TEMP TABLE acc AS " + " UNION ALL BY NAME ".join(f"({p})" for p in parts))
    done: pl.DataFrame = con.sql("SELECT * FROM acc").pl()
    done = done.select([c for c in df.columns if c in done.columns]).with_columns(pl.lit(True).alias(FOLDED))
    folded: pl.DataFrame = pl.concat([single, done], how="diagonal_relaxed")
    return folded


# --- the source ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeltaSource:
    """Read a Delta table as a bounded stream: its snapshot at `version` (default: the newest when the run
    starts; a resumed run keeps reading the snapshot it began), or with `change_data_feed=True` its change
    data feed from `version` (default 0) to the newest version — rows become changelog rows (`_op`:
    insert +I, update_preimage -U, update_postimage +U, delete -D; `_commit_version` and
    `_commit_timestamp` kept). A resumed feed goes on with the versions committed since.
    Declare the key with `.changelog(key)` to apply the feed as a table."""

    path: str | Path
    version: int | None = None
    change_data_feed: bool = False
    storage_options: dict[str, str] = field(default_factory=dict)

    def open(self, ctx: SourceContext) -> DeltaReader:
        return DeltaReader(self, ctx)


class DeltaReader:
    """Position: the snapshot's version, the data file and the rows of it read; or, for the change data
    feed, the commit version and the rows of it read."""

    def __init__(self, spec: DeltaSource, ctx: SourceContext) -> None:
        from deltalake import DeltaTable

        self.spec, self.ctx = spec, ctx
        self.uri = str(spec.path)
        try:
            self.table = DeltaTable(self.uri, storage_options=spec.storage_options or None)
        except Exception as exc:
            raise PlanError(f"step {ctx.step!r}: cannot open the Delta table {self.uri!r}: {exc}") from None
        if spec.change_data_feed:
            self.pos: dict[str, Any] = {"version": spec.version or 0, "row": 0}
        else:
            version = self.table.version() if spec.version is None else spec.version
            self.pos = {"snapshot": version, "file": 0, "row": 0}

    def partitions(self) -> int:
        return 1

    def position(self) -> dict[str, Any]:
        return dict(self.pos)

    def seek(self, position: dict[str, Any]) -> None:
        self.pos = {k: int(v) for k, v in position.items()}

    def close(self) -> None:
        pass

    def _emit(self, df: pl.DataFrame, label: str, where: dict[str, Any]) -> Iterator[tuple[str, Batch]]:
        origin = Origin(self.ctx.step, 0, label, unit="record")
        skip = self.pos["row"] if all(self.pos.get(k) == v for k, v in where.items()) else 0
        df = df.with_columns(pl.int_range(0, df.height, dtype=pl.Int64).alias(OFFSET)).slice(skip)
        size = max(self.ctx.batch_size, 1)
        for start in range(0, df.height, size):
            piece = df.slice(start, size)
            self.pos = {**where, "row": skip + start + piece.height}
            yield "out", Batch(piece, origin=origin)

    def batches(self) -> Iterator[tuple[str, Batch]]:
        if self.spec.change_data_feed:
            yield from self._feed()
        else:
            yield from self._snapshot()
        yield "out", Batch(pl.DataFrame(), origin=Origin(self.ctx.step, 0, f"delta:{self.uri}", unit="record"),
                           end_of_partition=True)

    def _snapshot(self) -> Iterator[tuple[str, Batch]]:
        self.table.load_as_version(self.pos["snapshot"])
        ds = self.table.to_pyarrow_dataset()
        fragments = sorted(ds.get_fragments(), key=lambda f: f.path)
        for i in range(self.pos["file"], len(fragments)):
            frame = pl.from_arrow(fragments[i].to_table(schema=ds.schema))
            assert isinstance(frame, pl.DataFrame)
            where = {"snapshot": self.pos["snapshot"], "file": i}
            yield from self._emit(frame, f"delta:{self.uri}@{where['snapshot']}/{fragments[i].path}", where)
            self.pos = {**where, "file": i + 1, "row": 0}

    def _feed(self) -> Iterator[tuple[str, Batch]]:
        import pyarrow as pa

        self.table.update_incremental()
        newest = self.table.version()
        for v in range(self.pos["version"], newest + 1):
            frame = pl.from_arrow(pa.table(self.table.load_cdf(starting_version=v, ending_version=v)))
            assert isinstance(frame, pl.DataFrame)
            if frame.height:
                # delta-rs reads a commit's change files in no fixed order; a resumed read counts rows into a
                # version, so fix one: update-befores first, then the rest, each by their values
                rank = pl.col("_change_type").replace_strict(CHANGE_RANK, return_dtype=pl.Int8)
                frame = frame.sort([rank, *frame.columns], nulls_last=True, maintain_order=True)
                frame = frame.with_columns(pl.col("_change_type").replace_strict(CHANGE_TYPES, return_dtype=pl.String)
                                           .alias(OP)).drop("_change_type")
                yield from self._emit(frame, f"delta:{self.uri} version {v}", {"version": v})
            self.pos = {"version": v + 1, "row": 0}
