"""A benchmark workload (W_WORKLOAD, default w1) between two sl.Topic streams, for `sluice run`; the
input topic is keyed by user_id, the topic names come from the environment."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import sluice as sl
from workloads import build

workload = os.environ.get("W_WORKLOAD", "w1")
out_key = "event_type" if workload == "w2" else "user_id"
flow = build(workload, sl.Topic(os.environ["W_INPUT"], key="user_id"), sl.Topic(os.environ["W_OUTPUT"], key=out_key))
