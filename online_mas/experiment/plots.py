"""PNG plots of one run, drawn headless from its files, and the helpers every figure shares.

Figures are built with matplotlib's object API on the Agg canvas (``matplotlib.figure.Figure`` +
``FigureCanvasAgg``), so no display and no pyplot state are involved, and nothing changes the
backend of a user's own session. Accuracies are in percent everywhere (axes, colour bars, cell
text); segments are named by the stream (``"rotation 30°"``, ``"permutation 2"``,
``"classes 2/3"``); legends sit outside the data.

- ``accuracy_matrix.png``: the accuracy matrix as a heatmap (rows: evaluated after training on
  occurrence i; columns: held-out set of segment j), cells in %.
- ``stream_accuracy.png``: accuracy along the stream (prequential, and held-out per segment at
  the evaluations) over shaded occurrences, the true change points as solid grey lines behind the
  data and the consolidations as coloured markers above the frame, so the delay shows; below it,
  the detector's signal on its own axis with its name and unit (``"entropy (nats)"``).
- ``importance.png``: a histogram of log10 importance per parameter tensor, titled with the
  layer's type (``"1 (Linear).weight"``) and which importance it is (MAS Ω after k
  consolidations, or EWC's Fisher).

The figures across runs are in :mod:`online_mas.experiment.comparison_plots`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from online_mas import checkpoint

__all__ = [
    "FONT",
    "LEGEND_FONT",
    "SIGNAL_LABELS",
    "TICK_FONT",
    "accuracy_matrix_figure",
    "draw_matrix",
    "draw_unit_plots",
    "importance_figure",
    "importance_label",
    "layer_label",
    "new_figure",
    "occurrence_labels",
    "plot_accuracy_matrix",
    "plot_importance",
    "plot_stream_accuracy",
    "read_jsonl",
    "save_figure",
    "signal_label",
    "step_label",
    "stream_accuracy_figure",
]

#: Font sizes (points) of axis labels, tick labels and legends: readable at a column's width.
FONT, TICK_FONT, LEGEND_FONT = 9.0, 8.0, 8.0

_UNIT_DPI = 110  # the per-run PNGs (many of them; the comparison figures get 150)

#: Axis label of each detector signal (``[learner.<name>.mas] signal``), with its unit.
SIGNAL_LABELS = {
    "entropy": "entropy (nats)",
    "output_norm": "output norm² (logit units²)",
    "max_prob": "max softmax probability",
    "feature_shift": "feature shift (× sampling variance)",
    "loss": "training loss (nats)",
}


def new_figure(width: float, height: float) -> Any:
    """A ``matplotlib.figure.Figure`` of ``width`` x ``height`` inches on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path, *, svg: bool = False, dpi: int = 150) -> Path:
    """Write ``path`` (PNG at ``dpi``), and the same figure as ``.svg`` beside it if ``svg``.

    Each file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, fmt in [(path, "png"), *([(path.with_suffix(".svg"), "svg")] if svg else [])]:
        tmp = target.with_name(f".{target.name}.tmp")
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", pad_inches=0.08)
        tmp.replace(target)
    return path


def signal_label(signal: str | None) -> str:
    """The axis label of a detector signal with its unit.

    Examples
    --------
    >>> signal_label("entropy"), signal_label(None)
    ('entropy (nats)', 'detector signal')
    """
    if signal is None:
        return "detector signal"
    return SIGNAL_LABELS.get(signal, signal)


def step_label(batch_size: int | None) -> str:
    """The label of a step axis.

    Examples
    --------
    >>> step_label(32)
    'step (batches of 32 samples)'
    """
    return "step (batches trained)" if not batch_size else f"step (batches of {batch_size} samples)"


def importance_label(learner: str) -> str:
    """What a learner's importance is: EWC's Fisher information or MAS's Omega.

    Examples
    --------
    >>> importance_label("ewc"), importance_label("online-mas")
    ('Fisher', 'MAS Ω')
    """
    return "Fisher" if learner == "ewc" else "MAS Ω"


def layer_label(name: str, layer: str | None) -> str:
    """A parameter's name with the type of the module it belongs to.

    Examples
    --------
    >>> layer_label("3.weight", "Linear"), layer_label("fc.bias", None), layer_label("w", "Foo")
    ('3 (Linear).weight', 'fc.bias', 'w (Foo)')
    """
    if not layer:
        return name
    module, dot, leaf = name.rpartition(".")
    return f"{module} ({layer}).{leaf}" if dot else f"{name} ({layer})"


def occurrence_labels(summary: dict[str, Any], rows: int) -> list[str]:
    """Row labels of an accuracy matrix: the segment trained on last before each row.

    Joint training (``"iid"`` order) has no "after segment i": its rows are named by their step.

    Examples
    --------
    >>> occurrence_labels({"segment_names": ["a", "b"], "order": [0, 1, 0]}, 3)
    ['a', 'b', 'a (again)']
    """
    names = list(summary.get("segment_names") or [])
    order = list(summary.get("order") or range(rows))
    if summary.get("learner") == "joint":
        steps = list(summary.get("eval_steps") or [])
        return [f"step {steps[i]}" if i < len(steps) else f"row {i}" for i in range(rows)]
    out, seen = [], set()
    for i in range(rows):
        seg = order[i] if i < len(order) else i
        label = names[seg] if seg < len(names) else f"segment {seg}"
        out.append(f"{label} (again)" if seg in seen else label)
        seen.add(seg)
    return out


def draw_matrix(ax: Any, percent: Sequence[Sequence[float]], *, rows: Sequence[str],
                cols: Sequence[str], fontsize: float = FONT - 1) -> Any:
    """A 0-100 % heatmap on ``ax`` with each cell's value written in it; returns the image."""
    image = ax.imshow(percent, vmin=0.0, vmax=100.0, cmap="viridis", aspect="auto")
    for i, row in enumerate(percent):
        for j, v in enumerate(row):
            if math.isfinite(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=fontsize,
                        color="black" if v > 55 else "white")
    ax.set_xticks(range(len(cols)), list(cols), rotation=30, ha="right", fontsize=TICK_FONT)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=TICK_FONT)
    return image


def plot_accuracy_matrix(matrix: Sequence[Sequence[float]], path: str | Path, *,
                         title: str = "", rows: Sequence[str] | None = None,
                         cols: Sequence[str] | None = None) -> Path:
    """Heatmap of an accuracy matrix (fractions in ``matrix``), in percent.

    ``rows`` names the occurrence trained on last before each row (default ``0, 1, ...``),
    ``cols`` the segment of each held-out set.

    Examples
    --------
    >>> import tempfile
    >>> p = plot_accuracy_matrix([[0.9, 0.1], [0.6, 0.8]], f"{tempfile.mkdtemp()}/m.png",
    ...                          rows=["a", "b"], cols=["a", "b"])
    >>> p.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    return save_figure(accuracy_matrix_figure(matrix, title=title, rows=rows, cols=cols), path, dpi=_UNIT_DPI)


def accuracy_matrix_figure(matrix: Sequence[Sequence[float]], *, title: str = "",
                           rows: Sequence[str] | None = None,
                           cols: Sequence[str] | None = None) -> Any:
    """The figure of :func:`plot_accuracy_matrix` (a ``matplotlib.figure.Figure``)."""
    n_rows, n_cols = len(matrix), len(matrix[0]) if matrix else 0
    rows = list(rows) if rows is not None else [str(i) for i in range(n_rows)]
    cols = list(cols) if cols is not None else [str(j) for j in range(n_cols)]
    fig = new_figure(2.6 + 0.75 * n_cols, 1.7 + 0.45 * n_rows)
    ax = fig.add_subplot()
    image = draw_matrix(ax, [[100 * v for v in r] for r in matrix], rows=rows, cols=cols)
    ax.set_xlabel("held-out set of segment", fontsize=FONT)
    ax.set_ylabel("evaluated after training on", fontsize=FONT)
    ax.set_title(title or "accuracy matrix", fontsize=FONT)
    bar = fig.colorbar(image, ax=ax, fraction=0.05)
    bar.set_label("accuracy (%)", fontsize=FONT)
    bar.ax.tick_params(labelsize=TICK_FONT)
    fig.tight_layout()
    return fig


#: Colours of consolidations by reason (a detector's, or at a known boundary).
_EVENT_STYLE = {"detector": ("black", "consolidation (detector)"),
                "boundary": ("white", "consolidation (true boundary)")}


def plot_stream_accuracy(lines: Sequence[dict[str, Any]], path: str | Path, *,
                         change_points: Sequence[int], events: Sequence[int | dict[str, Any]] = (),
                         title: str = "", segment_names: Sequence[str] | None = None,
                         order: Sequence[int] | None = None, signal: str | None = None,
                         batch_size: int | None = None) -> Path:
    """Accuracy (%) along the stream with the true change points and the consolidations marked.

    ``lines`` are the lines of ``metrics.jsonl``: their ``"accuracy"`` (prequential, over the
    steps since the previous line) is drawn as a grey line, their ``"eval"`` lists (held-out
    accuracy per segment) as one line per segment, named by ``segment_names``; with ``order``
    (the segment of each occurrence), each occurrence's span is shaded in its segment's colour.
    ``change_points`` (batch indices where a new occurrence starts) are solid grey lines behind
    the data; ``events`` (the consolidations: step counts, or the ``summary.json`` event dicts,
    whose ``"reason"`` picks the colour) are markers above the frame. The lines' ``"signal"``
    (what a detector watches, named by ``signal``, e.g. ``"entropy"``) gets a panel of its own.

    Examples
    --------
    >>> import tempfile
    >>> lines = [{"step": s, "accuracy": 0.5, "signal": 1.0, "eval": [0.5, 0.2]} for s in (5, 10)]
    >>> plot_stream_accuracy(lines, f"{tempfile.mkdtemp()}/s.png", change_points=[5],
    ...                      events=[6], segment_names=["a", "b"], signal="entropy").suffix
    '.png'
    """
    return save_figure(stream_accuracy_figure(
        lines, change_points=change_points, events=events, title=title,
        segment_names=segment_names, order=order, signal=signal, batch_size=batch_size), path,
        dpi=_UNIT_DPI)


def stream_accuracy_figure(lines: Sequence[dict[str, Any]], *, change_points: Sequence[int],
                           events: Sequence[int | dict[str, Any]] = (), title: str = "",
                           segment_names: Sequence[str] | None = None,
                           order: Sequence[int] | None = None, signal: str | None = None,
                           batch_size: int | None = None) -> Any:
    """The figure of :func:`plot_stream_accuracy` (a ``matplotlib.figure.Figure``)."""
    from matplotlib.transforms import blended_transform_factory

    sig = [(ln["step"], ln["signal"]) for ln in lines if isinstance(ln.get("signal"), int | float)]
    fig = new_figure(8.0, 4.6 if sig else 3.4)
    if sig:
        grid = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
        ax = fig.add_subplot(grid[0])
        ax_sig = fig.add_subplot(grid[1], sharex=ax)
    else:
        ax, ax_sig = fig.add_subplot(), None
    colours = _segment_colours()
    evals = [(ln["step"], ln["eval"]) for ln in lines if "eval" in ln]
    k = len(evals[0][1]) if evals else len(segment_names or [])
    names = list(segment_names or [])
    names += [f"segment {j}" for j in range(len(names), k)]
    n = max([ln["step"] for ln in lines] + list(change_points) + [1])
    starts = [0, *change_points]
    for i, (a, b) in enumerate(zip(starts, [*change_points, n], strict=True)):
        if order is None:
            break
        seg = order[i] if i < len(order) else i
        for axis in [ax] if ax_sig is None else [ax, ax_sig]:
            axis.axvspan(a, b, color=colours[seg % len(colours)], alpha=0.07, lw=0, zorder=0)
    for axis in [ax] if ax_sig is None else [ax, ax_sig]:
        for c in change_points:
            axis.axvline(c, color="0.45", lw=1.2, zorder=0.5)
    pre = [(ln["step"], 100 * ln["accuracy"]) for ln in lines if "accuracy" in ln]
    if pre:
        ax.plot([s for s, _ in pre], [v for _, v in pre], lw=0.8, ls="--", color="black",
                alpha=0.6, label="prequential (train batch)")
    for j in range(k):
        ax.plot([s for s, _ in evals], [100 * e[j] for _, e in evals], marker="o", ms=2.5,
                lw=1.2, color=colours[j % len(colours)], label=f"held-out: {names[j]}")
    top = blended_transform_factory(ax.transData, ax.transAxes)
    for reason, (colour, _) in _EVENT_STYLE.items():
        at = [_event_step(e) for e in events if _event_reason(e, reason)]
        if at:
            ax.plot(at, [1.04] * len(at), ls="none", marker="v", ms=6, color=colour, mec="black",
                    transform=top, clip_on=False)
    ax.set_ylim(0.0, 100.0)
    ax.set_xlim(0, n)
    ax.set_ylabel("accuracy (%)", fontsize=FONT)
    ax.tick_params(labelsize=TICK_FONT)
    ax.set_title(title or "accuracy along the stream", fontsize=FONT + 1, pad=17)
    handles, labels = ax.get_legend_handles_labels()
    handles, labels = [*handles, *_marker_handles(events)], [*labels, *_marker_labels(events)]
    from matplotlib.lines import Line2D

    handles.append(Line2D([], [], color="0.45", lw=1.2))
    labels.append("true change")
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.73, 0.9), fontsize=LEGEND_FONT,
               frameon=False)
    if ax_sig is not None:
        ax_sig.plot([s for s, _ in sig], [v for _, v in sig], lw=1.0, color="tab:purple")
        ax_sig.set_ylabel(signal_label(signal), fontsize=FONT - 0.5, color="tab:purple")
        ax_sig.tick_params(labelsize=TICK_FONT)
        ax_sig.set_xlabel(step_label(batch_size), fontsize=FONT)
        ax.tick_params(labelbottom=False)
    else:
        ax.set_xlabel(step_label(batch_size), fontsize=FONT)
    fig.subplots_adjust(left=0.08, right=0.72, top=0.88, bottom=0.12 if sig else 0.15)
    return fig


def _segment_colours() -> list[str]:
    return ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
            "tab:pink", "tab:olive", "tab:cyan"]


def _event_step(event: int | dict[str, Any]) -> int:
    return int(event["step"]) if isinstance(event, dict) else int(event)


def _event_reason(event: int | dict[str, Any], reason: str) -> bool:
    got = event.get("reason", "detector") if isinstance(event, dict) else "detector"
    return got == reason or (reason == "detector" and got not in _EVENT_STYLE)


def _marker_handles(events: Sequence[int | dict[str, Any]]) -> list[Any]:
    from matplotlib.lines import Line2D

    return [Line2D([], [], ls="none", marker="v", ms=6, color=colour, mec="black")
            for reason, (colour, _) in _EVENT_STYLE.items()
            if any(_event_reason(e, reason) for e in events)]


def _marker_labels(events: Sequence[int | dict[str, Any]]) -> list[str]:
    return [label for reason, (_, label) in _EVENT_STYLE.items()
            if any(_event_reason(e, reason) for e in events)]


def plot_importance(importance: dict[str, Tensor], path: str | Path, *, title: str = "",
                    layers: dict[str, str] | None = None, kind: str = "MAS Ω") -> Path:
    """One histogram of ``log10(importance)`` per parameter tensor; zeros are counted apart.

    Each panel is titled with the parameter's name and its module's type (``layers``: name ->
    class name) and says how many entries it has and which share is zero; ``kind`` names the
    importance (``"MAS Ω"``, ``"Fisher"``) on the x axis.

    Examples
    --------
    >>> import tempfile, torch
    >>> _ = torch.manual_seed(0)
    >>> imp = {"0.weight": torch.rand(10, 4), "0.bias": torch.zeros(10)}
    >>> p = plot_importance(imp, f"{tempfile.mkdtemp()}/imp.png", layers={"0.weight": "Linear"})
    >>> p.stat().st_size > 0
    True
    """
    return save_figure(importance_figure(importance, title=title, layers=layers, kind=kind), path,
                       dpi=_UNIT_DPI)


def importance_figure(importance: dict[str, Tensor], *, title: str = "",
                      layers: dict[str, str] | None = None, kind: str = "MAS Ω") -> Any:
    """The figure of :func:`plot_importance` (a ``matplotlib.figure.Figure``)."""
    names = list(importance)
    cols = min(3, max(1, len(names)))
    nrows = max(1, math.ceil(len(names) / cols))
    fig = new_figure(3.3 * cols, 2.5 * nrows + 0.5)
    for k, name in enumerate(names):
        ax = fig.add_subplot(nrows, cols, k + 1)
        v = importance[name].detach().float().flatten().cpu()
        positive = v[v > 0]
        if positive.numel():
            ax.hist(positive.log10().numpy(), bins=40, color="tab:blue")
        zeros = float((v == 0).float().mean()) if v.numel() else 0.0
        ax.set_title(f"{layer_label(name, (layers or {}).get(name))}\n{v.numel()} entries, "
                     f"{100 * zeros:.0f}% zero", fontsize=FONT - 0.5)
        ax.set_xlabel(f"log10 {kind}", fontsize=FONT - 0.5)
        if k % cols == 0:
            ax.set_ylabel("entries (count)", fontsize=FONT - 0.5)
        ax.tick_params(labelsize=TICK_FONT - 0.5)
    fig.suptitle(title or f"{kind} per layer", fontsize=FONT + 1)
    fig.tight_layout()
    return fig


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
    names = summary.get("segment_names") or None
    written = []
    matrix = summary["accuracy_matrix"]
    if matrix:
        written.append(plot_accuracy_matrix(
            matrix, out / "accuracy_matrix.png", title=f"accuracy matrix (%): {name}",
            rows=occurrence_labels(summary, len(matrix)),
            cols=names or [f"segment {j}" for j in range(len(matrix[0]))]))
    lines = read_jsonl(unit / "metrics.jsonl")
    shuffled = summary["learner"] == "joint"  # i.i.d. order: no changes along its stream
    written.append(plot_stream_accuracy(lines, out / "stream_accuracy.png",
                                        change_points=[] if shuffled else summary["change_points"],
                                        events=summary["events"], title=name, segment_names=names,
                                        order=None if shuffled else summary.get("order"),
                                        signal=summary.get("signal"),
                                        batch_size=summary.get("batch_size")))
    if (unit / "importance.pt").is_file():
        imp = checkpoint.load(unit / "importance.pt")
        tensors = {k: v for k, v in imp.items() if isinstance(v, Tensor)}
        if tensors:
            stats = summary.get("importance") or {}
            layers = {k: s["layer"] for k, s in stats.items()
                      if isinstance(s, dict) and isinstance(s.get("layer"), str)}
            kind = importance_label(summary["learner"])
            k = summary.get("n_snapshots", len(summary.get("events", [])))
            when = f"after {k} {'boundaries' if kind == 'Fisher' else 'consolidations'}"
            written.append(plot_importance(tensors, out / "importance.png", layers=layers,
                                           kind=kind, title=f"{kind} {when}: {name}"))
    return written


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a JSONL file as dicts (a missing file gives ``[]``)."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
