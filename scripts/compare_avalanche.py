"""Avalanche's strategies on exactly the project's streams, beside our own learners.

Needs the optional extra Avalanche (``pip install avalanche-lib==0.6.0``, beside torch; kept out of
the project's own dependencies). Run from the repository root::

    python scripts/compare_avalanche.py                    # the six scenarios of scripts/compare.py
    python scripts/compare_avalanche.py --seeds 0 --strategies naive replay --scenarios permuted-digits

For each scenario (``configs/<scenario>.toml``) and seed, every segment of the project's stream
(each occurrence, on the recurring stream) becomes one Avalanche experience holding that
segment's batches in stream order (each config's passes x ``compare.PASSES_SCALE``, as
scripts/compare.py); Avalanche trains
one epoch over it without shuffling, with ``train_mb_size`` the stream's batch size, on the
project's model (same seed, same initial weights) and optimizer, and the task labels are all 0.
Avalanche is given the true boundaries (one experience per segment). After each experience the
model is evaluated on every segment's held-out set with the runner's own ``evaluate``.

Checks before anything is reported (the script stops if one fails):

- Avalanche's ``Naive`` reproduces the runner's ``finetune`` on the same seed to the last digit
  (identical accuracy matrices);
- the SI plugin's path integral is not zero. On CPU Avalanche 0.6's
  ``SynapticIntelligencePlugin.extract_weights`` stores ``param.detach().cpu().flatten()``, a view
  of the live parameter, so the integral is always zero; ``si`` here runs with that method
  replaced by one that stores a copy (:func:`copying_si`; the check shows the stock plugin's zero
  and the fixed one's non-zero value).

Each strategy's one hyperparameter (EWC, MAS, SI: ``lambda``; LwF: ``alpha``, temperature 2) is
chosen from a small grid (:class:`AvalancheConfig`) by ACC on a **validation split**, as
``scripts/compare.py`` does for our learners: the selection seeds (100 and 101: other permutations,
initial weights and sample orders than the reported seeds), evaluated on a stratified 20% of the training
data held out (``stream.validation``); the test data are never used to choose. MAS ``alpha=0.5``
and Replay's 200 samples are Avalanche's defaults. On the recurring stream, forgetting is
:func:`compare.stream_forgetting` (every segment but the last one trained) and BWT is not defined.
Writes ``results/compare_avalanche.md`` and ``.json``; the project's learners come from the run
directories of ``scripts/compare.py`` when they exist (``--ours``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from compare import LEARNERS, PASSES_SCALE, SCENARIOS, git_commit, stream_forgetting
from torch import Tensor, nn

from online_mas.experiment.configio import load_config
from online_mas.experiment.launch import run_experiment
from online_mas.experiment.models import build_model
from online_mas.experiment.record import matrix_metrics
from online_mas.experiment.report import write_results
from online_mas.experiment.run import build_optimizer, evaluate
from online_mas.experiment.rundir import continue_or_create, write_text
from streams import Stream, build_stream


@dataclass
class AvalancheConfig:
    scenarios: tuple[str, ...] = SCENARIOS  # configs/<name>.toml, as scripts/compare.py
    strategies: tuple[str, ...] = ("naive", "ewc", "mas", "si", "lwf", "replay")  # Avalanche's
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # reported seeds
    select_seeds: tuple[int, ...] = (100, 101)  # seeds the hyperparameters are chosen on
    validation: float = 0.2  # held-out share of the training data the selection runs evaluate on
    ewc_lambdas: tuple[float, ...] = (100.0, 1000.0, 10000.0)  # EWCPlugin ewc_lambda grid
    mas_lambdas: tuple[float, ...] = (0.01, 0.1, 1.0)  # MASPlugin lambda_reg grid
    mas_alpha: float = 0.5  # MASPlugin alpha (Avalanche's default)
    si_lambdas: tuple[float, ...] = (0.00001, 0.0001, 0.001)  # SynapticIntelligencePlugin si_lambda grid
    si_eps: float = 1e-7  # SI's damping xi (Avalanche's default)
    lwf_alphas: tuple[float, ...] = (1.0, 2.0, 4.0)  # LwFPlugin alpha grid
    lwf_temperature: float = 2.0  # LwFPlugin temperature (Avalanche's default)
    replay_size: int = 200  # ReplayPlugin mem_size (Avalanche's default)
    ours: str = "runs/compare"  # scripts/compare.py's run directories (read if present)
    runs: str = "runs/compare-avalanche"  # one JSON per Avalanche run; an existing one is reused
    results: str = "results/compare_avalanche"  # writes <results>.md and <results>.json


def segments(stream: Stream) -> list[tuple[Tensor, Tensor]]:
    """Each segment's batches, concatenated in stream order: one ``(x, y)`` per segment."""
    bounds = [0, *stream.change_points, len(stream)]
    out = []
    for a, b in itertools.pairwise(bounds):
        xs, ys = zip(*(stream.batch(i) for i in range(a, b)), strict=True)
        out.append((torch.cat(xs), torch.cat(ys)))
    return out


@contextlib.contextmanager
def copying_si(enabled: bool = True) -> Iterator[None]:
    """While active, Avalanche's SI stores a copy of the weights (stock: a view of them on CPU).

    The plugin calls ``SynapticIntelligencePlugin.extract_weights`` by its class name, so a
    subclass cannot override it: the static method is replaced for the duration, then restored.
    """
    from avalanche.training.plugins import SynapticIntelligencePlugin as SI

    stock = SI.__dict__["extract_weights"]

    @torch.no_grad()
    def extract_weights(model: nn.Module, target: Any, excluded_parameters: Any) -> None:
        for name, param in SI.allowed_parameters(model, excluded_parameters):
            target[name].data = param.detach().cpu().flatten().clone()

    if enabled:
        SI.extract_weights = staticmethod(extract_weights)
    try:
        yield
    finally:
        SI.extract_weights = stock


def grid(name: str, cfg: AvalancheConfig) -> tuple[float | None, ...]:
    """The values tried for a strategy's hyperparameter (``(None,)``: it has none)."""
    return {"ewc": cfg.ewc_lambdas, "mas": cfg.mas_lambdas, "si": cfg.si_lambdas,
            "lwf": cfg.lwf_alphas}.get(name, (None,))


def _plugins(name: str, cfg: AvalancheConfig, value: float | None) -> list[Any]:
    from avalanche.training.plugins import EWCPlugin, LwFPlugin, MASPlugin, ReplayPlugin

    if name == "naive":
        return []
    if name == "ewc":
        return [EWCPlugin(value, mode="separate")]
    if name == "mas":
        return [MASPlugin(lambda_reg=value, alpha=cfg.mas_alpha)]
    if name == "si":
        from avalanche.training.plugins import SynapticIntelligencePlugin

        return [SynapticIntelligencePlugin(si_lambda=value, eps=cfg.si_eps)]  # under copying_si()
    if name == "lwf":
        return [LwFPlugin(alpha=value, temperature=cfg.lwf_temperature)]
    if name == "replay":
        return [ReplayPlugin(mem_size=cfg.replay_size)]
    raise ValueError(f"unknown strategy {name!r}; allowed: naive, ewc, mas, si, lwf, replay")


def tensor_batches_naive(train: Sequence[tuple[Tensor, Tensor]]) -> type:
    """Avalanche's ``Naive`` whose training batches are cut from ``train``'s tensors, in order.

    Avalanche's own loader fetches every sample through its dataset classes (about 1 ms per step
    of 32 here); this one yields ``[x, y, task 0]`` slices of the experience's tensors, the same
    batches in the same order (Avalanche trains without shuffling here). Everything else (the
    plugins' hooks, EWC/MAS importance over the experience's dataset) is Avalanche's. Replay is
    not run on it: its plugin replaces the loader with its own.
    """
    from avalanche.training.supervised import Naive

    class TensorNaive(Naive):  # type: ignore[misc]
        def make_train_dataloader(self, *args: Any, **kwargs: Any) -> None:
            x, y = train[self.experience.current_experience]
            size = self.train_mb_size
            task = torch.zeros(len(y), dtype=torch.long)
            self.dataloader = [[x[i:i + size], y[i:i + size], task[i:i + size]]
                               for i in range(0, len(y), size)]

    return TensorNaive


def run_avalanche(scenario: str, seed: int, strategy: str, cfg: AvalancheConfig,
                  value: float | None = None, validation: float = 0.0) -> dict[str, Any]:
    """One Avalanche strategy on one seed's stream: the accuracy matrix and the time per step.

    ``validation > 0``: the stream evaluates on that share of the training data held out.
    """
    from avalanche.benchmarks.scenarios.deprecated.generic_benchmark_creation import (
        create_generic_benchmark_from_tensor_lists,
    )
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Naive

    config = load_config(Path("configs") / f"{scenario}.toml")
    stream = build_stream(dataclasses.replace(config.stream, seed=seed, validation=validation,
                                              passes=config.stream.passes * PASSES_SCALE))
    train = segments(stream)
    bench = create_generic_benchmark_from_tensor_lists(
        train_tensors=train, test_tensors=list(stream.eval_sets), task_labels=[0] * len(train))
    torch.manual_seed(seed)
    model = build_model(config.model, stream.input_shape, stream.n_classes)
    optimizer = build_optimizer(config.optim, model)
    plugins = _plugins(strategy, cfg, value)
    kind = Naive if strategy == "replay" else tensor_batches_naive(train)
    learner = kind(model, optimizer, nn.CrossEntropyLoss(), train_mb_size=stream.batch_size,
                    train_epochs=1, eval_mb_size=1024, plugins=plugins,
                    evaluator=EvaluationPlugin(loggers=[]), device="cpu")
    initial = evaluate(model, stream.eval_sets)
    rows = []
    start = time.perf_counter()
    for experience in bench.train_stream:
        learner.train(experience, shuffle=False)
        rows.append(evaluate(model, stream.eval_sets))
    seconds = time.perf_counter() - start
    metrics = matrix_metrics(rows, initial)
    order = list(stream.truth.order)
    return {"strategy": strategy, "seed": seed, "value": value, "validation": validation,
            "accuracy_matrix": rows, "initial": initial, "order": order,
            "average_accuracy": metrics["average_accuracy"],
            "forgetting": stream_forgetting(rows, order),
            "backward_transfer": metrics["backward_transfer"], "ms_per_step": 1000 * seconds / len(stream),
            "stored_samples": cfg.replay_size if strategy == "replay" else 0}


def check_naive(scenario: str, seed: int, cfg: AvalancheConfig, tmp: Path,
                ours_root: Path) -> tuple[dict[str, Any], str]:
    """Avalanche's Naive against the runner's finetune on the same seed (must be identical).

    The finetune run is read from ``ours_root`` (scripts/compare.py's runs) when it is there, else
    run now; returns the Naive run and where finetune came from.
    """
    summary = ours_root / scenario / "finetune" / f"seed{seed}" / "summary.json"
    if summary.is_file():
        ours, source = json.loads(summary.read_text())["accuracy_matrix"], "compare.py's run"
    else:
        path = Path("configs") / f"{scenario}.toml"
        passes = load_config(path).stream.passes * PASSES_SCALE
        config = load_config(path, [
            'experiment.learners=["finetune"]', f"experiment.seeds=[{seed}]", "run.plots=false",
            "run.progress=false", "run.checkpoint_every=0", f"stream.passes={float(passes)}"])
        run_dir, config = continue_or_create(config, tmp / f"{scenario}-finetune-{seed}", fresh=True)
        ours, source = run_experiment(config, run_dir)[0]["accuracy_matrix"], "run now"
    naive = cached_run(scenario, seed, "naive", cfg)
    if naive["accuracy_matrix"] != ours:
        sys.exit(f"Avalanche's Naive does not reproduce finetune on {scenario} seed {seed}: "
                 f"{naive['accuracy_matrix'][-1]} against {ours[-1]}")
    return naive, source


def si_integral(cfg: AvalancheConfig, *, fixed: bool) -> float:
    """Sum of SI's importance after two experiences of a tiny stream (stock or fixed plugin)."""
    from avalanche.benchmarks.scenarios.deprecated.generic_benchmark_creation import (
        create_generic_benchmark_from_tensor_lists,
    )
    from avalanche.training.plugins import EvaluationPlugin, SynapticIntelligencePlugin
    from avalanche.training.supervised import Naive

    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)) for _ in range(2)]
    bench = create_generic_benchmark_from_tensor_lists(train_tensors=data, test_tensors=data,
                                                       task_labels=[0, 0])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    plugin = SynapticIntelligencePlugin(si_lambda=1.0)
    learner = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                    train_mb_size=16, train_epochs=1, plugins=[plugin],
                    evaluator=EvaluationPlugin(loggers=[]), device="cpu")
    with copying_si(fixed):
        for experience in bench.train_stream:
            learner.train(experience, shuffle=False)
    return float(sum(float(w.data.sum()) for w in plugin.ewc_data[1].values()))


CACHE = {"read": 0, "ran": 0}  # Avalanche runs read from the cache, and run, by this call


def cached_run(scenario: str, seed: int, strategy: str, cfg: AvalancheConfig,
               value: float | None = None, validation: float = 0.0) -> dict[str, Any]:
    """:func:`run_avalanche`, read from ``cfg.runs`` when this run was done before."""
    tail = f"-validation{validation:g}" if validation else ""
    path = Path(cfg.runs) / scenario / f"{strategy}-{value}-seed{seed}{tail}.json"
    if path.is_file():
        CACHE["read"] += 1
        return dict(json.loads(path.read_text()))
    CACHE["ran"] += 1
    t0 = time.perf_counter()
    with copying_si(strategy == "si"):
        run = run_avalanche(scenario, seed, strategy, cfg, value, validation)
    print(f"  ran {scenario} {strategy} {value} seed {seed}{tail}: ACC {100 * run['average_accuracy']:.1f} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(run) + "\n")
    return run


def select(scenario: str, strategy: str, cfg: AvalancheConfig) -> tuple[float | None, dict[str, float]]:
    """The grid value with the best mean ACC on the selection seeds, and every value's mean."""
    values = grid(strategy, cfg)
    if len(values) == 1:
        return values[0], {}
    means = {}
    for value in values:
        accs = [cached_run(scenario, seed, strategy, cfg, value, cfg.validation)["average_accuracy"]
                for seed in cfg.select_seeds]
        means[str(value)] = sum(accs) / len(accs)
        print(f"  select {scenario} {strategy} {value}: validation ACC {100 * means[str(value)]:.1f}",
              flush=True)
    best = max(values, key=lambda v: means[str(v)])
    return best, means


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _cell(values: Sequence[float | None], scale: float, dec: int) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    mean, std = _mean_std(present)
    return f"{mean * scale:.{dec}f}" + (f" ± {std * scale:.{dec}f}" if std is not None and dec else "")


def _ours(root: Path, scenario: str, seeds: Sequence[int]) -> dict[str, list[dict[str, Any]]]:
    """scripts/compare.py's runs of ``scenario`` on ``seeds``, by learner (in its learner order)."""
    out: dict[str, list[dict[str, Any]]] = {}
    base = root / scenario
    if not base.is_dir():
        return out
    names = [n for n in LEARNERS if (base / n).is_dir()]
    names += sorted(p.name for p in base.iterdir() if p.is_dir() and p.name not in LEARNERS)
    for name in names:
        for seed in seeds:
            path = base / name / f"seed{seed}" / "summary.json"
            if path.is_file():
                s = json.loads(path.read_text())
                forgetting = s["forgetting"]
                if forgetting is None and s.get("accuracy_matrix"):
                    forgetting = stream_forgetting(s["accuracy_matrix"], s["order"])
                out.setdefault(s["learner"], []).append({
                    "seed": seed, "average_accuracy": s["average_accuracy"], "forgetting": forgetting,
                    "backward_transfer": s["backward_transfer"],
                    "stored_samples": s.get("stored_samples", 0),
                    "ms_per_step": 1000 / s["timing"]["steps_per_s"]})
    return out


def _diff(a: dict[int, float], b: dict[int, float]) -> str:
    """mean(a) - mean(b) in points, with the standard error of the per-seed differences.

    ``a`` and ``b`` map seeds to ACC; seed ``s`` of both is the same stream (samples, order, initial
    weights), so the differences are paired.

    Examples
    --------
    >>> _diff({0: 0.70, 1: 0.74}, {0: 0.69, 1: 0.71})
    '+2.0 (paired SE 1.0, 2 seeds)'
    """
    text = f"{100 * (_mean_std(list(a.values()))[0] - _mean_std(list(b.values()))[0]):+.1f}"
    common = sorted(set(a) & set(b))
    if len(common) > 1:
        sd = _mean_std([a[s] - b[s] for s in common])[1]
        text += f" (paired SE {100 * sd / math.sqrt(len(common)):.1f}, {len(common)} seeds)"  # type: ignore[operator]
    return text


def targets(ours: dict[str, dict[int, float]], theirs: dict[str, dict[int, float]]) -> list[str]:
    """The issue's two targets as differences of mean ACC (points), from what is present.

    ``ours`` and ``theirs`` map each learner to its ACC per seed.
    """
    parts = []
    mean = {k: _mean_std(list(v.values()))[0] for k, v in {**ours, **{f"av {n}": v for n, v in
                                                                    theirs.items()}}.items() if v}
    replay_ours = [k for k in ("mas+er", "tfcl") if k in mean]
    if replay_ours and "av replay" in mean:
        a = max(replay_ours, key=mean.__getitem__)
        parts.append(f"best of task-free mas+er, tfcl ({a}) - Avalanche replay (200 samples each, given "
                     f"the boundaries): {_diff(ours[a], theirs['replay'])}")
        if "er" in mean:
            parts.append(f"{a} - our er: {_diff(ours[a], ours['er'])}")
    free_ours = [k for k in ("online-mas", "mas+lwf") if k in mean]
    free_theirs = [k for k in ("ewc", "mas", "si", "lwf") if f"av {k}" in mean]
    if free_ours and free_theirs:
        a = max(free_ours, key=mean.__getitem__)
        b = max(free_theirs, key=lambda k: mean[f"av {k}"])
        parts.append(f"best task-free memory-free of ours ({a}) - best of Avalanche's EWC, MAS, SI, "
                     f"LwF ({b}): {_diff(ours[a], theirs[b])}")
    return parts


#: The headline table's rows: ``(label, stored samples, boundaries, candidates, ours)``; a row shows
#: the candidate with the best mean ACC (named when there is more than one).
HEADLINE = (
    ("task-free online MAS + replay (`mas+er`, `tfcl`)", "200", "task-free", ("mas+er", "tfcl"), True),
    ("Avalanche Replay", "200", "given", ("replay",), False),
    ("our `er`", "200", "task-free", ("er",), True),
    ("task-free, no samples (`online-mas`, `mas+lwf`)", "0", "task-free", ("online-mas", "mas+lwf"), True),
    ("Avalanche, no samples (best of EWC, MAS, SI, LwF)", "0", "given", ("ewc", "mas", "si", "lwf"), False),
)


def headline(scenarios: Sequence[str], ours: dict[str, dict[str, list[float]]],
             theirs: dict[str, dict[str, list[float]]]) -> str:
    """ACC % (mean ± std) per scenario of the best of each :data:`HEADLINE` row's candidates."""
    lines = ["| learner | stored samples | boundaries | " + " | ".join(scenarios) + " |",
             "|---|---|---|" + "---|" * len(scenarios)]
    for label, stored, bounds, names, mine in HEADLINE:
        cells = []
        for sc in scenarios:
            pool = (ours if mine else theirs).get(sc, {})
            present = [n for n in names if pool.get(n)]
            if not present:
                cells.append("n/a")
                continue
            best = max(present, key=lambda n: _mean_std(pool[n])[0])
            cell = _cell(pool[best], 100, 1)
            cells.append(cell + (f" ({best})" if len(names) > 1 else ""))
        lines.append(f"| {label} | {stored} | {bounds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    cfg = AvalancheConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", default=list(cfg.scenarios))
    parser.add_argument("--strategies", nargs="+", default=list(cfg.strategies))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(cfg.seeds))
    parser.add_argument("--select-seeds", nargs="+", type=int, default=list(cfg.select_seeds))
    parser.add_argument("--ours", default=cfg.ours)
    parser.add_argument("--runs", default=cfg.runs)
    parser.add_argument("--results", default=cfg.results)
    parser.add_argument("--tmp", default="runs/compare-avalanche-check")
    args = parser.parse_args()
    cfg = dataclasses.replace(cfg, scenarios=tuple(args.scenarios), strategies=tuple(args.strategies),
                              seeds=tuple(args.seeds), select_seeds=tuple(args.select_seeds),
                              runs=args.runs, ours=args.ours)
    try:
        import avalanche
    except ImportError:
        sys.exit("compare_avalanche.py needs Avalanche: pip install avalanche-lib==0.6.0")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)

    stock, fixed = si_integral(cfg, fixed=False), si_integral(cfg, fixed=True)
    print(f"SI importance after two tiny experiences: stock plugin {stock}, copying {fixed:.4g}")
    if not fixed > 0:
        sys.exit("the fixed SI plugin's importance is zero too; not reporting SI")
    start = time.perf_counter()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    checks: list[str] = []
    sources: set[str] = set()
    chosen: dict[str, dict[str, Any]] = {}
    for scenario in cfg.scenarios:
        results[scenario] = {}
        chosen[scenario] = {}
        for strategy in cfg.strategies:
            value, means = select(scenario, strategy, cfg)
            chosen[scenario][strategy] = {"value": value, "selection_acc": means}
        for seed in cfg.seeds:
            for strategy in cfg.strategies:
                t0 = time.perf_counter()
                if strategy == "naive":
                    run, source = check_naive(scenario, seed, cfg, Path(args.tmp), Path(args.ours))
                    checks.append(f"{scenario} seed {seed}")
                    sources.add(source)
                else:
                    run = cached_run(scenario, seed, strategy, cfg, chosen[scenario][strategy]["value"])
                results[scenario].setdefault(strategy, []).append(run)
                print(f"{scenario} seed {seed} {strategy}: ACC {100 * run['average_accuracy']:.1f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    seconds = time.perf_counter() - start

    edges = [f"{sc} {k}" for sc, c in chosen.items() for k, v in c.items()
             if v["value"] is not None and v["value"] in (min(grid(k, cfg)), max(grid(k, cfg)))]
    picked = "; ".join(f"{sc} " + ", ".join(f"{k} {v['value']:g}" for k, v in c.items()
                                          if v["value"] is not None) for sc, c in chosen.items())
    notes = []
    accs_ours: dict[str, dict[str, list[float]]] = {}
    accs_theirs: dict[str, dict[str, list[float]]] = {}
    for scenario in cfg.scenarios:
        accs_ours[scenario] = {k: [r["average_accuracy"] for r in v]
                               for k, v in _ours(Path(args.ours), scenario, cfg.seeds).items()}
        accs_theirs[scenario] = {k: [r["average_accuracy"] for r in v] for k, v in results[scenario].items()}
        ours = {k: {r["seed"]: r["average_accuracy"] for r in v}
                for k, v in _ours(Path(args.ours), scenario, cfg.seeds).items()}
        theirs = {k: {r["seed"]: r["average_accuracy"] for r in v} for k, v in results[scenario].items()}
        notes.append(f"- {scenario}: ACC points, " + "; ".join(targets(ours, theirs)))
    lines = ["| scenario | learner | seeds | ACC % | forgetting % | BWT % | stored samples | ms / step |",
             "|---|---|---|---|---|---|---|---|"]
    for scenario in cfg.scenarios:
        rows = {f"avalanche {k}": v for k, v in results[scenario].items()}
        rows.update(_ours(Path(args.ours), scenario, cfg.seeds))
        for name, runs in rows.items():
            lines.append(f"| {scenario} | {name} | {len(runs)} | "
                         + " | ".join(_cell([r.get(k) for r in runs], s, d) for k, s, d in (
                             ("average_accuracy", 100, 1), ("forgetting", 100, 1),
                             ("backward_transfer", 100, 1), ("stored_samples", 1, 0),
                             ("ms_per_step", 1, 2))) + " |")
    header = (f"Avalanche {avalanche.__version__} strategies on the project's streams (the scenarios of "
              f"results/compare.md: configs/<scenario>.toml, batch 32, MLP, SGD lr 0.05 momentum 0.9), "
              f"seeds {', '.join(map(str, cfg.seeds))}; Avalanche is given the true boundaries (one "
              f"experience per segment, per occurrence on the recurring stream), our task-free learners "
              f"are not. Avalanche's hyperparameters, chosen by validation ACC on seed(s) "
              f"{', '.join(map(str, cfg.select_seeds))} with {100 * cfg.validation:g}% of the training "
              f"data held out (never on the test data; EWC, MAS, SI: lambda; LwF: alpha, T "
              f"{cfg.lwf_temperature}; MAS alpha {cfg.mas_alpha}; Replay {cfg.replay_size} samples): "
              f"{picked}. Our learners' rows are read from scripts/compare.py's runs (their options "
              f"chosen the same way, results/compare.md). Forgetting on the recurring stream: every "
              f"segment but the last one trained; BWT n/a there. Chosen at an end of its grid "
              f"(a better value may lie outside): {', '.join(edges) or 'none'}. An ACC near 10% is a "
              f"diverged run (an explicit penalty too strong for SGD lr 0.05). Checks passed: "
              f"Naive reproduces the runner's finetune exactly, identical accuracy matrices, on every "
              f"pair ({len(checks)} pairs: {'; '.join(checks) or 'not run'}; finetune from "
              f"{' and '.join(sorted(sources)) or 'nowhere'}); SI's "
              f"importance on a tiny stream is {stock} with the stock plugin (its CPU bug) and "
              f"{fixed:.4g} with the copying extract_weights used here. Avalanche's strategies but Replay "
              f"train on batches cut from the experience's tensors (tensor_batches_naive: the same "
              f"batches, in the same order, as its loader; tested), Replay on its own loader; ms / step "
              f"is wall time per training step (Avalanche's includes its plugins' per-experience work "
              f"and, for Replay, its per-sample data loading); ours from the runner.")
    footer = (f"`python scripts/compare_avalanche.py --seeds {' '.join(map(str, cfg.seeds))} --select-seeds "
              f"{' '.join(map(str, cfg.select_seeds))}` on commit {git_commit()}: "
              f"{seconds:.0f} s wall ({CACHE['read']} Avalanche runs read from {cfg.runs}, "
              f"{CACHE['ran']} run now; the ms / step are those measured when each ran) on "
              f"{os.cpu_count()} cores (shared), 1 torch thread; torch "
              f"{torch.__version__}, Python {platform.python_version()}.")
    top = headline(cfg.scenarios, accs_ours, accs_theirs)
    text = (f"{header}\n\nHeadline, ACC % (the README's table):\n\n{top}\n\nAll rows:\n\n"
            + "\n".join(lines) + "\n\nThe issue's targets, differences of the means:\n\n"
            + "\n".join(notes) + f"\n\n{footer}\n")
    print("\n" + text)
    write_results(args.results, text, {"seeds": list(cfg.seeds), "si_check": {"stock": stock, "fixed": fixed},
                                       "naive_checks": checks, "chosen": chosen, "avalanche": results,
                                       "commit": git_commit(),
                                       "config": dataclasses.asdict(cfg)})
    print(f"wrote {args.results}.md and {args.results}.json")


if __name__ == "__main__":
    main()
