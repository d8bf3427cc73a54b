"""Task-free detection at any batch size: the default detector on digits streams, batch 1 to 128.

Run from the repository root::

    python scripts/detection.py                                  # all streams, batches, seed 0
    python scripts/detection.py --batches 1 32 --streams stationary --seeds 0 1

For each stream and batch size an MLP 64-100-100-10 trains with SGD (momentum 0.9; lr 0.005 at
batch 1, 0.02 at batch 4, 0.05 from batch 8 on) plus the proximal MAS penalty (lam 0.01) of
``OnlineMAS(model)`` with its default detector, which never sees the boundaries. Streams
(``streams.make_stream``): ``permuted`` (5 permutations of digits), ``rotated`` (5 rotations),
``recurring`` (permuted, order 0 1 r1 2 r2 ...: returns to learned segments), ``stationary`` (one
segment, about 10^5 samples: every detection is a false alarm). Every measure is in samples:
a detection is the last sample of the ``observe`` call that consolidated; it matches a change t
if it lies in [t, t + tolerance], tolerance = half the shortest segment; the rest are false
alarms. ``--acc`` adds the final average accuracy (ACC) of task-free MAS, MAS at the true
boundaries (lam 0.001, gradient form) and fine-tuning.

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

STREAMS = {"permuted": ("permuted-digits", "abrupt", 5), "rotated": ("rotated-digits", "abrupt", 5),
           "recurring": ("permuted-digits", "recurring", 5), "stationary": ("permuted-digits", "abrupt", 1)}
LEARNERS = ("online-mas", "mas-oracle", "finetune")


@dataclass
class DetectionConfig:
    streams: tuple[str, ...] = tuple(STREAMS)  # subset of STREAMS
    batches: tuple[int, ...] = (1, 4, 8, 32, 128)  # batch sizes
    seeds: tuple[int, ...] = (0,)  # seeds of stream and model
    passes: float = 5.0  # passes over each segment's data per occurrence
    stationary_samples: int = 100_000  # length of the stationary stream (about)
    lam: float = 0.01  # task-free MAS, proximal form
    oracle_lam: float = 0.001  # MAS at the true boundaries, gradient form
    acc: bool = False  # also train mas-oracle and finetune, report ACC
    out: str = "runs/detection"  # runs.jsonl
    results: str = "results/detection"  # <results>.md and .json


def lr_for(batch: int) -> float:
    """Learning rates that train at small batches with momentum 0.9."""
    return 0.005 if batch == 1 else 0.02 if batch < 8 else 0.05


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def _stream(name: str, batch: int, seed: int, cfg: DetectionConfig) -> Any:
    source, transition, segments = STREAMS[name]
    passes = cfg.passes
    if name == "stationary":
        probe = make_stream(source, n_segments=1, passes=1.0, seed=seed, batch_size=batch)
        passes = cfg.stationary_samples / (len(probe) * batch)
    return make_stream(source, n_segments=segments, passes=passes, seed=seed, batch_size=batch,
                       transition=transition)


def run_one(stream_name: str, batch: int, seed: int, learner: str, cfg: DetectionConfig) -> dict[str, Any]:
    stream = _stream(stream_name, batch, seed, cfg)
    model = _model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr_for(batch), momentum=0.9)
    changes = [c * batch for c in stream.change_points]  # first sample of each new segment
    if learner == "online-mas":
        mas: om.OnlineMAS | None = om.OnlineMAS(model, lam=cfg.lam)
    elif learner == "mas-oracle":
        mas = om.OnlineMAS(model, lam=cfg.oracle_lam, boundaries=list(stream.change_points))
    else:
        mas = None
    fired: list[int] = []
    start = time.perf_counter()
    for step, (x, y) in enumerate(stream, start=1):
        model.train()
        loss = F.cross_entropy(model(x), y)
        if mas is not None and learner == "mas-oracle":
            loss = loss + mas.penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if mas is not None:
            if learner == "online-mas":
                mas.proximal_(lr_for(batch))
            event = mas.observe(x)
            if event is not None and event.reason == "detector":
                fired.append(step * batch - 1)
    seconds = time.perf_counter() - start
    n_samples = len(stream) * batch
    model.eval()
    with torch.no_grad():
        accs = [float((model(ex).argmax(1) == ey).float().mean()) for ex, ey in stream.eval_sets]
    out: dict[str, Any] = {"stream": stream_name, "batch": batch, "seed": seed, "learner": learner,
                           "lr": lr_for(batch), "n_samples": n_samples, "changes": changes,
                           "order": list(stream.truth.order), "fired": fired, "seconds": seconds,
                           "acc": statistics.fmean(accs)}
    if learner == "online-mas":
        out.update(_scores(fired, changes, list(stream.truth.order), n_samples))
    return out


def _scores(fired: list[int], changes: list[int], order: list[int], n: int) -> dict[str, Any]:
    bounds = [0, *changes, n]
    shortest = min(b - a for a, b in itertools.pairwise(bounds))
    tol = shortest // 2
    s = om.detection_scores(fired, changes, tolerance=tol, n_steps=n)
    matched = {t for t, _ in s.matched}
    new, back = [], []
    for i, t in enumerate(changes):
        (back if order[i + 1] in order[: i + 1] else new).append(t in matched)
    return {"tolerance": tol, "precision": s.precision, "recall": s.recall, "f1": s.f1,
            "mean_delay": s.mean_delay, "false_alarms": len(s.false_alarms),
            "false_alarms_per_1e5": len(s.false_alarms) / n * 1e5, "consolidations": len(fired),
            "recall_new": sum(new) / len(new) if new else None,
            "recall_returning": sum(back) / len(back) if back else None}


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [float(r[key]) for r in rows if r.get(key) is not None and math.isfinite(float(r[key]))]
    return statistics.fmean(vals) if vals else None


def _fmt(v: float | None, dec: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{dec}f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    d = DetectionConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", nargs="+", default=list(d.streams), choices=list(STREAMS))
    p.add_argument("--batches", nargs="+", type=int, default=list(d.batches))
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds))
    p.add_argument("--passes", type=float, default=d.passes)
    p.add_argument("--stationary-samples", type=int, default=d.stationary_samples)
    p.add_argument("--acc", action="store_true", help="also mas-oracle and finetune")
    p.add_argument("--out", default=d.out)
    p.add_argument("--results", default=d.results)
    a = p.parse_args(argv)
    cfg = DetectionConfig(streams=tuple(a.streams), batches=tuple(a.batches), seeds=tuple(a.seeds),
                          passes=a.passes, stationary_samples=a.stationary_samples, acc=a.acc,
                          out=a.out, results=a.results)
    torch.set_num_threads(1)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    learners = LEARNERS if cfg.acc else LEARNERS[:1]
    jobs = [(s, b, seed, learner) for s in cfg.streams for b in cfg.batches for seed in cfg.seeds
            for learner in learners]
    runs = []
    start = time.perf_counter()
    with open(Path(cfg.out) / "runs.jsonl", "a") as log:
        for s, b, seed, learner in tqdm(jobs, desc="runs", unit="run"):
            r = run_one(s, b, seed, learner, cfg)
            runs.append(r)
            log.write(json.dumps(r) + "\n")
            log.flush()
    seconds = time.perf_counter() - start

    head = ["| stream | batch (lr) | samples | F1 | precision | recall new / returning | tolerance "
            "(samples) | mean delay (samples) | false alarms /10^5 samples | consolidations |"
            + (" ACC % task-free / oracle / finetune |" if cfg.acc else ""),
            "|" + "---|" * (11 if cfg.acc else 10)]
    for s in cfg.streams:
        for b in cfg.batches:
            mine = [r for r in runs if r["stream"] == s and r["batch"] == b]
            om_ = [r for r in mine if r["learner"] == "online-mas"]
            row = (f"| {s} | {b} ({lr_for(b):g}) | {om_[0]['n_samples']} | "
                   f"{_fmt(_mean(om_, 'f1')) if s != 'stationary' else 'n/a'} | "
                   f"{_fmt(_mean(om_, 'precision')) if s != 'stationary' else 'n/a'} | "
                   f"{_fmt(_mean(om_, 'recall_new'))} / {_fmt(_mean(om_, 'recall_returning'))} | "
                   f"{om_[0]['tolerance']} | {_fmt(_mean(om_, 'mean_delay'), 0)} | "
                   f"{_fmt(_mean(om_, 'false_alarms_per_1e5'), 1)} | "
                   f"{_fmt(_mean(om_, 'consolidations'), 1)} |")
            if cfg.acc:
                accs = [_mean([r for r in mine if r["learner"] == learner], "acc") for learner in LEARNERS]
                row += " " + " / ".join(_fmt(100 * v if v is not None else None, 1) for v in accs) + " |"
            head.append(row)
    det = om.default_detector()
    still = [r for r in runs if r["stream"] == "stationary" and r["learner"] == "online-mas"]
    total, alarms = sum(r["n_samples"] for r in still), sum(r["false_alarms"] for r in still)
    args = "".join(" " + v for v in (argv if argv is not None else sys.argv[1:]))
    text = "\n\n".join([
        f"Task-free detection by the default detector `{det!r}` on the predictive entropy, fed per "
        f"sample, over batch sizes {', '.join(map(str, cfg.batches))}; MLP 64-100-100-10, SGD momentum "
        f"0.9, proximal MAS penalty lam {cfg.lam}; {cfg.passes:g} passes per segment occurrence; "
        f"mean over seeds {', '.join(map(str, cfg.seeds))}. All counts in samples; a detection "
        "matches a change t if it lies in [t, t + tolerance]; unmatched ones are false alarms.",
        "\n".join(head),
        f"Stationary streams, all batch sizes and seeds together: {alarms} false alarm(s) in {total} "
        f"samples ({alarms / total * 1e5 if total else float('nan'):.2f} per 10^5 samples).",
        f"`python scripts/detection.py{args}`"
        + f": {len(runs)} runs in {seconds:.0f} s on {os.cpu_count()} cores, 1 torch thread; torch "
        f"{torch.__version__}, Python {platform.python_version()}."]) + "\n"
    print("\n" + text)
    report = {"settings": dataclasses.asdict(cfg), "seconds": seconds,
              "detector": repr(det), "runs": runs}
    Path(cfg.results).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.results + ".md").write_text(text)
    Path(cfg.results + ".json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {cfg.results}.md and {cfg.results}.json")
    return report


if __name__ == "__main__":
    main()
