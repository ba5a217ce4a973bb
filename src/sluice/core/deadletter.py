"""Dead letters: records set aside with the reason, the step and the position, never dropped silently."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from sluice.core.batch import Batch

DEAD_LETTER_SCHEMA = pl.Schema({"step": pl.String, "position": pl.String, "reason": pl.String, "raw": pl.String})


def dead_letters(step: str, positions: Sequence[str], reasons: Sequence[str], raws: Sequence[str | bytes]) -> Batch:
    raw = [r.decode("utf-8", "replace") if isinstance(r, bytes) else r for r in raws]
    df = pl.DataFrame(
        {"step": [step] * len(positions), "position": list(positions), "reason": list(reasons), "raw": raw},
        schema=DEAD_LETTER_SCHEMA,
    )
    return Batch(df)


def rows_as_json(df: pl.DataFrame) -> list[str]:
    """Each row of `df` as a JSON object (for the `raw` field of a dead letter)."""
    if df.height == 0:
        return []
    text = df.write_ndjson()
    return text.rstrip("\n").split("\n")
