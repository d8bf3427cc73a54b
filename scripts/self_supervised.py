"""Self-supervised continual learning on unlabeled streams, probed by k-NN: writes results/ssl.md.

Runs ``configs/ssl-permuted-digits.toml``, ``configs/ssl-rotated-digits.toml`` and
``configs/ssl-permuted-mnist1d.toml`` (experiment.kind = "ssl": SimSiam on an MLP encoder, the
labels withheld) for fine-tuning, task-free online MAS, MAS at the true boundaries, LUMP-style
mixup replay and i.i.d. training, on seeds 0-4, in one run directory each, and tabulates the k-NN
probe's accuracy per segment at the end, ACC, forgetting, min-ACC, the linear probe's ACC and
forgetting, and samples/s. The k-NN accuracy of the untrained (randomly initialised) encoder is
shown as a reference row: on these small inputs it is high.

``--sweep`` instead picks ``lam`` of online-mas and mas-oracle on seeds 100-101 (not the reported
ones) for each config, on importance normalised to mean 1 per segment, by the mean k-NN ACC, and
writes ``results/ssl_sweep.md``; the configs hold the values it chose.

Not named ``ssl.py``: a script of that name would shadow the standard library's ``ssl`` module.

Run (one thread per process; the wall times are printed)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/self_supervised.py
    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/self_supervised.py --sweep
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from online_mas.experiment import load_config, run_experiment
from online_mas.experiment.rundir import continue_or_create

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("ssl-permuted-digits", "ssl-rotated-digits", "ssl-permuted-mnist1d")
LEARNERS = ("finetune", "online-mas", "mas-oracle", "lump", "joint")


@dataclass
class Settings:
    configs: tuple[str, ...] = CONFIGS  # config names under configs/
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # reported seeds
    sweep_seeds: tuple[int, ...] = (100, 101)  # seeds of --sweep (never reported)
    lams: tuple[float, ...] = (0.1, 1.0, 10.0)  # --sweep grid
    out: str = "runs/ssl"  # run directories go under this folder (continued if they hold the config)
    fresh: bool = False  # replace the run directories instead of continuing them
    results: str = "results"  # where ssl.md / ssl_sweep.md go


def _run(name: str, overrides: list[str], out: Path, *, fresh: bool) -> tuple[list[dict[str, Any]], float]:
    """Run (or continue: finished runs are kept) one config; its summaries and the sum of the
    runs' wall times (as recorded, so a continued directory reports the time its runs took)."""
    config = load_config(ROOT / "configs" / f"{name}.toml", [*overrides, "run.progress=false"])
    run_dir, config = continue_or_create(config, out, fresh=fresh)
    results = run_experiment(config, run_dir, progress=False)
    return results, sum(float(r["timing"]["wall_time_s"]) for r in results)


def _stats(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def _cell(values: list[float | None], scale: float = 100.0, digits: int = 1) -> str:
    vs = [v for v in values if v is not None]
    if not vs:
        return "n/a"
    m, s = _stats([v * scale for v in vs])
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(vs) > 1 else f"{m:.{digits}f}"


def _mean(rs: list[dict[str, Any]], key: str) -> float | None:
    vs = [_get(r, key) for r in rs]
    vs2 = [v for v in vs if v is not None]
    return sum(vs2) / len(vs2) if vs2 else None


def _get(r: dict[str, Any], key: str) -> float | None:
    v: Any = r
    for part in key.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return float(v) if isinstance(v, int | float) else None


def table(name: str, results: list[dict[str, Any]], seconds: float) -> list[str]:
    """The markdown section of one config."""
    segments = results[0]["segment_names"]
    head = ["learner", *segments, "k-NN ACC %", "k-NN forgetting %",
            "k-NN min-ACC %", "k-NN BWT %", "linear ACC %", "linear forgetting %", "events",
            "detection F1", "samples/s"]
    lines = [f"### {name}", "",
             f"{len(results) // len(LEARNERS)} seeds, {results[0]['n_steps']} steps of batch "
             f"{results[0]['batch_size']}; the {len(results)} runs took {seconds:.0f} s. "
             "Accuracy per segment: k-NN probe at the end of the stream (mean over seeds).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    init = [r for r in results if r["learner"] == LEARNERS[0]]
    row = ["untrained encoder", *[f"{100 * sum(r['initial_accuracy'][k] for r in init) / len(init):.1f}"
                                  for k in range(len(segments))],
           _cell([sum(r["initial_accuracy"]) / len(segments) for r in init]), "", "", "",
           _cell([sum(r["linear_probe"]["initial_accuracy"]) / len(segments) for r in init]),
           "", "", "", ""]
    lines.append("| " + " | ".join(row) + " |")
    for learner in LEARNERS:
        rs = [r for r in results if r["learner"] == learner]
        if not rs:
            continue
        per_seg = [f"{100 * sum(r['final_accuracy'][k] for r in rs) / len(rs):.1f}"
                   for k in range(len(segments))]
        row = [learner, *per_seg, _cell([r["average_accuracy"] for r in rs]),
               _cell([r["forgetting"] for r in rs]), _cell([r["min_accuracy"] for r in rs]),
               _cell([r["backward_transfer"] for r in rs]),
               _cell([r["linear_probe"]["average_accuracy"] for r in rs]),
               _cell([r["linear_probe"]["forgetting"] for r in rs]),
               f"{sum(r['n_snapshots'] for r in rs) / len(rs):.1f}",
               _cell([(r.get("detection") or {}).get("f1") for r in rs], scale=1.0, digits=2),
               f"{sum(r['timing']['samples_per_s'] for r in rs) / len(rs):.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    ft, om, ora = (_mean([r for r in results if r["learner"] == n], "forgetting")
                   for n in ("finetune", "online-mas", "mas-oracle"))
    acc_om, acc_ora = (_mean([r for r in results if r["learner"] == n], "average_accuracy")
                       for n in ("online-mas", "mas-oracle"))
    lines.append("")
    fine = [r for r in results if r["learner"] == "finetune"]
    joint = [r for r in results if r["learner"] == "joint"]
    if fine and fine[0]["forgetting"] is not None:
        k = len(segments)
        diag = [sum(r["accuracy_matrix"][i][i] for i in range(k)) / k for r in fine]
        untrained = [sum(r["initial_accuracy"]) / k for r in fine]
        lines.append(
            f"Does SSL fine-tuning forget, and what does it learn? k-NN accuracy on each segment "
            f"right after training on it (the diagonal of the matrix): {_cell(diag)}, against "
            f"{_cell(untrained)} for the untrained encoder"
            + (f" and {_cell([r['average_accuracy'] for r in joint])} for i.i.d. training" if joint else "")
            + f"; forgetting after it {_cell([r['forgetting'] for r in fine])} points.")
        base = sum(untrained) / len(untrained)
        below = [n for n in LEARNERS if (_mean([r for r in results if r["learner"] == n],
                                               "average_accuracy") or 0.0) < base]
        if len(below) == len(LEARNERS):
            lines.append(
                f"Every learner ends below the untrained encoder's k-NN ACC ({100 * base:.1f}): on "
                "these inputs the SSL objective lowers k-NN accuracy, so part of what the "
                "regularised learners keep is the random initialisation's distance-preserving map.")
        lines.append("")
    if ft is not None and om is not None and ora is not None and acc_om is not None \
            and acc_ora is not None:
        cut = 1 - om / ft if ft > 0 else math.nan
        lines.append(
            f"Targets: online-mas forgetting {100 * om:.1f} vs finetune {100 * ft:.1f} points: cut by "
            f"{100 * cut:.0f}% (target >= 50%: {'met' if cut >= 0.5 else 'missed'}); online-mas "
            f"ACC {100 * acc_om:.1f} vs mas-oracle {100 * acc_ora:.1f}: "
            f"{100 * (acc_om - acc_ora):+.1f} points (target within 2: "
            f"{'met' if abs(acc_om - acc_ora) <= 0.02 or acc_om > acc_ora else 'missed'}).")
    lines.append("")
    return lines


def main_run(s: Settings) -> None:
    out = ROOT / s.out
    lines = ["# Self-supervised continual learning on unlabeled streams (k-NN and linear probes)", "",
             "Written by `OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/self_supervised.py` (configs "
             f"{', '.join(f'`configs/{c}.toml`' for c in s.configs)}, seeds "
             f"{', '.join(map(str, s.seeds))}). `experiment.kind = \"ssl\"`: the encoder trains "
             "on the inputs only (SimSiam, two views by masking and noise, plus shifts on rotated "
             "digits); at each segment end a k-NN probe (k = 10, cosine) and a ridge linear probe "
             "are fitted per segment on its training samples and labels and scored on its held-out "
             "set. The accuracy matrix, ACC, BWT, forgetting and min-ACC are the k-NN probe's; "
             "`linear` columns the ridge probe's. mean ± std over seeds. `lam` of online-mas and "
             "mas-oracle: picked on seeds 100-101 (`--sweep`, `results/ssl_sweep.md`).", ""]
    total = 0.0
    for name in s.configs:
        seeds = json.dumps(list(s.seeds))
        results, seconds = _run(name, [f"experiment.seeds={seeds}"], out / name, fresh=s.fresh)
        total += seconds
        print(f"{name}: {len(results)} runs in {seconds:.0f} s", flush=True)
        lines += table(name, results, seconds)
    lines += [f"Total {total:.0f} s of run time (the sum of the runs' wall times; torch threads 1, "
              "CPU, a machine shared with other jobs: timings and samples/s are noisy).", ""]
    path = ROOT / s.results / "ssl.md"
    path.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {path}")


def main_sweep(s: Settings) -> None:
    out = ROOT / s.out / "sweep"
    lines = ["# lam of MAS for self-supervised continual learning (picked on seeds "
             f"{', '.join(map(str, s.sweep_seeds))})", "",
             "Written by `OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/self_supervised.py --sweep`. "
             "Importance normalised to mean 1 per segment (`mas.normalize = \"mean\"`); proximal "
             "penalty. k-NN probe, mean over the seeds. The configs use the lam with the highest ACC.", "",
             "| config | learner | lam | k-NN ACC % | k-NN forgetting % | events |",
             "|---|---|---|---|---|---|"]
    seeds = json.dumps(list(s.sweep_seeds))
    for name in s.configs:
        base, _ = _run(name, [f"experiment.seeds={seeds}", 'experiment.learners=["finetune"]'],
                       out / name / "finetune", fresh=s.fresh)
        lines.append(f"| {name} | finetune | - | {_cell([r['average_accuracy'] for r in base])} | "
                     f"{_cell([r['forgetting'] for r in base])} | 0 |")
        for lam in s.lams:
            rs, _ = _run(name, [f"experiment.seeds={seeds}",
                                'experiment.learners=["online-mas", "mas-oracle"]',
                                f"learner.online-mas.lam={lam}", f"learner.mas-oracle.lam={lam}"],
                         out / name / f"lam{lam}", fresh=s.fresh)
            for learner in ("online-mas", "mas-oracle"):
                mine = [r for r in rs if r["learner"] == learner]
                lines.append(f"| {name} | {learner} | {lam:g} | "
                             f"{_cell([r['average_accuracy'] for r in mine])} | "
                             f"{_cell([r['forgetting'] for r in mine])} | "
                             f"{sum(r['n_snapshots'] for r in mine) / len(mine):.1f} |")
            print("\n".join(lines[-2:]), flush=True)
    path = ROOT / s.results / "ssl_sweep.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", action="store_true", help="pick lam on seeds 100-101 instead")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="reported seeds (0-4)")
    parser.add_argument("--configs", nargs="+", default=None, choices=CONFIGS)
    parser.add_argument("--fresh", action="store_true", help="rerun from scratch (default: continue)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    s = Settings()
    if args.seeds:
        s.seeds = tuple(args.seeds)
    if args.configs:
        s.configs = tuple(args.configs)
    s.fresh = args.fresh
    start = time.perf_counter()
    (main_sweep if args.sweep else main_run)(s)
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
