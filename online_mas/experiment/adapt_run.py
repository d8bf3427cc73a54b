"""Experiments of kind ``"adapt"``: unlabeled test-time adaptation, methods compared per seed.

Per seed: a small BatchNorm CNN is trained on the clean train split (:func:`train_source`), then
every method of ``[adapt]`` adapts a copy of it on the unlabeled ``[stream]``
(:func:`adapt_stream`, with :class:`online_mas.Adapter`). The adaptation loop sees inputs only;
the scoring reads the hidden labels from a labeled twin of the stream (same seed, same batches):
online accuracy per occurrence (the predictions each step makes before its update), held-out
accuracy of the occurrence's segment and of clean data after it, and clean accuracy at the end
against the source model's. ``scripts/adapt_digits.py`` runs the same functions.

Files written to the run directory (besides ``config.toml``)::

    summary.json   per method: per seed results and the mean over seeds
    metrics.jsonl  one line per 100 steps, reset or consolidation: method, seed, t, occurrence,
                   online accuracy of the occurrence so far, and the adapter's step record; and
                   one at the end of each occurrence (its online, held-out and clean accuracy)
    table.md       the printed table

No checkpoints: an adapt run cannot be resumed (it is short; rerun it).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from online_mas.adapt import AdaptConfig, Adapter, configure_model, norm_statistics
from online_mas.experiment.config import AdaptSection, ExperimentConfig
from online_mas.experiment.registry import adapt_detector, adapt_mas_config, build_mas, parse_method
from online_mas.experiment.rundir import write_text
from streams import StreamConfig, build_stream, digits_source

__all__ = ["accuracy", "adapt_stream", "adapt_table", "build_bn_cnn", "run_adapt", "train_source"]


def build_bn_cnn(in_channels: int = 1, n_classes: int = 10) -> nn.Module:
    """A small CNN with BatchNorm after every convolution (for 8x8 digits; any size works).

    Examples
    --------
    >>> build_bn_cnn()(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, n_classes),
    )


def train_source(settings: AdaptSection, seed: int, *,
                 test_fraction: float = 0.2) -> tuple[nn.Module, Tensor, Tensor]:
    """Train on the clean digits train split; return the model (eval mode), its inputs and labels."""
    torch.manual_seed(seed)
    src = digits_source(test_fraction=test_fraction)
    x, y = src.train.fetch(torch.arange(len(src.train))), src.train.y
    model = build_bn_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=settings.train_lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(settings.train_epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, x, y


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, norm: str, batch_size: int) -> float:
    """Held-out accuracy in %, in batches of about the stream's size (batch statistics depend on it).

    The set is cut into ``len // batch_size`` near-equal batches, so no small remainder batch gets
    poor statistics.
    """
    correct = 0
    k = max(1, len(y) // batch_size)
    with norm_statistics(model, norm):
        for xb, yb in zip(x.tensor_split(k), y.tensor_split(k), strict=True):
            correct += int((model(xb).argmax(1) == yb).sum())
    return 100.0 * correct / len(y)


def adapt_stream(spec: str, seed: int, source: nn.Module, x_src: Tensor, settings: AdaptSection,
                 stream_config: StreamConfig, *, log: IO[str] | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Adapt a copy of ``source`` with method ``spec`` (``name`` or ``name@lr``) on the stream.

    ``stream_config`` is used with ``seed`` (and ``labels=False`` for what the adapter sees).
    Every 100 steps, at each reset or consolidation and at the end of each occurrence, a JSON
    line goes to ``log``.

    Returns
    -------
    dict
        ``method``, ``seed``, ``clean_source`` and ``clean_end`` (held-out clean accuracy before
        and after), ``online_shifted`` / ``heldout_shifted`` (mean over the occurrences of
        corrupted segments), ``online_all``, ``occurrences`` (per occurrence: segment, online,
        heldout, clean), ``resets``, ``consolidations`` and ``steps``. Accuracies in %.
    """
    method, lr_at = parse_method(spec)
    lr = settings.lr if lr_at is None else lr_at
    batch_size = stream_config.batch_size
    torch.manual_seed(seed)
    model = copy.deepcopy(source)
    stream = build_stream(dataclasses.replace(stream_config, seed=seed, labels=False))
    twin = build_stream(dataclasses.replace(stream_config, seed=seed, labels=True))  # hidden labels
    evals = list(stream.eval_sets)
    norm = "running" if method == "source" else "batch"  # bn-stats: batch statistics, no update
    clean_before = accuracy(model, *evals[0], "running", batch_size)

    adapter: Adapter | None = None
    if method not in ("source", "bn-stats"):
        params = configure_model(model, settings.params)
        opt = torch.optim.SGD(params, lr=lr, momentum=settings.momentum)
        if method in ("tent", "tent+reset", "filter"):
            adapter = Adapter(model, opt, config=AdaptConfig(
                e_max=settings.e_max if method == "filter" else None, reset=method == "tent+reset"))
        else:  # tent+mas, tent+mas-nofilter
            mas = build_mas(model, settings.lam,
                            adapt_mas_config(every=settings.mas_every, stable_every=settings.stable_every),
                            detector=adapt_detector(settings.detector, period=settings.period))
            e_max = settings.e_max if method == "tent+mas" else None
            adapter = Adapter(model, opt, mas=mas, config=AdaptConfig(
                e_max=e_max, reset=settings.reset, penalty=settings.penalty))
            g = torch.Generator().manual_seed(seed)
            perm = torch.randperm(len(x_src), generator=g)[: settings.calibrate_batches * batch_size]
            adapter.calibrate(x_src[perm].split(batch_size))  # unlabeled clean digits

    order, lengths = stream.schedule.order, stream.schedule.lengths
    ends = [sum(lengths[: i + 1]) // batch_size for i in range(len(order))]
    occ = 0
    hits = [0] * len(order)
    seen = [0] * len(order)
    per_occurrence: list[dict[str, float]] = []
    bar = tqdm(stream, desc=f"{spec} seed {seed}", leave=False, mininterval=2, disable=not progress)
    for t, x in enumerate(bar):
        y = twin.batch(t)[1]
        if adapter is None:
            with torch.no_grad(), norm_statistics(model, norm):
                pred = model(x).argmax(1)
            record: dict[str, Any] | None = {} if (t + 1) % 100 == 0 else None
        else:
            s = adapter.step(x)
            pred = s.predictions
            due = s.reset or s.event is not None or (t + 1) % 100 == 0
            record = s.to_dict() if due else None
        hits[occ] += int((pred == y).sum())
        seen[occ] += len(y)
        if record is not None and log is not None:
            log.write(json.dumps({"method": spec, "seed": seed, "t": t + 1, "occurrence": occ,
                                  "online": 100.0 * hits[occ] / seen[occ], **record}) + "\n")
        if occ < len(ends) and t + 1 == ends[occ]:
            k = order[occ]
            per_occurrence.append({
                "segment": k,
                "online": 100.0 * hits[occ] / seen[occ],
                "heldout": accuracy(model, *evals[k], norm, batch_size),
                "clean": accuracy(model, *evals[0], norm, batch_size),
            })
            if log is not None:
                log.write(json.dumps({"method": spec, "seed": seed, "t": t + 1, "occurrence": occ,
                                      "end_of_occurrence": per_occurrence[-1]}) + "\n")
            occ += 1
    shifted = [o for o in per_occurrence if o["segment"] != 0] or per_occurrence  # corrupted ones
    return {
        "method": spec,
        "seed": seed,
        "clean_source": clean_before,
        "clean_end": accuracy(model, *evals[0], norm, batch_size),
        "online_shifted": _mean([o["online"] for o in shifted]),
        "heldout_shifted": _mean([o["heldout"] for o in shifted]),
        "online_all": 100.0 * sum(hits) / max(1, sum(seen)),
        "occurrences": per_occurrence,
        "resets": len(adapter.resets) if adapter is not None else 0,
        "consolidations": len(adapter.mas.events) - 1 if adapter is not None and adapter.mas else 0,
        "steps": len(stream),
    }


def adapt_table(results: list[dict[str, Any]], methods: tuple[str, ...] | list[str],
                stream_config: StreamConfig) -> str:
    """Markdown: online accuracy per occurrence (mean over seeds), summaries, clean at the end."""
    n_seg = stream_config.segment_count()
    sev = [i * stream_config.max_severity / max(1, n_seg - 1) for i in range(n_seg)]
    first = next(r for r in results if r["method"] == methods[0])
    occ = [f"{stream_config.corruption} {sev[o['segment']]:g}" if o["segment"] else "clean"
           for o in first["occurrences"]]
    head = ["method", *occ, "mean on corrupted (online)", "held-out corrupted",
            "clean at end (held-out)", "Δ clean vs source", "resets", "consolidations"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        rs = [r for r in results if r["method"] == method]
        per_occ = [_mean([r["occurrences"][i]["online"] for r in rs])
                   for i in range(len(rs[0]["occurrences"]))]
        row = [method, *[f"{v:.1f}" for v in per_occ],
               _mean_std([r["online_shifted"] for r in rs]),
               _mean_std([r["heldout_shifted"] for r in rs]),
               _mean_std([r["clean_end"] for r in rs]),
               _mean_std([r["clean_end"] - r["clean_source"] for r in rs]),
               f"{_mean([r['resets'] for r in rs]):.1f}",
               f"{_mean([r['consolidations'] for r in rs]):.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def run_adapt(config: ExperimentConfig, run_dir: str | Path, *,
              progress: bool | None = None) -> dict[str, Any]:
    """Run an experiment of kind ``"adapt"`` in ``run_dir`` (its ``config.toml`` exists already).

    Writes ``summary.json``, ``metrics.jsonl`` and ``table.md``; returns the summary, whose
    ``"table"`` entry is the markdown table.
    """
    if config.experiment.kind != "adapt":
        raise ValueError(f"run_adapt needs experiment.kind = 'adapt', got {config.experiment.kind!r}")
    show = config.run.progress if progress is None else progress
    path = Path(run_dir)
    settings, stream_config = config.adapt, config.stream
    threads = torch.get_num_threads()
    torch.set_num_threads(config.run.threads)
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    try:
        with (path / "metrics.jsonl").open("w", encoding="utf-8") as log:
            for seed in config.experiment.seeds:
                source, x_src, _ = train_source(settings, seed,
                                                test_fraction=stream_config.test_fraction)
                results += [adapt_stream(spec, seed, source, x_src, settings, stream_config,
                                         log=log, progress=show) for spec in settings.methods]
    finally:
        torch.set_num_threads(threads)
    table = adapt_table(results, settings.methods, stream_config)
    methods: dict[str, Any] = {}
    for spec in settings.methods:
        rs = [r for r in results if r["method"] == spec]
        keys = ("online_shifted", "heldout_shifted", "online_all", "clean_source", "clean_end",
                "resets", "consolidations")
        mean: dict[str, Any] = {k: _mean([r[k] for r in rs]) for k in keys}
        mean["clean_change"] = mean["clean_end"] - mean["clean_source"]
        mean["online_per_occurrence"] = [_mean([r["occurrences"][i]["online"] for r in rs])
                                         for i in range(len(rs[0]["occurrences"]))]
        methods[spec] = {"mean": mean, "seeds": rs}
    summary = {"kind": "adapt", "name": config.experiment.name,
               "seeds": list(config.experiment.seeds), "methods": methods,
               "seconds": time.perf_counter() - start, "table": table}
    write_text(path / "summary.json", json.dumps(summary, indent=1) + "\n")
    write_text(path / "table.md", table + "\n")
    return summary


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _mean_std(values: list[float]) -> str:
    m = _mean(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}"
