"""Consolidation: Omega, the anchor theta*, the rules that fold a segment in, and anchor policies.

When a segment ends, its running importance (optionally normalised) is folded into the consolidated
Omega by a rule, and the anchor theta* of the penalty moves: to the current parameters, or to a slow
moving average of them that the first steps on new data, taken before a detector could fire, barely
move (:class:`StableAnchor`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor

from online_mas.checks import is_int, is_real
from online_mas.onset import OnsetSnapshots
from online_mas.sharded import float_zeros, global_stats, is_sharded, place

__all__ = [
    "EMA",
    "NORMALIZE",
    "RULES",
    "Consolidator",
    "CurrentAnchor",
    "Max",
    "Mean",
    "StableAnchor",
    "Sum",
    "combine",
    "normalize",
]

RULES = ("sum", "mean", "ema", "max")
NORMALIZE = (None, "max", "mean")


def combine(
    old: Tensor,
    new: Tensor,
    *,
    rule: str,
    segments: int,
    alpha: float = 0.5,
) -> Tensor:
    """Consolidated importance after one more segment.

    Parameters
    ----------
    old
        Consolidated importance of the ``segments`` segments before (zeros when ``segments == 0``).
    new
        Importance of the segment that just ended (already normalised if asked).
    rule
        ``"sum"``: ``old + new`` (the paper: importance accumulates over tasks);
        ``"mean"``: ``(segments * old + new) / (segments + 1)`` (the task-free code);
        ``"ema"``: ``alpha * old + (1 - alpha) * new`` (Avalanche), ``new`` for the first segment;
        ``"max"``: ``maximum(old, new)``.
    segments
        How many segments ``old`` already holds.
    alpha
        Weight of the old importance for ``rule="ema"``, in [0, 1].

    Examples
    --------
    >>> import torch
    >>> old, new = torch.tensor([1.0, 4.0]), torch.tensor([3.0, 2.0])
    >>> [combine(old, new, rule=r, segments=1).tolist() for r in RULES]
    [[4.0, 6.0], [2.0, 3.0], [2.0, 3.0], [3.0, 4.0]]
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 0:
        raise ValueError(f"segments must be an int >= 0, got {segments!r}")
    if not isinstance(old, Tensor) or not isinstance(new, Tensor):
        raise TypeError(f"old and new must be tensors, got {type(old)!r} and {type(new)!r}")
    if old.shape != new.shape:
        raise ValueError(f"old and new must have the same shape, got {tuple(old.shape)} and "
                         f"{tuple(new.shape)}")
    if not is_real(alpha) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if segments == 0:
        return new.clone()
    if rule == "sum":
        return old + new
    if rule == "mean":
        return (old * segments + new) / (segments + 1)
    if rule == "ema":
        return old * alpha + new * (1.0 - alpha)
    return torch.maximum(old, new)


def normalize(omega: dict[str, Tensor], how: str | None) -> dict[str, Tensor]:
    """Rescale a whole importance dict: ``"max"`` to a global max of 1, ``"mean"`` to a mean of 1.

    All-zero importance is returned unchanged (there is nothing to rescale).
    """
    if how not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {how!r}")
    if how is None or not omega:
        return omega
    total, numel, peak = global_stats(list(omega.values()))  # over all shards of a DTensor
    scale = max(peak, 0.0) if how == "max" else total / max(1, numel)
    if scale <= 0.0 or not math.isfinite(scale):
        return omega
    return {k: t / scale for k, t in omega.items()}


class Sum:
    """``Omega <- Omega + Omega_segment`` (the paper: importance accumulates over tasks)."""

    name = "sum"

    def __call__(self, old: Tensor, new: Tensor, segments: int) -> Tensor:
        return combine(old, new, rule="sum", segments=segments)


class Mean:
    """``Omega <- (segments * Omega + Omega_segment) / (segments + 1)`` (the task-free code)."""

    name = "mean"

    def __call__(self, old: Tensor, new: Tensor, segments: int) -> Tensor:
        return combine(old, new, rule="mean", segments=segments)


class Max:
    """``Omega <- maximum(Omega, Omega_segment)``."""

    name = "max"

    def __call__(self, old: Tensor, new: Tensor, segments: int) -> Tensor:
        return combine(old, new, rule="max", segments=segments)


class EMA:
    """``Omega <- alpha * Omega + (1 - alpha) * Omega_segment`` (Avalanche); ``alpha`` in [0, 1]."""

    name = "ema"

    def __init__(self, alpha: float = 0.5) -> None:
        if not is_real(alpha) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)

    def __call__(self, old: Tensor, new: Tensor, segments: int) -> Tensor:
        return combine(old, new, rule="ema", segments=segments, alpha=self.alpha)


ConsolidationRule = Sum | Mean | Max | EMA


def rule_from(spec: str | ConsolidationRule) -> ConsolidationRule:
    """A rule object from its name (``"ema"`` takes ``alpha=0.5``) or the object itself."""
    if isinstance(spec, Sum | Mean | Max | EMA):
        return spec
    by_name: dict[str, type[ConsolidationRule]] = {"sum": Sum, "mean": Mean, "max": Max, "ema": EMA}
    if not isinstance(spec, str) or spec not in by_name:
        raise ValueError(f"rule must be one of {RULES} or a rule object (Sum(), Mean(), Max(), "
                         f"EMA(alpha)), got {spec!r}")
    return by_name[spec]()


class CurrentAnchor:
    """Anchor ``theta*`` at the parameters of the step that consolidates."""

    def step(self, n: int, names: Sequence[str], params: Sequence[Tensor]) -> None:
        """Nothing to keep (``n``: the samples of this step)."""

    def source(self, onset: int | None = None) -> dict[str, Tensor] | None:
        return None

    def track(self, runs: tuple[Sequence[int | None], int] | None, names: Sequence[str],
              params: Sequence[Tensor], *, detected: bool = False) -> None:
        """Nothing to keep."""

    def state_dict(self) -> dict[str, object]:
        return {"version": 1, "kind": "current"}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        _check_kind(state, "current")


class StableAnchor:
    """Anchor a detector's consolidation where its change began, or at a slow copy of the parameters.

    With ``onset=True`` (the default) and a detector that reports its CUSUM runs (the default
    detector: :attr:`Combined.run_starts <online_mas.detectors.Combined.run_starts>`), a detection
    anchors at the parameters saved before the run that crossed the threshold began (Page's
    estimate of the change point; :class:`~online_mas.onset.OnsetSnapshots`): the parameters had
    not yet trained on the new segment. On permuted digits at batch 32 this is 3 points of ACC
    over the slow copy, level with MAS at the true boundaries (``results/anchor_onset.md``). Two
    more parameter-sized buffers and one copy of the parameters per detector evaluation while a
    channel is idle; ``onset=False`` keeps the slow copy only. For any other detector (river's,
    a plateau rule) or before the first evaluation, the slow copy:

    Each time another ``samples`` samples have been observed, the copy moves toward the
    parameters, ``s <- s + weight (theta - s)``: it trails the model by about ``samples / weight``
    samples whatever the batch size, so the samples a detector needs to see a change barely move it
    (``weight = 1``: a plain snapshot, 0 to ``samples - 1`` samples old). A step that completes
    ``k`` intervals at once (a batch larger than ``samples``) moves it with weight
    ``1 - (1 - weight)^k``, as ``k`` moves toward the same parameters would. One parameter-sized
    buffer on top of Omega, theta* and the running importance.

    The interval was counted in ``observe()`` calls before (``every=k``); ``every=k`` at batch ``B``
    is ``samples=k*B`` (the default 320 is the old ``every=10`` at batch 32).

    Examples
    --------
    >>> import torch
    >>> anchor = StableAnchor(samples=4, weight=0.5)
    >>> p = torch.zeros(2)
    >>> anchor.step(4, ["w"], [p]); p += 2.0; anchor.step(2, ["w"], [p]); anchor.source()["w"]
    tensor([0., 0.])
    >>> anchor.step(2, ["w"], [p]); anchor.source()["w"]
    tensor([1., 1.])
    """

    def __init__(self, *args: object, samples: int = 320, weight: float = 0.5, onset: bool = True,
                 every: object = None) -> None:
        if every is not None:
            raise TypeError(f"StableAnchor(every={every!r}) counted observe() calls; the interval is "
                            f"now in samples: use StableAnchor(samples=k*B) for every=k at batch B "
                            f"(every=10 at batch 32 is samples=320)")
        if args:
            raise TypeError(f"StableAnchor takes keyword arguments only (samples=, weight=), got "
                            f"positional {args!r}; the old first argument every=k (observe() calls) "
                            f"is samples=k*B at batch B")
        if not is_int(samples) or samples < 1:
            raise ValueError(f"samples must be an int >= 1, got {samples!r}")
        if not is_real(weight) or not 0.0 < weight <= 1.0:
            raise ValueError(f"weight must be a number in (0, 1], got {weight!r}")
        if not isinstance(onset, bool):
            raise TypeError(f"onset must be True or False, got {onset!r}")
        self.samples = samples
        self.weight = float(weight)
        self.onset = onset
        self.onsets = OnsetSnapshots()  # used only with onset=True and a detector reporting runs
        self.pending = 0  # samples observed since the copy last moved
        self._slow: dict[str, Tensor] = {}

    def step(self, n: int, names: Sequence[str], params: Sequence[Tensor]) -> None:
        """Count the ``n`` samples of this step; move the copy toward ``params`` once another
        ``samples`` samples have been observed."""
        if not is_int(n) or n < 0:
            raise ValueError(f"n must be an int >= 0 (the samples of this step), got {n!r}")
        self.pending += n
        moves, self.pending = divmod(self.pending, self.samples)
        if moves == 0:
            return
        weight = 1.0 - (1.0 - self.weight) ** moves
        with torch.no_grad():
            slow, current = [], []
            for name, p in zip(names, params, strict=True):
                t = self._slow.get(name)
                if t is None or t.shape != p.shape or t.dtype != p.dtype or t.device != p.device \
                        or is_sharded(t) != is_sharded(p):
                    self._slow[name] = p.detach().clone()  # new (or reshaped) parameter
                else:
                    slow.append(t)
                    current.append(p)
            if slow:
                torch._foreach_lerp_(slow, current, weight)
            if len(self._slow) > len(names):  # parameters that left the model
                keep = set(names)
                self._slow = {k: t for k, t in self._slow.items() if k in keep}

    def source(self, onset: int | None = None) -> dict[str, Tensor] | None:
        """The anchor of a detection whose change began at the detector's sample ``onset``: the
        parameters saved before it (``onset=True``), else the slow copy (None before its first
        update)."""
        kept = self.onsets.before(onset) if self.onset else None
        return kept if kept is not None else (self._slow or None)

    def track(self, runs: tuple[Sequence[int | None], int] | None, names: Sequence[str],
              params: Sequence[Tensor], *, detected: bool = False) -> None:
        """After the detector evaluated samples: ``runs`` = (the channels' open runs' first
        samples, None where none is open; the detector's sample count), None for a detector that
        does not report runs; ``detected``: it found a change (and starts afresh)."""
        if not self.onset or runs is None:
            return
        starts, now = runs
        if detected:
            self.onsets.restart(now, names, params)
        else:
            self.onsets.track(starts, now, names, params)

    def state_dict(self) -> dict[str, object]:
        return {"version": 3, "kind": "stable", "samples": self.samples, "weight": self.weight,
                "pending": self.pending, "slow": {n: t.clone() for n, t in self._slow.items()},
                "onset": self.onset, "onsets": self.onsets.state_dict()}

    def load_state_dict(self, state: Mapping[str, object],
                        params: Mapping[str, Tensor] | None = None) -> None:
        """Restore; ``params`` (name -> parameter) places the copy on their devices and dtypes.

        The interval and weight are this object's (as constructed); the state brings the copy and
        the samples since its last move. A version-1 state (interval in calls) has no sample count:
        :meth:`OnlineMAS.load_state_dict` migrates it where that is exact."""
        if state.get("kind") == "stable" and state.get("version") == 1:
            raise ValueError("this StableAnchor state is of version 1 (interval in observe() calls, "
                             f"every={state.get('every')!r}) and has no count of samples: load it "
                             "through OnlineMAS.load_state_dict, which migrates it when the copy "
                             "moved at the saved step")
        if state.get("kind") == "stable" and state.get("version") == 2:
            state = {**state, "version": 3, "onsets": {}}  # before the onset snapshots: none kept
        _check_kind(state, "stable", version=3)
        slow = state.get("slow", {})
        if not isinstance(slow, dict):
            raise TypeError("StableAnchor state['slow'] must be a dict of tensors")
        pending = state.get("pending", 0)
        if not isinstance(pending, int) or isinstance(pending, bool) or pending < 0:
            raise ValueError(f"StableAnchor state['pending'] must be an int >= 0, got {pending!r}")
        self.pending = pending % self.samples
        onsets = state.get("onsets", {})
        if not isinstance(onsets, dict):
            raise TypeError("StableAnchor state['onsets'] must be a dict")
        self.onsets = OnsetSnapshots()
        self.onsets.load_state_dict(onsets, params)
        self._slow = {}
        for n, t in slow.items():
            p = params.get(n) if params is not None else t
            if p is not None:
                self._slow[n] = place(t, p)  # p's device, dtype and sharding


AnchorPolicy = CurrentAnchor | StableAnchor


class Consolidator:
    """The consolidated importance ``omega``, the anchor ``theta*`` and how a segment joins them.

    Parameters
    ----------
    rule
        A rule name (:data:`RULES`) or object (:class:`Sum`, :class:`Mean`, :class:`Max`,
        :class:`EMA`).
    normalize
        Rescale a segment's importance before folding it: None, ``"max"`` (global max 1) or
        ``"mean"`` (mean 1).
    """

    def __init__(self, rule: str | ConsolidationRule = "sum", *, normalize: str | None = None) -> None:
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        self.rule = rule_from(rule)
        self.normalize = normalize
        self.omega: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}
        self.segments = 0
        self._peak: float | None = None  # max of omega, cached between consolidations

    @property
    def peak(self) -> float:
        """The largest importance in ``omega`` (0 before any)."""
        if self._peak is None:
            self._peak = global_stats(list(self.omega.values()))[2]  # over every rank's shard
        return self._peak

    def follow(self, named: Mapping[str, Tensor], *, restart: Collection[str] = ()) -> None:
        """Track the model's parameters: a new, reshaped or replaced (``restart``) one starts at
        zero importance and is anchored at its current value; one that moved device or dtype
        takes its state along."""
        for n, p in named.items():
            o = self.omega.get(n)
            if o is not None and (o.shape != p.shape or n in restart):
                what = f"changed shape from {tuple(o.shape)} to {tuple(p.shape)}" if o.shape != p.shape \
                    else "was replaced by a new parameter"
                warnings.warn(
                    f"parameter {n!r} {what}: its importance restarts at zero and its anchor at the "
                    "current value",
                    RuntimeWarning,
                    stacklevel=4,
                )
                o = None
            if o is None:
                self.omega[n] = float_zeros(p)  # a DTensor parameter's state is sharded like it
                self.anchor[n] = p.detach().clone()
                continue
            if o.device != p.device or is_sharded(o) != is_sharded(p):
                self.omega[n] = place(o, p, dtype=torch.float32)
            a = self.anchor[n]
            if a.device != p.device or a.dtype != p.dtype or is_sharded(a) != is_sharded(p):
                self.anchor[n] = place(a, p)

    def consolidate(
        self,
        running: Mapping[str, Tensor] | None,
        named: Mapping[str, Tensor],
        anchor: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Fold ``running`` (importance of the segment that ends, by name; None: nothing was seen)
        into ``omega`` and move the anchor of ``named`` to ``anchor`` (default: the parameters)."""
        if running is not None:
            new = normalize(dict(running), self.normalize)
            for n in named:
                self.omega[n] = self.rule(self.omega[n], new[n], self.segments)
            self.segments += 1
            self._peak = None
        with torch.no_grad():
            for n, p in named.items():
                src = anchor.get(n) if anchor is not None else None
                self.anchor[n].copy_(src if src is not None and src.shape == p.shape else p)

    def stats(self, names: Sequence[str]) -> dict[str, float]:
        """Segments, mean and max of ``omega`` over ``names``."""
        total, numel, peak = global_stats([self.omega[n] for n in names])  # one reduction if sharded
        return {"segments": float(self.segments), "omega_mean": total / max(1, numel), "omega_max": peak}

    def state_dict(self, names: Collection[str] | None = None) -> dict[str, object]:
        """``names``: only these parameters (the model's trainable ones: a frozen or deleted
        parameter's importance is not saved)."""
        keep = self.omega.keys() if names is None else [n for n in names if n in self.omega]
        return {"version": 1, "rule": self.rule.name, "alpha": getattr(self.rule, "alpha", None),
                "normalize": self.normalize, "segments": self.segments,
                "omega": {n: self.omega[n].clone() for n in keep},
                "anchor": {n: self.anchor[n].clone() for n in keep}}

    def load_state_dict(self, state: Mapping[str, object], params: Mapping[str, Tensor]) -> None:
        """Restore for the parameters ``params``: names and shapes must match."""
        if state.get("version") != 1:
            raise ValueError(f"unsupported Consolidator state version {state.get('version')!r}")
        omega, anchor = state.get("omega"), state.get("anchor")
        if not isinstance(omega, dict) or not isinstance(anchor, dict):
            raise TypeError("state['omega'] and state['anchor'] must be dicts of tensors")
        _check_names(omega, params)
        self.segments = int(state["segments"])  # type: ignore[call-overload]
        self._peak = None
        for n, p in params.items():  # on p's device, and sharded like p if it is a DTensor
            self.omega[n] = place(omega[n], p, dtype=torch.float32)
            self.anchor[n] = place(anchor[n], p)


def _check_names(saved: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> None:
    missing = sorted(set(params) - set(saved))
    unexpected = sorted(set(saved) - set(params))
    shapes = sorted(
        f"{n}: saved {tuple(saved[n].shape)}, model {tuple(params[n].shape)}"
        for n in set(params) & set(saved)
        if saved[n].shape != params[n].shape
    )
    if missing or unexpected or shapes:
        raise ValueError(
            "OnlineMAS state does not match the model: "
            f"missing {missing}, unexpected {unexpected}, shape mismatches {shapes}"
        )


def _check_kind(state: Mapping[str, object], kind: str, *, version: int = 1) -> None:
    if state.get("version") != version or state.get("kind") != kind:
        raise ValueError(f"not a {kind!r} anchor state (version {version}): got kind {state.get('kind')!r}, "
                         f"version {state.get('version')!r}")

