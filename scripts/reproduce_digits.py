"""Regenerate the README's digits results: six learners x four scenarios x five seeds.

Run from the repository root::

    python scripts/reproduce_digits.py                 # all of it, 2 worker processes
    python scripts/reproduce_digits.py --seeds 0 --scenarios permuted-digits   # a quick look

Each scenario is the config ``configs/<scenario>.toml`` (5 segments, 10 passes each, batch 32,
MLP 64-100-100-10, SGD lr 0.05 momentum 0.9; lam per learner from ``scripts/sweep_digits.py``),
run with fine-tuning, task-free online MAS, MAS at the true boundaries, L2, online EWC and joint
training, on seeds 0-4. ``split-digits`` is class-incremental (one 10-way head, labels 0-9);
``split-digits-domain`` is domain-incremental (a 2-way head: the position of the class within its
pair). Online MAS and fine-tuning never see the boundaries; MAS-oracle, L2 and EWC consolidate at
the true ones; joint trains on the same batches in a random order.

Writes one run directory per scenario under ``--out`` (default ``runs/reproduce-digits``; an
existing one is continued, ``--fresh`` starts over), and the table to ``results/digits.md`` and
``results/digits.json``. Mean ± sample standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from online_mas.experiment.configio import load_config
from online_mas.experiment.launch import run_units
from online_mas.experiment.report import (
    aggregate,
    comparison_table,
    write_experiment_summary,
    write_results,
)
from online_mas.experiment.rundir import continue_or_create, units


@dataclass
class ReproduceConfig:
    scenarios: tuple[str, ...] = ("permuted-digits", "rotated-digits", "split-digits",
                                  "split-digits-domain")  # configs/<name>.toml
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # repeats; mean ± std over them
    workers: int = 2  # parallel processes, 1 torch thread each
    out: str = "runs/reproduce-digits"  # one run directory per scenario below this
    results: str = "results/digits"  # writes <results>.md and <results>.json
    columns: tuple[str, ...] = ("ACC %", "BWT %", "forgetting %", "snapshots", "detection F1",
                                "delay (batches)")  # columns of the table (see report.COLUMNS)


def main() -> None:
    cfg = ReproduceConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", default=list(cfg.scenarios))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(cfg.seeds))
    parser.add_argument("--workers", type=int, default=cfg.workers)
    parser.add_argument("--out", default=cfg.out)
    parser.add_argument("--results", default=cfg.results)
    parser.add_argument("--plots", action="store_true", help="also draw each run's PNG plots")
    parser.add_argument("--fresh", action="store_true", help="replace existing run directories")
    args = parser.parse_args()

    experiments = []
    for scenario in args.scenarios:
        config = load_config(Path("configs") / f"{scenario}.toml", [
            f"experiment.seeds={json.dumps(args.seeds)}", f"run.plots={str(args.plots).lower()}",
            "run.checkpoint_every=0", "run.progress=false", f"run.workers={args.workers}"])
        run_dir, config = continue_or_create(config, Path(args.out) / scenario, fresh=args.fresh)
        experiments.append((scenario, run_dir, config))

    jobs = [(config, u) for _, run_dir, config in experiments for u in units(config, run_dir)]
    cached = sum((u.path / "summary.json").is_file() for _, u in jobs)
    print(f"{len(jobs)} runs ({len(args.scenarios)} scenarios x 6 learners x {len(args.seeds)} seeds; "
          f"{cached} already complete) on {args.workers} worker(s)", flush=True)
    start = time.perf_counter()
    results = run_units(jobs, workers=args.workers, progress=True)
    seconds = time.perf_counter() - start

    groups, data = [], {}
    for scenario, run_dir, config in experiments:
        mine = [r for (c, u), r in zip(jobs, results, strict=True) if u.path.is_relative_to(run_dir)]
        write_experiment_summary(run_dir, config, mine)
        groups.append((scenario, mine))
        data[scenario] = aggregate(mine)
    table = comparison_table(groups, columns=list(cfg.columns))
    header = (f"Digits, 5 segments x 10 passes, batch 32, MLP 64-100-100-10; mean ± std over seeds "
              f"{', '.join(map(str, args.seeds))}. ACC: average final accuracy; BWT: backward transfer; "
              f"forgetting: mean drop from the best earlier accuracy; snapshots: consolidations; "
              f"detection F1/delay: online MAS's consolidations against the true change points. "
              f"Online MAS and fine-tuning never see the boundaries; MAS-oracle, L2 and EWC use the "
              f"true ones; joint trains i.i.d. (BWT/forgetting n/a).")
    footer = (f"`python scripts/reproduce_digits.py`: {len(jobs) - cached} runs in {seconds:.0f} s wall "
              f"on {os.cpu_count()} cores, {args.workers} worker(s) x 1 torch thread; torch "
              f"{torch.__version__}, Python {platform.python_version()}.")
    if cached:
        footer += f" {cached} more runs were read from an earlier call (--fresh recomputes them)."
    text = f"{header}\n\n{table}\n\n{footer}\n"
    print("\n" + text)
    write_results(args.results, text, {
        "seeds": args.seeds, "seconds": seconds, "workers": args.workers,
        "runs_computed": len(jobs) - cached, "runs_read": cached, "aggregate": data})
    print(f"wrote {args.results}.md and {args.results}.json; runs in {args.out}/")


if __name__ == "__main__":
    main()
