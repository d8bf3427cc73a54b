"""Which samples of the stream OnlineMAS estimates the importance of: a share of them, counted in
samples whatever the batch size (``MASConfig.share``, ``MASConfig.min_estimate``)."""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction

from online_mas.checks import is_int, is_real

__all__ = ["Schedule"]

_DENOMINATOR = 1 << 20  # share is read as the nearest fraction with at most this denominator


class Schedule:
    """A deficit counter in samples: each batch of ``n`` samples adds ``n * share`` samples to what
    is owed; a batch is estimated once at least ``min(min_estimate, n)`` samples are owed, on
    ``k = min(n, floor(owed))`` of its samples, and ``k`` is paid.

    So a batch of at most ``min_estimate`` samples is estimated whole, every ``1 / share`` batches
    when the batch size stays the same (``share=1/64`` at batch 32 is "every 64th call"); a larger
    batch is estimated on ``min_estimate`` (or more) of its samples once that many are owed (at
    batch 1024 and ``share=1/64``, 32 samples every other call). Over any stream the estimated
    samples are ``share`` of the observed ones, less at most ``max(min_estimate, batch)`` still
    owed, at every batch size. ``share`` is kept as an exact fraction (the nearest with a
    denominator of at most 2**20), so the schedule has no rounding drift.

    Examples
    --------
    >>> s = Schedule(share=0.25, min_estimate=32)
    >>> [s.take(8) for _ in range(8)]  # batch 8: the whole batch every 4th call
    [0, 0, 0, 8, 0, 0, 0, 8]
    >>> [s.take(256) for _ in range(3)]  # batch 256: 64 of its samples each call
    [64, 64, 64]
    """

    def __init__(self, share: float, min_estimate: int) -> None:
        if not is_real(share) or not 0 < share <= 1:
            raise ValueError(f"share must be a number in (0, 1] (the fraction of samples estimated), "
                             f"got {share!r}")
        if not is_int(min_estimate) or min_estimate < 1:
            raise ValueError(f"min_estimate must be an int >= 1 (samples), got {min_estimate!r}")
        if share < 1 / _DENOMINATOR:
            raise ValueError(f"share must be at least 2**-20 (one sample in 1,048,576), got {share!r}")
        fraction = Fraction(share).limit_denominator(_DENOMINATOR)
        self.share = float(share)
        self.min_estimate = min_estimate
        self._p, self._q = fraction.numerator, fraction.denominator
        self._owed = 0  # samples owed, in units of 1/q sample (negative: estimated ahead)
        self._next = Fraction(0)  # also owed: this fraction of the next batch's samples (migration)

    @property
    def owed(self) -> float:
        """Samples owed now (negative after a shared forward estimated a whole batch ahead; a
        migrated state's share of the next batch comes on top)."""
        return self._owed / self._q

    def _with_next(self, n: int) -> int:
        """What is owed in units, with the migrated fraction of a batch of ``n``."""
        return self._owed + (round(self._next * n * self._q) if self._next else 0)

    def due(self, n: int) -> int:
        """How many samples of a batch of ``n`` to estimate now (0: none); changes nothing."""
        if n < 1:
            return 0
        owed = self._with_next(n) + n * self._p
        if owed < min(self.min_estimate, n) * self._q:
            return 0
        return min(n, owed // self._q)

    def count(self, n: int, estimated: int) -> None:
        """A batch of ``n`` samples was observed and ``estimated`` of them were (or are counted as)
        estimated."""
        self._owed = self._with_next(n) + n * self._p - estimated * self._q
        self._next = Fraction(0)

    def take(self, n: int) -> int:
        """:meth:`due`, then :meth:`count` of that many."""
        k = self.due(n)
        self.count(n, k)
        return k

    def state_dict(self) -> dict[str, object]:
        """The samples owed, as the exact fraction ``owed / denominator``; ``next_batch``
        ``[a, b]``: also ``a / b`` of the next batch's samples (a migrated calls-based state)."""
        return {"version": 1, "owed": self._owed, "denominator": self._q,
                "next_batch": [self._next.numerator, self._next.denominator]}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore what is owed (rounded to this schedule's fraction when its share differs)."""
        owed, den, nxt = state.get("owed"), state.get("denominator"), state.get("next_batch", [0, 1])
        if state.get("version") != 1 or not isinstance(owed, int) or not isinstance(den, int) \
                or isinstance(owed, bool) or isinstance(den, bool) or den < 1 \
                or not isinstance(nxt, list | tuple) or len(nxt) != 2 or not all(is_int(v) for v in nxt) \
                or nxt[1] < 1 or nxt[0] < 0:
            raise ValueError(f"a Schedule state is {{'version': 1, 'owed': int, 'denominator': int >= 1, "
                             f"'next_batch': [int >= 0, int >= 1]}}, got {dict(state)!r}")
        self._owed = round(Fraction(owed, den) * self._q)
        self._next = Fraction(int(nxt[0]), int(nxt[1]))
