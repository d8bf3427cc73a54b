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
the table. The work is done by :mod:`online_mas.experiment.adapt_run`, which also runs this
experiment as ``online-mas run configs/adapt-digits.toml`` (``experiment.kind = "adapt"``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from online_mas.experiment.adapt_run import adapt_stream, adapt_table, train_source
from online_mas.experiment.config import AdaptSection
from online_mas.experiment.registry import ADAPT_METHODS as METHODS
from online_mas.experiment.registry import DETECTORS
from streams import StreamConfig


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
    mas_share: float = 0.25  # tent+mas: fraction of the adapted samples whose importance is estimated
    detector: str = "page-hinkley"  # tent+mas consolidation: a name of registry.DETECTORS
    period: int = 500  # detector="periodic": steps between consolidations
    reset: bool = True  # tent+mas: reset to the anchor on collapse
    out: str = "runs/adapt-digits"  # run directory

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {tuple(DETECTORS)}, got {self.detector!r}")
        bad = [m for m in self.methods if m.partition("@")[0] not in METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; allowed: {METHODS}, optionally as name@lr")


def settings(cfg: Config) -> tuple[AdaptSection, StreamConfig]:
    """The runner's ``[adapt]`` and ``[stream]`` for this script's config."""
    fields = {f.name for f in dataclasses.fields(AdaptSection)}
    section = AdaptSection(**{k: (tuple(v) if isinstance(v, list) else v)
                              for k, v in asdict(cfg).items() if k in fields})
    stream = StreamConfig("corrupted-digits", batch_size=cfg.batch_size, n_segments=cfg.n_segments,
                          passes=cfg.passes, order="return", corruption=cfg.corruption,
                          max_severity=cfg.max_severity)
    return section, stream


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
    section, stream = settings(cfg)
    results: list[dict[str, Any]] = []
    for seed in cfg.seeds:
        source, x_src, _ = train_source(section, seed)
        for spec in cfg.methods:
            with (out / f"steps-{spec}-{seed}.jsonl").open("w") as log:
                results.append(adapt_stream(spec, seed, source, x_src, section, stream, log=log,
                                            progress=True))
    md = adapt_table(results, cfg.methods, stream)
    src = [r["clean_source"] for r in results if r["method"] == cfg.methods[0]]
    md += (f"\n\nAccuracy in %, seeds {cfg.seeds}; per-occurrence columns: online accuracy of the "
           f"predictions made on the stream (mean over seeds). Source model clean held-out "
           f"accuracy {sum(src) / len(src):.1f}. {results[0]['steps']} steps of {cfg.batch_size} "
           f"per stream; params={cfg.params}, lr={cfg.lr} (unless @lr), lam={cfg.lam}, "
           f"e_max={cfg.e_max}, detector={cfg.detector}.")
    seconds = time.time() - start
    (out / "results.json").write_text(json.dumps(
        {"config": asdict(cfg), "seconds": seconds, "results": results}, indent=1))
    (out / "table.md").write_text(md + "\n")
    print(md)
    print(f"\n{seconds:.0f} s; results in {out}/")


if __name__ == "__main__":
    main()
