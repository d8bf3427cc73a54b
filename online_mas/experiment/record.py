"""What a run measures as it goes, and the summary made from it at the end.

:class:`Record` accumulates the accuracy matrix rows, the prequential accuracy (each batch is
predicted by the training forward pass, before the update on it), the loss and the consolidation
events; its state goes into every checkpoint so a resumed run ends with the same numbers.
:func:`summarize` turns a finished record into the ``summary.json`` of a run.

The accuracy matrix ``R[i, j]`` is the accuracy on segment ``j``'s held-out set after training
through occurrence ``i``: it is evaluated at each true change point (before the first batch of
the next occurrence) and at the end of the stream. Evaluation never trains. Every evaluation
(these and the periodic ones of ``run.eval_every``) is also kept in the accuracy curve
``Record.curve``, from which the continual-evaluation metrics (anytime accuracy, min-ACC,
WC-ACC, recovery after a change) are computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from torch import Tensor, nn

from online_mas.metrics import (
    accuracy_matrix_summary,
    anytime_accuracy,
    detection_scores,
    min_accuracy,
    recovery_steps,
    wc_accuracy,
)

__all__ = ["RECOVERY_TOLERANCE", "TIMING_KEY", "Record", "curve_metrics", "importance_stats",
           "layer_types", "matrix_metrics", "summarize"]

_VERSION = 1
#: The key of ``summary.json`` that holds wall-clock numbers (the only non-reproducible part).
TIMING_KEY = "timing"
#: How far (a fraction) below its pre-change accuracy a segment still counts as recovered.
RECOVERY_TOLERANCE = 0.02


class Record:
    """Running measurements of one run (learner, seed); checkpointed with the model.

    Examples
    --------
    >>> r = Record()
    >>> r.add(loss=2.0, correct=8, n=32)
    >>> r.add(loss=1.0, correct=24, n=32)
    >>> r.line(step=2)
    {'step': 2, 'loss': 1.5, 'accuracy': 0.5, 'prequential': 0.5}
    >>> r.add(loss=0.5, correct=32, n=32)
    >>> r.line(step=3)   # the window restarts after each line; the prequential total does not
    {'step': 3, 'loss': 0.5, 'accuracy': 1.0, 'prequential': 0.6666666666666666}
    """

    def __init__(self) -> None:
        self.initial: list[float] = []  # accuracy per segment before any training
        self.rows: list[list[float]] = []  # accuracy matrix rows, one per true change point + end
        self.row_steps: list[int] = []  # steps done when each row was evaluated
        # every evaluation during the stream: (steps done, accuracy per segment); None: a
        # checkpoint written before the curve was kept (its continual metrics are unknown)
        self.curve: list[tuple[int, list[float]]] | None = []
        self.events: list[dict[str, Any]] = []  # consolidations: step, batch, reason
        self.correct = 0  # prequential: correctly predicted samples so far
        self.seen = 0  # prequential: samples so far
        self.loss_sum = 0.0  # sum of the per-batch task losses so far
        self.batches: int | None = 0  # batches trained on so far (None: a checkpoint without it)
        self.elapsed = 0.0  # wall-clock seconds of the run before the current process
        self._w_correct = 0
        self._w_seen = 0
        self._w_loss = 0.0
        self._w_steps = 0

    def add(self, *, loss: float, correct: int, n: int) -> None:
        """Count one training batch: its loss and how many samples were predicted right."""
        self.correct += correct
        self.seen += n
        self.loss_sum += loss
        if self.batches is not None:
            self.batches += 1
        self._w_correct += correct
        self._w_seen += n
        self._w_loss += loss
        self._w_steps += 1

    def line(self, *, step: int, **extra: object) -> dict[str, object]:
        """The next line of ``metrics.jsonl`` (means over the steps since the last line)."""
        out: dict[str, object] = {"step": step}
        if self._w_steps:
            out["loss"] = self._w_loss / self._w_steps
            out["accuracy"] = self._w_correct / self._w_seen
        out["prequential"] = self.correct / self.seen if self.seen else math.nan
        out.update(extra)
        self._w_correct = self._w_seen = self._w_steps = 0
        self._w_loss = 0.0
        return out

    def state_dict(self) -> dict[str, object]:
        """Primitives only (``weights_only`` safe)."""
        return {"version": _VERSION, "initial": list(self.initial),
                "rows": [list(r) for r in self.rows], "row_steps": list(self.row_steps),
                "curve": None if self.curve is None else [[s, list(a)] for s, a in self.curve],
                "events": [dict(e) for e in self.events], "correct": self.correct,
                "seen": self.seen, "loss_sum": self.loss_sum, "elapsed": self.elapsed,
                "batches": -1 if self.batches is None else self.batches,
                "window": [self._w_correct, self._w_seen, self._w_loss, self._w_steps]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        if not isinstance(state, dict) or state.get("version") != _VERSION:
            raise ValueError(f"record state must be a dict with version {_VERSION}")
        self.initial = list(state["initial"])
        self.rows = [list(r) for r in state["rows"]]
        self.row_steps = list(state["row_steps"])
        curve = state.get("curve")  # saved before it was kept: unknown
        self.curve = None if curve is None else [(int(s), list(a)) for s, a in curve]
        self.events = [dict(e) for e in state["events"]]
        self.correct, self.seen = int(state["correct"]), int(state["seen"])
        self.loss_sum, self.elapsed = float(state["loss_sum"]), float(state["elapsed"])
        batches = int(state.get("batches", -1))  # saved before it was kept: unknown
        self.batches = None if batches < 0 else batches
        wc, ws, wl, wn = state["window"]
        self._w_correct, self._w_seen, self._w_loss, self._w_steps = int(wc), int(ws), float(wl), int(wn)


def _mean_loss(record: Record, n_steps: int) -> float | None:
    batches = n_steps if record.batches is None else record.batches
    return record.loss_sum / batches if batches else None


def matrix_metrics(rows: Sequence[Sequence[float]], initial: Sequence[float], *,
                   iid: bool = False) -> dict[str, float | None]:
    """ACC, BWT, FWT and forgetting of an accuracy matrix, via :mod:`online_mas.metrics`.

    ``rows`` has one row per occurrence and one column per segment. When it is square (each
    segment seen once, in order 0..K-1 — the usual case) all four metrics are defined; otherwise
    (a recurring or reordered stream) only the average accuracy of the last row is. With
    ``iid=True`` (joint training, which sees every segment from the start) the rows before the
    last are not "after segment i", so only the average accuracy is reported. Undefined values
    are ``None``.

    Examples
    --------
    >>> R = [[0.9, 0.1, 0.2],
    ...      [0.7, 0.8, 0.3],
    ...      [0.6, 0.5, 0.9]]
    >>> m = matrix_metrics(R, initial=[0.1, 0.1, 0.1])
    >>> {k: round(v, 4) for k, v in m.items()}
    {'average_accuracy': 0.6667, 'backward_transfer': -0.3, 'forward_transfer': 0.1, 'forgetting': 0.3}
    >>> matrix_metrics(R, [0.1, 0.1, 0.1], iid=True)["forgetting"] is None
    True
    """
    if not rows:
        return {"average_accuracy": None, "backward_transfer": None, "forward_transfer": None,
                "forgetting": None}
    square = len(rows) == len(rows[0]) and all(len(r) == len(rows) for r in rows)
    if square and not iid:
        metrics = accuracy_matrix_summary(rows, baseline=list(initial) if initial else None)
        return {k: _finite_or_none(v) for k, v in metrics.items()}
    last = rows[-1]
    return {"average_accuracy": sum(last) / len(last), "backward_transfer": None,
            "forward_transfer": None, "forgetting": None}


def curve_metrics(curve: Sequence[tuple[int, Sequence[float]]] | None, change_points: Sequence[int],
                  *, square: bool, iid: bool = False,
                  tolerance: float = RECOVERY_TOLERANCE) -> dict[str, Any]:
    """The continual-evaluation metrics of an accuracy curve, via :mod:`online_mas.metrics`.

    ``curve`` holds ``(steps done, accuracy per segment)`` for every evaluation during the
    stream. Like BWT, the metrics need each segment seen once, in order (``square``), and a
    learner that is not trained i.i.d.; otherwise, or without a curve, they are ``None``.
    ``recovery_steps`` gives the mean and the largest number of steps until an earlier segment
    is back within ``tolerance`` of its accuracy at the change (over the pairs that recover),
    how many pairs do not recover before the next change, and each pair.

    Examples
    --------
    >>> curve = [(50, [0.5, 0.1]), (100, [0.9, 0.1]), (150, [0.4, 0.8]), (200, [0.9, 0.9])]
    >>> m = curve_metrics(curve, [100], square=True)
    >>> round(m["anytime_accuracy"]["all"], 4), m["min_accuracy"], m["wc_accuracy"]
    (0.575, 0.4, 0.65)
    >>> m["recovery_steps"]["mean"], m["recovery_steps"]["per_change"]
    (100.0, [[100.0]])
    """
    none = {"anytime_accuracy": None, "min_accuracy": None, "wc_accuracy": None,
            "recovery_steps": None}
    if not curve or not square or iid:
        return none
    steps = [s for s, _ in curve]
    A = [list(a) for _, a in curve]
    anytime = anytime_accuracy(A, steps, change_points)
    per_change = recovery_steps(A, steps, change_points, tolerance=tolerance)
    done = [v for row in per_change for v in row if v is not None]
    return {
        "anytime_accuracy": {"all": anytime.all, "seen": _finite_or_none(anytime.seen),
                             "steps": steps, "all_curve": list(anytime.all_curve),
                             "seen_curve": [_finite_or_none(v) for v in anytime.seen_curve]},
        "min_accuracy": _finite_or_none(min_accuracy(A, steps, change_points)),
        "wc_accuracy": _finite_or_none(wc_accuracy(A, steps, change_points)),
        "recovery_steps": {"mean": sum(done) / len(done) if done else None,
                           "max": max(done) if done else None,
                           "not_recovered": sum(v is None for row in per_change for v in row),
                           "tolerance": tolerance, "per_change": per_change},
    }


def layer_types(model: nn.Module) -> dict[str, str]:
    """The class name of the module that owns each parameter, keyed by parameter name.

    Examples
    --------
    >>> layer_types(nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.ReLU(), nn.LayerNorm(2)))
    {'1.weight': 'Linear', '1.bias': 'Linear', '3.weight': 'LayerNorm', '3.bias': 'LayerNorm'}
    """
    return {f"{prefix}.{name}" if prefix else name: type(module).__name__
            for prefix, module in model.named_modules()
            for name, _ in module.named_parameters(recurse=False)}


def importance_stats(importance: dict[str, Tensor] | None, *,
                     layer_types: dict[str, str] | None = None) -> dict[str, dict[str, Any]] | None:
    """Per-parameter statistics of an importance dict (for ``summary.json``).

    ``std`` is the population standard deviation, ``median`` the lower median (torch's). With
    ``layer_types`` (see :func:`layer_types`), each entry also names its module's class
    (``"layer"``).

    Examples
    --------
    >>> import torch
    >>> importance_stats({"w": torch.tensor([0.0, 1.0, 2.0, 5.0])})["w"]  # doctest: +NORMALIZE_WHITESPACE
    {'numel': 4, 'mean': 2.0, 'std': 1.8708287477493286, 'min': 0.0, 'median': 1.0, 'max': 5.0,
     'zero_fraction': 0.25}
    >>> importance_stats({"w": torch.ones(2)}, layer_types={"w": "Linear"})["w"]["layer"]
    'Linear'
    """
    if importance is None:
        return None
    out: dict[str, dict[str, Any]] = {}
    for name, t in importance.items():
        v = t.detach().float().flatten().cpu()
        if v.numel() == 0:
            continue
        out[name] = {"numel": int(v.numel()), "mean": float(v.mean()),
                     "std": float(v.std(correction=0)), "min": float(v.min()),
                     "median": float(v.median()), "max": float(v.max()),
                     "zero_fraction": float((v == 0).float().mean())}
        if layer_types is not None and name in layer_types:
            out[name]["layer"] = layer_types[name]
    return out


def summarize(record: Record, *, learner: str, seed: int, iid: bool, stream: str, n_steps: int,
              batch_size: int, change_points: Sequence[int], order: Sequence[int],
              segment_names: Sequence[str], importance: dict[str, Tensor] | None, detect: bool,
              tolerance: int | None, stored_samples: int | None = None,
              device: str = "cpu", layer_types: dict[str, str] | None = None,
              signal: str | None = None) -> dict[str, object]:
    """The ``summary.json`` of a finished run.

    Everything except the ``"timing"`` entry is a deterministic function of the config and seed
    (bit-identical for an interrupted and resumed run on CPU). ``"stored_samples"`` (the
    samples a memory holds at the end, 0 for a distillation learner) is written only for the
    learners that report it. Detection scores (for learners
    with a detector) match the batch on which each consolidation fired, ``event.step - 1``,
    against the true change points, with ``tolerance`` batches (default: half the shortest
    segment). ``device``, where the last session ran, is recorded with the timing.
    ``layer_types`` (parameter name -> module class) goes into the importance statistics;
    ``signal`` (what the detector watches, e.g. ``"entropy"``; None without a detector) is
    recorded for the plots' axis labels.
    """
    metrics = matrix_metrics(record.rows, record.initial, iid=iid)
    rows = record.rows
    square = bool(rows) and len(rows) == len(rows[0]) and all(len(r) == len(rows) for r in rows)
    continual = curve_metrics(record.curve, change_points, square=square, iid=iid)
    lengths = [b - a for a, b in zip([0, *change_points], [*change_points, n_steps], strict=True)]
    tol = tolerance if tolerance is not None else max(1, min(lengths) // 2)
    detection = None
    if detect:
        fired = [int(e["batch"]) for e in record.events if e["reason"] == "detector"]
        scores = asdict(detection_scores(fired, list(change_points), tolerance=tol, n_steps=n_steps))
        detection = {k: (_finite_or_none(v) if isinstance(v, float) else
                         [list(p) if isinstance(p, tuple) else p for p in v] if isinstance(v, tuple)
                         else v) for k, v in scores.items()}
        detection["tolerance"] = tol
    wall = record.elapsed
    return {
        "learner": learner, "seed": seed, "stream": stream, "n_steps": n_steps,
        "batch_size": batch_size, "segment_names": list(segment_names),
        "change_points": list(change_points), "order": list(order),
        "eval_steps": list(record.row_steps), "initial_accuracy": list(record.initial),
        "accuracy_matrix": [list(r) for r in record.rows],
        # every evaluation during the stream (None: a run resumed from an older checkpoint)
        "accuracy_curve": None if record.curve is None else {
            "steps": [s for s, _ in record.curve], "accuracy": [list(a) for _, a in record.curve]},
        "final_accuracy": list(record.rows[-1]) if record.rows else [],
        **metrics,
        **continual,
        "prequential_accuracy": record.correct / record.seen if record.seen else None,
        # over the batches trained on (skipped non-finite ones have no loss); n_steps if unknown
        "mean_loss": _mean_loss(record, n_steps),
        # batches not trained on because their loss was not finite (None: a checkpoint without it)
        "n_skipped": n_steps - record.batches if record.batches is not None else None,
        "n_snapshots": len(record.events),
        "events": [dict(e) for e in record.events],
        "detection": detection,
        "importance": importance_stats(importance, layer_types=layer_types),
        "signal": signal,
        **({"stored_samples": stored_samples} if stored_samples is not None else {}),
        TIMING_KEY: {"wall_time_s": wall, "samples_per_s": record.seen / wall if wall > 0 else None,
                     "steps_per_s": n_steps / wall if wall > 0 else None, "device": device},
    }


def _finite_or_none(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None

