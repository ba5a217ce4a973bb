"""The public API is what `sluice.__all__` says, and nothing there is stale."""

import ast
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import sluice
from sluice.core import errors as core_errors


def _public(module: ModuleType) -> set[str]:
    """Names a user sees with dir(): not private, and not a submodule bound by an import."""
    return {n for n in dir(module) if not n.startswith("_") and not inspect.ismodule(getattr(module, n))}


def test_all_names_exist_and_are_sorted():
    missing = [n for n in sluice.__all__ if not hasattr(sluice, n)]
    assert missing == []
    assert len(set(sluice.__all__)) == len(sluice.__all__)
    assert sluice.__all__ == sorted(sluice.__all__)


def test_all_is_complete():
    assert _public(sluice) - set(sluice.__all__) == set()


def test_aggregate_constructors_are_public():
    for name in ("count", "sum", "min", "max", "mean", "avg", "variance", "stddev", "first", "last",
                 "count_distinct", "collect_list", "percentile", "median", "Aggregate"):
        assert hasattr(sluice.agg, name), name


def test_agg_namespace_holds_only_aggregates():
    assert sluice.agg.__all__ == sorted(sluice.agg.__all__)
    assert _public(sluice.agg) == set(sluice.agg.__all__)
    for leaked in ("dataclass", "Callable", "PlanError", "pl", "math", "column"):
        assert not hasattr(sluice.agg, leaked), leaked


def _bound_in_init() -> set[str]:
    """Every public name sluice/__init__.py binds: by import (submodules too) or by assignment; names
    loaded on first use are imported under `if TYPE_CHECKING:` and listed in its `_LAZY` table."""
    tree = ast.parse(Path(sluice.__file__).read_text())
    names: set[str] = set()
    body = list(tree.body)
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            body += node.body
    for node in body:
        if isinstance(node, ast.ImportFrom) and node.module == "typing":
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
    return {n for n in names if not n.startswith("_")}


def test_all_is_exactly_what_init_binds():
    assert _bound_in_init() == set(sluice.__all__)
    lazy = set(sluice._LAZY)  # type: ignore[attr-defined]
    assert lazy == set(sluice.__all__) - {"col", "lit"}


def test_import_loads_no_connector_runtime_or_operator() -> None:
    """`import sluice` loads polars; the rest loads when a name is first used."""
    code = "import sys, sluice; print(sorted(m for m in sys.modules if m.startswith('sluice.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded
    code = "import sys, sluice; sluice.KafkaSink; print('sluice.connectors.kafka' in sys.modules, sluice.KafkaSink.__name__)"
    used = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert used.split() == ["True", "KafkaSink"]


# --- one error tree ---------------------------------------------------------------------------------


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined anywhere in the sluice package."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(sluice.__path__, "sluice."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__.startswith("sluice."):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_exception_is_defined_in_core_errors():
    classes = _exception_classes()
    assert len(classes) >= 20
    elsewhere = sorted(n for n, c in classes.items() if c.__module__ != "sluice.core.errors")
    assert elsewhere == [], "define exceptions in sluice/core/errors.py (and re-export public ones in sluice.errors)"


def test_every_public_exception_is_in_sluice_errors_and_in_sl():
    public = {c for c in _exception_classes().values() if c not in core_errors.INTERNAL}
    assert {c.__name__ for c in public} == set(sluice.errors.__all__)
    assert sluice.errors.__all__ == sorted(sluice.errors.__all__)
    for cls in public:
        assert getattr(sluice.errors, cls.__name__) is cls
        assert getattr(sluice, cls.__name__) is cls, f"sl.{cls.__name__}"
        assert issubclass(cls, sluice.SluiceError)
    for cls in core_errors.INTERNAL:
        assert not hasattr(sluice, cls.__name__), f"{cls.__name__} is internal"


def test_the_docstring_draws_the_whole_tree():
    """Each line `├── Name` of the tree in core/errors.py names a public error whose parent is the
    nearest line above it that is indented one level less."""
    doc = core_errors.__doc__ or ""
    drawn: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        m = re.match(r"^(\s*(?:[│ ]   )*)(?:[├└]── )?([A-Z]\w*Error)\b", line)
        if not m or not (line.strip().startswith(("SluiceError", "├", "└", "│"))):
            continue
        depth = len(m.group(1)) if "──" in line else -1
        while stack and stack[-1][0] >= depth:
            stack.pop()
        drawn[m.group(2)] = stack[-1][1] if stack else None
        stack.append((depth, m.group(2)))
    assert set(drawn) == set(sluice.errors.__all__)
    for name, parent in drawn.items():
        cls = getattr(sluice.errors, name)
        expected_parent = None if cls is sluice.SluiceError else cls.__bases__[0].__name__
        assert parent == expected_parent, (name, parent, expected_parent)
