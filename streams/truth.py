"""Ground truth of a stream, kept apart from the learner's batches: for evaluation only.

:class:`GroundTruth` says which segment each step comes from (or its mixing weights), where the
true change points are, and holds one held-out evaluation set per segment (:class:`EvalSets`),
drawn from data disjoint from the training data, for accuracy matrices.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import torch
from torch import Tensor

from streams._seeding import TAG_EVAL, numpy_rng, torch_generator
from streams.scenarios import Segment
from streams.transitions import Schedule

__all__ = ["EvalSets", "GroundTruth"]


class EvalSets(Sequence[tuple[Tensor, Tensor]]):
    """One held-out ``(x, y)`` per segment, built on access (nothing is cached).

    ``x`` goes through the segment's transform and ``y`` through its label map, exactly as in the
    stream. With ``max_samples``, a seeded subset (the same for every stream seed) is used.

    Examples
    --------
    >>> from streams import make_stream
    >>> sets = make_stream("split-digits", n_segments=5).eval_sets
    >>> len(sets), sets[1][0].shape, sets[1][1].unique().tolist()
    (5, torch.Size([72, 1, 8, 8]), [2, 3])
    """

    def __init__(self, segments: Sequence[Segment], *, seed: int = 0,
                 max_samples: int | None = None, flatten: bool = False) -> None:
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise ValueError(f"max_samples must be None or an int >= 1, got {max_samples!r}")
        self._segments = list(segments)
        self._seed = seed
        self._max = max_samples
        self._flatten = flatten

    def __len__(self) -> int:
        return len(self._segments)

    @overload
    def __getitem__(self, k: int) -> tuple[Tensor, Tensor]: ...

    @overload
    def __getitem__(self, k: slice) -> list[tuple[Tensor, Tensor]]: ...

    def __getitem__(self, k: int | slice) -> tuple[Tensor, Tensor] | list[tuple[Tensor, Tensor]]:
        if isinstance(k, slice):
            return [self[i] for i in range(len(self))[k]]
        if not -len(self) <= k < len(self):
            raise IndexError(f"segment index must lie in [0, {len(self)}), got {k!r}")
        k = k % len(self)
        seg = self._segments[k]
        pos = torch.arange(seg.n_test)
        if self._max is not None and self._max < seg.n_test:
            pick = numpy_rng(TAG_EVAL, k).permutation(seg.n_test)[: self._max]
            pos = torch.sort(torch.from_numpy(pick)).values
        x, y = seg.fetch(pos, train=False, generator=torch_generator(self._seed, TAG_EVAL, k))
        return (x.flatten(1) if self._flatten else x), y

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return (self[k] for k in range(len(self)))


class GroundTruth:
    """What really happened in a stream, per step (batch index).

    Parameters
    ----------
    schedule : Schedule
        The stream's schedule.
    batch_size : int
        Samples per step; every occurrence length is a multiple of it.
    seed : int
        The stream's seed (needed to rebuild per-sample draws).
    segment_names : sequence of str
        One name per segment.
    eval_sets : EvalSets
        One held-out set per segment.

    Examples
    --------
    >>> from streams import make_stream
    >>> truth = make_stream("rotated-digits", n_segments=3, transition="recurring").truth
    >>> truth.order, truth.change_points, truth.segment_at(44), truth.segment_at(45)
    ([0, 1, 0, 2, 1], [45, 90, 135, 180], 0, 1)
    """

    def __init__(self, schedule: Schedule, *, batch_size: int, seed: int,
                 segment_names: Sequence[str], eval_sets: EvalSets) -> None:
        self.schedule = schedule
        self.batch_size = batch_size
        self.seed = seed
        self.segment_names = list(segment_names)
        self.eval_sets = eval_sets

    @property
    def n_segments(self) -> int:
        """Number of distinct segments (distributions)."""
        return int(self.schedule.n_segments or 0)

    @property
    def n_steps(self) -> int:
        """Number of batches in the stream."""
        return self.schedule.n_samples // self.batch_size

    @property
    def order(self) -> list[int]:
        """Segment of each occurrence, e.g. ``[0, 1, 0, 2]`` for a recurring stream."""
        return list(self.schedule.order)

    @property
    def change_points(self) -> list[int]:
        """Steps at which a new occurrence starts; for gradual transitions, the window's middle."""
        return [t // self.batch_size for t in self.schedule.change_samples]

    @property
    def windows(self) -> list[tuple[float, float]]:
        """Gradual transitions: ``(first, last + 1)`` step of each mixing window (may be
        fractional); empty for other transitions."""
        if self.schedule.kind != "gradual":
            return []
        h0, b = self.schedule.width // 2, self.batch_size
        return [((c - h0) / b, (c - h0 + self.schedule.width) / b)
                for c in self.schedule.change_samples]

    def segment_at(self, step: int) -> int:
        """Segment of the occurrence that batch ``step`` belongs to."""
        return self.schedule.order[self.schedule.occurrence(self._start(step))]

    def weights_at(self, step: int) -> Tensor:
        """Mean mixing weights of batch ``step`` over the segments, float64 ``(n_segments,)``.

        Examples
        --------
        >>> from streams import make_stream
        >>> truth = make_stream("split-digits", n_segments=2, transition="gradual").truth
        >>> truth.change_points, truth.windows
        ([23], [(17.5, 28.5)])
        >>> [round(float(truth.weights_at(s)[1]), 3) for s in (16, 17, 18, 22, 23, 28, 29)]
        [0.0, 0.011, 0.091, 0.455, 0.545, 0.989, 1.0]
        """
        start = self._start(step)
        return self.schedule.weights(start, start + self.batch_size).mean(0)

    def batch_segments(self, step: int) -> Tensor:
        """Segment that each sample of batch ``step`` was drawn from, int64 ``(batch_size,)``.

        Examples
        --------
        >>> from streams import make_stream
        >>> truth = make_stream("split-digits", transition="blurry", share=0.2).truth
        >>> truth.segment_at(3), truth.batch_segments(3).tolist()[:10]
        (0, [0, 0, 0, 3, 0, 0, 0, 0, 0, 0])
        """
        self._start(step)
        return self.schedule.draw(step, self.batch_size, self.seed)

    def segments(self) -> Tensor:
        """:meth:`segment_at` for every step, int64 ``(n_steps,)`` (for plots).

        Examples
        --------
        >>> from streams import make_stream
        >>> make_stream("split-digits", n_segments=2, passes=0.1).truth.segments().tolist()
        [0, 0, 1, 1]
        """
        reps = torch.tensor(self.schedule.lengths) // self.batch_size
        return torch.tensor(self.schedule.order).repeat_interleave(reps)

    def _start(self, step: int) -> int:
        if not isinstance(step, int) or not 0 <= step < self.n_steps:
            raise ValueError(f"step must be an int in [0, {self.n_steps}), got {step!r}")
        return step * self.batch_size

    def __repr__(self) -> str:
        return (f"GroundTruth(n_segments={self.n_segments}, n_steps={self.n_steps}, "
                f"kind={self.schedule.kind!r}, change_points={self.change_points})")
