"""PNG plots of a run, drawn headless from its files.

Figures are built with matplotlib's object API on the Agg canvas (``matplotlib.figure.Figure`` +
``FigureCanvasAgg``), so no display and no pyplot state are involved, and nothing changes the
backend of a user's own session.

- ``accuracy_matrix.png``: the accuracy matrix as a heatmap (rows: after occurrence i; columns:
  held-out set of segment j).
- ``stream_accuracy.png``: accuracy along the stream (prequential, and held-out per segment at the
  evaluations), with the true change points (dashed) and the consolidations (solid) marked.
- ``importance.png``: a histogram of log10 importance per parameter tensor ("layer").
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from online_mas import checkpoint

__all__ = ["draw_unit_plots", "plot_accuracy_matrix", "plot_importance", "plot_stream_accuracy"]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
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
