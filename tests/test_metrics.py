"""Tests for online_mas.metrics against numbers computed by hand."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
import torch

import online_mas.metrics as om_metrics
from online_mas.metrics import (
    DetectionScores,
    accuracy_matrix_summary,
    average_accuracy,
    backward_transfer,
    detection_scores,
    forgetting,
    forward_transfer,
)

# ----------------------------------------------------------------------------------------------
# accuracy matrix

# R[i, j] = accuracy on segment j at the end of segment i. Segment 0 gains from segment 1
# (0.80 -> 0.90) before segment 2 makes it forget, so forgetting != -BWT.
R = [
    [0.80, 0.30, 0.20],
    [0.90, 0.60, 0.25],
    [0.50, 0.55, 0.70],
]
BASELINE = [0.10, 0.20, 0.15]
# By hand:
#   ACC        = (0.50 + 0.55 + 0.70) / 3                         = 1.75 / 3 = 0.58333...
#   BWT        = ((0.50 - 0.80) + (0.55 - 0.60)) / 2              = (-0.30 - 0.05) / 2 = -0.175
#   FWT        = ((R[0,1] - b1) + (R[1,2] - b2)) / 2
#              = ((0.30 - 0.20) + (0.25 - 0.15)) / 2              = 0.10
#   forgetting = ((max(0.80, 0.90) - 0.50) + (max(0.30, 0.60) - 0.55)) / 2
#              = (0.40 + 0.05) / 2                                = 0.225
ACC, BWT, FWT, FORGETTING = 1.75 / 3, -0.175, 0.10, 0.225


@pytest.mark.parametrize(
    "matrix",
    [R, np.array(R), torch.tensor(R, dtype=torch.float64), torch.tensor(R, requires_grad=True)],
    ids=["list", "numpy", "tensor64", "tensor32-grad"],
)
def test_metrics_on_hand_computed_matrix(matrix: object) -> None:
    assert average_accuracy(matrix) == pytest.approx(ACC)
    assert backward_transfer(matrix) == pytest.approx(BWT)
    assert forward_transfer(matrix, BASELINE) == pytest.approx(FWT)
    assert forgetting(matrix) == pytest.approx(FORGETTING)
    for value in (
        average_accuracy(matrix),
        backward_transfer(matrix),
        forward_transfer(matrix, BASELINE),
        forgetting(matrix),
    ):
        assert type(value) is float


def test_forgetting_max_includes_rows_before_training() -> None:
    # Chaudhry et al. take the max over every earlier evaluation: for segment 1 that includes
    # R[0, 1] = 0.7, measured before segment 1 was trained (R[1, 1] = 0.6).
    matrix = [
        [0.8, 0.7, 0.1],
        [0.8, 0.6, 0.1],
        [0.8, 0.5, 0.9],
    ]
    # ((0.8 - 0.8) + (max(0.7, 0.6) - 0.5)) / 2 = 0.1
    assert forgetting(matrix) == pytest.approx(0.1)
    # BWT only looks at the diagonal: ((0.8 - 0.8) + (0.5 - 0.6)) / 2 = -0.05
    assert backward_transfer(matrix) == pytest.approx(-0.05)


def test_metrics_two_segments_in_percent() -> None:
    matrix = [[90.0, 12.0], [70.0, 95.0]]
    assert average_accuracy(matrix) == pytest.approx(82.5)  # (70 + 95) / 2
    assert backward_transfer(matrix) == pytest.approx(-20.0)  # 70 - 90
    assert forward_transfer(matrix, [10.0, 10.0]) == pytest.approx(2.0)  # 12 - 10
    assert forgetting(matrix) == pytest.approx(20.0)  # 90 - 70


def test_single_segment_leaves_transfer_and_forgetting_undefined() -> None:
    matrix = [[0.7]]
    assert average_accuracy(matrix) == pytest.approx(0.7)
    assert math.isnan(backward_transfer(matrix))
    assert math.isnan(forward_transfer(matrix, [0.1]))
    assert math.isnan(forgetting(matrix))


def test_summary() -> None:
    summary = accuracy_matrix_summary(R, BASELINE)
    assert list(summary) == [
        "average_accuracy",
        "backward_transfer",
        "forward_transfer",
        "forgetting",
    ]
    assert summary == pytest.approx(
        {
            "average_accuracy": ACC,
            "backward_transfer": BWT,
            "forward_transfer": FWT,
            "forgetting": FORGETTING,
        }
    )
    without_baseline = accuracy_matrix_summary(R)
    assert list(without_baseline) == list(summary)
    assert math.isnan(without_baseline["forward_transfer"])
    assert without_baseline["forgetting"] == pytest.approx(FORGETTING)


@pytest.mark.parametrize(
    ("matrix", "match"),
    [
        ([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], r"square 2-D .* got shape \(2, 3\)"),
        ([0.1, 0.2], r"square 2-D .* got shape \(2,\)"),
        (np.zeros((2, 2, 2)), r"square 2-D .* got shape \(2, 2, 2\)"),
        (np.zeros((0, 0)), r"T >= 1, got shape \(0, 0\)"),
        (0.5, r"got shape \(\)"),
        ([[0.1, 0.2], [0.3, math.nan]], r"R must be finite, got nan at index \[1, 1\]"),
        ([[0.1, math.inf], [0.3, 0.4]], r"R must be finite, got inf at index \[0, 1\]"),
        ([[0.1, 0.2], [0.3]], r"R must be an array of real numbers"),
        ([["a", "b"], ["c", "d"]], r"R must be an array of real numbers"),
    ],
    ids=["2x3", "1d", "3d", "empty", "scalar", "nan", "inf", "ragged", "strings"],
)
def test_bad_matrix_raises(matrix: object, match: str) -> None:
    for metric in (average_accuracy, backward_transfer, forgetting, accuracy_matrix_summary):
        with pytest.raises(ValueError, match=match):
            metric(matrix)
    with pytest.raises(ValueError, match=match):
        forward_transfer(matrix, BASELINE)


@pytest.mark.parametrize(
    ("baseline", "match"),
    [
        ([0.1, 0.2], r"baseline must hold one accuracy per segment, shape \(3,\) .* \(2,\)"),
        ([[0.1, 0.2, 0.3]], r"shape \(3,\) for a 3x3 R, got shape \(1, 3\)"),
        ([0.1, math.nan, 0.3], r"baseline must be finite, got nan at index 1"),
    ],
)
def test_bad_baseline_raises(baseline: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        forward_transfer(R, baseline)
    with pytest.raises(ValueError, match=match):
        accuracy_matrix_summary(R, baseline)


# ----------------------------------------------------------------------------------------------
# detection scores


def test_detection_scores_hand_computed() -> None:
    true = [100, 300, 600, 800]
    detected = [
        50,  # before any change: false alarm
        110,  # matches 100 (delay 10)
        115,  # a second detection of 100: false alarm
        290,  # 10 steps before 300: a detector cannot see the future, false alarm
        340,  # 40 steps after 300 > tolerance 30: false alarm, and 300 is missed
        600,  # matches 600 (delay 0)
        830,  # matches 800 (delay 30, the tolerance is inclusive)
    ]
    scores = detection_scores(detected[::-1], true, tolerance=30, n_steps=1000)  # any order
    assert scores.matched == ((100, 110), (600, 600), (800, 830))
    assert scores.false_alarms == (50, 115, 290, 340)
    assert scores.missed == (300,)
    assert (scores.n_detected, scores.n_true, scores.n_matched, scores.n_false_alarms) == (
        7,
        4,
        3,
        4,
    )
    assert scores.precision == pytest.approx(3 / 7)
    assert scores.recall == pytest.approx(3 / 4)
    # 2 * (3/7) * (3/4) / (3/7 + 3/4) = (18/28) / (33/28) = 6/11
    assert scores.f1 == pytest.approx(6 / 11)
    assert scores.mean_delay == pytest.approx(40 / 3)  # (10 + 0 + 30) / 3
    assert scores.max_delay == 30.0
    assert scores.false_alarms_per_10k == pytest.approx(40.0)  # 4 * 10_000 / 1000


def test_overlapping_windows_and_duplicates() -> None:
    # Windows [100, 120] and [110, 130] overlap; 115 goes to the earlier change.
    scores = detection_scores([115], [100, 110], tolerance=20, n_steps=200)
    assert scores.matched == ((100, 115),)
    assert scores.missed == (110,)
    # With two detections, both changes are matched, earliest detection first.
    scores = detection_scores([115, 105], [110, 100], tolerance=20, n_steps=200)
    assert scores.matched == ((100, 105), (110, 115))
    # A repeated detection index counts twice: one match, one false alarm.
    scores = detection_scores([110, 110], [100], tolerance=20, n_steps=200)
    assert scores.matched == ((100, 110),)
    assert scores.false_alarms == (110,)
    assert scores.precision == pytest.approx(0.5)


def test_zero_tolerance_needs_the_exact_step() -> None:
    scores = detection_scores([10, 21], [10, 20], tolerance=0, n_steps=100)
    assert scores.matched == ((10, 10),)
    assert scores.missed == (20,)
    assert scores.false_alarms == (21,)
    assert scores.mean_delay == 0.0


def test_no_detections_and_no_changes() -> None:
    scores = detection_scores([], [], tolerance=10, n_steps=100)
    assert (scores.precision, scores.recall, scores.f1) == (1.0, 1.0, 1.0)
    assert math.isnan(scores.mean_delay) and math.isnan(scores.max_delay)
    assert scores.false_alarms_per_10k == 0.0


def test_no_detections_with_changes() -> None:
    scores = detection_scores([], [5, 50], tolerance=10, n_steps=100)
    assert (scores.precision, scores.recall, scores.f1) == (0.0, 0.0, 0.0)
    assert scores.missed == (5, 50)
    assert math.isnan(scores.mean_delay)


def test_detections_without_changes() -> None:
    scores = detection_scores([5, 50], [], tolerance=10, n_steps=100)
    assert (scores.precision, scores.recall, scores.f1) == (0.0, 1.0, 0.0)
    assert scores.false_alarms == (5, 50)
    assert scores.false_alarms_per_10k == pytest.approx(200.0)  # 2 * 10_000 / 100


def test_detection_scores_accepts_arrays_and_tensors() -> None:
    expected = detection_scores([12, 70], [10, 50], tolerance=5, n_steps=100)
    inputs: list[tuple[Any, Any]] = [
        (np.array([12, 70]), np.array([10, 50])),
        (torch.tensor([12, 70]), torch.tensor([10, 50])),
        ((np.int64(12), np.int32(70)), (10, 50)),
    ]
    for detected, true in inputs:
        assert detection_scores(detected, true, tolerance=5, n_steps=100) == expected
    assert expected.matched == ((10, 12),)
    assert all(type(i) is int for pair in expected.matched for i in pair)


def test_detection_scores_is_frozen() -> None:
    scores = detection_scores([1], [1], tolerance=0, n_steps=10)
    assert isinstance(scores, DetectionScores)
    with pytest.raises(dataclasses.FrozenInstanceError):
        scores.precision = 0.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tolerance": -1}, r"tolerance must be an integer >= 0, got -1"),
        ({"tolerance": 1.5}, r"tolerance must be an integer >= 0, got 1.5"),
        ({"n_steps": 0}, r"n_steps must be an integer >= 1, got 0"),
        ({"n_steps": True}, r"n_steps must be an integer >= 1, got True"),
        (
            {"detected": [5, 100]},
            r"detected indices must be in \[0, n_steps\) = \[0, 100\), got 100",
        ),
        ({"detected": [-1]}, r"detected indices must be in .*, got -1"),
        ({"true": [200]}, r"true indices must be in \[0, n_steps\) = \[0, 100\), got 200"),
        ({"true": [10, 30, 10]}, r"true change points must be distinct, got repeats of \[10\]"),
    ],
)
def test_bad_detection_inputs_raise_value_error(kwargs: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {"detected": [5], "true": [5], "tolerance": 3, "n_steps": 100}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        detection_scores(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"detected": [3.0]}, r"detected must hold integer step indices, got 3.0 of type float"),
        ({"detected": [True]}, r"detected must hold integer step indices, got True of type bool"),
        ({"true": [np.float64(3.0)]}, r"true must hold integer step indices"),
        ({"true": torch.tensor([3.0])}, r"true must hold integer step indices"),
        ({"detected": "12"}, r"detected must be a sequence of integer step indices, got '12'"),
        ({"detected": 12}, r"detected must be a sequence of integer step indices, got 12"),
    ],
)
def test_non_integer_indices_raise_type_error(kwargs: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {"detected": [5], "true": [5], "tolerance": 3, "n_steps": 100}
    arguments.update(kwargs)
    with pytest.raises(TypeError, match=match):
        detection_scores(**arguments)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# continual evaluation

# A[e, j] = accuracy on segment j after STEPS[e] steps; segments end at 100, 200 and 300.
# Segment 0 drops right after the change at 100 (the stability gap) and recovers by 175;
# segment 1 drops after 200 and does not recover; segment 0 drops again after 200 and recovers.
A = [
    [0.50, 0.10, 0.10],  # 50: segment 0 seen
    [0.90, 0.10, 0.20],  # 100: segment 0 learned
    [0.30, 0.60, 0.20],  # 125: segment 0 drops
    [0.89, 0.80, 0.20],  # 175: segment 0 back within 0.02 of 0.90
    [0.85, 0.90, 0.30],  # 200: segment 1 learned
    [0.70, 0.40, 0.70],  # 250: segments 0 and 1 drop
    [0.84, 0.50, 0.95],  # 300: segment 0 back within 0.02 of 0.85; segment 1 not
]
STEPS = [50, 100, 125, 175, 200, 250, 300]
CHANGES = [100, 200]
# By hand:
#   anytime all  = mean of the row means
#                = (0.70 + 1.20 + 1.10 + 1.89 + 2.05 + 1.80 + 2.29) / 3 / 7 = 11.03 / 21
#   anytime seen = mean over rows of the mean over seen segments (steps > 0, > 100, > 200):
#                  0.50, 0.90, (0.30 + 0.60) / 2, (0.89 + 0.80) / 2, (0.85 + 0.90) / 2,
#                  (0.70 + 0.40 + 0.70) / 3, (0.84 + 0.50 + 0.95) / 3
#                = (0.50 + 0.90 + 0.45 + 0.845 + 0.875 + 0.60 + 0.76333...) / 7
#   min-ACC      = (min(0.30, 0.89, 0.85, 0.70, 0.84) + min(0.40, 0.50)) / 2 = (0.30 + 0.40) / 2
#                = 0.35 (the end-of-segment matrix would see 0.84 and 0.50)
#   WC-ACC       = 0.95 / 3 + 2 / 3 * 0.35 = 0.55
#   recovery     = change 100: segment 0 below 0.88 at 125, back at 175 -> 75 steps
#                  change 200: segment 0 (ref 0.85) below 0.83 at 250, back at 300 -> 100;
#                  segment 1 (ref 0.90) below 0.88 at 250 and 300 -> None
SEEN = [0.50, 0.90, 0.45, 0.845, 0.875, 0.60, (0.84 + 0.50 + 0.95) / 3]


def test_anytime_accuracy_by_hand() -> None:
    r = om_metrics.anytime_accuracy(A, STEPS, CHANGES)
    assert r.all == pytest.approx(11.03 / 21, abs=1e-12)
    assert r.seen == pytest.approx(sum(SEEN) / 7, abs=1e-12)
    assert r.seen_curve == pytest.approx(SEEN, abs=1e-12)
    assert r.all_curve == pytest.approx([sum(row) / 3 for row in A], abs=1e-12)


def test_anytime_seen_is_nan_before_training() -> None:
    r = om_metrics.anytime_accuracy([[0.1, 0.2], [0.5, 0.2]], [0, 10], [20])
    assert math.isnan(r.seen_curve[0]) and r.seen == pytest.approx(0.5)
    assert r.all == pytest.approx((0.15 + 0.35) / 2)


def test_min_and_wc_accuracy_by_hand() -> None:
    assert om_metrics.min_accuracy(A, STEPS, CHANGES) == pytest.approx(0.35, abs=1e-12)
    assert om_metrics.wc_accuracy(A, STEPS, CHANGES) == pytest.approx(0.55, abs=1e-12)


def test_min_accuracy_only_after_learning() -> None:
    # evaluated only at the segment ends: min-ACC is the accuracy of later rows, never R[j, j]
    curve = [[0.9, 0.0], [0.6, 0.8]]
    assert om_metrics.min_accuracy(curve, [10, 20], [10]) == pytest.approx(0.6)
    assert om_metrics.wc_accuracy(curve, [10, 20], [10]) == pytest.approx(0.8 / 2 + 0.6 / 2)
    one = [[0.3], [0.7]]  # one segment: nothing after it; WC-ACC is the final accuracy
    assert math.isnan(om_metrics.min_accuracy(one, [5, 10], []))
    assert om_metrics.wc_accuracy(one, [5, 10], []) == pytest.approx(0.7)


def test_recovery_steps_by_hand() -> None:
    got = om_metrics.recovery_steps(A, STEPS, CHANGES, tolerance=0.02)
    assert got == [[75.0], [100.0, None]]
    # a wide tolerance: nothing drops below it
    assert om_metrics.recovery_steps(A, STEPS, CHANGES, tolerance=0.65) == [[0.0], [0.0, 0.0]]


@pytest.mark.parametrize(("call", "match"), [
    (lambda: om_metrics.min_accuracy([[0.1, 0.2]], [1], []), r"change_points must hold T - 1 = 1"),
    (lambda: om_metrics.min_accuracy([[0.1], [0.2]], [2, 1], []), r"strictly increasing, got \[2.0, 1.0\]"),
    (lambda: om_metrics.min_accuracy([[0.1], [0.2]], [1], []), r"steps must hold one step count"),
    (lambda: om_metrics.anytime_accuracy([0.1, 0.2], [1, 2], []), r"shape \(E, T\)"),
    (lambda: om_metrics.wc_accuracy([[math.nan]], [1], []), r"A must be finite, got nan"),
    (lambda: om_metrics.recovery_steps(A, STEPS, CHANGES, tolerance=-1), r"tolerance must be .* got -1"),
    (lambda: om_metrics.anytime_accuracy([[0.1, 0.2]], [1], [0]), r"change_points must be > 0"),
])
def test_continual_metrics_reject_bad_input(call: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
