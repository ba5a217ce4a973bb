"""The fraud-detection job over 200,000 generated transactions: small-then-large alerts, risk scores and
5-minute user statistics. The job itself (`build`) is src/sluice/examples/fraud.py, shipped in the
package so that `sluice demo` has it wherever Sluice is installed.

    sluice run examples/fraud.py
"""

from pathlib import Path

import sluice as sl
from sluice.examples.fraud import SCHEMA, build

__all__ = ["SCHEMA", "build", "flow"]

flow = build(sl.GeneratorSource("transactions", n=200_000), Path("out/fraud"))
