"""The lazy, seeded, resumable :class:`Stream` of batches, with its ground truth kept apart.

Every batch is a pure function of ``(segments, schedule, seed, step)``: which segment each sample
comes from is drawn with a generator keyed by ``(seed, step)``; which sample a segment gives is read
from a seeded permutation of its training pool, one permutation per pass, keyed by
``(seed, segment, pass)``; transforms run on the batch. So memory does not grow with the stream's
length, any step can be rebuilt alone, and the cursor is a single integer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from streams._seeding import TAG_ORDER, TAG_SIDE, TAG_TRANSFORM, numpy_rng, torch_generator
from streams.scenarios import Segment
from streams.transitions import Schedule
from streams.truth import EvalSets, GroundTruth

__all__ = ["Batch", "Stream"]

#: What a stream yields: ``(x, y)``, or ``x`` alone in unlabeled mode.
Batch = tuple[Tensor, Tensor] | Tensor

_STATE_VERSION = 1


class Stream:
    """A lazy iterable of fixed-size batches drawn from segments along a schedule.

    Iterating yields the batches from the cursor (:attr:`step`) to the end and advances the cursor
    past each batch as it is handed out, like reading a file: a second loop over a finished stream
    yields nothing until :meth:`seek` or :meth:`reset`. ``len(stream)`` is the total number of
    batches. Every batch has exactly ``batch_size`` samples (occurrence lengths are whole batches).

    Parameters
    ----------
    segments : sequence of Segment
        The distributions; ``schedule.order`` refers to them by index.
    schedule : Schedule
        Which segment each sample comes from; occurrence lengths must be multiples of
        ``batch_size``.
    batch_size : int
        Samples per batch, >= 1.
    seed : int
        Seed of every random choice; the same seed gives the same batches.
    labels : bool
        Yield ``(x, y)``; with ``False`` yield ``x`` alone (unlabeled mode).
    flatten : bool
        Yield inputs flattened to ``(B, D)``.
    max_eval : int or None
        Cap on the size of each evaluation set.
    name : str
        Name stored in :meth:`state_dict` and checked on load.

    Examples
    --------
    >>> from streams import Schedule, digits_source, rotations
    >>> segs = rotations(digits_source(), [0, 90])
    >>> stream = Stream(segs, Schedule((0, 1), (64, 96)), batch_size=32, seed=0)
    >>> len(stream), stream.truth.change_points
    (5, [2])
    >>> x, y = next(iter(stream))
    >>> tuple(x.shape), y[:6].tolist(), stream.step
    ((32, 1, 8, 8), [9, 9, 6, 8, 4, 4], 1)
    """

    def __init__(self, segments: Sequence[Segment], schedule: Schedule, *, batch_size: int = 32,
                 seed: int = 0, labels: bool = True, flatten: bool = False,
                 max_eval: int | None = None, name: str = "stream") -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        segments = list(segments)
        if not segments or not all(isinstance(s, Segment) for s in segments):
            raise TypeError(f"segments must be a non-empty sequence of Segment, got {segments!r}")
        if len(segments) != schedule.n_segments:
            raise ValueError(f"the schedule has {schedule.n_segments} segments but "
                             f"{len(segments)} were given")
        shapes = {s.source.input_shape for s in segments}
        if len(shapes) != 1:
            raise ValueError(f"all segments must share one input shape, got {sorted(shapes)}")
        odd = [n for n in schedule.lengths if n % batch_size]
        if odd:
            raise ValueError(f"occurrence lengths must be multiples of batch_size={batch_size} so "
                             f"that changes fall between batches, got {odd[:5]}; build them with "
                             f"segment_lengths(..., batch_size={batch_size})")
        self.segments = segments
        self.schedule = schedule
        self.batch_size = batch_size
        self.seed = seed
        self.labels = bool(labels)
        self.flatten = bool(flatten)
        self.name = name
        self._step = 0
        self._perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        # permutations in use at once: the current segment's (two at a pass boundary), both
        # segments' in a gradual window; blurry draws from outside a segment's span need none
        self._cache_size = 4 if schedule.kind == "gradual" else 2
        self._truth = GroundTruth(
            schedule, batch_size=batch_size, seed=seed,
            segment_names=[s.name for s in segments],
            eval_sets=EvalSets(segments, seed=seed, max_samples=max_eval, flatten=self.flatten))

    # ----------------------------------------------------------------------------- description
    def __len__(self) -> int:
        return self.schedule.n_samples // self.batch_size

    @property
    def step(self) -> int:
        """The cursor: index of the next batch that iteration yields."""
        return self._step

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input as yielded, e.g. ``(1, 8, 8)``, or ``(64,)`` when flattened."""
        shape = self.segments[0].source.input_shape
        if self.flatten:
            d = 1
            for s in shape:
                d *= s
            return (d,)
        return shape

    @property
    def n_classes(self) -> int:
        """Size of the label space the learner sees (largest over the segments)."""
        return max(int(s.n_classes or 0) for s in self.segments)

    @property
    def n_segments(self) -> int:
        """Number of distinct segments (distributions)."""
        return len(self.segments)

    @property
    def truth(self) -> GroundTruth:
        """Ground truth: segment per step, mixing weights, change points, evaluation sets."""
        return self._truth

    @property
    def change_points(self) -> list[int]:
        """Steps at which a new segment starts (shortcut for ``truth.change_points``)."""
        return self._truth.change_points

    @property
    def eval_sets(self) -> EvalSets:
        """One held-out ``(x, y)`` per segment (shortcut for ``truth.eval_sets``)."""
        return self._truth.eval_sets

    def __repr__(self) -> str:
        return (f"Stream({self.name!r}, steps={len(self)}, batch_size={self.batch_size}, "
                f"segments={self.n_segments}, transition={self.schedule.kind!r}, seed={self.seed}, "
                f"labels={self.labels})")

    # -------------------------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[Batch]:
        while self._step < len(self):
            batch = self.batch(self._step)
            self._step += 1
            yield batch

    def seek(self, step: int) -> None:
        """Move the cursor so that iteration continues at batch ``step`` (``0..len``).

        Examples
        --------
        >>> from streams import make_stream
        >>> stream = make_stream("split-digits")
        >>> stream.seek(44)
        >>> [y.tolist()[:4] for _, y in stream], stream.step
        ([[8, 8, 9, 9]], 45)
        """
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= len(self):
            raise ValueError(f"step must be an int in [0, {len(self)}], got {step!r}")
        self._step = step

    def reset(self) -> None:
        """Move the cursor back to the first batch."""
        self._step = 0

    def batch(self, step: int) -> Batch:
        """Batch ``step``, rebuilt from scratch (the cursor does not move).

        Examples
        --------
        >>> from streams import make_stream
        >>> stream = make_stream("split-digits", seed=3)
        >>> _, y = stream.batch(9)
        >>> y[:8].tolist(), stream.step
        ([3, 3, 3, 3, 3, 3, 3, 3], 0)
        """
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < len(self):
            raise ValueError(f"step must be an int in [0, {len(self)}), got {step!r}")
        start, b = step * self.batch_size, self.batch_size
        if self.schedule.is_pure(start, start + b):  # one segment, consecutive positions
            k, u0 = self.schedule.own_position(start)
            x, y = self._fetch(k, self._run(k, u0, b), step)
        else:
            segs = self.schedule.draw(step, b, self.seed).numpy()
            u, side = self.schedule.reading(segs, start)
            present = np.unique(segs).tolist()
            x = torch.empty(b, *self.segments[0].source.input_shape)
            y = torch.empty(b, dtype=torch.int64)
            for k in present:
                mask = segs == k
                pos = self._positions(k, u[mask], side[mask], step)
                rows = torch.from_numpy(np.flatnonzero(mask))
                x[rows], y[rows] = self._fetch(k, pos, step)
        if self.flatten:
            x = x.flatten(1)
        return (x, y) if self.labels else x

    def _run(self, k: int, u0: int, count: int) -> np.ndarray:
        """Positions in segment ``k``'s pool of its own-sequence entries ``u0 .. u0+count-1``."""
        n = self.segments[k].n_train
        pieces = []
        while count > 0:
            p, r = divmod(u0, n)
            take = min(count, n - r)
            pieces.append(self._perm(k, p)[r : r + take])
            u0, count = u0 + take, count - take
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _positions(self, k: int, u: np.ndarray, side: np.ndarray, step: int) -> np.ndarray:
        """Positions in segment ``k``'s pool: own-sequence entries ``u``, and uniform draws (with
        replacement, keyed by the step) where ``side`` marks a blurry draw outside its span."""
        n = self.segments[k].n_train
        pos = np.empty_like(u)
        own = ~side
        passes, within = np.divmod(u[own], n)
        part = np.empty_like(within)
        for p in np.unique(passes).tolist():
            hit = passes == p
            part[hit] = self._perm(k, p)[within[hit]]
        pos[own] = part
        if side.any():
            pos[side] = numpy_rng(self.seed, TAG_SIDE, step, k).integers(0, n, int(side.sum()))
        return pos

    def _fetch(self, k: int, pos: np.ndarray, step: int) -> tuple[Tensor, Tensor]:
        seg = self.segments[k]
        gen = None
        if seg.transform is not None and seg.transform.stochastic:
            gen = torch_generator(self.seed, TAG_TRANSFORM, step, k)
        return seg.fetch(torch.from_numpy(pos), generator=gen)

    def _perm(self, k: int, p: int) -> np.ndarray:
        """Seeded permutation of segment ``k``'s pool for pass ``p`` (small LRU cache)."""
        key = (k, p)
        perm = self._perms.get(key)
        if perm is None:
            n = self.segments[k].n_train
            perm = numpy_rng(self.seed, TAG_ORDER, k, p).permutation(n).astype(np.int32)
            self._perms[key] = perm
            while len(self._perms) > self._cache_size:
                self._perms.popitem(last=False)
        else:
            self._perms.move_to_end(key)
        return perm

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The cursor and what identifies the stream; primitives only (``weights_only`` safe).

        Examples
        --------
        >>> from streams import make_stream
        >>> stream = make_stream("permuted-digits", n_segments=2)
        >>> stream.seek(7)
        >>> sd = stream.state_dict()
        >>> sd["version"], sd["step"], sd["n_steps"], sd["seed"]
        (1, 7, 90, 0)
        """
        return {"version": _STATE_VERSION, "step": self._step, "n_steps": len(self),
                "batch_size": self.batch_size, "seed": self.seed, "name": self.name,
                "kind": self.schedule.kind, "order": list(self.schedule.order),
                "lengths": list(self.schedule.lengths)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the cursor saved by :meth:`state_dict` of the same stream.

        Raises ValueError naming the entries that differ when ``state`` comes from another stream
        (other seed, batch size, schedule or name).

        Examples
        --------
        >>> from streams import make_stream
        >>> a = make_stream("rotated-digits", seed=1)
        >>> _ = [next(iter(a)) for _ in range(3)]
        >>> b = make_stream("rotated-digits", seed=1)
        >>> b.load_state_dict(a.state_dict())
        >>> b.step, bool((next(iter(b))[0] == a.batch(3)[0]).all())
        (3, True)
        """
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"state must be a dict from Stream.state_dict() with version "
                             f"{_STATE_VERSION}, got version "
                             f"{state.get('version') if isinstance(state, dict) else state!r}")
        mine = self.state_dict()
        missing = sorted(set(mine) - set(state))
        if missing:
            raise ValueError(f"state lacks the entries {missing}")
        differ = [f"{k}: saved {state[k]!r}, this stream {mine[k]!r}"
                  for k in mine if k != "step" and state[k] != mine[k]]
        if differ:
            raise ValueError("state comes from a different stream; " + "; ".join(differ))
        self.seek(int(state["step"]))
