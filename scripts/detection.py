"""Task-free detection at any batch size: the default detector on digits, mnist1d and river streams.

Run from the repository root::

    python scripts/detection.py                               # everything, seed 0 (about 30 min, 1 core)
    python scripts/detection.py --batches 1 32 --streams stationary --seeds 0 1 --no-acc --no-lams

For each stream and batch size an MLP D-100-100-C trains with SGD (momentum 0.9; lr 0.005 per sample
of the batch, at most 0.05: 0.005, 0.02, 0.04 at batch 1, 4, 8) plus the proximal MAS penalty (lam
0.01) of ``OnlineMAS(model)`` with its default detector (entropy and input shift,
:func:`default_detector`), which never sees the boundaries. Streams (``streams.make_stream``):
``permuted`` (5 permutations of digits), ``rotated`` (5 rotations), ``recurring`` (permuted, order 0
1 r1 2 r2 ...: returns to learned segments), ``gradual`` (permuted, blended changes), ``stationary``
(one segment: every detection is a false alarm); the same on mnist1d (no rotated: a 1-d signal has
no rotation); and at batch 1 river's ``RandomRBFDrift`` (centroids drift all along: no change point,
only the number of consolidations means something), RandomRBF generators A B A (a return to an
earlier generator) and SEA variants 0 1 2 3 (only P(y|x) changes, the inputs stay uniform: watched
with ``signal="loss"``). Every measure is in samples: a detection is the last sample of the
``observe`` call that consolidated; it matches a change t if it lies in [t, t + tolerance],
tolerance = half the shortest segment; the rest are false alarms. ACC: the final mean accuracy over
the segments' held-out sets of task-free MAS, MAS at the true boundaries (the same penalty and lam)
and fine-tuning. ``--lams``: the false-alarm rate on stationary digits at batch 4 against lam (false
alarms must not feed themselves). The signal-choice table: the window statistic of
:class:`~online_mas.InputShift` on the inputs, the penultimate features and the logits of a model
trained on recurring digits at batch 32 (boundaries known), within segments against at changes.
The SEA table: the extra training errors each change of ``river-sea-loss`` leaves (what the loss
signal has to see). The stationary table also gives the largest joint statistic (the smaller of the
two CUSUM statistics at the end of a batch), against the detector's ``joint_threshold``.
With 3 seeds or more, ACC is also compared seed by seed (task-free MAS minus the oracle, mean and
standard error); ``--late-oracle`` adds the oracle consolidating one batch after each change, how
far ACC moves when a boundary moves by one batch: at batch 1 and 4 that moves it from seed to seed
as much as detecting the changes does (``results/detection_acc.md``).

Writes ``results/detection.md`` and ``results/detection.json`` (one JSON record per run in
``--out``/runs.jsonl as they finish).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import online_mas as om
from streams import make_stream

STREAMS = {  # name: (source, transition, segments, passes per segment occurrence)
    "permuted": ("permuted-digits", "abrupt", 5, 5.0), "rotated": ("rotated-digits", "abrupt", 5, 5.0),
    "recurring": ("permuted-digits", "recurring", 5, 5.0), "gradual": ("permuted-digits", "gradual", 5, 5.0),
    "stationary": ("permuted-digits", "abrupt", 1, 0.0),
    # mnist1d has no rotated stream (a 1-d signal has no rotation)
    "mnist1d-permuted": ("permuted-mnist1d", "abrupt", 5, 2.0),
    "mnist1d-recurring": ("permuted-mnist1d", "recurring", 5, 2.0),
    "mnist1d-gradual": ("permuted-mnist1d", "gradual", 5, 2.0),
    "mnist1d-stationary": ("permuted-mnist1d", "abrupt", 1, 0.0),
    # river's synthetic streams (batch 1 only): see RiverStream
    "river-rbf-drift": ("river", "drift", 1, 0.0), "river-rbf-return": ("river", "recurring", 3, 0.0),
    "river-sea-loss": ("river", "abrupt", 4, 0.0),
}
LEARNERS = ("online-mas", "mas-oracle", "finetune")
RIVER_SAMPLES = 5000  # per river segment (15 000 for the drifting RandomRBF)


@dataclass
class DetectionConfig:
    streams: tuple[str, ...] = tuple(STREAMS)  # subset of STREAMS
    batches: tuple[int, ...] = (1, 4, 8, 32, 128)  # batch sizes (river streams: batch 1 only)
    seeds: tuple[int, ...] = (0,)  # seeds of stream and model
    stationary_seeds: tuple[int, ...] = ()  # the stationary streams' seeds (empty: seeds)
    stationary_samples: int = 50_000  # length of each stationary stream (about)
    lam: float = 0.01  # task-free MAS, proximal form
    acc: bool = True  # also train mas-oracle and finetune on the streams with changes
    acc_batches: tuple[int, ...] = (1, 4, 32)  # ... at these batch sizes
    acc_streams: tuple[str, ...] = ("permuted", "recurring", "river-rbf-return",
                                    "river-sea-loss")  # ... of these streams
    lams: tuple[float, ...] = (0.0, 0.01, 0.1, 1.0)  # false alarms against lam (empty: skip)
    lam_batch: int = 4  # ... on stationary digits at this batch size
    signal_choice: bool = True  # the input / features / logits table
    late_oracle: bool = False  # also the oracle consolidating one batch after each change
    lag: int | None = None  # the default detector's lag in samples (None: default_detector's)
    out: str = "runs/detection"  # runs.jsonl
    results: str = "results/detection"  # <results>.md and .json


def lr_for(batch: int) -> float:
    """Learning rates that train at small batches with momentum 0.9: 0.005 per sample of the batch
    (linear scaling), at most 0.05. At batch 8 this script used 0.05 until commit eb99a07: there
    the loss of stationary digits jumped tenfold for a few hundred samples now and then, and the
    entropy channel saw those jumps (false alarms; the README's detection section has the counts)."""
    return min(0.05, 0.005 * batch)


def _model(seed: int, d: int, classes: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                         nn.Linear(100, classes))


class _Watched(om.Combined):
    """The default detector, keeping the largest :attr:`~online_mas.Combined.joint_statistic` at
    the batch ends where it is compared with ``joint_threshold`` (neither channel fired, the
    inputs were fed, ``min_segment`` samples since the last report): how near a stream came."""

    joint_peak = 0.0

    def _end_batch(self, n: int, by_signal: bool, by_shift: bool, fed_shift: bool = True) -> bool:
        if not (by_signal or by_shift) and fed_shift and self._since + n >= self.min_segment:
            self.joint_peak = max(self.joint_peak, self.joint_statistic or 0.0)
        return super()._end_batch(n, by_signal, by_shift, fed_shift)


@dataclass
class RiverStream:
    """Batches of a river generator (features as a float tensor), with the hidden truth."""

    batches: list[tuple[torch.Tensor, torch.Tensor]]
    change_points: list[int]  # first batch of each new segment
    order: list[int]  # generator of each segment
    eval_sets: list[tuple[torch.Tensor, torch.Tensor]]

    def __iter__(self) -> Any:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _river(name: str, seed: int) -> RiverStream:
    from river.datasets import synth

    def take(gen: Any, n: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        rows = list(gen.take(n))
        x = torch.tensor([[float(v) for v in r[0].values()] for r in rows]) / scale
        return x, torch.tensor([int(r[1]) for r in rows])

    if name == "river-rbf-drift":
        gens = [synth.RandomRBFDrift(seed_model=seed, seed_sample=seed + 1, n_classes=5, n_features=10,
                                     change_speed=0.001, n_drift_centroids=50)]
        order, n, scale = [0], 3 * RIVER_SAMPLES, 1.0
    elif name == "river-rbf-return":
        gens = [synth.RandomRBF(seed_model=seed + k, seed_sample=seed + 10 + k, n_classes=5, n_features=10)
                for k in (0, 1)]
        order, n, scale = [0, 1, 0], RIVER_SAMPLES, 1.0
    else:  # SEA: the label threshold changes, the inputs stay uniform on [0, 10]^3
        gens = [synth.SEA(variant=v, seed=seed + v) for v in range(4)]
        order, n, scale = [0, 1, 2, 3], RIVER_SAMPLES, 10.0
    segs = [take(gens[k], n, scale) for k in order]  # a generator continues where it stopped
    evals = [take(g, 1000, scale) for g in gens]
    x, y = torch.cat([s[0] for s in segs]), torch.cat([s[1] for s in segs])
    return RiverStream([(x[i:i + 1], y[i:i + 1]) for i in range(len(x))],
                       [n * k for k in range(1, len(order))], order, evals)


def _stream(name: str, batch: int, seed: int, cfg: DetectionConfig) -> Any:
    source, transition, segments, passes = STREAMS[name]
    if source == "river":
        return _river(name, seed)
    if segments == 1:
        probe = make_stream(source, n_segments=1, passes=1.0, seed=seed, batch_size=batch)
        passes = cfg.stationary_samples / (len(probe) * batch)
    return make_stream(source, n_segments=segments, passes=passes, seed=seed, batch_size=batch,
                       transition=transition)


def _truth(stream: Any) -> tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]:
    if isinstance(stream, RiverStream):
        return stream.order, stream.eval_sets
    return list(stream.truth.order), list(stream.eval_sets)


def run_one(stream_name: str, batch: int, seed: int, learner: str, cfg: DetectionConfig,
            lam: float | None = None) -> dict[str, Any]:
    stream = _stream(stream_name, batch, seed, cfg)
    order, eval_sets = _truth(stream)
    x0 = eval_sets[0][0]  # not next(iter(stream)): a Stream resumes, that would skip a batch
    classes = int(max(int(ey.max()) for _, ey in eval_sets)) + 1
    model = _model(seed, x0[0].numel(), classes)
    opt = torch.optim.SGD(model.parameters(), lr=lr_for(batch), momentum=0.9)
    changes = [c * batch for c in stream.change_points]  # first sample of each new segment
    by_loss = stream_name == "river-sea-loss"
    lam = cfg.lam if lam is None else lam
    if learner in ("online-mas", "online-mas-slow"):  # -slow: the anchor before onset snapshots
        made = om.default_detector() if cfg.lag is None else om.default_detector(lag=cfg.lag)
        detector = _Watched(made.detector, made.shift_detector, made.shift, min_segment=made.min_segment,
                            lag=made.lag, joint_threshold=made.joint_threshold)
        mas: om.OnlineMAS | None = om.OnlineMAS(model, lam=lam, signal="loss" if by_loss else "entropy",
                                                detector=detector,
                                                anchor=om.StableAnchor(onset=learner == "online-mas"))
    elif learner in ("mas-oracle", "mas-oracle-late"):  # -late: each boundary one batch later
        late = int(learner == "mas-oracle-late")
        mas = om.OnlineMAS(model, lam=lam, boundaries=[c + late for c in stream.change_points])
    else:
        mas = None
    fired: list[int] = []
    fired_by: list[str] = []
    errors: list[int] = []  # per batch (river-sea-loss only): training errors, before the step
    start = time.perf_counter()
    diverged = False
    for step, (x, y) in enumerate(stream, start=1):
        model.train()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if by_loss:
            errors.append(int((logits.detach().argmax(1) != y).sum()))
        if not math.isfinite(float(loss.detach())):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if mas is not None:
            mas.proximal_(lr_for(batch))  # the oracle too: the same penalty, only the boundaries differ
            event = mas.observe(x, loss=float(loss.detach())) if by_loss else mas.observe(x)
            if event is not None and event.reason == "detector":
                fired.append(step * batch - 1)
                fired_by.append(str(getattr(mas.detector, "fired_by", "") or ""))
    seconds = time.perf_counter() - start
    n_samples = len(stream) * batch
    model.eval()
    with torch.no_grad():
        accs = [float((model(ex).argmax(1) == ey).float().mean()) for ex, ey in eval_sets]
    out: dict[str, Any] = {"stream": stream_name, "batch": batch, "seed": seed, "learner": learner,
                           "lam": lam,
                           "lr": lr_for(batch), "n_samples": n_samples, "changes": changes,
                           "order": order, "fired": fired, "fired_by": fired_by, "seconds": seconds,
                           "acc": statistics.fmean(accs), "diverged": diverged}
    if isinstance(mas.detector if mas is not None else None, _Watched):
        out["joint_peak"] = mas.detector.joint_peak  # type: ignore[union-attr]
    if errors and batch == 1:
        out["visibility"] = _visibility(errors, changes)
    if learner == "online-mas":
        out.update(_scores(fired, changes, order, n_samples, gradual=STREAMS[stream_name][1] == "gradual"))
    return out


def _visibility(errors: list[int], changes: list[int], *, before: int = 2000,
                after: int = 500) -> list[dict[str, float]]:
    """How much a change raised the training errors (batch 1: one 0/1 per sample): per change, the
    error rate over the ``before`` samples before it, the errors in the ``after`` samples after it,
    their excess over that rate and the excess in binomial standard deviations."""
    rows = []
    for t in changes:
        if t + after > len(errors):  # the run diverged (or ended) before: nothing to measure
            continue
        rate = statistics.fmean(errors[max(0, t - before):t])
        seen = sum(errors[t:t + after])
        expected = rate * after
        sd = math.sqrt(max(expected * (1.0 - rate), 1e-12))
        rows.append({"change": t, "rate_before": rate, "errors_after": seen,
                     "excess": seen - expected, "z": (seen - expected) / sd})
    return rows


def _scores(fired: list[int], changes: list[int], order: list[int], n: int, *,
            gradual: bool = False) -> dict[str, Any]:
    """Detection scores; a gradual change (a blend over half the shortest segment, centred on the
    change point) starts with its blend: a detection matches it from the blend's first sample on."""
    bounds = [0, *changes, n]
    shortest = min(b - a for a, b in itertools.pairwise(bounds))
    tol = shortest // 2
    if gradual:
        changes = [t - tol // 2 for t in changes]
        tol += tol // 2
    s = om.detection_scores(fired, changes, tolerance=tol, n_steps=n)
    matched = {t for t, _ in s.matched}
    new, back = [], []
    for i, t in enumerate(changes):
        (back if order[i + 1] in order[: i + 1] else new).append(t in matched)
    return {"tolerance": tol, "precision": s.precision if changes else None,
            "recall": s.recall if changes else None, "f1": s.f1 if changes else None,
            "mean_delay": s.mean_delay, "false_alarms": len(s.false_alarms),
            "false_alarms_per_1e5": len(s.false_alarms) / n * 1e5, "consolidations": len(fired),
            "recall_new": sum(new) / len(new) if new else None,
            "recall_returning": sum(back) / len(back) if back else None}


def signal_choice(seed: int) -> list[dict[str, Any]]:
    """The window statistic of InputShift on three spaces of one trained model (recurring digits,
    batch 32, consolidating at the true boundaries): its quantiles within segments (more than 1024
    samples from a change) and its first window after each change."""
    stream = make_stream("permuted-digits", n_segments=5, passes=5.0, seed=seed, batch_size=32,
                         transition="recurring")
    order = list(stream.truth.order)
    model = _model(seed, 64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mas = om.OnlineMAS(model, lam=0.01, boundaries=list(stream.change_points))
    spaces = {"inputs": om.InputShift(), "penultimate features": om.InputShift(), "logits": om.InputShift()}
    sums: dict[str, list[float]] = {k: [] for k in spaces}
    for x, y in stream:
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        mas.proximal_(0.05)
        mas.observe(x)
        model.eval()
        with torch.no_grad():
            feats = model[:5](x)
            views = {"inputs": x, "penultimate features": feats, "logits": model[5](feats)}
        for k, v in views.items():  # one window of 32 samples per batch
            sums[k].append(float(spaces[k].per_sample(v).sum()) / 32)
    rows = []
    changes = [c * 32 for c in stream.change_points]
    for k, t in sums.items():
        near = {w for c in changes for w in range(c // 32 - 1, c // 32 + 32)}
        null = sorted(v for w, v in enumerate(t) if w not in near and w > 32)
        at = [t[c // 32] for c in changes]
        back = [t[c // 32] for i, c in enumerate(changes) if order[i + 1] in order[: i + 1]]
        rows.append({"space": k, "median": statistics.median(null),
                     "q999": null[min(len(null) - 1, int(0.999 * len(null)))], "max": null[-1],
                     "min_at_change": min(at), "min_at_return": min(back) if back else None})
    return rows


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [float(r[key]) for r in rows if r.get(key) is not None and math.isfinite(float(r[key]))]
    return statistics.fmean(vals) if vals else None


def _fmt(v: float | None, dec: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{dec}f}"


def _jobs(cfg: DetectionConfig) -> list[tuple[str, int, int, str, float | None]]:
    """In the order in which a partial run (``--from-runs``) is most useful: task-free MAS on river
    and digits, the lam sweep, the other learners, mnist1d at batch 8 and more, the other learners
    at batch 1, mnist1d at batch 1 and 4."""
    tiers: list[list[tuple[str, int, int, str, float | None]]] = [[] for _ in range(6)]
    for s in sorted(cfg.streams, key=lambda name: STREAMS[name][0] != "river"):
        river, mnist1d = STREAMS[s][0] == "river", STREAMS[s][0].endswith("mnist1d")
        still = STREAMS[s][2] == 1 and not river
        for b in ([1] if river else cfg.batches):
            for seed in (cfg.stationary_seeds or cfg.seeds) if still else cfg.seeds:
                tier = (3 if b >= 8 else 5) if mnist1d else 0
                tiers[tier].append((s, b, seed, "online-mas", None))
                if cfg.acc and s in cfg.acc_streams and (river or b in cfg.acc_batches):
                    tiers[4 if b == 1 and not river else 2] += [
                        (s, b, seed, learner, None)
                        for learner in LEARNERS[1:] + (("mas-oracle-late",) if cfg.late_oracle else ())]
    tiers[1] = [("stationary", cfg.lam_batch, seed, "online-mas", lam) for lam in cfg.lams
                for seed in cfg.seeds]
    return [job for tier in tiers for job in tier]


def _paired(main: list[dict[str, Any]]) -> list[str]:
    """ACC differences paired by seed (the same stream and initial model): task-free MAS against
    the oracle, and the oracle one batch late against the oracle, mean +- standard error."""
    def acc(s: str, b: int, learner: str) -> dict[int, float]:
        return {r["seed"]: 100 * r["acc"] for r in main if (r["stream"], r["batch"], r["learner"])
                == (s, b, learner) and r.get("acc") is not None and math.isfinite(r["acc"])}

    def diff(a: dict[int, float], o: dict[int, float]) -> str:
        d = [a[k] - o[k] for k in sorted(a.keys() & o.keys())]
        if len(d) < 2:
            return "n/a"
        sd = statistics.stdev(d)
        return f"{statistics.fmean(d):+.1f} +- {sd / math.sqrt(len(d)):.1f} (SD {sd:.1f})"
    rows = ["| stream | batch | seeds | ACC % task-free | oracle | task-free - oracle | oracle one batch "
            "late - oracle |", "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["stream"], r["batch"]) for r in main if r["learner"] == "mas-oracle"})
    for s, b in keys:
        tf, oracle, late = acc(s, b, "online-mas"), acc(s, b, "mas-oracle"), acc(s, b, "mas-oracle-late")
        both = tf.keys() & oracle.keys()
        if len(both) < 3 or STREAMS[s][0] == "river":
            continue
        rows.append(f"| {s} | {b} | {len(both)} | {statistics.fmean(tf[k] for k in both):.1f} | "
                    f"{statistics.fmean(oracle[k] for k in both):.1f} | {diff(tf, oracle)} | "
                    f"{diff(late, oracle)} |")
    if len(rows) == 2:
        return []
    return ["ACC paired by seed (the same stream and initial model), mean +- standard error over the "
            "seeds, and the seeds' SD of the difference. The last column is the oracle consolidating "
            "one batch after each true change instead of at it: how far ACC moves when a boundary "
            "moves by one batch (`--late-oracle`), the noise floor of the comparison before it:",
            "\n".join(rows)]


def _tables(cfg: DetectionConfig, runs: list[dict[str, Any]]) -> list[str]:
    main = [r for r in runs if r.get("lam_sweep") is None]
    head = ["| stream | batch (lr) | samples | F1 | precision | recall new / returning | tolerance "
            "(samples) | mean delay (samples) | false alarms /10^5 samples | consolidations (by entropy "
            "/ shift / both / joint) | ACC % task-free / oracle / finetune |", "|" + "---|" * 11]
    for s in cfg.streams:
        for b in sorted({r["batch"] for r in main if r["stream"] == s}):
            mine = [r for r in main if r["stream"] == s and r["batch"] == b]
            om_ = [r for r in mine if r["learner"] == "online-mas"]
            by = [sum(f == k for r in om_ for f in r["fired_by"]) / len(om_)
                  for k in ("signal", "shift", "both", "joint")]
            accs = [_mean([r for r in mine if r["learner"] == learner], "acc") for learner in LEARNERS]
            head.append(
                f"| {s} | {b} ({lr_for(b):g}) | {om_[0]['n_samples']} | {_fmt(_mean(om_, 'f1'))} | "
                f"{_fmt(_mean(om_, 'precision'))} | {_fmt(_mean(om_, 'recall_new'))} / "
                f"{_fmt(_mean(om_, 'recall_returning'))} | {om_[0]['tolerance']} | "
                f"{_fmt(_mean(om_, 'mean_delay'), 0)} | {_fmt(_mean(om_, 'false_alarms_per_1e5'), 1)} | "
                f"{_fmt(_mean(om_, 'consolidations'), 1)} ({' / '.join(f'{round(k, 2):g}' for k in by)}) | "
                + " / ".join(_fmt(100 * v if v is not None else None, 1) for v in accs) + " |")
    out = ["\n".join(head)]
    out += _paired(main)
    still = [r for r in main if r["learner"] == "online-mas" and STREAMS[r["stream"]][2] == 1
             and STREAMS[r["stream"]][0] != "river"]
    lines = ["| batch | stationary samples | false alarms | per 10^5 samples | largest joint statistic |",
             "|---|---|---|---|---|"]

    def peak(rs: list[dict[str, Any]]) -> str:
        vals = [r["joint_peak"] for r in rs if r.get("joint_peak") is not None]
        return f"{max(vals):.1f}" if vals else "n/a"
    for b in sorted({r["batch"] for r in still}):
        rs = [r for r in still if r["batch"] == b]
        n, fa = sum(r["n_samples"] for r in rs), sum(r["false_alarms"] for r in rs)
        lines.append(f"| {b} | {n} | {fa} | {fa / n * 1e5:.2f} | {peak(rs)} |")
    n, fa = sum(r["n_samples"] for r in still), sum(r["false_alarms"] for r in still)
    if still:
        lines.append(f"| all | {n} | {fa} | {fa / n * 1e5:.2f} | {peak(still)} |")
        out += ["Stationary streams (digits and mnist1d, all seeds), per batch size; the largest joint "
                "statistic is the largest value, at the end of a batch, of the smaller of the two "
                "CUSUM statistics (entropy, input shift), against `joint_threshold`:", "\n".join(lines)]
    sweep = [r for r in runs if r.get("lam_sweep") is not None]
    if sweep:
        rows = ["| lam | false alarms /10^5 samples | consolidations | diverged | ACC % |",
                "|---|---|---|---|---|"]
        for lam in cfg.lams:
            rs = [r for r in sweep if r["lam"] == lam]
            rows.append(f"| {lam:g} | {_fmt(_mean(rs, 'false_alarms_per_1e5'), 1)} | "
                        f"{_fmt(_mean(rs, 'consolidations'), 1)} | {sum(r['diverged'] for r in rs)} | "
                        f"{_fmt(100 * (_mean(rs, 'acc') or math.nan), 1)} |")
        out += [f"False alarms against lam, stationary digits at batch {cfg.lam_batch} (lr "
                f"{lr_for(cfg.lam_batch):g}), proximal penalty, `sum` rule:", "\n".join(rows)]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    d = DetectionConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", nargs="+", default=list(d.streams), choices=list(STREAMS))
    p.add_argument("--batches", nargs="+", type=int, default=list(d.batches))
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds))
    p.add_argument("--stationary-samples", type=int, default=d.stationary_samples)
    p.add_argument("--stationary-seeds", nargs="+", type=int, default=None,
                   help="seeds of the stationary streams (default: --seeds): false alarms are rare")
    p.add_argument("--no-acc", action="store_true", help="only task-free MAS (no ACC of the others)")
    p.add_argument("--acc-batches", nargs="+", type=int, default=list(d.acc_batches))
    p.add_argument("--acc-streams", nargs="+", default=list(d.acc_streams), choices=list(STREAMS))
    p.add_argument("--no-lams", action="store_true", help="skip false alarms against lam")
    p.add_argument("--no-signal-choice", action="store_true", help="skip the signal-choice table")
    p.add_argument("--late-oracle", action="store_true",
                   help="also the oracle consolidating one batch after each change (how much ACC "
                        "moves with that)")
    p.add_argument("--lag", type=int, default=None, help="the default detector's lag (samples)")
    p.add_argument("--from-runs", action="store_true",
                   help="only tabulate the runs already in --out/runs.jsonl (e.g. of an interrupted run)")
    p.add_argument("--out", default=d.out)
    p.add_argument("--results", default=d.results)
    a = p.parse_args(argv)
    cfg = DetectionConfig(streams=tuple(a.streams), batches=tuple(a.batches), seeds=tuple(a.seeds),
                          stationary_seeds=tuple(a.stationary_seeds or ()),
                          stationary_samples=a.stationary_samples, acc=not a.no_acc,
                          acc_batches=tuple(a.acc_batches), acc_streams=tuple(a.acc_streams),
                          lams=() if a.no_lams else d.lams,
                          signal_choice=not a.no_signal_choice, late_oracle=a.late_oracle, lag=a.lag,
                          out=a.out, results=a.results)
    torch.set_num_threads(1)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    jobs = _jobs(cfg)
    runs: list[dict[str, Any]] = []
    start = time.perf_counter()
    saved_runs = Path(cfg.out) / "runs.jsonl"
    if saved_runs.exists():  # resume: the runs already done are not run again
        with open(saved_runs) as saved:
            runs = [json.loads(line) for line in saved if line.strip()]
        done = {(r["stream"], r["batch"], r["seed"], r["learner"], r.get("lam_sweep")) for r in runs}
        jobs = [j for j in jobs if j not in done]
    if a.from_runs:
        jobs = []
        cfg.streams = tuple(s for s in cfg.streams if any(r["stream"] == s for r in runs))
        cfg.lams = tuple(v for v in cfg.lams if any(r.get("lam_sweep") == v for r in runs))
    with open(Path(cfg.out) / "runs.jsonl", "a") as log:
        for s, b, seed, learner, lam in tqdm(jobs, desc="runs", unit="run"):
            r = run_one(s, b, seed, learner, cfg, lam=lam)
            r["lam_sweep"] = lam
            runs.append(r)
            log.write(json.dumps(r) + "\n")
            log.flush()
    for r in runs:  # scored again: the runs of an older version of this script are scored alike
        if r["learner"] == "online-mas":
            r.update(_scores(r["fired"], r["changes"], r["order"], r["n_samples"],
                             gradual=STREAMS[r["stream"]][1] == "gradual"))
    choice = signal_choice(cfg.seeds[0]) if cfg.signal_choice else []
    seconds = time.perf_counter() - start

    det = om.default_detector()
    anchor = om.StableAnchor()
    parts = [
        f"Task-free detection by the default detector `{det!r}` (entropy and input shift, fed per "
        f"sample), over batch sizes {', '.join(map(str, cfg.batches))} (river streams: batch 1); MLP "
        f"D-100-100-C, SGD momentum 0.9, proximal MAS penalty lam {cfg.lam}, anchored at the "
        f"parameters saved before the run of the detector that found the change began "
        f"(`StableAnchor(onset={anchor.onset})`; the oracle: the same penalty and lam, consolidating "
        "at the true boundaries); seeds "
        f"{', '.join(map(str, cfg.seeds))} ({len(cfg.seeds)} seed(s): means over them)"
        + (f", the stationary streams seeds {', '.join(map(str, cfg.stationary_seeds))}"
           if cfg.stationary_seeds else "") + ". All counts "
        "in samples; a detection matches a change t if it lies in [t, t + tolerance] (gradual: t is "
        "the first sample of the blend, tolerance 3/4 of the shortest segment), at most one per "
        "change; unmatched ones are false alarms. ACC of the oracle and fine-tuning on "
        f"{', '.join(cfg.acc_streams)} at batch {', '.join(map(str, cfg.acc_batches))} (river: 1) "
        "only; `river-rbf-drift` has no change "
        "point (its centroids drift all along): only its consolidations mean something; "
        "`river-sea-loss` watches the training loss (`signal=\"loss\"`), the others the entropy.",
        *_tables(cfg, runs)]
    if choice:
        rows = ["| space | within segments: median | 99.9 % | max | at a change: least | at a return: "
                "least |",
                "|---|---|---|---|---|---|"]
        rows += [f"| {r['space']} | {r['median']:.1f} | {r['q999']:.1f} | {r['max']:.1f} | "
                 f"{r['min_at_change']:.1f} | {_fmt(r['min_at_return'], 1)} |" for r in choice]
        parts += ["Why the shift is measured on the inputs: `InputShift`'s window statistic (about 1 on "
                  "a stationary stream) on three spaces of one model, recurring digits at batch 32, "
                  "consolidating at the true boundaries. The features and logits move within a "
                  "segment as the model learns about as much as at a change; the inputs do not.",
                  "\n".join(rows)]
    seen = [r for r in runs if r.get("visibility") and r["learner"] == "online-mas"]
    if seen:
        rows = ["| seed | change (sample) | error rate before (%) | errors in the 500 samples after | "
                "excess | excess (binomial SD) |", "|---|---|---|---|---|---|"]
        rows += [f"| {r['seed']} | {v['change']} | {100 * v['rate_before']:.1f} | {v['errors_after']} | "
                 f"{v['excess']:+.1f} | {v['z']:+.1f} |" for r in seen for v in r["visibility"]]
        parts += ["What the loss signal has to see on SEA (`river-sea-loss`, the task-free learner's "
                  "own training errors at batch 1; the rate before is over 2000 samples): a change of "
                  "SEA's threshold relabels a band of inputs, and the model relearns it within a few "
                  "hundred samples, so each change leaves only this many extra errors.",
                  "\n".join(rows)]
    skipped = sorted({f"{r['stream']} at batch {r['batch']}" for r in runs if r.get("first_batch_skipped")})
    if skipped:
        parts.append("Runs made before a fix of this script trained and detected on every batch but the "
                     "stream's first (its detections are counted in the stream's samples): "
                     + ", ".join(skipped) + ".")
    args = "".join(" " + v for v in (argv if argv is not None else sys.argv[1:]))
    total = sum(r["seconds"] for r in runs)
    parts.append(f"`python scripts/detection.py{args}`: {len(runs)} runs, {total:.0f} s of training on "
                 f"{os.cpu_count()} shared cores, 1 torch thread; torch {torch.__version__}, Python "
                 f"{platform.python_version()}.")
    text = "\n\n".join(parts) + "\n"
    print("\n" + text)
    report = {"settings": dataclasses.asdict(cfg), "seconds": seconds, "detector": repr(det),
              "signal_choice": choice, "runs": runs}
    Path(cfg.results).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.results + ".md").write_text(text)
    Path(cfg.results + ".json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {cfg.results}.md and {cfg.results}.json")
    return report


if __name__ == "__main__":
    main()
