#!/usr/bin/env python3
"""Count the cases of a fault-injection test file as chaos-table rows: one CHAOS-ROW per test function,
each parametrized case a run, a passed case survived. The tests compare every case's output with an oracle
(lost = duplicated = 0 is what a pass asserts); a failed case's counts are not broken out ("?").

    python bench/chaos/pytest_cases.py tests/test_checkpoint_damage.py [pytest args…]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def words(name: str) -> str:
    """A test function's name in words: the fault it injects and what must hold."""
    return name.removeprefix("test_").replace("_", " ")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    path = ROOT / argv[0]
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "cases.xml"
        r = subprocess.run([sys.executable, "-m", "pytest", str(path), "-q", "-p", "no:cacheprovider",
                            f"--junitxml={xml}", *argv[1:]], cwd=ROOT, capture_output=True, text=True)
        if not xml.exists():
            print(r.stdout[-3000:] + r.stderr[-3000:], file=sys.stderr)
            return 1
        cases: dict[str, list[bool]] = defaultdict(list)
        for case in ET.parse(xml).getroot().iter("testcase"):
            if case.find("skipped") is not None:
                continue
            name = case.get("name", "").split("[", 1)[0]
            cases[name].append(case.find("failure") is None and case.find("error") is None)
    print(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "")
    for name, results in cases.items():
        ok = all(results)
        print("CHAOS-ROW " + json.dumps({
            "fault": f"{path.stem.removeprefix('test_').replace('_', ' ')}: {words(name)}",
            "runs": len(results), "survived": sum(results), "lost": 0 if ok else None,
            "duplicated": 0 if ok else None, "stopped": 0,
            "command": f"python bench/chaos/pytest_cases.py {argv[0]}"}))
    return 0 if r.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
