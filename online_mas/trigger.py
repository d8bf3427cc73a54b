"""When to consolidate: at known boundaries, or when a detector watching a signal fires.

The detector sees one value per ``observe`` call (river's contract: ``update(x)``,
``drift_detected``). The signal maps the batch output to that value (:mod:`online_mas.signals`),
or is the training loss (:class:`~online_mas.signals.Loss`).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor

from online_mas.checks import is_int
from online_mas.detectors import PageHinkley
from online_mas.signals import Loss, signal_from

__all__ = ["Trigger", "check_boundaries", "default_detector"]


def default_detector() -> PageHinkley:
    """The detector ``OnlineMAS`` uses when none is given: one-sided Page-Hinkley on the entropy.

    A new distribution makes the model unsure, so the mean predictive entropy of its outputs
    jumps; ``mode="up"`` ignores the slow decrease while a segment is being learned. Thresholds are
    in nats. Measured by ``scripts/detect_digits.py`` (``results/detect_digits.md``).
    """
    return PageHinkley(min_instances=30, delta=0.05, threshold=1.0, alpha=0.999, mode="up")


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

    @property
    def by_loss(self) -> bool:
        """The detector watches the training loss (``observe(x, loss=...)`` on every call)."""
        return self.detector is not None and isinstance(self.signal, Loss)

    @property
    def every_step(self) -> bool:
        """The detector is fed a label-free signal on every step."""
        return self.detector is not None and not isinstance(self.signal, Loss)

    @property
    def task_free(self) -> bool:
        """A detector (not boundaries) decides."""
        return self.detector is not None

    def value(self, out: Tensor) -> float | None:
        """The detector's signal of a batch output (None when it watches the loss or is absent)."""
        if not self.every_step:
            return None
        return float(self.signal(out))  # type: ignore[operator]

    def fire(self, step: int, value: float | None) -> str | None:
        """Feed ``value`` (if any); the reason to consolidate after ``step``, or None."""
        if self.boundaries is not None:
            return "boundary" if step in self.boundaries else None
        if self.detector is None or value is None:
            return None
        self.last_signal = value
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
