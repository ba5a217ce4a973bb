"""w1 between two sl.Topic streams, for `sluice run` (the topic names come from the environment)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import sluice as sl
from workloads import build

flow = build("w1", sl.Topic(os.environ["W1_INPUT"], key="user_id"), sl.Topic(os.environ["W1_OUTPUT"], key="user_id"))
