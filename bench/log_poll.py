"""The cost of one follow poll at the tail of an embedded-log partition, by partition size (frames).

    python bench/log_poll.py --frames 10000,100000

Appends single-record frames, then times `Partition.read(tail)` (what a followed LogSource does on every
poll of a partition that has nothing new) and a read of the last frame. Prints median microseconds."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

from sluice.connectors.log import Log
from sluice.connectors.log.segment import NEWLINE_JOINED


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", default="10000,100000")
    ap.add_argument("--repeat", type=int, default=200)
    a = ap.parse_args()
    for frames in (int(f) for f in a.frames.split(",")):
        with tempfile.TemporaryDirectory() as root:
            log = Log(root)
            log.create_topic("t", 1)
            part = log.partition("t", 0, writable=True)
            value = b'{"ts": 1, "v": 1}\n'
            offs = np.array([0, len(value)], dtype=np.uint32)
            for i in range(frames):
                part.append(np.array([i], dtype=np.int64), value, offs, flags=NEWLINE_JOINED)
            tail = part.end_offset
            empty, last = [], []
            for _ in range(a.repeat):
                t = time.perf_counter()
                list(part.read(tail))
                empty.append(time.perf_counter() - t)
                t = time.perf_counter()
                list(part.read(tail - 1))
                last.append(time.perf_counter() - t)
            part.close()
            print(f"frames={frames}: poll at tail {statistics.median(empty) * 1e6:.1f} us, "
                  f"read last frame {statistics.median(last) * 1e6:.1f} us")


if __name__ == "__main__":
    main()
