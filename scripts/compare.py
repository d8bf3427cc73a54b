"""Our learners side by side on permuted and rotated digits: accuracy, forgetting, memory, time.

Run from the repository root::

    python scripts/compare.py                          # 2 scenarios x 9 learners x 5 seeds
    python scripts/compare.py --seeds 0 --scenarios permuted-digits   # a quick look

Each scenario is ``configs/<scenario>.toml`` (5 segments, 10 passes each, batch 32, MLP, SGD lr
0.05 momentum 0.9), run with fine-tuning, task-free online MAS, MAS at the true boundaries and the
rehearsal and distillation learners (``er``, ``der``, ``lwf``, ``tfcl``, ``mas+er``, ``mas+lwf``).
The MAS combinations take online MAS's ``lam`` and ``penalty`` from the scenario's config (swept for
online MAS alone by ``scripts/sweep_digits.py``); the replay and distillation options are the
runner's defaults (200 stored samples, replay batch 32, temperature 2, weight 1), not tuned.

Writes one run directory per scenario under ``--out`` (default ``runs/compare``; an existing one is
continued, ``--fresh`` starts over) and the table to ``results/compare.md`` and
``results/compare.json``: mean ± sample standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from online_mas.experiment.configio import load_config
from online_mas.experiment.launch import run_units
from online_mas.experiment.report import write_experiment_summary, write_results
from online_mas.experiment.rundir import continue_or_create, units

WITH_MAS = ("tfcl", "mas+er", "mas+lwf")  # take online-mas's lam and penalty


@dataclass
class CompareConfig:
    scenarios: tuple[str, ...] = ("permuted-digits", "rotated-digits")  # configs/<name>.toml
    learners: tuple[str, ...] = ("finetune", "online-mas", "mas-oracle", "er", "der", "lwf", "tfcl",
                                 "mas+er", "mas+lwf")  # compared on the same streams and model
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # repeats; mean ± std over them
    passes: float = 10.0  # passes over each segment (the configs' 10; less for a quick look)
    workers: int = 1  # parallel processes, 1 torch thread each
    out: str = "runs/compare"  # one run directory per scenario below this
    results: str = "results/compare"  # writes <results>.md and <results>.json


#: ``(header, summary key, scale, decimals)`` of the table.
COLUMNS = (("ACC %", "average_accuracy", 100.0, 1), ("forgetting %", "forgetting", 100.0, 1),
           ("BWT %", "backward_transfer", 100.0, 1), ("stored samples", "stored_samples", 1.0, 0),
           ("ms / step", "ms_per_step", 1.0, 2), ("snapshots", "n_snapshots", 1.0, 1))


def _value(summary: dict[str, Any], key: str) -> float | None:
    if key == "ms_per_step":
        rate = summary.get("timing", {}).get("steps_per_s")
        return 1000.0 / rate if rate else None
    if key == "stored_samples":
        return float(summary.get("stored_samples", 0))
    v = summary.get(key)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None}
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": mean, "std": std}


def table(groups: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> tuple[str, dict[str, Any]]:
    """The markdown table and its numbers, one row per (scenario, learner)."""
    lines = ["| scenario | learner | seeds | " + " | ".join(c[0] for c in COLUMNS) + " |",
             "|" + "---|" * (3 + len(COLUMNS))]
    data: dict[str, Any] = {}
    for scenario, runs in groups:
        data[scenario] = {}
        for learner in dict.fromkeys(r["learner"] for r in runs):
            mine = [r for r in runs if r["learner"] == learner]
            cells, numbers = [], {}
            for _, key, scale, dec in COLUMNS:
                s = _stats([v for v in (_value(r, key) for r in mine) if v is not None])
                numbers[key] = s
                if s["mean"] is None:
                    cells.append("n/a")
                else:
                    text = f"{s['mean'] * scale:.{dec}f}"
                    if s["std"] is not None and key != "stored_samples":
                        text += f" ± {s['std'] * scale:.{dec}f}"
                    cells.append(text)
            data[scenario][learner] = {"n_runs": len(mine), **numbers}
            lines.append(f"| {scenario} | {learner} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines), data


def notes(data: dict[str, Any]) -> list[str]:
    """Differences in ACC (points) between learners that the issue's targets compare, per scenario."""
    out = []
    for scenario, rows in data.items():
        def acc(name: str, rows: dict[str, Any] = rows) -> float | None:
            row = rows.get(name)
            return None if row is None else row["average_accuracy"]["mean"]
        pairs = [("mas+er", "er"), ("mas+er", "der"), ("tfcl", "er"), ("mas+lwf", "online-mas"),
                 ("mas+lwf", "lwf")]
        parts = []
        for a, b in pairs:
            va, vb = acc(a), acc(b)
            if va is not None and vb is not None:
                parts.append(f"{a} - {b}: {100 * (va - vb):+.1f}")
        free = [(acc(n), n) for n in rows if rows[n]["stored_samples"]["mean"] == 0 and acc(n) is not None]
        if free:
            best = max(free)
            parts.append(f"best without stored samples: {best[1]} ({100 * best[0]:.1f})")  # type: ignore[operator]
        out.append(f"- {scenario}: ACC points, " + "; ".join(parts))
    return out


def main() -> None:
    cfg = CompareConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", default=list(cfg.scenarios))
    parser.add_argument("--learners", nargs="+", default=list(cfg.learners))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(cfg.seeds))
    parser.add_argument("--passes", type=float, default=cfg.passes)
    parser.add_argument("--workers", type=int, default=cfg.workers)
    parser.add_argument("--out", default=cfg.out)
    parser.add_argument("--results", default=cfg.results)
    parser.add_argument("--fresh", action="store_true", help="replace existing run directories")
    args = parser.parse_args()

    experiments = []
    for scenario in args.scenarios:
        base = load_config(Path("configs") / f"{scenario}.toml")
        mas = base.learner.online_mas
        sets = [f"experiment.learners={json.dumps(args.learners)}",
                f"experiment.seeds={json.dumps(args.seeds)}", f"stream.passes={float(args.passes)}",
                "run.plots=false",
                "run.checkpoint_every=0", "run.progress=false", f"run.workers={args.workers}"]
        sets += [f"learner.{n}.{k}={json.dumps(v)}" for n in WITH_MAS
                 for k, v in (("lam", mas.lam), ("penalty", mas.penalty))]
        config = load_config(Path("configs") / f"{scenario}.toml", sets)
        run_dir, config = continue_or_create(config, Path(args.out) / scenario, fresh=args.fresh)
        experiments.append((scenario, run_dir, config))

    jobs = [(config, u) for _, run_dir, config in experiments for u in units(config, run_dir)]
    cached = sum((u.path / "summary.json").is_file() for _, u in jobs)
    print(f"{len(jobs)} runs ({len(args.scenarios)} scenarios x {len(args.learners)} learners x "
          f"{len(args.seeds)} seeds; {cached} already complete) on {args.workers} worker(s)", flush=True)
    start = time.perf_counter()
    results = run_units(jobs, workers=args.workers, progress=True)
    seconds = time.perf_counter() - start

    groups = []
    for scenario, run_dir, config in experiments:
        mine = [r for (_, u), r in zip(jobs, results, strict=True) if u.path.is_relative_to(run_dir)]
        write_experiment_summary(run_dir, config, mine)
        groups.append((scenario, mine))
    text_table, data = table(groups)
    seeds = ", ".join(map(str, args.seeds))
    header = (f"Digits, 5 segments x {args.passes:g} passes, batch 32, MLP 64-100-100-10, SGD lr 0.05 "
              f"momentum 0.9; "
              f"mean ± std over seeds {seeds} ({len(args.seeds)} seed{'s' if len(args.seeds) > 1 else ''}). "
              "ACC: average final accuracy; forgetting: mean drop from the best earlier accuracy; "
              "BWT: backward transfer; stored samples: what the learner's memory holds at the end "
              "(a replay step also trains on 32 replayed samples: two batches of 32 for der); "
              "ms / step: wall time per training step, 1 torch thread; snapshots: consolidations "
              "(lwf: teacher refreshes). Task-free (never see the boundaries): finetune, online-mas, "
              "er, der, tfcl, mas+er, mas+lwf; mas-oracle and lwf use the true boundaries. The MAS "
              "combinations use online-mas's lam and penalty from configs/<scenario>.toml; the "
              "replay and distillation options are the runner's defaults, not tuned (no validation "
              "split was used for them).")
    run_seconds = sum(float(r["timing"]["wall_time_s"]) for r in results)
    footer = (f"`python scripts/compare.py --seeds {' '.join(map(str, args.seeds))} --passes "
              f"{args.passes:g}`: {len(jobs)} runs, {run_seconds:.0f} s of training in all; "
              f"{len(jobs) - cached} runs in {seconds:.0f} s wall on {os.cpu_count()} cores (shared), "
              f"{args.workers} worker(s) x 1 torch thread; torch {torch.__version__}, Python "
              f"{platform.python_version()}. Timings are from a shared machine and only comparable "
              f"within this table.")
    if cached:
        footer += f" {cached} more runs were read from an earlier call (--fresh recomputes them)."
    missing = ("Not in this table: the split, recurring and mnist1d scenarios; Avalanche's strategies "
               "on the same streams are in results/compare_avalanche.md (scripts/compare_avalanche.py).")
    text = (f"{header}\n\n{text_table}\n\nDifferences of the means:\n\n" + "\n".join(notes(data))
            + f"\n\n{missing}\n\n{footer}\n")
    print("\n" + text)
    write_results(args.results, text, {"seeds": args.seeds, "learners": args.learners,
                                       "seconds": seconds, "workers": args.workers,
                                       "runs_computed": len(jobs) - cached, "runs_read": cached,
                                       "table": data})
    print(f"wrote {args.results}.md and {args.results}.json; runs in {args.out}/")


if __name__ == "__main__":
    main()
