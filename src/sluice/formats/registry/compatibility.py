"""The compatibility rules of a subject: whether data written with one schema can be read with another.

Levels as Confluent's: BACKWARD (the new schema reads the last version's data), FORWARD (the last
version's readers read the new schema's data), FULL (both), each optionally _TRANSITIVE (against every
version, not only the last), and NONE. Avro follows Avro's schema resolution (promotions, defaults,
aliases, union branches); JSON Schema the object/type rules that matter in practice. `LocalRegistry`
applies them itself; a `RegistryClient` asks its server, which applies its own.
"""

from __future__ import annotations

import json
from typing import Any

from sluice.core.errors import SchemaRegistryError

LEVELS = ("NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE")


def canonical(schema: Any) -> str:
    """A schema (dict or JSON text) as compact JSON text, keys sorted: equal schemas, equal text."""
    obj = json.loads(schema) if isinstance(schema, str) else schema
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def check_level(level: str) -> None:
    if level not in LEVELS:
        raise SchemaRegistryError(f"unknown compatibility level {level!r}; choose from {', '.join(LEVELS)}")



def compatibility_problems(level: str, new: str, old: list[str], schema_type: str = "AVRO") -> list[str]:
    """Why `new` breaks `level` against the `old` versions (oldest first); empty if it does not."""
    check_level(level)
    if level == "NONE" or not old:
        return []
    against = old if level.endswith("_TRANSITIVE") else old[-1:]
    can_read = avro_can_read if schema_type == "AVRO" else json_schema_can_read
    problems: list[str] = []
    for i, prev in enumerate(against):
        version = (len(old) - len(against)) + i + 1
        if level.startswith(("BACKWARD", "FULL")):
            problems += [f"version {version}'s data cannot be read with the new schema: {p}"
                         for p in can_read(json.loads(new), json.loads(prev))]
        if level.startswith(("FORWARD", "FULL")):
            problems += [f"consumers on version {version} cannot read the new schema's data: {p}"
                         for p in can_read(json.loads(prev), json.loads(new))]
    return problems


_PROMOTIONS = {"int": {"long", "float", "double"}, "long": {"float", "double"}, "float": {"double"},
               "string": {"bytes"}, "bytes": {"string"}}


def _avro_named(schema: Any, names: dict[str, Any], ns: str | None = None) -> Any:
    """Resolve named-type references and collect definitions (full names)."""
    if isinstance(schema, str):
        return names.get(schema) or names.get(f"{ns}.{schema}" if ns else schema) or schema
    if isinstance(schema, list):
        return [_avro_named(s, names, ns) for s in schema]
    if isinstance(schema, dict) and schema.get("type") in ("record", "error", "enum", "fixed"):
        space = schema.get("namespace", ns)
        full = schema["name"] if "." in schema["name"] or not space else f"{space}.{schema['name']}"
        names[full] = names[schema["name"]] = schema
        if schema.get("type") in ("record", "error"):
            for f in schema.get("fields", []):
                f["type"] = _avro_named(f["type"], names, space)
    elif isinstance(schema, dict) and schema.get("type") == "array":
        schema["items"] = _avro_named(schema["items"], names, ns)
    elif isinstance(schema, dict) and schema.get("type") == "map":
        schema["values"] = _avro_named(schema["values"], names, ns)
    return schema


def avro_type(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        t = schema["type"]
        return t if isinstance(t, str) and t in ("record", "error", "enum", "fixed", "array", "map") else avro_type(t)
    return str(schema)


def avro_can_read(reader: Any, writer: Any, path: str = "") -> list[str]:
    """Avro schema resolution: can data written with `writer` be read with `reader`? Returns why not."""
    reader = _avro_named(reader, {})
    writer = _avro_named(writer, {})
    return _can_read(reader, writer, path or "/", set())


def _can_read(r: Any, w: Any, path: str, seen: set[tuple[int, int]]) -> list[str]:
    rt, wt = avro_type(r), avro_type(w)
    if wt == "union":
        return [p for branch in w for p in _can_read(r, branch, path, seen)]
    if rt == "union":
        for branch in r:
            if not _can_read(branch, w, path, seen):
                return []
        return [f"{path}: the writer's {wt} matches no branch of the reader's union"]
    if rt != wt:
        if wt in _PROMOTIONS and rt in _PROMOTIONS[wt]:
            return []
        return [f"{path}: the writer's {wt} cannot be read as {rt}"]
    if rt in ("record", "error"):
        key = (id(r), id(w))
        if key in seen:
            return []
        seen = seen | {key}
        if r["name"].split(".")[-1] != w["name"].split(".")[-1] and w["name"] not in r.get("aliases", []):
            return [f"{path}: record {w['name']} is read as {r['name']}"]
        wfields = {f["name"]: f for f in w.get("fields", [])}
        for f in w.get("fields", []):
            for a in f.get("aliases", []):
                wfields.setdefault(a, f)
        problems = []
        for f in r.get("fields", []):
            wf = wfields.get(f["name"]) or next((wfields[a] for a in f.get("aliases", []) if a in wfields), None)
            if wf is None:
                if "default" not in f:
                    problems.append(f"{path}{f['name']}: the reader's field has no default and the writer lacks it")
                continue
            problems += _can_read(f["type"], wf["type"], f"{path}{f['name']}/", seen)
        return problems
    if rt == "enum":
        missing = set(w.get("symbols", [])) - set(r.get("symbols", []))
        if missing and "default" not in r:
            return [f"{path}: the reader's enum lacks the writer's symbols {sorted(missing)}"]
        return []
    if rt == "fixed":
        return [] if r.get("size") == w.get("size") else [f"{path}: fixed sizes differ ({w.get('size')} → {r.get('size')})"]
    if rt == "array":
        return _can_read(r["items"], w["items"], f"{path}[]/", seen)
    if rt == "map":
        return _can_read(r["values"], w["values"], f"{path}{{}}/", seen)
    return []


def json_schema_can_read(reader: dict[str, Any], writer: dict[str, Any], path: str = "/") -> list[str]:
    """Can every document valid under `writer` be accepted by `reader`? The object/type rules that
    matter in practice: types (integer widens to number), required properties, closed objects."""
    def types(s: dict[str, Any]) -> set[str]:
        t = s.get("type")
        found = set(t) if isinstance(t, list) else {t} if t else set()
        if "integer" in found:
            found.add("number_int")
        return found

    rt, wt = types(reader), types(writer)
    problems: list[str] = []
    if rt and wt:
        for t in wt - rt:
            if not (t == "integer" and "number" in rt) and t != "number_int":
                problems.append(f"{path}: type {t} is no longer accepted")
    if "object" in (rt | wt) or "properties" in reader or "properties" in writer:
        rprops, wprops = reader.get("properties", {}), writer.get("properties", {})
        rreq, wreq = set(reader.get("required", [])), set(writer.get("required", []))
        for name in sorted(rreq - wreq):
            problems.append(f"{path}{name}: required now, but older documents may lack it")
        closed = reader.get("additionalProperties") is False
        for name, ws in wprops.items():
            if name in rprops:
                problems += json_schema_can_read(rprops[name], ws, f"{path}{name}/")
            elif closed:
                problems.append(f"{path}{name}: the property is no longer allowed (additionalProperties: false)")
        if closed and writer.get("additionalProperties") is not False:
            problems.append(f"{path}: the object is closed now, but older documents may have other properties")
    if "items" in reader and "items" in writer and isinstance(reader["items"], dict):
        problems += json_schema_can_read(reader["items"], writer["items"], f"{path}[]/")
    return problems
