"""When to consolidate: at known boundaries, or when a detector watching a signal fires.

A detector with ``per_sample = True`` (:class:`~online_mas.detectors.Windowed`, the default) is
fed one value per sample: the signal's per-sample values where it has them (``entropy``,
``output_norm``, ``max_prob``), else the batch value once per sample of the batch (``loss``,
``feature_shift``, a callable). A detector that also has ``takes_inputs = True`` (the default,
:class:`~online_mas.detectors.Combined`) gets the batch's inputs too (:meth:`Trigger.see`), for
the input shift; across ranks it gets none (each rank's inputs differ, the decision must not).
Any other detector (river's contract: ``update(x)``,
``drift_detected``) sees one value per ``observe`` call, the batch mean, as before.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from torch import Tensor

from online_mas.checks import is_int
from online_mas.detectors import Combined, ScaledCUSUM, Windowed
from online_mas.detectors.base import check_int
from online_mas.signals import InputShift, Loss, signal_from

__all__ = ["Trigger", "check_boundaries", "default_detector"]


def default_detector(*, window: int = 32, warmup: int = 2048, min_segment: int = 1024,
                     threshold: float = 16.0, shift_threshold: float = 16.0,
                     shift_warmup: int = 512, shift_half_life: float = 2048.0,
                     shift_projections: int = 64) -> Combined:
    """The detector ``OnlineMAS`` uses when none is given: two self-calibrated one-sided CUSUMs fed
    per sample in windows of ``window`` samples whatever the batch size, one on the predictive
    entropy (the Trigger's signal), one on the shift of the inputs
    (:class:`~online_mas.signals.InputShift`); either one consolidates (:class:`Combined`).

    The entropy rises when the model meets inputs it has not learned; the input shift moves on any
    change of the input means or of their second moments along random directions (permutations that
    keep every position's mean included), returns to a learned segment included (where the entropy
    barely moves). Each :class:`~online_mas.detectors.ScaledCUSUM` standardises its window means by
    their own robust running scale in the current segment, so the thresholds are in standard
    deviations, not nats. The entropy's scale is set on ``warmup`` samples after each detection and
    follows with a half-life of as many samples: long enough to span many model states at batch 128
    (the windows of one batch share one model state) and the model's learning transient. Detections
    less than ``min_segment`` samples after the previous one are dropped. The thresholds were chosen
    on stationary digits streams at batch 1 to 128 for at most one false alarm per 10^5 samples
    (``scripts/detection.py``). Before ``Combined`` the default was
    ``Windowed(ScaledCUSUM(warmup=16, threshold=8.0, mode="up"), window=32, min_segment=1024)``,
    before that ``PageHinkley(min_instances=30, delta=0.05, threshold=1.0, alpha=0.999, mode="up")``
    fed once per call: pass one as ``detector=`` to continue a state saved with it.

    Parameters
    ----------
    window
        Samples per value fed to each CUSUM, >= 2.
    warmup
        Samples after each detection that set the entropy's level and scale, and the half-life of
        its running scale (rounded up to whole windows, at least 2 windows).
    min_segment
        Least number of samples between two consolidations, >= 0.
    threshold
        Entropy CUSUM threshold, in standard deviations of a window mean, > 0.
    shift_threshold
        Input-shift CUSUM threshold, in standard deviations of a window mean, > 0.
    shift_warmup
        Samples that set the input shift's level and scale (rounded up to whole windows, >= 2).
    shift_half_life
        Half-life of the input reference, in samples, > 0.
    shift_projections
        Random projections of the input shift (:class:`~online_mas.signals.InputShift`), >= 0;
        0 gives the detector of before version 2 of its state (the input means only).

    Examples
    --------
    >>> default_detector()  # doctest: +NORMALIZE_WHITESPACE
    Combined(Windowed(ScaledCUSUM(warmup=64, slack=0.5, threshold=16.0, clip=4.0, half_life=64.0,
    mode='up'), window=32, min_segment=0), Windowed(ScaledCUSUM(warmup=16, slack=0.5,
    threshold=16.0, clip=4.0, half_life=16.0, mode='up'), window=32, min_segment=0),
    InputShift(window=32, half_life=2048, eps=0.001, projections=64, seed=0), min_segment=1024)
    """
    window = check_int("window", window, minimum=2)
    warmup = check_int("warmup", warmup, minimum=1)
    shift_warmup = check_int("shift_warmup", shift_warmup, minimum=1)
    windows = max(2, -(-warmup // window))
    entropy = Windowed(ScaledCUSUM(warmup=windows, threshold=threshold, half_life=float(windows),
                                   mode="up"), window=window)
    shift = Windowed(ScaledCUSUM(warmup=max(2, -(-shift_warmup // window)), threshold=shift_threshold,
                                 mode="up"), window=window)
    return Combined(entropy, shift, InputShift(window=window, half_life=shift_half_life,
                                               projections=shift_projections),
                    min_segment=min_segment)


class Trigger:
    """Signal + detector, or known boundaries -> "consolidate now".

    Parameters
    ----------
    detector
        Any object with ``update(value)`` and ``drift_detected`` (river's contract), or None.
    signal
        A name from :data:`~online_mas.signals.SIGNALS` or a signal object.
    boundaries
        Steps (1-based ``observe`` calls) after which to consolidate; then no detector is used.
    """

    def __init__(self, detector: object | None, signal: object = "entropy",
                 boundaries: Iterable[int] | None = None) -> None:
        if boundaries is not None and detector is not None:
            raise ValueError("pass either boundaries= (oracle) or detector=, not both")
        if detector is not None and not (
            callable(getattr(detector, "update", None)) and hasattr(detector, "drift_detected")
        ):
            raise TypeError(
                "detector must have update(value) and a drift_detected property (river's "
                f"contract), got {type(detector)!r}"
            )
        self.detector = detector
        self.signal = signal_from(signal)
        self.boundaries = check_boundaries(boundaries) if boundaries is not None else None
        self.last_signal: float | None = None  # the last value fed to the detector
        self._samples: list[float] | None = None  # per-sample values of the last value()
        self._inputs: Tensor | None = None  # inputs of the last value(), for a detector that takes them

    @property
    def by_loss(self) -> bool:
        """The detector watches the training loss (``observe(x, loss=...)`` on every call)."""
        return self.detector is not None and isinstance(self.signal, Loss)

    @property
    def every_step(self) -> bool:
        """The detector is fed a label-free signal on every step."""
        return self.detector is not None and not isinstance(self.signal, Loss)

    @property
    def per_sample(self) -> bool:
        """The detector takes one value per sample (``detector.per_sample is True``)."""
        return getattr(self.detector, "per_sample", False) is True

    @property
    def task_free(self) -> bool:
        """A detector (not boundaries) decides."""
        return self.detector is not None

    def see(self, x: object) -> None:
        """Keep this step's inputs for a detector that reads them (``takes_inputs``, e.g. the
        default's input shift), when they are one floating-point tensor; call before :meth:`fire`."""
        self._inputs = None
        if getattr(self.detector, "takes_inputs", False) and isinstance(x, Tensor) \
                and x.is_floating_point() and x.dim() >= 1:
            self._inputs = x.detach()

    def value(self, out: Tensor) -> float | None:
        """The detector's signal of a batch output (None when it watches the loss or is absent)."""
        self._samples = None
        if not self.every_step:
            return None
        each = getattr(self.signal, "per_sample", None)
        if self.per_sample and callable(each):
            values = each(out).tolist()
            self._samples = values
            return math.fsum(values) / len(values) if values else math.nan
        return float(self.signal(out))  # type: ignore[operator]

    def fire(self, step: int, value: float | None, *, n: int = 1, pooled: bool = False) -> str | None:
        """Feed ``value`` (if any); the reason to consolidate after ``step``, or None.

        A per-sample detector gets the per-sample values of the last :meth:`value` call, or (none
        kept, or ``pooled``: ``value`` is a mean over ranks) ``value`` once for each of ``n`` samples.
        """
        samples, self._samples = self._samples, None
        inputs, self._inputs = self._inputs, None
        if self.boundaries is not None:
            return "boundary" if step in self.boundaries else None
        if self.detector is None or value is None:
            return None
        self.last_signal = value
        if self.per_sample:
            values: Sequence[float] = samples if samples is not None and not pooled else [value] * max(1, n)
            many = getattr(self.detector, "update_many", None)
            if callable(many):
                if getattr(self.detector, "takes_inputs", False):  # across ranks: the signal only
                    many(values, inputs=None if pooled else inputs)
                else:
                    many(values)
                return "detector" if self.detector.drift_detected else None
            fired = False
            for v in values:
                self.detector.update(v)  # type: ignore[attr-defined]
                fired = fired or bool(self.detector.drift_detected)
            return "detector" if fired else None
        self.detector.update(value)  # type: ignore[attr-defined]
        return "detector" if self.detector.drift_detected else None

    def state_dict(self) -> dict[str, object]:
        detector = None
        if self.detector is not None and callable(getattr(self.detector, "state_dict", None)):
            detector = self.detector.state_dict()  # type: ignore[attr-defined]
        signal = getattr(self.signal, "state_dict", None)
        return {"version": 1, "detector": detector, "last_signal": self.last_signal,
                "signal": signal() if callable(signal) else None}

    def load_state_dict(self, state: dict[str, object]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unsupported Trigger state version {state.get('version')!r}")
        detector = state.get("detector")
        if detector is not None and self.detector is not None:
            load = getattr(self.detector, "load_state_dict", None)
            if callable(load):
                load(detector)
        last = state.get("last_signal")
        self.last_signal = float(last) if isinstance(last, int | float) else None
        signal, load_signal = state.get("signal"), getattr(self.signal, "load_state_dict", None)
        if isinstance(signal, dict) and callable(load_signal):
            load_signal(signal)


def check_boundaries(boundaries: Iterable[int]) -> frozenset[int]:
    if isinstance(boundaries, str | bytes) or not hasattr(boundaries, "__iter__"):
        raise TypeError(f"boundaries must be a sequence of int steps, got {boundaries!r}")
    steps = list(boundaries)
    bad = [b for b in steps if not is_int(b) or b < 1]
    if bad:
        raise ValueError(f"boundaries must be observe() step numbers >= 1, got {bad}")
    return frozenset(steps)
