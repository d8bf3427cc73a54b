"""Sweep the penalty strength ``lam`` of the regularised learners on the digits scenarios.

Run from the repository root::

    python scripts/sweep_digits.py                     # ~5-10 minutes on 2 cores
    python scripts/sweep_digits.py --seeds 100 --workers 1

For every scenario in ``configs/<scenario>.toml`` and every (learner, penalty form, lam) of the grid
below, runs the learner on the sweep seeds (100, 101: disjoint from the seeds 0-4 of the reported
table; the held-out digits are the same, the permutations and sample orders differ) and prints the
mean average accuracy. The best lam per (scenario, learner) is what ``configs/<scenario>.toml``
uses. Writes ``results/digits_sweep.md`` and ``results/digits_sweep.json``; the runs go to
``--out`` (default ``runs/sweep-digits``). Runs already complete there are read, not rerun, so
a grid can be extended cheaply (delete ``--out`` after changing anything else).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from online_mas.experiment.configio import load_config
from online_mas.experiment.launch import run_units
from online_mas.experiment.report import write_results
from online_mas.experiment.rundir import Unit


@dataclass
class SweepConfig:
    scenarios: tuple[str, ...] = ("permuted-digits", "rotated-digits", "split-digits",
                                  "split-digits-domain")  # configs/<name>.toml
    seeds: tuple[int, ...] = (100, 101)  # sweep seeds, disjoint from the reported seeds 0-4
    grid: dict[str, tuple[float, ...]] = field(default_factory=lambda: {
        "online-mas/grad": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
        "online-mas/proximal": (1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0),
        "mas-oracle/grad": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
        "mas-oracle/proximal": (1e-2, 3e-2, 1e-1, 3e-1, 1.0),
        "l2/grad": (1e-3, 1e-2, 1e-1, 1.0),
        "ewc/grad": (10.0, 100.0, 1000.0, 3000.0, 10000.0),
        "ewc/proximal": (1000.0, 10000.0, 100000.0),
    })  # "<learner>/<penalty form>" -> lam values
    workers: int = 2  # parallel processes (1 torch thread each)
    out: str = "runs/sweep-digits"  # where the runs go
    results: str = "results/digits_sweep"  # .md and .json written here


def main() -> None:
    cfg = SweepConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", default=list(cfg.scenarios))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(cfg.seeds))
    parser.add_argument("--workers", type=int, default=cfg.workers)
    parser.add_argument("--out", default=cfg.out)
    parser.add_argument("--results", default=cfg.results)
    args = parser.parse_args()

    jobs, keys = [], []
    for scenario in args.scenarios:
        for entry, lams in cfg.grid.items():
            learner, form = entry.split("/")
            for lam in lams:
                name = f"{scenario}/{learner}-{form}-lam{lam:g}"
                config = load_config(Path("configs") / f"{scenario}.toml", [
                    f"experiment.learners=[\"{learner}\"]", f"learner.{learner}.lam={lam!r}",
                    f"learner.{learner}.penalty=\"{form}\"", "run.plots=false",
                    "run.checkpoint_every=0", "run.progress=false"])
                config = dataclasses.replace(config, experiment=dataclasses.replace(
                    config.experiment, seeds=tuple(args.seeds)))
                for seed in args.seeds:
                    jobs.append((config, Unit(learner, seed, Path(args.out) / name / f"seed{seed}")))
                    keys.append((scenario, learner, form, lam))
    cached = sum((u.path / "summary.json").is_file() for _, u in jobs)
    print(f"{len(jobs)} runs ({cached} already complete in {args.out}) on {args.workers} worker(s)")
    start = time.perf_counter()
    results = run_units(jobs, workers=args.workers, progress=True)
    seconds = time.perf_counter() - start

    table: dict[tuple[str, str, str, float], list[float]] = {}
    for key, summary in zip(keys, results, strict=True):
        table.setdefault(key, []).append(summary["average_accuracy"])
    rows = [{"scenario": s, "learner": ln, "penalty": f, "lam": lam, "acc": sum(v) / len(v),
             "runs": len(v)} for (s, ln, f, lam), v in table.items()]
    lines = [f"Penalty-strength sweep on seeds {args.seeds} (mean average accuracy, %); "
             f"{len(jobs)} runs ({len(jobs) - cached} run now in {seconds:.0f} s on {args.workers} "
             f"worker(s), {cached} read from earlier runs). Command: python scripts/sweep_digits.py",
             "",
             "| scenario | learner | penalty | " + " | ".join(["lam", "ACC %", "best"]) + " |",
             "|---|---|---|---|---|---|"]
    for (scenario, learner, form) in dict.fromkeys((r["scenario"], r["learner"], r["penalty"])
                                                   for r in rows):
        mine = [r for r in rows if (r["scenario"], r["learner"], r["penalty"]) == (scenario, learner, form)]
        best = max(mine, key=lambda r: r["acc"])
        for r in mine:
            mark = "**best**" if r is best else ""
            acc = f"{100 * r['acc']:.1f}"
            lines.append(f"| {scenario} | {learner} | {form} | {r['lam']:g} | {acc} | {mark} |")
    text = "\n".join(lines)
    print(text)
    write_results(args.results, text, {"seeds": args.seeds, "seconds": seconds, "rows": rows})


if __name__ == "__main__":
    main()
