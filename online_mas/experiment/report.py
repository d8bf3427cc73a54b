"""Tables across runs: mean and standard deviation over seeds, per learner and experiment.

``online-mas report RUN_DIR...`` reads the ``summary.json`` of every complete (learner, seed) run
in each directory, redraws its plots, draws the comparison figures across learners and seeds
(``comparison-*.png``, see :func:`~online_mas.experiment.comparison_plots.plot_comparison`) and prints one
comparison table. The same functions write a
run directory's ``summary.json`` and ``comparison.md`` at the end of ``online-mas run``.

Standard deviations are sample standard deviations (``ddof=1``) over seeds; with one seed only the
mean is shown. Accuracies are in percent. ``n/a`` marks a metric that is undefined for that learner
(joint training has no backward transfer, forgetting or continual-evaluation metrics; detection
scores exist only for the task-free learner). The continual-evaluation columns (anytime accuracy,
min-ACC, WC-ACC, recovery) come from every evaluation of the run (``run.eval_every``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from online_mas.experiment.comparison_plots import plot_comparison
from online_mas.experiment.config import ExperimentConfig
from online_mas.experiment.plots import draw_unit_plots
from online_mas.experiment.record import TIMING_KEY
from online_mas.experiment.rundir import RunDirError, open_run_dir, read_summary, units, write_text

__all__ = ["COLUMNS", "aggregate", "comparison_table", "final_accuracy_table", "load_results",
           "report_runs", "write_experiment_summary", "write_results"]

#: ``(header, how to read it from a run summary, scale, decimals)`` of the comparison table.
COLUMNS: tuple[tuple[str, str, float, int], ...] = (
    ("ACC %", "average_accuracy", 100.0, 1),
    ("BWT %", "backward_transfer", 100.0, 1),
    ("forgetting %", "forgetting", 100.0, 1),
    ("FWT %", "forward_transfer", 100.0, 1),
    ("prequential %", "prequential_accuracy", 100.0, 1),
    ("anytime %", "anytime_accuracy.all", 100.0, 1),
    ("anytime seen %", "anytime_accuracy.seen", 100.0, 1),
    ("min-ACC %", "min_accuracy", 100.0, 1),
    ("WC-ACC %", "wc_accuracy", 100.0, 1),
    ("recovery (steps)", "recovery_steps.mean", 1.0, 0),
    ("not recovered", "recovery_steps.not_recovered", 1.0, 1),
    ("snapshots", "n_snapshots", 1.0, 1),
    ("detection F1", "detection.f1", 1.0, 2),
    ("delay (batches)", "detection.mean_delay", 1.0, 1),
    ("samples/s", f"{TIMING_KEY}.samples_per_s", 1.0, 0),
)


def _get(summary: dict[str, Any], key: str) -> float | None:
    value: Any = summary
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def aggregate(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per learner: the number of runs, and mean, std (ddof=1) and count of every column.

    A column's count leaves out runs where it is undefined (``None``).

    Examples
    --------
    >>> runs = [{"learner": "a", "average_accuracy": 0.5}, {"learner": "a", "average_accuracy": 0.7}]
    >>> agg = aggregate(runs)["a"]
    >>> acc = agg["metrics"]["average_accuracy"]
    >>> agg["n_runs"], round(acc["mean"], 4), round(acc["std"], 4), acc["n"]
    (2, 0.6, 0.1414, 2)
    """
    out: dict[str, dict[str, Any]] = {}
    for learner in dict.fromkeys(r["learner"] for r in results):
        mine = [r for r in results if r["learner"] == learner]
        stats: dict[str, dict[str, float | int | None]] = {}
        for _, key, _, _ in COLUMNS:
            values = [v for v in (_get(r, key) for r in mine) if v is not None]
            mean = sum(values) / len(values) if values else None
            std = None
            if len(values) > 1 and mean is not None:
                std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
            stats[key] = {"mean": mean, "std": std, "n": len(values)}
        out[learner] = {"n_runs": len(mine), "metrics": stats}
    return out


def _cell(stat: dict[str, Any], scale: float, decimals: int) -> str:
    if stat["mean"] is None:
        return "n/a"
    text = f"{stat['mean'] * scale:.{decimals}f}"
    if stat["std"] is not None:
        text += f" ± {stat['std'] * scale:.{decimals}f}"
    return text


def comparison_table(groups: Sequence[tuple[str, Sequence[dict[str, Any]]]], *,
                     columns: Sequence[str] | None = None) -> str:
    """A markdown table, one row per (experiment, learner), mean ± std over seeds.

    Parameters
    ----------
    groups
        ``(experiment label, run summaries)`` pairs.
    columns
        Headers of :data:`COLUMNS` to show (default: all).

    Examples
    --------
    >>> runs = [{"learner": "finetune", "seed": s, "average_accuracy": a, "n_snapshots": 0}
    ...         for s, a in enumerate([0.3, 0.4])]
    >>> print(comparison_table([("digits", runs)], columns=["ACC %", "snapshots"]))
    | experiment | learner | seeds | ACC % | snapshots |
    |---|---|---|---|---|
    | digits | finetune | 2 | 35.0 ± 7.1 | 0.0 ± 0.0 |
    """
    cols = [c for c in COLUMNS if columns is None or c[0] in columns]
    lines = ["| experiment | learner | seeds | " + " | ".join(c[0] for c in cols) + " |",
             "|" + "---|" * (3 + len(cols))]
    for label, results in groups:
        for learner, agg in aggregate(results).items():
            cells = [_cell(agg["metrics"][key], scale, dec) for _, key, scale, dec in cols]
            lines.append(f"| {label} | {learner} | {agg['n_runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def final_accuracy_table(results: Sequence[dict[str, Any]]) -> str:
    """Accuracy on every segment at the end of the stream, per learner (mean over seeds), in %.

    Columns are named by the summaries' ``segment_names`` if they have them.

    Examples
    --------
    >>> runs = [{"learner": "finetune", "final_accuracy": [0.2, 0.9]},
    ...         {"learner": "online-mas", "final_accuracy": [0.7, 0.85]}]
    >>> print(final_accuracy_table(runs))
    | learner | segment 0 | segment 1 | mean |
    |---|---|---|---|
    | finetune | 20.0 | 90.0 | 55.0 |
    | online-mas | 70.0 | 85.0 | 77.5 |
    """
    rows = [r for r in results if r.get("final_accuracy")]
    if not rows:
        return ""
    k = len(rows[0]["final_accuracy"])
    names = rows[0].get("segment_names") or [f"segment {j}" for j in range(k)]
    lines = ["| learner | " + " | ".join(names) + " | mean |",
             "|" + "---|" * (k + 2)]
    for learner in dict.fromkeys(r["learner"] for r in rows):
        mine = [r["final_accuracy"] for r in rows if r["learner"] == learner]
        means = [sum(a[j] for a in mine) / len(mine) for j in range(k)]
        cells = [f"{100 * m:.1f}" for m in [*means, sum(means) / k]]
        lines.append(f"| {learner} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_experiment_summary(run_dir: str | Path, config: ExperimentConfig,
                             results: Sequence[dict[str, Any]]) -> Path:
    """Write ``summary.json`` (every run, and mean/std per learner) and ``comparison.md``."""
    root = Path(run_dir)
    slim = [{k: v for k, v in r.items()
             if k not in ("events", "importance", "accuracy_matrix", "accuracy_curve")}
            for r in results]
    data = {"name": config.experiment.name, "stream": config.stream.name,
            "learners": list(config.experiment.learners), "seeds": list(config.experiment.seeds),
            "aggregate": aggregate(results), "runs": slim}
    write_text(root / "summary.json", json.dumps(data, indent=1) + "\n")
    text = (f"# {config.experiment.name}\n\nFinal accuracy on each segment (mean over seeds):\n\n"
            f"{final_accuracy_table(results)}\n\nComparison (mean ± std over seeds):\n\n"
            f"{comparison_table([(config.experiment.name, results)])}\n")
    write_text(root / "comparison.md", text)
    return root / "summary.json"


def load_results(run_dir: str | Path) -> tuple[ExperimentConfig, list[dict[str, Any]], list[str]]:
    """The config of a run directory, the summaries of its complete runs, and notes on the rest."""
    config = open_run_dir(run_dir)
    if config.experiment.kind == "adapt":
        raise RunDirError(f"{run_dir} is an experiment of kind 'adapt': its table is in "
                          f"{run_dir}/table.md and its results in {run_dir}/summary.json")
    results, notes = [], []
    for unit in units(config, run_dir):
        path = unit.path / "summary.json"
        if path.is_file():
            results.append(read_summary(path))
        else:
            state = "interrupted (resume it)" if (unit.path / "checkpoint.pt").is_file() else "not run"
            notes.append(f"{run_dir}: {unit.learner} seed {unit.seed}: {state}")
    return config, results, notes


def report_runs(run_dirs: Sequence[str | Path], *, plots: bool = True,
                out: str | Path | None = None) -> str:
    """The comparison table of several run directories (plots redrawn unless ``plots=False``).

    With plots, the comparison figures of all the runs go to ``out`` (default: the first run
    directory); with several directories each learner is labelled by its experiment too (in the
    figures by the experiment's name, or the folder's name where two experiments share one).

    Raises
    ------
    RunDirError, ConfigError
        A directory is not an online-mas run.
    """
    groups, notes, finals = [], [], []
    everything: list[dict[str, Any]] = []
    loaded = [(run_dir, *load_results(run_dir)) for run_dir in run_dirs]
    short = _short_labels([(str(d), c.experiment.name) for d, c, _, _ in loaded])
    for run_dir, config, results, missing in loaded:
        notes += missing
        if plots:
            done = {(r["learner"], r["seed"]) for r in results}
            for unit in units(config, run_dir):
                if (unit.learner, unit.seed) in done:
                    draw_unit_plots(unit.path)
        label = config.experiment.name if len(run_dirs) == 1 else f"{config.experiment.name} ({run_dir})"
        groups.append((label, results))
        everything += [{**r, "group": short[str(run_dir)]} if len(run_dirs) > 1 else r for r in results]
        finals.append(f"{label}: final accuracy on each segment (mean over seeds)\n\n"
                      f"{final_accuracy_table(results)}")
    text = "\n\n".join([*finals, "Comparison (mean ± std over seeds)\n\n" + comparison_table(groups)])
    if plots and everything:
        title = groups[0][0] if len(groups) == 1 else ""
        written = plot_comparison(everything, out if out is not None else run_dirs[0], title=title)
        text += "\n\nComparison figures: " + ", ".join(str(p) for p in written)
    if notes:
        text += "\n\nIncomplete runs:\n" + "\n".join(f"- {n}" for n in notes)
    return text


def _short_labels(dirs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """A short figure label per run directory: its experiment's name, else its folder's name.

    Examples
    --------
    >>> _short_labels([("runs/a", "digits"), ("runs/b", "digits"), ("x/c", "split")])
    {'runs/a': 'a', 'runs/b': 'b', 'x/c': 'split'}
    """
    names = [name for _, name in dirs]
    out = {d: name if names.count(name) == 1 else Path(d).name for d, name in dirs}
    if len(set(out.values())) < len(out):
        return {d: d for d, _ in dirs}
    return out


def write_results(stem: str | Path, text: str, data: dict[str, Any]) -> None:
    """A script's results: ``<stem>.md`` (the printed text) and ``<stem>.json`` (the numbers).

    Each file is written atomically, so an interrupted script leaves the previous results whole.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_text(stem.with_name(stem.name + ".md"), text if text.endswith("\n") else text + "\n")
    write_text(stem.with_name(stem.name + ".json"), json.dumps(data, indent=1) + "\n")
