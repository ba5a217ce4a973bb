"""A resume never reuses state whose meaning changed: every stateful step kind fingerprints the parameters
that shape its state, and a checkpoint whose fingerprint differs is refused with an error naming the step
and what changed — unless that step's state is dropped explicitly (then it starts empty)."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import sluice as sl
from conftest import ROOT
from sluice import testing
from sluice.checkpoint.store import CheckpointStore, IncompatibleCheckpointError
from sluice.runtime.executor import CheckpointSettings, Executor, _legacy_fingerprint

N = 200
LEFT = pl.DataFrame({"ts": [i * 1000 for i in range(N)], "k": [f"k{i % 4}" for i in range(N)],
                     "v": [float(i % 37) * (50 if i % 11 == 0 else 1) for i in range(N)]})
RIGHT = pl.DataFrame({"ts": [i * 1000 + 500 for i in range(N)], "k": [f"k{i % 4}" for i in range(N)],
                      "v": [float(-i) for i in range(N)]})

# A process function as a pipeline file defines it; versions 1 and 2 differ only in the class body.
COUNTER = '''
import sluice as sl


class Counter(sl.KeyedProcessFunction):
    def open(self, ctx):
        self.count = ctx.value_state("count")

    def process(self, record, ctx):
        n = (self.count.value() or 0) + {step}
        self.count.update(n)
        return [{{"k": record["k"], "n": n}}]
'''


def counter_class(tmp: Path, version: int) -> type:
    """Counter loaded from its own file, as `sluice run` loads a pipeline file (run_path, no module)."""
    path = tmp / f"counter_v{version}" / "pipeline.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(COUNTER.format(step=1 if version == 1 else 2))
    cls = runpy.run_path(str(path), run_name="__sluice__")["Counter"]
    assert isinstance(cls, type)
    return cls


def build(tmp: Path, change: str | None = None) -> sl.Flow:
    """One flow with every stateful step kind; `change` alters one parameter of one step."""
    c = change
    flow = sl.Flow("kinds")
    left = flow.read("left", testing.rows(LEFT)).event_time(
        "ts", timedelta(seconds=10 if c == "event_time" else 2), name="left_time")
    right = flow.read("right", testing.rows(RIGHT)).event_time("ts", timedelta(seconds=2), name="right_time")
    keyed = left.key_by("k", name="by_k")
    out = sl.CollectSink()
    n = sl.agg.sum("v") if c == "tumbling_aggregate" else sl.agg.count()
    keyed.window("tumbling", sl.Tumbling(timedelta(seconds=60 if c == "tumbling" else 30)), n=n).write("w1", out)
    keyed.window("sliding", sl.Sliding(timedelta(seconds=60), timedelta(seconds=20)),
                 p=sl.agg.percentile("v", 0.9 if c == "sliding" else 0.5)).write("w2", out)
    keyed.window("session", sl.Session(timedelta(seconds=10 if c == "session" else 5)),
                 s=sl.agg.sum("v")).write("w3", out)
    left.interval_join("interval", right, by="k", lower=timedelta(seconds=-5),
                       upper=timedelta(seconds=60 if c == "interval" else 5)).write("w4", out)
    left.window_join("window_join", right, by="k",
                     window=sl.Tumbling(timedelta(seconds=60 if c == "window_join" else 30))).write("w5", out)
    left.asof_join("asof", right, by="k", tolerance=timedelta(seconds=20 if c == "asof" else 10)).write("w6", out)
    left.temporal_join("temporal", right, by="k",
                       deleted=(pl.col("v") < -150) if c == "temporal" else None).write("w7", out)
    keyed.detect_anomalies("anomalies", "v", window=timedelta(seconds=60),
                           threshold=2.0 if c == "anomalies" else 3.0).write("w8", out)
    pattern = (sl.Pattern.begin("small").where(pl.col("v") < 10).followed_by("large")
               .where(pl.col("v") > (500 if c == "match" else 100)))
    keyed.match("match", pattern).write("w9", out)
    counter = counter_class(tmp, 2 if c == "process" else 1)
    keyed.process("process", counter(), schema={"k": str, "n": int}).write("w10", out)
    others = (right, left.filter(pl.col("v") > 1e9, name="none")) if c == "union" else (right,)
    left.union(*others, name="union").write("w11", out)
    return flow


# step, change, what the error says changed
CASES = [
    ("tumbling", "tumbling", "window.size: was 30000 ms, now 60000 ms"),
    ("tumbling", "tumbling_aggregate", "aggregates.n.type: was Count, now Sum"),
    ("sliding", "sliding", "aggregates.p.q: was 0.5, now 0.9"),
    ("session", "session", "window.gap: was 5000 ms, now 10000 ms"),
    ("interval", "interval", "upper: was 5000 ms, now 60000 ms"),
    ("window_join", "window_join", "window.size: was 30000 ms, now 60000 ms"),
    ("asof", "asof", "tolerance: was 10000 ms, now 20000 ms"),
    ("temporal", "temporal", 'deleted: was none, now col("v") < -150'),
    ("anomalies", "anomalies", "threshold: was 3.0, now 2.0"),
    ("match", "match", 'pattern.stages[1].conditions: was [col("v") > 100], now [col("v") > 500]'),
    ("process", "process", "the code of Counter changed"),
    ("union", "union", "inputs: was 2, now 3"),
    ("left_time", "event_time", "watermark.delay: was 2000 ms, now 10000 ms"),
]


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run of the unchanged flow, checkpointed after every batch."""
    tmp = tmp_path_factory.mktemp("kinds")
    sl.run(build(tmp), batch_size=25, checkpoint_dir=tmp / "ck", checkpoint_interval=0.0)
    return tmp, tmp / "ck"


def restored(flow: sl.Flow, ck: Path, drop: tuple[str, ...] = ()) -> set[str]:
    """Resume `flow` from the newest checkpoint in `ck`: the steps whose state was restored."""
    ex = Executor(flow.plan(), 25, checkpoints=CheckpointSettings(ck, None, 3, drop))
    called: set[str] = set()
    for name, op in ex.ops.items():
        def restore(state: dict[str, Any], name: str = name, original: Any = op.restore) -> None:
            called.add(name)
            original(state)

        op.restore = restore  # type: ignore[method-assign]
    cp = CheckpointStore(ck).latest()
    assert cp is not None
    try:
        ex.apply_state(cp.manifest["steps"], cp.state, f"checkpoint {cp.id} in {ck}")
    finally:
        for reader in ex.readers.values():
            reader.close()
    return called


STATEFUL = {"tumbling", "sliding", "session", "interval", "window_join", "asof", "temporal", "anomalies", "match",
            "process", "union", "left_time", "right_time"}


def test_every_stateful_step_is_fingerprinted_and_saved(checkpointed: tuple[Path, Path]) -> None:
    tmp, ck = checkpointed
    plan = build(tmp).plan()
    assert {s.name for s in plan.steps if s.state_fingerprint()} == STATEFUL
    cp = CheckpointStore(ck).latest()
    assert cp is not None
    for name in STATEFUL:  # saved as a JSON object, equal to the step's own fingerprint
        saved = cp.manifest["steps"][name]["fingerprint"]
        assert json.dumps(saved, sort_keys=True, separators=(",", ":")) == plan.step(name).state_fingerprint()


def test_unchanged_flow_restores_every_step(checkpointed: tuple[Path, Path]) -> None:
    tmp, ck = checkpointed
    assert restored(build(tmp), ck) >= STATEFUL
    result = sl.run(build(tmp), checkpoint_dir=ck)  # and a whole resumed run goes through
    assert result.rows_read == 0  # everything was read before


@pytest.mark.parametrize(("step", "change", "said"), CASES, ids=[c[1] for c in CASES])
def test_changed_step_is_refused_unless_dropped(checkpointed: tuple[Path, Path], step: str, change: str,
                                                said: str) -> None:
    tmp, ck = checkpointed
    changed = build(tmp, change)
    assert changed.plan().step(step).state_fingerprint() != build(tmp).plan().step(step).state_fingerprint()
    with pytest.raises(IncompatibleCheckpointError) as err:
        restored(changed, ck)
    message = str(err.value)
    assert message.startswith(f"step {step!r} changed since checkpoint "), message
    assert said in message, message
    assert f"drop_state=[{step!r}]" in message and f"--drop-state {step}" in message
    assert message.count("changed since") == 1  # only the step that changed
    # dropped: that step starts empty, every other one is restored
    got = restored(changed, ck, drop=(step,))
    assert step not in got and got >= STATEFUL - {step}


def test_unchanged_process_code_gives_the_same_fingerprint_in_a_fresh_process(tmp_path: Path) -> None:
    script = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); from pathlib import Path; "
              "from test_state_fingerprints import build; "
              f"print('\\n'.join(s.state_fingerprint() for s in build(Path({str(tmp_path)!r})).plan().steps))")
    env = {"PYTHONPATH": str(ROOT / "src")}
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True,
                           cwd=tmp_path).stdout for _ in range(2)]
    here = "\n".join(s.state_fingerprint() for s in build(tmp_path).plan().steps) + "\n"
    assert runs[0] == runs[1] == here


def test_checkpoint_from_before_json_fingerprints(tmp_path: Path) -> None:
    """Old checkpoints carry strings: window, match and process steps are checked as before; event_time and
    union steps (whose state is watermarks) restore as before; the other steps, whose old fingerprint was
    only their kind, are refused with what to do, unless their state is dropped."""
    sl.run(build(tmp_path), batch_size=25, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0)
    plan = build(tmp_path).plan()
    for manifest in (tmp_path / "ck").glob("chk-*/manifest.json"):
        data = json.loads(manifest.read_text())
        data.pop("checksum")  # checkpoints of that time had no manifest checksum
        for name, entry in data["steps"].items():
            step = plan.step(name)
            entry["fingerprint"] = _legacy_fingerprint(step) or ("asof_join" if step.kind == "temporal_join"
                                                                else step.kind)
        manifest.write_text(json.dumps(data))
    legacy_only = ["interval", "window_join", "asof", "temporal", "anomalies"]
    with pytest.raises(IncompatibleCheckpointError) as err:
        restored(build(tmp_path), tmp_path / "ck")
    message = str(err.value)
    assert "was written before Sluice fingerprinted the parameters of" in message
    assert all(f"{name!r} (" in message for name in legacy_only)
    assert "--drop-state interval" in message and "left_time" not in message and "'union'" not in message
    got = restored(build(tmp_path), tmp_path / "ck", drop=tuple(legacy_only))
    assert got >= {"tumbling", "sliding", "session", "match", "process", "left_time", "right_time", "union"}
    assert not got & set(legacy_only)
    # a window changed since is still caught by its old fingerprint
    with pytest.raises(IncompatibleCheckpointError, match=r"step 'tumbling' changed since .*was window"):
        restored(build(tmp_path, "tumbling"), tmp_path / "ck", drop=tuple(legacy_only))
