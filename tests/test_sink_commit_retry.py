"""A sink whose commit (publishing an epoch) fails is tried again within the run: commit is idempotent and
the epoch is recorded, so a transient failure leaves every sink level with the others, and equal to the
oracle (the input's ids once each), at batch sizes 1, 7 and 65,536. A failure that outlasts the attempts
stops the run with a SinkError naming the sinks that published the epoch and those that did not; the rerun
with the same checkpoint directory brings them level. (Under the Kafka runtime: tests/kafka/test_task_sink_retry.py.)"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import sluice as sl
from sluice.core.errors import DatabaseError, SinkAheadError, SinkError


class Flaky:
    """A user's sink that stages each epoch in a file and publishes it by renaming it (idempotent: an epoch
    already published is left as it is). Its commit of epoch e fails `fails[e]` times (per task), each time
    before publishing anything; `attempts` counts the commits tried per (task, epoch)."""

    def __init__(self, directory: Path, fails: dict[int, int], error: type[Exception] = ConnectionError) -> None:
        self.dir, self.fails, self.error = directory, dict(fails), error
        self.tries: Counter[tuple[int | None, int]] = Counter()
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def attempts(self) -> Counter[int]:
        """Commits tried per epoch (of the one task of sl.run)."""
        return Counter({e: n for (_, e), n in self.tries.items()})

    def open(self, ctx: Any) -> FlakyWriter:
        return FlakyWriter(self, ctx.task)


class FlakyWriter:
    def __init__(self, sink: Flaky, task: int | None) -> None:
        self.sink, self.task = sink, task
        self.prefix = "" if task is None else f"t{task}-"
        self.rows: list[pl.DataFrame] = []

    def write(self, df: pl.DataFrame) -> None:
        self.rows.append(df.select("id"))

    def prepare(self, epoch: int) -> dict:
        stage = self.sink.dir / f"{self.prefix}{epoch:06d}.stage"
        (pl.concat(self.rows) if self.rows else pl.DataFrame({"id": []}, schema={"id": pl.Int64})).write_ndjson(stage)
        self.rows = []
        return {"epoch": epoch, "stage": str(stage)}

    def commit(self, txn: dict) -> None:
        epoch = txn["epoch"]
        self.sink.tries[(self.task, epoch)] += 1
        if self.sink.tries[(self.task, epoch)] <= self.sink.fails.get(epoch, 0):
            raise self.sink.error(f"connection reset (epoch {epoch}, try {self.sink.tries[(self.task, epoch)]})")
        stage = Path(txn["stage"])
        if stage.exists():
            stage.rename(stage.with_suffix(".part"))

    def abort(self, txn: dict) -> None:
        Path(txn["stage"]).unlink(missing_ok=True)

    def recover(self, txn: dict | None) -> None:
        if txn:
            self.commit(txn)
        for left in self.sink.dir.glob(f"{self.prefix}*.stage"):  # staged after the recorded epoch
            left.unlink()

    def close(self) -> None:
        pass


def published(directory: Path, suffix: str = ".part") -> list[int]:
    ids: list[int] = []
    for p in sorted(directory.rglob(f"*{suffix}")):
        ids += [json.loads(line)["id"] for line in p.read_text().splitlines() if line]
    return sorted(ids)


def json_ids(directory: Path) -> list[int]:
    return published(directory, ".jsonl")


def write_input(tmp: Path, n: int) -> None:
    # out of order within blocks of 8
    pl.DataFrame({"id": [i ^ 5 for i in range(n)]}).write_ndjson(tmp / "in.jsonl")


def flow_of(tmp: Path, service: Flaky) -> sl.Flow:
    f = sl.Flow("retry")
    rows = f.read("in", sl.JsonLinesSource(str(tmp / "in.jsonl")), schema={"id": int})
    rows.write("before", sl.JsonLinesSink(tmp / "before"))
    rows.write("service", service)  # type: ignore[arg-type]
    rows.write("after", sl.JsonLinesSink(tmp / "after"))
    return f


@pytest.mark.parametrize("batch_size", [1, 7, 65_536])
def test_a_transient_commit_failure_is_retried_and_every_sink_equals_the_oracle(tmp_path: Path,
                                                                               batch_size: int) -> None:
    n = 96
    write_input(tmp_path, n)
    # epoch 1 fails once, epoch 2 fails as often as it may and still succeed (attempts - 1 = 2 times)
    service = Flaky(tmp_path / "service", {1: 1, 2: 2})
    sl.run(flow_of(tmp_path, service), batch_size=batch_size, checkpoint_dir=tmp_path / "ck",
           checkpoint_interval=0.0, sink_commit_attempts=3, sink_commit_backoff=0.01)
    want = list(range(n))
    assert published(tmp_path / "service") == want
    assert json_ids(tmp_path / "before") == want and json_ids(tmp_path / "after") == want
    assert not list((tmp_path / "service").glob("*.stage"))
    assert service.attempts[1] == 2 and service.attempts[2] == 3
    assert all(service.attempts[e] == 1 for e in service.attempts if e > 2)


def test_a_commit_failing_every_attempt_stops_naming_the_sinks_then_the_rerun_levels_them(tmp_path: Path) -> None:
    n = 96
    write_input(tmp_path, n)
    service = Flaky(tmp_path / "service", {2: 3})  # epoch 2 fails as often as it is tried (3 attempts)
    with pytest.raises(SinkError) as err:
        sl.run(flow_of(tmp_path, service), batch_size=8, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0,
               sink_commit_attempts=3, sink_commit_backoff=0.01)
    message = str(err.value)
    assert message.startswith("write step 'service' (FlakyWriter): publishing (commit) failed: ConnectionError: "), message
    assert "(tried 3 times) 'before' published this epoch already, 'after' did not" in message, message
    assert "brings the sinks level" in message, message
    assert service.attempts[2] == 3
    # epoch 1 is everywhere, epoch 2 only in the sink before
    assert json_ids(tmp_path / "before") == list(range(16))
    assert published(tmp_path / "service") == list(range(8))
    assert json_ids(tmp_path / "after") == list(range(8))

    service = Flaky(tmp_path / "service", {})
    sl.run(flow_of(tmp_path, service), batch_size=8, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0)
    want = list(range(n))
    assert published(tmp_path / "service") == want
    assert json_ids(tmp_path / "before") == want and json_ids(tmp_path / "after") == want


def test_one_attempt_means_no_retry(tmp_path: Path) -> None:
    write_input(tmp_path, 16)
    service = Flaky(tmp_path / "service", {1: 1})
    with pytest.raises(SinkError, match=r"'before' published this epoch already, 'after' did not"):
        sl.run(flow_of(tmp_path, service), batch_size=8, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0,
               sink_commit_attempts=1)
    assert service.attempts[1] == 1


def test_a_database_out_of_reach_is_retried_a_verdict_is_not(tmp_path: Path) -> None:
    """Sluice's own DatabaseError (a database that cannot be reached) is worth trying again; its other
    errors are verdicts (here: a sink ahead of the checkpoint) that a retry cannot change."""
    write_input(tmp_path, 16)
    service = Flaky(tmp_path / "service", {1: 2}, DatabaseError)
    sl.run(flow_of(tmp_path, service), batch_size=8, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0,
           sink_commit_backoff=0.01)
    assert service.attempts[1] == 3 and published(tmp_path / "service") == list(range(16))

    class Ahead(SinkAheadError):
        def __init__(self, text: str) -> None:
            super().__init__("service", "the service", 9, 1)

    write_input(tmp_path, 16)
    service = Flaky(tmp_path / "service2", {1: 1}, Ahead)
    with pytest.raises(SinkAheadError):
        sl.run(flow_of(tmp_path, service), batch_size=8, checkpoint_dir=tmp_path / "ck2", checkpoint_interval=0.0,
               sink_commit_backoff=0.01)
    assert service.attempts[1] == 1


def test_bad_retry_settings_are_refused(tmp_path: Path) -> None:
    write_input(tmp_path, 8)
    with pytest.raises(ValueError, match="sink_commit_attempts must be at least 1, got 0"):
        sl.run(flow_of(tmp_path, Flaky(tmp_path / "s", {})), sink_commit_attempts=0)
