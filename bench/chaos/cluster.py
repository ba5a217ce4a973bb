#!/usr/bin/env python3
"""Broker-kill soak against a 3-node KRaft cluster (scripts/kafka-cluster.sh: replication factor 3,
min.insync.replicas 2, transaction state log likewise): tests/kafka/test_cluster_faults.py with random
kills. Each round runs w1 with 2 or 3 workers over four partitions and kills -9 the node that is a worker's
transaction coordinator; half the rounds start it again after a random 1-15 s, the others leave it down
for the rest of the run. Each round's committed output is compared with the DuckDB oracle.

    python bench/chaos/cluster.py --rounds 5 --seed 1

Per round a JSON line; last line: the CHAOS-ROW for docs/guarantees.md's chaos table.
"""

from __future__ import annotations

import argparse
import random
import sys

from _faults import chaos_row, print_rows, run_tests


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="kills (default 5)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--log", default="chaos_cluster.log", help="pytest's whole output")
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    kills = [(0.0 if i % 2 == 0 else round(rnd.uniform(1, 15), 1), rnd.choice((2, 3)), rnd.randrange(3))
             for i in range(a.rounds)]
    rows, code = run_tests("test_cluster_faults.py", {"CLUSTER_KILLS": ",".join(f"{s}:{w}:{x}" for s, w, x in kills)},
                           a.log)
    fault = ("kill -9 of one broker of a 3-node KRaft cluster (RF 3, min ISR 2; the node coordinating a worker's "
             "transactions), left down or restarted after 1-15 s, 2-3 workers, w1")
    print_rows(rows, [chaos_row(fault, len(kills), rows, f"python bench/chaos/cluster.py --rounds {a.rounds} "
                                                         f"--seed {a.seed}")])
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
