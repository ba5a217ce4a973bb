"""How a plan prints its values: expressions as a user writes them, containers and specs all the way down.

Polars prints `pl.col("x") > 3` as `[(col("x")) > (dyn int: 3)]`; `show_expr` gives `col("x") > 3`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import polars as pl

from sluice.core.schema import Schema

_LITERAL = re.compile(r"dyn \w+: ([^\s()\[\],.]+(?:\.\d+)?)(\.)?")


def show_expr(expr: pl.Expr) -> str:
    """The expression as Polars' Python API writes it, as far as its printed form allows."""
    return show_expr_text(str(expr))


def show_expr_text(printed: str) -> str:
    """`show_expr` of an expression's printed form (`str(expr)`, as state fingerprints keep it)."""
    text = _LITERAL.sub(lambda m: f"lit({m[1]})." if m[2] else m[1], printed)
    return _binary(text, 0, len(text), top=True)


def _close(text: str, i: int, opening: str, closing: str) -> int:
    """The index of the bracket that closes the one at `i`, skipping string literals."""
    depth, quoted = 0, False
    for j in range(i, len(text)):
        c = text[j]
        if c == '"' and (j == 0 or text[j - 1] != "\\"):
            quoted = not quoted
        elif not quoted and c == opening:
            depth += 1
        elif not quoted and c == closing:
            depth -= 1
            if depth == 0:
                return j
    return -1


def _binary(text: str, start: int, end: int, top: bool = False) -> str:
    """Rewrite every `[(lhs) op (rhs)]` in text[start:end] as `lhs op rhs` (nested ones parenthesized)."""
    out: list[str] = []
    i = start
    while i < end:
        if text.startswith("[(", i):
            close = _close(text, i, "[", "]")
            lhs_end = _close(text, i + 1, "(", ")")
            rhs_start = text.find("(", lhs_end + 1)
            if 0 < lhs_end < rhs_start < close and text[rhs_start - 1] == " ":
                op = text[lhs_end + 1:rhs_start].strip()
                lhs = _binary(text, i + 2, lhs_end)
                rhs = _binary(text, rhs_start + 1, close - 1)
                whole = f"{lhs} {op} {rhs}"
                only = (top and i == start and close == end - 1) or (
                    i > start and text[i - 1] == "(" and text[close + 1:close + 2] == ")")  # already in parentheses
                out.append(whole if only else f"({whole})")
                i = close + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


def show(value: Any) -> str:
    """A value of a step as explain prints it."""
    if isinstance(value, pl.Expr):
        return show_expr(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, Schema):
        return "{" + ", ".join(f"{n}: {t}" if n in value.required else f"{n}: Optional({t})"
                               for n, t in value.polars.items()) + "}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if type(value).__str__ is not object.__str__:
            return str(value)  # a spec that prints itself (a CEP pattern)
        shown = ", ".join(f"{f.name}={show(getattr(value, f.name))}" for f in dataclasses.fields(value) if f.repr)
        return f"{type(value).__name__}({shown})"
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    return repr(value)
