"""Operator factories, one per step kind: how a runtime turns a plan step into the operator that runs it.

A step kind is a step class (sluice.core.plan) plus a factory registered here:

    @register(MyStep)
    def _my_step(step: MyStep, ctx: BuildContext) -> Operator:
        return MyOperator(step.name, ...)

Read and Write steps are not here: the executor opens their sources and sinks itself. A subclass of a
registered step class uses its base's factory unless it registers its own (TemporalJoin uses AsofJoin's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sluice.core.errors import PlanError
from sluice.core.plan import (
    AsofJoin,
    Branch,
    DetectAnomalies,
    EventTime,
    Filter,
    IntervalJoin,
    KeyBy,
    LookupJoin,
    Map,
    Match,
    Process,
    Select,
    Step,
    ToChangelog,
    Union,
    Window,
    WindowJoin,
    WithColumns,
)
from sluice.core.plan import key_names as _key_names
from sluice.operators.base import Operator
from sluice.operators.stateless import (
    BranchOperator,
    EventTimeOperator,
    FilterOperator,
    MapOperator,
    PassThrough,
    SelectOperator,
    UnionOperator,
)


@dataclass(frozen=True)
class BuildContext:
    """What a factory may need beyond its step: the flow's name and the runtime's settings."""

    flow: str
    batch_size: int
    state_backend: str = "memory"
    state_dir: str | Path | None = None


S = TypeVar("S", bound=Step)
Factory = Callable[[Any, BuildContext], Operator]
_FACTORIES: dict[type[Step], Factory] = {}


def register(kind: type[S]) -> Callable[[Callable[[S, BuildContext], Operator]], Callable[[S, BuildContext], Operator]]:
    """Register the operator factory of a step class (replacing any earlier one for that class)."""

    def add(factory: Callable[[S, BuildContext], Operator]) -> Callable[[S, BuildContext], Operator]:
        _FACTORIES[kind] = factory
        return factory

    return add


def factory_for(step: Step) -> Factory:
    for cls in type(step).__mro__:
        found = _FACTORIES.get(cls)
        if found is not None:
            return found
    raise PlanError(f"step {step.name!r}: no operator is registered for step kind {step.kind!r} "
                    f"({type(step).__name__}); a new step kind needs a factory: "
                    f"@sluice.runtime.registry.register({type(step).__name__})")


def build(step: Step, ctx: BuildContext) -> Operator:
    """The operator that runs `step`."""
    return factory_for(step)(step, ctx)


# --- the built-in kinds ---------------------------------------------------------------------------------
@register(Filter)
def _filter(step: Filter, ctx: BuildContext) -> Operator:
    return FilterOperator(step)


@register(Select)
def _select(step: Select, ctx: BuildContext) -> Operator:
    return SelectOperator(step)


@register(WithColumns)
def _with_columns(step: WithColumns, ctx: BuildContext) -> Operator:
    return SelectOperator(step)


@register(Map)
def _map(step: Map, ctx: BuildContext) -> Operator:
    return MapOperator(step)


@register(EventTime)
def _event_time(step: EventTime, ctx: BuildContext) -> Operator:
    return EventTimeOperator(step)


@register(KeyBy)
def _key_by(step: KeyBy, ctx: BuildContext) -> Operator:
    return PassThrough(step.name)


@register(ToChangelog)
def _changelog(step: ToChangelog, ctx: BuildContext) -> Operator:
    from sluice.operators.changelog import ChangelogOperator

    return ChangelogOperator(step)


@register(Union)
def _union(step: Union, ctx: BuildContext) -> Operator:
    return UnionOperator(step)


@register(Branch)
def _branch(step: Branch, ctx: BuildContext) -> Operator:
    return BranchOperator(step)


@register(Window)
def _window(step: Window, ctx: BuildContext) -> Operator:
    from sluice.operators.window import window_operator

    return window_operator(step)


@register(DetectAnomalies)
def _detect_anomalies(step: DetectAnomalies, ctx: BuildContext) -> Operator:
    from sluice.operators.anomaly import ZScoreOperator

    return ZScoreOperator(step.name, list(step.keys), _key_names(step.keys), step.value, step.window_ms,
                          step.threshold, step.min_count, step.only_anomalies)


@register(LookupJoin)
def _lookup_join(step: LookupJoin, ctx: BuildContext) -> Operator:
    from sluice.operators.lookup import LookupJoinOperator

    return LookupJoinOperator(step.name, step.by, step.lookup, step.how, step.cache_ttl_s, step.cache_size)


@register(WindowJoin)
def _window_join(step: WindowJoin, ctx: BuildContext) -> Operator:
    from sluice.operators.window_join import WindowJoinOperator

    return WindowJoinOperator(step.name, list(step.by), step.window, step.suffix)


@register(Match)
def _match(step: Match, ctx: BuildContext) -> Operator:
    from sluice.operators.match import MatchOperator

    return MatchOperator(step.name, _key_names(step.keys), list(step.keys), step.pattern, step.skip, step.order_by,
                         step.time)


@register(IntervalJoin)
def _interval_join(step: IntervalJoin, ctx: BuildContext) -> Operator:
    from sluice.operators.interval import IntervalJoinOperator

    return IntervalJoinOperator(step.name, list(step.by), step.lower_ms, step.upper_ms, step.how, step.suffix)


@register(AsofJoin)  # and TemporalJoin, its subclass
def _asof_join(step: AsofJoin, ctx: BuildContext) -> Operator:
    from sluice.operators.asof import AsofJoinOperator

    return AsofJoinOperator(step.name, list(step.by), step.tolerance_ms, step.strict, step.how,
                            step.right_order, step.suffix, step.deleted)


@register(Process)
def _process(step: Process, ctx: BuildContext) -> Operator:
    from sluice.operators.process import ProcessOperator
    from sluice.state.backends import make_backend

    state_dir = Path(ctx.state_dir) / ctx.flow / step.name if ctx.state_dir else None
    backend = make_backend(ctx.state_backend, state_dir)
    schema = step.schema.polars if step.schema is not None else None
    return ProcessOperator(step.name, _key_names(step.keys), list(step.keys), step.fn, schema,
                           step.side_outputs, backend, step.on_error)
