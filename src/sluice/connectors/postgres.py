"""PostgreSQL as a sink (psycopg 3): append, upsert by key, changelog deletes and merge expressions,
exactly-once through a marker row committed in the same database transaction as the rows.

    write     the rows are kept (Arrow, in memory); past `stage_bytes` they go to the epoch's staging table
    prepare   the rest go there too. The staging table is a plain (logged) table in the target's schema
              (unlogged in a run without checkpoints, which starts over after a crash anyway),
              `sluice_stage_<writer>_<random>`, made for the epoch with the target's column types and
              filled with COPY (CSV) in committed transactions: the epoch survives a crash of Sluice or of
              the server, under both runtimes (a Kafka task that moves to another machine finds it in the
              database, not on a local disk). The transaction (JSON) only names it.
    commit    one database transaction: lock this writer's marker row (`sluice_commits`: writer = flow-step
              [-task], lineage → epoch); if it holds the epoch already, only drop the staging table; else
              apply the staged rows — INSERT … SELECT (… ON CONFLICT (key) DO UPDATE SET …) and, for the
              deletes of a changelog, DELETE … USING — set the marker to the epoch, drop the staging table.
              The rows and the marker commit together or not at all, so recovery, which commits the
              recorded transaction again, never applies an epoch twice (an accumulating merge would show it).
    recover   commit the recorded transaction again, then drop this writer's other staging tables (staged
              after the record, or by a zombie: an older owner of the same Kafka task)

The lineage is an id made when a writer starts without a recorded transaction (a new job, whose epochs
start again at 1) and carried in every transaction after that: the marker is per (writer, lineage).

Rows of one key within an epoch are applied in their order, as if one statement per row ran: with a
`merge` or `where`, the k-th row of each key goes in the k-th INSERT … SELECT of the epoch ("rounds"); a
plain upsert keeps each key's last row (one statement). A changelog's update-befores (-U) are skipped.

A row the table refuses (a constraint, a value out of range) stops the run with a ConstraintError naming
the step, the row and the constraint; with `dead_letters="<table>"` it goes to that table instead (found
by bisecting the batch in savepoints), in the same transaction, and the rest commits.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import polars as pl

from sluice.connectors.api import SinkContext
from sluice.core.batch import user_columns
from sluice.core.changelog import DELETE, OP, UPDATE_BEFORE
from sluice.core.errors import ConstraintError, DatabaseError, EncodeError, PlanError, SinkAheadError
from sluice.core.plain import redact_text

log = logging.getLogger("sluice.postgres")
T = TypeVar("T")
MODES = ("append", "upsert")
INTERNAL = ("_sl_seq", "_sl_chunk", "_sl_round", "_sl_op")
MAX_REJECTED = 10_000  # rows set aside at staging, per epoch (they travel in the transaction)
INDEX_ROUNDS = 8  # from this many statements per epoch, index the staging table by (chunk, round)


@dataclass(frozen=True)
class PostgresSink:
    """Rows into a PostgreSQL table. `mode="append"` inserts them; `mode="upsert"` (the default when a
    `key` is given or the input is a changelog) inserts or updates by `key` (the table needs a unique index
    on exactly those columns) and applies a changelog's deletes. `merge` says how a conflicting row
    updates the stored one: {"column": "SQL expression"} (other columns take the new value) or a whole SET
    clause; `t.` is the stored row and `excluded.` the new one. `where` updates only when it holds, e.g.
    "t.version < excluded.version". `columns` picks the stream's columns to write (default: all);
    `create=True` makes a missing table from the stream's columns (the key as primary key).
    `dead_letters` names a table for rows the database refuses (made if missing). See docs/postgres.md."""

    table: str
    dsn: str = field(repr=False)  # may hold a password: shown redacted
    mode: str | None = None
    key: str | Sequence[str] = ()
    merge: Mapping[str, str] | str | None = None
    where: str | None = None
    columns: Sequence[str] | None = None
    create: bool = False
    dead_letters: str | None = None
    markers: str = "sluice_commits"
    stage_rows: int = 2_000_000  # rows kept in memory before they go to the staging table …
    stage_bytes: int = 64 << 20  # … or this many bytes (Arrow), whichever comes first
    retry_timeout_s: float = 30.0  # how long a lost connection is retried before the run stops
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.key,) if isinstance(self.key, str) else tuple(self.key))
        if self.columns is not None:
            object.__setattr__(self, "columns", tuple(self.columns))
        if self.mode is not None and self.mode not in MODES:
            raise PlanError(f"PostgresSink mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "append" and (self.merge or self.where):
            raise PlanError("PostgresSink: merge and where apply to upserts; give key=... (mode='upsert')")

    def open(self, ctx: SinkContext) -> PostgresWriter:
        return PostgresWriter(self, ctx)

    def describe(self) -> str:
        return f"table {self.table!r} in {redact_text(self.dsn)}"


def ident(name: str) -> Any:
    """`schema.table` or `table` as a quoted identifier."""
    from psycopg import sql

    return sql.Identifier(*name.split("."))


def pg_type(dtype: pl.DataType) -> str:
    """The column type `create=True` gives a Polars type."""
    simple = {pl.Int8: "smallint", pl.Int16: "smallint", pl.Int32: "integer", pl.Int64: "bigint",
              pl.UInt8: "smallint", pl.UInt16: "integer", pl.UInt32: "bigint", pl.UInt64: "numeric",
              pl.Float32: "real", pl.Float64: "double precision", pl.Boolean: "boolean", pl.String: "text",
              pl.Date: "date", pl.Time: "time", pl.Decimal: "numeric"}
    base = dtype.base_type()
    if base in simple:
        return simple[base]
    if isinstance(dtype, pl.Datetime):
        return "timestamptz" if dtype.time_zone else "timestamp"
    raise PlanError(f"PostgresSink cannot write a column of type {dtype}: convert it first (e.g. to JSON text)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact_text(text[0] if text else type(exc).__name__)


class PostgresWriter:
    """The epoch-commit participant of a PostgresSink (see the module docstring)."""

    def __init__(self, spec: PostgresSink, ctx: SinkContext) -> None:
        self.spec, self.ctx = spec, ctx
        self.key: tuple[str, ...] = tuple(spec.key) or tuple(ctx.changelog_key or ())
        self.mode = spec.mode or ("upsert" if self.key else "append")
        if self.mode == "upsert" and not self.key:
            raise PlanError(f"write step {ctx.step!r}: an upsert into {spec.table!r} needs key=[...] (the columns of "
                            "the table's primary key or of a unique index)")
        self.changelog = ctx.changelog_key is not None
        self.rounds = self.mode == "upsert" and bool(spec.merge or spec.where)
        self.writer_id = hashlib.sha1(f"{ctx.txn_prefix}|{spec.table}".encode()).hexdigest()[:12]
        self.conn: Any = None
        self.table_columns: dict[str, str] | None = None  # name → type, once the table is known
        self.columns: tuple[str, ...] | None = None  # what this writer writes
        self.lineage: str | None = None
        self._reset()
        self.applied = 0
        self.dead_lettered = 0
        self._retrying("connecting", self._setup_tables)

    def _reset(self) -> None:
        self.buffer: list[pl.DataFrame] = []
        self.buffered = self.buffered_bytes = 0
        self.stage: str | None = None
        self.chunks: list[list[int]] = []  # per chunk staged: [rounds, has deletes, first seq, end seq]
        self.seq = 0
        self.rejected: list[list[Any]] = []  # [seq, reason, raw] refused while staging (with dead_letters)

    # --- connections ----------------------------------------------------------------------------
    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.spec.dsn, autocommit=True, connect_timeout=max(1, int(self.spec.connect_timeout_s)),
                               application_name=f"sluice {self.ctx.txn_prefix}"[:63])
        conn.execute("SET TIME ZONE 'UTC'")
        return conn

    def _retrying(self, doing: str, fn: Callable[[Any], T]) -> T:
        """Run `fn(connection)`; a lost or refused connection is retried (a new one, backing off) for up to
        `retry_timeout_s`, then the run stops with an error saying what to do. `fn` must be safe to redo:
        each call is one database transaction."""
        import psycopg

        deadline = time.monotonic() + self.spec.retry_timeout_s
        pause = 0.1
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = self._connect()
                return fn(self.conn)
            except psycopg.OperationalError as exc:
                self._drop_connection()
                if time.monotonic() + pause > deadline:
                    raise DatabaseError(
                        f"write step {self.ctx.step!r}: {doing} in {self.spec.describe()} failed: {_first_line(exc)}. "
                        f"Retried for {self.spec.retry_timeout_s:g} s. Nothing uncommitted is visible; once the "
                        "server is back, run again (with the same checkpoint directory, or the same app under "
                        "the Kafka runtime) to finish exactly-once") from None
                log.warning("write step %r: %s failed (%s); retrying", self.ctx.step, doing, _first_line(exc))
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    def _drop_connection(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None

    # --- tables ---------------------------------------------------------------------------------
    def _setup_tables(self, conn: Any) -> None:
        from psycopg import sql

        self._create_if_missing(conn, sql.SQL("CREATE TABLE IF NOT EXISTS {} (writer text, lineage text, epoch bigint "
                                              "NOT NULL, committed_at timestamptz, PRIMARY KEY (writer, lineage))")
                                .format(ident(self.spec.markers)))
        if self.spec.dead_letters:
            self._create_if_missing(conn, sql.SQL("CREATE TABLE IF NOT EXISTS {} (step text, position text, reason text, "
                                                  "raw text, at timestamptz DEFAULT now())")
                                    .format(ident(self.spec.dead_letters)))
        self.table_columns = self._describe(conn)
        if self.table_columns is None and not self.spec.create:
            raise PlanError(f"write step {self.ctx.step!r}: there is no {self.spec.describe()}; create it, or give "
                            "PostgresSink(..., create=True) to make it from the stream's columns")
        if self.table_columns is not None and self.mode == "upsert":
            self._check_unique_key(conn)

    @staticmethod
    def _create_if_missing(conn: Any, statement: Any) -> None:
        import psycopg

        # made at the same moment by another task's writer: fine
        with contextlib.suppress(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
            conn.execute(statement)

    def _describe(self, conn: Any) -> dict[str, str] | None:
        name = ident(self.spec.table).as_string(conn)
        rows = conn.execute("SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
                            "ORDER BY a.attnum", (name,)).fetchall()
        return {r[0]: r[1] for r in rows} or None

    def _check_unique_key(self, conn: Any) -> None:
        name = ident(self.spec.table).as_string(conn)
        rows = conn.execute("SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i JOIN pg_attribute a "
                            "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) "
                            "AND i.indisunique AND i.indpred IS NULL GROUP BY i.indexrelid", (name,)).fetchall()
        if sorted(self.key) not in [list(r[0]) for r in rows]:
            raise PlanError(f"write step {self.ctx.step!r}: upserts by {list(self.key)} need a primary key or unique "
                            f"index on exactly those columns of {self.spec.table!r}; add one (CREATE UNIQUE INDEX ON "
                            f"{self.spec.table} ({', '.join(self.key)})) or give the key the table has")

    def _settle_columns(self, df: pl.DataFrame) -> tuple[str, ...]:
        """The columns this writer writes, checked against the table (made now if `create` and missing)."""
        if self.columns is not None:
            return self.columns
        cols = tuple(self.spec.columns) if self.spec.columns is not None else tuple(c for c in df.columns if c != OP)
        missing_in_stream = [c for c in (*cols, *self.key) if c not in df.columns]
        if missing_in_stream:
            raise PlanError(f"write step {self.ctx.step!r}: the stream has no column(s) {missing_in_stream} "
                            f"(it has {df.columns})")
        if self.table_columns is None:
            self._retrying("creating the table", lambda conn: self._create_table(conn, df, cols))
        assert self.table_columns is not None
        unknown = [c for c in cols if c not in self.table_columns]
        if unknown:
            raise PlanError(f"write step {self.ctx.step!r}: {self.spec.table!r} has no column(s) {unknown}; add them "
                            f"to the table, or write fewer columns (PostgresSink(..., columns=[...]))")
        self.columns = cols
        return cols

    def _create_table(self, conn: Any, df: pl.DataFrame, cols: tuple[str, ...]) -> None:
        from psycopg import sql

        defs = [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(pg_type(df.schema[c]))) for c in cols]
        if self.key:
            defs.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, self.key))))
        self._create_if_missing(conn, sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})")
                                .format(ident(self.spec.table), sql.SQL(", ").join(defs)))
        self.table_columns = self._describe(conn)

    # --- staging --------------------------------------------------------------------------------
    def write(self, df: pl.DataFrame) -> None:
        df = user_columns(df)
        self.buffer.append(df)
        self.buffered += df.height
        self.buffered_bytes += int(df.estimated_size())
        if self.buffered >= self.spec.stage_rows or self.buffered_bytes >= self.spec.stage_bytes:
            self._flush()

    def _chunk(self) -> pl.DataFrame:
        """The buffered rows as staging rows: sequence numbers, the round of each row, its kind."""
        df = pl.concat(self.buffer, how="vertical_relaxed") if len(self.buffer) > 1 else self.buffer[0]
        self.buffer, self.buffered, self.buffered_bytes = [], 0, 0
        cols = self._settle_columns(df)
        n = df.height
        op = pl.col(OP).fill_null("+I") if self.changelog and OP in df.columns else pl.lit("+I")
        df = df.select(pl.int_range(self.seq, self.seq + n, dtype=pl.Int64).alias("_sl_seq"), op.alias("_sl_op"),
                       *[pl.col(c) for c in cols])
        self.seq += n
        df = df.filter(pl.col("_sl_op") != UPDATE_BEFORE)
        if self.mode == "upsert" and not self.rounds:
            df = df.unique(subset=list(self.key), keep="last", maintain_order=True)
        rounds = (pl.int_range(pl.len(), dtype=pl.Int32).over(list(self.key)) + 1) if self.rounds else pl.lit(1, pl.Int32)
        df = df.with_columns(pl.lit(len(self.chunks), pl.Int32).alias("_sl_chunk"), rounds.alias("_sl_round"))
        return df.select(*INTERNAL, *cols)

    def _flush(self) -> None:
        """The buffered rows to the epoch's staging table (one committed transaction: COPY)."""
        import psycopg

        if not self.buffer:
            return
        lo = self.seq
        frame = self._chunk()
        while frame.height:
            try:
                self._retrying("staging rows", lambda conn, f=frame: self._copy(conn, f))  # type: ignore[misc]
                break
            except psycopg.DataError as exc:  # a value the column type refuses: COPY names its line
                frame = self._reject(frame, exc)
        if frame.height:
            deletes = bool((frame["_sl_op"] == DELETE).any())
            self.chunks.append([int(frame.select(pl.col("_sl_round").max()).item() or 1), int(deletes), lo, self.seq])

    def _copy(self, conn: Any, frame: pl.DataFrame) -> None:
        from psycopg import sql

        cols = list(frame.columns)
        with conn.transaction():
            if self.stage is None or not self._stage_exists(conn, self.stage):
                schema = self.spec.table.rsplit(".", 1)[0] + "." if "." in self.spec.table else ""
                self.stage = self.stage or f"{schema}sluice_stage_{self.writer_id}_{uuid.uuid4().hex[:8]}"
                target_cols = sql.SQL(", ").join(sql.Identifier(c) for c in cols[len(INTERNAL):])
                # without checkpoints a crash means starting over: the staging need not survive the server
                kind = sql.SQL("TABLE" if self.ctx.exactly_once else "UNLOGGED TABLE")
                conn.execute(sql.SQL("CREATE {} {} AS SELECT NULL::bigint AS _sl_seq, NULL::integer AS _sl_chunk, "
                                     "NULL::integer AS _sl_round, NULL::text AS _sl_op, {} FROM {} WITH NO DATA")
                             .format(kind, ident(self.stage), target_cols, ident(self.spec.table)))
                conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
                    ident(self.stage), sql.Literal(f"sluice: staged rows of {self.ctx.txn_prefix} into {self.spec.table}")))
            copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
                ident(self.stage), sql.SQL(", ").join(map(sql.Identifier, cols)))
            with conn.cursor().copy(copy) as cp:
                cp.write(frame.write_csv(include_header=False))

    @staticmethod
    def _stage_exists(conn: Any, name: str) -> bool:
        return bool(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (ident(name).as_string(conn),)).fetchone()[0])

    def _reject(self, frame: pl.DataFrame, exc: Any) -> pl.DataFrame:
        context = (exc.diag.context or "") if hasattr(exc, "diag") else ""
        line = re.search(r"line (\d+)", context)
        if line is None:
            raise DatabaseError(f"write step {self.ctx.step!r}: staging rows in {self.spec.describe()} failed: "
                                f"{_first_line(exc)}") from None
        i = int(line.group(1)) - 1
        row = frame.slice(i, 1)
        seq = int(row.item(0, "_sl_seq"))
        raw = row.drop(*INTERNAL).write_ndjson().strip()
        column = re.search(r"column (\S+?):", context)
        reason = _first_line(exc) + (f" (column {column.group(1)})" if column else "")
        if not self.spec.dead_letters:
            raise EncodeError(self.ctx.step, f"row {seq} of the epoch: {raw}", f"{self.spec.table!r} refused it: {reason}",
                              "convert or filter the value upstream, or give PostgresSink(..., dead_letters='<table>') "
                              "to set such rows aside")
        if len(self.rejected) >= MAX_REJECTED:
            raise EncodeError(self.ctx.step, f"row {seq} of the epoch", f"more than {MAX_REJECTED} rows refused "
                              f"in one epoch, the last: {reason}", "fix the stream's types for the table")
        self.rejected.append([seq, reason, raw])
        return frame.filter(pl.col("_sl_seq") != seq)

    def prepare(self, epoch: int) -> dict[str, Any]:
        self._flush()
        if self.lineage is None:
            self.lineage = uuid.uuid4().hex[:12]
        txn: dict[str, Any] = {"epoch": epoch, "lineage": self.lineage}
        if self.stage is not None or self.rejected:
            txn.update(stage=self.stage, columns=list(self.columns or ()), chunks=self.chunks, rows=self.seq,
                       rejected=self.rejected)
        self._reset()
        return txn

    # --- committing -----------------------------------------------------------------------------
    def commit(self, txn: dict[str, Any]) -> None:
        if not txn or (not txn.get("stage") and not txn.get("rejected")):
            return
        self._retrying(f"committing epoch {txn['epoch']}", lambda conn: self._commit_once(conn, txn))

    def _commit_once(self, conn: Any, txn: dict[str, Any]) -> None:
        from psycopg import sql

        epoch, stage = int(txn["epoch"]), txn.get("stage")
        writer, lineage = self.ctx.txn_prefix, str(txn["lineage"])
        markers = ident(self.spec.markers)
        with conn.transaction():
            cur = conn.cursor()
            cur.execute(sql.SQL("INSERT INTO {} (writer, lineage, epoch) VALUES (%s, %s, 0) ON CONFLICT DO NOTHING")
                        .format(markers), (writer, lineage))
            # the row lock serializes two owners of one task (a zombie and its successor): one applies
            done = cur.execute(sql.SQL("SELECT epoch FROM {} WHERE writer = %s AND lineage = %s FOR UPDATE")
                               .format(markers), (writer, lineage)).fetchone()[0]
            if done >= epoch:
                if stage:
                    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident(stage)))
                return
            bad: list[tuple[int, Any]] = []
            if stage:
                if not self._stage_exists(conn, stage):
                    raise DatabaseError(
                        f"write step {self.ctx.step!r}: the staged rows of epoch {epoch} (table {stage}) are gone from "
                        f"{self.spec.describe()}, and the marker says they were never committed (was the table dropped, "
                        "or the database restored from an older backup?). Nothing of the epoch is visible") from None
                bad = self._apply_all(conn, txn)
            if self.spec.dead_letters:
                rows = [(self.ctx.step, f"{writer} epoch {epoch} row {seq}", reason, raw)
                        for seq, reason, raw in txn.get("rejected") or ()]
                rows += [self._dead_letter(conn, stage, epoch, seq, exc) for seq, exc in bad]
                if rows:
                    cur.executemany(sql.SQL("INSERT INTO {} (step, position, reason, raw) VALUES (%s, %s, %s, %s)")
                                    .format(ident(self.spec.dead_letters)), rows)
                    self.dead_lettered += len(rows)
            cur.execute(sql.SQL("UPDATE {} SET epoch = %s, committed_at = now() WHERE writer = %s AND lineage = %s "
                                "AND epoch < %s").format(markers), (epoch, writer, lineage, epoch))
            if stage:
                cur.execute(sql.SQL("DROP TABLE {}").format(ident(stage)))

    def _apply_all(self, conn: Any, txn: dict[str, Any]) -> list[tuple[int, Any]]:
        """Apply the staged rows; rows the table refuses are found by bisection (each half in a savepoint):
        without dead letters the first stops the commit, with them they are returned and the rest applied."""
        import psycopg

        statements = sum(max(1, c[0]) * (1 + c[1]) for c in txn["chunks"])
        if statements >= INDEX_ROUNDS:
            from psycopg import sql

            conn.execute(sql.SQL("CREATE INDEX ON {} (_sl_chunk, _sl_round)").format(ident(txn["stage"])))
        faults = (psycopg.errors.IntegrityError, psycopg.errors.DataError, psycopg.errors.RaiseException)
        bad: list[tuple[int, Any]] = []

        def attempt(lo: int | None, hi: int | None) -> None:
            try:
                with conn.transaction():  # a savepoint
                    self._apply(conn, txn, lo, hi)
            except faults as exc:
                if lo is None or hi is None:
                    lo, hi = 0, int(txn["rows"])
                if hi - lo <= 1:
                    bad.append((lo, exc))
                    if not self.spec.dead_letters:
                        raise self._constraint_error(conn, txn, lo, exc) from None
                    return
                mid = (lo + hi) // 2
                attempt(lo, mid)
                attempt(mid, hi)

        attempt(None, None)
        return bad

    def _apply(self, conn: Any, txn: dict[str, Any], lo: int | None, hi: int | None) -> None:
        from psycopg import sql

        stage, cols = ident(txn["stage"]), [sql.Identifier(c) for c in txn["columns"]]
        collist = sql.SQL(", ").join(cols)
        span = sql.SQL("") if lo is None else sql.SQL(" AND _sl_seq >= {} AND _sl_seq < {}").format(lo, hi)
        cur = conn.cursor()
        if self.mode == "append":
            cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE true{} ORDER BY _sl_seq")
                        .format(ident(self.spec.table), collist, collist, stage, span))
            self.applied += max(cur.rowcount, 0)
            return
        upsert = self._upsert_sql(txn["columns"])
        keys = sql.SQL(" AND ").join(sql.SQL("t.{k} = s.{k}").format(k=sql.Identifier(k)) for k in self.key)
        chunks = txn["chunks"]
        if not self.rounds and len(chunks) > 1:
            # last row wins: each chunk was deduplicated as it was staged; across chunks, in SQL (one pass)
            keylist = sql.SQL(", ").join(map(sql.Identifier, self.key))
            source = sql.SQL("(SELECT DISTINCT ON ({}) * FROM {} WHERE true{} ORDER BY {}, _sl_seq DESC)").format(
                keylist, stage, span, keylist)
            passes: list[tuple[Any, Any, bool]] = [(source, sql.SQL("true"), any(c[1] for c in chunks))]
        else:
            passes = [(stage, sql.SQL("_sl_chunk = {} AND _sl_round = {}").format(chunk, r) + span, bool(deletes))
                      for chunk, (rounds, deletes, _, _) in enumerate(chunks) for r in range(1, rounds + 1)]
        for source, cond, deletes in passes:  # within a pass, each key has one row at most
            if deletes:
                cur.execute(sql.SQL("DELETE FROM {} t USING {} s WHERE {} AND _sl_op = '-D' AND {}")
                            .format(ident(self.spec.table), source, cond, keys))
                self.applied += max(cur.rowcount, 0)
            cur.execute(sql.SQL("INSERT INTO {} AS t ({}) SELECT {} FROM {} s WHERE {} AND _sl_op <> '-D' {}")
                        .format(ident(self.spec.table), collist, collist, source, cond, upsert))
            self.applied += max(cur.rowcount, 0)

    def _upsert_sql(self, columns: Sequence[str]) -> Any:
        from psycopg import sql

        merge = self.spec.merge
        if isinstance(merge, str):
            sets: Any = sql.SQL(merge)
        else:
            given = dict(merge or {})
            pairs = [(c, given.pop(c, f"excluded.{_quote(c)}")) for c in columns if c not in self.key]
            pairs += list(given.items())  # columns the stream does not have (e.g. updated_at = now())
            sets = sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(c), sql.SQL(e)) for c, e in pairs) \
                if pairs else None
        conflict = sql.SQL("ON CONFLICT ({})").format(sql.SQL(", ").join(map(sql.Identifier, self.key)))
        if sets is None:
            return conflict + sql.SQL(" DO NOTHING")
        out = conflict + sql.SQL(" DO UPDATE SET ") + sets
        return out + sql.SQL(" WHERE ") + sql.SQL(self.spec.where) if self.spec.where else out

    def _row_json(self, conn: Any, stage: str | None, seq: int) -> str:
        from psycopg import sql

        if not stage:
            return ""
        row = conn.execute(sql.SQL("SELECT (to_jsonb(s) - '_sl_seq' - '_sl_chunk' - '_sl_round' - '_sl_op')::text "
                                   "FROM {} s WHERE _sl_seq = %s").format(ident(stage)), (seq,)).fetchone()
        return str(row[0]) if row else ""

    @staticmethod
    def _reason(exc: Any) -> tuple[str, str | None]:
        diag = getattr(exc, "diag", None)
        constraint = getattr(diag, "constraint_name", None)
        text = _first_line(exc)
        return (f"{text} (constraint {constraint})" if constraint and constraint not in text else text), constraint

    def _dead_letter(self, conn: Any, stage: str | None, epoch: int, seq: int, exc: Any) -> tuple[str, str, str, str]:
        reason, _ = self._reason(exc)
        return (self.ctx.step, f"{self.ctx.txn_prefix} epoch {epoch} row {seq}", reason, self._row_json(conn, stage, seq))

    def _constraint_error(self, conn: Any, txn: dict[str, Any], seq: int, exc: Any) -> ConstraintError:
        reason, constraint = self._reason(exc)
        with conn.transaction():
            raw = self._row_json(conn, txn.get("stage"), seq)
        return ConstraintError(
            self.ctx.step, f"row {seq} of epoch {txn['epoch']}: {raw}", f"{self.spec.table!r} refused it: {reason}",
            "fix the row upstream or the table, or give PostgresSink(..., dead_letters='<table>') to set such rows "
            "aside; the epoch is recorded, so running again (same checkpoint directory) commits it with the fix",
            constraint)

    # --- abort, recovery ------------------------------------------------------------------------
    def abort(self, txn: dict[str, Any]) -> None:
        stage = (txn or {}).get("stage")
        if stage:
            from psycopg import sql

            self._retrying("dropping a staged epoch", lambda conn: conn.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(ident(stage))))

    def recover(self, txn: dict[str, Any] | None) -> None:
        self._reset()
        self.lineage = str(txn["lineage"]) if txn and txn.get("lineage") else uuid.uuid4().hex[:12]
        if txn and txn.get("epoch") is not None:
            applied = self._retrying("reading the commit marker", self._applied_epoch)
            if applied is not None and applied > int(txn["epoch"]):
                raise SinkAheadError(self.ctx.step, self.spec.describe(), applied, int(txn["epoch"]))
        if txn:
            self.commit(txn)
        self._retrying("dropping staged leftovers", self._drop_strays)

    def _applied_epoch(self, conn: Any) -> int | None:
        """The newest epoch this writer's lineage committed (its marker row), None without one."""
        from psycopg import sql

        if conn.execute("SELECT to_regclass(%s)", (self.spec.markers,)).fetchone()[0] is None:
            return None
        row = conn.execute(sql.SQL("SELECT epoch FROM {} WHERE writer = %s AND lineage = %s")
                           .format(ident(self.spec.markers)), (self.ctx.txn_prefix, self.lineage)).fetchone()
        return None if row is None else int(row[0])

    def _drop_strays(self, conn: Any) -> None:
        """This writer's staging tables: staged after the recorded epoch (or by a zombie), never to commit."""
        from psycopg import sql

        for schema, table in conn.execute("SELECT schemaname, tablename FROM pg_tables WHERE starts_with(tablename, %s)",
                                          (f"sluice_stage_{self.writer_id}_",)).fetchall():
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, table)))

    def metrics(self) -> dict[str, int]:
        out = {"rows_applied": self.applied}
        return {**out, "dead_lettered": self.dead_lettered} if self.spec.dead_letters else out

    def close(self) -> None:
        self._drop_connection()


def _quote(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'

