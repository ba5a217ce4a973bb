"""The public API is what `sluice.__all__` says, and nothing there is stale."""

import inspect
from types import ModuleType

import sluice


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
