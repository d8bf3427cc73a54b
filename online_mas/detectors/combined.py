"""Two per-sample detectors, one on the Trigger's signal and one on the input shift; either fires."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from online_mas.detectors.base import check_int
from online_mas.signals import InputShift

_VERSION = 1


class Combined:
    """Consolidate when ``detector`` (fed the Trigger's signal, e.g. the entropy, per sample) or
    ``shift_detector`` (fed :class:`~online_mas.signals.InputShift` of the inputs, per sample)
    fires; detections less than ``min_segment`` samples after the previous reported one (or the
    start) are dropped: they are the same change seen twice, or the model's own transient after it.

    After a reported detection the input reference restarts (the new segment becomes it) and both
    detectors start afresh (river's ``_reset()``), so the one that did not fire does not report the
    same change later. Fed without inputs (``inputs=None``: inputs that are not a floating-point
    tensor, or across ranks, where the inputs differ from rank to rank), only ``detector`` watches.

    Parameters
    ----------
    detector
        A per-sample detector (``update_many``, e.g. :class:`Windowed`) for the Trigger's signal.
    shift_detector
        A per-sample detector for the input-shift values.
    shift
        The input-shift signal (its window should equal ``shift_detector``'s).
    min_segment
        Least number of samples between two reported detections, >= 0.

    Examples
    --------
    >>> import torch
    >>> from online_mas.detectors import NeverFires, ScaledCUSUM, Windowed
    >>> g = torch.Generator().manual_seed(0)
    >>> c = Combined(Windowed(NeverFires(), window=32),
    ...              Windowed(ScaledCUSUM(threshold=16.0), window=32), InputShift(), min_segment=1024)
    >>> fired = []
    >>> for step in range(200):  # batches of 16 samples; the input mean moves at sample 1600
    ...     x = torch.randn(16, 8, generator=g) + (1.0 if step >= 100 else 0.0)
    ...     c.update_many([0.0] * 16, inputs=x)
    ...     fired += c.detections
    >>> fired
    [1727]
    """

    per_sample = True  # the Trigger feeds it one value per sample
    takes_inputs = True  # and the batch's inputs

    def __init__(self, detector: object, shift_detector: object, shift: InputShift | None = None, *,
                 min_segment: int = 1024) -> None:
        for name, d in (("detector", detector), ("shift_detector", shift_detector)):
            if not callable(getattr(d, "update_many", None)) or not hasattr(d, "drift_detected"):
                raise TypeError(f"{name} must be a per-sample detector with update_many(values) and "
                                f"drift_detected (e.g. Windowed), got {type(d)!r}")
        if shift is not None and not isinstance(shift, InputShift):
            raise TypeError(f"shift must be an InputShift, got {type(shift)!r}")
        self.detector = detector
        self.shift_detector = shift_detector
        self.shift = shift if shift is not None else InputShift()
        self.min_segment = check_int("min_segment", min_segment, minimum=0)
        self._since = 0  # samples since the last reported detection (or the start)
        self._seen = 0
        self._drift_detected = False
        self.detections: list[int] = []  # sample indices (0-based) of this call's detection
        self.fired_by: str | None = None  # "signal", "shift" or "both": who fired last

    @property
    def drift_detected(self) -> bool:
        """Whether the last update detected (read-only)."""
        return self._drift_detected

    def update(self, x: float) -> None:
        """Feed one sample of the signal (no inputs: the shift detector waits)."""
        self.update_many([x])

    def update_many(self, values: Sequence[float], inputs: Tensor | None = None) -> None:
        """Feed a batch: the signal's per-sample ``values`` and, if given, the batch's ``inputs``
        (batch first)."""
        self._drift_detected = False
        self.detections = []
        n = len(values)
        self.detector.update_many(values)  # type: ignore[attr-defined]
        by_signal = bool(self.detector.drift_detected)  # type: ignore[attr-defined]
        by_shift = False
        if inputs is not None:
            shifted = self.shift.per_sample(inputs).tolist()
            self.shift_detector.update_many(shifted)  # type: ignore[attr-defined]
            by_shift = bool(self.shift_detector.drift_detected)  # type: ignore[attr-defined]
            n = max(n, len(shifted))
        self._seen += n
        self._since += n
        if not (by_signal or by_shift) or self._since < self.min_segment:
            return
        self._since = 0
        self._drift_detected = True
        self.detections = [self._seen - 1]
        self.fired_by = "both" if by_signal and by_shift else "signal" if by_signal else "shift"
        self.shift.restart()
        for d, fired in ((self.detector, by_signal), (self.shift_detector, by_shift)):
            # Windowed.restart(); a bare river detector: _reset(), river's way to start afresh
            reset = getattr(d, "restart", None) or getattr(d, "_reset", None)
            if not fired and callable(reset):
                reset()

    def state_dict(self) -> dict[str, Any]:
        """Primitives and tensors only: both detectors' states and the input reference."""
        def inner(d: object) -> object:
            f = getattr(d, "state_dict", None)
            return f() if callable(f) else None
        return {"version": _VERSION, "detector": "Combined", "min_segment": self.min_segment,
                "since": self._since, "seen": self._seen, "drift_detected": self._drift_detected,
                "fired_by": self.fired_by, "signal_detector": inner(self.detector),
                "shift_detector": inner(self.shift_detector), "shift": self.shift.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; ``min_segment`` must match."""
        if not isinstance(state, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state).__name__}")
        if state.get("detector") != "Combined":
            raise ValueError(
                f"state_dict is for a {state.get('detector')!r} detector, not the Combined default "
                "(entropy and input shift); to continue it pass that detector "
                "explicitly, e.g. Windowed(ScaledCUSUM(warmup=16, threshold=8.0, mode='up'), "
                "window=32, min_segment=1024) for the per-sample default before Combined")
        if state.get("version") != _VERSION:
            raise ValueError(f"unsupported Combined state version {state.get('version')!r}; "
                             f"this library reads version {_VERSION}")
        if state["min_segment"] != self.min_segment:
            raise ValueError(f"min_segment differs: saved {state['min_segment']!r}, this detector "
                             f"{self.min_segment!r}")
        for d, key in ((self.detector, "signal_detector"), (self.shift_detector, "shift_detector")):
            load = getattr(d, "load_state_dict", None)
            if state[key] is not None and callable(load):
                load(state[key])
        self.shift.load_state_dict(state["shift"])
        self._since, self._seen = int(state["since"]), int(state["seen"])
        self._drift_detected = bool(state["drift_detected"])
        self.fired_by = state["fired_by"] if isinstance(state["fired_by"], str) else None

    def __repr__(self) -> str:
        return (f"Combined({self.detector!r}, {self.shift_detector!r}, {self.shift!r}, "
                f"min_segment={self.min_segment})")
