"""Our learners side by side on six digits and MNIST-1D streams: accuracy, forgetting, memory, time.

Run from the repository root::

    python scripts/compare.py --workers 2               # 6 scenarios x 9 learners x 5 seeds
    python scripts/compare.py --seeds 0 --select-seeds 100 --scenarios permuted-digits  # a quick look

Each scenario is ``configs/<scenario>.toml`` (permuted, rotated, split (domain-incremental) and
recurring digits, permuted and split (domain-incremental) MNIST-1D; batch 32, MLP, SGD lr 0.05
momentum 0.9), run with fine-tuning, task-free online MAS, MAS at the true boundaries and the
rehearsal and distillation learners (``er``, ``der``, ``lwf``, ``tfcl``, ``mas+er``, ``mas+lwf``).

Hyperparameters are chosen on a **validation split**, never on the reported test data: the selection
runs use ``stream.validation`` (a stratified 20% of the training data of every segment held out as
the evaluation sets; the test images are not in them) on the selection seeds (100 and 101: other
permutations, initial weights and sample orders than the reported seeds 0-4; two, because one picked
noisily: 5 of the 18 comparisons were missed with it, 3 with two), and the grid value with the best
mean validation ACC is used for the reported runs, which train on the full training data and are
evaluated on the test data. Stage 1 chooses online MAS's ``lam`` (x 1/3, 1, 3 around the config's),
MAS-at-boundaries' ``lam`` and LwF's weight; stage 2, at online MAS's chosen ``lam``, chooses whether
``tfcl``'s hard buffer shares its slots among detected segments (``eras``) and the distillation
weight and confidence exponent of ``mas+lwf``; stage 3 chooses the ``lam`` of each combination
(``mas+er``, ``tfcl``, ``mas+lwf``) among online MAS's chosen ``lam`` x 1/9, 1/3, 1, with its stage
2 options fixed (the x 1 runs are stage 2's, not run again). Weaker only: a combination's replay or
distillation term already holds part of what the penalty holds, so it may need less of it; a
stronger one is not tried (compute is scarce). Tuning ``lam`` after the other options costs 2 runs
per combination, scenario and selection seed (3 for ``mas+er``, whose x 1 had nothing to choose in
stage 2); a joint grid would cost 4 more for ``tfcl`` and 8 for ``mas+lwf``. ``er``, ``der`` and
fine-tuning keep the runner's defaults (200 stored samples, replay batch 32). The penalty form is
the config's.

Writes the selection runs under ``--out``/select and one run directory per scenario under
``--out`` (default ``runs/compare``; an existing one is continued, ``--fresh`` starts over), and the
tables to ``results/compare.md`` and ``results/compare.json``: mean ± sample standard deviation
over seeds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from online_mas.experiment.config import ExperimentConfig
from online_mas.experiment.configio import load_config
from online_mas.experiment.launch import run_units
from online_mas.experiment.report import write_experiment_summary, write_results
from online_mas.experiment.rundir import Unit, continue_or_create, units

SCENARIOS = ("permuted-digits", "rotated-digits", "split-digits-domain", "recurring-digits",
             "permuted-mnist1d", "split-mnist1d-domain")
LEARNERS = ("finetune", "online-mas", "mas-oracle", "er", "der", "lwf", "tfcl", "mas+er", "mas+lwf")
WITH_MAS = ("tfcl", "mas+er", "mas+lwf")  # take online-mas's penalty form; lam: x its chosen one
PASSES_SCALE = 0.5  # both scripts run each config's passes x this (compute is scarce): 10 -> 5, 6 -> 3


@dataclass
class CompareConfig:
    scenarios: tuple[str, ...] = SCENARIOS  # configs/<name>.toml
    learners: tuple[str, ...] = LEARNERS  # compared on the same streams and model
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # reported repeats; mean ± std over them
    select_seeds: tuple[int, ...] = (100, 101)  # the hyperparameters are chosen on these
    validation: float = 0.2  # held-out share of the training data the selection runs evaluate on
    lam_factors: tuple[float, ...] = (1 / 3, 1.0, 3.0)  # online-mas, mas-oracle: x the config's lam
    combo_lam_factors: tuple[float, ...] = (1 / 9, 1 / 3, 1.0)  # stage 3: x online-mas's chosen lam
    lwf_weights: tuple[float, ...] = (0.3, 1.0)  # lwf (true boundaries): distillation weight
    mas_lwf_weights: tuple[float, ...] = (0.3, 1.0)  # mas+lwf: distillation weight
    mas_lwf_confidence: tuple[float, ...] = (0.0, 4.0)  # mas+lwf: confidence exponent (0: plain LwF)
    tfcl_eras: tuple[bool, ...] = (True, False)  # tfcl: hard buffer shared among eras or not
    passes: float | None = None  # passes per segment; None: the configs' x PASSES_SCALE
    workers: int = 1  # parallel processes, 1 torch thread each
    out: str = "runs/compare"  # one run directory per scenario below this; selection in <out>/select
    results: str = "results/compare"  # writes <results>.md and <results>.json


#: ``(header, summary key, scale, decimals)`` of the table.
COLUMNS = (("ACC %", "average_accuracy", 100.0, 1), ("forgetting %", "forgetting", 100.0, 1),
           ("BWT %", "backward_transfer", 100.0, 1), ("stored samples", "stored_samples", 1.0, 0),
           ("ms / step", "ms_per_step", 1.0, 2), ("snapshots", "n_snapshots", 1.0, 1))


def stream_forgetting(rows: Sequence[Sequence[float]], order: Sequence[int]) -> float | None:
    """Mean forgetting of an accuracy matrix with one row per occurrence, in any order.

    For each segment but the last one trained (``order[-1]``): its best accuracy in the rows
    before the last, minus its final accuracy; averaged. On a square stream in order (each
    segment once) this is :func:`online_mas.metrics.forgetting`; on a recurring one it also
    covers the segments seen more than once. None with a single row.

    Examples
    --------
    >>> R = [[0.9, 0.1, 0.2], [0.7, 0.8, 0.3], [0.6, 0.5, 0.9]]
    >>> round(stream_forgetting(R, [0, 1, 2]), 4)
    0.3
    >>> round(stream_forgetting([[0.9, 0.1], [0.5, 0.8], [0.7, 0.4]], [0, 1, 0]), 4)  # only segment 1
    0.4
    """
    if len(rows) < 2:
        return None
    last = order[-1]
    drops = [max(r[j] for r in rows[:-1]) - rows[-1][j] for j in range(len(rows[-1])) if j != last]
    return sum(drops) / len(drops) if drops else None


def _value(summary: dict[str, Any], key: str) -> float | None:
    if key == "ms_per_step":
        rate = summary.get("timing", {}).get("steps_per_s")
        return 1000.0 / rate if rate else None
    if key == "stored_samples":
        return float(summary.get("stored_samples", 0))
    v = summary.get(key)
    if v is None and key == "forgetting" and summary.get("accuracy_matrix"):
        v = stream_forgetting(summary["accuracy_matrix"], summary["order"])
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None}
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": mean, "std": std}


def table(groups: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> tuple[str, dict[str, Any]]:
    """The markdown table and its numbers, one row per (scenario, learner)."""
    lines = ["| scenario | learner | seeds | " + " | ".join(c[0] for c in COLUMNS) + " |",
             "|" + "---|" * (3 + len(COLUMNS))]
    data: dict[str, Any] = {}
    for scenario, runs in groups:
        data[scenario] = {}
        for learner in dict.fromkeys(r["learner"] for r in runs):
            mine = [r for r in runs if r["learner"] == learner]
            cells, numbers = [], {}
            for _, key, scale, dec in COLUMNS:
                s = _stats([v for v in (_value(r, key) for r in mine) if v is not None])
                numbers[key] = s
                if s["mean"] is None:
                    cells.append("n/a")
                else:
                    text = f"{s['mean'] * scale:.{dec}f}"
                    if s["std"] is not None and key != "stored_samples":
                        text += f" ± {s['std'] * scale:.{dec}f}"
                    cells.append(text)
            data[scenario][learner] = {"n_runs": len(mine), **numbers}
            lines.append(f"| {scenario} | {learner} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines), data


def notes(data: dict[str, Any]) -> list[str]:
    """Differences in ACC (points) between learners that the issue's targets compare, per scenario."""
    out = []
    for scenario, rows in data.items():
        def acc(name: str, rows: dict[str, Any] = rows) -> float | None:
            row = rows.get(name)
            return None if row is None else row["average_accuracy"]["mean"]
        pairs = [("mas+er", "er"), ("mas+er", "der"), ("tfcl", "er"), ("mas+lwf", "online-mas"),
                 ("mas+lwf", "lwf")]
        parts = []
        for a, b in pairs:
            va, vb = acc(a), acc(b)
            if va is not None and vb is not None:
                parts.append(f"{a} - {b}: {100 * (va - vb):+.1f}")
        free = [(acc(n), n) for n in rows if rows[n]["stored_samples"]["mean"] == 0 and acc(n) is not None
                and n != "finetune"]
        if free:
            best = max(free)
            parts.append(f"best without stored samples: {best[1]} ({100 * best[0]:.1f})")  # type: ignore[operator]
        out.append(f"- {scenario}: ACC points, " + "; ".join(parts))
    return out


# ------------------------------------------------------------------------------ selection


def _num(v: float) -> float:
    return float(f"{v:.3g}")


def grid(learner: str, base: ExperimentConfig, cfg: CompareConfig,
         lam: float | None) -> list[dict[str, Any]]:
    """The option sets tried for ``learner`` in stage 1 or 2 (``[{}]``: nothing is chosen for it).

    ``lam`` is online MAS's chosen strength (stage 2 learners need it; None in stage 1): stage 2
    runs the combinations at that ``lam``; :func:`lam_grid` then chooses their own.
    """
    opts = base.learner
    if learner == "online-mas":
        return [{"lam": _num(opts.online_mas.lam * f)} for f in cfg.lam_factors]
    if learner == "mas-oracle":
        return [{"lam": _num(opts.mas_oracle.lam * f)} for f in cfg.lam_factors]
    if learner == "lwf":
        return [{"weight": w} for w in cfg.lwf_weights]
    if learner in WITH_MAS and lam is None:
        raise ValueError(f"{learner} is chosen in stage 2, after online-mas's lam")
    lam = _num(lam)  # type: ignore[arg-type]
    if learner == "mas+er":
        return [{"lam": lam}]
    if learner == "tfcl":
        return [{"lam": lam, "eras": e} for e in cfg.tfcl_eras]
    if learner == "mas+lwf":
        return [{"lam": lam, "weight": w, "confidence": c}
                for w, c in itertools.product(cfg.mas_lwf_weights, cfg.mas_lwf_confidence)]
    return [{}]


def lam_grid(learner: str, cfg: CompareConfig, lam: float,
             options: dict[str, Any]) -> list[dict[str, Any]]:
    """Stage 3: ``options`` (a combination's stage 2 choice) with ``lam`` x each combo_lam_factors.

    Examples
    --------
    >>> lam_grid("tfcl", CompareConfig(), 0.09, {"lam": 0.09, "eras": False})
    [{'lam': 0.01, 'eras': False}, {'lam': 0.03, 'eras': False}, {'lam': 0.09, 'eras': False}]
    """
    if learner not in WITH_MAS:
        raise ValueError(f"stage 3 chooses the lam of {', '.join(WITH_MAS)}, not of {learner!r}")
    return [{**options, "lam": _num(lam * f)} for f in cfg.combo_lam_factors]


def _label(options: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items()) or "defaults"


def _sets(learner: str, options: dict[str, Any]) -> list[str]:
    return [f"learner.{learner}.{k}={json.dumps(v)}" for k, v in options.items()]


def _common(base: ExperimentConfig, cfg: CompareConfig, workers: int) -> list[str]:
    mas = base.learner.online_mas
    passes = base.stream.passes * PASSES_SCALE if cfg.passes is None else cfg.passes
    return ["run.plots=false", "run.checkpoint_every=0", "run.progress=false", f"run.workers={workers}",
            "run.eval_every=0", f"stream.passes={float(passes)}",
            *[f"learner.{n}.penalty={json.dumps(mas.penalty)}" for n in WITH_MAS]]


def _base(scenario: str) -> tuple[Path, ExperimentConfig]:
    path = Path("configs") / f"{scenario}.toml"
    return path, load_config(path)


Selection = dict[str, dict[str, list[dict[str, Any]]]]  # scenario -> learner -> rows


def run_selection(cfg: CompareConfig, stage: Sequence[str],
                  options_of: Callable[[str, str, ExperimentConfig], list[dict[str, Any]]],
                  fresh: bool, done: Selection | None = None) -> Selection:
    """Run every grid value of ``stage``'s learners on the selection seeds and validation split.

    ``options_of(scenario, learner, base config)`` is the learner's grid. Returns, per scenario and
    learner, ``[{"options", "acc": [per seed], "mean"}]`` in grid order; a grid of one value is not
    run (``acc`` empty, ``mean`` None); an option set that ``done`` holds with a result is taken
    from it, not run again.
    """
    jobs: list[tuple[ExperimentConfig, Unit]] = []
    pending: list[tuple[dict[str, Any], Path]] = []  # rows to fill from the runs, and their directory
    out: Selection = {}
    for scenario in cfg.scenarios:
        path, base = _base(scenario)
        for learner in stage:
            if learner not in cfg.learners:
                continue
            options_list = options_of(scenario, learner, base)
            if options_list == [{}]:
                continue
            rows = out.setdefault(scenario, {}).setdefault(learner, [])
            if len(options_list) == 1:
                rows.append({"options": options_list[0], "acc": [], "mean": None})
                continue
            known = {json.dumps(r["options"]): r for r in (done or {}).get(scenario, {}).get(learner, [])
                     if r["mean"] is not None}
            for options in options_list:
                if json.dumps(options) in known:
                    rows.append(known[json.dumps(options)])
                    continue
                sets = [*_common(base, cfg, cfg.workers), f'experiment.learners=["{learner}"]',
                        f"experiment.seeds={json.dumps(list(cfg.select_seeds))}",
                        f"stream.validation={cfg.validation}", *_sets(learner, options)]
                config = load_config(path, sets)
                where = Path(cfg.out) / "select" / scenario / f"{learner}-{_label(options)}"
                run_dir, config = continue_or_create(config, where, fresh=fresh)
                row: dict[str, Any] = {"options": options, "acc": [], "mean": None}
                rows.append(row)
                pending.append((row, run_dir))
                jobs.extend((config, u) for u in units(config, run_dir))
    if not jobs:
        return out
    start = time.perf_counter()
    print(f"selection: {len(jobs)} runs of {', '.join(stage)} on seeds "
          f"{', '.join(map(str, cfg.select_seeds))} (validation {cfg.validation:g})", flush=True)
    results = run_units(jobs, workers=cfg.workers, progress=False)
    print(f"selection of {', '.join(stage)}: {time.perf_counter() - start:.0f} s", flush=True)
    for row, run_dir in pending:
        row["acc"] = [r["average_accuracy"] for (_, u), r in zip(jobs, results, strict=True)
                      if u.path.is_relative_to(run_dir)]
        row["mean"] = sum(row["acc"]) / len(row["acc"])
    for scenario, by in out.items():
        for learner, rows in by.items():
            for row in rows:
                if row["mean"] is not None:
                    print(f"  {scenario} {learner} {_label(row['options'])}: validation ACC "
                          f"{100 * row['mean']:.1f}", flush=True)
    return out


def select(cfg: CompareConfig, fresh: bool) -> Selection:
    """The three stages of the selection (the module's docstring); every row carries its ``stage``.

    A combination's rows are its stage 2 runs followed by its stage 3 runs at the other lams.
    """
    stage1 = run_selection(cfg, ("online-mas", "mas-oracle", "lwf"),
                           lambda sc, ln, base: grid(ln, base, cfg, None), fresh)
    lams: dict[str, float] = {}
    for scenario in cfg.scenarios:
        lam = chosen_options(stage1).get(scenario, {}).get("online-mas", {}).get("lam")
        lams[scenario] = lam if lam is not None else _base(scenario)[1].learner.online_mas.lam
    stage2 = run_selection(cfg, WITH_MAS, lambda sc, ln, base: grid(ln, base, cfg, lams[sc]), fresh)
    picked = chosen_options(stage2)
    stage3 = run_selection(cfg, WITH_MAS, lambda sc, ln, base: lam_grid(ln, cfg, lams[sc], picked[sc][ln]),
                           fresh, done=stage2)
    selection: Selection = {}
    for number, stage in enumerate((stage1, stage2, stage3), start=1):
        for scenario, by in stage.items():
            for learner, rows in by.items():
                mine = selection.setdefault(scenario, {}).setdefault(learner, [])
                if any(r["mean"] is not None for r in rows):  # a stage 3 grid replaces a stage 2 "not run"
                    mine[:] = [r for r in mine if r["mean"] is not None]
                for row in rows:
                    row.setdefault("stage", number)
                    if all(r is not row for r in mine):
                        mine.append(row)
    return selection


def chosen_options(selection: Selection) -> dict[str, dict[str, Any]]:
    """Per scenario and learner, the options with the best mean validation ACC (first on ties)."""
    return {sc: {ln: max(rows, key=lambda r: -math.inf if r["mean"] is None else r["mean"])["options"]
                 for ln, rows in by.items()} for sc, by in selection.items()}


def selection_table(selection: Selection) -> str:
    lines = ["| scenario | learner | stage | options | validation ACC % (per seed) | chosen |",
             "|---|---|---|---|---|---|"]
    best = chosen_options(selection)
    for scenario, by in selection.items():
        for learner, rows in by.items():
            for r in rows:
                stage = r.get("stage", "")
                if r["mean"] is None:
                    lines.append(f"| {scenario} | {learner} | {stage} | {_label(r['options'])} | not run "
                                 f"(the only value) | yes |")
                    continue
                seeds = ", ".join(f"{100 * a:.1f}" for a in r["acc"])
                mark = "yes" if r["options"] == best[scenario][learner] else ""
                lines.append(f"| {scenario} | {learner} | {stage} | {_label(r['options'])} | "
                             f"{100 * r['mean']:.1f} ({seeds}) | {mark} |")
    return "\n".join(lines)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def timing(cfg: CompareConfig, scenario: str, rounds: int,
           passes: float) -> tuple[str, dict[str, list[float]]]:
    """ms per training step of every learner, interleaved: ``rounds`` rounds, each learner once per round.

    Each round runs every learner for one seed-0 run of ``scenario`` at ``passes`` passes per
    segment (the chosen options of results/compare.json when it is there, else the configs'), in a
    rotated order, one process, 1 thread; the median over rounds and its ratio to fine-tuning's
    median are reported. The machine's load moves both alike, so the ratio is what to read.
    """
    path, base = _base(scenario)
    saved = Path(f"{cfg.results}.json")
    chosen = json.loads(saved.read_text()).get("chosen", {}).get(scenario, {}) if saved.is_file() else {}
    per: dict[str, list[float]] = {n: [] for n in cfg.learners}
    for r in range(rounds):
        order = list(cfg.learners[r % len(cfg.learners):]) + list(cfg.learners[: r % len(cfg.learners)])
        for learner in order:
            sets = [*_common(base, cfg, 1), f'experiment.learners=["{learner}"]', "experiment.seeds=[0]",
                    f"stream.passes={float(passes)}", *_sets(learner, chosen.get(learner, {}))]
            config = load_config(path, sets)
            run_dir, config = continue_or_create(config, Path(cfg.out) / "timing" / f"{learner}-{r}",
                                                 fresh=True)
            summary = run_units([(config, u) for u in units(config, run_dir)], progress=False)[0]
            per[learner].append(1000.0 / summary["timing"]["steps_per_s"])
    med = {n: sorted(v)[len(v) // 2] for n, v in per.items()}
    ref = med.get("finetune")
    lines = ["| learner | ms / step (median) | x finetune | rounds |", "|---|---|---|---|"]
    for n, v in med.items():
        ratio = f"{v / ref:.2f}" if ref else "n/a"
        lines.append(f"| {n} | {v:.2f} | {ratio} | {', '.join(f'{t:.2f}' for t in per[n])} |")
    return "\n".join(lines), per


def main() -> None:
    cfg = CompareConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", default=list(cfg.scenarios))
    parser.add_argument("--learners", nargs="+", default=list(cfg.learners))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(cfg.seeds))
    parser.add_argument("--select-seeds", nargs="+", type=int, default=list(cfg.select_seeds))
    parser.add_argument("--passes", type=float, default=None,
                        help="passes per segment (default: the configs')")
    parser.add_argument("--workers", type=int, default=cfg.workers)
    parser.add_argument("--out", default=cfg.out)
    parser.add_argument("--results", default=cfg.results)
    parser.add_argument("--fresh", action="store_true", help="replace existing run directories")
    parser.add_argument("--timing", type=int, default=0, metavar="ROUNDS",
                        help="only time the learners: ROUNDS interleaved rounds on --scenarios' first, "
                             "1 pass per segment; writes <results>_timing.md")
    args = parser.parse_args()
    cfg = CompareConfig(scenarios=tuple(args.scenarios), learners=tuple(args.learners),
                        seeds=tuple(args.seeds), select_seeds=tuple(args.select_seeds),
                        passes=args.passes, workers=args.workers, out=args.out, results=args.results)
    torch.set_num_threads(1)
    if args.timing:
        t0 = time.perf_counter()
        scenario = cfg.scenarios[0]
        body, per = timing(cfg, scenario, args.timing, passes=1.0)
        text = (f"Time per training step of each learner on {scenario} (1 pass per segment, seed 0, the "
                f"options chosen in results/compare.md), {args.timing} interleaved rounds in one process, "
                f"1 torch thread, on a shared {os.cpu_count()}-core machine: the median, and its ratio to "
                f"fine-tuning's (the ratio is what the load moves least). A replay step trains on the "
                f"stream's batch plus 32 replayed samples (der: plus two replay batches).\n\n{body}\n\n"
                f"`python scripts/compare.py --timing {args.timing} --scenarios {scenario}` on commit "
                f"{git_commit()}: {time.perf_counter() - t0:.0f} s wall; torch {torch.__version__}.\n")
        print(text)
        write_results(f"{cfg.results}_timing", text, {"scenario": scenario, "rounds": args.timing,
                                                      "ms_per_step": per, "commit": git_commit()})
        print(f"wrote {cfg.results}_timing.md")
        return
    start = time.perf_counter()

    selection = select(cfg, args.fresh)
    chosen = chosen_options(selection)
    select_seconds = time.perf_counter() - start

    experiments = []
    for scenario in cfg.scenarios:
        path, base = _base(scenario)
        sets = [*_common(base, cfg, cfg.workers), f"experiment.learners={json.dumps(list(cfg.learners))}",
                f"experiment.seeds={json.dumps(list(cfg.seeds))}"]
        sets += [s for ln, opts in chosen.get(scenario, {}).items() for s in _sets(ln, opts)]
        config = load_config(path, sets)
        run_dir, config = continue_or_create(config, Path(cfg.out) / scenario, fresh=args.fresh)
        experiments.append((scenario, run_dir, config))
    jobs = [(config, u) for _, run_dir, config in experiments for u in units(config, run_dir)]
    cached = sum((u.path / "summary.json").is_file() for _, u in jobs)
    print(f"{len(jobs)} runs ({len(cfg.scenarios)} scenarios x {len(cfg.learners)} learners x "
          f"{len(cfg.seeds)} seeds; {cached} already complete) on {cfg.workers} worker(s)", flush=True)
    t0 = time.perf_counter()
    results = run_units(jobs, workers=cfg.workers, progress=True)
    report_seconds = time.perf_counter() - t0

    groups = []
    for scenario, run_dir, config in experiments:
        mine = [r for (_, u), r in zip(jobs, results, strict=True) if u.path.is_relative_to(run_dir)]
        write_experiment_summary(run_dir, config, mine)
        groups.append((scenario, mine))
    text_table, data = table(groups)
    seeds = ", ".join(map(str, cfg.seeds))
    header = (f"Six streams (configs/<scenario>.toml): permuted, rotated, split (domain-incremental, "
              f"2-way head) and recurring (5 permutations in the order A B A C B D ..., 9 occurrences) "
              f"digits, MLP 64-100-100-10; permuted and split (domain-incremental) MNIST-1D, MLP "
              f"40-100-100-10; each config's passes x {PASSES_SCALE:g} (digits 5 passes per segment, "
              f"MNIST-1D 3: compute is scarce); batch 32, SGD lr 0.05 "
              f"momentum 0.9; mean ± std over seeds {seeds}. ACC: average final test accuracy over "
              f"the segments; forgetting: mean drop from the best earlier accuracy (on the recurring "
              f"stream over every segment but the last one trained); BWT: backward transfer (n/a "
              f"when a segment recurs); stored samples: what the learner's memory holds at the end "
              f"(a replay step also trains on 32 replayed samples: two batches of 32 for der); "
              f"ms / step: wall time per training step, 1 torch thread; snapshots: consolidations "
              f"(lwf: teacher refreshes). Task-free (never see the boundaries): finetune, online-mas, "
              f"er, der, tfcl, mas+er, mas+lwf; mas-oracle and lwf use the true boundaries.")
    chosen_text = "; ".join(f"{sc}: " + ", ".join(f"{ln} {_label(o)}" for ln, o in by.items())
                            for sc, by in chosen.items())
    selection_note = (f"Hyperparameters chosen on a validation split (never on the test data): "
                      f"seeds {', '.join(map(str, cfg.select_seeds))}, evaluated on a stratified "
                      f"{100 * cfg.validation:g}% of every segment's training data held out "
                      f"(stream.validation = {cfg.validation:g}); best mean validation ACC. Chosen: "
                      f"{chosen_text}. Stages: 1 online-mas's lam (x 1/3, 1, 3 the config's), "
                      f"mas-oracle's lam, lwf's weight; 2, at online-mas's chosen lam, tfcl's eras and "
                      f"mas+lwf's weight and confidence; 3 the lam of mas+er, tfcl and mas+lwf, x "
                      f"{', '.join(f'{f:.3g}' for f in cfg.combo_lam_factors)} online-mas's chosen one, "
                      f"their stage 2 options fixed. er, der and finetune keep the runner's defaults. "
                      f"Penalty form: online-mas's from the config for every MAS combination.")
    run_seconds = sum(float(r["timing"]["wall_time_s"]) for r in results)
    passes = "" if cfg.passes is None else f" --passes {cfg.passes:g}"
    footer = (f"`python scripts/compare.py --workers {cfg.workers} --seeds {' '.join(map(str, cfg.seeds))} "
              f"--select-seeds {' '.join(map(str, cfg.select_seeds))}{passes}` on commit {git_commit()}: "
              f"selection {select_seconds:.0f} s wall, "
              f"{len(jobs)} reported runs ({run_seconds:.0f} s of training; {len(jobs) - cached} "
              f"run now in {report_seconds:.0f} s wall) on {os.cpu_count()} cores (shared), "
              f"{cfg.workers} worker(s) x 1 torch thread; torch {torch.__version__}, Python "
              f"{platform.python_version()}. Timings are from a shared machine and only comparable "
              f"within this table.")
    if cached:
        footer += f" {cached} reported runs were read from an earlier call (--fresh recomputes them)."
    others = ("Avalanche's strategies on the same streams, with the same selection protocol, are in "
              "results/compare_avalanche.md (scripts/compare_avalanche.py).")
    if cfg.passes is not None:
        header += f" Every stream here runs {cfg.passes:g} passes per segment (--passes), not the configs'."
    text = (f"{header}\n\n{selection_note}\n\n{text_table}\n\nDifferences of the means:\n\n"
            + "\n".join(notes(data)) + f"\n\n{others}\n\n## Selection runs (validation split)\n\n"
            + selection_table(selection) + f"\n\n{footer}\n")
    print("\n" + text)
    write_results(cfg.results, text, {"seeds": list(cfg.seeds), "select_seeds": list(cfg.select_seeds),
                                      "validation": cfg.validation, "learners": list(cfg.learners),
                                      "chosen": chosen, "selection": selection,
                                      "select_seconds": select_seconds, "report_seconds": report_seconds,
                                      "workers": cfg.workers, "runs_computed": len(jobs) - cached,
                                      "runs_read": cached, "commit": git_commit(), "table": data})
    print(f"wrote {cfg.results}.md and {cfg.results}.json; runs in {cfg.out}/")


if __name__ == "__main__":
    main()
