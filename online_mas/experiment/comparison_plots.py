"""Figures across runs (learners x seeds) from their ``summary.json`` dicts, for ``online-mas report``.

:func:`plot_comparison` writes, each as PNG and SVG:

- ``comparison-accuracy``: one panel per segment, held-out accuracy (%) along the stream, the
  mean over seeds as a line and mean ± one standard deviation as a band; the span where the
  segment is trained shaded, the true changes as solid grey lines behind the data, every seed's
  detector consolidations as short ticks in the learner's colour above the frame (one row per
  learner), so the detection delay shows.
- ``comparison-matrix``: the accuracy matrix (%) of each learner, mean over seeds, rows
  "evaluated after training on" each occurrence, columns the segments' held-out sets.
- ``comparison-acc``: ACC, min-ACC and WC-ACC (%) and forgetting (percentage points), mean over
  seeds with a one-std error bar and each seed as a dot.
- ``comparison-importance``: for each learner with an importance (MAS Ω, EWC's Fisher), the mean
  importance of each parameter tensor, labelled with its layer's type (``"3 (Linear).weight"``),
  mean over seeds with a one-std error bar, and the tensor's share of the total.

Runs whose label is the same (``learner``, plus ``"group"`` if set) are seeds of one learner.
Standard deviations are sample ones (``ddof=1``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from online_mas.experiment.plots import (
    FONT,
    LEGEND_FONT,
    TICK_FONT,
    draw_matrix,
    importance_label,
    layer_label,
    new_figure,
    occurrence_labels,
    save_figure,
    step_label,
)

__all__ = ["COMPARISON_FIGURES", "comparison_accuracy_figure", "comparison_bars_figure",
           "comparison_importance_figure", "comparison_matrix_figure", "group_runs", "mean_std",
           "plot_comparison"]

#: The stems of the files :func:`plot_comparison` may write (each ``.png`` and ``.svg``).
COMPARISON_FIGURES = ("comparison-accuracy", "comparison-matrix", "comparison-acc",
                      "comparison-importance")

_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
            "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value).

    Examples
    --------
    >>> mean_std([1.0, 2.0, 6.0])
    (3.0, 2.6457513110645907)
    """
    if not values:
        raise ValueError("mean_std needs at least one value, got an empty sequence")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def group_runs(results: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs by label (``learner``, or ``learner (group)`` when a run carries a ``"group"``).

    Examples
    --------
    >>> runs = [{"learner": "a"}, {"learner": "b"}, {"learner": "a", "group": "x"}]
    >>> {k: len(v) for k, v in group_runs(runs).items()}
    {'a': 1, 'b': 1, 'a (x)': 1}
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        label = r["learner"] if not r.get("group") else f"{r['learner']} ({r['group']})"
        out.setdefault(label, []).append(r)
    return out


def plot_comparison(results: Sequence[dict[str, Any]], out_dir: str | Path, *,
                    title: str = "") -> list[Path]:
    """The comparison figures of several runs (see the module docstring); returns the PNG paths.

    ``title`` (e.g. the experiment's name) heads each figure's own title.

    A figure is left out when no run has what it shows (no accuracy curve, no matrix, no
    importance). Within a label, runs with another number of evaluations (or another matrix
    shape) than the label's first run are left out of the curves (or the matrix).

    Examples
    --------
    >>> import tempfile
    >>> runs = [{"learner": "finetune", "seed": s, "change_points": [2], "events": [],
    ...          "segment_names": ["a", "b"], "order": [0, 1], "batch_size": 8,
    ...          "average_accuracy": 0.5, "forgetting": 0.3, "min_accuracy": 0.2,
    ...          "wc_accuracy": 0.4, "accuracy_matrix": [[0.9, 0.1], [0.4, 0.9]],
    ...          "accuracy_curve": {"steps": [1, 2, 3, 4],
    ...                             "accuracy": [[0.5, 0.1], [0.9, 0.1], [0.4, 0.6], [0.3, 0.9]]}}
    ...         for s in (0, 1)]
    >>> [p.name for p in plot_comparison(runs, tempfile.mkdtemp())]
    ['comparison-accuracy.png', 'comparison-matrix.png', 'comparison-acc.png']
    """
    out = Path(out_dir)
    written = []
    colours = dict(zip(group_runs(results), itertools.cycle(_COLOURS), strict=False))
    groups = group_runs([r for r in results if r.get("accuracy_curve")])
    if groups:
        written.append(save_figure(comparison_accuracy_figure(groups, title, colours=colours),
                                   out / "comparison-accuracy.png", svg=True))
    groups = group_runs([r for r in results if r.get("accuracy_matrix")])
    if groups:
        written.append(save_figure(comparison_matrix_figure(groups, title),
                                   out / "comparison-matrix.png", svg=True))
    groups = group_runs(results)
    if groups:
        written.append(save_figure(comparison_bars_figure(groups, title), out / "comparison-acc.png",
                                   svg=True))
    groups = group_runs([r for r in results if r.get("importance")])
    if groups:
        written.append(save_figure(comparison_importance_figure(groups, title, colours=colours),
                                   out / "comparison-importance.png", svg=True))
    return written


def _title(prefix: str, subject: str) -> str:
    return f"{prefix}: {subject}" if prefix else subject


def _legend_slot(fig: Any, nrows: int, cols: int, k: int) -> tuple[Any, str]:
    """Where the figure legend goes: an empty cell of the grid if there is one, else the right."""
    if k < nrows * cols:
        slot = fig.add_subplot(nrows, cols, nrows * cols)
        slot.axis("off")
        return slot, "center"
    return None, "center right"


def comparison_accuracy_figure(groups: dict[str, list[dict[str, Any]]], title: str = "", *,
                    colours: dict[str, str] | None = None) -> Any:
    """``comparison-accuracy``: accuracy on each segment along the stream, mean and band.

    ``colours`` maps each label to its colour (default: the tab10 cycle in label order).
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    first = next(iter(groups.values()))[0]
    k = len(first["accuracy_curve"]["accuracy"][0])
    names = list(first.get("segment_names") or [])
    names += [f"segment {j}" for j in range(len(names), k)]
    changes = list(first.get("change_points", []))
    order = list(first.get("order") or range(len(changes) + 1))
    n_steps = first.get("n_steps") or max(first["accuracy_curve"]["steps"])
    detecting = [label for label, runs in groups.items()
                 if any(e.get("reason") == "detector" for r in runs for e in r.get("events", ()))]
    cols = min(k, 3)
    nrows = math.ceil(k / cols)
    spare = k < nrows * cols
    fig = new_figure(3.2 * cols + (0 if spare else 2.4), 2.5 * nrows + 0.6)
    axes = [fig.add_subplot(nrows, cols, j + 1) for j in range(k)]
    handles: dict[str, Any] = {}
    colours = colours or dict(zip(groups, itertools.cycle(_COLOURS), strict=False))
    for label, runs in groups.items():
        colour = colours[label]
        n_evals = len(runs[0]["accuracy_curve"]["steps"])
        runs = [r for r in runs if len(r["accuracy_curve"]["steps"]) == n_evals
                and len(r["accuracy_curve"]["accuracy"][0]) == k]
        steps = runs[0]["accuracy_curve"]["steps"]
        for j, ax in enumerate(axes):
            stats = [mean_std([100 * r["accuracy_curve"]["accuracy"][e][j] for r in runs])
                     for e in range(n_evals)]
            (line,) = ax.plot(steps, [m for m, _ in stats], color=colour, lw=1.4, zorder=3)
            if len(runs) > 1:
                ax.fill_between(steps, [m - s for m, s in stats], [m + s for m, s in stats],
                                color=colour, alpha=0.2, lw=0, zorder=2)
        handles[f"{label} (n={len(runs)})"] = line
        if label in detecting:
            row = detecting.index(label)
            fired = [e["step"] for r in runs for e in r.get("events", ())
                     if e.get("reason") == "detector"]
            for ax in axes:
                top = blended_transform_factory(ax.transData, ax.transAxes)
                ax.plot(fired, [1.04 + 0.07 * row] * len(fired), ls="none", marker="|", ms=7,
                        mew=1.6, color=colour, transform=top, clip_on=False)
    for j, ax in enumerate(axes):
        for i, (a, b) in enumerate(zip([0, *changes], [*changes, n_steps], strict=True)):
            if i < len(order) and order[i] == j:
                ax.axvspan(a, b, color="0.5", alpha=0.12, lw=0, zorder=0)
        for c in changes:
            ax.axvline(c, color="0.45", lw=1.1, zorder=1)
        ax.set_ylim(0, 100)
        ax.set_xlim(0, n_steps)
        ax.set_title(names[j], fontsize=FONT, pad=6 + 5 * len(detecting) + 2)
        ax.tick_params(labelsize=TICK_FONT)
        ax.grid(alpha=0.25, lw=0.5)
        if j % cols == 0:
            ax.set_ylabel("held-out accuracy (%)", fontsize=FONT)
        if j >= k - cols:
            ax.set_xlabel(step_label(first.get("batch_size")), fontsize=FONT)
    extra: dict[str, Any] = {
        "true change": Line2D([], [], color="0.45", lw=1.1),
        "segment being trained": Patch(facecolor="0.5", alpha=0.12, edgecolor="0.6"),
        "mean ± 1 std over seeds": (Patch(facecolor="0.3", alpha=0.2, lw=0),
                                    Line2D([], [], color="0.3", lw=1.4))}
    for label in detecting:
        extra[f"{label}: detection of one seed"] = Line2D([], [], color=colours[label], ls="none",
                                                          marker="|", ms=7, mew=1.6)
    legend = {**handles, **extra}
    slot, loc = _legend_slot(fig, nrows, cols, k)
    where = slot if slot is not None else fig
    where.legend(list(legend.values()), list(legend), loc=loc, fontsize=LEGEND_FONT, frameon=False)
    fig.suptitle(_title(title, "held-out accuracy on each segment along the stream"), fontsize=FONT + 1)
    fig.tight_layout(rect=(0, 0, 1 if spare else 1 - 2.4 / (3.2 * cols + 2.4), 1))
    return fig


def comparison_matrix_figure(groups: dict[str, list[dict[str, Any]]], title: str = "") -> Any:
    """``comparison-matrix``: each learner's accuracy matrix (%), mean over seeds."""
    labels = list(groups)
    first = groups[labels[0]][0]
    shape = (len(first["accuracy_matrix"]), len(first["accuracy_matrix"][0]))
    names = list(first.get("segment_names") or [])
    names += [f"segment {j}" for j in range(len(names), shape[1])]
    cols = 2 if len(labels) in (2, 4) else min(len(labels), 3)
    nrows = math.ceil(len(labels) / cols)
    cell_w, cell_h = 0.5, 0.36
    width = 1.5 + shape[1] * cell_w
    fig = new_figure(cols * width + 1.6, nrows * (shape[0] * cell_h + 1.8) + 0.4)
    image = None
    for p, label in enumerate(labels):
        runs = [r for r in groups[label] if len(r["accuracy_matrix"]) == shape[0]
                and all(len(row) == shape[1] for row in r["accuracy_matrix"])]
        ax = fig.add_subplot(nrows, cols, p + 1)
        if not runs:
            ax.axis("off")
            ax.set_title(f"{label}: another matrix shape", fontsize=FONT)
            continue
        mean = [[sum(100 * r["accuracy_matrix"][i][j] for r in runs) / len(runs)
                 for j in range(shape[1])] for i in range(shape[0])]
        rows = occurrence_labels(runs[0], shape[0]) if p % cols == 0 else [""] * shape[0]
        image = draw_matrix(ax, mean, rows=rows, cols=names, fontsize=FONT - 1)
        ax.set_title(f"{label} (n={len(runs)})", fontsize=FONT)
        if p % cols == 0:
            ax.set_ylabel("evaluated after training on", fontsize=FONT)
        if p >= len(labels) - cols:
            ax.set_xlabel("held-out set of segment", fontsize=FONT)
        else:  # the same columns as the panel below
            ax.tick_params(labelbottom=False)
    fig.suptitle(_title(title, "accuracy matrix (%), mean over seeds"), fontsize=FONT + 1)
    fig.tight_layout(rect=(0, 0, 1 - 1.2 / (cols * width + 1.6), 1))
    if image is not None:
        cax = fig.add_axes((1 - 1.0 / (cols * width + 1.6), 0.2, 0.15 / (cols * width + 1.6), 0.6))
        bar = fig.colorbar(image, cax=cax)
        bar.set_label("accuracy (%)", fontsize=FONT)
        bar.ax.tick_params(labelsize=TICK_FONT)
    return fig


#: ``(label, summary key)`` of the accuracy bars of ``comparison-acc``.
_BARS = (("ACC", "average_accuracy"), ("min-ACC", "min_accuracy"), ("WC-ACC", "wc_accuracy"))


def _bar_group(ax: Any, groups: dict[str, list[dict[str, Any]]], key: str, *, offset: float,
               width: float, colour: str, label: str | None) -> None:
    xs, means, errs, dots = [], [], [], []
    for i, runs in enumerate(groups.values()):
        values = [100 * r[key] for r in runs if isinstance(r.get(key), int | float)]
        if values:
            m, s = mean_std(values)
            xs.append(i + offset)
            means.append(m)
            errs.append(s)
            dots += [(i + offset, v) for v in values]
    ax.bar(xs, means, width, yerr=errs, capsize=2.5, label=label, color=colour,
           error_kw={"lw": 0.9}, zorder=2)
    ax.plot([x for x, _ in dots], [v for _, v in dots], ls="none", marker="o", ms=2.2,
            color="black", alpha=0.6, zorder=3)


def comparison_bars_figure(groups: dict[str, list[dict[str, Any]]], title: str = "") -> Any:
    """``comparison-acc``: ACC, min-ACC, WC-ACC and forgetting, mean ± std, seeds as dots."""
    labels = list(groups)
    fig = new_figure(2.6 + 1.4 * len(labels) + 1.6, 3.4)
    ax_acc = fig.add_subplot(1, 4, (1, 3))
    ax_fgt = fig.add_subplot(1, 4, 4)
    width = 0.8 / len(_BARS)
    for b, (name, key) in enumerate(_BARS):
        _bar_group(ax_acc, groups, key, offset=(b - (len(_BARS) - 1) / 2) * width, width=width,
                   colour=_COLOURS[b], label=name)
    _bar_group(ax_fgt, groups, "forgetting", offset=0.0, width=0.6, colour="0.5", label=None)
    for ax in (ax_acc, ax_fgt):
        ax.set_xticks(range(len(labels)), labels, rotation=25, ha="right", fontsize=TICK_FONT)
        ax.tick_params(axis="y", labelsize=TICK_FONT)
        ax.grid(axis="y", alpha=0.25, lw=0.5)
        ax.set_axisbelow(True)
    ax_acc.set_ylim(0, 100)
    ax_acc.set_ylabel("accuracy (%)", fontsize=FONT)
    ax_acc.legend(fontsize=LEGEND_FONT, frameon=False, loc="lower left", bbox_to_anchor=(0.0, 1.0),
                  ncol=3)
    ax_fgt.set_ylabel("forgetting (percentage points)", fontsize=FONT)
    ax_fgt.set_title("forgetting", fontsize=FONT)
    fig.suptitle(_title(title, "end-of-stream and worst-case accuracy"), fontsize=FONT + 1)
    fig.text(0.99, 0.01, "bars: mean over seeds; error bars: ± 1 std; dots: seeds", ha="right",
             va="bottom", fontsize=LEGEND_FONT - 1, color="0.3")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def comparison_importance_figure(groups: dict[str, list[dict[str, Any]]], title: str = "", *,
                      colours: dict[str, str] | None = None) -> Any:
    """``comparison-importance``: mean importance per parameter tensor, one panel per learner.

    ``colours`` maps each label to its colour (default: the tab10 cycle in label order).
    """
    from matplotlib.ticker import LogLocator, NullFormatter

    colours = colours or dict(zip(groups, itertools.cycle(_COLOURS), strict=False))
    groups = {label: [r for r in runs if r.get("importance")] for label, runs in groups.items()}
    groups = {label: runs for label, runs in groups.items() if runs}
    if not groups:
        raise ValueError("no run has an importance to show (finetune, joint and l2 have none)")
    labels = list(groups)
    names = list(groups[labels[0]][0]["importance"])
    cols = min(len(labels), 2)
    nrows = math.ceil(len(labels) / cols)
    fig = new_figure(4.6 * cols + 0.6, nrows * (0.28 * len(names) + 1.5) + 0.4)
    for p, label in enumerate(labels):
        runs = groups[label]
        ax = fig.add_subplot(nrows, cols, p + 1)
        stats = [r["importance"] for r in runs]
        mine = [n for n in names if all(n in s for s in stats)]
        means, errs, shares = [], [], []
        for n in mine:
            m, s = mean_std([st[n]["mean"] for st in stats])
            means.append(m)
            errs.append(s)
        totals = [sum(st[n]["mean"] * st[n]["numel"] for n in mine) for st in stats]
        for n in mine:
            shares.append(sum(st[n]["mean"] * st[n]["numel"] / t for st, t in zip(stats, totals,
                                                                                strict=True) if t > 0)
                          / max(1, sum(t > 0 for t in totals)))
        layer = {n: stats[0][n].get("layer") for n in mine}
        ys = list(range(len(mine)))
        positive = [m > 0 for m in means]
        ax.barh([y for y, ok in zip(ys, positive, strict=True) if ok],
                [m for m, ok in zip(means, positive, strict=True) if ok], 0.65,
                xerr=[e for e, ok in zip(errs, positive, strict=True) if ok],
                color=colours[label], error_kw={"lw": 0.9}, capsize=2)
        if any(positive):  # whole decades, so a short range still has labelled ticks
            lo = min(m for m in means if m > 0)
            hi = max(m + e for m, e in zip(means, errs, strict=True) if m > 0)
            ax.set_xscale("log")
            ax.set_xlim(10 ** math.floor(math.log10(lo)), 10 ** (math.ceil(math.log10(hi)) + 0.4))
            ax.xaxis.set_major_locator(LogLocator(base=10))
            ax.xaxis.set_minor_formatter(NullFormatter())
        for y, m, e, share in zip(ys, means, errs, shares, strict=True):
            if m > 0:
                ax.text(m + e, y, f"  {100 * share:.0f}%", va="center", fontsize=TICK_FONT - 0.5,
                        color="0.25")
        ax.set_yticks(ys, [layer_label(n, layer[n]) for n in mine], fontsize=TICK_FONT)
        ax.invert_yaxis()
        kind = importance_label(runs[0]["learner"])
        ks = sorted({int(r.get("n_snapshots", len(r.get("events", ())))) for r in runs})
        k = str(ks[0]) if len(ks) == 1 else f"{ks[0]}-{ks[-1]}"
        when = f"after {k} {'boundaries' if kind == 'Fisher' else 'consolidations'}"
        ax.set_title(f"{label} (n={len(runs)}): {kind} {when}", fontsize=FONT)
        ax.set_xlabel(f"mean {kind} per entry (log scale); text: share of total", fontsize=FONT - 0.5)
        ax.tick_params(axis="x", labelsize=TICK_FONT)
        ax.grid(axis="x", alpha=0.25, lw=0.5)
    fig.suptitle(_title(title, "importance per layer (mean over seeds ± 1 std)"), fontsize=FONT + 1)
    fig.tight_layout()
    return fig
