"""Helpers for the tests against a real PostgreSQL (the `postgres_dsn` fixture in conftest.py)."""

from __future__ import annotations

import uuid
from typing import Any

import polars as pl


def fresh_database(dsn: str) -> str:
    """A new, empty database on the server of `dsn`; its DSN."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return dsn.rsplit("/", 1)[0] + "/" + name


def execute(dsn: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            conn.execute(s)


def query(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def table(dsn: str, name: str, order: str) -> pl.DataFrame:
    """A table as a frame (via COPY … TO, CSV), sorted."""
    import io

    import psycopg

    with psycopg.connect(dsn) as conn:
        buf = io.BytesIO()
        with conn.cursor().copy(f"COPY (SELECT * FROM {name} ORDER BY {order}) TO STDOUT (FORMAT csv, HEADER)") as cp:
            for chunk in cp:
                buf.write(chunk)
    buf.seek(0)
    return pl.read_csv(buf, infer_schema_length=None)
