"""Does Omega blow up as segments pile up? Consolidated importance over a long permuted-digits stream.

Run from the repository root::

    python scripts/omega_growth.py                      # 4 rules x 2 normalizations x seeds 0-1
    python scripts/omega_growth.py --seeds 0 --segments 10 --passes 2   # a quick look

A long stream: ``--segments`` pixel permutations of scikit-learn's digits (default 20), ``--passes``
passes over each (default 5), batch 32, the MLP and optimizer of ``configs/permuted-digits.toml``.
MAS consolidates at the true boundaries (the ``mas-oracle`` learner, lam and penalty form from that
file) with each consolidation rule of ``MASConfig.rule`` (``sum``: Omega += Omega_segment, the
paper; ``mean``: running mean over segments; ``ema``: alpha Omega + (1 - alpha) Omega_segment,
alpha 0.5; ``max``: elementwise max) and with ``MASConfig.normalize`` None (raw) or ``"max"``
(each segment's importance divided by its largest entry before combining). lam is not retuned per
variant, so with ``normalize="max"`` the penalty is weaker by the raw importance's scale; the final
accuracy of those rows reflects that. Fine-tuning on the same streams is the reference accuracy.

After each consolidation the runner records the consolidated Omega's mean and max over all
parameters (``events[*].stats`` in each run's ``summary.json``). The table shows them after
segments 1, 5, 10 and 20 (mean over seeds), the growth factor (after the last / after the first),
and the final average accuracy over all segments.

Writes one run directory per variant under ``--out`` (default ``runs/omega-growth``; an existing
one is continued, ``--fresh`` starts over) and ``results/omega_growth.md`` /
``results/omega_growth.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from online_mas.experiment.configio import load_config
from online_mas.experiment.launch import run_units
from online_mas.experiment.report import write_experiment_summary, write_results
from online_mas.experiment.rundir import continue_or_create, units

RULES = ("sum", "mean", "ema", "max")
NORMALIZE = ("none", "max")


@dataclass
class OmegaConfig:
    config: str = "configs/permuted-digits.toml"  # model, optimizer, mas-oracle lam and penalty form
    rules: tuple[str, ...] = RULES  # MASConfig.rule values compared
    normalize: tuple[str, ...] = NORMALIZE  # MASConfig.normalize: "none" (None) or "max"
    seeds: tuple[int, ...] = (0, 1)  # mean over these
    segments: int = 20  # permutations in the stream
    passes: float = 5.0  # passes over each segment's data
    marks: tuple[int, ...] = (1, 5, 10, 20)  # report Omega after these segments (and the last)
    workers: int = 2  # parallel processes, 1 torch thread each
    out: str = "runs/omega-growth"  # one run directory per variant below this
    results: str = "results/omega_growth"  # writes <results>.md and <results>.json


def _overrides(name: str, learner: str, cfg: OmegaConfig, mas: list[str]) -> list[str]:
    return [f"experiment.name=omega-{name}", f'experiment.learners=["{learner}"]',
            f"experiment.seeds={json.dumps(list(cfg.seeds))}", "stream.transition=abrupt",
            f"stream.n_segments={cfg.segments}", f"stream.passes={float(cfg.passes)}",
            "run.plots=false", "run.checkpoint_every=0", "run.progress=false", "run.eval_every=0",
            f"run.workers={cfg.workers}", *mas]


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = OmegaConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rules", nargs="+", default=list(cfg.rules), choices=RULES)
    p.add_argument("--normalize", nargs="+", default=list(cfg.normalize), choices=NORMALIZE)
    p.add_argument("--seeds", nargs="+", type=int, default=list(cfg.seeds))
    p.add_argument("--segments", type=int, default=cfg.segments)
    p.add_argument("--passes", type=float, default=cfg.passes)
    p.add_argument("--workers", type=int, default=cfg.workers)
    p.add_argument("--out", default=cfg.out)
    p.add_argument("--results", default=cfg.results)
    p.add_argument("--fresh", action="store_true", help="replace existing run directories")
    args = p.parse_args(argv)
    cfg = dataclasses.replace(cfg, rules=tuple(args.rules), normalize=tuple(args.normalize),
                              seeds=tuple(args.seeds), segments=args.segments, passes=args.passes,
                              workers=args.workers, out=args.out, results=args.results)
    torch.set_num_threads(1)
    marks = sorted({m for m in cfg.marks if m <= cfg.segments} | {cfg.segments})

    variants = [("finetune", "finetune", None, None, [])]
    for rule in cfg.rules:
        for norm in cfg.normalize:
            mas = [f"learner.mas-oracle.mas.rule={rule}"]
            if norm != "none":
                mas.append(f"learner.mas-oracle.mas.normalize={norm}")
            variants.append((f"{rule}-{norm}", "mas-oracle", rule, norm, mas))
    experiments = []
    for name, learner, rule, norm, mas in variants:
        config = load_config(cfg.config, _overrides(name, learner, cfg, mas))
        run_dir, config = continue_or_create(config, Path(cfg.out) / name, fresh=args.fresh)
        experiments.append((name, rule, norm, run_dir, config))

    jobs = [(config, u) for *_, run_dir, config in experiments for u in units(config, run_dir)]
    cached = sum((u.path / "summary.json").is_file() for _, u in jobs)
    print(f"{len(jobs)} runs ({len(variants)} variants x {len(cfg.seeds)} seeds, {cfg.segments} "
          f"segments x {cfg.passes:g} passes; {cached} already complete) on {cfg.workers} worker(s)",
          flush=True)
    start = time.perf_counter()
    results = run_units(jobs, workers=cfg.workers, progress=True)
    seconds = time.perf_counter() - start

    data: dict[str, Any] = {}
    head = ("| rule | normalize | seeds | " + " | ".join(f"Omega mean @{m}" for m in marks) + " | "
            + " | ".join(f"Omega max @{m}" for m in marks)
            + f" | growth mean (@{marks[-1]}/@1) | growth max (@{marks[-1]}/@1) | final ACC % |")
    rows = [head, "|" + "---|" * (3 + 2 * len(marks) + 3)]
    for name, rule, norm, run_dir, config in experiments:
        mine = [r for (c, u), r in zip(jobs, results, strict=True) if u.path.is_relative_to(run_dir)]
        write_experiment_summary(run_dir, config, mine)
        acc = _mean([r["average_accuracy"] for r in mine if r["average_accuracy"] is not None])
        entry: dict[str, Any] = {"rule": rule, "normalize": norm, "final_acc": acc,
                                 "final_acc_per_seed": [r["average_accuracy"] for r in mine]}
        if rule is None:
            data[name] = entry
            continue
        # curves[s][k]: Omega mean/max after segment k+1 in seed s (one boundary event per segment)
        curves = {stat: [[float(e["stats"][stat]) for e in r["events"] if e["reason"] == "boundary"]
                         for r in mine] for stat in ("omega_mean", "omega_max")}
        complete = all(len(c) == cfg.segments for cs in curves.values() for c in cs)
        if not complete:
            raise SystemExit(f"{name}: expected {cfg.segments} boundary events per run, got "
                             f"{[len(c) for c in curves['omega_mean']]}")
        mean_curve = {stat: [statistics.fmean(c[k] for c in cs) for k in range(cfg.segments)]
                      for stat, cs in curves.items()}
        growth = {stat: _mean([c[-1] / c[0] for c in cs if c[0] > 0]) for stat, cs in curves.items()}
        entry.update({"curve": mean_curve, "per_seed": curves, "growth": growth,
                      "at": {stat: {m: mean_curve[stat][m - 1] for m in marks} for stat in curves}})
        data[name] = entry
        rows.append(f"| {rule} | {norm} | {len(mine)} | "
                    + " | ".join(_fmt(mean_curve["omega_mean"][m - 1]) for m in marks) + " | "
                    + " | ".join(_fmt(mean_curve["omega_max"][m - 1]) for m in marks)
                    + f" | {_fmt(growth['omega_mean'])} | {_fmt(growth['omega_max'])} | "
                    + (f"{100 * acc:.1f}" if acc is not None else "n/a") + " |")

    ft = data["finetune"]["final_acc"]
    header = (f"Consolidated MAS importance over a long stream: {cfg.segments} permutations of "
              f"digits x {cfg.passes:g} passes, batch 32, MLP 64-100-100-10, MAS at the true "
              f"boundaries (mas-oracle, lam and penalty form of {cfg.config}, not retuned per "
              f"variant); mean over seeds {', '.join(map(str, cfg.seeds))}. Omega mean/max: over "
              f"all parameters, right after the consolidation at the end of segment k (@k). "
              f"Growth: after the last segment / after the first, per seed, then averaged. Final "
              f"ACC: average accuracy over all {cfg.segments} segments at the end.")
    ref = (f"Reference: fine-tuning on the same streams ends at "
           f"{100 * ft:.1f}% average accuracy." if ft is not None else "")
    footer = (f"`python scripts/omega_growth.py`: {len(jobs) - cached} runs in {seconds:.0f} s wall "
              f"on {os.cpu_count()} cores, {cfg.workers} worker(s) x 1 torch thread; torch "
              f"{torch.__version__}, Python {platform.python_version()}.")
    if cached:
        footer += f" {cached} more runs were read from an earlier call (--fresh recomputes them)."
    text = "\n\n".join([header, "\n".join(rows), ref, footer]) + "\n"
    print("\n" + text)
    report = {"settings": dataclasses.asdict(cfg), "marks": marks, "seconds": seconds,
              "runs_computed": len(jobs) - cached, "runs_read": cached, "variants": data}
    write_results(cfg.results, text, report)
    print(f"wrote {cfg.results}.md and {cfg.results}.json; runs in {cfg.out}/")
    return report


if __name__ == "__main__":
    main()
