"""Evaluation metrics: continual-learning metrics of an accuracy matrix, and detection scores.

Pure functions on plain numbers, NumPy arrays or tensors; they return Python floats or a small
frozen dataclass.

**Accuracy matrix.** ``R`` is a ``T x T`` matrix where ``R[i, j]`` is the accuracy on segment
(task) ``j`` evaluated at the end of segment ``i``, i.e. after training through segment ``i``.
Every entry must be finite: evaluate every segment at every boundary, including segments not
seen yet (the entries above the diagonal, which forward transfer needs). Accuracies may be
fractions or percentages; the metrics come out in the same unit.

**Continual evaluation.** ``A`` is an ``E x T`` matrix where ``A[e, j]`` is the accuracy on
segment ``j`` at the ``e``-th evaluation during the stream, taken after ``steps[e]`` training
steps. Segments are trained once, in order: segment ``j`` takes the steps
``change_points[j-1] < s <= change_points[j]`` (with ``0`` before the first change point and the
end of the stream after the last), so it is *seen* at an evaluation after more than
``change_points[j-1]`` steps and *learned* after ``change_points[j]`` steps.

**Detection scores.** A detector's detections (update indices) are matched to the true change
points of the stream, see :func:`detection_scores`.

References
----------
.. [1] D. Lopez-Paz, M. Ranzato. Gradient Episodic Memory for Continual Learning. NeurIPS 2017,
   arXiv:1706.08840 (ACC, BWT, FWT).
.. [2] A. Chaudhry, P. K. Dokania, T. Ajanthan, P. H. S. Torr. Riemannian Walk for Incremental
   Learning: Understanding Forgetting and Intransigence. ECCV 2018, arXiv:1801.10112
   (forgetting).
.. [3] M. De Lange, G. M. van de Ven, T. Tuytelaars. Continual Evaluation for Lifelong Learning:
   Identifying the Stability Gap. ICLR 2023, arXiv:2205.13452 (min-ACC, WC-ACC).
.. [4] H. Koh, D. Kim, J.-W. Ha, J. Choi. Online Continual Learning on Class Incremental Blurry
   Task Configuration with Anytime Inference. ICLR 2022, arXiv:2110.10031 (anytime accuracy; as
   in CapyMOA's ``OCLMetrics``, over all and over seen segments).
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
    "AnytimeAccuracy",
    "DetectionScores",
    "accuracy_matrix_summary",
    "anytime_accuracy",
    "average_accuracy",
    "backward_transfer",
    "detection_scores",
    "forgetting",
    "forward_transfer",
    "min_accuracy",
    "recovery_steps",
    "wc_accuracy",
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
# continual evaluation


def _as_curve(A: object, steps: object, change_points: object) -> tuple[np.ndarray, np.ndarray,
                                                                           np.ndarray]:
    """Check ``(A, steps, change_points)``; return them with the segment bounds ``(E, T+1)``."""
    curve = _as_array(A, "A")
    if curve.ndim != 2 or curve.shape[0] < 1 or curve.shape[1] < 1:
        raise ValueError(f"A must be a 2-D accuracy curve of shape (E, T) with E, T >= 1, "
                         f"got shape {curve.shape}")
    _check_finite(curve, "A")
    E, T = curve.shape
    at = _as_array(steps, "steps")
    if at.shape != (E,):
        raise ValueError(f"steps must hold one step count per evaluation, shape ({E},), "
                         f"got shape {at.shape}")
    _check_finite(at, "steps")
    if np.any(np.diff(at) <= 0) or at[0] < 0:
        raise ValueError(f"steps must be >= 0 and strictly increasing, got {at.tolist()}")
    cps = _as_array(change_points, "change_points")
    if cps.shape != (T - 1,):
        raise ValueError(f"change_points must hold T - 1 = {T - 1} step indices for {T} segments, "
                         f"got shape {cps.shape}")
    if np.any(np.diff(cps) <= 0) or (T > 1 and cps[0] <= 0):
        raise ValueError(f"change_points must be > 0 and strictly increasing, got {cps.tolist()}")
    bounds = np.concatenate([[0.0], cps, [max(float(at[-1]), float(cps[-1]) if T > 1 else 0.0)]])
    return curve, at, bounds


@dataclass(frozen=True)
class AnytimeAccuracy:
    """Accuracy along the stream; see :func:`anytime_accuracy`.

    Attributes
    ----------
    all
        Mean over evaluations of the mean accuracy over all segments.
    seen
        Mean over evaluations (those with a seen segment) of the mean over seen segments.
    all_curve
        The mean over all segments at each evaluation.
    seen_curve
        The mean over seen segments at each evaluation (``nan`` before any is seen).
    """

    all: float
    seen: float
    all_curve: tuple[float, ...]
    seen_curve: tuple[float, ...]


def anytime_accuracy(A: object, steps: object, change_points: object) -> AnytimeAccuracy:
    r"""Anytime accuracy over all segments and over the segments seen so far.

    .. math::

        a_\mathrm{all}(e) = \frac{1}{T} \sum_{j} A_{e, j}, \qquad
        a_\mathrm{seen}(e) = \frac{1}{|S_e|} \sum_{j \in S_e} A_{e, j}

    where :math:`S_e` are the segments trained on at least once by evaluation :math:`e`
    (``steps[e] > change_points[j-1]``). ``all`` and ``seen`` average these curves over the
    evaluations (``seen`` over those where :math:`S_e` is not empty; ``nan`` if none is).

    Parameters
    ----------
    A
        The ``E x T`` accuracy curve, see the module docstring.
    steps
        The training steps done at each evaluation, strictly increasing.
    change_points
        The ``T - 1`` steps where a new segment starts.

    Returns
    -------
    AnytimeAccuracy

    Examples
    --------
    >>> A = [[0.6, 0.1],   # after 50 steps: segment 0 seen
    ...      [0.9, 0.2],   # after 100 steps: segment 1 starts next
    ...      [0.5, 0.7]]   # after 150 steps: both seen
    >>> r = anytime_accuracy(A, steps=[50, 100, 150], change_points=[100])
    >>> round(r.all, 4), round(r.seen, 4)   # (.35 + .55 + .6) / 3, (.6 + .9 + .6) / 3
    (0.5, 0.7)
    """
    curve, at, bounds = _as_curve(A, steps, change_points)
    seen = at[:, None] > bounds[None, :-1]  # (E, T): segment j started before evaluation e
    all_curve = curve.mean(axis=1)
    n_seen = seen.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        seen_curve = np.where(n_seen > 0, (curve * seen).sum(axis=1) / n_seen, math.nan)
    valid = seen_curve[n_seen > 0]
    return AnytimeAccuracy(
        all=float(all_curve.mean()),
        seen=float(valid.mean()) if len(valid) else math.nan,
        all_curve=tuple(float(v) for v in all_curve),
        seen_curve=tuple(float(v) for v in seen_curve),
    )


def _min_after(curve: np.ndarray, at: np.ndarray, bounds: np.ndarray) -> list[float]:
    """For each segment with evaluations after it was learned, the lowest accuracy there."""
    out = []
    for j in range(curve.shape[1]):
        after = at > bounds[j + 1]
        if after.any():
            out.append(float(curve[after, j].min()))
    return out


def min_accuracy(A: object, steps: object, change_points: object) -> float:
    r"""min-ACC (De Lange et al., 2023): the worst accuracy on each segment after it was learned.

    .. math::

        \mathrm{min\text{-}ACC} = \frac{1}{|L|} \sum_{j \in L}
            \min_{e:\ \mathrm{steps}_e > c_j} A_{e, j}

    where :math:`c_j` is the step at which segment :math:`j` ends and :math:`L` the segments
    with an evaluation after it (at the end of the stream, all but the last). It sees the
    "stability gap", the drop just after a change, that the end-of-segment matrix misses.
    ``nan`` if no segment has an evaluation after it was learned.

    Parameters
    ----------
    A, steps, change_points
        The accuracy curve, its steps and the change points, as in :func:`anytime_accuracy`.

    Returns
    -------
    float

    Examples
    --------
    >>> A = [[0.9, 0.1, 0.1],   # step 100: segment 0 learned
    ...      [0.4, 0.8, 0.1],   # step 150: the gap on segment 0
    ...      [0.7, 0.9, 0.2],   # step 200: segment 1 learned
    ...      [0.6, 0.5, 0.9]]   # step 300: the end
    >>> round(min_accuracy(A, [100, 150, 200, 300], [100, 200]), 4)   # (0.4 + 0.5) / 2
    0.45
    """
    curve, at, bounds = _as_curve(A, steps, change_points)
    worst = _min_after(curve, at, bounds)
    return float(np.mean(worst)) if worst else math.nan


def wc_accuracy(A: object, steps: object, change_points: object) -> float:
    r"""WC-ACC (De Lange et al., 2023): the last segment's final accuracy and min-ACC, weighted.

    .. math::

        \mathrm{WC\text{-}ACC} = \frac{1}{T} A_{E-1, T-1}
            + \left(1 - \frac{1}{T}\right) \mathrm{min\text{-}ACC}

    A lower bound on the accuracy over all segments at any time after each was learned. With
    ``T = 1`` it is the final accuracy on the only segment.

    Parameters
    ----------
    A, steps, change_points
        The accuracy curve, its steps and the change points, as in :func:`anytime_accuracy`.

    Returns
    -------
    float

    Examples
    --------
    >>> A = [[0.9, 0.1, 0.1],
    ...      [0.4, 0.8, 0.1],
    ...      [0.7, 0.9, 0.2],
    ...      [0.6, 0.5, 0.9]]
    >>> round(wc_accuracy(A, [100, 150, 200, 300], [100, 200]), 4)   # 0.9 / 3 + 2 / 3 * 0.45
    0.6
    """
    curve, at, bounds = _as_curve(A, steps, change_points)
    T = curve.shape[1]
    last = float(curve[-1, -1])
    if T == 1:
        return last
    worst = _min_after(curve, at, bounds)
    if not worst:
        return math.nan
    return last / T + (1 - 1 / T) * float(np.mean(worst))


def recovery_steps(A: object, steps: object, change_points: object, *,
                   tolerance: float) -> list[list[float | None]]:
    """Steps after each change until each earlier segment is back near its pre-change accuracy.

    For the change at step ``c`` (the start of segment ``k``) and each earlier segment ``j``, the
    reference is the accuracy on ``j`` at the last evaluation at or before ``c``. Looking at the
    evaluations of segment ``k`` (``c < steps[e] <= end of k``): if none is below
    ``reference - tolerance`` the result is 0; otherwise it is ``steps[e] - c`` for the first
    evaluation at or above that level after the first drop, or ``None`` if the accuracy does
    not come back before the segment ends. The resolution is the spacing of the evaluations.

    Parameters
    ----------
    A, steps, change_points
        The accuracy curve, its steps and the change points, as in :func:`anytime_accuracy`.
    tolerance
        How far below the reference still counts as recovered, >= 0, in the unit of ``A``.

    Returns
    -------
    list of list
        One list per change point, with one entry per earlier segment (``None``: not
        recovered; also ``None`` when no evaluation precedes the change).

    Examples
    --------
    >>> A = [[0.9, 0.1, 0.1],   # step 100: before the first change
    ...      [0.4, 0.8, 0.1],   # step 150: segment 0 dropped
    ...      [0.89, 0.9, 0.2],  # step 200: back within 0.02 of 0.9, 100 steps after the change
    ...      [0.6, 0.5, 0.9]]   # step 300: segments 0 and 1 drop, do not come back
    >>> recovery_steps(A, [100, 150, 200, 300], [100, 200], tolerance=0.02)
    [[100.0], [None, None]]
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not (
            math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    curve, at, bounds = _as_curve(A, steps, change_points)
    out: list[list[float | None]] = []
    for k in range(1, curve.shape[1]):
        c, end = bounds[k], bounds[k + 1]
        before = np.flatnonzero(at <= c)
        window = np.flatnonzero((at > c) & (at <= end))
        row: list[float | None] = []
        for j in range(k):
            if not len(before):
                row.append(None)
                continue
            level = curve[before[-1], j] - tolerance
            below = np.flatnonzero(curve[window, j] < level)
            if not len(below):
                row.append(0.0)
                continue
            back = [e for e in window[below[0]:] if curve[e, j] >= level]
            row.append(float(at[back[0]] - c) if back else None)
        out.append(row)
    return out


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
