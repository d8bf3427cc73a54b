"""Cost of label-free MAS importance, as a multiple of one plain training step.

For an MLP 784-256-256-10 and a small CNN on 28x28 inputs at batch 64, times ``om.importance`` with
each method (``exact``, ``vmap``, ``loop``, ``batch``) and a plain training step (forward,
cross-entropy, backward, SGD step) on the same model and batch, in one process, interleaved over
many rounds; prints a markdown table of median ratios and writes it as JSON.

Run from the repository root (package installed with ``pip install -e .``, or ``PYTHONPATH=.``)::

    python scripts/bench_importance.py                       # both models, all methods
    python scripts/bench_importance.py --threads 2 --rounds 50
    python scripts/bench_importance.py --models mlp --methods exact,vmap --out runs/bench_imp

Targets (issue 2): exact <= 1.3x a training step on the MLP, <= 3x on the CNN, and at least 10x
faster than ``vmap`` on the MLP.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from _bench_models import (
    CLOCKS,
    MODELS,
    environment,
    interleaved,
    make_batch,
    markdown_table,
    paired_ratio,
    train_step,
    write_json,
)
from tqdm import tqdm

import online_mas as om

TARGETS = {"mlp": 1.3, "cnn": 3.0}  # exact / training step
VMAP_SPEEDUP = 10.0  # exact at least this many times faster than vmap on the MLP


@dataclass
class Config:
    models: tuple[str, ...] = ("mlp", "cnn")  # benchmark models (see _bench_models.MODELS)
    methods: tuple[str, ...] = ("exact", "vmap", "loop", "batch")  # om.importance methods to time
    batch: int = 64  # samples per batch
    rounds: int = 30  # interleaved timing rounds (ratios are medians over rounds)
    block_ms: float = 20.0  # each function runs repeatedly for about this long per round
    threads: int = 1  # torch.set_num_threads
    clock: str = "cpu"  # "cpu" (process CPU time: robust on a shared machine) or "wall"
    seed: int = 0  # seed of the model and the batch
    out: str = "runs/bench_importance"  # run directory for the JSON


def bench_model(name: str, cfg: Config) -> dict[str, object]:
    """Time the training step and every method on one model; ratios to the training step."""
    torch.manual_seed(cfg.seed)
    model = MODELS[name]()
    x, y = make_batch(cfg.batch, cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    fns = {"train_step": lambda: train_step(model, opt, x, y)}
    for method in cfg.methods:
        fns[method] = lambda method=method: om.importance(model, x, method=method)
    with tqdm(total=cfg.rounds, desc=f"{name}", unit="round") as bar:
        res, times = interleaved(fns, baseline="train_step", rounds=cfg.rounds, block_ms=cfg.block_ms,
                                 clock=cfg.clock, progress=bar.update)
    out: dict[str, object] = {"params": sum(p.numel() for p in model.parameters()), "timings": res}
    if "exact" in res:
        out["target_exact_ratio"] = TARGETS.get(name)
        out["exact_meets_target"] = name in TARGETS and res["exact"]["ratio"] <= TARGETS[name]
        if "vmap" in res:
            out["vmap_over_exact"] = paired_ratio(times["vmap"], times["exact"])
    return out


def table(results: dict[str, dict[str, object]], methods: tuple[str, ...]) -> str:
    header = ["model", "train step (ms)", *[f"{m} / step" for m in methods]]
    rows = []
    for name, r in results.items():
        t = r["timings"]
        assert isinstance(t, dict)
        cells = [name, f"{t['train_step']['ms']:.2f}"]
        for m in methods:
            cells.append(f"{t[m]['ratio']:.2f}x ({t[m]['ratio_q1']:.2f}-{t[m]['ratio_q3']:.2f})")
        rows.append(cells)
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = Config()
    p.add_argument("--models", default=",".join(d.models), help="comma-separated: mlp,cnn")
    p.add_argument("--methods", default=",".join(d.methods), help="comma-separated om.METHODS")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--block-ms", type=float, default=d.block_ms)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--clock", choices=sorted(CLOCKS), default=d.clock)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out)
    a = p.parse_args(argv)
    cfg = Config(tuple(a.models.split(",")), tuple(a.methods.split(",")), a.batch, a.rounds,
                 a.block_ms, a.threads, a.clock, a.seed, a.out)
    unknown = [m for m in cfg.models if m not in MODELS] + [m for m in cfg.methods if m not in om.METHODS]
    if unknown:
        p.error(f"unknown models/methods {unknown}; models: {sorted(MODELS)}, methods: {om.METHODS}")
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    results = {name: bench_model(name, cfg) for name in cfg.models}
    report: dict[str, object] = {
        "config": asdict(cfg),
        "environment": environment(cfg.threads),
        "seconds": time.time() - t0,
        "results": results,
    }
    md = table(results, cfg.methods)
    report["table"] = md
    print(f"\nimportance cost / training step, batch {cfg.batch}, {cfg.threads} thread(s), {cfg.clock} "
          f"time, median of {cfg.rounds} interleaved rounds (interquartile range)\n")
    print(md)
    for name, r in results.items():
        if "exact_meets_target" in r:
            line = f"{name}: exact <= {r['target_exact_ratio']}x step: {r['exact_meets_target']}"
            if "vmap_over_exact" in r:
                line += f"; vmap / exact = {r['vmap_over_exact']:.1f}x"
                if name == "mlp":
                    line += f" (target >= {VMAP_SPEEDUP:.0f}x: {r['vmap_over_exact'] >= VMAP_SPEEDUP})"
            print(line)
    path = Path(cfg.out) / "bench_importance.json"
    write_json(path, report)
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
