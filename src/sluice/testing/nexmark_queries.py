"""Nexmark queries q0–q8, q11 and q12 with Sluice's Python API, and each one's DuckDB oracle.

Every query reads the one event stream of `sluice.testing.nexmark` (all three kinds, in arrival order),
declares `date_time` its event time with Flink's 4 s watermark (`WATERMARK FOR dateTime AS dateTime -
INTERVAL '4' SECOND`) and keeps the kinds it needs, as Flink's `person` / `auction` / `bid` views do.
The SQL each follows is nexmark-flink's `queries/qN.sql`. Where Flink's semantics need what Sluice does
not have, the query is the closest exact formulation (docs/benchmarks.md, "Nexmark"):

- q3 (a regular inner join of two unbounded streams) and q4/q6 (an auction's winning bid, then a running
  aggregate: update streams in Flink) are keyed process functions; q4 and q6 emit one row per closed
  auction (an upsert changelog: the last row of a category / seller is its current value).
- q4/q6: an auction closes when the watermark passes its `expires`; its price is its highest bid with
  `auction.date_time ≤ bid.date_time ≤ expires` (auctions without such a bid are left out, as the
  inner join does). AVG of BIGINTs is a BIGINT in Flink: the averages are floor(sum / count).
  q6 averages, per seller, the last 11 closed auctions (Flink's `ROWS BETWEEN 10 PRECEDING AND CURRENT
  ROW`) in closing order (expires, then the auction's date_time, then arrival).
- q5 and q8 also output the window (`starttime`, `endtime`), so that the check is per window.
- q12 groups by processing time. Sluice windows are in event time, so the query windows the bids'
  `proc_time`, the wall-clock time at which the generator releases each event (Beam's
  `wallclockTimestamp`, non-decreasing in arrival order, hence watermark delay 0): the processing-time
  windows of a run that reads the stream at its nominal rate, and deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import polars as pl

import sluice as sl
from sluice.connectors.memory import CollectSink
from sluice.flow import Flow, Stream

__all__ = ["QUERIES", "build", "build_with_late", "oracle", "same_rows", "views_sql"]

WATERMARK = timedelta(seconds=4)
PERSON, AUCTION, BID = 0, 1, 2
OPT = sl.Optional

PERSON_COLS = {"person_id": ("id", int), "person_name": ("name", str), "person_email": ("email_address", str),
               "person_credit_card": ("credit_card", str), "person_city": ("city", str),
               "person_state": ("state", str), "person_extra": ("extra", str)}
AUCTION_COLS = {"auction_id": ("id", int), "auction_item_name": ("item_name", str),
                "auction_description": ("description", str), "auction_initial_bid": ("initial_bid", int),
                "auction_reserve": ("reserve", int), "auction_expires": ("expires", int),
                "auction_seller": ("seller", int), "auction_category": ("category", int),
                "auction_extra": ("extra", str)}
BID_COLS = {"bid_auction": ("auction", int), "bid_bidder": ("bidder", int), "bid_price": ("price", int),
            "bid_channel": ("channel", str), "bid_url": ("url", str), "bid_extra": ("extra", str)}


def _read(flow: Flow, source: Any, prefix_cols: dict[str, tuple[str, type]], wanted: Iterable[str],
          time_column: str = "date_time", delay: timedelta = WATERMARK) -> Stream:
    names = [c for c, (short, _) in prefix_cols.items() if short in wanted]
    schema: dict[str, Any] = {"event_type": int, "date_time": int}
    if time_column != "date_time":
        schema[time_column] = int
    schema |= {c: OPT(prefix_cols[c][1]) for c in names}
    return flow.read("events", source, schema=schema).event_time(time_column, delay)


def _kind(events: Stream, kind: int, cols: dict[str, tuple[str, type]], wanted: Iterable[str], name: str,
          where: pl.Expr | None = None) -> Stream:
    """One kind's rows, with Flink's column names (the view `person`, `auction` or `bid`)."""
    keep = pl.col("event_type") == kind
    if where is not None:
        keep = keep & where
    named = {short: pl.col(c) for c, (short, _) in cols.items() if short in wanted}
    return events.filter(keep, name=f"{name}_rows").select("date_time", step=name, **named)


def _schema_of(cols: dict[str, tuple[str, type]], *wanted: str) -> dict[str, Any]:
    found = {short: OPT(t) for short, t in cols.values() if short in wanted}
    return found


# --- process functions ------------------------------------------------------------------------


class _RegularJoin(sl.KeyedProcessFunction):
    """q3: auctions ⋈ persons on seller = id, an inner join of two append-only streams: a person is kept
    (ids are unique), auctions wait for their seller."""

    def open(self, ctx: Any) -> None:
        self.person = ctx.value_state("person")
        self.waiting = ctx.list_state("auctions")

    def process(self, r: dict[str, Any], ctx: Any) -> Iterable[dict[str, Any]]:
        if r["kind"] == PERSON:
            self.person.update([r["name"], r["city"], r["state"]])
            for aid in self.waiting.get():
                yield {"name": r["name"], "city": r["city"], "state": r["state"], "id": aid}
            self.waiting.clear()
            return
        p = self.person.value()
        if p is None:
            self.waiting.add(r["auction"])
        else:
            yield {"name": p[0], "city": p[1], "state": p[2], "id": r["auction"]}


class _WinningBid(sl.KeyedProcessFunction):
    """q4/q6, per auction: its highest bid with date_time in [auction.date_time, expires], emitted when the
    watermark passes expires (the auction closes). Bids that come before their auction (ties in time, or
    a held-back auction) wait for it."""

    def open(self, ctx: Any) -> None:
        self.auction = ctx.value_state("auction")  # [category, seller, start, expires, best or None, closed]
        self.early = ctx.list_state("early_bids")  # [date_time, price] of bids seen before the auction

    def process(self, r: dict[str, Any], ctx: Any) -> None:
        a = self.auction.value()
        if r["kind"] == AUCTION:
            best = None
            for t, price in self.early.get():
                if r["date_time"] <= t <= r["expires"] and (best is None or price > best):
                    best = price
            self.early.clear()
            self.auction.update([r["category"], r["seller"], r["date_time"], r["expires"], best, False])
            ctx.timers.event_time(r["expires"])
        elif a is None:
            self.early.add([r["date_time"], r["price"]])
        elif not a[5] and a[2] <= r["date_time"] <= a[3] and (a[4] is None or r["price"] > a[4]):
            a[4] = r["price"]
            self.auction.update(a)

    def on_timer(self, timestamp: int, ctx: Any) -> Iterable[dict[str, Any]]:
        a = self.auction.value()
        if a is None or a[5]:
            return
        self.auction.update([a[0], a[1], a[2], a[3], None, True])  # closed: later bids are ignored
        if a[4] is not None:
            yield {"id": ctx.key, "category": a[0], "seller": a[1], "final": a[4], "expires": a[3]}


class _RunningAverage(sl.KeyedProcessFunction):
    """q4 (all of a category's closed auctions) and q6 (a seller's last `last` ones): floor(sum / count)."""

    def __init__(self, key: str, out: str, last: int | None) -> None:
        self.key, self.out, self.last = key, out, last

    def open(self, ctx: Any) -> None:
        self.finals = ctx.value_state("finals")

    def process(self, r: dict[str, Any], ctx: Any) -> Iterable[dict[str, Any]]:
        finals = self.finals.value()
        if self.last is None:  # [sum, count]
            finals = [r["final"], 1] if finals is None else [finals[0] + r["final"], finals[1] + 1]
            avg = finals[0] // finals[1]
        else:  # the last `last` prices
            finals = [*(finals or []), r["final"]][-self.last:]
            avg = sum(finals) // len(finals)
        self.finals.update(finals)
        yield {self.key: ctx.key, self.out: avg}


# --- the queries -------------------------------------------------------------------------------


def q0(flow: Flow, source: Any) -> Stream:
    cols = ("auction", "bidder", "price", "extra")
    return _kind(_read(flow, source, BID_COLS, cols), BID, BID_COLS, cols, "bid").select(
        "auction", "bidder", "price", "date_time", "extra", step="q0")


def q1(flow: Flow, source: Any) -> Stream:
    cols = ("auction", "bidder", "price", "extra")
    euros = (pl.col("price").cast(pl.Decimal(20, 0)) * pl.lit(Decimal("0.908"))).cast(pl.Decimal(23, 3))
    return _kind(_read(flow, source, BID_COLS, cols), BID, BID_COLS, cols, "bid").select(
        "auction", "bidder", "date_time", "extra", price=euros, step="q1").select(
        "auction", "bidder", "price", "date_time", "extra", step="q1_columns")


def q2(flow: Flow, source: Any) -> Stream:
    cols = ("auction", "price")
    bids = _kind(_read(flow, source, BID_COLS, cols), BID, BID_COLS, cols, "bid",
                 where=pl.col("bid_auction") % 123 == 0)
    return bids.select("auction", "price", step="q2")


def q3(flow: Flow, source: Any) -> Stream:
    events = _read(flow, source, PERSON_COLS | AUCTION_COLS, ("id", "name", "city", "state", "seller", "category"))
    persons = events.filter((pl.col("event_type") == PERSON) & pl.col("person_state").is_in(["OR", "ID", "CA"]),
                            name="person_rows").select(
        key=pl.col("person_id"), kind=pl.lit(PERSON, pl.Int64), name=pl.col("person_name"),
        city=pl.col("person_city"), state=pl.col("person_state"), auction=pl.lit(None, pl.Int64), step="persons")
    auctions = events.filter((pl.col("event_type") == AUCTION) & (pl.col("auction_category") == 10),
                             name="auction_rows").select(
        key=pl.col("auction_seller"), kind=pl.lit(AUCTION, pl.Int64), name=pl.lit(None, pl.String),
        city=pl.lit(None, pl.String), state=pl.lit(None, pl.String), auction=pl.col("auction_id"), step="auctions")
    return persons.union(auctions, name="both").key_by("key").process(
        "q3", _RegularJoin(), schema={"name": str, "city": str, "state": str, "id": int})


def _closed_auctions(flow: Flow, source: Any) -> Stream:
    events = _read(flow, source, AUCTION_COLS | BID_COLS, ("id", "expires", "seller", "category", "auction", "price"))
    auctions = events.filter(pl.col("event_type") == AUCTION, name="auction_rows").select(
        "date_time", key=pl.col("auction_id"), kind=pl.lit(AUCTION, pl.Int64), category=pl.col("auction_category"),
        seller=pl.col("auction_seller"), expires=pl.col("auction_expires"), price=pl.lit(None, pl.Int64),
        step="auctions")
    bids = events.filter(pl.col("event_type") == BID, name="bid_rows").select(
        "date_time", key=pl.col("bid_auction"), kind=pl.lit(BID, pl.Int64), category=pl.lit(None, pl.Int64),
        seller=pl.lit(None, pl.Int64), expires=pl.lit(None, pl.Int64), price=pl.col("bid_price"), step="bids")
    return auctions.union(bids, name="both").key_by("key").process(
        "winning_bids", _WinningBid(),
        schema={"id": int, "category": int, "seller": int, "final": int, "expires": int})


def q4(flow: Flow, source: Any) -> Stream:
    return _closed_auctions(flow, source).key_by("category").process(
        "q4", _RunningAverage("category", "final", None), schema={"category": int, "final": int})


def q5(flow: Flow, source: Any) -> Stream:
    bids = _kind(_read(flow, source, BID_COLS, ("auction",)), BID, BID_COLS, ("auction",), "bid")
    counts = bids.key_by("auction").window("auction_bids", sl.Sliding(timedelta(seconds=10), timedelta(seconds=2)),
                                            num=sl.agg.count()).select(
        "auction", "num", starttime=pl.col("window_start"), endtime=pl.col("window_end"), step="auction_bids_rows")
    # every row of one hop window has event time endtime - 1: a 2 s tumbling window holds exactly them
    per_window = timedelta(seconds=2)
    maxes = counts.key_by("starttime", "endtime").window("max_bids", sl.Tumbling(per_window),
                                                         maxn=sl.agg.max("num")).select(
        "starttime", "endtime", "maxn", step="max_bids_rows")
    return counts.window_join("hot_items", maxes, by=["starttime", "endtime"], window=sl.Tumbling(per_window)).filter(
        pl.col("num") >= pl.col("maxn"), name="at_max").select("auction", "num", "starttime", "endtime", step="q5")


def q6(flow: Flow, source: Any) -> Stream:
    return _closed_auctions(flow, source).key_by("seller").process(
        "q6", _RunningAverage("seller", "avg_price", 11), schema={"seller": int, "avg_price": int})


def q7(flow: Flow, source: Any) -> Stream:
    cols = ("auction", "bidder", "price", "extra")
    bids = _kind(_read(flow, source, BID_COLS, cols), BID, BID_COLS, cols, "bid")
    maxes = bids.window("max_price", sl.Tumbling(timedelta(seconds=10)), price=sl.agg.max("price")).select(
        "price", step="max_price_rows")
    # a max row has event time window_end - 1; Flink's `B.dateTime BETWEEN window_end - 10 s AND window_end`
    joined = maxes.interval_join("highest_bids", bids, by="price", lower=timedelta(milliseconds=-9_999),
                                 upper=timedelta(milliseconds=1))
    return joined.select("auction", "price", "bidder", "date_time", "extra", step="q7")


def q8(flow: Flow, source: Any) -> Stream:
    events = _read(flow, source, PERSON_COLS | AUCTION_COLS, ("id", "name", "seller"))
    ten = sl.Tumbling(timedelta(seconds=10))
    persons = _kind(events, PERSON, PERSON_COLS, ("id", "name"), "person").key_by("id", "name").window(
        "new_persons", ten, n=sl.agg.count()).select(
        "id", "name", starttime=pl.col("window_start"), endtime=pl.col("window_end"), step="new_persons_rows")
    sellers = _kind(events, AUCTION, AUCTION_COLS, ("seller",), "auction").key_by("seller").window(
        "new_sellers", ten, n=sl.agg.count()).select(
        id=pl.col("seller"), starttime=pl.col("window_start"), endtime=pl.col("window_end"), step="new_sellers_rows")
    return persons.window_join("q8_join", sellers, by=["id", "starttime", "endtime"], window=ten).select(
        "id", "name", stime=pl.col("starttime"), step="q8")


def q11(flow: Flow, source: Any) -> Stream:
    bids = _kind(_read(flow, source, BID_COLS, ("bidder",)), BID, BID_COLS, ("bidder",), "bid")
    return bids.key_by("bidder").window("user_sessions", sl.Session(timedelta(seconds=10)), bid_count=sl.agg.count()).select(
        "bidder", "bid_count", starttime=pl.col("window_start"), endtime=pl.col("window_end"), step="q11")


def q12(flow: Flow, source: Any) -> Stream:
    events = _read(flow, source, BID_COLS, ("bidder",), time_column="proc_time", delay=timedelta(0))
    bids = _kind(events, BID, BID_COLS, ("bidder",), "bid")
    return bids.key_by("bidder").window("proc_time_windows", sl.Tumbling(timedelta(seconds=10)),
                                        bid_count=sl.agg.count()).select(
        "bidder", "bid_count", starttime=pl.col("window_start"), endtime=pl.col("window_end"), step="q12")


QUERIES: dict[str, Callable[[Flow, Any], Stream]] = {
    "q0": q0, "q1": q1, "q2": q2, "q3": q3, "q4": q4, "q5": q5, "q6": q6, "q7": q7, "q8": q8, "q11": q11, "q12": q12,
}


def build(query: str, source: Any, sink: Any | None = None) -> tuple[Flow, Any]:
    """The flow of `query` reading `source` (the generated stream), writing to `sink` (a new CollectSink
    by default); returns (flow, sink)."""
    flow, sink, _ = build_with_late(query, source, sink)
    return flow, sink


def build_with_late(query: str, source: Any, sink: Any | None = None) -> tuple[Flow, Any, dict[str, CollectSink]]:
    """As `build`, and every step's late stream goes to a CollectSink of its own (`step_port` → sink):
    with the generator's out-of-orderness under the 4 s watermark they stay empty."""
    flow = Flow(f"nexmark_{query}")
    out = QUERIES[query](flow, source)
    sink = sink if sink is not None else CollectSink()
    out.write("out", sink)
    late: dict[str, CollectSink] = {}
    for ref in flow.plan_so_far().unrouted():
        name = f"{ref.step}_{ref.port}"
        late[name] = CollectSink()
        Stream(flow, ref).write(name, late[name])
    return flow, sink, late


# --- the oracles -------------------------------------------------------------------------------


def views_sql(events: str) -> str:
    """Flink's person / auction / bid views over `events` (a table name or a subquery) with an `arrival`
    column (the row's position in the stream: auctions closing at the same time close in arrival order)."""
    def view(name: str, kind: int, cols: dict[str, tuple[str, type]], more: str = "") -> str:
        sel = ", ".join(f"{c} AS {short}" for c, (short, _) in cols.items())
        return f"CREATE OR REPLACE VIEW {name} AS SELECT {sel}, date_time{more} FROM {events} WHERE event_type = {kind};"
    return "\n".join([view("person", PERSON, PERSON_COLS), view("auction", AUCTION, AUCTION_COLS, ", arrival"),
                      view("bid", BID, BID_COLS, ", proc_time")])


_WINNERS = """
    SELECT A.id, A.category, A.seller, A.expires, A.date_time, A.arrival, MAX(B.price) AS final
    FROM auction A JOIN bid B ON A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
    GROUP BY A.id, A.category, A.seller, A.expires, A.date_time, A.arrival"""

ORACLES = {
    "q0": "SELECT auction, bidder, price, date_time, extra FROM bid",
    "q1": "SELECT auction, bidder, CAST(0.908 * price AS DECIMAL(23, 3)) AS price, date_time, extra FROM bid",
    "q2": "SELECT auction, price FROM bid WHERE auction % 123 = 0",
    "q3": """SELECT P.name, P.city, P.state, A.id FROM auction A JOIN person P ON A.seller = P.id
             WHERE A.category = 10 AND P.state IN ('OR', 'ID', 'CA')""",
    # the update stream: one row per closed auction, running floor(avg) per category in closing order
    "q4": f"""WITH w AS ({_WINNERS})
              SELECT category, (SUM(final) OVER c) // (COUNT(*) OVER c) AS final FROM w
              WINDOW c AS (PARTITION BY category ORDER BY expires, date_time, arrival ROWS UNBOUNDED PRECEDING)""",
    "q5": """WITH hop AS (SELECT auction, (date_time // 2000) * 2000 - k * 2000 AS starttime
                         FROM bid CROSS JOIN range(5) AS r(k)),
                  counts AS (SELECT auction, starttime, COUNT(*) AS num FROM hop GROUP BY auction, starttime),
                  maxes AS (SELECT starttime, MAX(num) AS maxn FROM counts GROUP BY starttime)
             SELECT c.auction, c.num, c.starttime, c.starttime + 10000 AS endtime
             FROM counts c JOIN maxes m ON c.starttime = m.starttime AND c.num >= m.maxn""",
    "q6": f"""WITH w AS ({_WINNERS})
              SELECT seller, (SUM(final) OVER s) // (COUNT(*) OVER s) AS avg_price FROM w
              WINDOW s AS (PARTITION BY seller ORDER BY expires, date_time, arrival ROWS BETWEEN 10 PRECEDING AND CURRENT ROW)""",
    "q7": """WITH m AS (SELECT (date_time // 10000) * 10000 + 10000 AS wend, MAX(price) AS maxprice FROM bid GROUP BY 1)
             SELECT B.auction, B.price, B.bidder, B.date_time, B.extra
             FROM bid B JOIN m ON B.price = m.maxprice AND B.date_time BETWEEN m.wend - 10000 AND m.wend""",
    "q8": """WITH p AS (SELECT DISTINCT id, name, (date_time // 10000) * 10000 AS ws FROM person),
                  a AS (SELECT DISTINCT seller, (date_time // 10000) * 10000 AS ws FROM auction)
             SELECT p.id, p.name, p.ws AS stime FROM p JOIN a ON p.id = a.seller AND p.ws = a.ws""",
    "q11": """WITH o AS (SELECT bidder, date_time,
                         CASE WHEN date_time - LAG(date_time) OVER (PARTITION BY bidder ORDER BY date_time) <= 10000
                              THEN 0 ELSE 1 END AS new FROM bid),
                   s AS (SELECT bidder, date_time, SUM(new) OVER (PARTITION BY bidder ORDER BY date_time
                                                                 RANGE UNBOUNDED PRECEDING) AS sid FROM o)
              SELECT bidder, COUNT(*) AS bid_count, MIN(date_time) AS starttime, MAX(date_time) + 10000 AS endtime
              FROM s GROUP BY bidder, sid""",
    "q12": """SELECT bidder, COUNT(*) AS bid_count, (proc_time // 10000) * 10000 AS starttime,
                     (proc_time // 10000) * 10000 + 10000 AS endtime
              FROM bid GROUP BY bidder, proc_time // 10000""",
}


def oracle(query: str, events: Any, con: Any = None) -> pl.DataFrame:
    """DuckDB's result of `query` over `events`: a Parquet path, or a polars/Arrow table."""
    import duckdb

    con = con if con is not None else duckdb.connect()
    if isinstance(events, str):
        source = f"(SELECT *, file_row_number AS arrival FROM read_parquet('{events}', file_row_number = true))"
    else:
        frame = events if isinstance(events, pl.DataFrame) else pl.from_arrow(events)
        assert isinstance(frame, pl.DataFrame)
        con.register("nexmark_events", frame.with_row_index("arrival"))
        source = "nexmark_events"
    con.execute(views_sql(source))
    result: pl.DataFrame = con.sql(ORACLES[query]).pl()
    return result


def same_rows(got: pl.DataFrame, want: pl.DataFrame) -> str | None:
    """None when both hold the same rows (as multisets, columns by name); else what differs."""
    if sorted(got.columns) != sorted(want.columns):
        return f"columns differ: got {got.columns}, want {want.columns}"
    got = got.select(want.columns)
    if got.schema != want.schema:
        try:
            got = got.cast(want.schema)
        except pl.exceptions.PolarsError:
            return f"types differ: got {got.schema}, want {want.schema}"
    if got.height != want.height:
        return f"{got.height} rows, want {want.height}"
    a, b = got.sort(want.columns, nulls_last=True), want.sort(want.columns, nulls_last=True)
    if not a.equals(b):
        diff = pl.concat([a.join(b, on=want.columns, how="anti", nulls_equal=True).with_columns(side=pl.lit("got only")),
                          b.join(a, on=want.columns, how="anti", nulls_equal=True).with_columns(side=pl.lit("want only"))])
        return f"rows differ (first of {diff.height}):\n{diff.head(10)}"
    return None
