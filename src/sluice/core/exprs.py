"""Which column expressions a stateless step may hold: those that compute each row from that row alone.

A stateless step (filter, select, with_columns, branch, key_by) runs its expressions on one micro-batch at
a time. An expression that looks at other rows (a window `.over()`, an aggregate such as `.sum()` that
Polars broadcasts to every row, a cumulative, shifted, ranked, sorted or sliced column) would compute
over whatever rows share the batch, so its result would depend on the batch size (DESIGN.md §3).

The expression tree is read from Polars' own serialization (`expr.meta.serialize(format="json")`): every
node is `{"Kind": payload}`. Element-wise node kinds pass; the kinds and functions below are refused.
Inside `list.eval` / `arr.eval` the expression runs on each row's own list, so it is not looked at; the
list, array and struct namespaces work within a row. An expression holding a Python function cannot be
serialized; its printed form is checked for the same names instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import polars as pl

# node kinds, normalized (lower case, no underscores) -------------------------------------------------
WINDOWS = {"over", "rolling"}
ORDER_OR_LENGTH = {"sort", "sortby", "slice", "filter", "gather", "explode"}
LEAVES = {"column", "literal", "field", "selector", "nth", "element", "dtypecolumn", "columns"}
AGGREGATES = {"sum", "mean", "min", "max", "first", "last", "count", "std", "var", "median", "nunique",
              "implode", "item", "len"}
# functions that reduce the batch (Polars broadcasts the result to every row)
REDUCING = {
    "quantile", "product", "nullcount", "entropy", "skew", "kurtosis", "correlation", "covariance",
    "approxnunique", "maxby", "minby", "argmin", "argmax", "mode", "any", "all", "hasnulls", "concatvertical",
    "and", "or", "xor",
}
# functions that look at other rows of the batch: its order, neighbours, distinctness, or its length
ROW_DEPENDENT = {
    "shift", "shiftandfill", "diff", "pctchange", "rank", "reverse", "interpolate", "interpolateby",
    "fillnullwithstrategy", "backwardfill", "forwardfill", "rleid", "rle", "gatherevery", "argsort",
    "searchsorted", "peakmin", "peakmax", "random", "topk", "topkby", "bottomk", "bottomkby", "append",
    "dropnulls", "dropnans", "unique", "uniquecounts", "argunique", "valuecounts", "argwhere", "qcut", "hist",
    "extendconstant", "reshape", "indexof", "isfirstdistinct", "islastdistinct", "isunique", "isduplicated",
    "repeat",
}
ROW_DEPENDENT_PREFIXES = ("cum", "rolling", "ewm")
# namespaces that work within each row (a row's list, array or struct)
WITHIN_ROW = {"listexpr", "arrayexpr", "structexpr"}


def _norm(name: str) -> str:
    return name.replace("_", "").lower()


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _variant(value: Any) -> tuple[str, Any] | None:
    """A node's (kind, payload): a one-key dict, or a bare string such as "Len"."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict) and len(value) == 1:
        return next(iter(value.items()))
    return None


def _walk(node: Any) -> Iterator[tuple[str, str]]:
    """(category, operation) for every batch-dependent part of a serialized expression."""
    v = _variant(node)
    if v is None:
        if isinstance(node, list | dict):
            for child in node.values() if isinstance(node, dict) else node:
                yield from _walk(child)
        return
    kind, payload = v
    k = _norm(kind)
    if isinstance(node, str):
        if k == "len":
            yield "aggregate", "len"
        return
    if k in LEAVES:
        return
    if k in WINDOWS:
        yield "window", _snake(kind)
    elif k == "agg":
        inner = _variant(payload)
        yield "aggregate", _snake(inner[0]) if inner else "agg"
    elif k in ORDER_OR_LENGTH:
        yield "order", {"slice": "slice/head/tail"}.get(k, _snake(kind))
    elif k == "alias":
        yield from _walk(payload[0])
        return
    elif k == "eval":
        yield from _walk(payload.get("expr"))
        variant = _variant(payload.get("variant"))
        if variant is None or _norm(variant[0]) not in ("list", "array"):
            yield "order", "cumulative_eval"
        return
    elif k == "function":
        yield from _function(payload.get("function"))
        for arg in payload.get("input", []):
            yield from _walk(arg)
        return
    if isinstance(payload, dict | list):
        yield from _walk(payload if isinstance(payload, list) else list(payload.values()))


def _function(function: Any) -> Iterator[tuple[str, str]]:
    v = _variant(function)
    if v is None:
        return
    name, inner = v
    n = _norm(name)
    if n in WITHIN_ROW:
        return
    sub = _variant(inner)
    if sub is not None and n in ("stringexpr", "temporalexpr", "boolean", "bitwise", "categorical", "binaryexpr",
                                 "range"):
        name, n = sub[0], _norm(sub[0])  # a namespace: judge the function inside it
    if n.startswith("rollingexpr"):
        fn = inner.get("function") or inner.get("function_by") if isinstance(inner, dict) else None
        yield "window", f"rolling_{_snake(str(fn)).removesuffix('_by')}" if fn else "rolling"
    elif n in REDUCING:
        yield "aggregate", _snake(name)
    elif n in ROW_DEPENDENT or n.startswith(ROW_DEPENDENT_PREFIXES):
        yield "order", _snake(name)


def _from_text(text: str) -> Iterator[tuple[str, str]]:
    """The same judgement from the printed form, for expressions holding a Python function."""
    for m in re.finditer(r"(\w+\.)?(\w+)\(", text):
        if m[1] in ("str.", "dt.", "list.", "arr.", "struct.", "cat.", "bin.", "name.", "meta."):
            continue
        n = _norm(m[2])
        if n in WINDOWS:
            yield "window", m[2]
        elif n in AGGREGATES or n in REDUCING:
            yield "aggregate", m[2]
        elif n in ORDER_OR_LENGTH or n in ROW_DEPENDENT or n.startswith(ROW_DEPENDENT_PREFIXES):
            yield "order", m[2]


SHOWN = {"nunique": "n_unique", "and": "bitwise_and", "or": "bitwise_or", "xor": "bitwise_xor",
         "concat_vertical": "str.join", "random": "sample/shuffle", "fill_null_with_strategy": "fill_null(strategy=...)"}
WHY = {
    "window": "is a window expression ({op}): Polars would compute it over each micro-batch",
    "aggregate": "aggregates ({op}): Polars would compute it over each micro-batch and give it to every row",
    "order": "depends on the other rows of the micro-batch ({op})",
}
FIX = {
    "window": "aggregate per key over event time with .key_by(...).window(name, sl.Tumbling(...), "
              'total=sl.agg.sum("x")), or keep running values per key with .key_by(...).process(name, fn)',
    "order": "carry values from record to record per key with .key_by(...).process(name, fn), which sees "
             "records in event-time order, or aggregate with .key_by(...).window(...)",
}
FIX["aggregate"] = FIX["window"]


def row_wise_problem(expr: pl.Expr) -> str | None:
    """Why `expr` cannot run in a stateless step and what to do instead, or None if it is row-wise."""
    found = batch_dependence(expr)
    if found is None:
        return None
    category, op = found
    return (f"{WHY[category].format(op=SHOWN.get(op, op))}, so its result would depend on how the input is split "
            f"into micro-batches. Fix: {FIX[category]}")


def batch_dependence(expr: pl.Expr) -> tuple[str, str] | None:
    """(category, operation) of the first part of `expr` that would compute over the whole micro-batch
    instead of row by row, or None. Categories: "window", "aggregate", "order"."""
    try:
        tree = json.loads(expr.meta.serialize(format="json"))
    except pl.exceptions.PolarsError:  # a Python function inside (Polars needs cloudpickle to serialize it)
        return next(_from_text(str(expr)), None)
    return next(_walk(tree), None)
