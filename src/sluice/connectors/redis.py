"""Redis as a sink: HSET / SET / DEL (and expiry) from rows or changelog rows, exactly-once by an epoch key.

Rows become Redis commands in columns: the key template (`"{table}:{id}"`), the values and the whole
RESP encoding of each command are Polars string expressions over the batch, so a batch of 100k rows is
turned into one buffer of commands without a Python loop per row. The buffer is sent as a pipeline.

Exactly-once (a checkpointed `sl.run`, or the Kafka runtime):

    write      each batch is encoded into commands at once (a row that cannot make a key fails here,
               naming the step and the row)
    prepare    the epoch's commands are staged: an Arrow file under the checkpoint's staging directory
               (sl.run), or — under the Kafka runtime, where a task can move to another worker — a list
               in Redis itself (`sluice:staged:<txn_prefix>:<lineage>:<epoch>:<writer>`), which every worker reaches
    commit     WATCH the epoch key `sluice:epoch:<txn_prefix>:<lineage>`; if it holds this epoch or a
               later one, the epoch was applied already (skip); else MULTI, the commands, SET the epoch
               key, DEL the staged list, EXEC. A concurrent writer of the same key (a zombie) makes EXEC
               fail (WATCH), and the retry sees its epoch and skips
    recover    the recorded epoch is committed again (skipped if the key says it was); later staging
               is dropped

Without checkpoints (plain `sl.run`) each batch is sent at once: at-least-once, idempotent for HSET/SET/DEL.
"""

from __future__ import annotations

import json
import string
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl

from sluice.connectors.api import SinkContext
from sluice.connectors.lookup import redact
from sluice.connectors.staging import StagedFiles, lineage_of, new_lineage
from sluice.core.batch import user_columns
from sluice.core.changelog import DELETE, OP, UPDATE_BEFORE
from sluice.core.errors import EncodeError, PlanError, SinkAheadError, SinkError

COMMANDS = ("hset", "set", "del")
SEND_ROWS = 20_000  # without checkpoints: rows per pipeline round trip
CHUNK_BYTES = 32 << 20  # staged in Redis in pieces of at most this size (a Redis string holds 512 MB)
_STAGE_SCHEMA = {"resp": pl.Binary(), "n": pl.Int64()}


@dataclass(frozen=True)
class RedisSink:
    """Write rows to Redis.

    `key`: a template over the row's columns, e.g. `"user:{user_id}"` or `"{table}:{id}"`.
    `command`: "hset" (the `value` columns become the hash's fields; default every column), "set" (one
    `value` column as text, or several / None as a JSON object), or "del".
    `ttl`: an expiry set with each write (PEXPIRE, or SET … PX).
    A changelog input (`Stream.changelog(...)`) deletes the key on -D rows and skips -U rows."""

    url: str
    key: str
    command: str = "hset"
    value: str | Sequence[str] | None = None
    ttl: timedelta | None = None
    timeout_s: float = 30.0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            raise PlanError(f"RedisSink: command must be one of {COMMANDS}, got {self.command!r}")
        if self.ttl is not None and self.ttl.total_seconds() * 1000 < 1:
            raise PlanError(f"RedisSink: ttl must be at least a millisecond, got {self.ttl}")
        _template(self.key)

    def describe(self) -> str:
        return f"redis {redact(self.url)} {self.command.upper()} {self.key}"

    def open(self, ctx: SinkContext) -> RedisWriter:
        return RedisWriter(self, ctx)


def _template(key: str) -> list[tuple[str, str | None]]:
    """The key template as (literal text, column or None) pieces."""
    pieces: list[tuple[str, str | None]] = []
    try:
        parsed = list(string.Formatter().parse(key))
    except ValueError as exc:
        raise PlanError(f"RedisSink: key template {key!r} is malformed ({exc}); write columns as {{name}}") from None
    for literal, name, spec, conv in parsed:
        if spec or conv:
            raise PlanError(f"RedisSink: key template {key!r}: format specs are not supported ({{{name}:{spec}}}); "
                            "format the column in the flow first (with_columns) and name it in the template")
        if name == "":
            raise PlanError(f"RedisSink: key template {key!r} has an empty {{}}; name a column, e.g. {{id}}")
        pieces.append((literal, name))
    return pieces


def _bulk(text: pl.Expr) -> pl.Expr:
    """A string expression as a RESP bulk string ($len CRLF bytes CRLF); null stays null."""
    return pl.concat_str([pl.lit("$"), text.str.len_bytes().cast(pl.String), pl.lit("\r\n"), text, pl.lit("\r\n")])


def _lit_bulk(text: str) -> str:
    return f"${len(text.encode())}\r\n{text}\r\n"


def as_text(df: pl.DataFrame, name: str) -> pl.Expr:
    """A column as Redis text: strings as they are, scalars by Polars' cast, nested values as JSON."""
    dtype = df.schema[name]
    if dtype == pl.String:
        return pl.col(name)
    if dtype.is_nested():
        wrapped = pl.struct(pl.col(name)).struct.json_encode()  # {"name":<json>}
        start = len(json.dumps(name)) + 2
        return pl.when(pl.col(name).is_null()).then(None).otherwise(wrapped.str.slice(start, wrapped.str.len_chars() - start - 1))
    if dtype == pl.Binary:
        return pl.col(name).cast(pl.String)
    return pl.col(name).cast(pl.String)


class RedisWriter:
    """The writer of a RedisSink (see the module docstring)."""

    def __init__(self, spec: RedisSink, ctx: SinkContext) -> None:
        import redis

        self.spec, self.ctx = spec, ctx
        self.template = _template(spec.key)
        self.client = redis.Redis.from_url(spec.url, socket_timeout=spec.timeout_s,
                                           socket_connect_timeout=spec.timeout_s, **spec.options)
        self.pending: list[tuple[bytes, int]] = []  # (commands, how many) of the epoch so far
        self.lineage = new_lineage()
        self.writer_id = uuid.uuid4().hex[:8]  # a zombie and the new owner never share a staging key
        self.files = StagedFiles(Path(ctx.staging_dir) / ctx.step, "redis") if ctx.staging_dir else None
        self.commands = 0  # metrics
        self.epochs_skipped = 0

    # --- encoding -----------------------------------------------------------------------------------
    def _key(self, df: pl.DataFrame) -> pl.Expr:
        missing = [n for _, n in self.template if n is not None and n not in df.columns]
        if missing:
            raise PlanError(f"sink {self.ctx.step!r}: the key template {self.spec.key!r} names {missing[0]!r}, which "
                            f"the stream does not have (its columns: {', '.join(df.columns)})")
        parts: list[pl.Expr] = []
        for literal, name in self.template:
            if literal:
                parts.append(pl.lit(literal))
            if name is not None:
                parts.append(as_text(df, name))
        return pl.concat_str(parts) if parts else pl.lit(self.spec.key)

    def _value_columns(self, df: pl.DataFrame) -> list[str]:
        v = self.spec.value
        names = [c for c in df.columns if c != OP] if v is None else [v] if isinstance(v, str) else list(v)
        missing = [n for n in names if n not in df.columns]
        if missing:
            raise PlanError(f"sink {self.ctx.step!r}: value column {missing[0]!r} is not in the stream "
                            f"(its columns: {', '.join(df.columns)})")
        return names

    def _write_command(self, df: pl.DataFrame, key: pl.Expr) -> tuple[pl.Expr, int]:
        """The RESP text of the write command for each row, and the commands per row."""
        ttl_ms = int(self.spec.ttl.total_seconds() * 1000) if self.spec.ttl is not None else None
        if self.spec.command == "del":
            return pl.concat_str([pl.lit("*2\r\n" + _lit_bulk("DEL")), _bulk(key)]), 1
        names = self._value_columns(df)
        if self.spec.command == "set":
            if isinstance(self.spec.value, str):
                value = as_text(df, self.spec.value)
            else:
                value = pl.struct([pl.col(n) for n in names]).struct.json_encode()
            if ttl_ms is None:
                return pl.concat_str([pl.lit("*3\r\n" + _lit_bulk("SET")), _bulk(key), _bulk(value)]), 1
            return pl.concat_str([pl.lit("*5\r\n" + _lit_bulk("SET")), _bulk(key), _bulk(value),
                                  pl.lit(_lit_bulk("PX") + _lit_bulk(str(ttl_ms)))]), 1
        # HSET key f1 v1 f2 v2 …: a null value leaves its field out of that row's command
        pieces, counts = [], []
        for n in names:
            text = as_text(df, n)
            pieces.append(pl.concat_str([pl.lit(_lit_bulk(n)), _bulk(text)]).fill_null(""))
            counts.append(text.is_not_null().cast(pl.Int64))
        nargs = 2 + 2 * pl.sum_horizontal(counts)
        cmd = pl.concat_str([pl.lit("*"), nargs.cast(pl.String), pl.lit("\r\n" + _lit_bulk("HSET")), _bulk(key), *pieces])
        if ttl_ms is None:
            return cmd, 1
        expire = pl.concat_str([pl.lit("*3\r\n" + _lit_bulk("PEXPIRE")), _bulk(key), pl.lit(_lit_bulk(str(ttl_ms)))])
        return pl.concat_str([cmd, expire]), 2

    def encode(self, df: pl.DataFrame) -> tuple[bytes, int]:
        """A batch as one buffer of RESP commands, and how many commands it holds."""
        df = user_columns(df)
        if df.height == 0:
            return b"", 0
        key = self._key(df)
        write, per_row = self._write_command(df, key)
        delete = pl.concat_str([pl.lit("*2\r\n" + _lit_bulk("DEL")), _bulk(key)])
        if self.ctx.changelog_key is not None and OP in df.columns:
            op = pl.col(OP)
            cmd = pl.when(op == UPDATE_BEFORE).then(pl.lit("")).when(op == DELETE).then(delete).otherwise(write)
            n = pl.when(op == UPDATE_BEFORE).then(0).when(op == DELETE).then(1).otherwise(per_row)
        else:
            cmd, n = write, pl.lit(per_row)
        out = df.select(cmd.alias("cmd"), n.cast(pl.Int64).alias("n"), key.alias("key"))
        bad = out.filter(pl.col("cmd").is_null() | (pl.col("key").is_null() & (pl.col("n") > 0)))
        if bad.height:
            self._reject(df, out)
        if self.spec.command == "hset" and self.ctx.changelog_key is None:
            empty = out.filter(pl.col("cmd").str.starts_with("*2\r\n$4\r\nHSET"))
            if empty.height:
                raise EncodeError(self.ctx.step, "a row written to Redis",
                                  f"every value column is null, so HSET {empty['key'][0]!r} has no field to set",
                                  "fill or drop such rows before the sink")
        return out["cmd"].str.join("").item().encode(), int(out["n"].sum())

    def _reject(self, df: pl.DataFrame, out: pl.DataFrame) -> None:
        idx = out.with_row_index("i").filter(pl.col("key").is_null() & (pl.col("n") > 0))["i"]
        row = df.row(int(idx[0]), named=True) if len(idx) else df.row(0, named=True)
        cols = [n for _, n in self.template if n is not None]
        raise EncodeError(self.ctx.step, f"the row {row!r}",
                          f"the key template {self.spec.key!r} needs {', '.join(cols)}, and one of them is null",
                          "fill or filter out rows without a key before the sink (fill_null / filter), or route them "
                          "to a dead-letter sink with a branch")

    # --- the epoch commit ---------------------------------------------------------------------------
    def write(self, df: pl.DataFrame) -> None:
        if self.ctx.exactly_once:
            resp, n = self.encode(df)
            if n:
                self.pending.append((resp, n))
            return
        for piece in df.iter_slices(SEND_ROWS):  # each round trip stays short on a busy server
            resp, n = self.encode(piece)
            if n:
                self._send(resp, n)

    def _send(self, resp: bytes, n: int) -> None:
        """At-least-once: the commands as a pipeline; errors Redis gives are reported."""
        conn: Any = self.client.connection_pool.get_connection()
        try:
            conn.send_packed_command([resp])
            errors = _read_replies(conn, n)
        except Exception:
            conn.disconnect()
            raise
        finally:
            self.client.connection_pool.release(conn)
        self.commands += n
        if errors:
            raise SinkError(f"sink {self.ctx.step!r}: Redis refused {len(errors)} of {n} commands, the first with "
                            f"'{errors[0]}'. Fix: a key of another type (e.g. a string where HSET writes a hash) must "
                            "be deleted or the key template changed")

    @property
    def epoch_key(self) -> str:
        return f"sluice:epoch:{self.ctx.txn_prefix}:{self.lineage}"

    def _stage_key(self, epoch: int) -> str:
        return f"sluice:staged:{self.ctx.txn_prefix}:{self.lineage}:{epoch}:{self.writer_id}"

    def prepare(self, epoch: int) -> dict[str, Any]:
        pending, self.pending = self.pending, []
        txn: dict[str, Any] = {"epoch": epoch, "lineage": self.lineage}
        if not pending:
            return txn
        n = sum(c for _, c in pending)
        if self.files is not None:
            df = pl.DataFrame({"resp": [r for r, _ in pending], "n": [c for _, c in pending]}, schema=_STAGE_SCHEMA)
            txn["staged"] = self.files.put(self.lineage, epoch, df)
        else:
            key = self._stage_key(epoch)
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(key)
            for chunk in _chunks(pending):
                pipe.rpush(key, chunk)
            pipe.execute()
            txn["staged_key"] = key
        txn["commands"] = n
        return txn

    def _staged(self, txn: dict[str, Any]) -> list[bytes] | None:
        if "staged" in txn:
            df = StagedFiles.get(txn["staged"])
            return None if df is None else list(df["resp"])
        got: Any = self.client.lrange(txn["staged_key"], 0, -1)
        return [bytes(g) for g in got] if got else None

    def commit(self, txn: dict[str, Any]) -> None:
        if "staged" not in txn and "staged_key" not in txn:
            return
        epoch, n = int(txn["epoch"]), int(txn["commands"])
        key = f"sluice:epoch:{self.ctx.txn_prefix}:{txn['lineage']}"
        for _ in range(100):
            conn: Any = self.client.connection_pool.get_connection()
            try:
                outcome = self._commit_on(conn, txn, key, epoch, n)
            except Exception:
                conn.disconnect()
                raise
            finally:
                self.client.connection_pool.release(conn)
            if outcome != "retry":
                break
        else:
            raise SinkError(f"sink {self.ctx.step!r}: the epoch key {key!r} kept changing during 100 attempts to "
                            f"commit epoch {epoch}; another writer with the same flow and step names is running")
        if "staged" in txn:
            StagedFiles.drop(txn["staged"])

    def _commit_on(self, conn: Any, txn: dict[str, Any], key: str, epoch: int, n: int) -> str:
        conn.send_command("WATCH", key)
        conn.read_response()
        conn.send_command("GET", key)
        done = conn.read_response()
        if done is not None and int(done) >= epoch:
            conn.send_command("UNWATCH")
            conn.read_response()
            if int(done) > epoch:
                import logging

                logging.getLogger("sluice.connectors").warning(
                    "sink %r: epoch %d not applied: %s holds the later epoch %s (a newer writer of this task has "
                    "committed; this one is a zombie)", self.ctx.step, epoch, key, int(done))
            self.epochs_skipped += 1
            if "staged_key" in txn:
                self.client.delete(txn["staged_key"])
            return "skipped"
        staged = self._staged(txn)
        if staged is None:
            conn.send_command("UNWATCH")
            conn.read_response()
            raise SinkError(f"sink {self.ctx.step!r}: the staged commands of epoch {epoch} are gone "
                            f"({txn.get('staged') or txn.get('staged_key')}) but {key!r} says the epoch was not "
                            "applied. Either a newer owner of this task recovered it and dropped this writer's "
                            "staging (this writer is a zombie and must stop), or it was deleted by hand")
        tail: list[tuple[str, ...]] = [("SET", key, str(epoch))]
        if "staged_key" in txn:
            tail.append(("DEL", txn["staged_key"]))
        conn.send_packed_command([conn.pack_command("MULTI")[0], *staged,
                                  *(p for c in tail for p in conn.pack_command(*c))])
        errors = _read_replies(conn, 1 + n + len(tail))  # OK, then QUEUED for each command
        if errors:
            conn.send_command("DISCARD")
            conn.read_response()
            raise SinkError(f"sink {self.ctx.step!r}: Redis refused a command of epoch {epoch}: '{errors[0]}'")
        conn.send_command("EXEC")
        result = conn.read_response(disable_decoding=True)
        if result is None:
            return "retry"  # the epoch key changed under WATCH: a concurrent writer; look again
        failed = [r for r in result if isinstance(r, Exception)]
        if failed:
            raise SinkError(f"sink {self.ctx.step!r}: {len(failed)} commands of epoch {epoch} failed inside the "
                            f"transaction (Redis does not roll them back), the first with '{failed[0]}'. Fix: a key of "
                            "another type (e.g. a string where HSET writes a hash) must be deleted or the key "
                            "template changed; the epoch is recorded as applied")
        self.commands += n
        return "committed"

    def abort(self, txn: dict[str, Any]) -> None:
        if "staged" in txn:
            StagedFiles.drop(txn["staged"])
        elif "staged_key" in txn:
            self.client.delete(txn["staged_key"])

    def recover(self, txn: dict[str, Any] | None) -> None:
        self.pending = []
        self.lineage = lineage_of(txn)
        if txn and txn.get("epoch") is not None:
            applied = self.client.get(self.epoch_key)
            if applied is not None and int(applied) > int(txn["epoch"]):
                raise SinkAheadError(self.ctx.step, f"Redis (key {self.epoch_key})", int(applied), int(txn["epoch"]))
        if txn:
            self.commit(txn)
        if self.files is not None:
            self.files.drop_all()
        else:
            pattern = _glob_escape(f"sluice:staged:{self.ctx.txn_prefix}:") + "*"
            stale = list(self.client.scan_iter(match=pattern, count=1000))
            if stale:
                self.client.delete(*stale)

    def close(self) -> None:
        self.client.close()

    def metrics(self) -> dict[str, int]:
        return {"commands": self.commands, "epochs_skipped": self.epochs_skipped}


def _chunks(pending: list[tuple[bytes, int]]) -> list[bytes]:
    """The epoch's command buffers joined into pieces of about CHUNK_BYTES (each holds whole commands)."""
    out: list[bytes] = []
    cur: list[bytes] = []
    size = 0
    for resp, _ in pending:
        if cur and size + len(resp) > CHUNK_BYTES:
            out.append(b"".join(cur))
            cur, size = [], 0
        cur.append(resp)
        size += len(resp)
    if cur:
        out.append(b"".join(cur))
    return out


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _read_replies(conn: Any, n: int) -> list[Exception]:
    """Read `n` replies; the error replies among them (a failing command does not stop the pipeline)."""
    import redis

    errors: list[Exception] = []
    for _ in range(n):
        try:
            conn.read_response(disable_decoding=True)
        except redis.exceptions.ResponseError as exc:
            errors.append(exc)
    return errors
