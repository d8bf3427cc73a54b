"""Two per-sample detectors, one on the Trigger's signal and one on the input shift; either fires."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from online_mas.detectors.base import check_float, check_int
from online_mas.detectors.windowed import Windowed
from online_mas.estimators.common import finite
from online_mas.signals import InputShift, fourier_of_inputs

_VERSION = 1


class Combined:
    """Consolidate when ``detector`` (fed the Trigger's signal, e.g. the entropy, per sample) or
    ``shift_detector`` (fed :class:`~online_mas.signals.InputShift` of the inputs, per sample)
    fires; detections less than ``min_segment`` samples after the previous reported one (or the
    start) are dropped: they are the same change seen twice, or the model's own transient after it.

    With ``joint_threshold`` set, both channels' statistics at or above it at once (each with an
    open run that has not fired) are a detection too.

    The rule is checked at the end of every window of either channel, inside a batch too (the
    joint rule only there), and at each batch's end: with :class:`Windowed` channels whose own
    ``min_segment`` is 0 (the default's), the same stream in batches of any size gives the same
    detections, at the same samples (:attr:`detections`); a channel that holds its detections
    back (``min_segment > 0``) reports them at the next window or batch end, and a detection
    inside the input shift's first window (which sets its Fourier features' length scale) leaves
    that scale measured on the samples of the batch. After a reported
    detection the input reference restarts (the new segment becomes it) and both detectors start
    afresh (river's ``_reset()``), so the one that did not fire does not report the same change
    later. Fed without inputs
    (``inputs=None``: inputs that are not a floating-point tensor, or across ranks, where the
    inputs differ from rank to rank), only ``detector`` watches: no joint detection is made in
    such a batch.

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
    joint_threshold
        None (the default: either channel alone decides), or a level > 0 in the channels'
        own units (standard deviations for :class:`ScaledCUSUM` channels): a detection also when,
        at the end of a window (or of a batch), both channels' statistics
        (:attr:`Windowed.statistic`) are at or above it at once, though neither reached its own
        threshold: a change that both see
        (a return to a learned segment moves the inputs and, a little, the entropy). On a
        stationary stream the two statistics are nearly independent (the input shift does not
        depend on the model), so both are seldom high at the same time. ``fired_by`` is then
        ``"joint"``.

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
    [1759]
    """

    per_sample = True  # the Trigger feeds it one value per sample
    takes_inputs = True  # and the batch's inputs

    def __init__(self, detector: object, shift_detector: object, shift: InputShift | None = None, *,
                 min_segment: int = 1024, lag: int = 0, joint_threshold: float | None = None) -> None:
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
        self.lag = check_int("lag", lag, minimum=0)
        if joint_threshold is not None:
            joint_threshold = check_float("joint_threshold", joint_threshold, minimum=0.0,
                                          strict_minimum=True)
            for name, d in (("detector", detector), ("shift_detector", shift_detector)):
                if not isinstance(getattr(d, "statistic", None), float) or not hasattr(d, "run_age"):
                    raise TypeError(f"joint_threshold needs channels that report their statistic and "
                                    f"run (statistic, run_age: e.g. Windowed of a ScaledCUSUM); {name} "
                                    f"is {d!r}")
        self.joint_threshold = joint_threshold
        if self.lag > self.min_segment:
            raise ValueError(f"lag must be an integer from 0 to min_segment={self.min_segment} "
                             f"(detections of one deferred evaluation consolidate once), got {lag!r}")
        self._since = 0  # samples since the last reported detection (or the start)
        self._seen = 0
        self._drift_detected = False
        self.detections: list[int] = []  # sample indices (0-based) of this call's detection
        self.fired_by: str | None = None  # "signal", "shift", "both" or "joint": who fired last
        self.onset: int | None = None  # where the change of the last reported detection began

    @property
    def drift_detected(self) -> bool:
        """Whether the last update detected (read-only)."""
        return self._drift_detected

    @property
    def samples_seen(self) -> int:
        """Samples fed since construction (read-only): the clock of :attr:`run_starts` and
        :attr:`onset`."""
        return self._seen

    @property
    def reports_runs(self) -> bool:
        """Both channels report their CUSUM runs (:attr:`Windowed.reports_runs`), so
        :attr:`run_starts` and :attr:`onset` are known (read-only)."""
        return all(getattr(d, "reports_runs", False) is True for d in (self.detector, self.shift_detector))

    @property
    def run_starts(self) -> tuple[int | None, int | None]:
        """Per channel (signal, shift), the sample index where its open CUSUM run began, None where
        none is open (read-only). A change that a channel detects later began at or after its
        run's start: parameters saved before that sample had not seen it."""
        return tuple(None if (a := getattr(d, "run_age", None)) is None else self._seen - a  # type: ignore[return-value]
                     for d in (self.detector, self.shift_detector))

    def update(self, x: float) -> None:
        """Feed one sample of the signal (no inputs: the shift detector waits)."""
        self.update_many([x])

    def update_many(self, values: Sequence[float], inputs: Tensor | None = None) -> None:
        """Feed a batch: the signal's per-sample ``values`` and, if given, the batch's ``inputs``
        (batch first). The batch is fed piece by piece, each ending where a window of either
        channel ends (or at the batch's end), and the rule is checked after each piece: the
        detections are at the same samples whatever the batch size (:attr:`detections`)."""
        self._drift_detected = False
        found: list[int] = []
        n = len(values)
        if inputs is not None and inputs.shape[0] != n:  # not one value per input: the batch at once
            self.detector.update_many(values)  # type: ignore[attr-defined]
            self.shift_detector.update_many(self.shift.per_sample(inputs).tolist())  # type: ignore[attr-defined]
            if self._end_batch(max(n, inputs.shape[0]), bool(self.detector.drift_detected),  # type: ignore[attr-defined]
                               bool(self.shift_detector.drift_detected)):  # type: ignore[attr-defined]
                found.append(self._seen - 1)
            n = 0
        start, at = 0, 0
        shifted: list[float] | None = None  # the input shift of the samples from ``at`` on
        while start < n:
            end = start + min(self._window_ends(n - start) | {n - start})
            self.detector.update_many(values[start:end])  # type: ignore[attr-defined]
            by_signal = bool(self.detector.drift_detected)  # type: ignore[attr-defined]
            by_shift = False
            if inputs is not None:
                if shifted is None:  # once per batch, and again after a detection restarted it
                    shifted, at = self.shift.per_sample(inputs[start:]).tolist(), start
                self.shift_detector.update_many(shifted[start - at:end - at])  # type: ignore[attr-defined]
                by_shift = bool(self.shift_detector.drift_detected)  # type: ignore[attr-defined]
            if self._end_batch(end - start, by_signal, by_shift, inputs is not None):
                found.append(self._seen - 1)
                shifted = None
            start = end
        self.detections = found
        self._drift_detected = bool(found)

    def update_batches(self, values: Tensor, inputs: Tensor | None, sizes: Sequence[int]) -> None:
        """Feed several batches at once, as the Trigger's deferred evaluation does (``lag``).

        ``values`` holds the per-sample signal values of all of them (1-D), ``inputs`` their inputs
        stacked (batch first) or None, ``sizes`` the batch sizes. The detections are those of
        :meth:`update_many` batch after batch, up to the rounding of the window sums:
        :attr:`detections` lists each reported one (its sample index), ``drift_detected`` says
        whether there was any. The window sums of both channels are computed in bulk
        (:meth:`InputShift.piece_sums <online_mas.signals.InputShift.piece_sums>`) when the channels
        are :class:`Windowed` detectors whose windows line up with the input shift's; otherwise
        this falls back to :meth:`update_many` per batch.
        """
        self._drift_detected = False
        found: list[int] = []
        bounds = [0]
        for k in sizes:
            bounds.append(bounds[-1] + int(k))
        if bounds[-1] != values.shape[0] or (inputs is not None and inputs.shape[0] != bounds[-1]):
            raise ValueError(f"sizes sum to {bounds[-1]}, but there are {values.shape[0]} values and "
                             f"{None if inputs is None else inputs.shape[0]} inputs")
        start = 0
        while start < bounds[-1]:
            start = self._feed_from(values, inputs, bounds, start, found)
        self.detections = found
        self._drift_detected = bool(found)

    def _feed_from(self, values: Tensor, inputs: Tensor | None, bounds: list[int], start: int,
                   found: list[int]) -> int:
        """Feed the samples from ``start`` on, piece by piece (the pieces end at the batch ends
        ``bounds`` and at the windows' ends, as :meth:`update_many` feeds them), until a piece
        reports a detection (which restarts the input shift and the windows, and so changes what
        follows); returns the sample to go on from."""
        if not finite(values[start:]):  # rare: the signal's channel skips a non-finite value, which
            for end in (e for e in bounds if e > start):  # moves its windows: batch by batch
                self.update_many(values[start:end].tolist(), None if inputs is None else inputs[start:end])
                found += self.detections
                start = end
            return start
        n = bounds[-1] - start
        cuts = sorted({e - start for e in bounds if e > start} | self._window_ends(n))
        signal = _window_sums(self.detector, values[start:], cuts)
        shift = None
        if inputs is not None and _lined_up(self.shift_detector, self.shift):
            sums, lengths = self.shift.piece_sums(inputs[start:], cuts)  # finite: unusable inputs are
            shift = _by_batch(sums.tolist(), lengths, cuts)  # replaced (InputShift's input_limit)
        each = values[start:].tolist() if signal is None else None
        lo = 0
        for i, hi in enumerate(cuts):
            if signal is not None:
                self.detector.update_sums(*signal[i])  # type: ignore[attr-defined]
            else:
                self.detector.update_many(each[lo:hi])  # type: ignore[attr-defined,index]
            by_signal = bool(self.detector.drift_detected)  # type: ignore[attr-defined]
            by_shift = False
            if inputs is not None:
                if shift is not None:
                    self.shift_detector.update_sums(*shift[i])  # type: ignore[attr-defined]
                else:
                    shift_values = self.shift.per_sample(inputs[start + lo:start + hi]).tolist()
                    self.shift_detector.update_many(shift_values)  # type: ignore[attr-defined]
                by_shift = bool(self.shift_detector.drift_detected)  # type: ignore[attr-defined]
            if self._end_batch(hi - lo, by_signal, by_shift, inputs is not None):
                found.append(self._seen - 1)
                return start + hi
            lo = hi
        return bounds[-1]

    def _window_ends(self, n: int) -> set[int]:
        """The offsets in the next ``n`` samples (0 < offset < n) where a window of either channel
        (a :class:`Windowed`) ends."""
        ends: set[int] = set()
        for d in (self.detector, self.shift_detector):
            if isinstance(d, Windowed):
                ends.update(range(d.window - d.open_count, n, d.window))
        return ends

    def _end_batch(self, n: int, by_signal: bool, by_shift: bool, fed_shift: bool = True) -> bool:
        """Count a piece of ``n`` samples (a batch, or its part up to a window's end) in which the
        channels did or did not fire (the shift channel fed or not); whether it is a detection:
        one did, or the two statistics are at or above ``joint_threshold`` (the shift channel
        fed), at least ``min_segment`` samples after the previous report. It restarts the input
        reference and the channels that did not fire (both, after a joint detection)."""
        self._seen += n
        self._since += n
        joint = not (by_signal or by_shift) and fed_shift and self._joint()
        if not (by_signal or by_shift or joint) or self._since < self.min_segment:
            return False
        self._since = 0
        if joint:  # neither channel fired: both open runs are the change's, both start afresh
            self.fired_by = "joint"
            ages = [getattr(d, "run_age", None) for d in (self.detector, self.shift_detector)]
        else:
            self.fired_by = "both" if by_signal and by_shift else "signal" if by_signal else "shift"
            ages = [getattr(d, "fired_age", None) for d, fired in
                    ((self.detector, by_signal), (self.shift_detector, by_shift)) if fired]
        known = [a for a in ages if isinstance(a, int)]
        self.onset = self._seen - max(known) if len(known) == len(ages) else None
        self.shift.restart()
        for d, fired in ((self.detector, by_signal), (self.shift_detector, by_shift)):
            if joint or not fired:
                _restart(d)
        return True

    def _joint(self) -> bool:
        """:attr:`joint_statistic` is at or above ``joint_threshold`` (the statistics first: mostly
        one is below, and the runs need not be looked at)."""
        t = self.joint_threshold
        if t is None:
            return False
        windowed = [d for d in (self.detector, self.shift_detector) if isinstance(d, Windowed)]
        if windowed and all(d.open_count for d in windowed):
            return False  # mid-window (a batch's end): only at a window's end, whatever the batch
        for d in (self.detector, self.shift_detector):
            v = getattr(d, "statistic", None)
            if not isinstance(v, float) or v < t:
                return False
        return (self.joint_statistic or 0.0) >= t

    @property
    def joint_statistic(self) -> float | None:
        """The smaller of the two channels' statistics now, 0.0 unless both have an open run that
        has not fired (a channel's detection dropped by ``min_segment`` leaves its sum above its
        threshold until its next window: that is not a joint change), None where a channel reports
        no statistic (read-only). ``joint_threshold`` is compared with it at every window's end
        (and batch end), inside a batch too."""
        stats = [getattr(d, "statistic", None) for d in (self.detector, self.shift_detector)]
        if not all(isinstance(v, float) for v in stats):
            return None
        if any(getattr(d, "run_age", None) is None for d in (self.detector, self.shift_detector)):
            return 0.0
        return min(stats)  # type: ignore[type-var]

    def state_dict(self) -> dict[str, Any]:
        """Primitives and tensors only: both detectors' states and the input reference."""
        def inner(d: object) -> object:
            f = getattr(d, "state_dict", None)
            return f() if callable(f) else None
        return {"version": _VERSION, "detector": "Combined", "min_segment": self.min_segment,
                "joint_threshold": self.joint_threshold,
                "since": self._since, "seen": self._seen, "drift_detected": self._drift_detected,
                "fired_by": self.fired_by, "onset": self.onset, "signal_detector": inner(self.detector),
                "shift_detector": inner(self.shift_detector), "shift": self.shift.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; ``min_segment`` and ``joint_threshold`` must match. A state
        saved before ``joint_threshold`` existed had none: it is continued as it was saved, with
        ``joint_threshold`` set to None here and a warning."""
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
        joint = state.get("joint_threshold")
        if "joint_threshold" in state and joint != self.joint_threshold:
            raise ValueError(f"joint_threshold differs: saved {joint!r}, this detector "
                             f"{self.joint_threshold!r}; to continue the state, build the detector "
                             f"with joint_threshold={joint!r} (e.g. default_detector(joint_threshold="
                             f"{joint!r}))")
        for d, key in ((self.detector, "signal_detector"), (self.shift_detector, "shift_detector")):
            load = getattr(d, "load_state_dict", None)
            if state[key] is not None and callable(load):
                load(state[key])
        self.shift.load_state_dict(state["shift"])
        if fourier_of_inputs(state["shift"]):  # the input shift starts afresh: its channel with it
            _restart(self.shift_detector)
        if "joint_threshold" not in state and self.joint_threshold is not None:
            warnings.warn(f"a Combined state saved before joint_threshold existed: continued as saved, "
                          f"without joint detections (joint_threshold {self.joint_threshold!r} -> None)",
                          RuntimeWarning, stacklevel=2)
            self.joint_threshold = None
        self._since, self._seen = int(state["since"]), int(state["seen"])
        self._drift_detected = bool(state["drift_detected"])
        self.fired_by = state["fired_by"] if isinstance(state["fired_by"], str) else None
        onset = state.get("onset")  # absent in states saved before it was kept
        self.onset = int(onset) if isinstance(onset, int) else None

    def __repr__(self) -> str:
        return (f"Combined({self.detector!r}, {self.shift_detector!r}, {self.shift!r}, "
                f"min_segment={self.min_segment}, lag={self.lag}"
                + ("" if self.joint_threshold is None else f", joint_threshold={self.joint_threshold!r}")
                + ")")


def _restart(detector: object) -> None:
    """Start a channel afresh: Windowed.restart(); a bare river detector: _reset(), river's way."""
    reset = getattr(detector, "restart", None) or getattr(detector, "_reset", None)
    if callable(reset):
        reset()


def _lined_up(detector: object, shift: InputShift) -> bool:
    """The shift channel's windows are the input shift's: its window sums can be fed directly."""
    return (isinstance(detector, Windowed) and detector.window == shift.window
            and detector.min_segment == 0 and detector.open_count == shift.open_count)


_Chunks = list[tuple[list[float], list[int]]]  # per batch: the sums and sample counts of its pieces


def _window_sums(detector: object, values: Tensor, cuts: list[int]) -> _Chunks | None:
    """Per batch (``cuts``: batch ends), the sums of ``values`` over its pieces inside the windows
    of a :class:`Windowed` channel with ``min_segment`` 0 (None for any other detector)."""
    if not isinstance(detector, Windowed) or detector.min_segment != 0:
        return None
    n, w = values.shape[0], detector.window
    ends = sorted(set(cuts) | set(range(w - detector.open_count, n, w)))
    if not ends or ends[-1] != n:
        ends.append(n)
    lengths = [e - s for s, e in zip([0, *ends[:-1]], ends, strict=True)]
    flat = values.double()
    if all(k == lengths[0] for k in lengths):
        sums = flat.view(len(lengths), lengths[0]).sum(1)
    else:
        index = torch.repeat_interleave(torch.arange(len(lengths), device=flat.device),
                                        torch.tensor(lengths, device=flat.device))
        sums = flat.new_zeros(len(lengths)).index_add_(0, index, flat)
    return _by_batch(sums.tolist(), lengths, cuts)


def _by_batch(sums: list[float], lengths: list[int], cuts: list[int]) -> _Chunks:
    """Group consecutive pieces (sums, lengths) into the batches that end at ``cuts``."""
    out, i, pos = [], 0, 0
    for end in cuts:
        j = i
        while j < len(lengths) and pos < end:
            pos += lengths[j]
            j += 1
        out.append((sums[i:j], lengths[i:j]))
        i = j
    return out
