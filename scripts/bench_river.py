"""online_mas.river.Classifier beside river's own learners on river's synthetic streams.

Each stream is three segments of river's synthetic generators, A then B then A again (A's own
generator continues: an abrupt change and a return; river's ``ConceptDriftStream`` overflows with
``width=1`` far from its position); every learner sees the same samples in the same order,
test-then-train. Reported: progressive accuracy over the whole stream, accuracy on the first
concept when it returns (the ``--probe`` samples after the return, test-then-train), and samples/s.
deep-river's ``Classifier`` is not among them: deep-river 0.3.4 asks for river < 0.26 and
torch < 2.6, and does not install beside the versions in ``constraints.txt``.

Run from the repository root::

    python scripts/bench_river.py                       # writes results/river.md
    python scripts/bench_river.py --segment 2000 --seeds 0
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from river import forest, preprocessing, tree
from river.datasets import synth
from tqdm import tqdm

from online_mas.river import Classifier


@dataclass
class Config:
    segment: int = 5000  # samples per concept
    probe: int = 1000  # samples after the return to the first concept that are scored on their own
    seeds: tuple[int, ...] = (0, 1, 2)  # stream and model seeds
    results: str = "results/river.md"  # the markdown table
    out: str = "runs/bench_river"  # JSON of every run


def streams(segment: int, seed: int) -> dict[str, tuple[Iterable[Any], int]]:
    """Name -> (stream A B A, the sample index of the return to A)."""

    def chain(a: Callable[[], Any], b: Callable[[], Any]) -> Any:
        first = iter(a())
        return itertools.chain(itertools.islice(first, segment), itertools.islice(iter(b()), segment),
                               itertools.islice(first, segment))

    agrawal = chain(lambda: synth.Agrawal(classification_function=0, seed=seed),
                    lambda: synth.Agrawal(classification_function=2, seed=seed + 100))
    rbf = chain(lambda: synth.RandomRBF(seed_model=seed, seed_sample=seed, n_classes=3, n_features=10),
                lambda: synth.RandomRBF(seed_model=seed + 100, seed_sample=seed + 1, n_classes=3,
                                        n_features=10))
    sea = chain(lambda: synth.SEA(variant=0, seed=seed), lambda: synth.SEA(variant=3, seed=seed + 100))
    return {"agrawal 0-2-0": (agrawal, 2 * segment), "random-rbf A-B-A": (rbf, 2 * segment),
            "sea 0-3-0": (sea, 2 * segment)}


def learners(seed: int) -> dict[str, Callable[[], Any]]:
    return {
        "online-mas Classifier": lambda: preprocessing.StandardScaler() | Classifier(seed=seed),
        "same MLP, no MAS (lam=0)": lambda: preprocessing.StandardScaler() | Classifier(seed=seed, lam=0.0),
        "ARFClassifier": lambda: forest.ARFClassifier(seed=seed),
        "HoeffdingAdaptiveTree": lambda: tree.HoeffdingAdaptiveTreeClassifier(seed=seed),
    }


def run(model: Any, stream: Iterable[Any], n: int, back: int, probe: int) -> dict[str, float]:
    hits = scored = probe_hits = 0
    start = time.perf_counter()
    for i, (x, y) in enumerate(stream):
        if i >= n:
            break
        guess = model.predict_one(x)
        if guess is not None:
            hits, scored = hits + (guess == y), scored + 1
        if back <= i < back + probe:
            probe_hits += guess == y
        model.learn_one(x, y)
    seconds = time.perf_counter() - start
    return {"accuracy": 100.0 * hits / max(1, scored), "on_return": 100.0 * probe_hits / probe,
            "samples_per_s": n / seconds}


def main() -> None:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--segment", type=int, default=d.segment)
    p.add_argument("--probe", type=int, default=d.probe)
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds))
    p.add_argument("--results", default=d.results)
    p.add_argument("--out", default=d.out)
    a = p.parse_args()
    cfg = Config(a.segment, a.probe, tuple(a.seeds), a.results, a.out)
    n = 3 * cfg.segment
    rows: list[dict[str, Any]] = []
    jobs = [(s, name, learner) for s in cfg.seeds for name in streams(cfg.segment, s)
            for learner in learners(s)]
    for seed, name, learner in tqdm(jobs, desc="runs", unit="run"):
        stream, back = streams(cfg.segment, seed)[name]
        rows.append({"seed": seed, "stream": name, "learner": learner,
                     **run(learners(seed)[learner](), stream, n, back, cfg.probe)})
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "runs.json").write_text(json.dumps({"config": asdict(cfg), "rows": rows}, indent=1))

    def cell(values: list[float], digits: int = 1) -> str:
        if len(values) == 1:
            return f"{values[0]:.{digits}f}"
        return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"

    lines = ["# online_mas.river.Classifier on river's synthetic streams\n",
             f"Streams of 3 concepts x {cfg.segment} samples, abrupt changes, the third concept is the "
             f"first again; test-then-train; seeds {list(cfg.seeds)} (mean ± std). `on return`: accuracy "
             f"on the first {cfg.probe} samples after the return to the first concept. Written by "
             f"`python scripts/bench_river.py --segment {cfg.segment} --probe {cfg.probe} --seeds "
             f"{' '.join(map(str, cfg.seeds))}`.\n",
             "| stream | learner | progressive accuracy % | on return % | samples/s |",
             "|---|---|---|---|---|"]
    for name in streams(cfg.segment, cfg.seeds[0]):
        for learner in learners(cfg.seeds[0]):
            sel = [r for r in rows if r["stream"] == name and r["learner"] == learner]
            speed = cell([r["samples_per_s"] for r in sel], 0)
            lines.append(f"| {name} | {learner} | {cell([r['accuracy'] for r in sel])} | "
                         f"{cell([r['on_return'] for r in sel])} | {speed} |")
    text = "\n".join(lines) + "\n"
    Path(cfg.results).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.results).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
