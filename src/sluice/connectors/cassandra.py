"""Cassandra: rows upserted (with a TTL) into one table, batched per partition; changelogs as upserts and deletes.

Cassandra has no transaction across partitions, so the sink cannot publish an epoch atomically. What it
does instead (docs/cassandra.md has the user's view):

    write      each row is checked against the table (key columns present and not null, types, integer
               ranges); a row the table would reject stops the run with an error naming the row, or goes
               to the sink's dead-letter sink. Under a checkpointed run the rows are held for the epoch.
    prepare    the epoch's rows are staged durably — an Arrow file under the checkpoint's staging
               directory (sl.run), or chunks in the table `sluice_staging` of the keyspace (the Kafka
               runtime, which has no local staging directory) — and given write timestamps: the epoch's
               i-th row is written `USING TIMESTAMP ts + i`, with `ts` chosen now and kept in the
               transaction
    commit     the fence row of this writer in `sluice_commits` (writer → lineage, epoch) is read: an epoch
               at or below it was committed already and is skipped. Otherwise the rows are applied
               (INSERT is an upsert; -D rows of a changelog are DELETEs, -U rows are skipped), grouped
               per partition into UNLOGGED batches run concurrently, and then the fence is advanced with
               a lightweight transaction (`… IF lineage = ? AND epoch = ?`)
    recover    commits the recorded transaction again (skipped if the fence has it), drops what was
               staged after it

Why this is effectively-once for upserts and deletes: every write of an epoch carries the timestamp
recorded with the epoch, so applying it twice (a crash during commit, recovery) writes the same cells
with the same timestamps, and an old epoch applied late (a zombie — an instance replaced by a newer one
but not yet aware — that passed the fence check just before the newer one moved on) loses to the newer
epoch's writes, whose timestamps are larger, in Cassandra's last-write-wins. The fence refuses the
zombie's marker and it stops with an error. Weaker than a transaction: readers can see an epoch half
applied while it commits (each partition's batch is atomic, the epoch is not); a replay restarts the TTL
of the rows it writes; counter columns are refused (an increment applied twice counts twice).
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl

from sluice.connectors.api import SinkContext, staging_lineage
from sluice.core.batch import user_columns
from sluice.core.changelog import DELETE, OP, UPDATE_BEFORE
from sluice.core.deadletter import DEAD_LETTER_SCHEMA, dead_letters, rows_as_json
from sluice.core.errors import CassandraError, EncodeError, PlanError

log = logging.getLogger("sluice.cassandra")

CONSISTENCY = ("ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE")
FENCE_TABLE = "sluice_commits"
STAGING_TABLE = "sluice_staging"
FLUSH_ROWS = 50_000  # without checkpoints, rows are written once this many are held (and at the end)
STAGE_CHUNK = 1 << 20  # bytes of Arrow IPC per staging row (Cassandra refuses mutations above half a commitlog segment)
MAX_TTL_S = 630_720_000  # 20 years: Cassandra's limit
INT_RANGES = {"int": 31, "smallint": 15, "tinyint": 7}
UUID_TEXT = r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
# errors that are the cluster's state, not a row's fault: the writes are retried (they are idempotent)
TRANSIENT = ("Unavailable", "WriteTimeout", "ReadTimeout", "OperationTimedOut", "NoHostAvailable",
             "WriteFailure", "OverloadedErrorMessage", "ConnectionException", "ConnectionShutdown",
             "IsBootstrappingErrorMessage", "CoordinationFailure")


@dataclass(frozen=True)
class CassandraSink:
    """Rows of a stream into a Cassandra table: each row an upsert (`INSERT`, with `ttl` if given), rows of
    one partition sent together in UNLOGGED batches (`batch="partition"`) or one statement per row
    (`batch="row"`), `concurrency` requests in flight. A changelog stream (`stream.changelog(...)`) deletes
    rows on -D and skips -U. The table must exist; the sink's columns must be among its columns and hold
    its whole primary key.

    Under a checkpointed `sl.run` or the Kafka runtime the output is effectively-once for upserts and
    deletes (see docs/cassandra.md); otherwise rows are written as they come (50,000 at a time), at-least-once. The sink
    keeps two tables of its own in the keyspace: `sluice_commits` (the fence: each writer's last
    committed epoch) and, under the Kafka runtime, `sluice_staging`.

    A row the table cannot take (a null key, a value out of the column's range) stops the run with an
    error naming it, or, with `dead_letters=` any sink (e.g. `sl.JsonLinesSink("rejected.jsonl")`), goes
    there with the reason. While the cluster is unavailable, writes are retried for `retry_timeout`."""

    hosts: str | Sequence[str]  # "host:port", several comma-separated, or a list of them (port 9042 if left out)
    keyspace: str
    table: str
    ttl: timedelta | None = None
    consistency: str = "LOCAL_QUORUM"
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never shown: not in errors, explain or to_dict
    local_dc: str | None = None
    batch: str = "partition"  # "partition" | "row"
    batch_rows: int = 100  # statements per UNLOGGED batch (one partition each)
    concurrency: int = 64  # requests in flight
    retry_timeout: timedelta = timedelta(seconds=60)  # how long writes are retried while the cluster is unavailable
    connect_timeout_s: float = 15.0
    dead_letters: Any = None  # a sink for the rows the table rejects (columns step, position, reason, raw)

    def __post_init__(self) -> None:
        if self.consistency.upper() not in CONSISTENCY:
            raise PlanError(f"CassandraSink consistency must be one of {CONSISTENCY}, got {self.consistency!r}")
        if self.batch not in ("partition", "row"):
            raise PlanError(f"CassandraSink batch must be 'partition' or 'row', got {self.batch!r}")
        if self.ttl is not None and not 1 <= self.ttl.total_seconds() <= MAX_TTL_S:
            raise PlanError(f"CassandraSink ttl must be between 1 second and 20 years, got {self.ttl}")
        if not re.fullmatch(r"\w+", self.keyspace) or not re.fullmatch(r"\w+", self.table):
            raise PlanError(f"CassandraSink keyspace and table must be plain names, got {self.keyspace!r}.{self.table!r}")
        hosts = self.hosts.split(",") if isinstance(self.hosts, str) else list(self.hosts)
        object.__setattr__(self, "hosts", tuple(h.strip() for h in hosts if h.strip()))

    def open(self, ctx: SinkContext) -> CassandraWriter:
        return CassandraWriter(self, ctx)

    def contact_points(self) -> list[tuple[str, int]]:
        out = []
        for h in self.hosts:
            host, _, port = h.rpartition(":") if ":" in h else (h, "", "9042")
            out.append((host.strip("[]"), int(port)))
        return out


class Fence(NamedTuple):
    lineage: str
    epoch: int
    ts: int  # the timestamp after the last one written by that epoch


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _error_text(exc: BaseException, secret: str | None) -> str:
    return _redact(f"{type(exc).__name__}: {exc}", secret)[:500]


class _Table:
    """The connection, the table's columns and keys, the statements, and applying rows with timestamps."""

    def __init__(self, spec: CassandraSink, step: str) -> None:
        from cassandra import ConsistencyLevel
        from cassandra.auth import PlainTextAuthProvider
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import (
            DCAwareRoundRobinPolicy,
            ExponentialReconnectionPolicy,
            TokenAwarePolicy,
        )

        self.spec, self.step = spec, step
        self.where = f"{spec.keyspace}.{spec.table} at {','.join(spec.hosts)}"
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=spec.local_dc)),
            consistency_level=getattr(ConsistencyLevel, spec.consistency.upper()),
            serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL if spec.consistency.upper().startswith("LOCAL")
            else ConsistencyLevel.SERIAL,
            request_timeout=30.0)
        auth = PlainTextAuthProvider(spec.username, spec.password) if spec.username else None
        self.cluster = Cluster(contact_points=spec.contact_points(), execution_profiles={EXEC_PROFILE_DEFAULT: profile},
                               auth_provider=auth, connect_timeout=spec.connect_timeout_s,
                               reconnection_policy=ExponentialReconnectionPolicy(0.5, 4.0))
        try:
            self.session = self.cluster.connect()
        except Exception as exc:
            self.cluster.shutdown()
            raise CassandraError(f"write step {step!r}: cannot connect to Cassandra at {','.join(spec.hosts)}: "
                                 f"{_error_text(exc, spec.password)}. Check the address, that the cluster is up, "
                                 "and the username and password") from None
        self.serial = profile.serial_consistency_level
        ks = self.cluster.metadata.keyspaces.get(spec.keyspace)
        meta = ks.tables.get(spec.table) if ks is not None else None
        if meta is None:
            self.close()
            missing = f"keyspace {spec.keyspace!r}" if ks is None else f"table {spec.keyspace}.{spec.table}"
            raise CassandraError(f"write step {step!r}: {missing} does not exist at {','.join(spec.hosts)}; "
                                 "create it first (CREATE KEYSPACE / CREATE TABLE), or check the names")
        self.types = {name: col.cql_type for name, col in meta.columns.items()}
        counters = [n for n, t in self.types.items() if t == "counter"]
        if counters:
            self.close()
            raise PlanError(f"write step {step!r}: {spec.keyspace}.{spec.table} has counter columns {counters}; "
                            "an increment applied twice counts twice, so the sink does not write counters. "
                            "Write the totals as plain values (e.g. a window's sl.agg.count() into a bigint)")
        self.partition_key = [c.name for c in meta.partition_key]
        self.key = self.partition_key + [c.name for c in meta.clustering_key]
        self.inserts: dict[tuple[str, ...], Any] = {}
        self.delete = self._prepare(f"DELETE FROM {self._t()} USING TIMESTAMP ? WHERE "
                                    + " AND ".join(f'"{k}" = ?' for k in self.key))
        self.upserted = self.deleted = 0

    def _t(self, table: str | None = None) -> str:
        return f'"{self.spec.keyspace}"."{table or self.spec.table}"'

    def _prepare(self, cql: str) -> Any:
        try:
            stmt = self.session.prepare(cql)
        except Exception as exc:
            raise CassandraError(f"write step {self.step!r}: Cassandra refused {cql!r}: "
                                 f"{_error_text(exc, self.spec.password)}") from None
        stmt.is_idempotent = True  # every write carries its own timestamp: safe to retry
        return stmt

    def insert(self, columns: tuple[str, ...]) -> Any:
        stmt = self.inserts.get(columns)
        if stmt is None:
            using = f"USING TTL {int(self.spec.ttl.total_seconds())} AND TIMESTAMP ?" if self.spec.ttl else "USING TIMESTAMP ?"
            names = ", ".join(f'"{c}"' for c in columns)
            stmt = self.inserts[columns] = self._prepare(
                f"INSERT INTO {self._t()} ({names}) VALUES ({', '.join('?' * len(columns))}) {using}")
        return stmt

    def execute(self, cql: str | Any, params: Sequence[Any] = (), serial: bool = False) -> Any:
        """One statement, retried while the cluster is unavailable."""
        from cassandra.query import SimpleStatement

        if isinstance(cql, str):
            cql = SimpleStatement(cql, serial_consistency_level=self.serial if serial else None)
        deadline = time.monotonic() + self.spec.retry_timeout.total_seconds()
        while True:
            try:
                return self.session.execute(cql, params)
            except Exception as exc:
                self._retry_or_raise(exc, deadline, "a statement")

    def _retry_or_raise(self, exc: Exception, deadline: float, what: str) -> None:
        if type(exc).__name__ not in TRANSIENT:
            raise CassandraError(f"write step {self.step!r}: Cassandra refused {what} on {self.where}: "
                                 f"{_error_text(exc, self.spec.password)}") from None
        if time.monotonic() >= deadline:
            raise CassandraError(f"write step {self.step!r}: Cassandra at {','.join(self.spec.hosts)} did not take "
                                 f"{what} for {self.spec.retry_timeout} ({_error_text(exc, self.spec.password)}). "
                                 "Nothing is lost: bring the cluster back and run again with the same checkpoint "
                                 "directory; the epoch is written again (its writes are idempotent)") from None
        log.warning("write step %r: Cassandra unavailable (%s); retrying", self.step, type(exc).__name__)
        time.sleep(1.0)

    # --- checking rows ------------------------------------------------------------------------------
    def check(self, rows: pl.DataFrame, changelog: bool) -> tuple[pl.DataFrame, list[tuple[int, str]]]:
        """The rows the table can take, and (row, reason) for those it cannot. Columns that do not fit
        at all (unknown, a missing key, a type that cannot convert) are the plan's fault: PlanError."""
        cols = [c for c in rows.columns if not (changelog and c == OP)]
        unknown = [c for c in cols if c not in self.types]
        missing = [k for k in self.key if k not in cols]
        if unknown or missing:
            problem = (f"columns {unknown} are not in the table" if unknown else "") + \
                      ("; " if unknown and missing else "") + \
                      (f"the table's primary key {self.key} needs {missing}" if missing else "")
            raise PlanError(f"write step {self.step!r}: {problem} ({self.spec.keyspace}.{self.spec.table} has "
                            f"{list(self.types)}). Select and rename the columns before the sink")
        for c in cols:
            if not _compatible(rows.schema[c], self.types[c]):
                raise PlanError(f"write step {self.step!r}: column {c!r} is {rows.schema[c]} but the table's "
                                f"column is {self.types[c]}; cast it before the sink (e.g. .with_columns(...cast(...)))")
        # (what is wrong, why, whether it matters for a delete too: a delete needs only its key)
        checks: list[tuple[pl.Expr, str, bool]] = []
        for k in self.key:
            checks.append((pl.col(k).is_null(), f"column {k!r} (part of the primary key) is null", True))
            if rows.schema[k] == pl.String:
                checks.append((pl.col(k).str.len_bytes() > 65535, f"column {k!r} (a key) is longer than 65535 bytes", True))
        if len(self.partition_key) == 1 and rows.schema[self.partition_key[0]] in (pl.String, pl.Binary):
            k = self.partition_key[0]
            empty = pl.col(k).str.len_bytes() == 0 if rows.schema[k] == pl.String else pl.col(k).bin.size() == 0
            checks.append((empty, f"column {k!r} (the partition key) is empty, which Cassandra refuses", True))
        for c in cols:
            bits = INT_RANGES.get(self.types[c])
            if bits and rows.schema[c].is_integer():
                lo, hi = -(1 << bits), (1 << bits) - 1
                checks.append((~pl.col(c).is_between(lo, hi), f"column {c!r} is out of the range of "
                               f"{self.types[c]} ({lo}..{hi})", c in self.key))
            if self.types[c] in ("uuid", "timeuuid") and rows.schema[c] == pl.String:
                checks.append((~pl.col(c).str.contains(UUID_TEXT), f"column {c!r} is not a UUID", c in self.key))
        if changelog:
            checks.append((pl.col(OP).is_null() | ~pl.col(OP).is_in(["+I", "-U", "+U", "-D"]), "its _op is not a row kind", True))
            checks = [(e if on_deletes else e & (pl.col(OP) != DELETE), why, on_deletes) for e, why, on_deletes in checks]
        if not checks:
            return rows, []
        flags = rows.select([e.fill_null(False).alias(f"c{i}") for i, (e, _, _) in enumerate(checks)])
        bad_any = flags.select(pl.any_horizontal(pl.all()).alias("bad"))["bad"]
        if not bad_any.any():
            return rows, []
        bad: list[tuple[int, str]] = []
        for i in bad_any.arg_true().to_list():
            bad.append((i, "; ".join(checks[j][1] for j in range(len(checks)) if flags[f"c{j}"][i])))
        return rows.filter(~bad_any), bad

    # --- applying rows ------------------------------------------------------------------------------
    def apply(self, rows: pl.DataFrame, ts0: int, changelog: bool) -> None:
        """Write the rows, the i-th `USING TIMESTAMP ts0 + i`: upserts, deletes for -D, nothing for -U."""
        if rows.height == 0:
            return
        cols = tuple(c for c in rows.columns if not (changelog and c == OP))
        values = self._values(rows, cols)
        ops = rows[OP].to_list() if changelog else None
        insert = self.insert(cols)
        key_at = [cols.index(k) for k in self.key]
        items: list[tuple[Any, tuple[Any, ...]] | None] = []
        for i, row in enumerate(values):
            op = ops[i] if ops is not None else None
            if op == UPDATE_BEFORE:
                items.append(None)
            elif op == DELETE:
                items.append((self.delete, (ts0 + i, *(row[j] for j in key_at))))
            else:
                items.append((insert, (*row, ts0 + i)))
        live = [i for i, it in enumerate(items) if it is not None]
        deletes = sum(1 for it in items if it is not None and it[0] is self.delete)
        self.deleted += deletes
        self.upserted += len(live) - deletes
        if self.spec.batch == "row":
            self._run([items[i] for i in live], [[i] for i in live], items, rows)  # type: ignore[misc]
        else:
            self._run_batches(items, rows)

    def _values(self, rows: pl.DataFrame, cols: tuple[str, ...]) -> list[tuple[Any, ...]]:
        exprs = []
        for c in cols:
            dtype, cql = rows.schema[c], self.types[c]
            if isinstance(dtype, pl.Datetime) and cql == "timestamp":
                exprs.append(pl.col(c).dt.epoch("ms"))  # the driver takes milliseconds; no datetime objects
            elif isinstance(dtype, pl.Categorical | pl.Enum):
                exprs.append(pl.col(c).cast(pl.String))
            else:
                exprs.append(pl.col(c))
        values = rows.select(exprs).rows()
        uuids = {j for j, c in enumerate(cols) if self.types[c] in ("uuid", "timeuuid") and rows.schema[c] == pl.String}
        if uuids:
            values = [tuple(uuid.UUID(v) if j in uuids and v is not None else v for j, v in enumerate(r)) for r in values]
        return values

    def _run_batches(self, items: list[tuple[Any, tuple[Any, ...]] | None], rows: pl.DataFrame) -> None:
        """Rows of one partition together: UNLOGGED batches of up to `batch_rows` statements (atomic and
        isolated within the partition; no batch log, which multi-partition batches would need)."""
        from cassandra.query import BatchStatement, BatchType

        groups = (rows.select(self.partition_key).with_row_index("__i")
                  .group_by(self.partition_key, maintain_order=True).agg("__i")["__i"].to_list())
        work: list[tuple[Any, Any]] = []
        members: list[list[int]] = []
        size = max(1, self.spec.batch_rows)
        for group in groups:
            live = [i for i in group if items[i] is not None]
            for start in range(0, len(live), size):
                part = live[start:start + size]
                if len(part) == 1:
                    work.append(items[part[0]])
                else:
                    b = BatchStatement(batch_type=BatchType.UNLOGGED)
                    b.is_idempotent = True
                    for i in part:
                        stmt, params = items[i]
                        try:
                            b.add(stmt, params)  # binds: a value the driver cannot serialize fails here
                        except Exception as exc:
                            raise self._row_error(rows, i, exc) from None
                    work.append((b, None))
                members.append(part)
        self._run(work, members, items, rows)

    def _run(self, work: list[tuple[Any, Any]], members: list[list[int]],
             items: list[tuple[Any, tuple[Any, ...]] | None], rows: pl.DataFrame) -> None:
        """Run the statements concurrently; retry those that failed for the cluster's sake; name the row
        of one that failed for its own."""
        from cassandra.concurrent import execute_concurrent

        deadline = time.monotonic() + self.spec.retry_timeout.total_seconds()
        todo = list(range(len(work)))
        while todo:
            results = execute_concurrent(self.session, [work[i] for i in todo], concurrency=self.spec.concurrency,
                                         raise_on_first_error=False)
            failed = [(i, r.result_or_exc) for i, r in zip(todo, results, strict=True) if not r.success]
            if not failed:
                return
            fatal = [(i, e) for i, e in failed if type(e).__name__ not in TRANSIENT]
            if fatal:
                i, exc = fatal[0]
                raise self._find_bad_row(members[i], items, rows, exc)
            self._retry_or_raise(failed[0][1], deadline, f"{len(failed)} of {len(todo)} writes")
            todo = [i for i, _ in failed]

    def _find_bad_row(self, candidates: list[int], items: list[tuple[Any, tuple[Any, ...]] | None],
                      rows: pl.DataFrame, exc: BaseException) -> EncodeError:
        """A statement (or batch) failed for a reason of its own: the error that names its row, found by
        writing its rows one at a time (each with its own timestamp, so this is the epoch's own write)."""
        for i in candidates if len(candidates) > 1 else ():
            stmt, params = items[i]  # type: ignore[misc]
            try:
                self.session.execute(stmt, params)
            except Exception as row_exc:
                if type(row_exc).__name__ not in TRANSIENT:
                    return self._row_error(rows, i, row_exc)
        return self._row_error(rows, candidates[0], exc)

    def _row_error(self, rows: pl.DataFrame, i: int, exc: BaseException) -> EncodeError:
        raw = rows_as_json(rows.slice(i, 1))[0]
        return EncodeError(self.step, f"row {i} of the epoch written to {self.spec.keyspace}.{self.spec.table}",
                           f"Cassandra refused it: {_error_text(exc, self.spec.password)}; it reads {raw[:300]!r}",
                           "make the table accept such rows (e.g. ALTER TABLE) or filter them out before the sink; "
                           "a recorded epoch is written again when the run resumes from its checkpoint directory")

    # --- the fence ----------------------------------------------------------------------------------
    def ensure_fence(self) -> None:
        self.execute(f"CREATE TABLE IF NOT EXISTS {self._t(FENCE_TABLE)} "
                     "(writer text PRIMARY KEY, lineage text, epoch bigint, ts bigint)")
        self.read_fence_stmt = self._prepare(f"SELECT lineage, epoch, ts FROM {self._t(FENCE_TABLE)} WHERE writer = ?")
        self.read_fence_stmt.consistency_level = self.serial  # sees every accepted lightweight transaction
        self.insert_fence = self._prepare(f"INSERT INTO {self._t(FENCE_TABLE)} (writer, lineage, epoch, ts) "
                                          "VALUES (?, ?, ?, ?) IF NOT EXISTS")
        self.update_fence = self._prepare(f"UPDATE {self._t(FENCE_TABLE)} SET lineage = ?, epoch = ?, ts = ? "
                                          "WHERE writer = ? IF lineage = ? AND epoch = ?")
        for s in (self.insert_fence, self.update_fence):
            s.serial_consistency_level = self.serial

    def read_fence(self, writer: str) -> Fence | None:
        row = self.execute(self.read_fence_stmt, (writer,)).one()
        return Fence(row.lineage, row.epoch, row.ts) if row is not None else None

    def advance_fence(self, writer: str, seen: Fence | None, new: Fence) -> Fence | None:
        """Compare-and-set the fence from `seen` to `new`; None if done, else what the fence holds now."""
        if seen is None:
            r = self.execute(self.insert_fence, (writer, new.lineage, new.epoch, new.ts))
        else:
            r = self.execute(self.update_fence, (new.lineage, new.epoch, new.ts, writer, seen.lineage, seen.epoch))
        row = r.one()
        if row[0]:  # [applied]
            return None
        return Fence(row.lineage, row.epoch, getattr(row, "ts", 0))  # a refused UPDATE shows only the IF columns

    def close(self) -> None:
        self.cluster.shutdown()


def _compatible(dtype: pl.DataType, cql: str) -> bool:
    """Whether a column of this dtype can be written to a column of this CQL type (roughly: the driver
    decides the rest, and a value it cannot take is named by the error)."""
    base = cql.split("<")[0].strip()
    if dtype == pl.Null:
        return True
    if dtype.is_integer():
        return base in ("int", "bigint", "smallint", "tinyint", "varint", "timestamp", "float", "double", "decimal")
    if dtype.is_float() or isinstance(dtype, pl.Decimal):
        return base in ("float", "double", "decimal")
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return base in ("text", "varchar", "ascii", "uuid", "timeuuid", "inet")
    if dtype == pl.Boolean:
        return base == "boolean"
    if isinstance(dtype, pl.Datetime):
        return base == "timestamp"
    if dtype == pl.Date:
        return base in ("date", "timestamp")
    if dtype == pl.Time:
        return base == "time"
    if dtype == pl.Binary:
        return base == "blob"
    if isinstance(dtype, pl.List | pl.Array):
        return base in ("list", "set", "vector", "frozen")
    return True


# --- staging -----------------------------------------------------------------------------------------
class _FileStage:
    """Epochs staged as Arrow files under the checkpoint's staging directory (a checkpointed sl.run)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def put(self, epoch: int, rows: pl.DataFrame) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{epoch:08d}-{uuid.uuid4().hex[:8]}.arrow"
        rows.write_ipc(path, compression="lz4")
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return {"staged": str(path)}

    def get(self, txn: dict[str, Any]) -> pl.DataFrame | None:
        path = txn.get("staged")
        return pl.read_ipc(path) if path and os.path.exists(path) else None

    def drop(self, txn: dict[str, Any]) -> None:
        if txn.get("staged"):
            Path(txn["staged"]).unlink(missing_ok=True)

    def drop_all(self) -> None:
        if self.dir.exists():
            for stray in self.dir.glob("*.arrow"):
                stray.unlink()


class _TableStage:
    """Epochs staged as chunks of Arrow IPC in the keyspace's `sluice_staging` table (the Kafka runtime:
    a task may be recovered on another machine, so its staged epoch must live in the cluster)."""

    def __init__(self, table: _Table, writer: str) -> None:
        self.table, self.writer = table, writer
        t = table._t(STAGING_TABLE)
        table.execute(f"CREATE TABLE IF NOT EXISTS {t} (writer text, stage uuid, chunk int, data blob, "
                      "PRIMARY KEY ((writer), stage, chunk)) WITH default_time_to_live = 1209600 "
                      "AND gc_grace_seconds = 3600")
        self.put_stmt = table._prepare(f"INSERT INTO {t} (writer, stage, chunk, data) VALUES (?, ?, ?, ?)")
        self.get_stmt = table._prepare(f"SELECT chunk, data FROM {t} WHERE writer = ? AND stage = ?")
        self.drop_stmt = table._prepare(f"DELETE FROM {t} WHERE writer = ? AND stage = ?")
        self.drop_all_stmt = table._prepare(f"DELETE FROM {t} WHERE writer = ?")

    def put(self, epoch: int, rows: pl.DataFrame) -> dict[str, Any]:
        buf = io.BytesIO()
        rows.write_ipc(buf, compression="zstd")
        data, stage = buf.getvalue(), uuid.uuid4()
        chunks = [data[i:i + STAGE_CHUNK] for i in range(0, len(data), STAGE_CHUNK)] or [b""]
        for n, chunk in enumerate(chunks):
            self.table.execute(self.put_stmt, (self.writer, stage, n, chunk))
        return {"stage": str(stage), "chunks": len(chunks)}

    def get(self, txn: dict[str, Any]) -> pl.DataFrame | None:
        found = sorted(self.table.execute(self.get_stmt, (self.writer, uuid.UUID(txn["stage"]))).all())
        if len(found) != txn["chunks"]:
            return None
        return pl.read_ipc(io.BytesIO(b"".join(bytes(d) for _, d in found)))

    def drop(self, txn: dict[str, Any]) -> None:
        if txn.get("stage"):
            self.table.execute(self.drop_stmt, (self.writer, uuid.UUID(txn["stage"])))

    def drop_all(self) -> None:
        self.table.execute(self.drop_all_stmt, (self.writer,))


def _now_us() -> int:
    return time.time_ns() // 1000


class CassandraWriter:
    """A CassandraSink's participant in the epoch commit (see the module docstring)."""

    def __init__(self, spec: CassandraSink, ctx: SinkContext) -> None:
        self.spec, self.ctx = spec, ctx
        self.changelog = ctx.changelog_key is not None
        self.db = _Table(spec, ctx.step)
        self.fenced = ctx.exactly_once
        self.writer = ctx.txn_prefix
        self.pending: list[pl.DataFrame] = []  # the epoch's rows (without checkpoints: up to FLUSH_ROWS of them)
        self.held = 0
        self.given = 0  # rows given to the sink, for positions
        self.next_ts = _now_us()
        self.committed = self.skipped = self.dead_lettered = 0
        self.took_over = False  # this writer has advanced the fence (since then, another lineage there means a newer job)
        self.dead = None
        if spec.dead_letters is not None:
            self.dead = spec.dead_letters.open(replace(ctx, step=f"{ctx.step}-dead-letters", changelog_key=None,
                                                       schema=DEAD_LETTER_SCHEMA))
        self.stage: _FileStage | _TableStage | None = None
        self.lineage = ""
        if self.fenced:
            self.db.ensure_fence()
            if ctx.staging_dir is not None:
                self.stage = _FileStage(Path(ctx.staging_dir) / ctx.step)
                self.lineage = staging_lineage(ctx.staging_dir)
            else:
                self.stage = _TableStage(self.db, self.writer)
                self.lineage = uuid.uuid4().hex[:12]  # a task that has recorded nothing yet starts a lineage

    def write(self, df: pl.DataFrame) -> None:
        rows = user_columns(df)
        if rows.height == 0:
            return
        good, bad = self.db.check(rows, self.changelog)
        if bad:
            self._reject(rows, bad)
        self.given += rows.height
        if good.height == 0:
            return
        self.pending.append(good)
        self.held += good.height
        if not self.fenced and self.held >= FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Without checkpoints: write what is held (held back a little, so that a partition's rows go in
        fewer, fuller batches)."""
        if self.pending:
            rows = pl.concat(self.pending, how="diagonal_relaxed") if len(self.pending) > 1 else self.pending[0]
            self.pending, self.held = [], 0
            self.db.apply(rows, self._stamps(rows.height), self.changelog)

    def _reject(self, rows: pl.DataFrame, bad: list[tuple[int, str]]) -> None:
        raws = rows_as_json(rows[[i for i, _ in bad]])
        target = f"{self.spec.keyspace}.{self.spec.table}"
        positions = [f"row {self.given + i} written to {target}" for i, _ in bad]
        if self.dead is None:
            raise EncodeError(self.ctx.step, positions[0],
                              f"{len(bad)} row(s) cannot be written, the first because {bad[0][1]}; it reads {raws[0][:300]!r}",
                              "correct such rows upstream (e.g. filter them out), or set them aside: give the sink "
                              "dead_letters=<a sink>, e.g. sl.JsonLinesSink('rejected.jsonl')")
        reasons = [f"the table {target} cannot take it: {why}" for _, why in bad]
        self.dead.write(dead_letters(self.ctx.step, positions, reasons, raws).df)
        self.dead_lettered += len(bad)

    def _stamps(self, n: int) -> int:
        """The first of `n` write timestamps (microseconds), after every one this writer gave before."""
        ts = max(_now_us(), self.next_ts)
        self.next_ts = ts + n
        return ts

    def metrics(self) -> dict[str, int]:
        return {"upserted": self.db.upserted, "deleted": self.db.deleted, "epochs_committed": self.committed,
                "epochs_skipped": self.skipped, "dead_lettered": self.dead_lettered}

    # --- the epoch commit ---------------------------------------------------------------------------
    def prepare(self, epoch: int) -> dict[str, Any]:
        if not self.fenced:
            self._flush()
        dead = self.dead.prepare(epoch) if self.dead is not None else None
        txn: dict[str, Any] = {"dead": dead} if dead else {}
        if not self.fenced or not self.pending:
            return {**txn, "epoch": epoch, "lineage": self.lineage} if self.fenced else txn
        assert self.stage is not None
        rows = pl.concat(self.pending, how="diagonal_relaxed") if len(self.pending) > 1 else self.pending[0]
        self.pending, self.held = [], 0
        ts = self._stamps(rows.height)
        return {**txn, "epoch": epoch, "lineage": self.lineage, "ts": ts, "rows": rows.height, **self.stage.put(epoch, rows)}

    def commit(self, txn: dict[str, Any]) -> None:
        if txn.get("rows"):
            self._commit(txn, self.db.read_fence(self.writer))
        if self.dead is not None:
            self.dead.commit(txn.get("dead") or {})

    def _commit(self, txn: dict[str, Any], fence: Fence | None) -> None:
        assert self.stage is not None
        epoch, lineage = int(txn["epoch"]), str(txn["lineage"])
        if fence is not None and fence.lineage == lineage and fence.epoch >= epoch:
            self.skipped += 1  # committed before (a crash after the rows and the fence, before the manifest moved on)
            self.stage.drop(txn)
            return
        if fence is not None and fence.lineage != lineage and self.took_over:
            raise self._fenced(fence, epoch)
        rows = self.stage.get(txn)
        if rows is None:  # gone: committed meanwhile by a twin (the task's new owner), which dropped them?
            now = self.db.read_fence(self.writer)
            if now is not None and now.lineage == lineage and now.epoch >= epoch:
                self.skipped += 1
                return
            raise CassandraError(f"write step {self.ctx.step!r}: the staged rows of epoch {epoch} are gone, and the "
                                 f"fence of {self.writer!r} in {self.spec.keyspace}.{FENCE_TABLE} says it was not "
                                 "committed; was the staging (directory or table) cleared by hand?")
        self.db.apply(rows, int(txn["ts"]), self.changelog)
        new = Fence(lineage, epoch, int(txn["ts"]) + int(txn["rows"]))
        seen = fence
        while True:
            now = self.db.advance_fence(self.writer, seen, new)
            if now is None:
                break
            if now.lineage == lineage and now.epoch == epoch:
                break  # a twin (the task's new owner recovering it) committed the same epoch: same rows, same timestamps
            if (now.lineage == lineage and now.epoch > epoch) or (now.lineage != lineage and self.took_over):
                raise self._fenced(now, epoch)
            seen = now  # another lineage was there, or ours at an older epoch: this epoch supersedes it
        self.took_over = True
        self.committed += 1
        self.stage.drop(txn)

    def _fenced(self, fence: Fence, epoch: int) -> CassandraError:
        return CassandraError(
            f"write step {self.ctx.step!r}: fenced — while this instance committed epoch {epoch}, the writer "
            f"{self.writer!r} moved on to epoch {fence.epoch} (lineage {fence.lineage}) in "
            f"{self.spec.keyspace}.{FENCE_TABLE}: a newer instance of this task (or another job of the same "
            "flow and step) is writing. This instance is stale and stops; its rows carry older timestamps, "
            "so they do not overwrite the newer ones")

    def abort(self, txn: dict[str, Any]) -> None:
        if self.stage is not None:
            self.stage.drop(txn)
        if self.dead is not None:
            self.dead.abort(txn.get("dead") or {})

    def recover(self, txn: dict[str, Any] | None) -> None:
        self.pending, self.held = [], 0
        if self.fenced:
            assert self.stage is not None
            fence = self.db.read_fence(self.writer)
            if txn and txn.get("lineage"):
                self.lineage = str(txn["lineage"])
            if txn and txn.get("rows"):  # the next epoch's timestamps come after the recorded one's
                self.next_ts = max(self.next_ts, int(txn["ts"]) + int(txn["rows"]))
            if fence is not None:
                self.next_ts = max(self.next_ts, fence.ts)
                recorded = int(txn["epoch"]) if txn and txn.get("epoch") is not None else 0
                if fence.lineage == self.lineage and fence.epoch > recorded:
                    raise CassandraError(
                        f"write step {self.ctx.step!r}: the fence of {self.writer!r} in {self.spec.keyspace}."
                        f"{FENCE_TABLE} says epoch {fence.epoch} was committed, but the last recorded epoch is "
                        f"{recorded}: the checkpoints are older than the table (restored from a backup?). Start "
                        "with a new checkpoint directory, or delete that fence row to accept writing again")
            if txn and txn.get("rows"):
                self._commit(txn, fence)
            self.stage.drop_all()  # staged after the recorded epoch: never recorded
        if self.dead is not None:
            self.dead.recover((txn or {}).get("dead"))

    def close(self) -> None:
        if self.dead is not None:
            self.dead.close()
        self.db.close()
