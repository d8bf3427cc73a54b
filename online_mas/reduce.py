"""Importance and signals across data-parallel ranks: nothing in one process, all-reduces in many.

MAS importance is a per-sample mean, so the importance of a global batch is the sum over ranks of
the per-rank sums over the sum of the per-rank counts. One flat all-reduce carries the sums, the
sample count and the detector's weighted signal, so every rank feeds its detector the same float
and consolidates at the same step (:mod:`online_mas.distributed` holds the building blocks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from online_mas.checks import is_int
from online_mas.distributed import CommStats, all_reduce_flat, world
from online_mas.estimators import BatchImportance

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["Reducer"]


class Reducer:
    """Reduces batch importance and detector signals over the ranks of a process group.

    Parameters
    ----------
    process_group
        The ``torch.distributed`` group; None: the default group whenever ``torch.distributed``
        is initialised, else a single process (then every call passes its input through).
    sync_every
        All-reduce the importance on every k-th update (and before a consolidation) and only three
        scalars in between; the k batches of a window then enter the running average as one.

    Examples
    --------
    >>> r = Reducer()
    >>> r.size, r.reduce(None, update=False, feed=True, value=0.5, weight=8.0, named={})
    (1, (None, 0.5))
    """

    def __init__(self, process_group: ProcessGroup | None = None, *, sync_every: int = 1) -> None:
        if not is_int(sync_every) or sync_every < 1:
            raise ValueError(f"sync_every must be an int >= 1, got {sync_every!r}")
        if process_group is not None:
            world(process_group)  # a ProcessGroup this process belongs to
        self.process_group = process_group
        self.sync_every = sync_every
        self.stats = CommStats()  # all-reduces made (none in a single process)
        self._pending: dict[str, Tensor] = {}  # importance sums not yet reduced
        self._pending_n = 0
        self.pending_updates = 0  # importance updates since the last reduction
        self.last_weight = 0.0  # samples behind the last value reduced across ranks

    @property
    def size(self) -> int:
        """The number of ranks (1 without torch.distributed)."""
        return world(self.process_group)[1]

    def reduce(
        self,
        batch: BatchImportance | None,
        *,
        update: bool,
        feed: bool,
        value: float | None,
        weight: float,
        named: Mapping[str, Tensor],
    ) -> tuple[BatchImportance | tuple[dict[str, Tensor], int] | None, float | None]:
        """One step's importance (``update``: this step estimated; ``batch`` None if it was skipped)
        and signal ``value`` of ``weight`` samples (``feed``: a detector wants it).

        Returns what to add to the running importance (the batch itself in one process, summed
        totals across ranks, or None) and the detector's value (across ranks
        ``sum_r weight_r value_r / sum_r weight_r``, the same float on every rank).
        """
        if self.size == 1:
            return batch, value
        weighted = value * weight if value is not None else 0.0
        weight = weight if value is not None else 0.0
        if update:
            self.pending_updates += 1
            sums, n = (batch.materialize(), batch.n) if batch is not None else ({}, 0)
            if self.sync_every > 1:  # sync_every=1 reduces this update's sums directly
                self.defer(sums, n)
                sums, n = self._pending, self._pending_n
            if self.pending_updates >= self.sync_every:
                return self._reduce(sums, n, weighted, weight, named)
        if feed:
            return None, self._reduce(None, 0, weighted, weight, named)[1]
        return None, None

    def defer(self, sums: Mapping[str, Tensor], n: int) -> None:
        """Keep this rank's sums for the next reduction (counts as an update)."""
        for name, s in sums.items():
            p = self._pending.get(name)
            if p is None or p.shape != s.shape:
                self._pending[name] = s.detach().float()
            else:
                p.add_(s)
        self._pending_n += n

    def flush(self, named: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], int] | None:
        """All-reduce what is pending (a collective: every rank calls it at the same step)."""
        if self.size == 1:
            return None
        return self._reduce(self._pending, self._pending_n, 0.0, 0.0, named)[0]

    def _reduce(
        self,
        sums: dict[str, Tensor] | None,
        n: int,
        weighted: float,
        weight: float,
        named: Mapping[str, Tensor],
    ) -> tuple[tuple[dict[str, Tensor], int] | None, float | None]:
        """One all-reduce of ``[importance sums..., n, signal * weight, weight]``. Zeros stand in for
        names this rank has none of. The buffer is float32: counts are exact up to 2**24 samples
        per reduction."""
        names: Sequence[str] = list(named)
        local = [] if sums is None else [
            sums[name] if name in sums else torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            for name, p in named.items()
        ]
        device = next(iter(named.values())).device if named else torch.device("cpu")
        scalars = torch.tensor([float(n), weighted, weight], dtype=torch.float32, device=device)
        group = world(self.process_group)[2]
        *total, scalars = all_reduce_flat([*local, scalars], group, stats=self.stats)
        count, weighted, weight = scalars.tolist()
        self.last_weight = weight
        value = weighted / weight if weight > 0 else None
        if sums is None:
            return None, value
        self._pending, self._pending_n, self.pending_updates = {}, 0, 0
        if round(count) < 1:
            return None, value
        return (dict(zip(names, total, strict=True)), round(count)), value
