"""`RegistryClient`: any Confluent-compatible schema registry over HTTP (Confluent Schema Registry,
Apicurio's `/apis/ccompat/v7`, Redpanda, Karapace). Ids and schemas it learns are cached, so the server
is asked once per schema; credentials in the URL or `auth=` never appear in a message."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from sluice.core.errors import IncompatibleSchemaError, SchemaRegistryError
from sluice.formats.registry.compatibility import canonical, check_level


def _redact_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url



class RegistryClient:
    """A Confluent-compatible schema registry over HTTP. `url` may carry user:password (never logged)."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None, timeout_s: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.username and auth is None:
            auth = (urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
            host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
            url = urllib.parse.urlunsplit(parts._replace(netloc=host))
        self.url = url.rstrip("/")
        self.shown = _redact_url(url)
        self._auth = auth
        self.timeout_s = timeout_s
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RegistryClient({self.shown!r})"

    def _call(self, method: str, path: str, body: Any = None, ok404: bool = False) -> Any:
        import base64

        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/vnd.schemaregistry.v1+json",
                                              "Accept": "application/vnd.schemaregistry.v1+json, application/json"})
        if self._auth:
            token = base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                text = resp.read()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            if exc.code == 404 and ok404:
                return None
            if exc.code == 409:
                raise IncompatibleSchemaError(f"schema registry {self.shown}: {method} {path} was refused as "
                                              f"incompatible: {detail}") from None
            raise SchemaRegistryError(f"schema registry {self.shown}: {method} {path} failed with HTTP {exc.code}: "
                                      f"{detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SchemaRegistryError(f"schema registry {self.shown} is not reachable: {getattr(exc, 'reason', exc)}. "
                                      "Check the URL and that the registry is running") from None

    @staticmethod
    def _subject(subject: str) -> str:
        return urllib.parse.quote(subject, safe="")

    def register(self, subject: str, schema: Any, schema_type: str = "AVRO") -> int:
        text = canonical(schema)
        key = (subject, text)
        with self._lock:
            if key in self._ids:
                return self._ids[key]
        body: dict[str, Any] = {"schema": text}
        if schema_type != "AVRO":
            body["schemaType"] = schema_type
        got = self._call("POST", f"/subjects/{self._subject(subject)}/versions", body)
        sid = int(got["id"])
        with self._lock:
            self._ids[key] = sid
            self._schemas[sid] = (schema_type, text)
        return sid

    def lookup(self, subject: str, schema: Any, schema_type: str = "AVRO") -> int | None:
        """The id of `schema` under `subject`, if registered there."""
        text = canonical(schema)
        body: dict[str, Any] = {"schema": text}
        if schema_type != "AVRO":
            body["schemaType"] = schema_type
        got = self._call("POST", f"/subjects/{self._subject(subject)}", body, ok404=True)
        return int(got["id"]) if got else None

    def schema(self, schema_id: int) -> tuple[str, str]:
        """(schema type, schema text) of an id."""
        with self._lock:
            if schema_id in self._schemas:
                return self._schemas[schema_id]
        got = self._call("GET", f"/schemas/ids/{schema_id}", ok404=True)
        if got is None:
            raise SchemaRegistryError(f"schema registry {self.shown} has no schema with id {schema_id}")
        found = (got.get("schemaType") or "AVRO", got["schema"])
        with self._lock:
            self._schemas[schema_id] = found
        return found

    def versions(self, subject: str) -> list[str]:
        """Every version's schema text, oldest first."""
        got = self._call("GET", f"/subjects/{self._subject(subject)}/versions", ok404=True) or []
        out = []
        for v in got:
            out.append(self._call("GET", f"/subjects/{self._subject(subject)}/versions/{v}")["schema"])
        return out

    def set_compatibility(self, subject: str, level: str) -> None:
        check_level(level)
        self._call("PUT", f"/config/{self._subject(subject)}", {"compatibility": level})

    def compatibility(self, subject: str) -> str:
        got = self._call("GET", f"/config/{self._subject(subject)}", ok404=True)
        if got is None:
            got = self._call("GET", "/config") or {}
        return str(got.get("compatibilityLevel") or got.get("compatibility") or "BACKWARD")

    def check(self, subject: str, schema: Any, schema_type: str = "AVRO") -> list[str]:
        """Why `schema` would break the subject's level (empty: it would not)."""
        body: dict[str, Any] = {"schema": canonical(schema)}
        if schema_type != "AVRO":
            body["schemaType"] = schema_type
        got = self._call("POST", f"/compatibility/subjects/{self._subject(subject)}/versions/latest?verbose=true",
                         body, ok404=True)
        if got is None or got.get("is_compatible", True):
            return []
        return list(got.get("messages") or ["the registry says it is incompatible"])
