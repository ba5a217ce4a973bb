"""RedisSink against a real redis-server: commands from rows and changelog rows, key templates, expiry, the
epoch key that makes commits idempotent and fences a zombie, and staging in Redis under the Kafka runtime."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import redis

import sluice as sl
from sluice import testing
from sluice.connectors.redis import RedisWriter


@pytest.fixture()
def r(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    return client


def ctx(tmp: Path | None, task: int | None = None, step: str = "to_redis") -> sl.SinkContext:
    return sl.SinkContext(step, exactly_once=True, flow="f", task=task,
                          staging_dir=str(tmp) if tmp is not None else None)


def test_hset_set_del_and_expiry_from_rows(redis_url: str, r: redis.Redis) -> None:
    rows = pl.DataFrame({"table": ["user", "user"], "id": [1, 2], "name": ["ann", None], "score": [1.5, 2.0],
                         "tags": [["a", "b"], []]})
    flow = sl.Flow("plain")
    s = flow.read("in", testing.rows(rows))
    s.write("hashes", sl.RedisSink(redis_url, key="{table}:{id}"))
    s.write("json", sl.RedisSink(redis_url, key="j:{id}", command="set", value=["name", "score"]))
    s.write("text", sl.RedisSink(redis_url, key="t:{id}", command="set", value="score", ttl=timedelta(minutes=5)))
    sl.run(flow)
    assert r.hgetall("user:1") == {"table": "user", "id": "1", "name": "ann", "score": "1.5", "tags": '["a","b"]'}
    assert r.hgetall("user:2") == {"table": "user", "id": "2", "score": "2.0", "tags": "[]"}  # null: no field
    assert r.get("j:1") == '{"name":"ann","score":1.5}'
    assert r.get("t:2") == "2.0" and 0 < r.pttl("t:2") <= 300_000
    assert r.pttl("user:1") == -1

    flow = sl.Flow("gone")
    flow.read("in", testing.rows(rows.head(1))).write("d", sl.RedisSink(redis_url, key="{table}:{id}", command="del"))
    sl.run(flow)
    assert not r.exists("user:1") and r.exists("user:2")


def test_hset_with_ttl_expires_the_hash(redis_url: str, r: redis.Redis) -> None:
    flow = sl.Flow("ttl")
    flow.read("in", testing.rows([{"id": 7, "v": 1}])).write("h", sl.RedisSink(redis_url, key="h:{id}",
                                                                                ttl=timedelta(seconds=30)))
    sl.run(flow)
    assert r.hgetall("h:7") == {"id": "7", "v": "1"} and 0 < r.pttl("h:7") <= 30_000


def test_a_changelog_deletes_on_minus_d_and_skips_minus_u(redis_url: str, r: redis.Redis, tmp_path: Path) -> None:
    changes = [{"id": 1, "name": "a", "_op": "+I"}, {"id": 2, "name": "b", "_op": "+I"},
               {"id": 1, "name": "a", "_op": "-U"}, {"id": 1, "name": "a2", "_op": "+U"},
               {"id": 2, "name": None, "_op": "-D"}, {"id": 3, "name": "c", "_op": "+I"}]
    flow = sl.Flow("cdc")
    flow.read("in", testing.rows(changes)).changelog("id").write("cache", sl.RedisSink(redis_url, key="u:{id}"))
    sl.run(flow, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0, batch_size=2)
    assert r.hgetall("u:1") == {"id": "1", "name": "a2"}  # the -U row wrote nothing; _op is not a field
    assert not r.exists("u:2")
    assert r.hgetall("u:3") == {"id": "3", "name": "c"}


def test_a_row_without_a_key_fails_naming_the_step_and_the_row(redis_url: str) -> None:
    flow = sl.Flow("bad")
    flow.read("in", testing.rows([{"id": 1, "v": 1}, {"id": None, "v": 2}])).write(
        "to_redis", sl.RedisSink(redis_url, key="k:{id}"))
    with pytest.raises(sl.EncodeError, match=r"'to_redis'.*'id': None.*null"):
        sl.run(flow)


def test_key_templates_are_checked() -> None:
    with pytest.raises(sl.PlanError, match="format specs"):
        sl.RedisSink("redis://x", key="k:{id:05d}")
    with pytest.raises(sl.PlanError, match="command must be"):
        sl.RedisSink("redis://x", key="k:{id}", command="lpush")


def test_an_unknown_column_in_the_template_is_named(redis_url: str) -> None:
    flow = sl.Flow("cols")
    flow.read("in", testing.rows([{"id": 1}])).write("w", sl.RedisSink(redis_url, key="{tbl}:{id}"))
    with pytest.raises(sl.PlanError, match=r"'tbl'.*columns: id"):
        sl.run(flow)


def test_a_key_of_another_type_is_reported(redis_url: str, r: redis.Redis) -> None:
    r.set("k:1", "a string")
    flow = sl.Flow("type")
    flow.read("in", testing.rows([{"id": 1, "v": 1}])).write("w", sl.RedisSink(redis_url, key="k:{id}"))
    with pytest.raises(sl.SinkError, match="WRONGTYPE"):
        sl.run(flow)


@pytest.mark.parametrize("runtime", ["sl.run", "kafka-task"])
def test_commit_is_idempotent_and_the_epoch_key_only_goes_forward(redis_url: str, r: redis.Redis, tmp_path: Path,
                                                                   runtime: str) -> None:
    c = ctx(tmp_path, None) if runtime == "sl.run" else ctx(None, task=0)
    w = sl.RedisSink(redis_url, key="k:{id}").open(c)
    w.recover(None)
    w.write(pl.DataFrame({"id": [1, 2], "v": [10, 20]}))
    t1 = w.prepare(1)
    if runtime == "kafka-task":  # staged in Redis itself, where any worker finds it
        assert r.exists(t1["staged_key"]) and "staged" not in t1
    else:
        assert Path(t1["staged"]).exists()
    assert not r.exists("k:1")  # staged, not visible
    w.commit(t1)
    assert r.hget("k:1", "v") == "10" and r.get(w.epoch_key) == "1"
    r.hset("k:1", "v", "changed later")
    w.commit(t1)  # again, as recovery does: the epoch key says it is applied
    assert r.hget("k:1", "v") == "changed later"
    assert not list(tmp_path.glob("**/*.arrow")) and not r.keys("sluice:staged:*")


def test_a_zombie_is_fenced_by_the_epoch_key(redis_url: str, r: redis.Redis, tmp_path: Path) -> None:
    """Two writers of one task (same txn_prefix), the newer one recovered from the older one's record:
    the older one's later epoch is refused once the newer one has committed past it."""
    old = sl.RedisSink(redis_url, key="k:{id}").open(ctx(None, task=4))
    old.recover(None)
    old.write(pl.DataFrame({"id": [1], "v": ["old-1"]}))
    recorded = old.prepare(1)
    old.commit(recorded)

    new = sl.RedisSink(redis_url, key="k:{id}").open(ctx(None, task=4))
    new.recover(recorded)  # the task moved: the new owner continues the old owner's lineage
    assert new.epoch_key == old.epoch_key
    old.write(pl.DataFrame({"id": [1], "v": ["zombie-2"]}))
    zombie = old.prepare(2)  # the zombie staged epoch 2 (its Kafka record would be fenced, too)
    new.write(pl.DataFrame({"id": [1], "v": ["new-2"]}))
    new.commit(new.prepare(2))
    new.write(pl.DataFrame({"id": [1], "v": ["new-3"]}))
    new.commit(new.prepare(3))
    old.commit(zombie)
    assert r.hget("k:1", "v") == "new-3" and r.get(new.epoch_key) == "3"
    assert old.metrics()["epochs_skipped"] == 1


class _Racing(RedisWriter):
    """Between its WATCH and its EXEC, another writer of the same task commits the same epoch."""

    def _staged(self, txn: dict[str, Any]) -> list[bytes] | None:
        if not getattr(self, "raced", False):
            self.raced = True
            other = sl.RedisSink(self.spec.url, key="k:{id}").open(self.ctx)
            other.lineage = self.lineage  # a zombie of this task: same lineage, its own staging
            other.write(pl.DataFrame({"id": [1], "v": ["other"]}))
            other.commit(other.prepare(int(txn["epoch"])))
        return super()._staged(txn)


def test_a_concurrent_commit_of_the_same_epoch_makes_exec_fail_and_the_retry_skips(redis_url: str,
                                                                                     r: redis.Redis) -> None:
    c = ctx(None, task=9, step=f"race{uuid.uuid4().hex[:4]}")
    w = _Racing(sl.RedisSink(redis_url, key="k:{id}"), c)
    w.recover(None)
    w.write(pl.DataFrame({"id": [1], "v": ["mine"]}))
    w.commit(w.prepare(5))
    assert r.hget("k:1", "v") == "other"  # WATCH made this writer's EXEC fail; its retry saw epoch 5
    assert w.metrics()["epochs_skipped"] == 1 and r.get(w.epoch_key) == "5"


def test_recovery_drops_what_was_staged_after_the_record(redis_url: str, r: redis.Redis) -> None:
    w = sl.RedisSink(redis_url, key="k:{id}").open(ctx(None, task=2))
    w.recover(None)
    w.write(pl.DataFrame({"id": [1], "v": [1]}))
    recorded = w.prepare(1)
    w.write(pl.DataFrame({"id": [2], "v": [2]}))
    w.prepare(2)  # never recorded: the process dies here
    again = sl.RedisSink(redis_url, key="k:{id}").open(ctx(None, task=2))
    again.recover(recorded)
    assert r.exists("k:1") and not r.exists("k:2") and not r.keys("sluice:staged:*")


def test_a_new_checkpoint_directory_starts_a_new_lineage(redis_url: str, r: redis.Redis, tmp_path: Path) -> None:
    """A new job numbers its epochs from 1 again: it must not be taken for a replay of the old one."""
    for i, run in enumerate(("first", "second")):
        flow = sl.Flow("again")
        flow.read("in", testing.rows([{"id": i, "v": run}])).write("w", sl.RedisSink(redis_url, key="k:{id}"))
        sl.run(flow, checkpoint_dir=tmp_path / run)
    assert r.hget("k:0", "v") == "first" and r.hget("k:1", "v") == "second"
