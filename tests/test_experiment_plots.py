"""The figures of a run and across runs: what they show, their labels and units, the files written.

Figures are inspected as ``matplotlib.figure.Figure`` objects: axis labels, titles, the data of
their lines and bars, cell text, and where the legends sit (never on the data).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from matplotlib.container import BarContainer

from online_mas.cli import main
from online_mas.experiment.comparison_plots import (
    COMPARISON_FIGURES,
    comparison_accuracy_figure,
    comparison_bars_figure,
    comparison_importance_figure,
    comparison_matrix_figure,
    group_runs,
    mean_std,
)
from online_mas.experiment.plots import (
    accuracy_matrix_figure,
    importance_figure,
    layer_label,
    occurrence_labels,
    stream_accuracy_figure,
)


def _run(**extra: Any) -> dict[str, Any]:
    """A hand-made run summary: two segments, change at step 4, evaluations every 2 steps."""
    run = {"learner": "finetune", "seed": 0, "stream": "s", "n_steps": 8, "batch_size": 16,
           "change_points": [4], "order": [0, 1], "segment_names": ["rotation 0°", "rotation 30°"],
           "events": [], "average_accuracy": 0.5, "forgetting": 0.3, "min_accuracy": 0.2,
           "wc_accuracy": 0.4, "accuracy_matrix": [[0.9, 0.1], [0.4, 0.9]],
           "accuracy_curve": {"steps": [2, 4, 6, 8],
                              "accuracy": [[0.5, 0.1], [0.9, 0.1], [0.4, 0.6], [0.3, 0.9]]}}
    run.update(extra)
    return run


def _bars(ax: Any) -> BarContainer:
    return next(c for c in ax.containers if isinstance(c, BarContainer))


def _texts(ax: Any) -> list[str]:
    return [t.get_text() for t in ax.texts]


def _legends(fig: Any) -> list[Any]:
    return [*fig.legends, *[ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]]


def _assert_legends_off_the_data(fig: Any) -> None:
    """No legend box overlaps the frame of an axes that holds lines or bars."""
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    legends = _legends(fig)
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            if ax.lines or ax.patches or ax.images:
                assert not box.overlaps(ax.get_window_extent(renderer)), (
                    f"legend {[t.get_text() for t in legend.get_texts()]} overlaps {ax.get_title()!r}")


def test_mean_std_and_groups_against_hand_values() -> None:
    assert mean_std([0.5]) == (0.5, 0.0)
    m, s = mean_std([2.0, 4.0, 9.0])
    assert m == 5.0 and s == pytest.approx((9 + 1 + 16) ** 0.5 / 2 ** 0.5)
    with pytest.raises(ValueError, match="at least one value"):
        mean_std([])
    assert list(group_runs([_run(), _run(seed=1), _run(learner="ewc"), _run(group="x")])) == [
        "finetune", "ewc", "finetune (x)"]


def test_layer_and_row_labels() -> None:
    assert layer_label("fc2.weight", "Linear") == "fc2 (Linear).weight"
    assert layer_label("block.0.conv.bias", "Conv2d") == "block.0.conv (Conv2d).bias"
    assert occurrence_labels({"segment_names": ["a", "b"], "order": [0, 1, 0]}, 3) == [
        "a", "b", "a (again)"]
    assert occurrence_labels({"learner": "joint", "eval_steps": [5, 10]}, 2) == ["step 5", "step 10"]


def test_comparison_accuracy_panels_bands_changes_and_detections() -> None:
    runs = [_run(seed=0), _run(seed=1, accuracy_curve={
        "steps": [2, 4, 6, 8], "accuracy": [[0.7, 0.3], [0.7, 0.1], [0.6, 0.4], [0.5, 0.7]]}),
        _run(learner="online-mas", events=[{"step": 5, "reason": "detector"}]),
        _run(learner="online-mas", seed=1, events=[{"step": 6, "reason": "detector"}])]
    fig = comparison_accuracy_figure(group_runs(runs))
    panels = [ax for ax in fig.axes if ax.lines]
    assert [ax.get_title() for ax in panels] == ["rotation 0°", "rotation 30°"]
    assert panels[0].get_ylabel() == "held-out accuracy (%)"
    assert all(ax.get_xlabel() == "step (batches of 16 samples)" for ax in panels)
    assert panels[0].get_ylim() == (0.0, 100.0)
    lines = panels[0].lines
    # mean over the two finetune seeds on segment 0, in %: (50+70)/2, (90+70)/2, ...
    mean = next(ln for ln in lines if list(ln.get_xdata()) == [2, 4, 6, 8])
    assert list(mean.get_ydata()) == pytest.approx([60.0, 80.0, 50.0, 40.0])
    # true change: a solid grey line at step 4, drawn behind the curves
    change = [ln for ln in lines if list(ln.get_xdata()) == [4, 4]]
    assert len(change) == 1 and change[0].get_linestyle() == "-"
    assert change[0].get_zorder() < mean.get_zorder()
    # detections: short ticks (no line) at each seed's step, above the frame, not vertical lines
    ticks = [ln for ln in lines if ln.get_marker() == "|"]
    assert len(ticks) == 1 and sorted(ticks[0].get_xdata()) == [5, 6]
    assert ticks[0].get_linestyle() == "None" and min(ticks[0].get_ydata()) > 1.0
    assert not [ln for ln in lines if list(ln.get_xdata()) in ([5, 5], [6, 6])]
    # a band (mean ± std) per learner with more than one seed
    assert len(panels[0].collections) == 2
    _assert_legends_off_the_data(fig)
    labels = [t.get_text() for t in fig.legends[0].get_texts()] if fig.legends else [
        t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert "finetune (n=2)" in labels and "true change" in labels
    assert "online-mas: detection of one seed" in labels


def test_comparison_matrix_is_the_mean_in_percent() -> None:
    runs = [_run(), _run(seed=1, accuracy_matrix=[[0.7, 0.3], [0.6, 0.8]]),
            _run(learner="ewc", accuracy_matrix=[[1.0, 0.0], [0.255, 0.5]])]
    fig = comparison_matrix_figure(group_runs(runs))
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["finetune (n=2)", "ewc (n=1)"]
    assert _texts(panels[0]) == ["80", "20", "50", "85"]  # (90+70)/2, (10+30)/2, (40+60)/2, (90+80)/2
    assert _texts(panels[1]) == ["100", "0", "26", "50"]
    assert panels[0].get_ylabel() == "evaluated after training on"
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["rotation 0°", "rotation 30°"]
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["rotation 0°", "rotation 30°"]
    assert panels[0].images[0].get_clim() == (0.0, 100.0)
    bar = next(ax for ax in fig.axes if not ax.images and ax.get_ylabel())
    assert bar.get_ylabel() == "accuracy (%)"


def test_comparison_bars_have_error_bars_over_seeds() -> None:
    runs = [_run(average_accuracy=0.5, forgetting=0.3), _run(seed=1, average_accuracy=0.7,
                                                              forgetting=0.1),
            _run(learner="ewc", average_accuracy=0.8, forgetting=0.05)]
    fig = comparison_bars_figure(group_runs(runs), "digits")
    assert fig.get_suptitle() == "digits: end-of-stream and worst-case accuracy"
    acc, fgt = fig.axes
    assert acc.get_ylabel() == "accuracy (%)"
    assert fgt.get_ylabel() == "forgetting (percentage points)"
    acc_bars = _bars(acc)  # ACC bars: one per learner
    assert [b.get_height() for b in acc_bars] == pytest.approx([60.0, 80.0])
    err = acc_bars.errorbar.lines[2][0].get_segments()  # the vertical error bar of finetune
    assert err[0][:, 1] == pytest.approx([60.0 - 200 ** 0.5, 60.0 + 200 ** 0.5])
    assert [b.get_height() for b in _bars(fgt)] == pytest.approx([20.0, 5.0])
    assert [t.get_text() for t in acc.get_xticklabels()] == ["finetune", "ewc"]
    _assert_legends_off_the_data(fig)


def _stats(mean_w: float, mean_b: float) -> dict[str, Any]:
    return {"0.weight": {"numel": 8, "mean": mean_w, "layer": "Linear"},
            "0.bias": {"numel": 2, "mean": mean_b, "layer": "Linear"}}


def test_comparison_importance_names_the_layer_type_and_the_importance() -> None:
    runs = [_run(learner="mas-oracle", importance=_stats(1.0, 4.0), n_snapshots=2),
            _run(learner="mas-oracle", seed=1, importance=_stats(3.0, 4.0), n_snapshots=2),
            _run(learner="ewc", importance=_stats(0.01, 0.02), n_snapshots=2)]
    fig = comparison_importance_figure(group_runs(runs))
    mas, ewc = fig.axes
    assert mas.get_title() == "mas-oracle (n=2): MAS Ω after 2 consolidations"
    assert ewc.get_title() == "ewc (n=1): Fisher after 2 boundaries"
    assert [t.get_text() for t in mas.get_yticklabels()] == ["0 (Linear).weight", "0 (Linear).bias"]
    assert "Fisher" in ewc.get_xlabel() and "MAS Ω" in mas.get_xlabel()
    assert [b.get_width() for b in _bars(mas)] == pytest.approx([2.0, 4.0])
    # share of the total: seed 0: 8/16 and 8/16, seed 1: 24/32 and 8/32 -> 62.5% and 37.5%
    assert [t.strip() for t in _texts(mas)] == ["62%", "38%"]
    assert mas.get_xscale() == "log"


def test_stream_accuracy_names_segments_signal_and_keeps_changes_visible() -> None:
    lines = [{"step": s, "accuracy": 0.5, "signal": 0.3 * s, "eval": [0.6, 0.2]} for s in (2, 4, 6, 8)]
    fig = stream_accuracy_figure(lines, change_points=[4], segment_names=["rotation 0°", "rotation 30°"],
                                 events=[{"step": 5, "reason": "detector"}], signal="entropy",
                                 batch_size=16, order=[0, 1])
    acc, sig = fig.axes
    assert acc.get_ylabel() == "accuracy (%)" and acc.get_ylim() == (0.0, 100.0)
    assert sig.get_ylabel() == "entropy (nats)" and sig.get_xlabel() == "step (batches of 16 samples)"
    held = [ln for ln in acc.lines if ln.get_label().startswith("held-out")]
    assert [ln.get_label() for ln in held] == ["held-out: rotation 0°", "held-out: rotation 30°"]
    assert list(held[0].get_ydata()) == pytest.approx([60.0] * 4)
    (signal_line,) = sig.lines[1:]  # after the change line
    assert list(signal_line.get_ydata()) == pytest.approx([0.6, 1.2, 1.8, 2.4])
    assert signal_line.get_alpha() in (None, 1.0) and signal_line.get_linewidth() >= 1.0
    # the consolidation is a marker above the frame, not a vertical line over the change
    marks = [ln for ln in acc.lines if ln.get_marker() == "v"]
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [5]
    verticals = [ln for ln in acc.lines if len(set(ln.get_xdata())) == 1 and len(ln.get_xdata()) == 2]
    assert [list(ln.get_xdata()) for ln in verticals] == [[4, 4]]
    _assert_legends_off_the_data(fig)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "consolidation (detector)" in labels and "true change" in labels
    assert min(t.get_fontsize() for t in fig.legends[0].get_texts()) >= 8


def test_unit_matrix_and_histograms_in_percent_and_by_layer() -> None:
    fig = accuracy_matrix_figure([[0.904, 0.1], [0.6, 0.8]], rows=["a", "b"], cols=["a", "b"])
    ax, bar = fig.axes
    assert _texts(ax) == ["90", "10", "60", "80"] and bar.get_ylabel() == "accuracy (%)"
    assert ax.images[0].get_clim() == (0.0, 100.0)
    imp = {"1.weight": torch.tensor([[0.0, 1e-3], [1e-2, 1e-1]]), "1.bias": torch.ones(3)}
    fig = importance_figure(imp, layers={"1.weight": "Linear", "1.bias": "Linear"}, kind="Fisher")
    w, _ = fig.axes
    assert w.get_title() == "1 (Linear).weight\n4 entries, 25% zero"
    assert w.get_xlabel() == "log10 Fisher" and w.get_ylabel() == "entries (count)"
    assert sum(p.get_height() for p in w.patches) == 3  # the zero is counted apart


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("plots")
    common = ["--set", "stream.name=rotated-digits", "--set", "stream.n_segments=2", "--set",
              "stream.passes=0.3", "--set", "run.eval_every=5", "--set", "run.plots=false",
              "--set", "experiment.seeds=[0, 1]", "--no-progress"]
    a, b = root / "a", root / "b"
    assert main(["run", *common, "--set", 'experiment.learners=["ewc"]', "--out", str(a)]) == 0
    assert main(["run", *common, "--set", 'experiment.learners=["online-mas"]', "--out", str(b)]) == 0
    return a, b


def test_runs_record_layer_types_and_the_signal(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    ewc = json.loads((a / "ewc" / "seed0" / "summary.json").read_text())
    assert ewc["segment_names"] == ["rotation 0°", "rotation 30°"]
    assert {n: s["layer"] for n, s in ewc["importance"].items()} == {
        f"{k}.{p}": "Linear" for k in (1, 3, 5) for p in ("weight", "bias")}
    assert ewc["signal"] is None
    assert json.loads((b / "online-mas" / "seed1" / "summary.json").read_text())["signal"] == "entropy"


def test_report_writes_every_comparison_figure_for_two_run_dirs(two_runs: tuple[Path, Path],
                                                                tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    a, b = two_runs
    out = tmp_path / "figures"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for name in COMPARISON_FIGURES:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert b"<svg" in (out / f"{name}.svg").read_bytes()[:500], name
        assert str(out / f"{name}.png") in text
    for unit in (a / "ewc" / "seed0", b / "online-mas" / "seed1"):  # the per-run plots, redrawn
        assert {p.name for p in (unit / "plots").iterdir()} >= {"accuracy_matrix.png",
                                                                "stream_accuracy.png"}
    runs = [{**json.loads((d / ln / f"seed{s}" / "summary.json").read_text()), "group": d.name}
            for d, ln in ((a, "ewc"), (b, "online-mas")) for s in (0, 1)]
    fig = comparison_importance_figure(group_runs(runs))
    assert [ax.get_title().split(":")[1].split(" after")[0].strip() for ax in fig.axes] == [
        "Fisher", "MAS Ω"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][:2] == [
        "1 (Linear).weight", "1 (Linear).bias"]
