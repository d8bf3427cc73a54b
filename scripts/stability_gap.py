"""The stability gap on permuted digits: continual evaluation of four learners.

Run from the repository root::

    python scripts/stability_gap.py                    # 4 learners x seeds 0-4, 2 workers
    python scripts/stability_gap.py --seeds 0 --eval-every 50   # a quick look

Runs ``configs/permuted-digits.toml`` (5 segments, 10 passes each, batch 32, MLP 64-100-100-10)
with fine-tuning, task-free online MAS, MAS at the true boundaries and online EWC, evaluating
every segment every ``--eval-every`` steps. From those evaluations it reports anytime accuracy,
min-ACC and WC-ACC (De Lange, van de Ven, Tuytelaars, ICLR 2023) and the steps to recover
after a change, next to the end-of-stream ACC and forgetting.

Writes the run directory ``--out`` (default ``runs/stability-gap``; an existing one is continued,
``--fresh`` starts over), ``results/stability_gap.png`` (and ``.svg``: accuracy on each segment
along the stream, mean and band over seeds), ``results/stability_gap_acc.png`` (the bars),
``results/stability_gap_matrix.png`` (the accuracy matrices), ``results/stability_gap_importance.png``
(MAS Ω and EWC's Fisher per layer) and
the table to ``results/stability_gap.md`` and ``results/stability_gap.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from online_mas.experiment.comparison_plots import plot_comparison
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
class StabilityGapConfig:
    learners: tuple[str, ...] = ("finetune", "online-mas", "mas-oracle", "ewc")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # repeats; mean ± std over them
    eval_every: int = 20  # steps between evaluations of every segment (a segment is 450 steps)
    workers: int = 2  # parallel processes, 1 torch thread each
    out: str = "runs/stability-gap"  # the run directory
    results: str = "results/stability_gap"  # writes <results>.md, .json, .png, _acc.png, ...
    columns: tuple[str, ...] = ("ACC %", "forgetting %", "anytime %", "anytime seen %",
                                "min-ACC %", "WC-ACC %", "recovery (steps)", "not recovered",
                                "snapshots")  # columns of the table (see report.COLUMNS)


def main() -> None:
    cfg = StabilityGapConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", nargs="+", default=list(cfg.learners))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(cfg.seeds))
    parser.add_argument("--eval-every", type=int, default=cfg.eval_every)
    parser.add_argument("--workers", type=int, default=cfg.workers)
    parser.add_argument("--out", default=cfg.out)
    parser.add_argument("--results", default=cfg.results)
    parser.add_argument("--fresh", action="store_true", help="replace the run directory")
    args = parser.parse_args()

    config = load_config(Path("configs") / "permuted-digits.toml", [
        f"experiment.learners={json.dumps(args.learners)}",
        f"experiment.seeds={json.dumps(args.seeds)}", f"run.eval_every={args.eval_every}",
        "run.plots=false", "run.checkpoint_every=0", "run.progress=false",
        f"run.workers={args.workers}"])
    run_dir, config = continue_or_create(config, args.out, fresh=args.fresh)
    jobs = [(config, u) for u in units(config, run_dir)]
    cached = sum((u.path / "summary.json").is_file() for _, u in jobs)
    print(f"{len(jobs)} runs ({len(args.learners)} learners x {len(args.seeds)} seeds; {cached} "
          f"already complete) on {args.workers} worker(s)", flush=True)
    start = time.perf_counter()
    results = run_units(jobs, workers=args.workers, progress=True)
    seconds = time.perf_counter() - start
    write_experiment_summary(run_dir, config, results)

    stem = Path(args.results)
    stem.parent.mkdir(parents=True, exist_ok=True)
    figures = plot_comparison(results, run_dir, title=f"permuted digits ({len(args.seeds)} seeds)")
    copies = []
    for figure in figures:  # comparison-accuracy -> <stem>, comparison-acc -> <stem>_acc, ...
        kind = figure.stem.removeprefix("comparison-")
        name = stem.name if kind == "accuracy" else f"{stem.name}_{kind}"
        copies.append(f"`{name}.png`")
        for suffix in (".png", ".svg"):
            shutil.copyfile(figure.with_suffix(suffix), stem.with_name(name + suffix))

    every = config.run.eval_every
    table = comparison_table([("permuted-digits", results)], columns=list(cfg.columns))
    header = (f"Permuted digits, 5 segments x 10 passes (450 steps each), batch 32, MLP "
              f"64-100-100-10; every segment evaluated every {every} steps; mean ± std over seeds "
              f"{', '.join(map(str, args.seeds))}. ACC, forgetting: end of the stream. anytime: "
              f"mean accuracy over all segments (seen: over the segments trained on so far) at "
              f"every evaluation. min-ACC: for each segment but the last, the lowest accuracy after "
              f"it was learned, averaged; WC-ACC = (final accuracy on the last segment) / 5 + 4/5 min-ACC "
              f"(De Lange et al., ICLR 2023). recovery: steps after a change until an earlier "
              f"segment is back within 2 points of its accuracy at the change (pairs that recover "
              f"before the next change; resolution {every} steps); not recovered: pairs of 10 "
              f"that do not. Online MAS and fine-tuning never see the boundaries; MAS-oracle and "
              f"EWC consolidate at the true ones.")
    command = " ".join(["python scripts/stability_gap.py", *sys.argv[1:]])
    footer = (f"`{command}`: {len(jobs) - cached} runs in {seconds:.0f} s "
              f"wall on {os.cpu_count()} cores, {args.workers} worker(s) x 1 torch thread; torch "
              f"{torch.__version__}, Python {platform.python_version()}. Figures (PNG and SVG): "
              f"{', '.join(copies)}.")
    if cached:
        footer += f" {cached} more runs were read from an earlier call (--fresh recomputes them)."
    text = f"{header}\n\n{table}\n\n{footer}\n"
    print("\n" + text)
    write_results(stem, text, {
        "seeds": args.seeds, "learners": args.learners, "eval_every": every, "seconds": seconds,
        "workers": args.workers, "runs_computed": len(jobs) - cached, "runs_read": cached,
        "aggregate": aggregate(results)})
    print(f"wrote {stem}.md, {stem}.json, {', '.join(c.strip('`') for c in copies)}; runs in {run_dir}/")


if __name__ == "__main__":
    main()
