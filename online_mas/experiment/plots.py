"""PNG plots of a run, drawn headless from its files.

Figures are built with matplotlib's object API on the Agg canvas (``matplotlib.figure.Figure`` +
``FigureCanvasAgg``), so no display and no pyplot state are involved, and nothing changes the
backend of a user's own session.

- ``accuracy_matrix.png``: the accuracy matrix as a heatmap (rows: after occurrence i; columns:
  held-out set of segment j).
- ``stream_accuracy.png``: accuracy along the stream (prequential, and held-out per segment at the
  evaluations), with the true change points (dashed) and the consolidations (solid) marked.
- ``importance.png``: a histogram of log10 importance per parameter tensor ("layer").

Across runs (``online-mas report``), :func:`plot_comparison` draws ``comparison-accuracy.png``
(accuracy on each segment along the stream, mean and band over seeds, true changes and
detections) and ``comparison-acc.png`` (ACC, min-ACC, WC-ACC and forgetting with error bars),
each also as SVG.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from online_mas import checkpoint

__all__ = ["draw_unit_plots", "plot_accuracy_matrix", "plot_comparison", "plot_importance",
           "plot_stream_accuracy"]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path, *, svg: bool = False) -> Path:
    """Write ``path`` (PNG), and the same figure as ``.svg`` beside it if ``svg``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, fmt in [(path, "png"), *([(path.with_suffix(".svg"), "svg")] if svg else [])]:
        tmp = target.with_name(f".{target.name}.tmp")
        fig.savefig(tmp, format=fmt, dpi=150 if svg else None)
        tmp.replace(target)
    return path


def plot_accuracy_matrix(matrix: Sequence[Sequence[float]], path: str | Path, *,
                         title: str = "") -> Path:
    """Heatmap of the accuracy matrix with each entry written in percent.

    Examples
    --------
    >>> import tempfile
    >>> p = plot_accuracy_matrix([[0.9, 0.1], [0.6, 0.8]], f"{tempfile.mkdtemp()}/m.png")
    >>> p.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    rows, cols = len(matrix), len(matrix[0]) if matrix else 0
    fig = _figure(1.6 + 0.75 * cols, 1.2 + 0.6 * rows)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for i in range(rows):
        for j in range(cols):
            v = matrix[i][j]
            ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=8,
                    color="black" if v > 0.6 else "white")
    ax.set_xticks(range(cols), [str(j) for j in range(cols)])
    ax.set_yticks(range(rows), [str(i) for i in range(rows)])
    ax.set_xlabel("held-out set of segment j")
    ax.set_ylabel("after occurrence i")
    ax.set_title(title or "accuracy matrix", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_stream_accuracy(lines: Sequence[dict[str, Any]], path: str | Path, *,
                         change_points: Sequence[int], events: Sequence[int] = (),
                         title: str = "") -> Path:
    """Accuracy along the stream with the true change points and the consolidations marked.

    ``lines`` are the lines of ``metrics.jsonl``: their ``"accuracy"`` (prequential, over the
    steps since the previous line) is drawn as a line, their ``"eval"`` lists (held-out accuracy
    per segment) as markers per segment, their ``"signal"`` (what online MAS's detector watches)
    on a second axis. ``change_points`` are batch indices where a new
    occurrence starts; ``events`` are the step counts at which a consolidation happened.
    """
    fig = _figure(8.0, 3.6)
    ax = fig.add_subplot()
    steps = [ln["step"] for ln in lines if "accuracy" in ln]
    ax.plot(steps, [ln["accuracy"] for ln in lines if "accuracy" in ln], lw=0.8, color="0.3",
            label="prequential (train batch, before update)")
    evals = [(ln["step"], ln["eval"]) for ln in lines if "eval" in ln]
    if evals:
        for j in range(len(evals[0][1])):
            ax.plot([s for s, _ in evals], [e[j] for _, e in evals], marker="o", ms=3, lw=1.0,
                    label=f"held-out, segment {j}")
    for k, c in enumerate(change_points):
        ax.axvline(c, color="0.5", ls="--", lw=1.0, label="true change" if k == 0 else None)
    for k, e in enumerate(events):
        ax.axvline(e, color="tab:red", lw=0.8, alpha=0.8, label="consolidation" if k == 0 else None)
    signal = [(ln["step"], ln["signal"]) for ln in lines if isinstance(ln.get("signal"), int | float)]
    if signal:
        twin = ax.twinx()
        twin.plot([s for s, _ in signal], [v for _, v in signal], lw=0.6, color="tab:purple", alpha=0.5)
        twin.set_ylabel("detector signal", color="tab:purple", fontsize=8)
        twin.tick_params(labelsize=6, colors="tab:purple")
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("step (batches trained)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "accuracy along the stream", fontsize=9)
    ax.legend(fontsize=6, loc="lower left", ncol=2)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_importance(importance: dict[str, Tensor], path: str | Path, *, title: str = "") -> Path:
    """One histogram of ``log10(importance)`` per parameter tensor; zeros are counted apart.

    Examples
    --------
    >>> import tempfile, torch
    >>> _ = torch.manual_seed(0)
    >>> imp = {"0.weight": torch.rand(10, 4), "0.bias": torch.zeros(10)}
    >>> p = plot_importance(imp, f"{tempfile.mkdtemp()}/imp.png")
    >>> p.stat().st_size > 0
    True
    """
    names = list(importance)
    cols = min(3, max(1, len(names)))
    nrows = max(1, math.ceil(len(names) / cols))
    fig = _figure(3.2 * cols, 2.4 * nrows)
    for k, name in enumerate(names):
        ax = fig.add_subplot(nrows, cols, k + 1)
        v = importance[name].detach().float().flatten().cpu()
        positive = v[v > 0]
        if positive.numel():
            ax.hist(positive.log10().numpy(), bins=40, color="tab:blue")
        zeros = float((v == 0).float().mean()) if v.numel() else 0.0
        ax.set_title(f"{name} ({v.numel()}; {100 * zeros:.0f}% zero)", fontsize=8)
        ax.set_xlabel("log10 importance", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(title or "importance per layer", fontsize=9)
    fig.tight_layout()
    return _save(fig, Path(path))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _groups(results: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs by label (``learner``, or ``learner (label)`` when a run carries a ``"group"``)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        label = r["learner"] if not r.get("group") else f"{r['learner']} ({r['group']})"
        out.setdefault(label, []).append(r)
    return out


def plot_comparison(results: Sequence[dict[str, Any]], out_dir: str | Path, *,
                    title: str = "") -> list[Path]:
    """Comparison figures of several runs (learners x seeds) from their ``summary.json`` dicts.

    ``comparison-accuracy.png``: one panel per segment, held-out accuracy (%) along the stream
    at every evaluation (``accuracy_curve``), the mean over seeds as a line and mean ± one
    sample standard deviation as a band; true changes as grey dashed lines, and every seed's
    detector consolidations as triangles in the learner's colour above each panel, so the
    delay shows. ``comparison-acc.png``: ACC, min-ACC and
    WC-ACC (%), and forgetting (percentage points), mean with a one-std error bar. Runs whose
    label is the same (``learner``, plus ``"group"`` if set) are seeds of one curve; runs of a
    label with a different number of evaluations than its first are left out. Each figure is
    written as PNG and SVG; returns the PNG paths.

    Examples
    --------
    >>> import tempfile
    >>> runs = [{"learner": "finetune", "seed": s, "change_points": [2], "events": [],
    ...          "segment_names": ["a", "b"], "average_accuracy": 0.5, "forgetting": 0.3,
    ...          "min_accuracy": 0.2, "wc_accuracy": 0.4,
    ...          "accuracy_curve": {"steps": [1, 2, 3, 4],
    ...                             "accuracy": [[0.5, 0.1], [0.9, 0.1], [0.4, 0.6], [0.3, 0.9]]}}
    ...         for s in (0, 1)]
    >>> [p.name for p in plot_comparison(runs, tempfile.mkdtemp())]
    ['comparison-accuracy.png', 'comparison-acc.png']
    """
    out = Path(out_dir)
    groups = _groups([r for r in results if r.get("accuracy_curve")])
    written = []
    if groups:
        written.append(_plot_comparison_accuracy(groups, out / "comparison-accuracy.png", title))
    groups = _groups(results)
    if groups:
        written.append(_plot_comparison_bars(groups, out / "comparison-acc.png", title))
    return written


_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
            "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


def _plot_comparison_accuracy(groups: dict[str, list[dict[str, Any]]], path: Path,
                              title: str) -> Path:
    first = next(iter(groups.values()))[0]
    k = len(first["accuracy_curve"]["accuracy"][0])
    names = first.get("segment_names") or [f"segment {j}" for j in range(k)]
    cols = min(k, 3)
    nrows = math.ceil(k / cols)
    fig = _figure(3.0 * cols + 1.9, 2.3 * nrows + 0.5)
    axes = [fig.add_subplot(nrows, cols, j + 1) for j in range(k)]
    handles: dict[str, Any] = {}
    for colour, (label, runs) in zip(itertools.cycle(_COLOURS), groups.items(), strict=False):
        n_evals = len(runs[0]["accuracy_curve"]["steps"])
        runs = [r for r in runs if len(r["accuracy_curve"]["steps"]) == n_evals
                and len(r["accuracy_curve"]["accuracy"][0]) == k]
        steps = runs[0]["accuracy_curve"]["steps"]
        fired = sorted(e["step"] for r in runs for e in r.get("events", ())
                       if e.get("reason") == "detector")
        for j, ax in enumerate(axes):
            stats = [_mean_std([100 * r["accuracy_curve"]["accuracy"][e][j] for r in runs])
                     for e in range(n_evals)]
            mean = [m for m, _ in stats]
            (line,) = ax.plot(steps, mean, color=colour, lw=1.3)
            if len(runs) > 1:
                ax.fill_between(steps, [m - s for m, s in stats], [m + s for m, s in stats],
                                color=colour, alpha=0.18, lw=0)
            if fired:
                ax.plot(fired, [103.0] * len(fired), ls="none", marker="v", ms=5, color=colour,
                        clip_on=False)
            handles[f"{label} (n={len(runs)})"] = line
    changes = first.get("change_points", [])
    for j, ax in enumerate(axes):
        for c in changes:
            ax.axvline(c, color="0.35", ls="--", lw=0.9, zorder=0)
        ax.set_ylim(0, 100)
        ax.set_title(names[j], fontsize=9, pad=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25, lw=0.5)
        if j % cols == 0:
            ax.set_ylabel("held-out accuracy (%)", fontsize=8)
        if j >= k - cols:
            ax.set_xlabel("step (batches trained)", fontsize=8)
    from matplotlib.lines import Line2D

    extra = {"true change": Line2D([], [], color="0.35", ls="--", lw=0.9),
             "detection (one per seed)": Line2D([], [], color="0.2", ls="none", marker="v", ms=5),
             "band: mean ± 1 std over seeds": Line2D([], [], color="0.6", lw=6, alpha=0.4)}
    legend = {**handles, **extra}
    fig.legend(list(legend.values()), list(legend), loc="center right", fontsize=7,
               frameon=False, bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title or "accuracy on each segment along the stream", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.9 / (3.0 * cols + 1.9), 1))
    return _save(fig, path, svg=True)


#: ``(label, summary key)`` of the accuracy bars of ``comparison-acc.png``.
_BARS = (("ACC", "average_accuracy"), ("min-ACC", "min_accuracy"), ("WC-ACC", "wc_accuracy"))


def _plot_comparison_bars(groups: dict[str, list[dict[str, Any]]], path: Path, title: str) -> Path:
    labels = list(groups)
    fig = _figure(2.2 + 1.3 * len(labels) + 1.4, 3.0)
    ax_acc = fig.add_subplot(1, 4, (1, 3))
    ax_fgt = fig.add_subplot(1, 4, 4)
    width = 0.8 / len(_BARS)
    for b, (name, key) in enumerate(_BARS):
        xs, means, errs = [], [], []
        for i, label in enumerate(labels):
            values = [100 * r[key] for r in groups[label] if isinstance(r.get(key), int | float)]
            if values:
                m, s = _mean_std(values)
                xs.append(i + (b - (len(_BARS) - 1) / 2) * width)
                means.append(m)
                errs.append(s)
        ax_acc.bar(xs, means, width, yerr=errs, capsize=2, label=name,
                   color=_COLOURS[b], error_kw={"lw": 0.8})
    xs, means, errs = [], [], []
    for i, label in enumerate(labels):
        values = [100 * r["forgetting"] for r in groups[label]
                  if isinstance(r.get("forgetting"), int | float)]
        if values:
            m, s = _mean_std(values)
            xs.append(i)
            means.append(m)
            errs.append(s)
    ax_fgt.bar(xs, means, 0.6, yerr=errs, capsize=2, color="0.45", error_kw={"lw": 0.8})
    for ax in (ax_acc, ax_fgt):
        ax.set_xticks(range(len(labels)), labels, rotation=25, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.25, lw=0.5)
        ax.set_axisbelow(True)
    ax_acc.set_ylim(0, 100)
    ax_acc.set_ylabel("accuracy (%)", fontsize=8)
    ax_acc.legend(fontsize=7, frameon=False, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3)
    ax_fgt.set_ylabel("forgetting (percentage points)", fontsize=8)
    ax_fgt.set_title("forgetting", fontsize=8)
    fig.suptitle(title or "end-of-stream and worst-case accuracy", fontsize=10)
    fig.text(0.99, 0.01, "bars: mean over seeds; error bars: ± 1 std", ha="right", va="bottom",
             fontsize=6.5, color="0.3")
    fig.tight_layout()
    return _save(fig, path, svg=True)


def draw_unit_plots(unit_dir: str | Path, summary: dict[str, Any] | None = None) -> list[Path]:
    """(Re)draw the plots of one run (learner, seed) from its files into ``unit_dir/plots``.

    Reads ``summary.json`` (unless ``summary`` is given), ``metrics.jsonl`` and, if present,
    ``importance.pt``. Returns the paths written.
    """
    unit = Path(unit_dir)
    if summary is None:
        summary = json.loads((unit / "summary.json").read_text(encoding="utf-8"))
    out = unit / "plots"
    name = f"{summary['learner']}, seed {summary['seed']}, {summary['stream']}"
    written = []
    if summary["accuracy_matrix"]:
        written.append(plot_accuracy_matrix(summary["accuracy_matrix"], out / "accuracy_matrix.png",
                                            title=f"accuracy matrix: {name}"))
    lines = read_jsonl(unit / "metrics.jsonl")
    written.append(plot_stream_accuracy(lines, out / "stream_accuracy.png",
                                        change_points=summary["change_points"],
                                        events=[e["step"] for e in summary["events"]], title=name))
    if (unit / "importance.pt").is_file():
        imp = checkpoint.load(unit / "importance.pt")
        tensors = {k: v for k, v in imp.items() if isinstance(v, Tensor)}
        if tensors:
            written.append(plot_importance(tensors, out / "importance.png",
                                           title=f"importance per layer: {name}"))
    return written


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a JSONL file as dicts (a missing file gives ``[]``)."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
