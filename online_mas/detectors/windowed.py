"""Per-sample feeding: any detector sees means of a fixed number of samples, whatever the batch size."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from online_mas.detectors.base import as_float, check_int

_VERSION = 1


class Windowed:
    """Feeds ``detector`` the mean of every ``window`` consecutive samples; holds detections back
    until ``min_segment`` samples have passed since the previous one.

    One :meth:`update` is one sample (river's contract), so a stream cut into batches of any size
    gives the same windows and the same detections; :meth:`update_many` feeds a batch at once.
    Windows are aligned to the sample count, not to batches. A detection of ``detector`` closer
    than ``min_segment`` samples to the previous reported one (or to the start) is not dropped but
    reported at the sample where the gap reaches ``min_segment``: detections that come too close
    merge into one, so consolidations are at least ``min_segment`` samples apart whatever the
    false-alarm rate. The update after a detection clears the flag only; ``detector`` resets itself.

    Parameters
    ----------
    detector
        Any detector with river's contract (``update(x)``, ``drift_detected``), e.g.
        :class:`~online_mas.detectors.ScaledCUSUM` or ``river.drift.ADWIN()``.
    window
        Samples per value fed to ``detector``, >= 1 (1: every sample).
    min_segment
        Least number of samples between two reported detections, >= 0.

    Examples
    --------
    >>> from online_mas.detectors import Periodic
    >>> w = Windowed(Periodic(every=2), window=4, min_segment=0)
    >>> fired = []
    >>> for i in range(20):
    ...     w.update(float(i))
    ...     fired += [i] if w.drift_detected else []
    >>> fired  # every second window of 4 samples
    [7, 15]
    >>> w = Windowed(Periodic(every=1), window=4, min_segment=10)  # fires on every window
    >>> w.update_many([0.0] * 20); w.drift_detected, w.detections  # held to 10 samples apart
    (True, [9, 19])
    """

    per_sample = True  # the Trigger feeds it one value per sample

    def __init__(self, detector: object, *, window: int = 32, min_segment: int = 0) -> None:
        if not (callable(getattr(detector, "update", None)) and hasattr(detector, "drift_detected")):
            raise TypeError("detector must have update(value) and a drift_detected property "
                            f"(river's contract), got {type(detector)!r}")
        self.detector = detector
        self.window = check_int("window", window, minimum=1)
        self.min_segment = check_int("min_segment", min_segment, minimum=0)
        self._n_skipped = 0
        self._sum = 0.0  # of the samples of the open window
        self._count = 0  # samples in the open window
        self._since = 0  # samples since the last reported detection (or the start)
        self._held = False  # a detection waits for min_segment
        self._seen = 0  # samples fed since construction
        self._drift_detected = False
        self._fired_start: int | None = None  # where the run of the wrapped detector's last detection began
        self.detections: list[int] = []  # sample indices (0-based) of this call's detections

    @property
    def drift_detected(self) -> bool:
        """Whether the last update (or batch of :meth:`update_many`) detected (read-only)."""
        return self._drift_detected

    @property
    def open_count(self) -> int:
        """Samples in the open window (read-only): where the next window ends."""
        return self._count

    @property
    def n_skipped(self) -> int:
        """Non-finite samples ignored (read-only)."""
        return self._n_skipped

    @property
    def reports_runs(self) -> bool:
        """The wrapped detector says how long its current run is (``run_length``, e.g.
        :class:`~online_mas.detectors.ScaledCUSUM`; river's detectors do not)."""
        return isinstance(getattr(self.detector, "run_length", None), int)

    @property
    def run_age(self) -> int | None:
        """Samples since the first sample of the window that opened the wrapped detector's current
        run (None: no run is open, or the detector does not report runs), read-only."""
        runs = getattr(self.detector, "run_length", None)
        if not isinstance(runs, int) or runs <= 0 or self.detector.drift_detected:
            return None
        return runs * self.window + self._count

    @property
    def statistic(self) -> float | None:
        """The wrapped detector's ``statistic`` (e.g. :attr:`ScaledCUSUM.statistic
        <online_mas.detectors.ScaledCUSUM.statistic>`, in standard deviations), None where it has
        none (river's detectors), read-only."""
        value = getattr(self.detector, "statistic", None)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def samples_seen(self) -> int:
        """Finite samples fed since construction (read-only): the clock of :attr:`run_starts`."""
        return self._seen

    @property
    def run_starts(self) -> tuple[int | None]:
        """The sample index where the open run began (None: none open), as a 1-tuple (one
        channel), read-only."""
        age = self.run_age
        return (None if age is None else self._seen - age,)

    @property
    def onset(self) -> int | None:
        """Where the run of the last detection began (its sample index; None: unknown), read-only."""
        return self._fired_start

    @property
    def fired_age(self) -> int | None:
        """Samples since the first sample of the window that opened the run of the wrapped
        detector's last detection (Page's estimate of where that change began; None: no detection
        yet, or the detector does not report runs), read-only."""
        return None if self._fired_start is None else self._seen - self._fired_start

    def update(self, x: float) -> None:
        """Feed one sample."""
        self._drift_detected = False
        self.detections = []
        value = as_float(x)
        if not math.isfinite(value):
            self._n_skipped += 1
            return
        self._feed(value, 1)

    def update_many(self, values: Sequence[float]) -> None:
        """Feed the samples of a batch in order; ``drift_detected``: any of them detected, at the
        indices in :attr:`detections`. The same result as one :meth:`update` per value."""
        self._drift_detected = False
        self.detections = []
        i, n = 0, len(values)
        while i < n:
            take = min(self.window - self._count, n - i)
            if self._held:
                take = min(take, max(1, self.min_segment - self._since))
            chunk = values[i:i + take]
            total = math.fsum(chunk) if take > 1 else float(chunk[0])
            if not math.isfinite(total):  # rare: fall back to one sample at a time
                for v in chunk:
                    if math.isfinite(v):
                        self._feed(float(v), 1)
                    else:
                        self._n_skipped += 1
            else:
                self._feed(total, take)
            i += take

    def update_sums(self, totals: Sequence[float], counts: Sequence[int]) -> None:
        """Feed consecutive chunks of samples by their sums: chunk ``i`` holds ``counts[i]`` samples
        that sum to ``totals[i]`` and lies inside one window (it ends at or before the open
        window's end). The same result as :meth:`update_many` of the samples, up to the rounding
        of the sums (how the Trigger's deferred evaluation feeds window sums computed in bulk);
        ``drift_detected`` and :attr:`detections` as there. A chunk that crosses a window end, or
        the point where a held detection is reported (``min_segment > 0``), and a non-finite sum
        (feed those samples with :meth:`update_many`, which skips the non-finite ones) raise
        ValueError.

        Examples
        --------
        >>> from online_mas.detectors import Periodic
        >>> w = Windowed(Periodic(every=2), window=4)
        >>> w.update_sums([1.0, 3.0, 4.0, 4.0], [1, 3, 4, 4]); w.detections  # windows end at 3, 7, 11
        [7]
        """
        self._drift_detected = False
        self.detections = []
        for total, k in zip(totals, counts, strict=True):
            room = self.window - self._count
            if self._held:
                room = min(room, max(1, self.min_segment - self._since))
            if not 0 < k <= room:
                raise ValueError(f"a chunk of {k!r} samples does not fit the {room} samples left "
                                 "before the window ends (or a held detection is reported)")
            if not -math.inf < total < math.inf:
                raise ValueError(f"the sum of a chunk must be finite, got {total!r}: feed its "
                                 "samples with update_many")
            self._feed(total, k)

    def restart(self) -> None:
        """Start afresh at a change found elsewhere (e.g. by :class:`Combined`'s other channel):
        drop the open window and a held detection, and reset the wrapped detector (river's
        ``_reset()``, where it has one). The sample count and ``n_skipped`` go on."""
        self._sum, self._count = 0.0, 0
        self._held, self._since = False, 0
        reset = getattr(self.detector, "_reset", None)
        if callable(reset):
            reset()

    def _feed(self, total: float, k: int) -> None:
        """Add ``k`` samples summing to ``total`` (never past the end of the open window)."""
        self._sum += total
        self._count += k
        self._since += k
        self._seen += k
        if self._count == self.window:
            self.detector.update(self._sum / self.window)  # type: ignore[attr-defined]
            self._sum, self._count = 0.0, 0
            if self.detector.drift_detected:
                if not self._held:  # a detection merged into a held one: the change began at the first
                    runs = getattr(self.detector, "run_length", None)
                    self._fired_start = self._seen - runs * self.window if isinstance(runs, int) else None
                self._held = True
        if self._held and self._since >= self.min_segment:
            self._held, self._since = False, 0
            self._drift_detected = True
            self.detections.append(self._seen - 1)

    def state_dict(self) -> dict[str, Any]:
        """Primitives only, with the wrapped detector's state (if it has one)."""
        inner = getattr(self.detector, "state_dict", None)
        return {"version": _VERSION, "detector": "Windowed", "window": self.window,
                "min_segment": self.min_segment, "sum": self._sum, "count": self._count,
                "since": self._since, "held": self._held, "seen": self._seen,
                "drift_detected": self._drift_detected, "n_skipped": self._n_skipped,
                "fired_start": self._fired_start, "inner": inner() if callable(inner) else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; window and min_segment must match."""
        if not isinstance(state, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state).__name__}")
        if state.get("detector") != "Windowed":
            raise ValueError(
                f"state_dict is for a {state.get('detector')!r} fed one value per observe() call, "
                "cannot load it into a Windowed detector fed per sample; to continue such a state "
                "pass that detector explicitly, e.g. the default before Windowed: "
                "PageHinkley(min_instances=30, delta=0.05, threshold=1.0, alpha=0.999, mode='up')")
        if state.get("version") != _VERSION:
            raise ValueError(f"unsupported Windowed state version {state.get('version')!r}; "
                             f"this library reads version {_VERSION}")
        for key in ("window", "min_segment"):
            if state[key] != getattr(self, key):
                raise ValueError(f"{key} differs: saved {state[key]!r}, this detector {getattr(self, key)!r}")
        load = getattr(self.detector, "load_state_dict", None)
        if state["inner"] is not None and callable(load):
            load(state["inner"])
        self._sum, self._count = float(state["sum"]), int(state["count"])
        self._since, self._held = int(state["since"]), bool(state["held"])
        self._seen = int(state["seen"])
        self._drift_detected = bool(state["drift_detected"])
        self._n_skipped = int(state["n_skipped"])
        start = state.get("fired_start")  # absent in states saved before it was kept
        self._fired_start = int(start) if isinstance(start, int) else None

    def __repr__(self) -> str:
        return f"Windowed({self.detector!r}, window={self.window}, min_segment={self.min_segment})"
