"""Evaluation metrics: continual-learning metrics of an accuracy matrix, and detection scores.

Pure functions on plain numbers, NumPy arrays or tensors; they return Python floats or a small
frozen dataclass.

**Accuracy matrix.** ``R`` is a ``T x T`` matrix where ``R[i, j]`` is the accuracy on segment
(task) ``j`` evaluated at the end of segment ``i``, i.e. after training through segment ``i``.
Every entry must be finite: evaluate every segment at every boundary, including segments not
seen yet (the entries above the diagonal, which forward transfer needs). Accuracies may be
fractions or percentages; the metrics come out in the same unit.

**Detection scores.** A detector's detections (update indices) are matched to the true change
points of the stream, see :func:`detection_scores`.

References
----------
.. [1] D. Lopez-Paz, M. Ranzato. Gradient Episodic Memory for Continual Learning. NeurIPS 2017,
   arXiv:1706.08840 (ACC, BWT, FWT).
.. [2] A. Chaudhry, P. K. Dokania, T. Ajanthan, P. H. S. Torr. Riemannian Walk for Incremental
   Learning: Understanding Forgetting and Intransigence. ECCV 2018, arXiv:1801.10112
   (forgetting).
"""

from __future__ import annotations

import itertools
import math
import numbers
import operator
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "DetectionScores",
    "accuracy_matrix_summary",
    "average_accuracy",
    "backward_transfer",
    "detection_scores",
    "forgetting",
    "forward_transfer",
]

# ----------------------------------------------------------------------------------------------
# accuracy matrix


def _as_array(values: object, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be an array of real numbers, got {values!r}") from error
    return array


def _check_finite(array: np.ndarray, name: str) -> None:
    bad = np.argwhere(~np.isfinite(array))
    if len(bad):
        where = [int(i) for i in bad[0]]
        value = array[tuple(where)]
        raise ValueError(
            f"{name} must be finite, got {value} at index {where if len(where) > 1 else where[0]}"
        )


def _as_matrix(R: object) -> np.ndarray:
    matrix = _as_array(R, "R")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 1:
        raise ValueError(
            f"R must be a square 2-D accuracy matrix of shape (T, T) with T >= 1, "
            f"got shape {matrix.shape}"
        )
    _check_finite(matrix, "R")
    return matrix


def average_accuracy(R: object) -> float:
    r"""Average accuracy at the end of the stream (ACC of GEM).

    .. math:: \mathrm{ACC} = \frac{1}{T} \sum_{j=0}^{T-1} R_{T-1, j}

    Parameters
    ----------
    R
        The ``T x T`` accuracy matrix (array-like or tensor, finite), see the module docstring.

    Returns
    -------
    float
        The mean of the last row.

    Examples
    --------
    >>> R = [[0.9, 0.1, 0.2],
    ...      [0.7, 0.8, 0.3],
    ...      [0.6, 0.5, 0.9]]
    >>> round(average_accuracy(R), 4)
    0.6667
    """
    matrix = _as_matrix(R)
    return float(matrix[-1].mean())


def backward_transfer(R: object) -> float:
    r"""Backward transfer (BWT of GEM): how training on later segments changed earlier ones.

    .. math:: \mathrm{BWT} = \frac{1}{T-1} \sum_{j=0}^{T-2} \left(R_{T-1, j} - R_{j, j}\right)

    Negative values mean forgetting. With ``T = 1`` there is no earlier segment and BWT is
    undefined: the result is ``nan`` (not 0, which would read as "no forgetting").

    Parameters
    ----------
    R
        The ``T x T`` accuracy matrix.

    Returns
    -------
    float
        BWT, or ``nan`` if ``T = 1``.

    Examples
    --------
    >>> R = [[0.9, 0.1, 0.2],
    ...      [0.7, 0.8, 0.3],
    ...      [0.6, 0.5, 0.9]]
    >>> round(backward_transfer(R), 4)  # ((0.6 - 0.9) + (0.5 - 0.8)) / 2
    -0.3
    """
    matrix = _as_matrix(R)
    T = matrix.shape[0]
    if T == 1:
        return math.nan
    return float((matrix[-1, :-1] - np.diag(matrix)[:-1]).mean())


def forward_transfer(R: object, baseline: object) -> float:
    r"""Forward transfer (FWT of GEM): how earlier segments help zero-shot on the next one.

    .. math:: \mathrm{FWT} = \frac{1}{T-1} \sum_{j=1}^{T-1} \left(R_{j-1, j} - b_j\right)

    where :math:`b_j` is the accuracy on segment :math:`j` of a randomly initialised model.
    With ``T = 1`` FWT is undefined and the result is ``nan``.

    Parameters
    ----------
    R
        The ``T x T`` accuracy matrix.
    baseline
        The ``T`` accuracies :math:`b_0, \dots, b_{T-1}` of the randomly initialised model, one
        per segment (:math:`b_0` is required for alignment but unused).

    Returns
    -------
    float
        FWT, or ``nan`` if ``T = 1``.

    Examples
    --------
    >>> R = [[0.9, 0.1, 0.2],
    ...      [0.7, 0.8, 0.3],
    ...      [0.6, 0.5, 0.9]]
    >>> round(forward_transfer(R, [0.1, 0.1, 0.1]), 4)  # ((0.1 - 0.1) + (0.3 - 0.1)) / 2
    0.1
    """
    matrix = _as_matrix(R)
    T = matrix.shape[0]
    b = _as_array(baseline, "baseline")
    if b.shape != (T,):
        raise ValueError(
            f"baseline must hold one accuracy per segment, shape ({T},) for a {T}x{T} R, "
            f"got shape {b.shape}"
        )
    _check_finite(b, "baseline")
    if T == 1:
        return math.nan
    return float((np.diag(matrix, k=1) - b[1:]).mean())


def forgetting(R: object) -> float:
    r"""Average forgetting (Chaudhry et al., 2018) at the end of the stream.

    .. math::

        F = \frac{1}{T-1} \sum_{j=0}^{T-2}
            \left(\max_{l \in \{0, \dots, T-2\}} R_{l, j} - R_{T-1, j}\right)

    The maximum runs over every earlier evaluation, as in the paper (it includes rows before
    segment ``j`` was trained, which in practice are not the maximum). Each term is >= 0 unless
    the final accuracy is the best seen so far. With ``T = 1`` forgetting is undefined and the
    result is ``nan``.

    Parameters
    ----------
    R
        The ``T x T`` accuracy matrix.

    Returns
    -------
    float
        Average forgetting, or ``nan`` if ``T = 1``.

    Examples
    --------
    >>> R = [[0.9, 0.1, 0.2],
    ...      [0.7, 0.8, 0.3],
    ...      [0.6, 0.5, 0.9]]
    >>> round(forgetting(R), 4)  # ((0.9 - 0.6) + (0.8 - 0.5)) / 2
    0.3
    """
    matrix = _as_matrix(R)
    T = matrix.shape[0]
    if T == 1:
        return math.nan
    best = matrix[:-1, :-1].max(axis=0)
    return float((best - matrix[-1, :-1]).mean())


def accuracy_matrix_summary(R: object, baseline: object | None = None) -> dict[str, float]:
    """All accuracy-matrix metrics at once.

    Parameters
    ----------
    R
        The ``T x T`` accuracy matrix.
    baseline
        Accuracies of a randomly initialised model per segment, for forward transfer; ``None``
        leaves ``"forward_transfer"`` as ``nan``.

    Returns
    -------
    dict
        ``{"average_accuracy", "backward_transfer", "forward_transfer", "forgetting"}``, always
        these four keys (so rows of results line up), as Python floats.

    Examples
    --------
    >>> R = [[0.9, 0.1, 0.2],
    ...      [0.7, 0.8, 0.3],
    ...      [0.6, 0.5, 0.9]]
    >>> for name, value in accuracy_matrix_summary(R, [0.1, 0.1, 0.1]).items():
    ...     print(f"{name}: {value:.4f}")
    average_accuracy: 0.6667
    backward_transfer: -0.3000
    forward_transfer: 0.1000
    forgetting: 0.3000
    """
    return {
        "average_accuracy": average_accuracy(R),
        "backward_transfer": backward_transfer(R),
        "forward_transfer": math.nan if baseline is None else forward_transfer(R, baseline),
        "forgetting": forgetting(R),
    }


# ----------------------------------------------------------------------------------------------
# detection scores


@dataclass(frozen=True)
class DetectionScores:
    """How well detections match the true change points; see :func:`detection_scores`.

    Attributes
    ----------
    precision
        Matched detections / detections (conventions for empty lists in
        :func:`detection_scores`).
    recall
        Matched change points / change points.
    f1
        Harmonic mean of precision and recall, 0 when both are 0.
    mean_delay
        Mean of ``detection - change`` over matched pairs, ``nan`` if none.
    max_delay
        Largest such delay, ``nan`` if no pair.
    false_alarms_per_10k
        Unmatched detections per 10,000 steps of the stream.
    n_detected
        Number of detections (duplicates included).
    n_true
        Number of true change points.
    n_matched
        Number of matched pairs.
    n_false_alarms
        Number of unmatched detections.
    matched
        The matched ``(change, detection)`` pairs, in time order.
    false_alarms
        The unmatched detections, in time order.
    missed
        The unmatched change points, in time order.
    """

    precision: float
    recall: float
    f1: float
    mean_delay: float
    max_delay: float
    false_alarms_per_10k: float
    n_detected: int
    n_true: int
    n_matched: int
    n_false_alarms: int
    matched: tuple[tuple[int, int], ...]
    false_alarms: tuple[int, ...]
    missed: tuple[int, ...]


def _check_positive_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _as_indices(values: Iterable[object], name: str, n_steps: int) -> list[int]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a sequence of integer step indices, got {values!r}")
    indices = []
    for value in values:
        try:
            if isinstance(value, bool | float):
                raise TypeError
            index = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"{name} must hold integer step indices, got {value!r} "
                f"of type {type(value).__name__}"
            ) from None
        if not 0 <= index < n_steps:
            raise ValueError(
                f"{name} indices must be in [0, n_steps) = [0, {n_steps}), got {index}"
            )
        indices.append(index)
    return sorted(indices)


def detection_scores(
    detected: Iterable[int],
    true: Iterable[int],
    *,
    tolerance: int,
    n_steps: int,
) -> DetectionScores:
    """Match detections to true change points; precision, recall, delays and false alarms.

    **Matching.** A detection ``d`` can match a change point ``t`` only if
    ``t <= d <= t + tolerance``: a detection before the change cannot be a response to it (a
    detector does not see the future), and one later than ``tolerance`` steps is too late. Change
    points are taken in time order, each matched to the earliest still-unmatched detection in its
    window; each detection matches at most one change and each change at most one detection.
    This greedy rule maximises the number of matched pairs (all windows have the same length).
    When change points are closer than ``tolerance``, their windows overlap and a detection may
    be credited to the earlier change. Unmatched detections are false alarms (a second detection
    of the same change is one); unmatched change points are missed.

    **Conventions for empty lists.** ``precision = n_matched / n_detected``; with no detections
    it is 1.0 if there is no change point either (nothing claimed, nothing missed) and 0.0
    otherwise (a silent detector gets no credit). ``recall = n_matched / n_true``; with no change
    points it is 1.0 (nothing to find), so false alarms show in precision, F1 and
    ``false_alarms_per_10k``. ``f1`` is 0 when precision and recall are both 0. Delays are
    ``nan`` when nothing is matched.

    Parameters
    ----------
    detected
        Step indices at which the detector fired, in ``[0, n_steps)``, any order; a repeated
        index counts as several detections.
    true
        Step indices of the true change points (the first step of each new regime), in
        ``[0, n_steps)``, any order, without repeats.
    tolerance
        Largest accepted delay, an integer >= 0 (0 accepts only ``d == t``).
    n_steps
        Length of the stream, an integer >= 1, for the false-alarm rate and index checks.

    Returns
    -------
    DetectionScores

    Examples
    --------
    >>> scores = detection_scores([105, 130, 380, 900], [100, 400, 700], tolerance=50,
    ...                           n_steps=1000)
    >>> scores.matched, scores.false_alarms, scores.missed
    (((100, 105),), (130, 380, 900), (400, 700))
    >>> scores.precision, round(scores.recall, 4), scores.mean_delay, scores.false_alarms_per_10k
    (0.25, 0.3333, 5.0, 30.0)
    """
    n_steps = _check_positive_int("n_steps", n_steps, minimum=1)
    tolerance = _check_positive_int("tolerance", tolerance, minimum=0)
    detections = _as_indices(detected, "detected", n_steps)
    changes = _as_indices(true, "true", n_steps)
    repeated = sorted({t for t, u in itertools.pairwise(changes) if t == u})
    if repeated:
        raise ValueError(f"true change points must be distinct, got repeats of {repeated}")

    matched: list[tuple[int, int]] = []
    false_alarms: list[int] = []
    missed: list[int] = []
    k = 0  # the first detection not yet matched nor declared a false alarm
    for t in changes:
        while k < len(detections) and detections[k] < t:
            false_alarms.append(detections[k])
            k += 1
        if k < len(detections) and detections[k] <= t + tolerance:
            matched.append((t, detections[k]))
            k += 1
        else:
            missed.append(t)
    false_alarms.extend(detections[k:])

    n_detected, n_true, n_matched = len(detections), len(changes), len(matched)
    # 0/0 conventions: see the docstring
    precision = n_matched / n_detected if n_detected else float(n_true == 0)
    recall = n_matched / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    delays = [d - t for t, d in matched]
    return DetectionScores(
        precision=precision,
        recall=recall,
        f1=f1,
        mean_delay=sum(delays) / len(delays) if delays else math.nan,
        max_delay=float(max(delays)) if delays else math.nan,
        false_alarms_per_10k=len(false_alarms) * 10_000 / n_steps,
        n_detected=n_detected,
        n_true=n_true,
        n_matched=n_matched,
        n_false_alarms=len(false_alarms),
        matched=tuple(matched),
        false_alarms=tuple(false_alarms),
        missed=tuple(missed),
    )
