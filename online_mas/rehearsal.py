"""Rehearsal: small seeded memories of labeled samples, replayed in the user's own training step.

Three policies share one API and a budget of ``size`` stored samples:

- :class:`Reservoir`: a uniform sample of everything seen (Vitter's algorithm R), as in experience
  replay (Chaudhry et al., 2019);
- :class:`ClassBalanced`: class-balancing reservoir (Chrysakis and Moens, ICML 2020): when full, a
  sample of a class that holds the most slots replaces one of its own (reservoir within the
  class), any other sample replaces one of the largest class;
- :class:`HardReplay`: the task-free paper's hard buffer (Aljundi, Kelchtermans, Tuytelaars,
  CVPR 2019): the samples with the highest recent loss.

In the loop, mix a replay batch into the batch, train on it, then update the memory with the
batch and its per-sample losses (those of the replayed samples refresh their stored scores)::

    xb, yb = memory.mix(x, y)
    losses = F.cross_entropy(model(xb), yb, reduction="none")
    losses.mean().backward(); opt.step()
    memory.update(x, y, losses[: len(x)], replay_losses=losses[len(x):])

The label-free :class:`~online_mas.buffer.HardBuffer` (importance at consolidation) is another
thing; :meth:`Reservoir.sample` gives inputs that :meth:`~online_mas.OnlineMAS.accumulate` can
estimate importance on without their labels.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["ClassBalanced", "HardReplay", "Replay", "Reservoir"]

_VERSION = 1


class Replay(NamedTuple):
    """A batch drawn from a memory: inputs, labels, stored logits (or None), the slots it came from."""

    x: Tensor
    y: Tensor
    logits: Tensor | None
    slots: Tensor


class Reservoir:
    """A uniform sample of the stream (reservoir sampling), at most ``size`` labeled samples.

    Sample ``t`` (0-based, over everything seen) fills an empty slot, or else draws ``u`` uniform
    in [0, 1) and replaces slot ``floor(u (t + 1))`` if that is below ``size``.

    Parameters
    ----------
    size
        Memory budget in samples (>= 1).
    seed
        Seed of the memory's own generator (insertion and replay draws).

    Examples
    --------
    >>> import torch
    >>> mem = Reservoir(3, seed=0)
    >>> mem.update(torch.arange(10.0).view(10, 1), torch.arange(10))
    >>> len(mem), mem.seen, mem.y.tolist()
    (3, 10, [0, 6, 9])
    >>> xb, yb = mem.mix(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    >>> yb.tolist()
    [0, 0, 9, 0]
    """

    kind = "reservoir"

    def __init__(self, size: int, *, seed: int = 0) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.size = size
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self._x: Tensor | None = None
        self._y = torch.zeros(0, dtype=torch.long)
        self._logits: Tensor | None = None
        self._scores = torch.zeros(0)
        self._seen = 0
        self._last = torch.zeros(0, dtype=torch.long)  # slots of the last replay batch

    # -------------------------------------------------------------------- what it holds

    def __len__(self) -> int:
        return int(self._y.shape[0])

    @property
    def seen(self) -> int:
        """Samples offered so far (finite losses only, for a memory that reads them)."""
        return self._seen

    @property
    def x(self) -> Tensor | None:
        """The stored inputs (``None`` when empty)."""
        return self._x

    @property
    def y(self) -> Tensor:
        """The stored labels."""
        return self._y

    @property
    def logits(self) -> Tensor | None:
        """The logits stored with each sample (``update(logits=...)``), or None."""
        return self._logits

    @property
    def scores(self) -> Tensor:
        """The loss stored with each sample (zeros where none was given)."""
        return self._scores

    # -------------------------------------------------------------------- replay

    def sample(self, n: int) -> Replay | None:
        """Up to ``n`` distinct stored samples drawn uniformly (None when empty)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        if self._x is None or len(self) == 0:
            self._last = torch.zeros(0, dtype=torch.long)
            return None
        index = torch.randperm(len(self), generator=self._generator)[:n].to(self._y.device)
        self._last = index
        logits = self._logits[index] if self._logits is not None else None
        return Replay(self._x[index], self._y[index], logits, index)

    def mix(self, x: Tensor, y: Tensor, n: int | None = None) -> tuple[Tensor, Tensor]:
        """``x`` and ``y`` followed by a replay batch of ``n`` samples (default ``len(x)``)."""
        replay = self.sample(int(x.shape[0]) if n is None else n)
        if replay is None:
            return x, y
        return torch.cat([x, replay.x.to(x.device)]), torch.cat([y, replay.y.to(y.device)])

    # -------------------------------------------------------------------- update

    def update(self, x: Tensor, y: Tensor, losses: Tensor | None = None, *,
               logits: Tensor | None = None, replay_losses: Tensor | None = None) -> None:
        """Offer a batch (with its per-sample losses, and logits to store if given).

        ``replay_losses`` (one per sample of the last :meth:`sample` or :meth:`mix`) refresh the
        scores of the replayed samples first.
        """
        x, y = x.detach(), y.detach().long().flatten()
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"need one label per sample: {x.shape[0]} samples, {y.shape[0]} labels")
        scores = self._per_sample(losses, x.shape[0], "losses")
        if logits is not None:
            logits = logits.detach()
            if logits.shape[0] != x.shape[0]:
                raise ValueError(f"need one row of logits per sample: {x.shape[0]} samples, "
                                 f"{logits.shape[0]} rows")
        if replay_losses is not None:
            fresh = self._per_sample(replay_losses, int(self._last.shape[0]), "replay_losses")
            if fresh is not None:
                self._scores[self._last.cpu()] = fresh
        if self._x is not None and (self._x.shape[1:] != x.shape[1:] or self._x.dtype != x.dtype):
            raise ValueError(f"inputs of shape {tuple(x.shape[1:])} and dtype {x.dtype} do not match "
                             f"the stored {tuple(self._x.shape[1:])}, {self._x.dtype}")
        if self._x is not None and (self._logits is None) != (logits is None):
            raise ValueError("pass logits= on every update or on none")
        self._insert(x, y, torch.zeros(x.shape[0]) if scores is None else scores, logits)

    def _per_sample(self, values: Tensor | None, n: int, what: str) -> Tensor | None:
        if values is None:
            return None
        values = values.detach().float().flatten().cpu()
        if values.shape[0] != n:
            raise ValueError(f"need one value of {what} per sample: {n} samples, {values.shape[0]} values")
        return values

    def _insert(self, x: Tensor, y: Tensor, scores: Tensor, logits: Tensor | None) -> None:
        u = torch.rand(x.shape[0], generator=self._generator, dtype=torch.float64)
        take: dict[int, int] = {}  # slot -> sample (a later sample of the batch wins)
        n = len(self)
        appended: list[int] = []
        for k in range(x.shape[0]):
            t = self._seen + k
            if n + len(appended) < self.size:
                appended.append(k)
                continue
            slot = int(u[k] * (t + 1))
            if slot < self.size:
                take[slot] = k
        self._seen += x.shape[0]
        if appended:
            self._append(x, y, scores, logits, torch.tensor(appended))
        if take:
            slots = torch.tensor(list(take))
            self._put(slots, torch.tensor(list(take.values())), x, y, scores, logits)

    # -------------------------------------------------------------------- storage

    def _append(self, x: Tensor, y: Tensor, scores: Tensor, logits: Tensor | None,
                rows: Tensor) -> None:
        dev = x.device
        rows = rows.to(dev)
        if self._x is None:
            self._x, self._y = x[rows].clone(), y[rows].clone()
            self._scores = scores[rows.cpu()].clone()
            self._logits = logits[rows].clone() if logits is not None else None
            return
        self._x = torch.cat([self._x, x[rows].to(self._x.device)])
        self._y = torch.cat([self._y, y[rows].to(self._y.device)])
        self._scores = torch.cat([self._scores, scores[rows.cpu()]])
        if self._logits is not None and logits is not None:
            self._logits = torch.cat([self._logits, logits[rows].to(self._logits.device)])

    def _put(self, slots: Tensor, rows: Tensor, x: Tensor, y: Tensor, scores: Tensor,
             logits: Tensor | None) -> None:
        if self._x is None:
            return
        dev = self._x.device
        self._x[slots.to(dev)] = x[rows.to(x.device)].to(dev)
        self._y[slots.to(dev)] = y[rows.to(y.device)].to(dev)
        self._scores[slots] = scores[rows]
        if self._logits is not None and logits is not None:
            self._logits[slots.to(dev)] = logits[rows.to(logits.device)].to(dev)

    # -------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, object]:
        """Tensors and primitives only, with a ``"version"`` key (``weights_only`` loadable)."""
        return {"version": _VERSION, "kind": self.kind, "size": self.size, "seed": self.seed,
                "seen": self._seen, "generator": self._generator.get_state(),
                "x": None if self._x is None else self._x.clone(), "y": self._y.clone(),
                "logits": None if self._logits is None else self._logits.clone(),
                "scores": self._scores.clone(), "last": self._last.clone(), **self._extra_state()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict`; the kind and size must match this memory's."""
        if not isinstance(state, dict) or state.get("version") != _VERSION:
            got = state.get("version") if isinstance(state, dict) else type(state)
            raise ValueError(f"memory state must be a dict with version {_VERSION}, got {got!r}")
        if (state.get("kind"), state.get("size")) != (self.kind, self.size):
            raise ValueError(f"memory state is of kind {state.get('kind')!r} size {state.get('size')!r}, "
                             f"not {self.kind!r} size {self.size}")
        x, logits = state["x"], state["logits"]
        self._x = x.clone() if isinstance(x, Tensor) else None
        self._logits = logits.clone() if isinstance(logits, Tensor) else None
        self._y = _tensor(state, "y").clone()
        self._scores = _tensor(state, "scores").clone()
        self._last = _tensor(state, "last").clone()
        self._seen = int(state["seen"])  # type: ignore[call-overload]
        self._generator.set_state(_tensor(state, "generator"))
        self._load_extra(state)

    def _extra_state(self) -> dict[str, object]:
        return {}

    def _load_extra(self, state: dict[str, object]) -> None:
        pass


class ClassBalanced(Reservoir):
    """Class-balancing reservoir: when full, the classes that hold the most slots give way.

    A new sample of class ``c``, memory full: if ``c`` holds the most slots it replaces, with
    probability ``m_c / n_c`` (slots held, samples of ``c`` seen), a random slot of ``c``; otherwise
    it replaces a random slot of a largest class (ties broken at random).

    References
    ----------
    Chrysakis and Moens. Online Continual Learning from Imbalanced Data. ICML 2020.

    Examples
    --------
    >>> import torch
    >>> mem = ClassBalanced(4, seed=0)
    >>> mem.update(torch.zeros(10, 1), torch.tensor([0] * 8 + [1] * 2))
    >>> torch.bincount(mem.y).tolist()
    [2, 2]
    """

    kind = "class-balanced"

    def __init__(self, size: int, *, seed: int = 0) -> None:
        super().__init__(size, seed=seed)
        self._class_seen = torch.zeros(0, dtype=torch.long)

    def _insert(self, x: Tensor, y: Tensor, scores: Tensor, logits: Tensor | None) -> None:
        g = self._generator
        for k in range(x.shape[0]):
            c = int(y[k])
            if c < 0:
                raise ValueError(f"labels must be ints >= 0, got {c}")
            if c >= self._class_seen.shape[0]:
                grown = torch.zeros(c + 1, dtype=torch.long)
                grown[: self._class_seen.shape[0]] = self._class_seen
                self._class_seen = grown
            self._class_seen[c] += 1
            self._seen += 1
            row = torch.tensor([k])
            if len(self) < self.size:
                self._append(x, y, scores, logits, row)
                continue
            held = torch.bincount(self._y.cpu(), minlength=self._class_seen.shape[0])
            largest = torch.nonzero(held == held.max()).flatten()
            if bool((largest == c).any()):
                if float(torch.rand((), generator=g, dtype=torch.float64)) >= held[c] / self._class_seen[c]:
                    continue
                victim_class = c
            else:
                victim_class = int(largest[torch.randint(len(largest), (), generator=g)])
            slots = torch.nonzero(self._y.cpu() == victim_class).flatten()
            slot = slots[torch.randint(len(slots), (), generator=g)].view(1)
            self._put(slot, row, x, y, scores, logits)

    def _extra_state(self) -> dict[str, object]:
        return {"class_seen": self._class_seen.clone()}

    def _load_extra(self, state: dict[str, object]) -> None:
        self._class_seen = _tensor(state, "class_seen").clone()


class HardReplay(Reservoir):
    """The task-free paper's hard buffer: the ``size`` samples with the highest loss, per era.

    Stored samples keep the loss they had when offered, refreshed when they are replayed
    (``update(..., replay_losses=...)``). Samples with a non-finite loss are not offered.

    A new segment's samples all have a high loss, so a plain highest-loss buffer fills with the
    current segment and drops every older one. :meth:`new_era` (e.g. at each consolidation a
    detector triggers: still task-free) starts a new era; when the buffer is full the slots are
    dealt round-robin over the eras, each era's hardest samples first, so every era keeps about
    ``size / eras`` slots and an era with fewer samples leaves its share to the others. Before
    the first :meth:`new_era` it is the plain highest-loss buffer.

    References
    ----------
    Aljundi, Kelchtermans, Tuytelaars. Task-Free Continual Learning. CVPR 2019.

    Examples
    --------
    >>> import torch
    >>> mem = HardReplay(2)
    >>> mem.update(torch.arange(4.0).view(4, 1), torch.arange(4), torch.tensor([0.3, 2.0, 0.1, 1.0]))
    >>> mem.y.tolist(), mem.scores.tolist()
    ([1, 3], [2.0, 1.0])
    >>> mem.new_era()
    >>> mem.update(torch.zeros(2, 1), torch.tensor([8, 9]), torch.tensor([5.0, 6.0]))
    >>> mem.y.tolist(), mem.eras.tolist()  # one slot each: the hardest of each era
    ([9, 1], [1, 0])
    """

    kind = "hard"

    def __init__(self, size: int, *, seed: int = 0) -> None:
        super().__init__(size, seed=seed)
        self._eras = torch.zeros(0, dtype=torch.long)
        self._era = 0

    @property
    def eras(self) -> Tensor:
        """The era each stored sample was offered in."""
        return self._eras

    @property
    def era(self) -> int:
        """The current era (0 before the first :meth:`new_era`)."""
        return self._era

    def new_era(self) -> None:
        """Samples offered from now on belong to a new era (the buffer's slots are shared by era)."""
        self._era += 1

    def update(self, x: Tensor, y: Tensor, losses: Tensor | None = None, *,
               logits: Tensor | None = None, replay_losses: Tensor | None = None) -> None:
        """As :meth:`Reservoir.update`; ``losses`` is required (the memory keeps the highest)."""
        if losses is None:
            raise ValueError("HardReplay.update needs the per-sample losses, got losses=None")
        super().update(x, y, losses, logits=logits, replay_losses=replay_losses)

    def _insert(self, x: Tensor, y: Tensor, scores: Tensor, logits: Tensor | None) -> None:
        finite = torch.isfinite(scores)
        self._seen += int(finite.sum())
        rows = torch.nonzero(finite).flatten()
        fresh_eras = torch.full((int(rows.shape[0]),), self._era, dtype=torch.long)
        if self._x is None:
            pool_x, pool_y, pool_s = x[rows.to(x.device)], y[rows.to(y.device)], scores[rows]
            pool_l = logits[rows.to(logits.device)] if logits is not None else None
            pool_e = fresh_eras
        else:
            dev = self._x.device
            pool_x = torch.cat([self._x, x[rows.to(x.device)].to(dev)])
            pool_y = torch.cat([self._y, y[rows.to(y.device)].to(dev)])
            pool_s = torch.cat([self._scores, scores[rows]])
            pool_l = (torch.cat([self._logits, logits[rows.to(logits.device)].to(dev)])
                      if self._logits is not None and logits is not None else None)
            pool_e = torch.cat([self._eras, fresh_eras])
        order = _round_robin(pool_s, pool_e)[: self.size]
        dev_order = order.to(pool_x.device)
        self._x, self._y, self._scores = pool_x[dev_order].clone(), pool_y[dev_order].clone(), \
            pool_s[order].clone()
        self._eras = pool_e[order].clone()
        self._logits = pool_l[dev_order].clone() if pool_l is not None else None
        self._last = torch.zeros(0, dtype=torch.long)  # slots moved: the last replay is stale

    def _extra_state(self) -> dict[str, object]:
        return {"eras": self._eras.clone(), "era": self._era}

    def _load_extra(self, state: dict[str, object]) -> None:
        if "eras" not in state:  # saved before eras existed: one era
            self._eras, self._era = torch.zeros(len(self), dtype=torch.long), 0
            return
        self._eras = _tensor(state, "eras").clone()
        self._era = int(state["era"])  # type: ignore[call-overload]
        if self._eras.shape[0] != len(self):
            raise ValueError(f"memory state holds {len(self)} samples but {self._eras.shape[0]} eras")


def _round_robin(scores: Tensor, eras: Tensor) -> Tensor:
    """Positions ordered by rank within their era (hardest first), ties by score: a fair deal."""
    by_score = torch.sort(scores, descending=True, stable=True).indices
    era_sorted = eras[by_score]
    rank = torch.zeros_like(era_sorted)
    for e in torch.unique(era_sorted).tolist():
        mine = era_sorted == e
        rank[mine] = torch.arange(int(mine.sum()))
    n = int(by_score.shape[0])
    key = rank * n + torch.arange(n)  # rank first, then the position in the score order
    return by_score[torch.sort(key, stable=True).indices]


def _tensor(state: dict[str, object], key: str) -> Tensor:
    value = state.get(key)
    if not isinstance(value, Tensor):
        raise TypeError(f"memory state entry {key!r} must be a tensor, got {type(value).__name__}")
    return value
