"""Variants of ``mas+er`` against ``er``, on the validation split only: what might make MAS help replay.

Run from the repository root, after ``scripts/compare.py`` (it reads the options chosen there)::

    python scripts/compare_variants.py

For every scenario of ``results/compare.json``, on its selection seeds and validation split (the
test data are never used), ``mas+er`` at its chosen options and with one change each:

- ``buffer_importance``: the memory's inputs also join the running importance (label-free) on the
  steps that estimate the stream's, as the task-free paper does with its hard buffer;
- ``class-balanced``: a class-balanced memory instead of the reservoir (``er`` is run with both,
  so that the memory's own effect is not credited to MAS).

Writes ``results/compare_variants.md`` and ``.json``: validation ACC (mean over the selection
seeds) and each variant's difference to ``mas+er`` as chosen and to ``er``. A variant would
become the default only if it helped on every scenario, not only on the one where MAS falls short.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from compare import SCENARIOS, CompareConfig, Selection, git_commit, run_selection

from online_mas.experiment.config import ExperimentConfig
from online_mas.experiment.report import write_results

VARIANTS = {"er": ({}, {"buffer": "class-balanced"}),
            "mas+er": ({}, {"buffer_importance": True}, {"buffer": "class-balanced"})}


def variant_grid(chosen: dict[str, dict[str, Any]], scenario: str, learner: str) -> list[dict[str, Any]]:
    """``learner``'s options chosen by scripts/compare.py, alone and with each of its changes."""
    base = chosen.get(scenario, {}).get(learner, {})
    return [{**base, **change} for change in VARIANTS[learner]]


def label(options: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items()) or "defaults"


def table(selection: Selection) -> tuple[str, dict[str, Any]]:
    """Validation ACC per scenario and variant, and the differences to mas+er and er as chosen."""
    lines = ["| scenario | learner | options | validation ACC % (per seed) | - mas+er (points) | "
             "- er (points) |", "|---|---|---|---|---|---|"]
    data: dict[str, Any] = {}
    for scenario, by in selection.items():
        ref = {ln: by[ln][0]["mean"] for ln in ("er", "mas+er") if by.get(ln)}
        data[scenario] = []
        for learner, rows in by.items():
            for row in rows:
                diffs = [f"{100 * (row['mean'] - ref[n]):+.1f}" if n in ref else "n/a"
                         for n in ("mas+er", "er")]
                seeds = ", ".join(f"{100 * a:.1f}" for a in row["acc"])
                lines.append(f"| {scenario} | {learner} | {label(row['options'])} | {100 * row['mean']:.1f} "
                             f"({seeds}) | {diffs[0]} | {diffs[1]} |")
                data[scenario].append({"learner": learner, **row})
    return "\n".join(lines), data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    parser.add_argument("--chosen", default="results/compare.json", help="scripts/compare.py's numbers")
    parser.add_argument("--out", default="runs/compare-variants")
    parser.add_argument("--results", default="results/compare_variants")
    parser.add_argument("--fresh", action="store_true", help="replace existing run directories")
    args = parser.parse_args()
    saved = json.loads(Path(args.chosen).read_text())
    cfg = CompareConfig(scenarios=tuple(args.scenarios), select_seeds=tuple(saved["select_seeds"]),
                        validation=saved["validation"], out=args.out)
    torch.set_num_threads(1)
    start = time.perf_counter()

    def options_of(scenario: str, learner: str, base: ExperimentConfig) -> list[dict[str, Any]]:
        return variant_grid(saved["chosen"], scenario, learner)

    selection = run_selection(cfg, tuple(VARIANTS), options_of, args.fresh)
    body, data = table(selection)
    seconds = time.perf_counter() - start
    text = (f"`mas+er` and `er` with one change each, on the validation split only (seeds "
            f"{', '.join(map(str, cfg.select_seeds))}, {100 * cfg.validation:g}% of every segment's "
            f"training data held out; never the test data), at the options scripts/compare.py chose "
            f"({args.chosen}, commit {saved.get('commit', 'unknown')}); each config's passes as in "
            f"results/compare.md. buffer_importance: the memory's inputs also join the importance; "
            f"buffer=class-balanced: a class-balanced memory instead of the reservoir. The first row of "
            f"each learner is as chosen (the reference of the last two columns).\n\n{body}\n\n"
            f"`python scripts/compare_variants.py` on commit {git_commit()}: {seconds:.0f} s wall, 1 torch "
            f"thread; torch {torch.__version__}.\n")
    print("\n" + text)
    write_results(args.results, text, {"select_seeds": list(cfg.select_seeds), "validation": cfg.validation,
                                       "variants": data, "commit": git_commit(), "seconds": seconds})
    print(f"wrote {args.results}.md and {args.results}.json")


if __name__ == "__main__":
    main()
