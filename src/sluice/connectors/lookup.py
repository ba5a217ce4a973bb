"""Lookup tables for enrichment joins: an external store asked for the keys a batch needs.

RedisLookup (hashes) and PostgresLookup (rows of a table). A lookup is by processing time (the store's current value), as in Flink's lookup joins: use a
temporal join over a changelog when results must be reproducible in event time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sluice.core import plain
from sluice.core.errors import PlanError


def redact(url: str) -> str:
    """The URL without its password: secrets never reach messages or logs."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def redact_text(text: str) -> str:
    """A connection string (URL or `key=value` form) without its password."""
    return plain.redact_text(text)


@dataclass(frozen=True)
class RedisLookup:
    """Redis hashes: key `prefix + <join key>`, the given `fields` become columns (strings, or null)."""

    url: str
    fields: tuple[str, ...]
    prefix: str = ""
    timeout_s: float = 5.0
    options: dict[str, Any] = field(default_factory=dict)

    def connect(self) -> _RedisClient:
        if not self.fields:
            raise PlanError("RedisLookup needs the hash fields to fetch, e.g. fields=('name', 'tier')")
        return _RedisClient(self)

    def describe(self) -> str:
        return f"redis {redact(self.url)}"


class _RedisClient:
    def __init__(self, spec: RedisLookup) -> None:
        import redis

        self.spec = spec
        self.client = redis.Redis.from_url(spec.url, socket_timeout=spec.timeout_s,
                                           socket_connect_timeout=spec.timeout_s, decode_responses=True, **spec.options)

    def fetch(self, keys: list[str]) -> list[list[str | None]]:
        """One round trip for all keys: a pipeline of HMGETs."""
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            pipe.hmget(self.spec.prefix + k, list(self.spec.fields))
        return list(pipe.execute())

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True)
class PostgresLookup:
    """Rows of a PostgreSQL table by `key`: the given `columns` become columns of the stream, with the
    table's types (integers, floats, booleans, dates, timestamps; anything else as text). One query per
    batch for the keys the cache misses (`WHERE key = ANY(...)`, which uses the key's index)."""

    dsn: str = field(repr=False)  # may hold a password: shown redacted
    table: str = ""
    key: str = "id"
    columns: tuple[str, ...] = ()
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", (self.columns,) if isinstance(self.columns, str) else tuple(self.columns))

    @property
    def fields(self) -> tuple[str, ...]:
        return self.columns

    def connect(self) -> _PostgresClient:
        if not self.table or not self.columns:
            raise PlanError("PostgresLookup needs the table and the columns to fetch, e.g. "
                            "PostgresLookup(dsn, 'customers', key='id', columns=('name', 'tier'))")
        return _PostgresClient(self)

    def describe(self) -> str:
        return f"postgresql table {self.table!r} at {redact_text(self.dsn)}"


# a PostgreSQL type (format_type's name) → (cast in the query, Polars type); anything else is text
_PG_TYPES: dict[str, tuple[str, Any]] = {}


def _pg_types() -> dict[str, tuple[str, Any]]:
    import polars as pl

    if not _PG_TYPES:
        for names, cast, dtype in [(("smallint", "integer", "bigint"), "bigint", pl.Int64),
                                   (("real", "double precision", "numeric"), "double precision", pl.Float64),
                                   (("boolean",), "boolean", pl.Boolean), (("date",), "date", pl.Date),
                                   (("timestamp with time zone",), "timestamptz", pl.Datetime("us", "UTC")),
                                   (("timestamp without time zone",), "timestamp", pl.Datetime("us"))]:
            for n in names:
                _PG_TYPES[n] = (cast, dtype)
    return _PG_TYPES


class _PostgresClient:
    def __init__(self, spec: PostgresLookup) -> None:
        import polars as pl
        import psycopg
        from psycopg import sql

        self.spec = spec
        self.conn = psycopg.connect(spec.dsn, autocommit=True, connect_timeout=max(1, int(spec.timeout_s)))
        self.conn.execute("SET TIME ZONE 'UTC'")
        table = sql.Identifier(*spec.table.split("."))
        types: dict[str, str] = dict(self.conn.execute(
            "SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) "
            "AND a.attnum > 0 AND NOT a.attisdropped", (table.as_string(self.conn),)).fetchall())
        missing = [c for c in (spec.key, *spec.columns) if c not in types]
        if missing:
            raise PlanError(f"PostgresLookup: {self.spec.describe()} has no column(s) {missing}"
                            + ("" if types else " (is there such a table?)"))
        known = _pg_types()
        self.dtypes = {c: known.get(types[c], ("text", pl.String))[1] for c in spec.columns}
        cols = [sql.SQL("{}::{}").format(sql.Identifier(c), sql.SQL(known.get(types[c], ("text", None))[0]))
                for c in spec.columns]
        self.query = sql.SQL("SELECT {k}::text, {cols} FROM {t} WHERE {k} = ANY(%s::{kt}[])").format(
            k=sql.Identifier(spec.key), cols=sql.SQL(", ").join(cols), t=table, kt=sql.SQL(types[spec.key]))
        self.conn.execute(sql.SQL("SET statement_timeout = {}").format(int(spec.timeout_s * 1000)))

    def fetch(self, keys: list[str]) -> list[list[Any] | None]:
        """One query for all keys; None for a key the table does not have."""
        found = {r[0]: list(r[1:]) for r in self.conn.execute(self.query, (keys,)).fetchall()}
        return [found.get(k) for k in keys]

    def close(self) -> None:
        self.conn.close()
