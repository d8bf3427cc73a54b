"""Experiments of kind ``"adapt"``: unlabeled test-time adaptation, methods compared per seed.

Per seed: a small BatchNorm CNN is trained on the clean train split (:func:`train_source`), then
every method of ``[adapt]`` adapts a copy of it on the unlabeled ``[stream]``
(:func:`adapt_stream`, with :class:`online_mas.Adapter`, in the shared loop of
:mod:`online_mas.experiment.loop`). The adaptation sees inputs only;
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
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from online_mas.adapt import AdaptConfig, Adapter, AdaptStep, configure_model, norm_statistics
from online_mas.experiment.config import AdaptSection, ExperimentConfig
from online_mas.experiment.loop import run_loop
from online_mas.experiment.registry import adapt_detector, adapt_mas_config, build_mas, parse_method
from online_mas.experiment.rundir import write_text
from streams import Stream, StreamConfig, build_stream, digits_source

__all__ = ["accuracy", "adapt_stream", "adapt_table", "build_bn_cnn", "run_adapt", "train_source"]

_LOG_EVERY = 100  # steps between the metrics.jsonl lines of an adaptation


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
            mas_config = adapt_mas_config(share=settings.mas_share, stable_samples=settings.stable_samples)
            mas = build_mas(model, settings.lam, mas_config,
                            detector=adapt_detector(settings.detector, period=settings.period))
            e_max = settings.e_max if method == "tent+mas" else None
            adapter = Adapter(model, opt, mas=mas, config=AdaptConfig(
                e_max=e_max, reset=settings.reset, penalty=settings.penalty))
            g = torch.Generator().manual_seed(seed)
            perm = torch.randperm(len(x_src), generator=g)[: settings.calibrate_batches * batch_size]
            adapter.calibrate(x_src[perm].split(batch_size))  # unlabeled clean digits

    order, lengths = stream.schedule.order, stream.schedule.lengths
    ends = [sum(lengths[: i + 1]) // batch_size for i in range(len(order))]
    run = _Adaptation(spec, seed, model, adapter, norm=norm, twin=twin, evals=evals, order=order,
                      ends=ends, batch_size=batch_size, log=log)
    run_loop(run, enumerate(stream), total=len(stream), log_every=_LOG_EVERY, eval_at=frozenset(ends),
             progress=progress, desc=f"{spec} seed {seed}", leave=False)
    per_occurrence = run.per_occurrence
    shifted = [o for o in per_occurrence if o["segment"] != 0] or per_occurrence  # corrupted ones
    return {
        "method": spec,
        "seed": seed,
        "clean_source": clean_before,
        "clean_end": accuracy(model, *evals[0], norm, batch_size),
        "online_shifted": _mean([o["online"] for o in shifted]),
        "heldout_shifted": _mean([o["heldout"] for o in shifted]),
        "online_all": 100.0 * sum(run.hits) / max(1, sum(run.seen)),
        "occurrences": per_occurrence,
        "resets": len(adapter.resets) if adapter is not None else 0,
        "consolidations": len(adapter.mas.events) - 1 if adapter is not None and adapter.mas else 0,
        "steps": len(stream),
    }


class _Adaptation:
    """One method on one seed's stream, as the :class:`~online_mas.experiment.loop.Step` of the loop.

    ``step`` predicts (and adapts, with an adapter) and scores against the hidden labels;
    ``evaluate`` at the end of an occurrence measures held-out accuracy; ``log`` writes the
    ``metrics.jsonl`` lines; ``end_step`` moves on to the next occurrence.
    """

    def __init__(self, spec: str, seed: int, model: nn.Module, adapter: Adapter | None, *,
                 norm: str, twin: Stream, evals: list[tuple[Tensor, Tensor]], order: Sequence[int],
                 ends: list[int], batch_size: int, log: IO[str] | None) -> None:
        self.spec, self.seed, self.model, self.adapter = spec, seed, model, adapter
        self.norm, self.twin, self.evals, self.order, self.ends = norm, twin, evals, order, ends
        self.batch_size, self.out = batch_size, log
        self.occ = 0  # the occurrence (segment visit) being streamed
        self.hits = [0] * len(order)  # correct online predictions per occurrence
        self.seen = [0] * len(order)
        self.per_occurrence: list[dict[str, float]] = []
        self._last: AdaptStep | None = None

    def step(self, i: int, x: Tensor) -> dict[str, object]:
        y = self.twin.batch(i)[1]
        extras: dict[str, object] = {}
        if self.adapter is None:
            with torch.no_grad(), norm_statistics(self.model, self.norm):
                pred = self.model(x).argmax(1)
        else:
            self._last = s = self.adapter.step(x)
            pred = s.predictions
            if s.reset or s.event is not None:
                extras["adapter"] = True  # a reset or consolidation: log this step
        self.hits[self.occ] += int((pred == y).sum())
        self.seen[self.occ] += len(y)
        return extras

    def evaluate(self, done: int, at_segment_end: bool) -> dict[str, object]:
        if self.occ >= len(self.ends) or done != self.ends[self.occ]:
            return {}
        k, model, b = self.order[self.occ], self.model, self.batch_size
        self.per_occurrence.append({
            "segment": k,
            "online": self._online(),
            "heldout": accuracy(model, *self.evals[k], self.norm, b),
            "clean": accuracy(model, *self.evals[0], self.norm, b),
        })
        return {"end_of_occurrence": self.per_occurrence[-1]}

    def log(self, i: int, extras: dict[str, object]) -> dict[str, object]:
        if self.out is None:
            return {}
        head = {"method": self.spec, "seed": self.seed, "t": i + 1, "occurrence": self.occ}
        if extras.get("adapter") or (i + 1) % _LOG_EVERY == 0:
            record = self._last.to_dict() if self._last is not None else {}
            self.out.write(json.dumps({**head, "online": self._online(), **record}) + "\n")
        if "end_of_occurrence" in extras:
            self.out.write(json.dumps({**head, "end_of_occurrence": extras["end_of_occurrence"]}) + "\n")
        return {}

    def end_step(self, done: int) -> None:
        if self.occ < len(self.ends) and done == self.ends[self.occ]:
            self.occ += 1

    def _online(self) -> float:
        return 100.0 * self.hits[self.occ] / self.seen[self.occ]


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
