"""Session windows merge a batch only with the open sessions of the keys it has records for: many keys,
compound keys with nulls, out-of-order input, a percentile sketch, against a brute-force reference."""

from __future__ import annotations

import math
import random
from datetime import timedelta

import polars as pl
import pytest

import sluice as sl
from sluice import testing

GAP = 1_000
SCHEMA = {"t": pl.Int64, "k": pl.String, "g": pl.Int64, "v": pl.Int64, "i": pl.Int64}


def make_records(seed: int, n: int = 700) -> list[dict]:
    """Times rising with gaps around GAP (so sessions both join and split), keys from a large set,
    arrival order shuffled by up to 400 ms of event time."""
    rnd = random.Random(seed)
    recs, t = [], 0
    for i in range(n):
        t += rnd.choice([0, 3, 50, 400, GAP, GAP + 1, 2_500]) // 8
        key = rnd.randrange(120)
        g = None if key % 7 == 0 else key % 3
        recs.append({"t": t + rnd.choice([0, GAP - 1, GAP, GAP + 1]) * (key % 4), "k": f"k{key}", "g": g,
                     "v": rnd.randrange(1, 2000), "i": i})
    noisy = sorted(recs, key=lambda r: r["t"] + rnd.randrange(400))
    return noisy


def reference(recs: list[dict]) -> list[tuple]:
    """Per (k, g): sort by time, split where the next record is more than GAP after the session's last."""
    by_key: dict[tuple, list[dict]] = {}
    for r in recs:
        by_key.setdefault((r["k"], r["g"]), []).append(r)
    out = []
    for (k, g), rs in by_key.items():
        rs.sort(key=lambda r: r["t"])
        session = [rs[0]]
        for r in [*rs[1:], None]:
            if r is not None and r["t"] - session[-1]["t"] <= GAP:
                session.append(r)
                continue
            vs = sorted(x["v"] for x in session)
            median = vs[math.ceil(0.5 * len(vs)) - 1]
            out.append((k, g, session[0]["t"], session[-1]["t"] + GAP, len(session), sum(vs), median))
            if r is not None:
                session = [r]
    return sorted(out, key=lambda o: (o[3], o[0], o[1] if o[1] is not None else -1, o[2]))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("sketch", [False, True])
def test_sessions_of_many_keys_equal_the_reference(seed: int, sketch: bool) -> None:
    recs = make_records(seed)
    expected = reference(recs)
    for batch_size in (1, 7, 65536):
        flow = sl.Flow("s")
        src = flow.read("in", testing.rows(pl.DataFrame(recs, schema=SCHEMA)))
        aggs = {"n": sl.agg.count(), "s": sl.agg.sum("v")}
        if sketch:
            aggs["p"] = sl.agg.median("v")
        win = (src.event_time("t", timedelta(milliseconds=400)).key_by("k", "g")
               .window("w", sl.Session(timedelta(milliseconds=GAP)), **aggs))
        out, late = testing.collect(win), testing.collect(win.late)
        sl.run(flow, batch_size=batch_size)
        assert late.frame().height == 0
        got = out.frame()
        rows = list(got.select("k", "g", "window_start", "window_end", "n", "s").iter_rows())
        rows = sorted(rows, key=lambda o: (o[3], o[0], o[1] if o[1] is not None else -1, o[2]))
        assert rows == [e[:6] for e in expected], batch_size
        if sketch:
            medians = {(r[0], r[1], r[2]): r[3] for r in got.select("k", "g", "window_start", "p").iter_rows()}
            for e in expected:  # the sketch's guarantee: within 0.5% of the exact nearest-rank median
                assert abs(medians[(e[0], e[1], e[2])] - e[6]) <= 0.005 * e[6] + 1e-9, (batch_size, e)
