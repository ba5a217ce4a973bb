#!/usr/bin/env python3
"""Run the chaos registry and rewrite the faults table of docs/guarantees.md (`make chaos`).

Each registered script prints, as its last lines, one `CHAOS-ROW {json}` per fault kind it exercised
(fault, runs, survived, lost, duplicated, stopped, command). This runs them (modest default sizes; --quick:
small ones, for trying), collects the rows and rewrites the table between `<!-- chaos-table:begin -->` and
`<!-- chaos-table:end -->`. With --only NAME only that entry runs, and the rows of the others stay as they were.

    python bench/chaos/table.py [--quick] [--only NAME ...] [--from NAME=FILE ...] [--dry-run] [--list]

--from NAME=FILE takes an entry's rows from the saved output of a run made earlier (a long soak started
with nohup), instead of running it; with --from and no --only, only the entries given are updated.

Tests that already inject a fault case by case (checkpoint damage, plan changes, poison fuzz) are counted by
bench/chaos/pytest_cases.py: one row per test function, a case survived when its test passed (each asserts the
output equals its oracle, so lost = duplicated = 0 then; a failed case's counts are not broken out: "?").
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "guarantees.md"
BEGIN, END = "<!-- chaos-table:begin -->", "<!-- chaos-table:end -->"
PY = "python"  # commands are written as a user types them; run with this interpreter


@dataclass(frozen=True)
class Entry:
    name: str
    args: tuple[str, ...] | None  # bench/chaos/<script> and its arguments; None: not built yet
    quick: tuple[str, ...] | None = None
    note: str = ""


REGISTRY: tuple[Entry, ...] = (
    Entry("kill-soak", ("kill_soak.py", "--runs", "210"), ("kill_soak.py", "--runs", "12", "--events", "8000")),
    Entry("broker", ("broker.py", "--rounds", "5"), ("broker.py", "--rounds", "1")),
    Entry("checkpoint-damage", ("pytest_cases.py", "tests/test_checkpoint_damage.py")),
    Entry("plan-changes", ("pytest_cases.py", "tests/test_plan_changes.py")),
    Entry("poison-fuzz", ("pytest_cases.py", "tests/test_poison_fuzz.py")),
    Entry("network-loss", ("network.py", "--rounds", "5", "--kinds", "partition,loopback", "--min-s", "2", "--max-s", "20"),
          ("network.py", "--rounds", "1", "--kinds", "partition", "--min-s", "2", "--max-s", "4")),
    Entry("cluster", ("cluster.py", "--rounds", "5"), ("cluster.py", "--rounds", "1")),
    Entry("scale-out", ("scale_out.py", "--partitions", "64", "--workers", "16", "--churn-s", "60", "--events", "1000000"),
          ("scale_out.py", "--partitions", "32", "--workers", "8", "--churn-s", "30", "--events", "300000")),
)


def rows_of(e: Entry, stdout: str) -> list[dict]:
    rows = []
    for line in stdout.splitlines():
        if line.startswith("CHAOS-ROW "):
            row = json.loads(line.removeprefix("CHAOS-ROW "))
            row["source"] = e.name
            rows.append(row)
    return rows


def run_entry(e: Entry, quick: bool, saved: Path | None = None) -> tuple[list[dict], str]:
    if saved is not None:
        print(f"== {e.name}: rows from {saved}", flush=True)
        text = saved.read_text()
        rows, tail = rows_of(e, text), "\n".join(text.splitlines()[-3:])
        if not rows:
            print(f"   {saved} holds no CHAOS-ROW lines; its rows stay as they were", flush=True)
        return rows, tail
    args = (e.quick if quick and e.quick else e.args) or ()
    cmd = [sys.executable, str(ROOT / "bench" / "chaos" / args[0]), *args[1:]]
    print(f"== {e.name}: {PY} bench/chaos/{' '.join(args)}", flush=True)
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    rows = rows_of(e, r.stdout)
    tail = "\n".join(r.stdout.splitlines()[-3:] + r.stderr.splitlines()[-5:])
    if not rows:
        print(f"   no CHAOS-ROW lines (exit {r.returncode}); its rows stay as they were:\n{tail}", flush=True)
    else:
        for row in rows:
            print(f"   {row['fault']}: {row['runs']} runs, {row['survived']} survived, lost {row['lost']}, "
                  f"duplicated {row['duplicated']}, stopped {row['stopped']}", flush=True)
    return rows, tail


def cell(v: object) -> str:
    return "?" if v is None else str(v).replace("|", "\\|")


def render(rows: list[dict], pending: list[Entry], date: str, not_run: tuple[str, ...] = ()) -> str:
    out = [f"Regenerated with `make chaos` (`python bench/chaos/table.py`), last on {date}. Lost and duplicated count "
           "output rows (windows, matches, records) against each fault's oracle; \"stopped\" counts runs where a "
           "process stopped with a clear error and a restart finished exactly once.", "",
           "| Fault | Runs | Survived | Lost | Duplicated | Stopped | Command | Source |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {cell(r['fault'])} | {cell(r['runs'])} | {cell(r['survived'])} | {cell(r['lost'])} | "
                   f"{cell(r['duplicated'])} | {cell(r['stopped'])} | `{cell(r.get('command', ''))}` | {r['source']} |")
    if not_run:
        out += ["", f"Registered but not run since the table was first generated: {', '.join(not_run)} (see History)."]
    if pending:
        out += ["", "Not measured yet: " + "; ".join(f"{e.note} ({e.name})" for e in pending) + "."]
    return "\n".join(out)


def parse(table: str) -> list[dict]:
    """The rows of the table as it stands (to keep those of entries not run this time)."""
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) != 8 or cells[0] in ("Fault", "---"):
            continue

        def num(c: str) -> int | None:
            return None if c == "?" else int(c)

        rows.append({"fault": cells[0].replace("\\|", "|"), "runs": num(cells[1]), "survived": num(cells[2]),
                     "lost": num(cells[3]), "duplicated": num(cells[4]), "stopped": num(cells[5]),
                     "command": cells[6].strip("`"), "source": cells[7]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts, for trying")
    ap.add_argument("--only", action="append", default=[], help="run only this registry entry (repeatable)")
    ap.add_argument("--from", dest="saved", action="append", default=[], metavar="NAME=FILE",
                    help="an entry's rows from the saved output of an earlier run (repeatable)")
    ap.add_argument("--dry-run", action="store_true", help="print the table, do not write docs/guarantees.md")
    ap.add_argument("--list", action="store_true", help="list the registry")
    a = ap.parse_args(argv)
    if a.list:
        for e in REGISTRY:
            print(f"{e.name}: " + (f"bench/chaos/{' '.join(e.args)}" if e.args else f"(not built: {e.note})"))
        return 0
    names = {e.name for e in REGISTRY}
    saved = {}
    for item in a.saved:
        name, sep, file = item.partition("=")
        if not sep or not Path(file).is_file():
            ap.error(f"--from {item!r}: give NAME=FILE with an existing file")
        saved[name] = Path(file)
    unknown = [n for n in [*a.only, *saved] if n not in names]
    if unknown:
        ap.error(f"unknown entry {unknown}; the registry: {', '.join(sorted(names))}")
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        print(f"error: {DOC} has no {BEGIN} … {END} markers; put them where the table goes", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    old, tail = rest.split(END, 1)
    only = set(a.only) | set(saved) if a.only or saved else None
    chosen = [e for e in REGISTRY if e.args and (only is None or e.name in only)]
    fresh: dict[str, list[dict]] = {}
    failed = []
    for e in chosen:
        rows, _ = run_entry(e, a.quick, saved.get(e.name))
        if rows:
            fresh[e.name] = rows
        else:
            failed.append(e.name)
    kept = [r for r in parse(old) if r["source"] not in fresh]
    order = [e.name for e in REGISTRY]
    rows = sorted(kept + [r for rs in fresh.values() for r in rs],
                  key=lambda r: order.index(r["source"]) if r["source"] in order else len(order))
    have = {r["source"] for r in rows}
    table = render(rows, [e for e in REGISTRY if not e.args], datetime.date.today().isoformat(),
                   tuple(e.name for e in REGISTRY if e.args and e.name not in have))
    if a.dry_run:
        print(table)
    else:
        DOC.write_text(head + BEGIN + "\n" + table + "\n" + END + tail)
        print(f"rewrote the table in {DOC.relative_to(ROOT)} ({len(rows)} rows)")
    bad = [r for r in rows if r["source"] in fresh and (r["lost"] or r["duplicated"] or r["survived"] != r["runs"])]
    if failed:
        print(f"entries that printed no rows: {', '.join(failed)}", file=sys.stderr)
    return 1 if bad or failed else 0


if __name__ == "__main__":
    sys.exit(main())
