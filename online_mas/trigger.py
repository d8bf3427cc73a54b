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

import torch
from torch import Tensor

from online_mas.checks import is_int
from online_mas.detectors import Combined, ScaledCUSUM, Windowed
from online_mas.detectors.base import check_int
from online_mas.estimators.common import finite
from online_mas.signals import InputShift, Loss, signal_from

__all__ = ["Trigger", "check_boundaries", "default_detector"]

_NOT_FINITE = torch.empty(0)  # value() saw an output that is not finite: fire() leaves it out


def default_detector(*, window: int = 32, warmup: int = 2048, min_segment: int = 1024,
                     threshold: float = 16.0, shift_threshold: float = 16.0,
                     shift_warmup: int = 512, shift_half_life: float = 2048.0,
                     shift_projections: int = 64, shift_fourier: int = 256,
                     shift_bandwidth: float = 0.5, lag: int = 256,
                     joint_threshold: float | None = 8.0) -> Combined:
    """The detector ``OnlineMAS`` uses when none is given: two self-calibrated one-sided CUSUMs fed
    per sample in windows of ``window`` samples whatever the batch size, one on the predictive
    entropy (the Trigger's signal), one on the shift of the inputs
    (:class:`~online_mas.signals.InputShift`); either one consolidates, or both at once above
    ``joint_threshold`` (:class:`Combined`).

    The entropy rises when the model meets inputs it has not learned; the input shift moves on any
    change of the input means, of their second moments along random directions (permutations that
    keep every position's mean included) or of the means of random Fourier features (where the
    inputs lie: river's RandomRBF generators), returns to a learned segment included (where the
    entropy barely moves). Each :class:`~online_mas.detectors.ScaledCUSUM` standardises its window means by
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
    shift_fourier
        Random Fourier features of the input shift, >= 0; 0 gives the detector of before version 3
        of its state (continue a state saved before them with ``shift_fourier=0``).
    shift_bandwidth
        Their length scale in units of the median distance between the samples of the stream's
        first window, > 0.
    joint_threshold
        Both CUSUMs at or above this many standard deviations at once also consolidate, though
        neither reached its own threshold (:class:`Combined`): a change that moves the inputs and
        the entropy a little each, as a return to a learned segment can (river's RandomRBF A B A);
        None: either channel alone decides, the default before 8.0. On the stationary streams of
        ``scripts/detection.py`` (batch 1 to 128, digits and mnist1d) the smaller of the two
        statistics stayed below 6 (``results/detection.md``).
    lag
        Samples the Trigger keeps before evaluating them in bulk, 0 to ``min_segment`` (0: every
        call at once; 256, the default, was 0 before: one host synchronisation per 256 samples
        instead of one per call). The detections are the same; each is reported up to ``lag``
        samples later (see :class:`Trigger`), and anchored at the parameters saved before the
        block in which its change's run began (:class:`~online_mas.consolidate.StableAnchor`), so
        the later report costs no accuracy (permuted digits at batch 32, 10 seeds: ACC 62.8 at
        ``lag=256``, 61.9 at ``lag=0``). ``lag=256`` costs about a quarter of ``lag=0`` per call at
        batch 32, a fifth at batch 1 (``results/detector_feed.md``).

    Examples
    --------
    >>> default_detector()  # doctest: +NORMALIZE_WHITESPACE
    Combined(Windowed(ScaledCUSUM(warmup=64, slack=0.5, threshold=16.0, clip=4.0, half_life=64.0,
    mode='up'), window=32, min_segment=0), Windowed(ScaledCUSUM(warmup=16, slack=0.5,
    threshold=16.0, clip=4.0, half_life=16.0, mode='up'), window=32, min_segment=0),
    InputShift(window=32, half_life=2048, eps=0.001, projections=64, fourier=256, bandwidth=0.5,
    seed=0), min_segment=1024, lag=256, joint_threshold=8.0)
    """
    window = check_int("window", window, minimum=2)
    warmup = check_int("warmup", warmup, minimum=1)
    shift_warmup = check_int("shift_warmup", shift_warmup, minimum=1)
    shift_fourier = check_int("shift_fourier", shift_fourier, minimum=0)
    if isinstance(shift_bandwidth, bool) or not (isinstance(shift_bandwidth, int | float)
                                                 and math.isfinite(shift_bandwidth) and shift_bandwidth > 0):
        raise ValueError(f"shift_bandwidth must be a finite number > 0, got {shift_bandwidth!r}")
    windows = max(2, -(-warmup // window))
    entropy = Windowed(ScaledCUSUM(warmup=windows, threshold=threshold, half_life=float(windows),
                                   mode="up"), window=window)
    shift = Windowed(ScaledCUSUM(warmup=max(2, -(-shift_warmup // window)), threshold=shift_threshold,
                                 mode="up"), window=window)
    return Combined(entropy, shift, InputShift(window=window, half_life=shift_half_life,
                                               projections=shift_projections, fourier=shift_fourier,
                                               bandwidth=shift_bandwidth),
                    min_segment=min_segment, lag=lag, joint_threshold=joint_threshold)


class Trigger:
    """Signal + detector, or known boundaries -> "consolidate now".

    With ``lag > 0`` a per-sample detector is fed in bulk: :meth:`value` and :meth:`fire` only
    keep a copy of the batch's output and inputs, and once ``lag`` samples are pending the signal
    of all of them (one softmax), the input shift (one projection) and the detectors' window
    updates run at once (``Combined.update_batches``; a detector with ``update_many`` only gets
    the per-sample values). The detections are those of ``lag=0`` (the same sample indices, up to
    the rounding of the window sums), reported up to ``lag`` samples later: :meth:`fire` says
    "detector" at the call whose evaluation found one, and the detector's ``detections`` hold the
    sample indices. The consolidation comes that much later; the anchor it takes
    (``StableAnchor``) was saved before the block in which the change's run began.
    Detections of one evaluation (at most ``lag`` samples, or one larger batch) give one reason,
    as those of one batch do at ``lag=0``; ``Combined`` keeps ``lag <= min_segment`` so that only
    a batch larger than ``min_segment`` can hold two (one consolidation, anchored at the last
    one's onset). Batches whose output is not finite are not kept (``value``
    returns nan, and ``OnlineMAS.observe`` skips them, as at ``lag=0``). Across ranks
    (``pooled``) there is no deferral: the pooled batch mean is fed at once. :meth:`flush`
    evaluates what is pending now (the end of a stream: ``OnlineMAS.flush(detector=True)``);
    ``state_dict`` keeps it.

    Parameters
    ----------
    detector
        Any object with ``update(value)`` and ``drift_detected`` (river's contract), or None.
    signal
        A name from :data:`~online_mas.signals.SIGNALS` or a signal object.
    boundaries
        Steps (1-based ``observe`` calls) after which to consolidate; then no detector is used.
    lag
        Samples kept before a bulk evaluation, >= 0 (0: every call is evaluated at once); None:
        the detector's ``lag`` attribute if it has one (:func:`default_detector`), else 0. Used
        for a per-sample detector (``per_sample``) on a signal with per-sample values.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> now, later = Trigger(default_detector(lag=0)), Trigger(default_detector(lag=256))
    >>> calls = {id(now): [], id(later): []}
    >>> for step in range(1, 301):  # batches of 32 samples; the inputs' mean moves at sample 4800
    ...     x = torch.randn(32, 8, generator=g) + (1.0 if step > 150 else 0.0)
    ...     out = torch.zeros(32, 3)  # a constant entropy: only the input shift sees the change
    ...     for t in (now, later):
    ...         t.see(x)
    ...         if t.fire(step, t.value(out), n=32):
    ...             calls[id(t)].append((step, t.detector.detections))
    >>> calls[id(now)], calls[id(later)]  # the same sample, reported at a later call
    ([(155, [4959])], [(160, [4959])])
    """

    def __init__(self, detector: object | None, signal: object = "entropy",
                 boundaries: Iterable[int] | None = None, *, lag: int | None = None) -> None:
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
        self.lag = getattr(detector, "lag", 0) if lag is None else lag
        self.last_signal: float | None = None  # the last value fed to the detector
        self._samples: list[float] | None = None  # per-sample values of the last value()
        self._inputs: Tensor | None = None  # inputs of the last value(), for a detector that takes them
        self._out: Tensor | None = None  # output of the last value(), to keep (lag > 0)
        self._pending: list[tuple[Tensor, Tensor | None]] = []  # copies of (output, inputs) per batch
        self._pending_n = 0  # samples in _pending
        self.evaluated = 0  # samples the detector evaluated in the last fire() or flush()

    @property
    def lag(self) -> int:
        """Samples kept before a bulk evaluation (0: none); assigning checks it."""
        return self._lag

    @lag.setter
    def lag(self, value: int) -> None:
        self._lag = check_int("lag", value, minimum=0)

    @property
    def pending(self) -> int:
        """Samples kept for the next bulk evaluation (read-only)."""
        return self._pending_n

    @property
    def runs(self) -> tuple[tuple[int | None, ...], int] | None:
        """The detector's open CUSUM runs, or None for a detector that does not report them
        (read-only): per channel the latest sample whose parameters count as from before its
        run (None where no run is open), and the samples the parameters have trained on on the
        detector's clock: its sample count plus the pending ones (a batch that would take the
        pending samples past ``lag`` is kept after they are evaluated, but ``observe`` comes after
        its step). A run begins with a window, and the detector cannot place a change more finely
        than its window, so that is the last sample of the run's first window
        (:attr:`Combined.run_starts <online_mas.detectors.Combined.run_starts>` plus the window,
        less one)."""
        d = self.detector
        if d is None or getattr(d, "reports_runs", False) is not True:
            return None
        slack = _resolution(d) - 1
        starts = tuple(None if s is None else s + slack for s in d.run_starts)  # type: ignore[attr-defined]
        return starts, int(d.samples_seen) + self._pending_n  # type: ignore[attr-defined]

    @property
    def onset(self) -> int | None:
        """For the detector's last detection, the latest sample whose parameters count as from
        before its change (as in :attr:`runs`; None: not reported), read-only."""
        d = self.detector
        if d is None or getattr(d, "reports_runs", False) is not True:
            return None
        onset = getattr(d, "onset", None)
        return onset + _resolution(d) - 1 if isinstance(onset, int) else None

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

    def value(self, out: Tensor, *, pooled: bool = False) -> float | None:
        """The detector's signal of a batch output (None when it watches the loss or is absent).

        With ``lag > 0`` (and not ``pooled``: across ranks) the output is kept for the bulk
        evaluation instead, and the value is that of the last evaluated batch (of this one before
        any), or nan if this output is not finite (``observe`` then skips the batch): no per-sample
        value is computed here.
        """
        self._samples = None
        self._out = None
        if not self.every_step:
            return None
        each = getattr(self.signal, "per_sample", None)
        if self._lag and not pooled and self.per_sample and callable(each):
            if not finite(out):  # one reduction (half precision summed in float32): no softmax per call
                self._out = _NOT_FINITE
                return math.nan
            self._out = out.detach()
            if self.last_signal is None:
                return float(self.signal(out))  # type: ignore[operator]
            return self.last_signal
        if self.per_sample and callable(each):
            values = each(out).tolist()
            self._samples = values
            return math.fsum(values) / len(values) if values else math.nan
        return float(self.signal(out))  # type: ignore[operator]

    def fire(self, step: int, value: float | None, *, n: int = 1, pooled: bool = False) -> str | None:
        """Feed ``value`` (if any); the reason to consolidate after ``step``, or None.

        A per-sample detector gets the per-sample values of the last :meth:`value` call, or (none
        kept, or ``pooled``: ``value`` is a mean over ranks) ``value`` once for each of ``n`` samples.
        With ``lag > 0`` the batch kept by :meth:`value` joins the pending ones, which are
        evaluated once ``lag`` samples are pending (before a batch that would take them past it).
        """
        samples, self._samples = self._samples, None
        inputs, self._inputs = self._inputs, None
        out, self._out = self._out, None
        self.evaluated = 0
        if self.boundaries is not None:
            return "boundary" if step in self.boundaries else None
        if self.detector is None or value is None:
            return None
        if out is _NOT_FINITE:  # lag > 0: a batch whose output is not finite is left out
            return None
        if out is not None and not pooled:
            return self._keep(out, inputs)
        before = self.flush() if self._pending else None  # e.g. lag lowered, or pooled from now on
        self.last_signal = value
        if self.per_sample:
            values: Sequence[float] = samples if samples is not None and not pooled else [value] * max(1, n)
            self.evaluated += len(values)
            many = getattr(self.detector, "update_many", None)
            if callable(many):
                if getattr(self.detector, "takes_inputs", False):  # across ranks: the signal only
                    many(values, inputs=None if pooled else inputs)
                else:
                    many(values)
                return "detector" if self.detector.drift_detected or before else None
            fired = False
            for v in values:
                self.detector.update(v)  # type: ignore[attr-defined]
                fired = fired or bool(self.detector.drift_detected)
            return "detector" if fired or before else None
        self.detector.update(value)  # type: ignore[attr-defined]
        return "detector" if self.detector.drift_detected or before else None

    def flush(self) -> str | None:
        """Evaluate the pending samples now (the end of a stream, or before a change of lag);
        "detector" if they hold a detection, else None."""
        pending, self._pending, self._pending_n = self._pending, [], 0
        if not pending or self.detector is None:
            return None
        self.evaluated += sum(o.shape[0] for o, _ in pending)
        fired = False
        for run in _runs(pending):  # batches of one output and input shape and device each
            fired = self._evaluate(run) or fired
        return "detector" if fired else None

    def _evaluate(self, batches: list[tuple[Tensor, Tensor | None]]) -> bool:
        """Feed the detector the batches at once; whether it detected."""
        outs = [o for o, _ in batches]
        sizes = [o.shape[0] for o in outs]
        each_of = getattr(self.signal, "per_sample_many", None) or getattr(self.signal, "per_sample")  # noqa: B009
        values: Tensor = each_of(torch.cat(outs) if len(outs) > 1 else outs[0])
        update = getattr(self.detector, "update_batches", None)
        if callable(update):
            kept = [i for _, i in batches]
            inputs = None if kept[0] is None else torch.cat(kept) if len(kept) > 1 else kept[0]  # type: ignore[arg-type]
            update(values, inputs, sizes)
            self.last_signal = float(values[-sizes[-1]:].double().mean())
            return bool(self.detector.drift_detected)
        each = values.tolist()
        tail = each[-sizes[-1]:]
        self.last_signal = math.fsum(tail) / len(tail) if tail else math.nan
        many = getattr(self.detector, "update_many", None)
        if callable(many):
            many(each)
            return bool(self.detector.drift_detected)
        fired = False
        for v in each:  # a per-sample detector of river's contract only
            self.detector.update(v)  # type: ignore[attr-defined]
            fired = fired or bool(self.detector.drift_detected)
        return fired

    def _keep(self, out: Tensor, inputs: Tensor | None) -> str | None:
        """Keep copies of a batch's output and inputs (the user may refill their buffers in place);
        evaluate when ``lag`` samples are pending (first, before a batch that would pass it)."""
        n = out.shape[0]
        earlier = self.flush() if self._pending_n and self._pending_n + n > self._lag else None
        self._pending.append((out.clone() if out.dtype == torch.float32 else out.float(),
                              None if inputs is None else inputs.clone()))
        self._pending_n += n
        if earlier is None and self._pending_n >= self._lag:
            return self.flush()
        return earlier

    def state_dict(self) -> dict[str, object]:
        """The detector's and the signal's states, the last signal, the lag and the pending batches
        (their output and input copies: tensors and None only)."""
        detector = None
        if self.detector is not None and callable(getattr(self.detector, "state_dict", None)):
            detector = self.detector.state_dict()  # type: ignore[attr-defined]
        signal = getattr(self.signal, "state_dict", None)
        return {"version": 2, "detector": detector, "last_signal": self.last_signal,
                "signal": signal() if callable(signal) else None, "lag": self._lag,
                "pending_outputs": [o for o, _ in self._pending],
                "pending_inputs": [i for _, i in self._pending]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict`; a version 1 state (before ``lag``) has nothing pending. The
        pending batches are evaluated by this trigger's ``lag`` (at once if it is 0)."""
        version = state.get("version")
        if version not in (1, 2):
            raise ValueError(f"unsupported Trigger state version {version!r}; this library reads 1 and 2")
        outs = state.get("pending_outputs", []) if version == 2 else []
        ins = state.get("pending_inputs", []) if version == 2 else []
        if not (isinstance(outs, list) and isinstance(ins, list) and len(outs) == len(ins)
                and all(isinstance(o, Tensor) for o in outs)
                and all(i is None or isinstance(i, Tensor) for i in ins)):
            raise ValueError("pending_outputs and pending_inputs must be lists of tensors (inputs: "
                             "or None) of the same length")
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
        self._pending = [(o, i) for o, i in zip(outs, ins, strict=True)]
        self._pending_n = sum(o.shape[0] for o in outs)


def _resolution(detector: object) -> int:
    """Samples per value of a per-sample detector: its window (a Combined: its channels' widest)."""
    windows = [getattr(d, "window", 1) for d in (getattr(detector, "detector", None),
                                                 getattr(detector, "shift_detector", None)) if d is not None]
    if isinstance(detector, Windowed):
        windows.append(detector.window)
    return max([w for w in windows if isinstance(w, int)] or [1])


def check_boundaries(boundaries: Iterable[int]) -> frozenset[int]:
    if isinstance(boundaries, str | bytes) or not hasattr(boundaries, "__iter__"):
        raise TypeError(f"boundaries must be a sequence of int steps, got {boundaries!r}")
    steps = list(boundaries)
    bad = [b for b in steps if not is_int(b) or b < 1]
    if bad:
        raise ValueError(f"boundaries must be observe() step numbers >= 1, got {bad}")
    return frozenset(steps)


def _runs(pending: list[tuple[Tensor, Tensor | None]]) -> list[list[tuple[Tensor, Tensor | None]]]:
    """Consecutive batches whose outputs and inputs can be stacked (same trailing shape and
    device, inputs present or not), in order."""
    def kind(o: Tensor, i: Tensor | None) -> tuple[object, ...]:
        return (o.shape[1:], o.device, None if i is None else (i.shape[1:], i.device))
    runs: list[list[tuple[Tensor, Tensor | None]]] = []
    last: tuple[object, ...] | None = None
    for o, i in pending:
        k = kind(o, i)
        if k != last:
            runs.append([])
            last = k
        runs[-1].append((o, i))
    return runs
