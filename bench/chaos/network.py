#!/usr/bin/env python3
"""Network-loss soak for the Kafka runtime: tests/kafka/test_network_loss.py with random cuts. Each round
runs w1 with 2 or 3 workers over four partitions against a single KRaft broker in private network
namespaces, and cuts the network for a random 2-20 s while the workers run:

- partition: clients and broker joined through a router namespace that drops every packet in transit;
- loopback: broker and clients in one namespace whose loopback drops every packet (the broker also loses
  its own controller link).

Each round's committed output is compared with the DuckDB oracle. Needs root (ip netns, tc).

    python bench/chaos/network.py --rounds 5 --seed 1

Per round a JSON line (fault, down_s, lost, duplicated, unreadable, sweeps, worker_failures); last lines:
one CHAOS-ROW per kind (docs/guarantees.md's chaos table).
"""

from __future__ import annotations

import argparse
import random
import sys

from _faults import chaos_row, print_rows, run_tests

LABELS = {
    "partition": "network partition between workers and broker (router namespace drops every packet) for {lo:g}-{hi:g} s, "
                 "2-3 workers, w1, single KRaft broker",
    "loopback": "all network lost on the broker's host (namespace loopback drops every packet, the broker's controller "
                "link too) for {lo:g}-{hi:g} s, 2-3 workers, w1, single KRaft broker",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="cuts of each kind (default 5)")
    ap.add_argument("--kinds", default="partition,loopback", help="partition,loopback (default both)")
    ap.add_argument("--min-s", type=float, default=2.0)
    ap.add_argument("--max-s", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--log", default="chaos_network.log", help="pytest's whole output")
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    kinds = a.kinds.split(",")
    cuts = [(k, round(rnd.uniform(a.min_s, a.max_s), 1), rnd.choice((2, 3))) for _ in range(a.rounds) for k in kinds]
    rows, code = run_tests("test_network_loss.py", {"NETWORK_LOSS_CUTS": ",".join(f"{k}:{s}:{w}" for k, s, w in cuts)},
                           a.log)
    command = (f"python bench/chaos/network.py --rounds {a.rounds} --kinds {a.kinds} --min-s {a.min_s:g} "
               f"--max-s {a.max_s:g} --seed {a.seed}")
    chaos = [chaos_row(LABELS[k].format(lo=a.min_s, hi=a.max_s), sum(1 for c in cuts if c[0] == k),
                       [r for r in rows if r["fault"] == f"network-{k}"], command) for k in kinds]
    print_rows(rows, chaos)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
