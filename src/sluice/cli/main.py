"""sluice — run, inspect and demo stream-processing flows.

    sluice run pipeline.py            run the flow defined in pipeline.py to the end of its input
    sluice run pipeline.py -- --input x   the pipeline file sees sys.argv == ["pipeline.py", "--input", "x"]
    sluice run pipeline.py --broker kafka://HOST:PORT --app-id APP --workers 3
                                      the same flow over Kafka, as 3 worker processes (exactly-once)
    sluice explain pipeline.py        print the flow's plan, step by step (--json: as JSON)
    sluice demo                       the real-time analytics demo on the embedded log
    sluice log topics | tail TOPIC    look inside the embedded log
    sluice checkpoints list | inspect | prune --dir DIR
"""

from __future__ import annotations

import argparse
import contextlib
import runpy
import sys
import threading
import time
from pathlib import Path

from sluice.core.errors import SluiceError
from sluice.flow import Flow
from sluice.runtime.ending import skip_exit_collections
from sluice.state.backends import BACKENDS


def load_flow(path: str, name: str | None, argv: list[str] | None = None) -> Flow:
    """The Flow a pipeline file defines: the one named `name`, the variable `flow`, or the only one.
    The file runs with sys.argv = [path, *argv] (the arguments after `--` on the command line)."""
    file = Path(path)
    if not file.exists():
        raise SystemExit(f"sluice: no such pipeline file: {path}")
    sys.path.insert(0, str(file.resolve().parent))
    saved_argv, sys.argv = sys.argv, [path, *(argv or [])]
    try:
        namespace = runpy.run_path(str(file), run_name="__sluice__")
    finally:
        sys.argv = saved_argv
    flows = {k: v for k, v in namespace.items() if isinstance(v, Flow)}
    if name is not None:
        by_name = {f.name: f for f in flows.values()}
        if name not in by_name:
            raise SystemExit(f"sluice: {path} has no flow named {name!r}; it has: {', '.join(by_name) or 'none'}")
        return by_name[name]
    if "flow" in flows:
        return flows["flow"]
    if len(flows) == 1:
        return next(iter(flows.values()))
    if not flows:
        raise SystemExit(f"sluice: {path} defines no Flow; create one at module level, e.g. flow = sl.Flow('name')")
    raise SystemExit(f"sluice: {path} defines several flows ({', '.join(f.name for f in flows.values())}); pick one with --flow")


class Progress:
    """Progress lines on stderr: one at start, then one a second for the whole run — also while the first
    (large) block is read and processed, when the count has not moved yet. `prefix` names a worker."""

    def __init__(self, what: str, prefix: str = "", interval_s: float = 1.0) -> None:
        self.what, self.prefix, self.interval_s = what, prefix, interval_s
        self.rows = 0
        self.start = time.perf_counter()
        self.done = threading.Event()
        self.ticker = threading.Thread(target=self._tick, name="sluice-progress", daemon=True)

    def __enter__(self) -> Progress:
        self._line(f"running {self.what}")
        self.ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.ticker.join()

    def __call__(self, rows: int, seconds: float) -> None:  # the runtime's progress callback
        self.rows = rows

    def _tick(self) -> None:
        while not self.done.wait(self.interval_s):
            seconds = time.perf_counter() - self.start
            self._line(f"… {self.rows:,} records in {seconds:.1f} s ({self.rows / max(seconds, 1e-9):,.0f}/s)")

    def _line(self, text: str) -> None:
        print(f"{self.prefix}  {text}", file=sys.stderr, flush=True)


def cmd_run(a: argparse.Namespace) -> int:
    import os

    if os.environ.get("SLUICE_FAILPOINTS"):  # crash tests: die at a named place in the commit path
        from sluice.core import failpoints

        failpoints.arm(os.environ["SLUICE_FAILPOINTS"])
    from sluice import settings

    if a.broker:
        settings.set_broker(a.broker)  # what sl.Topic uses in this process
        os.environ["SLUICE_BROKER"] = a.broker  # and in the worker processes started below, which inherit it
    from sluice.connectors.topic import kafka_bootstrap

    bootstrap = kafka_bootstrap(settings.broker())
    if bootstrap is not None:
        return _run_on_kafka(a, bootstrap)
    if a.workers != 1:
        raise SystemExit("sluice run: --workers needs a Kafka broker (--broker HOST:PORT); "
                         "the embedded log runs in one process")
    from sluice.runtime.executor import run

    flow = load_flow(a.pipeline, a.flow, a.pipeline_args)
    with Progress(f"flow {flow.name!r}") if not a.quiet else contextlib.nullcontext() as progress:
        result = run(flow, batch_size=a.batch_size, progress=progress,
                     checkpoint_dir=a.checkpoint_dir, checkpoint_interval=a.checkpoint_interval,
                     drop_state=tuple(a.drop_state), state=a.state, state_dir=a.state_dir,
                     allow_rename=_renames(a.allow_rename))
    if not a.quiet:
        print(result.summary())
    return 0


def _renames(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise SystemExit(f"sluice run: --allow-rename takes OLD=NEW (two step names), got {pair!r}")
        out[old] = new
    return out


def _run_on_kafka(a: argparse.Namespace, bootstrap: str) -> int:
    import json
    import subprocess

    renames = _renames(a.allow_rename)
    if a.state != "memory" or a.state_dir:
        raise SystemExit("sluice run: --state/--state-dir apply to the embedded runtime; on Kafka, state is kept "
                         "in memory and restored from the changelog")
    flow = load_flow(a.pipeline, a.flow, a.pipeline_args)
    app_id = a.app_id or flow.name
    if a.workers > 1:  # N processes with the same app id: the consumer group shares the partitions out
        args = [sys.executable, "-m", "sluice.cli.main", "run", a.pipeline, "--workers", "1", "--app-id", app_id,
                "--batch-size", str(a.batch_size), "--commit-interval", str(a.commit_interval)]
        if a.flow:
            args += ["--flow", a.flow]
        if a.until_end:
            args.append("--until-end")
        if a.quiet:
            args.append("--quiet")
        for pair in a.allow_rename:  # every worker is given the same renames (docs/kafka.md)
            args += ["--allow-rename", pair]
        procs = [subprocess.Popen([*args, "--instance", f"w{i}", "--", *a.pipeline_args]) for i in range(a.workers)]
        try:
            codes = [p.wait() for p in procs]
        except KeyboardInterrupt:
            for p in procs:
                p.terminate()
            codes = [p.wait() for p in procs]
        failed = [f"w{i} ({c})" for i, c in enumerate(codes) if c != 0]
        if failed:
            print(f"sluice: workers failed: {', '.join(failed)}", file=sys.stderr)
            return 1
        return 0
    import logging

    from sluice.runtime.kafka import KafkaRuntime, run_worker

    who = f"[{a.instance}] " if a.instance else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {who}%(name)s %(levelname)s %(message)s")

    rt = KafkaRuntime(app_id=app_id, bootstrap=bootstrap, commit_interval_s=a.commit_interval, until_end=a.until_end,
                      instance=a.instance, batch_size=a.batch_size)
    prefix = f"[{a.instance}]" if a.instance else ""  # several workers share a terminal: say whose line it is
    with Progress(f"flow {flow.name!r}" + (f" as worker {a.instance}" if a.instance else ""), prefix) if not a.quiet \
            else contextlib.nullcontext() as progress:
        result = run_worker(flow, rt, progress=progress, allow_rename=renames)
    # one JSON line, also with --quiet: what scripts read
    print(json.dumps({"worker": a.instance, "records": result.records, "seconds": round(result.seconds, 3),
                      "produced": result.produced, "commits": result.commits, "rewinds": result.rewinds, "sweeps": result.sweeps,
                      "tasks": result.tasks_started, "late": result.late, "dead_letters": result.dead_letters}))
    return 0


def cmd_explain(a: argparse.Namespace) -> int:
    flow = load_flow(a.pipeline, a.flow, a.pipeline_args)
    if a.json:
        import json

        print(json.dumps(flow.plan().to_dict(), indent=2, ensure_ascii=False))
    else:
        print(flow.explain())
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from sluice.cli.demo import run_demo

    return run_demo(Path(a.dir), a.events, a.batch_size)


def cmd_log(a: argparse.Namespace) -> int:
    from sluice.connectors.log.store import Log

    log = Log(a.root)
    if a.action == "topics":
        topics = log.topics()
        if not topics:
            print(f"no topics under {a.root}")
        for t in topics:
            n = log.partition_count(t)
            ends = [log.partition(t, p).end_offset for p in range(n)]
            print(f"{t}: {n} partition(s), {sum(ends):,} records (end offsets {ends})")
        return 0
    if not a.topic:
        raise SystemExit("sluice log tail: name a topic")
    shown = 0
    for p in range(log.partition_count(a.topic)):
        part = log.partition(a.topic, p)
        start = max(part.start_offset, part.end_offset - a.n)
        for batch, skip in part.read(start):
            for i in range(skip, batch.count):
                print(f"{a.topic}/{p}@{batch.base_offset + i}: {batch.value(i).decode('utf-8', 'replace')}")
                shown += 1
    return 0


def cmd_checkpoints(a: argparse.Namespace) -> int:
    from sluice.checkpoint.store import CheckpointStore
    from sluice.core.errors import CheckpointError

    store = CheckpointStore(a.dir)
    ids = store.ids()
    if a.action == "prune":
        dropped = store.prune(a.keep)
        print(f"kept {min(len(ids), a.keep)} checkpoint(s), removed {len(dropped)}: {dropped}")
        return 0
    if not ids:
        print(f"no checkpoints in {a.dir}")
        return 0
    if a.action == "list":
        for cid in ids:
            try:
                cp = store.load(cid)
                steps = cp.manifest["steps"]
                print(f"chk-{cid:06d}  flow {cp.manifest['flow']!r}  {len(steps)} stateful steps  ok")
            except CheckpointError as exc:
                print(f"chk-{cid:06d}  DAMAGED: {exc}")
        return 0
    cid = a.id if a.id is not None else ids[-1]
    cp = store.load(cid)
    print(f"checkpoint {cid} of flow {cp.manifest['flow']!r} at {cp.path}")
    for name, entry in cp.manifest["steps"].items():
        frames = ", ".join(f"{k} ({m['rows']:,} rows)" for k, m in entry["frames"].items())
        scalars = ", ".join(f"{k}={v}" for k, v in entry["scalars"].items())
        print(f"  {name} [{entry['kind']}]: {scalars}" + (f"; frames: {frames}" if frames else ""))
    for name, txn in cp.manifest["sinks"].items():
        print(f"  sink {name}: {txn or 'nothing pending'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sluice", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run a pipeline file to the end of its input")
    r.add_argument("pipeline", help="a Python file that builds a sluice.Flow at module level")
    r.add_argument("--flow", help="which flow, when the file defines several (by Flow name)")
    r.add_argument("--batch-size", type=int, default=65_536, help="rows per micro-batch (default: 65536)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    r.add_argument("--checkpoint-dir", help="checkpoint here; a run started again with it resumes where it stopped")
    r.add_argument("--checkpoint-interval", type=float, default=10.0, help="seconds between checkpoints (default: 10)")
    r.add_argument("--drop-state", action="append", default=[], metavar="STEP",
                   help="discard the checkpointed state of a step whose definition changed (repeatable)")
    r.add_argument("--allow-rename", action="append", default=[], metavar="OLD=NEW",
                   help="a step renamed since the last run (its checkpoint, or under Kafka its tasks' state): carry its state, read position or sink "
                   "transactions over to the new name (repeatable)")
    r.add_argument("--state", choices=BACKENDS, default="memory",
                   help="where process functions keep keyed state: memory, or rocksdb for state larger than "
                   "memory (default: memory)")
    r.add_argument("--state-dir", help="the directory for --state rocksdb (default: a temporary directory)")
    k = r.add_argument_group("on Kafka (also: the SLUICE_BROKER setting)")
    k.add_argument("--broker", help="where sl.Topic streams live: Kafka as HOST:PORT[,HOST:PORT] or "
                   "kafka://HOST:PORT, or a directory path for the embedded log (default: .sluice/log); a value "
                   "that could be either (a bare name, a directory named like HOST:PORT) is an error")
    k.add_argument("--workers", type=int, default=1, help="worker processes to start (Kafka only; default: 1)")
    k.add_argument("--app-id", help="the consumer group and transactional id prefix (default: the flow's name); "
                   "workers on other hosts with the same app id share the partitions")
    k.add_argument("--instance", help="this worker's name (default: random)")
    k.add_argument("--commit-interval", type=float, default=1.0,
                   help="seconds between transactions (output + state + offsets; default: 1)")
    k.add_argument("--until-end", action="store_true",
                   help="stop once the input, as it is at start, is processed and committed (default: keep following)")
    r.set_defaults(fn=cmd_run)

    e = sub.add_parser("explain", help="print a pipeline's plan")
    e.add_argument("pipeline")
    e.add_argument("--flow")
    e.add_argument("--json", action="store_true",
                   help="print the plan as JSON (Plan.to_dict: steps, ports, keys, fingerprints, parameters)")
    e.set_defaults(fn=cmd_explain)

    d = sub.add_parser("demo", help="real-time analytics on the embedded log: generate, aggregate, write Parquet")
    d.add_argument("--dir", default="out/demo", help="where the log and results go (default: out/demo)")
    d.add_argument("--events", type=int, default=1_000_000, help="events to generate (default: 1,000,000)")
    d.add_argument("--batch-size", type=int, default=65_536)
    d.set_defaults(fn=cmd_demo)

    lg = sub.add_parser("log", help="look inside the embedded log")
    lg.add_argument("action", choices=["topics", "tail"])
    lg.add_argument("topic", nargs="?")
    lg.add_argument("-n", type=int, default=10, help="records per partition for tail (default: 10)")
    lg.add_argument("--root", default=".sluice/log", help="the log directory (default: .sluice/log)")
    lg.set_defaults(fn=cmd_log)

    c = sub.add_parser("checkpoints", help="list, inspect or prune a flow's checkpoints")
    c.add_argument("action", choices=["list", "inspect", "prune"])
    c.add_argument("--dir", required=True, help="the checkpoint directory (as given to run --checkpoint-dir)")
    c.add_argument("--id", type=int, help="inspect this checkpoint (default: the newest)")
    c.add_argument("--keep", type=int, default=3, help="prune: how many of the newest to keep (default: 3)")
    c.set_defaults(fn=cmd_checkpoints)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    rest: list[str] = []
    if "--" in args:  # what follows `--` belongs to the pipeline file (its sys.argv), not to sluice
        cut = args.index("--")
        args, rest = args[:cut], args[cut + 1:]
    a = build_parser().parse_args(args)
    a.pipeline_args = rest
    try:
        code = int(a.fn(a))
        skip_exit_collections()  # the flows have ended: their sinks are committed and closed
        return code
    except SluiceError as exc:
        print(f"sluice: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sluice: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
