"""Avalanche's own MASPlugin beside online_mas.avalanche.OnlineMASPlugin, and lambda_reg -> lam.

The same scenario for every row: ``--experiences`` pixel permutations of sklearn's digits (the
first unpermuted; ``--train`` samples each, the other digits to test), an MLP 64-100-10, SGD
(lr 0.1, minibatch 10), the same seed. Two streams: ``batch`` (each experience ``--epochs``
times, Avalanche's usual setting) and ``online`` (``split_online_stream``, one pass, experiences
of one minibatch; MASPlugin then recomputes its importance after every minibatch). Accuracy on
every permuted test set after each original experience gives ACC and BWT; time is the wall time
of training, one torch thread.

The conversion: Avalanche 0.6's MASPlugin (``avalanche/training/plugins/mas.py``) takes
``|d/dtheta mean_n ||f(x_n)||^2|`` per minibatch of ``train_mb_size`` (squared norm, train mode)
and averages over the minibatches; its penalty is ``lambda_reg * sum Omega (theta - theta*)^2``,
and ``alpha`` mixes experiences (EMA). OnlineMAS's exact estimate takes the absolute value per
sample before averaging (eval mode), its penalty is the same ``lam * sum Omega (theta - theta*)^2``.
So ``lam = lambda_reg * sum(Omega_avalanche) / sum(Omega_online)``, the ratio measured below
(``method="batch"`` on the same minibatches reproduces Avalanche's Omega, ratio 1).

Run from the repository root (needs ``pip install -c constraints.txt -e ".[avalanche]"``)::

    python scripts/compare_avalanche_mas.py               # writes results/avalanche_mas.md
    python scripts/compare_avalanche_mas.py --seeds 0 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.online import split_online_stream
from avalanche.benchmarks.utils.classification_dataset import (
    _make_taskaware_tensor_classification_dataset as tensor_dataset,
)
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin, MASPlugin
from avalanche.training.supervised import Naive
from sklearn.datasets import load_digits
from torch import Tensor, nn
from tqdm import tqdm

import online_mas as om
from online_mas.avalanche import OnlineMASPlugin


@dataclass
class Config:
    experiences: int = 3  # pixel permutations, the first the identity
    train: int = 1200  # training digits per experience (the other 597 test)
    epochs: int = 3  # passes over each experience on the batch stream
    mb: int = 10  # minibatch size (train_mb_size)
    lr: float = 0.1  # SGD
    lambda_reg: float = 1.0  # Avalanche's MASPlugin; our lam is converted from it
    seeds: tuple[int, ...] = (0, 1, 2)  # model, permutations and shuffling
    results: str = "results/avalanche_mas.md"  # the tables
    out: str = "runs/compare_avalanche_mas"  # JSON of every run


def data(cfg: Config, seed: int) -> tuple[list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]]]:
    """(train, test) pairs of each permuted experience."""
    d = load_digits()
    x, y = torch.tensor(d.data, dtype=torch.float32) / 16, torch.tensor(d.target)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    x, y = x[order], y[order]
    perms = [torch.arange(64)] + [torch.randperm(64, generator=g) for _ in range(cfg.experiences - 1)]
    train = [(x[: cfg.train][:, p], y[: cfg.train]) for p in perms]
    test = [(x[cfg.train:][:, p], y[cfg.train:]) for p in perms]
    return train, test


def model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 10))


def strategy(net: nn.Module, cfg: Config, plugins: list[SupervisedPlugin], epochs: int) -> Naive:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "No loggers specified"
        evaluator = EvaluationPlugin(loggers=[])
    return Naive(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=cfg.lr), train_mb_size=cfg.mb,
                 train_epochs=epochs, evaluator=evaluator, plugins=plugins)


def accuracy(net: nn.Module, test: list[tuple[Tensor, Tensor]]) -> list[float]:
    net.eval()
    with torch.no_grad():
        return [100.0 * float((net(x).argmax(1) == y).float().mean()) for x, y in test]


def run(cfg: Config, seed: int, stream: str, plugin: Callable[[], SupervisedPlugin | None]) -> dict[str, Any]:
    """Train one learner on one stream; the accuracy matrix, ACC, BWT and the training time."""
    train, test = data(cfg, seed)
    bm = benchmark_from_datasets(train=[tensor_dataset(x, y) for x, y in train])
    net = model(seed)
    p = plugin()
    s = strategy(net, cfg, [p] if p is not None else [], cfg.epochs if stream == "batch" else 1)
    torch.manual_seed(seed)  # the dataloaders' shuffling
    rows, seconds = [], 0.0
    for exp in bm.train_stream:
        parts = [exp] if stream == "batch" else split_online_stream([exp], experience_size=cfg.mb,
                                                                    access_task_boundaries=True, seed=seed)
        start = time.perf_counter()
        for part in parts:
            s.train(part, eval_streams=[])
        seconds += time.perf_counter() - start
        rows.append(accuracy(net, test))
    events = [(e.step, e.reason) for e in p.events] if isinstance(p, OnlineMASPlugin) else []
    return {"R": rows, "acc": om.average_accuracy(rows), "bwt": om.backward_transfer(rows),
            "seconds": seconds, "events": events}


def conversion(cfg: Config, seed: int) -> dict[str, float]:
    """Omega of Avalanche's MASPlugin and of OnlineMAS on the same model, data and minibatches."""
    train, _ = data(cfg, seed)
    bm = benchmark_from_datasets(train=[tensor_dataset(x, y) for x, y in train[:1]])
    net = model(seed)
    mas = MASPlugin(lambda_reg=cfg.lambda_reg)
    strategy(net, cfg, [mas], cfg.epochs).train(next(iter(bm.train_stream)), eval_streams=[])
    assert mas.importance is not None  # set by after_training_exp
    theirs = {n: d.data.float() for n, d in mas.importance.items()}
    x = train[0][0]
    exact = om.importance(net, x, method="exact")
    batches = list(torch.split(x, cfg.mb))  # MASPlugin's dataloader: in order, train_mb_size
    batch = {n: sum(om.importance(net, b, method="batch")[n] for b in batches) / len(batches) for n in exact}
    total = {k: sum(float(v[n].sum()) for n in exact) for k, v in
             (("avalanche", theirs), ("exact", exact), ("batch", batch))}
    ratios = torch.cat([(exact[n] / theirs[n])[theirs[n] > 0].flatten() for n in exact])
    return {"sum_avalanche": total["avalanche"], "sum_exact": total["exact"], "sum_batch": total["batch"],
            "ratio_exact": total["exact"] / total["avalanche"],
            "ratio_batch": total["batch"] / total["avalanche"],
            "median_elementwise_ratio_exact": float(ratios.median()),
            "max_abs_diff_batch": max(float((batch[n] - theirs[n]).abs().max()) for n in exact)}


def learners(cfg: Config, lam: float) -> dict[str, Callable[[], SupervisedPlugin | None]]:
    return {
        "Naive (no penalty)": lambda: None,
        f"Avalanche MASPlugin(lambda_reg={cfg.lambda_reg:g})": lambda: MASPlugin(lambda_reg=cfg.lambda_reg),
        f"OnlineMASPlugin(lam={lam:.3g}, boundaries='experience', rule='ema')":
            lambda: OnlineMASPlugin(lam=lam, boundaries="experience", rule="ema"),
        f"OnlineMASPlugin(lam={lam:.3g}) task-free, default detector":
            lambda: OnlineMASPlugin(lam=lam),
    }


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main() -> None:
    cfg = Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, value in asdict(cfg).items():
        kind = type(value[0]) if isinstance(value, tuple) else type(value)
        parser.add_argument(f"--{name}", type=kind, nargs="+" if isinstance(value, tuple) else None,
                            default=value)
    args = vars(parser.parse_args())
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    torch.set_num_threads(1)

    conv = conversion(cfg, cfg.seeds[0])
    print("Omega after experience 0, seed", cfg.seeds[0], json.dumps(conv, indent=1))
    lam = cfg.lambda_reg / conv["ratio_exact"]
    table = learners(cfg, lam)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    jobs = [(st, name, seed) for st in ("batch", "online") for name in table for seed in cfg.seeds]
    for st, name, seed in tqdm(jobs, desc="runs", unit="run"):
        results.setdefault(st, {}).setdefault(name, []).append(run(cfg, seed, st, table[name]))

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.json").write_text(json.dumps({"config": asdict(cfg), "conversion": conv, "lam": lam,
                                               "results": results}, indent=1))
    lines = [
        "# Avalanche's MASPlugin and OnlineMASPlugin on permuted digits",
        "",
        "Written by `scripts/compare_avalanche_mas.py` (the module docstring says what is run). "
        f"{cfg.experiences} permutations of sklearn digits, {cfg.train} training digits each, MLP "
        f"64-100-10, SGD lr {cfg.lr}, minibatch {cfg.mb}; seeds {', '.join(map(str, cfg.seeds))} "
        "(mean ± std). ACC and BWT in points of test accuracy after the last experience; time: "
        "training only, one torch thread, on a shared CPU (noisy).",
        "",
        "## Converting `lambda_reg` to `lam`",
        "",
        "Avalanche 0.6's `MASPlugin` computes, after each experience, the mean over minibatches of "
        "`|d/dtheta mean_n ||f(x_n)||^2|` (squared norm, model in train mode, the gradient of the "
        "batch mean); its penalty is `lambda_reg * sum Omega (theta - theta*)^2` (no 1/2), and "
        "`alpha=0.5` mixes experiences as an EMA. OnlineMAS's exact estimate averages "
        "`|d ||f(x_n)||^2 / dtheta|` per sample (eval mode) and its penalty is the same "
        "`lam * sum Omega (theta - theta*)^2`. The per-sample absolute value is never smaller than "
        "that of the batch gradient, so our Omega is larger by a factor that depends on the data "
        "and the model; on a model without dropout or batch norm, train and eval mode agree. "
        "Hence `lam = lambda_reg * sum(Omega_avalanche) / sum(Omega_online)`; with `rule='sum'` "
        "(the default) Omega also grows with every consolidation where Avalanche's EMA does not, "
        "`rule='ema'` matches it.",
        "",
        f"Measured on the model after experience 0 (seed {cfg.seeds[0]}, {cfg.epochs} epochs), "
        f"its {cfg.train} training digits:",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| sum of Omega, Avalanche `MASPlugin.importance` | {conv['sum_avalanche']:.6g} |",
        f"| sum of Omega, `om.importance(method='exact')` | {conv['sum_exact']:.6g} |",
        f"| sum of Omega, `om.importance(method='batch')` per minibatch of {cfg.mb}, averaged | "
        f"{conv['sum_batch']:.6g} |",
        f"| ratio exact / Avalanche (sums) | {conv['ratio_exact']:.4g} |",
        f"| median ratio exact / Avalanche, element by element | "
        f"{conv['median_elementwise_ratio_exact']:.4g} |",
        f"| ratio batch / Avalanche (sums) | {conv['ratio_batch']:.6f} |",
        f"| max abs difference batch - Avalanche | {conv['max_abs_diff_batch']:.3g} |",
        "",
        f"So `lambda_reg = {cfg.lambda_reg:g}` corresponds to `lam = {lam:.4g}` in the rows below.",
    ]
    for st, by_name in results.items():
        title = ("batch stream: each experience for "
                 f"{cfg.epochs} epochs" if st == "batch" else
                 f"online stream: `split_online_stream`, experiences of {cfg.mb} samples, one pass")
        lines += ["", f"## {title}", "", "| learner | ACC | BWT | time (s) | consolidations (seed "
                  f"{cfg.seeds[0]}) |", "|---|---|---|---|---|"]
        for name, runs in by_name.items():
            ev = runs[0]["events"]
            n_ev = f"{len(ev)}: " + ", ".join(f"step {s} ({r})" for s, r in ev) if ev else \
                ("—" if "OnlineMAS" not in name else "0")
            if "Avalanche" in name:
                n_ev = "each experience" if st == "batch" else "each online experience (minibatch)"
            lines.append(f"| {name} | {mean_std([r['acc'] for r in runs])} | "
                         f"{mean_std([r['bwt'] for r in runs])} | {mean_std([r['seconds'] for r in runs])} "
                         f"| {n_ev} |")
    notes = []
    online = results.get("online", {})
    naive, theirs = (online.get(k) for k in list(table)[:2])
    if naive and theirs and [r["R"] for r in naive] == [r["R"] for r in theirs]:
        notes.append("On the online stream `MASPlugin` gives exactly Naive's accuracies: with experiences "
                     "of one minibatch it anchors `theta*` at the parameters after every step, so its "
                     "penalty and gradient are zero at the next one.")
    silent = [st for st, by in results.items() for n, runs in by.items()
              if "default detector" in n and not any(r["events"] for r in runs)]
    if silent:
        notes.append(f"The default detector did not fire on the {' and '.join(silent)} stream(s) (any seed): "
                     "that row is Naive plus the importance estimate's cost.")
    lines += ["", *notes] if notes else []
    Path(cfg.results).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.results).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
