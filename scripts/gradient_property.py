"""Should you care about the gradient property? Importance estimators and penalty shapes, measured.

Run from the repository root::

    python scripts/gradient_property.py                 # both parts (about 40-80 minutes, 1 worker)
    python scripts/gradient_property.py --part agreement          # part 1 only (a minute)
    python scripts/gradient_property.py --part sweep --workers 2  # part 2 on an idle machine

``results/gradient_property.md`` was written by these calls (each stream's section names its own;
a later call replaces the parts and streams it runs and keeps the others), on a machine shared with
other jobs, so MNIST-1D had a 4-point grid::

    python scripts/gradient_property.py --part agreement
    python scripts/gradient_property.py --part sweep --streams permuted-digits rotated-digits
    python scripts/gradient_property.py --part sweep --streams permuted-mnist1d --lams 0.001 0.01 0.1 1

Part 1, agreement: the digits MLP (64-100-100-10) and CNN (conv 16, 32, dense 64) of the runner,
trained with SGD (lr 0.05, momentum 0.9) on segment 0 of permuted digits (10 passes, batch 32);
then on the batches of one pass over that segment, the estimators ``exact`` (MAS: ``|d ||f||^2 / d
theta|`` per sample), ``batch`` (the same of the batch mean, as Avalanche and the original code),
``jacobian`` (``sum_k |d f_k / d theta|``), ``norm`` (``|d ||f|| / d theta|``) and ``fisher`` (the
own-prediction Fisher) pairwise: Spearman rank correlation, overlap of the top 1% and 10% of
parameters, the ratio of their scales per layer; their cost per batch; and, from the per-sample
Jacobian, why ``exact`` and ``jacobian`` differ: with ``g_k = d f_k / d theta``,
``exact = |2 sum_k f_k g_k|``, ``nocancel = 2 sum_k |f_k| |g_k|`` (what it would be without sign
cancellation) and ``jacobian = sum_k |g_k|``. ``exact / nocancel`` is the share that survives the
cancellation; ``nocancel`` against ``jacobian`` is the weighting by output magnitude.

Part 2, sweep: the runner's learners (:mod:`online_mas.experiment`, the same runs as
``scripts/compare.py``) on permuted and rotated digits (``configs/<name>.toml``, 10 passes) and
permuted MNIST-1D (the permuted-digits config with ``stream.name = "permuted-mnist1d"``, 2
passes: ``--mnist1d-passes``): task-free ``online-mas`` and ``mas-oracle`` (the true boundaries),
each with every estimator as Omega (quadratic penalty, proximal form) and with every penalty shape
and form (quadratic, L1, Huber; explicit gradient ``grad`` and ``proximal``) on exact Omega. Omega is
normalised per segment to mean 1 (``mas.normalize = "mean"``) so that one lam grid fits every
estimator; lam is chosen per variant on the tuning seed (100; ``--tune-seeds 100 101`` for two) and
reported on seeds 0-4: ACC,
forgetting, ms per step, and the lam range (on the tuning seeds) within 2 points of the best.

Runs go to ``--out`` (default ``runs/gradient-property``); complete ones are read, not rerun.
Writes ``results/gradient_property.md`` and ``results/gradient_property.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import scipy.stats
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

import online_mas as om
from online_mas.experiment.config import ModelConfig, OptimConfig
from online_mas.experiment.configio import load_config
from online_mas.experiment.models import build_model
from online_mas.experiment.run import build_optimizer, run_unit
from online_mas.experiment.rundir import Unit
from streams import StreamConfig, build_stream

ESTIMATORS = ("exact", "batch", "jacobian", "norm", "fisher")
FORMS = ("quadratic/proximal", "quadratic/grad", "l1/proximal", "l1/grad", "huber/proximal", "huber/grad")
LEARNERS = ("online-mas", "mas-oracle")


@dataclass
class GradConfig:
    part: str = "all"  # "agreement" (part 1), "sweep" (part 2) or "all"
    models: tuple[str, ...] = ("mlp", "cnn")  # part 1: the runner's digits models
    agreement_seed: int = 0  # part 1: stream and initialisation
    streams: tuple[str, ...] = ("permuted-digits", "rotated-digits", "permuted-mnist1d")  # part 2
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # part 2: reported
    tune_seeds: tuple[int, ...] = (100,)  # part 2: lam chosen on these (one, for the compute budget)
    lams: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # part 2: lam grid (Omega mean 1)
    estimators: tuple[str, ...] = ESTIMATORS  # part 2: Omega (quadratic/proximal)
    forms: tuple[str, ...] = FORMS  # part 2: "shape/form" of the penalty, on exact Omega
    delta: float = 0.01  # Huber threshold on |theta - theta*|
    normalize: str = "mean"  # mas.normalize of every variant (consolidate.NORMALIZE)
    passes: float = 10.0  # digits: passes per segment (the configs')
    mnist1d_passes: float = 2.0  # permuted-mnist1d: passes per segment (4000 samples each)
    workers: int = 1  # part 2: processes, 1 torch thread each
    out: str = "runs/gradient-property"  # part 2: run directories
    results: str = "results/gradient_property"  # writes <results>.md and <results>.json


# ----------------------------------------------------------------------------- pairwise metrics

def flat(imp: dict[str, Tensor], names: Sequence[str]) -> Tensor:
    """The importances of ``names``, concatenated into one float64 vector."""
    return torch.cat([imp[n].detach().double().reshape(-1) for n in names])


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two importance vectors, without the entries that are zero in
    both (parameters no estimator can score, e.g. the weights of an always-zero input pixel): their
    shared tie would count as agreement."""
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"a and b must be vectors of one length, got {tuple(a.shape)} and {tuple(b.shape)}")
    keep = (a != 0) | (b != 0)
    if int(keep.sum()) < 2:
        return float("nan")
    return float(scipy.stats.spearmanr(a[keep].numpy(), b[keep].numpy()).statistic)


def top_overlap(a: Tensor, b: Tensor, share: float) -> float:
    """``|top(a) & top(b)| / k`` for the ``k = ceil(share * n)`` largest entries of each."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share!r}")
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"a and b must be vectors of one length, got {tuple(a.shape)} and {tuple(b.shape)}")
    k = max(1, math.ceil(share * a.numel()))
    top_a = set(torch.topk(a, k).indices.tolist())
    return len(top_a & set(torch.topk(b, k).indices.tolist())) / k


def layer_means(imp: dict[str, Tensor]) -> dict[str, float]:
    """Mean importance per layer (the weight and bias of one module together), by module name."""
    sums: dict[str, list[float]] = {}
    for name, t in imp.items():
        s = sums.setdefault(name.rpartition(".")[0] or name, [0.0, 0.0])
        s[0] += float(t.double().sum())
        s[1] += t.numel()
    return {layer: s / n for layer, (s, n) in sums.items()}


def decompose(model: nn.Module, batches: Sequence[Tensor], chunk: int = 64) -> dict[str, Any]:
    """From the per-sample Jacobian ``g_nk = d f_nk / d theta``: ``exact = |2 sum_k f_k g_k|``,
    ``nocancel = 2 sum_k |f_k| |g_k|`` and ``jacobian = sum_k |g_k|`` (means over samples, by
    parameter name), and per sample the rank agreement of ``exact_n`` with ``jacobian_n``, the
    share ``c_n = sum exact_n / sum nocancel_n`` that survives the cancellation, and the share of the
    largest output in ``||f_n||^2``."""
    from torch.func import functional_call, jacrev, vmap

    model.eval()
    named = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    names = list(named)

    def outputs(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return functional_call(model, p, (xi.unsqueeze(0),)).reshape(-1)

    per_sample = vmap(jacrev(outputs), in_dims=(None, 0))
    total = {k: {n: torch.zeros_like(p, dtype=torch.float64) for n, p in named.items()}
             for k in ("exact", "nocancel", "jacobian")}
    agree, kept, dominance, count = [], [], [], 0
    for xb in batches:
        for xc in xb.split(chunk):
            with torch.no_grad():
                f = model(xc).reshape(xc.shape[0], -1).double()
            jac = per_sample(named, xc)  # name -> (samples, K, *shape)
            rows: dict[str, list[Tensor]] = {k: [] for k in total}
            for n in names:
                g = jac[n].double().reshape(xc.shape[0], f.shape[1], -1)
                parts = {"exact": (2.0 * torch.einsum("sk,skp->sp", f, g)).abs(),
                         "nocancel": 2.0 * torch.einsum("sk,skp->sp", f.abs(), g.abs()),
                         "jacobian": g.abs().sum(1)}
                for k, v in parts.items():
                    total[k][n] += v.sum(0).reshape(named[n].shape)
                    rows[k].append(v)
            cat = {k: torch.cat(v, 1) for k, v in rows.items()}
            for i in range(xc.shape[0]):
                agree.append(spearman(cat["exact"][i], cat["jacobian"][i]))
                kept.append(float(cat["exact"][i].sum() / cat["nocancel"][i].sum().clamp_min(1e-300)))
            dominance += (f.pow(2).max(1).values / f.pow(2).sum(1).clamp_min(1e-300)).tolist()
            count += xc.shape[0]
    means = {k: {n: t / count for n, t in v.items()} for k, v in total.items()}
    return {"means": means, "agree": agree, "kept": kept, "dominance": dominance}


def _digits_model(kind: str, seed: int, passes: float) -> tuple[nn.Module, list[Tensor], list[Tensor]]:
    """A runner model trained on segment 0 of permuted digits; one pass of that segment's batches
    (inputs, and labels for the timing's training steps)."""
    stream = build_stream(StreamConfig("permuted-digits", seed=seed, n_segments=5, passes=passes))
    torch.manual_seed(seed)
    mc = ModelConfig() if kind == "mlp" else ModelConfig(kind="cnn", channels=(16, 32), hidden=(64,))
    model = build_model(mc, stream.input_shape, stream.n_classes)
    opt = build_optimizer(OptimConfig(), model)
    steps = stream.change_points[0]
    for i in range(steps):
        x, y = stream.batch(i)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    one_pass = [stream.batch(i) for i in range(round(steps / passes))]
    return model, [x for x, _ in one_pass], [y for _, y in one_pass]


def agreement(cfg: GradConfig, kind: str) -> dict[str, Any]:
    """Part 1 on one model: estimator values, pairwise metrics, costs and the decomposition."""
    model, batches, labels = _digits_model(kind, cfg.agreement_seed, cfg.passes)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    n = sum(b.shape[0] for b in batches)
    imps = {}
    for m in ESTIMATORS:  # per-batch means (batch: of 32 samples), weighted by the batch size
        acc = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in model.named_parameters()}
        for xb in batches:
            for k, v in om.importance(model, xb, method=m).items():
                acc[k] += v.double() * xb.shape[0]
        imps[m] = {k: v / n for k, v in acc.items()}
    ms: dict[str, list[float]] = {m: [] for m in ("step", *ESTIMATORS)}
    twin = copy.deepcopy(model)  # the training steps of the timing change a copy only
    twin_opt = build_optimizer(OptimConfig(), twin)
    x0, y0 = batches[0], labels[0]
    for _ in range(10):  # interleaved rounds on the same batch: a training step, then each estimator
        t0 = time.perf_counter()
        twin_opt.zero_grad(set_to_none=True)
        F.cross_entropy(twin(x0), y0).backward()
        twin_opt.step()
        ms["step"].append(1e3 * (time.perf_counter() - t0))
        for m in ESTIMATORS:
            t0 = time.perf_counter()
            om.importance(model, x0, method=m)
            ms[m].append(1e3 * (time.perf_counter() - t0))
    step_ms = min(ms.pop("step"))  # the fastest round: the least disturbed by other processes
    vec = {m: flat(imps[m], names) for m in ESTIMATORS}
    layers = {m: layer_means(imps[m]) for m in ESTIMATORS}
    pairs = []
    for i, a in enumerate(ESTIMATORS):
        for b in ESTIMATORS[i + 1:]:
            ratios = [layers[a][ly] / layers[b][ly] for ly in layers[a] if layers[b][ly] > 0]
            pairs.append({"a": a, "b": b, "spearman": spearman(vec[a], vec[b]),
                          "top1": top_overlap(vec[a], vec[b], 0.01),
                          "top10": top_overlap(vec[a], vec[b], 0.10),
                          "ratio_min": min(ratios), "ratio_max": max(ratios)})
    dec = decompose(model, batches)
    check = max(float((dec["means"]["exact"][k] - imps["exact"][k]).abs().max()
                      / imps["exact"][k].abs().max().clamp_min(1e-30)) for k in names)
    by_layer = []
    for layer in layers["exact"]:
        mine = [k for k in names if (k.rpartition(".")[0] or k) == layer]
        d = {k: flat(dec["means"][k], mine) for k in ("exact", "nocancel", "jacobian")}
        by_layer.append({"layer": layer, "kept": float(d["exact"].sum() / d["nocancel"].sum()),
                         "exact~nocancel": spearman(d["exact"], d["nocancel"]),
                         "nocancel~jacobian": spearman(d["nocancel"], d["jacobian"]),
                         "exact~jacobian": spearman(d["exact"], d["jacobian"])})
    whole = {k: flat(dec["means"][k], names) for k in ("exact", "nocancel", "jacobian")}
    by_layer.append({"layer": "all", "kept": float(whole["exact"].sum() / whole["nocancel"].sum()),
                     "exact~nocancel": spearman(whole["exact"], whole["nocancel"]),
                     "nocancel~jacobian": spearman(whole["nocancel"], whole["jacobian"]),
                     "exact~jacobian": spearman(whole["exact"], whole["jacobian"])})
    agree, kept, dom = (torch.tensor(dec[k]) for k in ("agree", "kept", "dominance"))
    order = torch.argsort(dom)
    thirds = []
    for part in order.tensor_split(3):
        thirds.append({"dominance": f"{float(dom[part].min()):.2f}-{float(dom[part].max()):.2f}",
                       "agree": float(agree[part].mean()), "kept": float(kept[part].mean())})
    return {
        "model": kind, "samples": n, "parameters": int(vec["exact"].numel()),
        "step_ms": step_ms, "ms": {m: min(v) for m, v in ms.items()},
        "layers": layers, "pairs": pairs, "by_layer": by_layer, "thirds": thirds,
        "per_sample": {"agree_mean": float(agree.mean()),
                       "agree~dominance": float(scipy.stats.spearmanr(agree, dom).statistic),
                       "agree~kept": float(scipy.stats.spearmanr(agree, kept).statistic),
                       "kept~dominance": float(scipy.stats.spearmanr(kept, dom).statistic)},
        "decompose_vs_exact": check,
        "zeros": {m: float((vec[m] == 0).double().mean()) for m in ESTIMATORS},
    }


# ----------------------------------------------------------------------------- part 2: the sweep

def variants(cfg: GradConfig) -> list[tuple[str, str, str, str]]:
    """``(learner, estimator, shape, form)`` of every swept variant: each estimator with the
    quadratic proximal penalty, then each other penalty on exact Omega."""
    out = [(ln, m, "quadratic", "proximal") for ln in LEARNERS for m in cfg.estimators]
    for ln in LEARNERS:
        for sf in cfg.forms:
            shape, form = sf.split("/")
            if ("exact" not in cfg.estimators or (shape, form) != ("quadratic", "proximal")):
                out.append((ln, "exact", shape, form))
    return out


def _config(cfg: GradConfig, stream: str, learner: str, method: str, shape: str, form: str,
            lam: float) -> Any:
    base = "rotated-digits" if stream == "rotated-digits" else "permuted-digits"
    sets = [f'experiment.learners=["{learner}"]', "run.plots=false", "run.checkpoint_every=0",
            "run.progress=false", "run.threads=1"]
    if stream != base:
        sets += [f'stream.name="{stream}"', f"stream.passes={float(cfg.mnist1d_passes)}"]
    else:
        sets.append(f"stream.passes={float(cfg.passes)}")
    if learner != "finetune":
        sets += [f"learner.{learner}.lam={lam!r}", f'learner.{learner}.penalty="{form}"',
                 f'learner.{learner}.shape="{shape}"', f'learner.{learner}.mas.method="{method}"',
                 f'learner.{learner}.mas.normalize="{cfg.normalize}"']
        if shape == "huber":
            sets.append(f"learner.{learner}.delta={cfg.delta!r}")
    return load_config(Path("configs") / f"{base}.toml", sets)


def _one(config: Any, unit: Unit) -> dict[str, Any]:
    """One unit through the runner; an error (a run that diverged) is returned, and kept on disk."""
    failed = unit.path / "failed.json"
    if failed.is_file():
        return json.loads(failed.read_text())
    try:
        return run_unit(config, unit, progress=False)
    except Exception as err:  # a diverged run is a result, not the end of the sweep
        out = {"error": f"{type(err).__name__}: {err}"}
        unit.path.mkdir(parents=True, exist_ok=True)
        failed.write_text(json.dumps(out))
        return out


def _done(unit: Unit) -> bool:
    return (unit.path / "summary.json").is_file() or (unit.path / "failed.json").is_file()


def run_jobs(jobs: Sequence[tuple[Any, Unit]], workers: int) -> list[dict[str, Any]]:
    """Every job in turn, or in ``workers`` spawned processes, with a progress bar."""
    with tqdm(total=len(jobs), unit="run", desc="gradient property", dynamic_ncols=True) as bar:
        if workers <= 1:
            out = []
            for config, unit in jobs:
                out.append(_one(config, unit))
                bar.update(1)
            return out
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = [pool.submit(_one, c, u) for c, u in jobs]
            for f in concurrent.futures.as_completed(futures):
                f.result()
                bar.update(1)
            return [f.result() for f in futures]


def _acc(r: dict[str, Any]) -> float:
    return 0.0 if "error" in r else 100.0 * float(r["average_accuracy"])


def _ms(r: dict[str, Any]) -> float | None:
    rate = None if "error" in r else r["timing"].get("steps_per_s")
    return 1e3 / rate if rate else None


def _mean_std(v: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0


def sweep(cfg: GradConfig, command: str = "") -> dict[str, dict[str, Any]]:
    """Part 2, one stream at a time (an interrupted sweep keeps whole streams): tune lam per variant
    on the tuning seeds, then run the reported seeds at the best lam. Returns, per stream, one row
    per variant and the settings it ran with."""
    out = Path(cfg.out)
    var = [*variants(cfg), ("finetune", "-", "-", "-")]
    result = {}
    for stream in cfg.streams:
        def unit(v: tuple[str, str, str, str], lam: float, seed: int,
                 stream: str = stream) -> tuple[Any, Unit]:
            name = f"{stream}/{v[0]}-{v[1]}-{v[2]}-{v[3]}-lam{lam:g}"
            return _config(cfg, stream, *v, lam), Unit(v[0], seed, out / name / f"seed{seed}")

        start = time.perf_counter()
        tune = [(v, lam, seed) for v in var[:-1] for lam in cfg.lams for seed in cfg.tune_seeds]
        print(f"{stream}: tuning, {len(tune)} runs", flush=True)
        jobs = [unit(*k) for k in tune]
        cached = sum(_done(u) for _, u in jobs)
        tuned = run_jobs(jobs, cfg.workers)
        curves: dict[tuple[str, str, str, str], dict[float, list[float]]] = {}
        for (v, lam, _), r in zip(tune, tuned, strict=True):
            curves.setdefault(v, {}).setdefault(lam, []).append(_acc(r))
        mean = {v: {lam: statistics.fmean(a) for lam, a in c.items()} for v, c in curves.items()}
        best = {v: max(m, key=m.__getitem__) for v, m in mean.items()}
        report = [(v, best.get(v, 0.0), seed) for v in var for seed in cfg.seeds]
        print(f"{stream}: reporting, {len(report)} runs", flush=True)
        jobs = [unit(*k) for k in report]
        cached += sum(_done(u) for _, u in jobs)
        reported = run_jobs(jobs, cfg.workers)
        rows = []
        for v in var:
            runs = [r for (v2, _, _), r in zip(report, reported, strict=True) if v2 == v]
            ok = [r for r in runs if "error" not in r]
            acc, acc_sd = _mean_std([_acc(r) for r in runs])
            row: dict[str, Any] = {"learner": v[0], "estimator": v[1], "shape": v[2], "form": v[3],
                                   "acc": acc, "acc_std": acc_sd, "errors": len(runs) - len(ok),
                                   "per_seed": [_acc(r) for r in runs]}
            if ok:
                row["forgetting"], row["forgetting_std"] = _mean_std(
                    [100.0 * float(r["forgetting"]) for r in ok])
                row["ms"] = statistics.fmean(m for m in map(_ms, ok) if m is not None)
                row["skipped"] = sum(int(r.get("n_skipped") or 0) > 0 for r in ok)
            if v in mean:
                top = max(mean[v].values())
                row.update(lam=best[v], tune={f"{lam:g}": mean[v][lam] for lam in cfg.lams},
                           within=[lam for lam in cfg.lams if mean[v][lam] >= top - 2.0], tune_best=top)
            rows.append(row)
        done = [r for r in [*tuned, *reported] if "error" not in r]
        result[stream] = {
            "rows": rows, "runs": len(tune) + len(report), "read": cached,
            "seconds": time.perf_counter() - start,
            "train_seconds": sum(float(r["timing"]["wall_time_s"]) for r in done),
            "settings": {"command": command, "lams": list(cfg.lams), "seeds": list(cfg.seeds),
                         "tune_seeds": list(cfg.tune_seeds), "delta": cfg.delta, "normalize": cfg.normalize,
                         "workers": cfg.workers,
                         "passes": cfg.mnist1d_passes if "mnist1d" in stream else cfg.passes}}
    return result


# ----------------------------------------------------------------------------- tables

def _f(v: float | None, dec: int = 2) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{dec}f}"


def agreement_lines(parts: list[dict[str, Any]]) -> list[str]:
    lines = []
    for a in parts:
        layers = list(a["layers"]["exact"])
        lines += [f"### {a['model'].upper()} ({a['parameters']} parameters, {a['samples']} samples of "
                  "segment 0)", "",
                  "| estimators | Spearman | top 1% overlap | top 10% overlap | scale ratio per layer "
                  "(min .. max) |", "|---|---|---|---|---|"]
        for p in a["pairs"]:
            lines.append(f"| {p['a']} / {p['b']} | {p['spearman']:.3f} | {p['top1']:.2f} | "
                         f"{p['top10']:.2f} | {p['ratio_min']:.3g} .. {p['ratio_max']:.3g} |")
        lines += ["", f"Cost: the fastest of 10 rounds, each a training step ({a['step_ms']:.2f} ms) "
                  "then every estimator, on one batch of 32.", "",
                  "| estimator | ms per batch of 32 | x a training step | "
                  + " | ".join(f"mean Omega, layer {ly}" for ly in layers) + " |",
                  "|" + "---|" * (3 + len(layers))]
        for m, ms in a["ms"].items():
            lines.append(f"| {m} | {ms:.2f} | {ms / a['step_ms']:.1f} | "
                         + " | ".join(f"{a['layers'][m][ly]:.3g}" for ly in layers) + " |")
        lines += ["", "Why `exact` and `jacobian` differ, from the per-sample Jacobian (`kept`: share "
                  "of `nocancel` left after the sign cancellation in `exact`):", "",
                  "| layer | kept | Spearman exact / nocancel (cancellation) | Spearman nocancel / "
                  "jacobian (weighting by \\|f_k\\|) | Spearman exact / jacobian |", "|---|---|---|---|---|"]
        for r in a["by_layer"]:
            lines.append(f"| {r['layer']} | {r['kept']:.2f} | {r['exact~nocancel']:.3f} | "
                         f"{r['nocancel~jacobian']:.3f} | {r['exact~jacobian']:.3f} |")
        ps = a["per_sample"]
        lines += ["", "Per sample (samples in thirds by the share of the largest output in "
                  "\\|\\|f\\|\\|^2):", "",
                  "| largest share | Spearman exact_n / jacobian_n (mean) | kept (mean) |", "|---|---|---|"]
        for t in a["thirds"]:
            lines.append(f"| {t['dominance']} | {t['agree']:.3f} | {t['kept']:.2f} |")
        lines += ["", f"Across samples, Spearman of the per-sample agreement with `kept`: "
                  f"{ps['agree~kept']:.2f}, with the largest share: {ps['agree~dominance']:.2f}; of "
                  f"`kept` with the largest share: {ps['kept~dominance']:.2f}. Shares of parameters "
                  f"that are zero for every estimator: {a['zeros']['exact']:.3f} (left out of every "
                  f"Spearman). The decomposition's `exact` matches the library's to "
                  f"{a['decompose_vs_exact']:.1e} (relative).", ""]
    return lines


def sweep_lines(streams: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for stream, got in streams.items():
        st = got["settings"]
        lams = st["lams"]
        lines += [f"### {stream}", "",
                  f"{st['passes']:g} passes per segment; lam from {lams} chosen per variant on seed(s) "
                  f"{st['tune_seeds']}, reported on seeds {st['seeds']} (mean ± std); Huber delta "
                  f"{st['delta']:g}; {got['runs']} runs, {got['train_seconds']:.0f} s of training in all "
                  f"({got['runs'] - got.get('read', 0)} run by this call in {got['seconds']:.0f} s wall on "
                  f"{st['workers']} worker(s), {got.get('read', 0)} read from earlier calls): "
                  f"`{st['command']}`.", "",
                  "| learner | Omega | penalty | lam | ACC % | forgetting % | ms / step | lam within 2 "
                  "pts of best (tuning) | runs with skipped batches |", "|" + "---|" * 9]
        for r in got["rows"]:
            within = r.get("within")
            rng = "-" if within is None else f"{min(within):g} .. {max(within):g} ({len(within)} of " \
                f"{len(lams)})"
            pen = "-" if r["shape"] == "-" else f"{r['shape']} {r['form']}"
            acc = f"{r['acc']:.1f} ± {r['acc_std']:.1f}"
            fg = f"{r['forgetting']:.1f} ± {r['forgetting_std']:.1f}" if "forgetting" in r else "n/a"
            errors = f" ({r['errors']} failed)" if r["errors"] else ""
            lam = "-" if "lam" not in r else f"{r['lam']:g}"
            lines.append(f"| {r['learner']} | {r['estimator']} | {pen} | {lam} | {acc}{errors} | {fg} | "
                         f"{_f(r.get('ms'))} | {rng} | {r.get('skipped', 0)} |")
        lines += ["", "Tuning curve (ACC % on the tuning seeds, per lam):", "",
                  "| learner | Omega | penalty | " + " | ".join(f"lam={lam:g}" for lam in lams) + " |",
                  "|" + "---|" * (3 + len(lams))]
        for r in got["rows"]:
            if "tune" in r:
                lines.append(f"| {r['learner']} | {r['estimator']} | {r['shape']} {r['form']} | "
                             + " | ".join(f"{r['tune'][f'{lam:g}']:.1f}" for lam in lams) + " |")
        lines.append("")
    return lines


def write(cfg: GradConfig, data: dict[str, Any]) -> str:
    lines = ["# The gradient property: importance estimators and penalty shapes", "",
             "Written by `python scripts/gradient_property.py` (each part below names the call that wrote "
             f"it); torch {torch.__version__}, Python {platform.python_version()}, "
             f"{os.cpu_count()} cores shared with other jobs, 1 torch thread: times are only comparable "
             "within a table.", ""]
    if "agreement" in data:
        lines += ["## 1. The estimators on the same samples", "",
                  "Digits models trained on segment 0 of permuted digits (seed "
                  f"{data['agreement']['seed']}); importance averaged over one pass of that segment "
                  "(batches of 32; `batch` is the absolute gradient of each batch's mean squared norm). "
                  "Scale ratio: mean importance of the first estimator over the second's, per layer. "
                  f"`{data['agreement'].get('command', '')}`", "",
                  *agreement_lines(data["agreement"]["models"])]
    if "sweep" in data:
        lines += ["## 2. Forgetting with each estimator and each penalty", "",
                  "The runner's `online-mas` (task-free, default detector) and `mas-oracle` (the true "
                  "boundaries), SGD lr 0.05 momentum 0.9, batch 32, MLP 64-100-100-10, 5 segments. "
                  "Omega normalised per segment to mean 1 (`mas.normalize = \"mean\"`), so one lam grid "
                  "fits every estimator. A run that failed counts as ACC 0; `runs with skipped batches`: "
                  "runs whose loss went non-finite (diverged) at some step. ms / step comes from runs "
                  "made while the machine's load changed (rerun or added runs were often on a quieter "
                  "machine); part 1's costs per batch are the fair comparison.", "",
                  *sweep_lines(data["sweep"])]
    text = "\n".join(lines)
    Path(cfg.results).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.results + ".md").write_text(text)
    Path(cfg.results + ".json").write_text(json.dumps(data, indent=1, default=str))
    return text


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = GradConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("agreement", "sweep", "all"), default=cfg.part)
    p.add_argument("--models", nargs="+", choices=("mlp", "cnn"), default=list(cfg.models))
    p.add_argument("--streams", nargs="+", default=list(cfg.streams))
    p.add_argument("--seeds", nargs="+", type=int, default=list(cfg.seeds))
    p.add_argument("--tune-seeds", nargs="+", type=int, default=list(cfg.tune_seeds))
    p.add_argument("--lams", nargs="+", type=float, default=list(cfg.lams))
    p.add_argument("--estimators", nargs="+", choices=ESTIMATORS, default=list(cfg.estimators))
    p.add_argument("--forms", nargs="+", choices=FORMS, default=list(cfg.forms))
    p.add_argument("--delta", type=float, default=cfg.delta)
    p.add_argument("--passes", type=float, default=cfg.passes)
    p.add_argument("--mnist1d-passes", type=float, default=cfg.mnist1d_passes)
    p.add_argument("--workers", type=int, default=cfg.workers)
    p.add_argument("--out", default=cfg.out)
    p.add_argument("--results", default=cfg.results)
    a = p.parse_args(argv)
    cfg = dataclasses.replace(
        cfg, part=a.part, models=tuple(a.models), streams=tuple(a.streams), seeds=tuple(a.seeds),
        tune_seeds=tuple(a.tune_seeds), lams=tuple(a.lams), estimators=tuple(a.estimators),
        forms=tuple(a.forms), delta=a.delta, passes=a.passes, mnist1d_passes=a.mnist1d_passes,
        workers=a.workers, out=a.out, results=a.results)
    torch.set_num_threads(1)
    old = Path(cfg.results + ".json")
    data: dict[str, Any] = {}
    if cfg.part != "all" and old.is_file():  # keep the other part (and the other streams) of an earlier call
        data = {k: v for k, v in json.loads(old.read_text()).items() if k in ("agreement", "sweep")}
    command = " ".join(["python scripts/gradient_property.py", *(sys.argv[1:] if argv is None else argv)])
    start = time.perf_counter()
    if cfg.part in ("agreement", "all"):
        data["agreement"] = {"seed": cfg.agreement_seed, "command": command,
                             "models": [agreement(cfg, kind) for kind in cfg.models]}
    if cfg.part in ("sweep", "all"):
        merged = {**data.get("sweep", {}), **sweep(cfg, command)}
        known = [s for s in GradConfig.streams if s in merged]
        data["sweep"] = {s: merged[s] for s in [*known, *sorted(set(merged) - set(known))]}
    data["seconds"] = time.perf_counter() - start
    text = write(cfg, data)
    print(text)
    print(f"took {data['seconds']:.0f} s; wrote {cfg.results}.md and {cfg.results}.json")
    return data


if __name__ == "__main__":
    main()
