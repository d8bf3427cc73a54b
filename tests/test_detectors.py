"""Tests for online_mas.detectors: exact detection indices, conventions, the shared contract."""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from river import drift

from online_mas.detectors import (
    CUSUM,
    Detector,
    NeverFires,
    PageHinkley,
    Periodic,
    Plateau,
    ScaledCUSUM,
    Windowed,
    detector_state_dict,
    load_detector_state,
)

# ----------------------------------------------------------------------------------------------
# helpers


def gauss_series(seed: int, segments: Sequence[tuple[float, int]], sd: float = 1.0) -> list[float]:
    """Piecewise-constant mean plus seeded Gaussian noise: segments of (mean, length)."""
    rng = random.Random(seed)
    out: list[float] = []
    for mean, length in segments:
        out += [rng.gauss(mean, sd) for _ in range(length)]
    return out


def detections(detector: Any, values: Sequence[float]) -> list[int]:
    """Indices of the updates after which ``detector.drift_detected`` was True."""
    found = []
    for i, x in enumerate(values):
        detector.update(x)
        if detector.drift_detected:
            found.append(i)
    return found


# Mean shifts of 2 standard deviations at index 1000 (and back at 2000 for BOTH).
UP = gauss_series(1, [(0.0, 1000), (2.0, 1000)])
DOWN = gauss_series(2, [(0.0, 1000), (-2.0, 1000)])
BOTH = gauss_series(3, [(0.0, 1000), (2.0, 1000), (0.0, 1000)])

# A deterministic "noisy" step: a zero-mean pattern -0.1, 0, 0.1, ... then +10 from index 500.
STEP = [0.1 * (i % 3 - 1) for i in range(500)] + [10.0 + 0.1 * (i % 3 - 1) for i in range(500)]
CONSTANT = [5.0] * 1000

# The hand-made loss curve of the Plateau docstring: task 1 learned, new task at index 20.
CURVE = [2.0, 1.5, 1.0, 0.6, 0.3, 0.15] + [0.1] * 14 + [2.0, 1.8, 1.2, 0.7, 0.4, 0.2] + [0.1] * 14


# ----------------------------------------------------------------------------------------------
# PageHinkley


def test_page_hinkley_by_hand() -> None:
    # alpha=1, delta=0: after [0, 0, 0] the running mean is 0 and the sums are 0; x=10 makes the
    # mean 2.5 and m+ = 10 - 2.5 = 7.5 > 5 = threshold, with min m+ = 0.
    ph = PageHinkley(min_instances=1, delta=0.0, threshold=5.0, alpha=1.0, mode="up")
    assert detections(ph, [0.0, 0.0, 0.0, 10.0]) == [3]
    # m+ = 6 - 1.5 = 4.5 is not > 5.
    ph = PageHinkley(min_instances=1, delta=0.0, threshold=5.0, alpha=1.0, mode="up")
    assert detections(ph, [0.0, 0.0, 0.0, 6.0]) == []
    # Symmetric decrease: max m- = 0, m- = -7.5.
    ph = PageHinkley(min_instances=1, delta=0.0, threshold=5.0, alpha=1.0, mode="down")
    assert detections(ph, [0.0, 0.0, 0.0, -10.0]) == [3]


def test_page_hinkley_min_instances_delays_detection() -> None:
    ph = PageHinkley(min_instances=5, delta=0.0, threshold=5.0, alpha=1.0, mode="up")
    # The jump at index 3 exceeds the threshold, but the test only starts at the 5th value,
    # where m+ - min m+ = (10 - 2.5) + (10 - 4) = 13.5 > 5 still.
    assert detections(ph, [0.0, 0.0, 0.0, 10.0, 10.0]) == [4]


@pytest.mark.parametrize(
    ("mode", "up", "down", "both"),
    [
        ("up", [1010], [], [1006]),
        # mode="down" on BOTH: the running mean never reset, so the return to 0 at 2000 is a
        # decrease relative to the mean of both regimes.
        ("down", [], [1010], [2016]),
        ("both", [1010], [1010], [1006, 2006]),
    ],
)
def test_page_hinkley_exact_indices(
    mode: str, up: list[int], down: list[int], both: list[int]
) -> None:
    def make() -> PageHinkley:
        return PageHinkley(delta=0.5, threshold=15.0, mode=mode)

    assert detections(make(), UP) == up
    assert detections(make(), DOWN) == down
    assert detections(make(), BOTH) == both


# ----------------------------------------------------------------------------------------------
# CUSUM


def test_cusum_by_hand() -> None:
    # target 0, std 1, k=0.5, h=2; index 0 is the warm-up; each 1.0 adds 1 - 0.5 to S+:
    # S+ = 0.5, 1.0, 1.5, 2.0, 2.5 at indices 1..5, and 2.5 > 2 first at index 5.
    cusum = CUSUM(min_instances=1, slack=0.5, threshold=2.0, target=0.0, std=1.0, mode="up")
    assert detections(cusum, [0.0] + [1.0] * 6) == [5]
    # Deviations of 0.5 are absorbed entirely by the slack.
    cusum = CUSUM(min_instances=1, slack=0.5, threshold=2.0, target=0.0, std=1.0)
    assert detections(cusum, [0.0] + [0.5] * 100) == []
    # Two-sided: the same by hand downwards.
    cusum = CUSUM(min_instances=1, slack=0.5, threshold=2.0, target=0.0, std=1.0, mode="both")
    assert detections(cusum, [0.0] + [-1.0] * 6) == [5]


def test_cusum_estimates_target_and_std_from_warm_up() -> None:
    # Warm-up [1, 3]: mean 2, sample std sqrt(2); k*sigma = 0.5*sqrt(2) ~ 0.707,
    # h*sigma = 2*sqrt(2) ~ 2.83. Each 4.0 adds 2 - 0.707 = 1.293: S+ = 1.29, 2.59, 3.88.
    cusum = CUSUM(min_instances=2, slack=0.5, threshold=2.0, mode="up")
    assert detections(cusum, [1.0, 3.0, 4.0, 4.0, 4.0]) == [4]
    assert cusum.state_dict()["state"]["mu"] == 2.0
    assert cusum.state_dict()["state"]["sigma"] == pytest.approx(math.sqrt(2.0))


def test_cusum_min_std_floors_the_scale() -> None:
    # A constant warm-up gives sigma = 0: any deviation is a change unless min_std is set.
    assert detections(CUSUM(min_instances=3), [1.0, 1.0, 1.0, 1.001]) == [3]
    assert detections(CUSUM(min_instances=3, min_std=0.1), [1.0, 1.0, 1.0, 1.001]) == []


@pytest.mark.parametrize(
    ("mode", "up", "down", "both"),
    [
        ("up", [1003], [], [1004]),
        # the target stays the warm-up mean 0, so returning to 0 at 2000 is no change
        ("down", [], [1009], []),
        ("both", [1003], [1009], [1004, 2004]),
    ],
)
def test_cusum_exact_indices(mode: str, up: list[int], down: list[int], both: list[int]) -> None:
    def make() -> CUSUM:
        return CUSUM(min_instances=100, mode=mode)

    assert detections(make(), UP) == up
    assert detections(make(), DOWN) == down
    assert detections(make(), BOTH) == both


# ----------------------------------------------------------------------------------------------
# ScaledCUSUM and Windowed


def test_scaled_cusum_exact_indices_and_units_free() -> None:
    # UP: +2 sd at 1000; BOTH: +2 at 1000, back to 0 at 2000. The same in any units.
    for scale, offset in ((1.0, 0.0), (1e-4, 3.0), (250.0, -7.0)):
        assert detections(ScaledCUSUM(), [scale * x + offset for x in UP]) == [1009]
        assert detections(ScaledCUSUM(mode="down"), [scale * x + offset for x in UP]) == []
        both = detections(ScaledCUSUM(warmup=16, mode="both"), [scale * x + offset for x in BOTH])
        assert both == [1006, 2004]
    # 8 values are a short warm-up: the scale they give is rough, here too small after the reset
    assert detections(ScaledCUSUM(warmup=8, mode="both"), BOTH) == [1006, 2004, 2024]


def test_scaled_cusum_outliers_alone_never_detect() -> None:
    # One wild value in every 20 (a heavy tail): the winsorised scale and the clipped steps ignore it.
    rng = random.Random(0)
    values = [rng.gauss(0.0, 1.0) if i % 20 else 1e6 for i in range(20000)]
    assert detections(ScaledCUSUM(mode="both"), values) == []


def test_scaled_cusum_warmup_sets_level_and_scale_by_median_and_mad() -> None:
    cusum = ScaledCUSUM(warmup=5)
    for x in [1.0, 2.0, 3.0, 4.0, 100.0]:
        cusum.update(x)
    state = cusum.state_dict()["state"]
    assert state["mean"] == 3.0 and state["var"] == pytest.approx((1.4826 * 1.0) ** 2)


@pytest.mark.parametrize("batch", [1, 3, 4, 32, 1024])
def test_windowed_is_the_same_whatever_the_batch_size(batch: int) -> None:
    values = gauss_series(4, [(0.0, 3000), (1.0, 3000), (0.0, 3000)])
    one = Windowed(ScaledCUSUM(mode="both"), window=16, min_segment=500)
    per_sample = detections(one, values)
    many = Windowed(ScaledCUSUM(mode="both"), window=16, min_segment=500)
    found = []
    for i in range(0, len(values), batch):
        many.update_many(values[i:i + batch])
        found += many.detections
        assert many.drift_detected == bool(many.detections)
    assert found == per_sample and len(per_sample) == 2
    assert 3000 <= per_sample[0] < 3300 and 6000 <= per_sample[1] < 6300, per_sample
    inner_one, inner_many = one.state_dict()["inner"]["state"], many.state_dict()["inner"]["state"]
    assert inner_many["n"] == inner_one["n"]  # window sums differ only by rounding
    assert inner_many["mean"] == pytest.approx(inner_one["mean"], rel=1e-12)


def test_windowed_merges_detections_closer_than_min_segment() -> None:
    held = Windowed(Periodic(every=1), window=10, min_segment=95)  # the inner one fires every window
    assert detections(held, [0.0] * 400) == [94, 189, 284, 379]
    plain = Windowed(Periodic(every=1), window=10)
    assert detections(plain, [0.0] * 40) == [9, 19, 29, 39]


def test_windowed_refuses_a_state_of_a_per_call_detector() -> None:
    old = PageHinkley(min_instances=30, delta=0.05, threshold=1.0, alpha=0.999, mode="up").state_dict()
    with pytest.raises(ValueError, match=r"state_dict is for a 'PageHinkley' fed one value per observe"):
        Windowed(ScaledCUSUM()).load_state_dict(old)
    saved = Windowed(ScaledCUSUM(), window=8).state_dict()
    with pytest.raises(ValueError, match="window differs: saved 8, this detector 32"):
        Windowed(ScaledCUSUM()).load_state_dict(saved)


# ----------------------------------------------------------------------------------------------
# Plateau


def test_plateau_hand_made_curve() -> None:
    # Window means (window=5) by hand:
    #   index 7: [.6, .3, .15, .1, .1] -> 0.25, not < 0.2
    #   index 8: [.3, .15, .1, .1, .1] -> 0.15 < 0.2, variance 0.006 < 0.1 -> fires (first
    #            plateau: the start of the stream counts as a peak)
    #   index 20: [.1, .1, .1, .1, 2.0] -> 0.48 > 0.15 + sqrt(0.006) = 0.227 -> new peak
    #   index 27: [.7, .4, .2, .1, .1] -> 0.3, not < 0.2
    #   index 28: [.4, .2, .1, .1, .1] -> 0.18 < 0.2, variance 0.0136 < 0.1 -> fires
    plateau = Plateau(window=5, mean_threshold=0.2, variance_threshold=0.1)
    assert detections(plateau, CURVE) == [8, 28]


def test_plateau_window_statistics() -> None:
    plateau = Plateau(window=5)
    for x in CURVE[:9]:
        plateau.update(x)
    assert plateau.window_mean == pytest.approx(0.15)
    assert plateau.window_variance == pytest.approx(0.006)
    assert math.isnan(Plateau(window=5).window_mean)


def test_plateau_fires_once_per_plateau_and_needs_a_new_peak() -> None:
    plateau = Plateau(window=5, mean_threshold=0.2, variance_threshold=0.1)
    # A long plateau fires once; a bump that stays below last mean + std does not re-arm it.
    flat = [0.1] * 100
    bump = [0.1, 0.15, 0.1]  # window mean at most 0.12 < 0.15 + 0.077
    assert detections(plateau, CURVE[:20] + flat + bump + flat) == [8]


def test_plateau_first_plateau_fires_immediately_on_a_low_stream() -> None:
    # The start of the stream counts as a peak: a stream that starts low is consolidated as
    # soon as the window is full, and only once.
    assert detections(Plateau(window=5), [0.1] * 50) == [4]


def test_plateau_nothing_before_the_window_is_full() -> None:
    assert detections(Plateau(window=5), [0.0] * 4) == []


def test_plateau_relative_is_scale_free() -> None:
    def make() -> Plateau:
        return Plateau(window=5, mean_threshold=0.1, variance_threshold=0.01, relative=True)

    expected = detections(make(), CURVE)
    # peak 1.08 (window at index 4): 0.1 * 1.08 = 0.108 is first beaten at index 10 (0.1);
    # after the jump the peak is 1.22 (index 24) and 0.12 < 0.122 at index 29.
    assert expected == [10, 29]
    for scale in (2.0**-10, 8.0, 2.0**12):  # powers of two keep the arithmetic exact
        assert detections(make(), [scale * x for x in CURVE]) == expected
    # The absolute thresholds are tied to the loss scale: the same curve times 1000 never fires.
    assert detections(Plateau(window=5), [1000.0 * x for x in CURVE]) == []


def test_plateau_relative_never_fires_without_positive_peak() -> None:
    plateau = Plateau(window=3, relative=True)
    assert detections(plateau, [-1.0] * 20 + [0.0] * 20) == []


# ----------------------------------------------------------------------------------------------
# baselines


@pytest.mark.parametrize("every", [1, 3, 7])
def test_periodic_fires_at_multiples(every: int) -> None:
    found = detections(Periodic(every), [0.0] * 30)
    assert [i + 1 for i in found] == list(range(every, 31, every))


def test_periodic_does_not_count_non_finite_values() -> None:
    periodic = Periodic(every=2)
    assert detections(periodic, [0.0, math.nan, 0.0, 0.0, math.inf, 0.0]) == [2, 5]
    assert periodic.n_skipped == 2


def test_never_fires() -> None:
    never = NeverFires()
    assert detections(never, STEP + UP + [math.inf, -1e300, 1e300]) == []
    assert never.n_skipped == 1


# ----------------------------------------------------------------------------------------------
# reset after detection, non-finite values, input types


@pytest.mark.parametrize(
    "make",
    [
        lambda: PageHinkley(delta=0.5, threshold=15.0),
        lambda: CUSUM(min_instances=100),
        lambda: Periodic(every=70),
        lambda: ScaledCUSUM(),
    ],
    ids=["PageHinkley", "CUSUM", "Periodic", "ScaledCUSUM"],
)
def test_update_after_detection_resets(make: Callable[[], Any]) -> None:
    detector = make()
    first = detections(detector, UP)[0]
    assert detector.drift_detected is False  # later updates lowered the flag
    # Replay up to the first detection, then one more value: the state equals a fresh
    # detector's state after that one value.
    detector = make()
    for x in UP[: first + 1]:
        detector.update(x)
    assert detector.drift_detected
    fresh = make()
    detector.update(UP[first + 1])
    fresh.update(UP[first + 1])
    assert detector.drift_detected is False
    assert detector.state_dict() == fresh.state_dict()


def test_plateau_update_after_detection_keeps_memory() -> None:
    plateau = Plateau(window=5)
    for x in CURVE[:9]:
        plateau.update(x)
    assert plateau.drift_detected
    plateau.update(0.1)
    assert plateau.drift_detected is False
    state = plateau.state_dict()["state"]
    assert state["values"] == [0.15, 0.1, 0.1, 0.1, 0.1]
    assert state["new_peak"] is False
    assert state["last_mean"] == pytest.approx(0.15)


OURS: dict[str, Callable[[], Any]] = {
    "PageHinkley": lambda: PageHinkley(min_instances=1, delta=0.0, threshold=5.0),
    "CUSUM": lambda: CUSUM(min_instances=2, threshold=2.0),
    "Plateau": lambda: Plateau(window=2),
    "NeverFires": NeverFires,
    "Periodic": lambda: Periodic(every=4),
    "ScaledCUSUM": lambda: ScaledCUSUM(warmup=5, threshold=4.0, mode="both"),
    "Windowed": lambda: Windowed(ScaledCUSUM(warmup=5, threshold=4.0, mode="both"), window=1),
}


@pytest.mark.parametrize("name", sorted(OURS))
def test_non_finite_values_are_skipped_and_counted(name: str) -> None:
    values = gauss_series(5, [(0.0, 300), (5.0, 300)])
    noisy: list[float] = []
    for i, x in enumerate(values):
        noisy.append(x)
        if i % 50 == 0:
            noisy += [math.nan, math.inf, -math.inf]
    clean_detector, noisy_detector = OURS[name](), OURS[name]()
    clean = detections(clean_detector, values)
    # Map the detections on the noisy stream back to indices of finite values.
    finite_positions = [i for i, x in enumerate(noisy) if math.isfinite(x)]
    found = detections(noisy_detector, noisy)
    assert all(math.isfinite(noisy[i]) for i in found)
    assert [finite_positions.index(i) for i in found] == clean
    assert noisy_detector.n_skipped == 3 * 12
    assert clean_detector.n_skipped == 0


@pytest.mark.parametrize("name", sorted(OURS))
def test_only_non_finite_values_never_detect(name: str) -> None:
    detector = OURS[name]()
    assert detections(detector, [math.nan, math.inf, -math.inf] * 100) == []
    assert detector.n_skipped == 300


def test_int_beyond_float_range_is_skipped() -> None:
    never = NeverFires()
    never.update(10**400)
    assert never.n_skipped == 1


def test_non_finite_value_lowers_a_detection() -> None:
    periodic = Periodic(every=1)
    periodic.update(1.0)
    assert periodic.drift_detected
    periodic.update(math.nan)
    assert periodic.drift_detected is False


@pytest.mark.parametrize("name", sorted(OURS))
@pytest.mark.parametrize(
    "bad",
    ["1.0", None, [1.0], 1j, torch.ones(2), np.ones(3), torch.tensor(1j)],
    ids=["str", "None", "list", "complex", "tensor2", "array3", "complex_tensor"],
)
def test_non_numeric_input_raises_type_error(name: str, bad: object) -> None:
    detector = OURS[name]()
    with pytest.raises(TypeError, match="update\\(\\) expects a real number"):
        detector.update(bad)
    assert detector.n_skipped == 0


@pytest.mark.parametrize(
    "value",
    [3, np.float32(3.0), np.int64(3), np.float64(3.0), torch.tensor(3.0), np.array(3.0)],
    ids=["int", "np.float32", "np.int64", "np.float64", "tensor0d", "array0d"],
)
def test_real_scalars_are_accepted(value: object) -> None:
    ph = PageHinkley(min_instances=1, delta=0.0, threshold=5.0, alpha=1.0, mode="up")
    for _ in range(3):
        ph.update(0.0)
    ph.update(value)  # type: ignore[arg-type]
    ph.update(value)  # type: ignore[arg-type]
    # mean (0+0+0+3+3)/5 = 1.2; m+ = (3 - 0.75) + (3 - 1.2) = 4.05 < 5: no detection
    assert ph.drift_detected is False
    assert ph.state_dict()["state"]["sum_up"] == pytest.approx(4.05)


# ----------------------------------------------------------------------------------------------
# hyperparameter validation


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: PageHinkley(min_instances=0), r"min_instances must be an integer >= 1, got 0"),
        (lambda: PageHinkley(min_instances=2.5), r"min_instances must be .*, got 2.5"),  # type: ignore[arg-type]
        (lambda: PageHinkley(min_instances=True), r"min_instances must be .*, got True"),
        (lambda: PageHinkley(delta=-0.1), r"delta must be a finite number >= 0.0, got -0.1"),
        (lambda: PageHinkley(threshold=0.0), r"threshold must be a finite number > 0.0, got 0.0"),
        (lambda: PageHinkley(threshold=math.inf), r"threshold must be .*, got inf"),
        (lambda: PageHinkley(alpha=0.0), r"alpha must be a finite number > 0.0 and <= 1.0, got 0"),
        (lambda: PageHinkley(alpha=1.5), r"alpha must be .* <= 1.0, got 1.5"),
        (
            lambda: PageHinkley(mode="sideways"),
            r"mode must be one of \('up', 'down', 'both'\), got 'sideways'",
        ),
        (lambda: CUSUM(min_instances=1), r"min_instances must be an integer >= 2, got 1"),
        (lambda: CUSUM(min_instances=0, std=1.0), r"min_instances must be an integer >= 1, got 0"),
        (lambda: CUSUM(slack=-1.0), r"slack must be a finite number >= 0.0, got -1.0"),
        (lambda: CUSUM(threshold=-5.0), r"threshold must be a finite number > 0.0, got -5.0"),
        (lambda: CUSUM(target=math.nan), r"target must be a finite number, got nan"),
        (lambda: CUSUM(std=0.0), r"std must be a finite number > 0.0, got 0.0"),
        (lambda: CUSUM(min_std=-1e-3), r"min_std must be a finite number >= 0.0, got -0.001"),
        (lambda: CUSUM(mode="UP"), r"mode must be one of .*, got 'UP'"),
        (lambda: Plateau(window=0), r"window must be an integer >= 1, got 0"),
        (lambda: Plateau(mean_threshold=0.0), r"mean_threshold must be a finite number > 0.0"),
        (
            lambda: Plateau(variance_threshold=-1.0),
            r"variance_threshold must be a finite number > 0.0, got -1.0",
        ),
        (lambda: Plateau(relative="yes"), r"relative must be True or False, got 'yes'"),  # type: ignore[arg-type]
        (lambda: Periodic(every=0), r"every must be an integer >= 1, got 0"),
        (lambda: ScaledCUSUM(warmup=1), r"warmup must be an integer >= 2, got 1"),
        (lambda: ScaledCUSUM(threshold=0.0), r"threshold must be a finite number > 0.0, got 0.0"),
        (lambda: ScaledCUSUM(half_life=-1.0), r"half_life must be a finite number > 0.0, got -1.0"),
        (lambda: Windowed(NeverFires(), window=0), r"window must be an integer >= 1, got 0"),
        (lambda: Windowed(NeverFires(), min_segment=-1), r"min_segment must be an integer >= 0, got -1"),
        (lambda: Periodic(every=2.0), r"every must be an integer >= 1, got 2.0"),  # type: ignore[arg-type]
    ],
)
def test_bad_hyperparameters_raise(make: Callable[[], Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_hyperparameters_are_public_attributes() -> None:
    ph = PageHinkley(min_instances=10, delta=0.1, threshold=3.0, alpha=0.9, mode="down")
    assert (ph.min_instances, ph.delta, ph.threshold, ph.alpha, ph.mode) == (
        10,
        0.1,
        3.0,
        0.9,
        "down",
    )
    assert repr(ph) == (
        "PageHinkley(min_instances=10, delta=0.1, threshold=3.0, alpha=0.9, mode='down')"
    )
    assert repr(Periodic(every=3)) == "Periodic(every=3)"


# ----------------------------------------------------------------------------------------------
# the contract, for every detector (ours and river's)

STEP_DETECTED = "a detection within 20 updates of the step at 500"

CONTRACT: dict[str, tuple[Callable[[], Any], str | list[int]]] = {
    # name: (factory, what it does on STEP)
    "PageHinkley": (PageHinkley, STEP_DETECTED),
    "CUSUM": (CUSUM, STEP_DETECTED),
    # Plateau consolidates, it does not detect changes: STEP starts on a low, flat stretch,
    # which is the first plateau (the start of the stream counts as a peak); the step is not.
    "Plateau": (Plateau, [4]),
    # relative: the peak of the zero-mean pattern is ~0.02, its variance is far above 1% of that
    "Plateau-relative": (lambda: Plateau(relative=True), []),
    "NeverFires": (NeverFires, []),
    "Periodic": (lambda: Periodic(every=100), [99, 199, 299, 399, 499, 599, 699, 799, 899, 999]),
    "ScaledCUSUM": (ScaledCUSUM, STEP_DETECTED),
    "Windowed": (lambda: Windowed(ScaledCUSUM(), window=4), STEP_DETECTED),
    "Windowed-river.ADWIN": (lambda: Windowed(drift.ADWIN(), window=1), STEP_DETECTED),
    "river.ADWIN": (drift.ADWIN, STEP_DETECTED),
    "river.KSWIN": (lambda: drift.KSWIN(seed=1), STEP_DETECTED),
    "river.PageHinkley": (drift.PageHinkley, STEP_DETECTED),
}


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_detector_contract(name: str) -> None:
    make, expected = CONTRACT[name]
    detector = make()
    assert isinstance(detector, Detector)
    assert detector.drift_detected is False
    with pytest.raises(AttributeError):
        detector.drift_detected = True  # type: ignore[misc]

    flags = []
    for x in STEP:
        assert detector.update(float(x)) is None  # type: ignore[func-returns-value]
        assert isinstance(detector.drift_detected, bool)
        flags.append(detector.drift_detected)
    found = [i for i, f in enumerate(flags) if f]
    if expected == STEP_DETECTED:
        assert any(500 <= i < 520 for i in found), found
        if "river." not in name:
            assert all(i >= 500 for i in found), found  # no false alarm on the pattern
    else:
        assert found == expected

    if "river." not in name and name != "Periodic":
        # A constant series (well above Plateau's mean threshold) never triggers our detectors.
        assert detections(make(), CONSTANT) == []


@pytest.mark.parametrize("name", ["river.ADWIN", "river.KSWIN", "river.PageHinkley"])
def test_river_detectors_are_quiet_on_a_constant_series(name: str) -> None:
    assert detections(CONTRACT[name][0](), CONSTANT) == []


# ----------------------------------------------------------------------------------------------
# state dicts

ROUND_TRIP: dict[str, tuple[Callable[[], Any], list[float]]] = {
    "PageHinkley": (lambda: PageHinkley(delta=0.5, threshold=15.0), BOTH),
    "CUSUM": (lambda: CUSUM(min_instances=100), BOTH),
    "CUSUM-given": (lambda: CUSUM(min_instances=1, target=0.0, std=1.0), BOTH),
    "Plateau": (lambda: Plateau(window=5), CURVE * 3),
    "Plateau-relative": (lambda: Plateau(relative=True, mean_threshold=0.1), CURVE * 3),
    "NeverFires": (NeverFires, BOTH),
    "Periodic": (lambda: Periodic(every=7), BOTH[:100]),
    "ScaledCUSUM": (lambda: ScaledCUSUM(mode="both"), BOTH),
    "Windowed": (lambda: Windowed(ScaledCUSUM(mode="both"), window=3, min_segment=40), BOTH),
}


def _through_bytes(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=True)
    return loaded


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_state_dict_round_trip(name: str) -> None:
    make, values = ROUND_TRIP[name]
    reference = detections(make(), values)
    # Split anywhere, including just after a detection (the raised flag must survive the round
    # trip, so that the next update resets). A leading nan exercises n_skipped.
    after_detection = [d + 1 for d in reference[:2]]
    splits = sorted({1, len(values) // 3, len(values) - 1, *after_detection})
    for split in splits:
        detector = make()
        head = detections(detector, [math.nan, *values[:split]])
        assert detector.drift_detected == (split in after_detection)
        state = _through_bytes(detector.state_dict())
        assert state["version"] == 1
        restored = make()
        restored.load_state_dict(state)
        assert restored.n_skipped == detector.n_skipped == 1
        assert restored.drift_detected == detector.drift_detected
        assert restored.state_dict() == detector.state_dict()
        tail_original = detections(detector, values[split:])
        tail_restored = detections(restored, values[split:])
        assert tail_restored == tail_original
        assert [i - 1 for i in head] + [split + i for i in tail_original] == reference


def test_state_dict_holds_only_primitives() -> None:
    def check(value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                assert isinstance(k, str)
                check(v)
        elif isinstance(value, list):
            for v in value:
                check(v)
        else:
            assert value is None or type(value) in (int, float, bool, str)

    for make, values in ROUND_TRIP.values():
        detector = make()
        detections(detector, values[:50])
        check(detector.state_dict())


def test_load_state_dict_checks_what_it_loads() -> None:
    saved = PageHinkley(threshold=10.0).state_dict()
    with pytest.raises(ValueError, match=r"hyperparameters differ: threshold: saved 10\.0, this"):
        PageHinkley(threshold=20.0).load_state_dict(saved)
    with pytest.raises(ValueError, match="state_dict is for a 'PageHinkley', cannot load it"):
        CUSUM().load_state_dict(saved)
    with pytest.raises(ValueError, match="unsupported state_dict version 99"):
        PageHinkley(threshold=10.0).load_state_dict({**saved, "version": 99})
    with pytest.raises(ValueError, match="state_dict keys must be"):
        PageHinkley(threshold=10.0).load_state_dict({"version": 1})
    broken = {**saved, "state": {**saved["state"], "n": 1.5}}
    with pytest.raises(ValueError, match="state entry 'n' must be of type int, got float"):
        PageHinkley(threshold=10.0).load_state_dict(broken)
    missing = {**saved, "state": {k: v for k, v in saved["state"].items() if k != "mean"}}
    with pytest.raises(ValueError, match=r"state names differ: missing \['mean'\]"):
        PageHinkley(threshold=10.0).load_state_dict(missing)
    plateau = Plateau(window=2).state_dict()
    too_long = {**plateau, "state": {**plateau["state"], "values": [1.0, 2.0, 3.0]}}
    with pytest.raises(ValueError, match="'values' must be a list of at most 2 floats"):
        Plateau(window=2).load_state_dict(too_long)


def test_detector_state_helpers() -> None:
    periodic = Periodic(every=3)
    detections(periodic, [0.0] * 4)
    restored = Periodic(every=3)
    load_detector_state(restored, _through_bytes(detector_state_dict(periodic)))
    assert detections(restored, [0.0] * 5) == detections(periodic, [0.0] * 5) == [1, 4]
    for river_detector in (drift.ADWIN(), drift.KSWIN(), drift.PageHinkley()):
        name = type(river_detector).__name__
        with pytest.raises(TypeError, match=f"{name} has no state_dict"):
            detector_state_dict(river_detector)
        with pytest.raises(TypeError, match=f"{name} has no state_dict"):
            load_detector_state(river_detector, {})


# ----------------------------------------------------------------------------------------------
# InputShift and Combined (the default's second signal and the detector that joins both)


def _shift_by_hand(x: np.ndarray, window: int, half_life: float, eps: float,
                   proj: np.ndarray | None = None,
                   rff: tuple[np.ndarray, np.ndarray, float] | None = None) -> np.ndarray:
    """InputShift recomputed window by window in NumPy from its definition (``proj``: the random
    projections, whose squares join the features; ``rff``: ``(w, b, bandwidth)``, the random
    Fourier features ``cos(x w / sigma + b)``, sigma the bandwidth times the median distance of
    the first window's samples; each block with its own variance floor)."""
    blocks = [x]
    source = x  # of the Fourier features: the inputs, or their projections where those are fewer
    if proj is not None:
        blocks.append((x @ proj) ** 2)
        if proj.shape[1] < x.shape[1]:
            source = x @ proj
    if rff is not None:
        w, b, bandwidth = rff
        first = source[:window]
        dist = np.sqrt(((first[:, None] - first[None]) ** 2).sum(-1))[np.triu_indices(window, 1)]
        sigma = bandwidth * np.sort(dist)[(len(dist) - 1) // 2]  # the lower median, as torch's
        blocks.append(np.cos(source @ w / sigma + b))
    sizes = [t.shape[1] for t in blocks]
    x = np.concatenate(blocks, 1)
    out = np.zeros(len(x))
    mean = var = None
    for windows, start in enumerate(range(0, len(x) - len(x) % window, window)):
        w = x[start:start + window]
        if mean is not None:
            floor = np.concatenate([np.full(k, v.mean()) for k, v in
                                    zip(sizes, np.split(var, np.cumsum(sizes)[:-1]), strict=True)])
            y = (w - mean) / np.sqrt(var + eps * floor + 1e-12)
            prefix = np.cumsum(y, 0) - y
            out[start:start + window] = (2 * (y * prefix).sum(1) + (y * y).sum(1)) / x.shape[1]
            assert math.isclose(out[start:start + window].sum(), (y.sum(0) ** 2).sum() / x.shape[1])
        m, second = w.mean(0), (w * w).mean(0)
        if mean is None:
            mean, var = m, np.maximum(second - m * m, 0.0)
        else:
            rate = max(1 - 0.5 ** (window / half_life), 1 / (windows + 1))
            var = var + rate * (second - 2 * m * mean + mean * mean - var)
            mean = mean + rate * (m - mean)
    return out


@pytest.mark.parametrize("batch", [1, 3, 8, 50])
def test_input_shift_is_its_definition_whatever_the_batch_size(batch: int) -> None:
    from online_mas.signals import InputShift

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(200, 5, generator=g), torch.randn(200, 5, generator=g) * 3 + 1])
    x[:, 4] = 2.0  # a constant input: the relative floor keeps it finite
    shift = InputShift(window=8, half_life=64.0, projections=0, fourier=0)
    got = torch.cat([shift.per_sample(x[i:i + batch]) for i in range(0, len(x), batch)]).numpy()
    want = _shift_by_hand(x.double().numpy(), 8, 64.0, 1e-3)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    # about 4/5 (the constant input adds 0), then much more
    assert abs(got[16:200].mean() - 0.8) < 0.3 and got[200:240].mean() > 5
    # with projections: their squares are features too (drawn from the seed, variance 1/D)
    shift = InputShift(window=8, half_life=64.0, projections=3, fourier=0, seed=7)
    got = torch.cat([shift.per_sample(x[i:i + batch]) for i in range(0, len(x), batch)]).numpy()
    proj = (torch.randn(5, 3, generator=torch.Generator().manual_seed(7)) / math.sqrt(5)).double().numpy()
    want = _shift_by_hand(x.double().numpy(), 8, 64.0, 1e-3, proj)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)  # the projection is in float32
    # with Fourier features: cos(v w / sigma + b), w, b from the seed's own stream, v the inputs
    # (as many projections as inputs, or more) or their projections (fewer projections)
    for k in (3, 5, 8):
        shift = InputShift(window=8, half_life=64.0, projections=k, fourier=6, bandwidth=0.5, seed=7)
        got = torch.cat([shift.per_sample(x[i:i + batch]) for i in range(0, len(x), batch)]).numpy()
        proj = (torch.randn(5, k, generator=torch.Generator().manual_seed(7)) / math.sqrt(5)).double().numpy()
        g = torch.Generator().manual_seed((7 + 0x9E3779B97F4A7C15) % 2**64)
        w = torch.randn(min(k, 5), 6, generator=g, dtype=torch.float64).numpy()
        b = (torch.rand(6, generator=g, dtype=torch.float64) * 2 * math.pi).numpy()
        want = _shift_by_hand(x.double().numpy(), 8, 64.0, 1e-3, proj, (w, b, 0.5))
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)  # the features are in float32
        assert shift.fourier_scale is not None and abs(got[200:240].mean()) > 5


def test_input_shift_projections_see_a_permutation_that_keeps_every_mean() -> None:
    """Inputs whose every coordinate has the same mean and variance, but neighbours correlate:
    permuting the coordinates moves no mean (the first-order statistic is blind) and moves the
    second moments along random directions (the default sees it)."""
    from online_mas.signals import InputShift

    g = torch.Generator().manual_seed(0)
    n, d = 4096, 40
    z = torch.randn(n, d + 4, generator=g)
    smooth = sum(z[:, i:i + d] for i in range(5)) / math.sqrt(5)  # a moving average: neighbours correlate
    perm = torch.randperm(d, generator=g)
    x = torch.cat([smooth[: n // 2], smooth[n // 2:, perm]])
    ratios = {}
    for projections in (0, 64):
        shift = InputShift(window=32, projections=projections, fourier=0)
        v = torch.cat([shift.per_sample(x[i:i + 32]) for i in range(0, n, 32)])
        ratios[projections] = float(v[n // 2: n // 2 + 256].mean() / v[512: n // 2].mean())
    assert ratios[0] < 1.5 and ratios[64] > 3, ratios


def test_input_shift_state_round_trip_mid_window() -> None:
    from online_mas.signals import InputShift

    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(5, 3, generator=g) for _ in range(9)]
    a = InputShift(window=4)
    for x in xs[:7]:
        a.per_sample(x)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = InputShift(window=4)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for x in xs[7:]:
        assert torch.equal(a.per_sample(x), b.per_sample(x))
    with pytest.raises(ValueError, match="window differs: saved 4, this signal 8"):
        InputShift(window=8).load_state_dict(a.state_dict())
    assert torch.equal(a.per_sample(torch.randn(2, 2)), torch.zeros(2, dtype=torch.float64))  # restarted
    with pytest.raises(ValueError, match="window must be an int >= 2"):
        InputShift(window=1)
    with pytest.raises(ValueError, match="projections must be an int >= 0, got -1"):
        InputShift(projections=-1)
    with pytest.raises(ValueError, match="saved input shift has projections=64, seed=0; this one "
                                         "projections=8"):
        InputShift(window=4, projections=8).load_state_dict(a.state_dict())
    old = InputShift(window=4, projections=0, fourier=0)  # a version 1 state: the input means only
    old.per_sample(torch.randn(6, 3, generator=g))
    v1 = {k: v for k, v in old.state_dict().items()
          if k not in ("projections", "seed", "fourier", "bandwidth", "fourier_scale", "fourier_inputs",
                       "raw")} | {"version": 1}
    continued = InputShift(window=4, projections=0, fourier=0)
    continued.load_state_dict(v1)
    x = torch.randn(5, 3, generator=g)
    assert torch.equal(continued.per_sample(x), old.per_sample(x))
    with pytest.raises(ValueError, match=r"projections=0 \(a version 1 state\); this one projections=64"):
        InputShift(window=4).load_state_dict(v1)


def test_combined_drops_detections_closer_than_min_segment_and_restarts_both() -> None:
    from online_mas.detectors import Combined
    from online_mas.signals import InputShift

    # the signal's detector fires every window of 10 samples, the shift's never
    c = Combined(Windowed(Periodic(every=1), window=10), Windowed(NeverFires(), window=10),
                 InputShift(window=10), min_segment=35)
    fired = []
    for _ in range(10):  # batches of 10 samples
        c.update_many([0.0] * 10, inputs=torch.randn(10, 2))
        fired += c.detections
        assert c.fired_by in (None, "signal")
    assert fired == [39, 79]  # 9, 19, 29 are closer than 35 to the start; 49, 59, 69 to 39
    assert c.shift.state_dict()["count"] == 0  # restarted at 79
    saved = c.state_dict()
    again = Combined(Windowed(Periodic(every=1), window=10), Windowed(NeverFires(), window=10),
                     InputShift(window=10), min_segment=35)
    again.load_state_dict(saved)
    x = torch.randn(10, 2)
    c.update_many([0.0] * 10, inputs=x)
    again.update_many([0.0] * 10, inputs=x)
    mine, theirs = again.state_dict(), c.state_dict()
    shift_a, shift_b = mine.pop("shift"), theirs.pop("shift")
    assert mine == theirs and shift_a.keys() == shift_b.keys()
    for key, value in shift_a.items():
        assert torch.equal(value, shift_b[key]) if isinstance(value, torch.Tensor) else value == shift_b[key]
    with pytest.raises(ValueError, match="min_segment differs"):
        Combined(Windowed(NeverFires()), Windowed(NeverFires()), min_segment=1).load_state_dict(saved)
    with pytest.raises(ValueError, match="not the Combined default"):
        again.load_state_dict(Windowed(NeverFires()).state_dict())
    with pytest.raises(TypeError, match="shift_detector must be a per-sample detector"):
        Combined(Windowed(NeverFires()), NeverFires())


@pytest.mark.parametrize("batch", [1, 64])
def test_river_detectors_plug_into_both_channels_fed_per_window(batch: int) -> None:
    """river's ADWIN in both channels of Combined, fed the same window means whatever the batch:
    a shift of the input means and back (A B A) is found at the same samples at batch 1 and 64."""
    from online_mas.detectors import Combined

    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(3000, 4, generator=g) + torch.tensor([m, m, 0.0, 0.0])
                   for m in (0.0, 2.0, 0.0)])

    def run(b: int) -> list[int]:
        c = Combined(Windowed(drift.ADWIN(), window=32), Windowed(drift.ADWIN(), window=32),
                     min_segment=512)
        out = []
        for i in range(0, len(x), b):
            c.update_many([0.5] * len(x[i:i + b]), inputs=x[i:i + b])
            out += [-(-d // b) * b for d in c.detections]
        return out

    one, big = run(1), run(batch)
    assert len(one) == 2 and 3000 < one[0] <= 4500 and 6000 < one[1] <= 7500, one  # ADWIN is slower
    assert [-(-s // batch) * batch for s in one] == big


@pytest.mark.parametrize("batch", [4, 96, 1024, 5000])
def test_combined_finds_the_same_samples_at_any_batch_size(batch: int) -> None:
    """Three changes (the input scale, then the mean and the signal) found by the default detector
    at the same sample indices, at window ends, whether the stream comes one sample at a time or
    in batches larger than a window (the rule is checked at each window's end inside a batch, and
    the restart after a detection happens there), by update_many and by update_batches."""
    import online_mas as om
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(4000, 16, generator=g), torch.randn(4000, 16, generator=g) * 1.5,
                   torch.randn(4000, 16, generator=g) + 0.5, torch.randn(4000, 16, generator=g)])
    v = (x[:, 0].abs() * 0.3 + 0.5).float()
    v[8000:12000] += 0.3
    one = om.default_detector(lag=0)
    reference = []
    for i in range(len(x)):
        one.update_many([float(v[i])], inputs=x[i:i + 1])
        reference += one.detections
    assert len(reference) == 3 and all((d + 1) % 32 == 0 for d in reference), reference
    many, bulk = om.default_detector(lag=0), om.default_detector(lag=0)
    found = []
    for i in range(0, len(x), batch):
        many.update_many(v[i:i + batch].tolist(), inputs=x[i:i + batch])
        found += many.detections
    sizes = [min(batch, len(x) - i) for i in range(0, len(x), batch)]
    bulk.update_batches(v, x, sizes)
    assert found == reference and bulk.detections == reference, (found, bulk.detections, reference)


class _AlwaysHigh:
    """A channel whose statistic is always 10 with an open run, and that never fires."""

    statistic = 10.0
    run_length = 1
    drift_detected = False

    def update(self, x: float) -> None:
        pass

    def _reset(self) -> None:
        pass


@pytest.mark.parametrize("batch", [1, 2, 4, 6, 40])
def test_combined_joint_rule_is_checked_at_window_ends_only(batch: int) -> None:
    """With min_segment (10) not a multiple of the window (4), a joint detection held back at a
    window end is not taken at a later batch end inside the next window: at every batch size the
    detections are at the window ends where 10 samples have passed."""
    from online_mas.detectors import Combined
    from online_mas.signals import InputShift
    c = Combined(Windowed(_AlwaysHigh(), window=4), Windowed(_AlwaysHigh(), window=4),
                 InputShift(window=4, projections=0, fourier=0), min_segment=10, joint_threshold=5.0)
    x = torch.zeros(40, 2)
    found = []
    for i in range(0, 40, batch):
        c.update_many([0.0] * len(x[i:i + batch]), inputs=x[i:i + batch])
        found += c.detections
    assert found == [11, 23, 35], found


def _many_and_bulk(a: object, b: object, v: torch.Tensor, x: torch.Tensor,
                   batch: int) -> tuple[list[int], list[int]]:
    """The detections of ``a`` fed batch after batch by update_many, and of ``b`` fed the same
    batches by update_batches, about 300 samples at a time (as the Trigger's lag does)."""
    one, bulk, sizes, start = [], [], [], 0
    for i in range(0, len(x), batch):
        n = min(batch, len(x) - i)
        a.update_many(v[i:i + n].tolist(), inputs=x[i:i + n])  # type: ignore[attr-defined]
        one += a.detections  # type: ignore[attr-defined]
        sizes.append(n)
        if sum(sizes) >= 300 or i + n == len(x):
            end = start + sum(sizes)
            b.update_batches(v[start:end], x[start:end], sizes)  # type: ignore[attr-defined]
            bulk += b.detections  # type: ignore[attr-defined]
            start, sizes = end, []
    return one, bulk


@pytest.mark.parametrize("batch", [1, 7, 32, 48, 200])
def test_combined_update_batches_is_update_many_batch_after_batch(batch: int) -> None:
    import online_mas as om
    g = torch.Generator().manual_seed(batch)
    x = torch.cat([torch.randn(5000, 16, generator=g), torch.randn(5000, 16, generator=g) * 1.5,
                   torch.randn(5000, 16, generator=g) + 0.5])
    v = (x[:, 0].abs() * 0.3 + 0.5).float()
    v[7500:] += 0.3  # the signal rises too
    a, b = om.default_detector(lag=0), om.default_detector(lag=0)
    one, bulk = _many_and_bulk(a, b, v, x, batch)
    assert len(one) == 3 and bulk == one
    with pytest.raises(ValueError, match="sizes sum to 3"):
        b.update_batches(v[:4], x[:4], [1, 2])


def test_windowed_update_sums_refuses_chunks_across_a_window_end() -> None:
    w = Windowed(Periodic(every=1), window=4)
    with pytest.raises(ValueError, match="a chunk of 5 samples does not fit the 4 samples left"):
        w.update_sums([1.0], [5])
    with pytest.raises(ValueError, match="the sum of a chunk must be finite"):
        w.update_sums([float("nan")], [2])


@pytest.mark.parametrize("bulk", [False, True])
def test_input_shift_a_nan_input_moves_nothing_and_leaves_the_reference_finite(bulk: bool) -> None:
    from online_mas.signals import InputShift

    g = torch.Generator().manual_seed(0)
    x = torch.randn(640, 6, generator=g)
    poisoned = x.clone()
    poisoned[100, 4] = float("nan")  # an input the model may not even read
    poisoned[101] = float("inf")
    a, b = InputShift(window=32), InputShift(window=32)
    if bulk:
        va, _ = a.piece_sums(x)
        vb, _ = b.piece_sums(poisoned)
    else:
        va, vb = a.per_sample(x), b.per_sample(poisoned)
    assert bool(torch.isfinite(vb).all())
    before = 3 if bulk else 96  # the windows before the one with the nan are untouched (in bulk,
    # up to the float32 rounding of sums taken around another centre: window by window from the nan)
    torch.testing.assert_close(va[:before], vb[:before], rtol=1e-6 if bulk else 0.0, atol=0.0)
    state = b.state_dict()
    assert all(bool(torch.isfinite(state[k]).all()) for k in ("mean", "var", "scale"))
    later = torch.randn(64, 6, generator=g) + 3.0  # a shift is still seen after the nan
    seen = b.piece_sums(later)[0] if bulk else b.per_sample(later)
    assert float(seen.sum()) > 10 * 64


def _joint_stream(seed: int, mean_step: float, signal_step: float) -> tuple[torch.Tensor, torch.Tensor]:
    """8000 samples; at sample 4000 the inputs' mean and the signal both move a little."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(4000, 8, generator=g), torch.randn(4000, 8, generator=g) + mean_step])
    v = 1.0 + 0.1 * torch.randn(8000, generator=g)
    v[4000:] += signal_step
    return x, v


def _joint_detector(joint: float | None) -> Any:
    from online_mas.detectors import Combined
    from online_mas.signals import InputShift

    return Combined(Windowed(ScaledCUSUM(warmup=16, threshold=16.0, half_life=64.0), window=32),
                    Windowed(ScaledCUSUM(warmup=16, threshold=16.0), window=32),
                    InputShift(window=32, projections=0), min_segment=1024, joint_threshold=joint)


@pytest.mark.parametrize("batch", [1, 64, 1024])
def test_combined_joint_threshold_finds_a_change_each_channel_alone_misses(batch: int) -> None:
    """A change too small for either channel's own threshold (16) is found when both statistics
    are at or above joint_threshold (6) at once: once, by "joint", soon after sample 4000, at the
    same sample whatever the batch size (the rule is checked at every window's end, also inside a
    batch); with no change (and with joint_threshold=None) nothing fires."""
    def run(joint: float | None, x: torch.Tensor, v: torch.Tensor, b: int) -> list[tuple[int, str | None]]:
        c = _joint_detector(joint)
        out = []
        for i in range(0, len(x), b):
            c.update_many(v[i:i + b].tolist(), inputs=x[i:i + b])
            out += [(d, c.fired_by) for d in c.detections]
        return out

    x, v = _joint_stream(0, 0.15, 0.015)
    assert run(None, x, v, batch) == []
    found = run(6.0, x, v, batch)
    assert len(found) == 1 and found[0][1] == "joint" and 4000 < found[0][0] < 5000, found
    one = found if batch == 1 else run(6.0, x, v, 1)
    assert found == one and (found[0][0] + 1) % 32 == 0, (one, found)  # a window's end
    still_x, still_v = _joint_stream(1, 0.0, 0.0)
    assert run(6.0, still_x, still_v, batch) == []


def test_combined_joint_detection_anchors_at_the_earlier_run_and_restarts_both() -> None:
    """A joint detection reports the onset of the older of the two open runs, restarts both
    channels (their statistics are 0 after it) and the input reference, and keeps its threshold
    in repr; the bulk path (update_batches) finds the same sample."""
    x, v = _joint_stream(0, 0.15, 0.015)
    c, bulk = _joint_detector(6.0), _joint_detector(6.0)
    ages: list[int | None] = []
    found: list[int] = []
    for i in range(0, len(x), 16):
        ages = [c.detector.run_age, c.shift_detector.run_age]
        c.update_many(v[i:i + 16].tolist(), inputs=x[i:i + 16])
        if c.detections:
            found += c.detections
            assert c.onset == c.detections[0] + 1 - 16 - max(a or 0 for a in ages)  # the older run's start
            assert c.detector.statistic == 0.0 and c.shift_detector.statistic == 0.0
            assert c.shift.state_dict()["count"] == 0
    bulk.update_batches(v, x, [16] * (len(x) // 16))
    assert found and bulk.detections == found
    for cut in (4000, 4240, 4400):  # resumed mid-run from a state: the same detection, onset, reason
        head, tail = _joint_detector(6.0), _joint_detector(6.0)
        head.update_batches(v[:cut], x[:cut], [16] * (cut // 16))
        tail.load_state_dict(head.state_dict())
        tail.update_batches(v[cut:], x[cut:], [16] * ((len(x) - cut) // 16))
        assert (tail.detections, tail.fired_by, tail.onset) == (found, "joint", c.onset)
    assert repr(c).endswith("min_segment=1024, lag=0, joint_threshold=6.0)")
    again = _joint_detector(6.0)
    again.load_state_dict(c.state_dict())
    assert again.state_dict().keys() == c.state_dict().keys()
    old = c.state_dict()
    del old["joint_threshold"]  # as saved before joint_threshold existed: it had none
    with pytest.warns(RuntimeWarning, match=r"saved before joint_threshold existed: continued as saved, "
                                            r"without joint detections \(joint_threshold 6.0 -> None\)"):
        again.load_state_dict(old)
    assert again.joint_threshold is None
    with pytest.raises(ValueError, match=r"joint_threshold differs: saved 6.0, this detector 8.0; .*"
                                         r"default_detector\(joint_threshold=6.0\)"):
        _joint_detector(8.0).load_state_dict(c.state_dict())


def test_combined_joint_threshold_checks_its_value_and_channels() -> None:
    from online_mas.detectors import Combined

    for bad in (0.0, -1.0, math.nan, "6"):
        with pytest.raises((ValueError, TypeError), match="joint_threshold"):
            _joint_detector(bad)  # type: ignore[arg-type]

    class Bare:  # a per-sample detector without a statistic
        drift_detected = False

        def update_many(self, values: object) -> None:
            pass

    for channel in (Bare(), Windowed(drift.ADWIN()), Windowed(PageHinkley())):
        with pytest.raises(TypeError, match="joint_threshold needs channels that report their statistic"):
            Combined(channel, Windowed(ScaledCUSUM()), joint_threshold=6.0)
    w = Windowed(ScaledCUSUM(warmup=2, threshold=100.0), window=1)
    for value in (0.0, 1.0, 0.0, 5.0, 5.0):
        w.update(value)
    assert w.statistic == w.detector.statistic > 0.0
    assert Windowed(drift.ADWIN()).statistic is None


def test_combined_no_joint_detection_from_a_stale_or_fired_channel() -> None:
    """A batch without inputs leaves the shift channel's statistic as it was: the signal alone
    rising to joint_threshold is no joint change. And a channel whose own detection was dropped
    (closer than min_segment to the start) keeps its sum above its threshold until its next window:
    that is not a joint change either."""
    from online_mas.detectors import Combined
    from online_mas.signals import InputShift

    c = _joint_detector(6.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8000, 8, generator=g)
    x[3000:] += 0.25
    v = 1.0 + 0.1 * torch.randn(20000, generator=g)
    i = 0
    while (c.shift_detector.statistic or 0.0) < 7.0:
        c.update_many(v[i:i + 16].tolist(), inputs=x[i:i + 16])
        i += 16
    assert c.detections == [] and i < 8000
    v[i + 2000:i + 2200] += 0.06  # the signal's statistic passes 6, not 16
    for k in range(i, 20000, 16):
        c.update_many(v[k:k + 16].tolist(), inputs=None)
        assert c.detections == [], (k, c.fired_by)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    x[70:] += 1.0
    v = 1.0 + 0.1 * torch.randn(400, generator=g)
    v[76:] += 5.0
    c = Combined(Windowed(ScaledCUSUM(warmup=16, threshold=16.0), window=4),
                 Windowed(ScaledCUSUM(warmup=16, threshold=1000.0), window=4),
                 InputShift(window=4, projections=0), min_segment=98, joint_threshold=1.0)
    dropped = []
    for i in range(120):  # the signal channel's warm-up after its dropped detection ends at 160
        c.update_many([float(v[i])], inputs=x[i:i + 1])
        dropped += [i] if c.detector.drift_detected and not c.detections else []
        assert c.detections == [], (i, c.detections, c.fired_by, c.onset)
    assert dropped == [95]  # the case happened: a signal detection held back by min_segment


@pytest.mark.parametrize("batch", [1, 32, 48])
def test_combined_update_batches_with_unusable_values_and_inputs_is_update_many(batch: int) -> None:
    """A nan signal value (its channel skips it, which moves that channel's windows) and inputs the
    input shift cannot use (a nan, an inf, values whose float32 features overflow) give the same
    detections by update_batches as by update_many batch after batch, with a warning for the
    inputs, and nothing non-finite in the state (they crashed update_batches before)."""
    import warnings

    import online_mas as om
    g = torch.Generator().manual_seed(batch)
    x = torch.cat([torch.randn(5000, 16, generator=g), torch.randn(5000, 16, generator=g) * 1.5,
                   torch.randn(5000, 16, generator=g) + 0.5])
    v = (x[:, 0].abs() * 0.3 + 0.5).float()
    v[7500:] += 0.3
    v[[100, 3001, 3002, 6007, 9000]] = math.nan
    x[200, 3] = math.nan
    x[4000, 0] = math.inf
    x[8100] = 1e25  # finite, but the squares of its projections are not in float32
    a, b = om.default_detector(lag=0), om.default_detector(lag=0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        one, bulk = _many_and_bulk(a, b, v, x, batch)
    assert len(one) == 3 and bulk == one, (one, bulk)
    assert any("left out of the input shift" in str(w.message) for w in seen)
    assert a.detector.n_skipped == b.detector.n_skipped == 5
    for d in (a, b):
        state = d.shift.state_dict()
        assert all(bool(torch.isfinite(t).all()) for t in state.values() if isinstance(t, torch.Tensor))
