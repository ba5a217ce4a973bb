"""The process settings: what the program set, else the environment variable, else the default."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import sluice as sl
from sluice import settings


@pytest.fixture(autouse=True)
def unset(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("SLUICE_BROKER", raising=False)
    monkeypatch.delenv("SLUICE_REGISTRY", raising=False)
    yield
    settings.set_broker(None)
    settings.set_registry(None)


def test_broker_set_then_environment_then_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings.broker() == ".sluice/log"
    monkeypatch.setenv("SLUICE_BROKER", str(tmp_path / "env"))
    assert settings.broker() == str(tmp_path / "env")
    settings.set_broker(str(tmp_path / "set"))
    assert settings.broker() == str(tmp_path / "set")
    assert sl.Topic("t").source().root == str(tmp_path / "set")
    settings.set_broker(None)
    assert sl.Topic("t").sink().root == str(tmp_path / "env")


def test_registry_set_then_environment_then_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sl.LocalRegistry().path == Path(".sluice/registry.json")
    monkeypatch.setenv("SLUICE_REGISTRY", str(tmp_path / "env.json"))
    assert sl.LocalRegistry().path == tmp_path / "env.json"
    settings.set_registry(tmp_path / "set.json")
    assert sl.LocalRegistry().path == tmp_path / "set.json"
    assert sl.LocalRegistry(tmp_path / "own.json").path == tmp_path / "own.json"
