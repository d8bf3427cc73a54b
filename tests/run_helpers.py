"""Helpers shared by the tests that kill, interrupt and resume runs of the ``online-mas`` command."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def reproducible_results(run_dir: Path, learners: Sequence[str]) -> dict[str, Any]:
    """Everything a run wrote that must be reproducible, without the wall-clock numbers."""
    out: dict[str, Any] = {}
    for learner in learners:
        u = run_dir / learner / "seed0"
        summary = json.loads((u / "summary.json").read_text())
        summary.pop("timing")
        lines = [json.loads(s) for s in (u / "metrics.jsonl").read_text().splitlines()]
        for line in lines:
            line.pop("time")
        out[learner] = {"summary": summary, "metrics": lines}
    return out
