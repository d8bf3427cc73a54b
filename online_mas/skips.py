"""Batches skipped as non-finite: counted, warned about once, and an error once most recent
``observe`` calls were skipped (a diverged model is said loudly, not hidden behind one warning)."""

from __future__ import annotations

import warnings
from collections import deque

__all__ = ["Skips"]


class Skips:
    """The skipped-batch record of one :class:`~online_mas.OnlineMAS`.

    Parameters
    ----------
    window, limit
        ``observed`` raises once ``limit`` of the last ``window`` observe calls were skipped.

    Examples
    --------
    >>> import warnings
    >>> warnings.simplefilter("ignore", RuntimeWarning)
    >>> s = Skips(window=4, limit=3)
    >>> for ok in (True, False, False):
    ...     s.observed(ok, "nan")
    >>> s.count
    2
    >>> s.observed(False, "nan")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    RuntimeError: OnlineMAS skipped 3 or more of the last 4 batches as non-finite (3 in all; ...
    """

    def __init__(self, *, window: int = 100, limit: int = 90) -> None:
        self.window = window
        self.limit = limit
        self.count = 0  # batches skipped in all
        self._recent: deque[bool] = deque(maxlen=window)  # skipped, of the last observe calls
        self._warned = False

    def skip(self, why: str) -> None:
        """Count a skipped batch (warn on the first)."""
        self.count += 1
        if not self._warned:
            warnings.warn(f"OnlineMAS skipped a batch: {why}; importance and anchors are unchanged "
                          "(further skips are only counted in n_skipped)", RuntimeWarning, stacklevel=4)
            self._warned = True

    def observed(self, ok: bool, why: str = "", *, check: bool = True) -> None:
        """An ``observe`` call that was (``ok``) or was not skipped; ``check``: raise on divergence
        (off across ranks, which skip independently and must not stop alone)."""
        if not ok:
            self.skip(why)
        self._recent.append(not ok)
        if check and len(self._recent) == self.window and sum(self._recent) >= self.limit:
            self._recent.clear()
            raise RuntimeError(
                f"OnlineMAS skipped {self.limit} or more of the last {self.window} batches as non-finite "
                f"({self.count} in all; last: {why}): the model has most likely diverged. Lower the "
                "learning rate or lam, or use proximal_")
