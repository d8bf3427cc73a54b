"""Schedules: which segment each sample of a stream comes from, and how segments hand over.

A :class:`Schedule` is a sequence of *occurrences* (a segment id and a length in samples) and one
transition rule:

- ``"abrupt"``: occurrence ``i`` fills ``[start_i, start_i + length_i)`` alone;
- ``"gradual"``: around each boundary ``c`` a window of ``width`` samples,
  ``[c - width // 2, c - width // 2 + width)``, mixes the outgoing and incoming segments; the
  incoming one is drawn with probability ``p(t) = (t - (c - width // 2) + 0.5) / width``, which
  rises linearly from about 0 to about 1. The reported change point is ``c``, the window's middle;
- ``"blurry"``: within each occurrence a share ``share`` of the samples comes from the other
  segments, evenly (``share / (K - 1)`` each), the rest from the occurrence's own segment.

Recurring streams (A B A C B ...) are orders in which segments come back: :func:`recurring_order`.
Lengths are fixed or drawn at random: :func:`segment_lengths`.

Each sample's segment is drawn independently from the mixing weights with a generator keyed by
``(seed, step)``, so any batch's draws can be rebuilt alone. Within its own span (occurrence plus
transition windows) a segment reads its samples in order from seeded per-pass permutations;
blurry draws from outside the span pick samples uniformly at random (with replacement).
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from streams._seeding import TAG_DRAW, TAG_SCHEDULE, numpy_rng, torch_generator

__all__ = ["TRANSITIONS", "Schedule", "make_schedule", "recurring_order", "segment_lengths"]

#: Transition rules accepted by :class:`Schedule`.
TRANSITIONS = ("abrupt", "gradual", "blurry")


@dataclass(frozen=True)
class Schedule:
    """Occurrences of segments along a stream and the transition rule between them.

    Parameters
    ----------
    order : sequence of int
        Segment id of each occurrence, e.g. ``(0, 1, 0, 2)``; no id twice in a row.
    lengths : sequence of int
        Samples in each occurrence (same length as ``order``), each >= 1.
    kind : str
        One of :data:`TRANSITIONS`.
    width : int
        ``"gradual"`` only: samples in each transition window, ``1 <= width <= min(lengths)``.
    share : float
        ``"blurry"`` only: share of samples drawn from the other segments, in ``[0, 1)``.
    n_segments : int or None
        Number of distinct segments ``K`` (default ``max(order) + 1``).

    Examples
    --------
    >>> s = Schedule((0, 1), (100, 100), kind="gradual", width=10)
    >>> s.n_samples, s.starts, [round(float(w), 2) for w in s.weights(94, 106)[:, 1]]
    (200, (0, 100), [0.0, 0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95, 1.0])
    """

    order: tuple[int, ...]
    lengths: tuple[int, ...]
    kind: str = "abrupt"
    width: int = 0
    share: float = 0.0
    n_segments: int | None = None
    starts: tuple[int, ...] = field(init=False)
    _span_start: tuple[int, ...] = field(init=False, repr=False)
    _prior: tuple[int, ...] = field(init=False, repr=False)
    _padded: tuple[np.ndarray, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        order = tuple(_int(o, "order entries", 0) for o in self.order)
        lengths = tuple(_int(n, "lengths", 1) for n in self.lengths)
        if not order or len(order) != len(lengths):
            raise ValueError(f"order and lengths must be non-empty and equally long, got "
                             f"{len(order)} and {len(lengths)}")
        for i in range(1, len(order)):
            if order[i] == order[i - 1]:
                raise ValueError(f"order repeats segment {order[i]} at positions {i - 1} and {i}; "
                                 f"merge them into one occurrence")
        k = max(order) + 1 if self.n_segments is None else self.n_segments
        if not isinstance(k, int) or k <= max(order):
            raise ValueError(f"n_segments must be an int > every id in order {list(order)}, "
                             f"got {k!r}")
        if self.kind not in TRANSITIONS:
            raise ValueError(f"unknown transition {self.kind!r}; allowed: {', '.join(TRANSITIONS)}")
        width = int(self.width)
        if self.kind == "gradual" and not 1 <= width <= min(lengths):
            raise ValueError(f"gradual width must be an int in [1, shortest length "
                             f"{min(lengths)}], got {self.width!r}")
        share = float(self.share)
        if self.kind == "blurry" and not (0.0 <= share < 1.0 and (k >= 2 or share == 0.0)):
            raise ValueError(f"blurry share must lie in [0, 1) (and needs >= 2 segments), "
                             f"got {self.share!r} with {k} segment(s)")
        starts = tuple(int(s) for s in torch.tensor((0, *lengths)).cumsum(0)[:-1].tolist())
        h0, h1 = (width // 2, width - width // 2) if self.kind == "gradual" else (0, 0)
        span_start, prior, used = [], [], dict.fromkeys(range(k), 0)
        for i, (seg, start, n) in enumerate(zip(order, starts, lengths, strict=True)):
            before = h0 if i > 0 else 0
            after = h1 if i < len(order) - 1 else 0
            span_start.append(start - before)
            prior.append(used[seg])
            used[seg] += before + n + after
        for name, value in (("order", order), ("lengths", lengths), ("width", width),
                            ("share", share), ("n_segments", k), ("starts", starts),
                            ("_span_start", tuple(span_start)), ("_prior", tuple(prior))):
            object.__setattr__(self, name, value)
        # occurrence tables padded with a dummy entry at each end, for vectorised look-ups
        padded = (np.array(starts, dtype=np.int64), np.array((-1, *order, -1), dtype=np.int64),
                  np.array((0, *span_start, 0), dtype=np.int64),
                  np.array((0, *prior, 0), dtype=np.int64))
        object.__setattr__(self, "_padded", padded)

    @property
    def n_samples(self) -> int:
        """Total number of samples."""
        return self.starts[-1] + self.lengths[-1]

    @property
    def change_samples(self) -> list[int]:
        """Sample positions where a new occurrence starts (middle of the window if gradual)."""
        return list(self.starts[1:])

    def occurrence(self, t: int) -> int:
        """Index of the occurrence that sample ``t`` belongs to."""
        if not 0 <= t < self.n_samples:
            raise ValueError(f"sample position must lie in [0, {self.n_samples}), got {t!r}")
        return bisect.bisect_right(self.starts, t) - 1

    def weights(self, start: int, stop: int) -> Tensor:
        """Mixing weights of samples ``start..stop-1``: float64 ``(stop - start, K)``, rows
        summing to 1."""
        k = int(self.n_segments or 0)
        out = torch.zeros(stop - start, k, dtype=torch.float64)
        if stop <= start:
            return out
        h0 = self.width // 2
        for i in range(self.occurrence(start), self.occurrence(stop - 1) + 1):
            a = max(start, self.starts[i])
            b = min(stop, self.starts[i] + self.lengths[i])
            rows = slice(a - start, b - start)
            seg = self.order[i]
            if self.kind == "blurry" and k > 1:
                out[rows] = self.share / (k - 1)
                out[rows, seg] = 1.0 - self.share
                continue
            out[rows, seg] = 1.0
            if self.kind != "gradual":
                continue
            t = torch.arange(a, b, dtype=torch.float64)
            for j, first in ((i, i - 1), (i + 1, i)):  # windows at the start and end of i
                if first < 0 or j >= len(self.order):
                    continue
                lo = self.starts[j] - h0
                inside = (t >= lo) & (t < lo + self.width)
                r = torch.arange(a - start, b - start)[inside]
                p = (t[inside] - lo + 0.5) / self.width
                out[r, seg] = 0.0
                out[r, self.order[first]] = 1.0 - p
                out[r, self.order[j]] = p
        return out

    def is_pure(self, start: int, stop: int) -> bool:
        """Whether samples ``start..stop-1`` all come from one segment with certainty."""
        i = self.occurrence(start)
        if self.occurrence(stop - 1) != i:
            return False
        if self.kind == "blurry":
            return self.share == 0.0
        if self.kind == "abrupt":
            return True
        h0, h1 = self.width // 2, self.width - self.width // 2
        lo = self.starts[i] + (h1 if i > 0 else 0)
        hi = self.starts[i] + self.lengths[i] - (h0 if i < len(self.order) - 1 else 0)
        return lo <= start and stop <= hi

    def draw(self, step: int, batch_size: int, seed: int) -> Tensor:
        """Segment id of each sample of batch ``step``, drawn with a generator keyed by the step.

        Examples
        --------
        >>> s = Schedule((0, 1, 2), (4, 4, 4), kind="blurry", share=0.5)
        >>> s.draw(1, 4, seed=0).tolist()
        [2, 0, 2, 2]
        """
        start, stop = step * batch_size, (step + 1) * batch_size
        if self.is_pure(start, stop):
            return torch.full((batch_size,), self.order[self.occurrence(start)], dtype=torch.int64)
        cum = self.weights(start, stop).cumsum(1)
        u = torch.rand(batch_size, 1, generator=torch_generator(seed, TAG_DRAW, step),
                       dtype=torch.float64) * cum[:, -1:]
        return (u >= cum).sum(1).clamp_(max=cum.shape[1] - 1)

    def own_position(self, t: int) -> tuple[int, int]:
        """``(segment, u)``: the segment of sample ``t``'s occurrence and the position ``u`` that
        sample ``t`` has in that segment's own sequence (see :meth:`reading`)."""
        i = self.occurrence(t)
        return self.order[i], t - self._span_start[i] + self._prior[i]

    def reading(self, segs: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
        """Where samples ``start, start+1, ...`` drawn from segments ``segs`` read their data.

        Returns numpy arrays ``(u, side)``: ``u`` is the position in the segment's own sequence
        (consecutive within its span: the occurrence plus its transition windows, continued
        across its later occurrences); where ``side`` is true (a blurry draw outside the span)
        ``u`` is ``t`` itself and the stream picks a sample at random instead.

        Examples
        --------
        >>> s = Schedule((0, 1, 0), (4, 4, 4), kind="gradual", width=2)
        >>> u, side = s.reading(np.array([0, 0, 1, 1]), 3)
        >>> u.tolist(), side.tolist()
        ([3, 4, 2, 3], [False, False, False, False])
        """
        starts, order, span, prior = self._padded
        t = np.arange(start, start + len(segs), dtype=np.int64)
        occ = np.searchsorted(starts, t, side="right")  # occurrence index + 1
        u = t.copy()
        side = np.ones(len(segs), dtype=bool)
        # own occurrence first, then (gradual windows only) the neighbouring occurrences
        for shift in (0, -1, 1) if self.kind == "gradual" else (0,):
            j = occ + shift
            hit = side & (order[j] == segs)
            u[hit] = (t - span[j] + prior[j])[hit]
            side &= ~hit
        return u, side


def segment_lengths(sizes: Sequence[int], order: Sequence[int], *, passes: float = 1.0,
                    batch_size: int = 1, random: bool = False, low: float = 0.5,
                    high: float = 1.5, seed: int = 0) -> list[int]:
    """Samples per occurrence: ``passes`` times the segment's training size, whole batches.

    Each length is rounded to a multiple of ``batch_size`` (at least one batch) so that changes
    fall on batch boundaries. With ``random=True`` each is first scaled by a seeded uniform factor
    in ``[low, high]``.

    Examples
    --------
    >>> segment_lengths([100, 60], [0, 1, 0], passes=2, batch_size=32)
    [192, 128, 192]
    >>> segment_lengths([100, 60], [0, 1, 0], passes=2, batch_size=32, random=True, seed=3)
    [224, 160, 224]
    """
    b = _int(batch_size, "batch_size", 1)
    if not (isinstance(passes, int | float) and math.isfinite(passes) and passes > 0):
        raise ValueError(f"passes must be a finite number > 0, got {passes!r}")
    if random and not 0 < low <= high:
        raise ValueError(f"random lengths need 0 < low <= high, got low={low!r}, high={high!r}")
    factors = numpy_rng(seed, TAG_SCHEDULE, 1).uniform(low, high, len(order)) if random else None
    out = []
    for i, seg in enumerate(order):
        n = passes * sizes[seg] * (1.0 if factors is None else float(factors[i]))
        out.append(max(1, round(n / b)) * b)
    return out


def recurring_order(n_segments: int, *, seed: int = 0) -> list[int]:
    """A recurring order A B A C B D ...: each new segment is followed by a seeded earlier one.

    The order is ``0, 1, r1, 2, r2, ..., K-1, r(K-1)`` (``2K - 1`` occurrences for ``K >= 2``),
    where ``rk`` is drawn uniformly from ``0..k-1``, so no segment follows itself.

    Examples
    --------
    >>> recurring_order(4, seed=0)
    [0, 1, 0, 2, 1, 3, 1]
    """
    n = _int(n_segments, "n_segments", 1)
    rng = numpy_rng(seed, TAG_SCHEDULE, 2)
    order = [0]
    for k in range(1, n):
        order += [k, int(rng.integers(0, k))]
    return order


def make_schedule(sizes: Sequence[int], *, batch_size: int, passes: float = 1.0,
                  transition: str = "abrupt", order: str | Sequence[int] | None = None,
                  random_lengths: bool = False, window: int | None = None, share: float = 0.1,
                  seed: int = 0) -> Schedule:
    """A schedule for segments with ``sizes`` training samples, as the named streams use.

    Parameters
    ----------
    sizes : sequence of int
        Training samples of each segment (``[s.n_train for s in segments]``).
    batch_size : int
        Lengths are whole batches of this size.
    passes : float
        Passes over a segment's training data per occurrence.
    transition : str
        ``"abrupt"``, ``"gradual"``, ``"blurry"``, or ``"recurring"`` (abrupt, with the
        order of :func:`recurring_order` unless ``order`` is given).
    order : None, "recurring", "return" or sequence of int
        ``None``: each segment once, ``0..K-1``; ``"recurring"``: :func:`recurring_order` with
        seed 0 (the same for every stream seed, so runs can be averaged occurrence by
        occurrence); ``"return"``: ``0..K-1`` then ``0`` again; or explicit segment ids.
    random_lengths : bool
        Scale each occurrence's length by a seeded uniform factor in ``[0.5, 1.5]``.
    window : int or None
        ``"gradual"``: samples per transition window (default: half the shortest occurrence).
    share : float
        ``"blurry"``: share of samples from the other segments.
    seed : int
        Seed of the random lengths.

    Examples
    --------
    >>> s = make_schedule([100, 100, 100], batch_size=10, transition="recurring")
    >>> s.order, s.lengths, s.kind
    ((0, 1, 0, 2, 1), (100, 100, 100, 100, 100), 'abrupt')
    >>> make_schedule([100, 80], batch_size=10, transition="gradual").width
    40
    """
    allowed = (*TRANSITIONS, "recurring")
    if transition not in allowed:
        raise ValueError(f"transition must be one of {allowed}, got {transition!r}")
    ids = _order(order if order is not None or transition != "recurring" else "recurring",
                 len(sizes))
    lengths = segment_lengths(sizes, ids, passes=passes, batch_size=batch_size,
                              random=random_lengths, seed=seed)
    kind = "abrupt" if transition == "recurring" else transition
    width = 0
    if kind == "gradual":
        width = min(lengths) // 2 if window is None else window
    return Schedule(tuple(ids), tuple(lengths), kind=kind, width=width,
                    share=share if kind == "blurry" else 0.0, n_segments=len(sizes))


def _order(order: str | Sequence[int] | None, k: int) -> list[int]:
    if order is None:
        return list(range(k))
    if order == "recurring":
        return recurring_order(k, seed=0)
    if order == "return":
        return [*range(k), 0] if k > 1 else [0]
    if isinstance(order, str):
        raise ValueError(f"order must be None, a list of segment ids, 'recurring' or 'return', "
                         f"got {order!r}")
    ids = [int(i) if isinstance(i, numbers.Integral) and not isinstance(i, bool) else -1
           for i in order]
    if not ids or any(not 0 <= i < k for i in ids):
        raise ValueError(f"order must list segment ids in [0, {k}), got {list(order)}")
    return ids


def _int(value: object, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise ValueError(f"{what} must be ints >= {low}, got {value!r}")
    return int(value)
