"""Test-time adaptation on a long, unlabeled stream of corrupted digits, protected by online MAS.

A small CNN with BatchNorm is trained on clean digits (the train split). It is then deployed on
``corrupted-digits``: corruption severity rising from clean to the worst and back to clean
(``order="return"``), every segment ``--passes`` passes over the training pool, inputs only.
Methods (``name@lr`` overrides ``--lr``):

- ``source``: no adaptation (eval mode, the source model's BatchNorm statistics);
- ``bn-stats``: no update, BatchNorm normalising with each batch's statistics (what Tent's forward
  pass alone does);
- ``tent``: entropy minimisation of the ``--params`` parameters with batch statistics (Tent);
- ``tent+reset``: the same, reset to the source model when the collapse rule fires;
- ``filter``: entropy minimisation over confident samples only (EATA's filter, no penalty);
- ``tent+mas``: entropy minimisation over confident samples with the online MAS penalty anchored at
  the source model (Omega first estimated on unlabeled clean digits, then kept up to date on the
  stream; ``--detector`` may consolidate and move the anchor) and reset-to-anchor on collapse;
- ``tent+mas-nofilter``: the same without the confident filter.

The adaptation loop sees inputs only. The script alone reads the hidden labels, from a labeled twin
of the stream (same seed, same batches), to score: online accuracy on the current shift (the
predictions each step makes before its update), held-out accuracy of the current segment at the end
of every occurrence, and held-out clean accuracy at the end of the stream.

Run::

    python scripts/adapt_digits.py                       # 3 seeds, the README's table (~10 min)
    python scripts/adapt_digits.py --seeds 0 --passes 2  # a quick look
    python scripts/adapt_digits.py --methods source tent tent+mas@0.05 --detector page-hinkley

Writes ``results.json``, ``table.md`` and ``steps-<method>-<seed>.jsonl`` to ``--out`` and prints
the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
import online_mas as om
from online_mas.adapt import AdaptConfig, Adapter, configure_model, norm_statistics
from streams import digits_source, make_stream

METHODS = ("source", "bn-stats", "tent", "tent+reset", "filter", "tent+mas", "tent+mas-nofilter")


@dataclass
class Config:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # one source model and stream each
    methods: list[str] = field(default_factory=lambda: [  # see the module docstring; name@lr
        "source", "bn-stats", "tent", "tent@0.05", "tent+reset@0.05", "tent+mas", "tent+mas@0.05"])
    corruption: str = "noise"  # corrupted-digits kind: noise, blur, contrast
    max_severity: float = 5.0  # severities 0 .. max_severity in n_segments steps, then back to 0
    n_segments: int = 6  # distinct severities
    passes: float = 10.0  # passes over the training pool per occurrence (stream length)
    batch_size: int = 32  # stream batch size (Tent's batch statistics use it)
    train_epochs: int = 40  # source model training on clean digits
    train_lr: float = 3e-3  # Adam learning rate of the source model
    params: str = "all"  # adapted parameters: "all" or "norm" (BatchNorm affine only, Tent)
    lr: float = 1e-2  # SGD learning rate of the adaptation
    momentum: float = 0.9  # SGD momentum of the adaptation
    e_max: float = 0.4  # tent+mas: confident filter, entropy < e_max * ln(10)
    lam: float = 1.0  # tent+mas: MAS penalty strength
    penalty: str = "proximal"  # tent+mas: how the penalty enters (AdaptConfig.penalty)
    mas_every: int = 4  # tent+mas: estimate importance (and feed the detector) every k-th step
    detector: str = "page-hinkley"  # tent+mas consolidation: page-hinkley, periodic, none
    period: int = 500  # detector="periodic": steps between consolidations
    reset: bool = True  # tent+mas: reset to the anchor on collapse
    out: str = "runs/adapt-digits"  # run directory

    def __post_init__(self) -> None:
        if self.detector not in ("page-hinkley", "periodic", "none"):
            raise ValueError(f"detector must be page-hinkley, periodic or none, got {self.detector!r}")
        bad = [m for m in self.methods if m.partition("@")[0] not in METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; allowed: {METHODS}, optionally as name@lr")


def build_model() -> nn.Module:
    """A small CNN for 1x8x8 digits with BatchNorm after every convolution."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def train_source(cfg: Config, seed: int) -> tuple[nn.Module, Tensor, Tensor]:
    """Train on the clean train split; return the model and the clean train inputs and labels."""
    torch.manual_seed(seed)
    src = digits_source()
    x, y = src.train.fetch(torch.arange(len(src.train))), src.train.y
    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train_lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(cfg.train_epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, x, y


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, norm: str, batch_size: int) -> float:
    """Held-out accuracy in batches of about the stream's size (batch statistics depend on it).

    The set is cut into ``len // batch_size`` near-equal batches, so no small remainder batch gets
    poor statistics.
    """
    correct = 0
    k = max(1, len(y) // batch_size)
    with norm_statistics(model, norm):
        for xb, yb in zip(x.tensor_split(k), y.tensor_split(k), strict=True):
            correct += int((model(xb).argmax(1) == yb).sum())
    return 100.0 * correct / len(y)


def run(cfg: Config, spec: str, seed: int, source: nn.Module, x_src: Tensor,
        out: Path) -> dict[str, Any]:
    method, _, lr_text = spec.partition("@")
    lr = float(lr_text) if lr_text else cfg.lr
    if method not in METHODS:
        raise ValueError(f"unknown method {spec!r}; allowed: {METHODS}, optionally with @lr")
    torch.manual_seed(seed)
    model = copy.deepcopy(source)
    opts: dict[str, Any] = dict(
        seed=seed, batch_size=cfg.batch_size, n_segments=cfg.n_segments, passes=cfg.passes,
        order="return", corruption=cfg.corruption, max_severity=cfg.max_severity)
    stream = make_stream("corrupted-digits", labels=False, **opts)  # what the adapter sees
    twin = make_stream("corrupted-digits", labels=True, **opts)  # the script's hidden labels
    evals = list(stream.eval_sets)
    norm = "running" if method == "source" else "batch"  # bn-stats: batch statistics, no update
    clean_before = accuracy(model, *evals[0], "running", cfg.batch_size)

    adapter: Adapter | None = None
    if method not in ("source", "bn-stats"):
        params = configure_model(model, cfg.params)
        opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum)
        if method in ("tent", "tent+reset", "filter"):
            adapter = Adapter(model, opt, config=AdaptConfig(
                e_max=cfg.e_max if method == "filter" else None, reset=method == "tent+reset"))
        elif method in ("tent+mas", "tent+mas-nofilter"):
            detector: object | None = None
            if cfg.detector == "page-hinkley":
                detector = om.default_detector()
            elif cfg.detector == "periodic":
                detector = om.Periodic(every=cfg.period)
            mas = om.OnlineMAS(model, lam=cfg.lam, detector=detector, config=om.MASConfig(
                anchor="stable", stable_every=25, every=cfg.mas_every))
            e_max = cfg.e_max if method == "tent+mas" else None
            adapter = Adapter(model, opt, mas=mas, config=AdaptConfig(
                e_max=e_max, reset=cfg.reset, penalty=cfg.penalty))
            g = torch.Generator().manual_seed(seed)
            perm = torch.randperm(len(x_src), generator=g)[: 20 * cfg.batch_size]
            adapter.calibrate(x_src[perm].split(cfg.batch_size))  # unlabeled clean digits

    order, lengths = stream.schedule.order, stream.schedule.lengths
    ends = [sum(lengths[: i + 1]) // cfg.batch_size for i in range(len(order))]
    occ = 0
    hits = [0] * len(order)
    seen = [0] * len(order)
    per_occurrence: list[dict[str, float]] = []
    log = (out / f"steps-{spec}-{seed}.jsonl").open("w")
    for t, x in enumerate(tqdm(stream, desc=f"{spec} seed {seed}", leave=False, mininterval=2)):
        y = twin.batch(t)[1]
        if adapter is None:
            with torch.no_grad(), norm_statistics(model, norm):
                pred = model(x).argmax(1)
        else:
            s = adapter.step(x)
            pred = s.predictions
            if s.reset or s.event is not None or (t + 1) % 100 == 0:
                log.write(json.dumps({"t": t + 1, **s.to_dict()}) + "\n")
        hits[occ] += int((pred == y).sum())
        seen[occ] += len(y)
        if t + 1 == ends[occ]:
            k = order[occ]
            per_occurrence.append({
                "segment": k,
                "online": 100.0 * hits[occ] / seen[occ],
                "heldout": accuracy(model, *evals[k], norm, cfg.batch_size),
                "clean": accuracy(model, *evals[0], norm, cfg.batch_size),
            })
            occ += 1
    log.close()
    shifted = [o for o in per_occurrence[1:-1]]  # the corrupted occurrences
    return {
        "method": spec,
        "seed": seed,
        "clean_source": clean_before,
        "clean_end": accuracy(model, *evals[0], norm, cfg.batch_size),
        "online_shifted": sum(o["online"] for o in shifted) / len(shifted),
        "heldout_shifted": sum(o["heldout"] for o in shifted) / len(shifted),
        "online_all": 100.0 * sum(hits) / sum(seen),
        "occurrences": per_occurrence,
        "resets": len(adapter.resets) if adapter is not None else 0,
        "consolidations": len(adapter.mas.events) - 1 if adapter is not None and adapter.mas else 0,
        "steps": len(stream),
    }


def mean_std(values: list[float]) -> str:
    m = _mean(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}"


def table(cfg: Config, results: list[dict[str, Any]]) -> str:
    """Markdown: online accuracy per occurrence, summaries and clean accuracy at the end."""
    sev = [i * cfg.max_severity / (cfg.n_segments - 1) for i in range(cfg.n_segments)]
    occ = [f"{cfg.corruption} {s:g}" if s else "clean" for s in sev] + ["clean again"]
    head = ["method", *occ, "mean on corrupted (online)", "held-out corrupted",
            "clean at end (held-out)", "Δ clean vs source", "resets"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in cfg.methods:
        rs = [r for r in results if r["method"] == method]
        per_occ = [_mean([r["occurrences"][i]["online"] for r in rs])
                   for i in range(len(rs[0]["occurrences"]))]
        delta = [r["clean_end"] - r["clean_source"] for r in rs]
        row = [method, *[f"{v:.1f}" for v in per_occ],
               mean_std([r["online_shifted"] for r in rs]),
               mean_std([r["heldout_shifted"] for r in rs]),
               mean_std([r["clean_end"] for r in rs]), mean_std(delta),
               f"{_mean([r['resets'] for r in rs]):.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    src = [r["clean_source"] for r in results if r["method"] == cfg.methods[0]]
    lines += ["", f"Accuracy in %, mean ± std over seeds {cfg.seeds}; per-occurrence columns: "
              f"online accuracy of the predictions made on the stream (mean over seeds). Source "
              f"model clean held-out accuracy {mean_std(src)}. {results[0]['steps']} steps of "
              f"{cfg.batch_size} per stream; params={cfg.params}, lr={cfg.lr} (unless @lr), "
              f"lam={cfg.lam}, e_max={cfg.e_max}, detector={cfg.detector}."]
    return "\n".join(lines)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Config()
    for f in Config.__dataclass_fields__.values():
        value = getattr(defaults, f.name)
        if isinstance(value, list):
            parser.add_argument(f"--{f.name}", nargs="+", type=type(value[0]), default=value)
        elif isinstance(value, bool):
            parser.add_argument(f"--{f.name}", type=lambda s: s.lower() in ("1", "true", "yes"),
                                default=value)
        else:
            parser.add_argument(f"--{f.name}", type=type(value), default=value)
    cfg = Config(**vars(parser.parse_args()))
    torch.set_num_threads(1)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    results: list[dict[str, Any]] = []
    for seed in cfg.seeds:
        source, x_src, _ = train_source(cfg, seed)
        results += [run(cfg, m, seed, source, x_src, out) for m in cfg.methods]
    md = table(cfg, results)
    seconds = time.time() - start
    (out / "results.json").write_text(json.dumps(
        {"config": asdict(cfg), "seconds": seconds, "results": results}, indent=1))
    (out / "table.md").write_text(md + "\n")
    print(md)
    print(f"\n{seconds:.0f} s; results in {out}/")


if __name__ == "__main__":
    main()
