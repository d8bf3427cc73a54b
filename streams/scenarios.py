"""Scenarios: turn a source into a list of segments, one input/label distribution each.

A :class:`Segment` is a view of a source: which training and held-out samples it may draw, a batch
transform for its inputs and a map for its labels. Nothing is copied: segments share the source.

- :func:`permutations`: a fixed pixel permutation per segment (permuted MNIST);
- :func:`rotations`: a rotation angle per segment (rotated MNIST);
- :func:`corruptions`: noise, blur or contrast at a severity per segment;
- :func:`class_splits`: disjoint groups of classes, labelled globally (class-incremental) or by
  position in the group (domain-/task-incremental, e.g. split-MNIST parity);
- :func:`label_shift`: the same inputs with a different class mix per segment;
- :func:`dataset_segments`: any list of sources, one segment each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from streams._seeding import TAG_SCENARIO, numpy_rng
from streams.sources import Source
from streams.transforms import CORRUPTIONS, Corrupt, Permute, Rotate, Transform, check_severity

__all__ = ["Segment", "class_splits", "corruptions", "dataset_segments", "label_shift",
           "permutations", "rotations"]


@dataclass(frozen=True, eq=False)
class Segment:
    """One distribution of a stream: a view of a source with a transform and a label map.

    Parameters
    ----------
    source : Source
        Where the samples come from.
    name : str
        Human-readable description, e.g. ``"rotation 30°"``.
    train_idx, test_idx : Tensor or None
        Positions in ``source.train`` / ``source.test`` the segment uses (default: all).
    transform : Transform or None
        Applied to every batch of inputs of this segment (default: none).
    label_map : Tensor or None
        ``label_map[y]`` is the label the learner sees for source label ``y`` (default: ``y``).
    n_classes : int or None
        Size of the label space seen by the learner (default: the source's).

    Examples
    --------
    >>> from streams.sources import digits_source
    >>> seg = Segment(digits_source(), "plain")
    >>> seg.n_train, seg.n_test, seg.n_classes
    (1438, 359, 10)
    """

    source: Source
    name: str
    train_idx: Tensor | None = None
    test_idx: Tensor | None = None
    transform: Transform | None = None
    label_map: Tensor | None = None
    n_classes: int | None = None

    def __post_init__(self) -> None:
        if self.n_classes is None:
            object.__setattr__(self, "n_classes", self.source.n_classes)
        if self.n_train < 1 or self.n_test < 1:
            raise ValueError(f"segment {self.name!r} needs at least one training and one held-out "
                             f"sample, got {self.n_train} and {self.n_test}")

    @property
    def n_train(self) -> int:
        """Number of training samples the segment draws from."""
        return len(self.source.train) if self.train_idx is None else len(self.train_idx)

    @property
    def n_test(self) -> int:
        """Number of held-out samples of the segment."""
        return len(self.source.test) if self.test_idx is None else len(self.test_idx)

    def fetch(self, pos: Tensor, *, train: bool = True,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Inputs and labels at positions ``pos`` (``0 <= pos < n_train`` or ``n_test``).

        The transform and the label map are applied; ``generator`` feeds stochastic transforms.
        """
        pool = self.source.train if train else self.source.test
        idx = self.train_idx if train else self.test_idx
        rows = pos if idx is None else idx[pos]
        x = pool.fetch(rows)
        if self.transform is not None:
            x = self.transform(x, generator)
        y = pool.y[rows]
        return x, (y if self.label_map is None else self.label_map[y])


def permutations(source: Source, n_segments: int, *, seed: int = 0,
                 identity_first: bool = True) -> list[Segment]:
    """One random pixel permutation per segment, drawn from ``seed``.

    Parameters
    ----------
    identity_first : bool
        Segment 0 keeps the original pixel order (the usual permuted-MNIST convention).

    Examples
    --------
    >>> from streams.sources import digits_source
    >>> segs = permutations(digits_source(), 3, seed=0)
    >>> [s.name for s in segs], segs[1].transform.perm[:5].tolist()
    (['identity', 'permutation 1', 'permutation 2'], [60, 52, 48, 16, 63])
    """
    _check_count(n_segments, 1)
    d = 1
    for s in source.input_shape:
        d *= s
    segs = []
    for k in range(n_segments):
        if k == 0 and identity_first:
            segs.append(Segment(source, "identity"))
            continue
        perm = torch.from_numpy(numpy_rng(seed, TAG_SCENARIO, 1, k).permutation(d))
        segs.append(Segment(source, f"permutation {k}", transform=Permute(perm)))
    return segs


def rotations(source: Source, angles: Sequence[float]) -> list[Segment]:
    """One rotation angle (degrees, counter-clockwise) per segment.

    Examples
    --------
    >>> from streams.sources import digits_source
    >>> [s.name for s in rotations(digits_source(), [0, 30, 60])]
    ['rotation 0°', 'rotation 30°', 'rotation 60°']
    """
    if len(source.input_shape) != 3:
        raise ValueError(f"rotations need image inputs (C, H, W), got {source.input_shape}")
    return [Segment(source, f"rotation {float(a):g}°", transform=Rotate(a)) for a in angles]


def corruptions(source: Source, severities: Sequence[float], *,
                kind: str = "noise") -> list[Segment]:
    """One corruption severity per segment (0 is clean; at most ``MAX_SEVERITY`` = 5).

    Examples
    --------
    >>> from streams.sources import digits_source
    >>> [s.name for s in corruptions(digits_source(), [0, 2.5, 5], kind="blur")]
    ['blur 0', 'blur 2.5', 'blur 5']
    >>> corruptions(digits_source(), [1, 7])
    Traceback (most recent call last):
    ...
    ValueError: severity must lie in [0, 5.0], got 7
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"kind must be one of {CORRUPTIONS}, got {kind!r}")
    if kind == "blur" and len(source.input_shape) != 3:
        raise ValueError(f"blur needs image inputs (C, H, W), got {source.input_shape}")
    for s in severities:
        check_severity(s)
    return [Segment(source, f"{kind} {float(s):g}", transform=Corrupt(kind, s)) for s in severities]


def class_splits(source: Source, splits: Sequence[Sequence[int]] | int, *,
                 labels: str = "class") -> list[Segment]:
    """Disjoint groups of classes, one segment each.

    Parameters
    ----------
    splits : sequence of sequences of int, or int
        The classes of each segment, or a number of segments to cut the sorted classes into
        consecutive, near-equal groups.
    labels : {"class", "domain"}
        ``"class"``: the learner sees the original labels (class-incremental, ``n_classes`` of the
        source). ``"domain"``: it sees the position of the class within its group, so all segments
        share one small label space (domain-incremental; with groups (0, 1), (2, 3), ... this is
        split-MNIST's parity labelling).

    Examples
    --------
    >>> from streams.sources import digits_source
    >>> segs = class_splits(digits_source(), [[0, 1], [2, 3]], labels="domain")
    >>> [(s.name, s.n_classes, s.n_train) for s in segs]
    [('classes 0/1', 2, 288), ('classes 2/3', 2, 288)]
    >>> class_splits(digits_source(), [[0, 1], [1, 2]])
    Traceback (most recent call last):
    ...
    ValueError: class splits must be disjoint; class 1 is in more than one of [[0, 1], [1, 2]]
    """
    present = source.classes
    if isinstance(splits, int):
        _check_count(splits, 1)
        if splits > len(present):
            raise ValueError(f"cannot cut {len(present)} classes into {splits} splits")
        groups = [[int(c) for c in chunk] for chunk in torch.tensor(present).tensor_split(splits)]
    else:
        groups = [[int(c) for c in g] for g in splits]
    if labels not in ("class", "domain"):
        raise ValueError(f"labels must be 'class' or 'domain', got {labels!r}")
    seen: set[int] = set()
    for g in groups:
        if not g:
            raise ValueError(f"class splits must not be empty, got {groups}")
        for c in g:
            if c not in present:
                raise ValueError(f"class {c} in splits {groups} is absent from {source.name}; "
                                 f"allowed classes: {present}")
            if c in seen:
                raise ValueError(f"class splits must be disjoint; class {c} is in more than one "
                                 f"of {groups}")
            seen.add(c)
    width = max(len(g) for g in groups)
    segs = []
    for g in groups:
        classes = torch.tensor(g)
        label_map = None
        if labels == "domain":
            label_map = torch.full((source.n_classes,), -1, dtype=torch.int64)
            label_map[classes] = torch.arange(len(g))
        segs.append(Segment(source, "classes " + "/".join(map(str, g)),
                            train_idx=_members(source.train.y, classes),
                            test_idx=_members(source.test.y, classes), label_map=label_map,
                            n_classes=width if labels == "domain" else source.n_classes))
    return segs


def label_shift(source: Source, proportions: Sequence[Sequence[float]], *,
                seed: int = 0) -> list[Segment]:
    """Same inputs, a different class mix per segment.

    Segment ``k`` keeps a seeded random share ``p[k][c] / max(p[k])`` of the samples of class
    ``c`` (training and held-out alike), so its class frequencies follow ``proportions[k]``.

    Examples
    --------
    >>> from streams.sources import digits_source
    >>> src = digits_source()
    >>> segs = label_shift(src, [[1] * 5 + [0.25] * 5, [0.25] * 5 + [1] * 5])
    >>> src.train.y[segs[0].train_idx].bincount().tolist()
    [142, 146, 142, 146, 145, 36, 36, 36, 35, 36]
    """
    segs = []
    for k, p in enumerate(proportions):
        w = torch.as_tensor([float(v) for v in p], dtype=torch.float64)
        if w.shape != (source.n_classes,) or bool((w < 0).any()) or float(w.max()) <= 0:
            raise ValueError(f"proportions[{k}] must hold {source.n_classes} non-negative numbers, "
                             f"not all zero; got {list(p)}")
        keep = w / w.max()
        idx = [_thin(pool.y, keep, seed, k, part) for part, pool in
               enumerate((source.train, source.test))]
        name = "classes " + ",".join(f"{v:g}" for v in keep.tolist())
        segs.append(Segment(source, f"label shift {k} ({name})", train_idx=idx[0], test_idx=idx[1]))
    return segs


def dataset_segments(sources: Sequence[Source]) -> list[Segment]:
    """One segment per source (e.g. MNIST then FashionMNIST); input shapes must agree.

    Examples
    --------
    >>> from streams.sources import tensor_source
    >>> a = tensor_source(torch.zeros(10, 4), torch.arange(10) % 2, name="a")
    >>> b = tensor_source(torch.ones(10, 4), torch.arange(10) % 3, name="b")
    >>> [(s.name, s.n_classes) for s in dataset_segments([a, b])]
    [('a', 2), ('b', 3)]
    """
    if not sources:
        raise ValueError("dataset_segments needs at least one source")
    shapes = {s.input_shape for s in sources}
    if len(shapes) > 1:
        raise ValueError(f"all sources must have one input shape, got {sorted(shapes)}")
    return [Segment(s, s.name) for s in sources]


def _members(y: Tensor, classes: Tensor) -> Tensor:
    return torch.nonzero(torch.isin(y, classes)).flatten()


def _thin(y: Tensor, keep: Tensor, seed: int, k: int, part: int) -> Tensor:
    rng = numpy_rng(seed, TAG_SCENARIO, 2, k, part)
    chosen = []
    for c in range(len(keep)):
        members = torch.nonzero(y == c).flatten().numpy()
        n = round(float(keep[c]) * len(members))
        chosen.append(torch.from_numpy(rng.permutation(members)[:n]))
    return torch.sort(torch.cat(chosen)).values


def _check_count(n: object, low: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < low:
        raise ValueError(f"number of segments must be an int >= {low}, got {n!r}")
