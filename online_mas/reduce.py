"""Importance and signals across data-parallel ranks: nothing in one process, all-reduces in many.

MAS importance is a per-sample mean, so the importance of a global batch is the sum over ranks of
the per-rank sums over the sum of the per-rank counts. One flat all-reduce carries the sums, the
sample count and the detector's weighted signal, so every rank feeds its detector the same float
and consolidates at the same step (:mod:`online_mas.distributed` holds the building blocks).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from online_mas.checks import is_int
from online_mas.distributed import CommStats, all_gather_rows, all_reduce_flat, world
from online_mas.estimators import BatchImportance
from online_mas.sharded import any_sharded, is_sharded, scatter_sums

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["Reducer"]

_NO_OUTPUT = torch.empty(0)  # a reduction over ranks has no model output of its own


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
    ) -> tuple[BatchImportance | None, float | None]:
        """One step's importance (``update``: this step estimated; ``batch`` None if it was skipped)
        and signal ``value`` of ``weight`` samples (``feed``: a detector wants it).

        Returns what to add to the running importance (the batch itself in one process, the totals
        over ranks, or None) and the detector's value (across ranks
        ``sum_r weight_r value_r / sum_r weight_r``, the same float on every rank).

        Across ranks with ``sync_every=1`` the ``nn.Linear`` factors ``(|G|, |A|)`` of every rank
        are gathered (rows stacked, zero rows for padding) when that sends less than the products
        would, so the running importance still folds them in place; otherwise the products are
        formed and all-reduced.
        """
        if self.size == 1:
            return batch, value
        weighted = value * weight if value is not None else 0.0
        weight = weight if value is not None else 0.0
        if update:
            sharded = any_sharded(list(named.values()))
            if sharded and self.sync_every > 1:
                raise ValueError(f"sync_every={self.sync_every} keeps whole-model sums on every rank "
                                 "between reductions: a sharded (DTensor) model needs sync_every=1")
            self.pending_updates += 1
            if sharded:  # sums kept by accumulate() travel with this update
                sources = _sources(batch) if batch is not None else {}
                for name, kept in self._pending.items():
                    here = sources.get(name)
                    sources[name] = kept if here is None else functools.partial(_total, here, kept)
                n = (batch.n if batch is not None else 0) + self._pending_n
                return self._reduce_sharded(sources, n, weighted, weight, named)
            if self.sync_every == 1:
                return self._reduce_batch(batch, weighted, weight, named)
            self.defer(batch.materialize() if batch is not None else {}, batch.n if batch is not None else 0)
            if self.pending_updates >= self.sync_every:
                return self._reduce(self._pending, self._pending_n, weighted, weight, named)
        if feed:
            return None, self._reduce(None, 0, weighted, weight, named)[1]
        return None, None

    def defer(self, sums: Mapping[str, Tensor], n: int, *, update: bool = False) -> None:
        """Keep this rank's sums for the next reduction (``update``: count it as an importance
        update, as ``OnlineMAS.accumulate`` does)."""
        self.pending_updates += int(update)
        for name, s in sums.items():
            p = self._pending.get(name)
            if p is None or p.shape != s.shape:
                self._pending[name] = s.detach().float()
            else:
                p.add_(s)
        self._pending_n += n

    def all_agree(self, flag: bool) -> bool:
        """Whether ``flag`` is True on every rank (one all-reduce of one number, a collective).

        >>> Reducer().all_agree(True)
        True
        """
        if self.size == 1:
            return flag
        total = all_reduce_flat([torch.tensor([float(flag)])], self.process_group, stats=self.stats)[0]
        return bool(total.item() == self.size)

    def flush(self, named: Mapping[str, Tensor]) -> BatchImportance | None:
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
    ) -> tuple[BatchImportance | None, float | None]:
        """One all-reduce of ``[importance sums..., n, signal * weight, weight]``. Zeros stand in for
        names this rank has none of. The buffer is float32: counts are exact up to 2**24 samples
        per reduction."""
        if sums is not None and any_sharded(list(named.values())):
            return self._reduce_sharded(dict(sums), n, weighted, weight, named)
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
        return BatchImportance(dict(zip(names, total, strict=True)), round(count), _NO_OUTPUT), value

    def _reduce_sharded(
        self,
        sums: Mapping[str, Tensor | Callable[[], Tensor]],
        n: int,
        weighted: float,
        weight: float,
        named: Mapping[str, Tensor],
    ) -> tuple[BatchImportance | None, float | None]:
        """A sharded model: one all-reduce of ``[n, signal * weight, weight]``, then each rank's
        whole-parameter sums reduce-scattered to the shards (:func:`~online_mas.sharded.scatter_sums`;
        the factored ones formed one bucket at a time); parameters that are plain tensors (left out
        of the sharding) are all-reduced."""
        device = next(iter(named.values())).device if named else torch.device("cpu")
        group = world(self.process_group)[2]
        scalars = torch.tensor([float(n), weighted, weight], dtype=torch.float32, device=device)
        count, weighted, weight = all_reduce_flat([scalars], group, stats=self.stats)[0].tolist()
        self.last_weight = weight
        value = weighted / weight if weight > 0 else None
        self._pending, self._pending_n, self.pending_updates = {}, 0, 0
        if round(count) < 1:
            return None, value

        def zeros(p: Tensor) -> Callable[[], Tensor]:
            def make() -> Tensor:
                return torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            return make

        sources = {k: sums[k] if k in sums else zeros(p) for k, p in named.items()}
        sharded = [k for k, p in named.items() if is_sharded(p)]
        plain = [k for k in named if k not in set(sharded)]
        totals = dict(zip(sharded, scatter_sums([sources[k] for k in sharded],
                                                [named[k] for k in sharded],  # type: ignore[misc]
                                                stats=self.stats), strict=True))
        if plain:
            formed = [s() if callable(s) else s for s in (sources[k] for k in plain)]
            totals.update(zip(plain, all_reduce_flat(formed, group, stats=self.stats), strict=True))
        return BatchImportance({k: totals[k] for k in named}, round(count), _NO_OUTPUT), value

    def _reduce_batch(
        self,
        batch: BatchImportance | None,
        weighted: float,
        weight: float,
        named: Mapping[str, Tensor],
    ) -> tuple[BatchImportance | None, float | None]:
        """One update across ranks: an all-reduce of the sums, the scalars, which names each rank
        factored and its rows; then the factors gathered, or their products all-reduced."""
        rank, world_size, group = world(self.process_group)
        names = list(named)
        sums = batch.sums if batch is not None else {}
        factors = batch.factors if batch is not None else {}
        n = (batch.n if batch is not None else 0) + self._pending_n  # with what accumulate() kept
        device = next(iter(named.values())).device if named else torch.device("cpu")
        local = []
        for k, p in named.items():
            s = sums[k] if k in sums else torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            local.append(s + self._pending[k] if k in self._pending else s)
        head = 4  # samples, signal * weight, weight, ranks holding kept sums
        tail = torch.zeros(head + len(names) + world_size, dtype=torch.float32, device=device)
        tail[:head] = torch.tensor([float(n), weighted, weight, float(bool(self._pending))])
        tail[head:head + len(names)] = torch.tensor([float(k in factors) for k in names])
        tail[head + len(names) + rank] = float(batch.n) if batch is not None and factors else 0.0
        *total, tail = all_reduce_flat([*local, tail], group, stats=self.stats)
        count, weighted, weight, kept = tail[:head].tolist()
        self.last_weight = weight  # the pooled samples behind the value (the anchor counts them)
        marks = tail[head:head + len(names)].tolist()
        rows = round(max(tail[head + len(names):].tolist()))
        self._pending, self._pending_n, self.pending_updates = {}, 0, 0
        value = weighted / weight if weight > 0 else None
        if round(count) < 1:
            return None, value
        totals = dict(zip(names, total, strict=True))
        factored = [k for k, m in zip(names, marks, strict=True) if m > 0]
        everyone = [k for k, m in zip(names, marks, strict=True) if round(m) == world_size]
        shapes = {k: named[k].shape for k in factored}
        # kept sums ride on the all-reduced totals, which gathering would replace: no gather then
        sent = world_size * rows * sum(shapes[k][0] + shapes[k][1] for k in everyone)
        gather = bool(everyone) and kept == 0 and sent < sum(shapes[k][0] * shapes[k][1] for k in everyone)
        gathered: dict[str, tuple[Tensor, Tensor]] = {}
        if gather:
            widths = [w for k in everyone for w in shapes[k]]
            rows_here = torch.zeros(rows, sum(widths), dtype=torch.float32, device=device)
            col = 0
            for k in everyone:
                for t in factors[k]:  # |G| (rows, out), then |A| (rows, in)
                    rows_here[: t.shape[0], col : col + t.shape[1]] = t
                    col += t.shape[1]
            stacked = all_gather_rows(rows_here, group, stats=self.stats)
            parts = stacked.split(widths, dim=1)
            for i, k in enumerate(everyone):
                gathered[k] = (parts[2 * i], parts[2 * i + 1])
                del totals[k]
        rest = [k for k in factored if k not in gathered]
        if rest:
            products = [factors[k][0].t() @ factors[k][1] if k in factors
                        else torch.zeros(shapes[k], dtype=torch.float32, device=device) for k in rest]
            for k, s in zip(rest, all_reduce_flat(products, group, stats=self.stats), strict=True):
                totals[k] = totals[k] + s
        return BatchImportance(totals, round(count), _NO_OUTPUT, gathered), value


def _sources(batch: BatchImportance) -> dict[str, Tensor | Callable[[], Tensor]]:
    """A batch's sums, its factored ones as functions that form them (when their bucket is sent)."""
    out: dict[str, Tensor | Callable[[], Tensor]] = dict(batch.sums)
    for name, (g, a) in batch.factors.items():
        out[name] = functools.partial(_product, g, a)
    return out


def _product(g: Tensor, a: Tensor) -> Tensor:
    return g.t() @ a


def _total(a: Tensor | Callable[[], Tensor], b: Tensor) -> Tensor:
    return (a() if callable(a) else a) + b
