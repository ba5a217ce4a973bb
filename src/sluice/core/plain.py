"""Plan values as plain data: for state fingerprints (exact) and for `Plan.to_dict` (readable, no secrets).

Two conversions, because they answer different questions:

- `fingerprint_value`: what a value contributes to a step's state fingerprint. Expressions are Polars'
  printed form (`str(expr)`: the same text in every process for the same expression), durations are
  milliseconds, user classes and functions are their qualified name plus a hash of their source code.
- `plain`: what `Plan.to_dict` shows. Expressions as a user writes them, specs as {"type": ..., fields},
  and nothing that looks like a credential: secret-looking keys and fields become "***", passwords in
  URLs and `password=` settings are masked, live objects (clients) are their type and redacted repr.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from pathlib import PurePath
from typing import Any

import polars as pl

from sluice.core.schema import Schema
from sluice.core.show import show_expr, show_expr_text

# Setting or field names whose values are never shown (Kafka's sasl.*/ssl.* secrets, tokens, keys).
SECRET_WORDS = ("password", "passwd", "secret", "token", "credential", "api_key", "apikey", "private",
                "sasl.oauthbearer", "sasl.jaas", "ssl.key", "ssl.keystore")
REDACTED = "***"
MAX_ITEMS = 100  # longer lists (rows of an in-memory source) are summarized, not copied

_URL_PASSWORD = re.compile(r"//([^:/@\s]*):[^@/\s]*@")
_SETTING_SECRET = re.compile(r"((?:password|secret|token)\s*=\s*)(\"[^\"]*\"|'[^']*'|\S+)", re.I)


def is_secret(name: str) -> bool:
    low = name.lower()
    return any(w in low for w in SECRET_WORDS)


def redact_text(text: str) -> str:
    """A string with URL passwords and `password=...` settings masked."""
    return _SETTING_SECRET.sub(lambda m: m[1] + REDACTED, _URL_PASSWORD.sub(r"//\1:***@", text))


def type_name(cls: type) -> str:
    """Sluice's own types by their name; anything else by module and qualified name."""
    module = getattr(cls, "__module__", "") or ""
    if module.startswith("sluice.") or module == "builtins":
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


# --- fingerprints -----------------------------------------------------------------------------------
def canonical(value: Any) -> str:
    """Compact JSON with sorted keys: equal values, equal text (tuples and lists alike)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def code_hash(obj: Any) -> str:
    """A short hash of the source code of a function, or of a class and its user-defined bases.

    A class is hashed method by method (each method's source, and simple class attributes), so the hash
    is the same whether its file was imported or run by `sluice run` (where `inspect.getsource` of the
    class itself fails). Code it calls outside the class is not included. Without source (a REPL), the
    qualified name stands in for it."""
    if isinstance(obj, type):
        parts = [_class_source(c) for c in obj.__mro__ if _is_user(c)]
        text = "\n".join(parts) or obj.__qualname__
    else:
        text = _function_source(obj)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _is_user(cls: type) -> bool:
    module = getattr(cls, "__module__", "") or ""
    return not (module == "builtins" or module == "sluice" or module.startswith("sluice."))


def _function_source(fn: Any) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return str(getattr(fn, "__qualname__", type(fn).__qualname__))


def _class_source(cls: type) -> str:
    parts = [f"class {cls.__qualname__}"]
    for name, member in cls.__dict__.items():
        target = member.__func__ if isinstance(member, staticmethod | classmethod) else member
        if isinstance(target, property):
            target = target.fget
        if inspect.isfunction(target):
            parts.append(_function_source(target))
        elif not name.startswith("__") and (member is None or isinstance(member, bool | int | float | str)):
            parts.append(f"{name} = {member!r}")
    return "\n".join(parts)


def fingerprint_value(value: Any) -> Any:
    """`value` as the JSON that a state fingerprint holds (see the module docstring)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, pl.Expr):
        return str(value)
    if isinstance(value, timedelta):
        return value // timedelta(milliseconds=1)
    if isinstance(value, Schema):
        return {"fields": {n: str(t) for n, t in value.polars.items()}, "required": list(value.required)}
    if isinstance(value, pl.DataType):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): fingerprint_value(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [fingerprint_value(v) for v in value]
    if isinstance(value, type):
        return {"class": type_name(value), **({"code": code_hash(value)} if _is_user(value) else {})}
    if dataclasses.is_dataclass(value):
        out: dict[str, Any] = {"type": type_name(type(value))}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            duration = isinstance(v, timedelta) or (v is None and "timedelta" in str(f.type))
            out[f"{f.name}_ms" if duration else f.name] = fingerprint_value(v)
        if _is_user(type(value)):
            out["code"] = code_hash(type(value))
        return out
    if inspect.isfunction(value) or inspect.ismethod(value) or inspect.isbuiltin(value):
        return {"function": value.__qualname__, "code": code_hash(value)}
    # any other object (a user's aggregate that is not a dataclass): its class, code and simple attributes
    out = {"type": type_name(type(value))}
    out.update({k: fingerprint_value(v) for k, v in sorted(vars(value).items())
                if not k.startswith("_") and (v is None or isinstance(v, bool | int | float | str | pl.Expr))}
               if hasattr(value, "__dict__") else {})
    if _is_user(type(value)):
        out["code"] = code_hash(type(value))
    return out


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {"a.b": leaf}, lists of dicts as {"a[0].b": leaf}; other lists stay whole (a changed
    key list reads as one change)."""
    out: dict[str, Any] = {}
    if isinstance(value, dict) and value:
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out[f"{prefix}.count"] = len(value)
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def describe_changes(was: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, one readable phrase per changed field:
    `upper: was 5000 ms, now 60000 ms`, `code of its function changed`."""
    a, b = flatten(was), flatten(now)
    missing = object()
    changes = []
    for path in sorted(set(a) | set(b), key=lambda p: (list(b).index(p) if p in b else len(b), p)):
        old, new = a.get(path, missing), b.get(path, missing)
        if old == new or (isinstance(old, list | tuple) and isinstance(new, list | tuple) and list(old) == list(new)):
            continue
        if path == "code" or path.endswith(".code"):
            parent = path[:-len("code")]
            owner = next((b[parent + k] for k in ("function", "class", "type") if parent + k in b), parent[:-1])
            changes.append(f"the code of {owner or 'its function'} changed")
            continue
        label, unit = (path[:-3], " ms") if path.endswith("_ms") else (path, "")

        def fmt(v: Any, unit: str = unit) -> str:
            if v is missing:
                return "absent"
            if v is None:
                return "none"
            if isinstance(v, int | float) and not isinstance(v, bool):
                return f"{v}{unit}"
            if isinstance(v, list):
                return "[" + ", ".join(fmt(x, "") for x in v) + "]"
            return show_expr_text(v) if isinstance(v, str) else json.dumps(v, ensure_ascii=False)

        changes.append(f"{label}: was {fmt(old)}, now {fmt(new)}")
    return changes


# --- to_dict ----------------------------------------------------------------------------------------
def plain(value: Any, depth: int = 0) -> Any:
    """`value` as JSON-ready data for `Plan.to_dict` (see the module docstring)."""
    if depth > 12:
        return {"type": type_name(type(value))}
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, pl.Expr):
        return show_expr(value)
    if isinstance(value, timedelta):
        return {"type": "timedelta", "ms": value // timedelta(milliseconds=1)}
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return {"type": "bytes", "size": len(value)}
    if isinstance(value, Schema):
        return {"type": "Schema", "fields": {n: str(t) for n, t in value.polars.items()},
                "required": list(value.required)}
    if isinstance(value, pl.DataFrame):
        return {"type": "DataFrame", "rows": value.height, "columns": {n: str(t) for n, t in value.schema.items()}}
    if isinstance(value, pl.Schema):
        return {n: str(t) for n, t in value.items()}
    if isinstance(value, pl.DataType):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): REDACTED if is_secret(str(k)) else plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, tuple | list | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else list(value)
        if len(items) > MAX_ITEMS:
            return {"type": type(value).__name__, "items": len(items)}
        return [plain(v, depth + 1) for v in items]
    if isinstance(value, type):
        return type_name(value)
    if dataclasses.is_dataclass(value):
        out: dict[str, Any] = {"type": type_name(type(value))}
        cls: type = type(value)
        if any("__str__" in vars(c) for c in cls.__mro__[:-1]):
            out["text"] = redact_text(str(value))  # a spec that prints itself (a CEP pattern)
        for f in dataclasses.fields(value):
            out[f.name] = REDACTED if is_secret(f.name) else plain(getattr(value, f.name), depth + 1)
        return out
    if inspect.isfunction(value) or inspect.ismethod(value) or inspect.isbuiltin(value):
        return {"type": "function", "name": f"{getattr(value, '__module__', '?')}.{value.__qualname__}"}
    # a live object (a client, a process function instance): its type, and its repr unless that is the
    # default one (which only tells a memory address)
    out = {"type": type_name(type(value))}
    shown = repr(value)
    if " object at 0x" not in shown:
        out["repr"] = redact_text(shown)
    return out
