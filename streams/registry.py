"""Named, ready-made streams: ``make_stream("permuted-digits", seed=0)`` and friends.

A name is ``<recipe>-<data>``, with recipes ``permuted``, ``rotated``, ``split``
(class-incremental), ``split-...-domain`` (domain-incremental labels) and ``corrupted``, and data
``digits`` (bundled, offline), ``mnist1d`` (generated locally by the ``mnist1d`` extra; 1-D
signals, so no ``rotated``/``corrupted`` recipes) or one of torchvision's sets read from ``root``:
``mnist``, ``fashion-mnist``, ``kmnist``, ``cifar10``, ``cifar100``, ``svhn``.
Every option lives in :class:`StreamConfig`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from streams.scenarios import Segment, class_splits, corruptions, permutations, rotations
from streams.sources import Source, digits_source, mnist1d_source, validation_source
from streams.stream import Stream
from streams.torchvision_sources import TORCHVISION_NAMES, torchvision_source
from streams.transforms import CORRUPTIONS, MAX_SEVERITY
from streams.transitions import make_schedule

__all__ = ["STREAM_NAMES", "StreamConfig", "build_stream", "make_stream"]

_RECIPES = ("permuted", "rotated", "split", "corrupted")
_DATA = ("digits", "mnist1d", *TORCHVISION_NAMES)

#: Every name :func:`make_stream` accepts.
STREAM_NAMES: tuple[str, ...] = tuple(
    [f"{r}-{d}" for d in _DATA for r in _RECIPES if d != "mnist1d" or r in ("permuted", "split")]
    + [f"split-{d}-domain" for d in _DATA])


@dataclass(frozen=True)
class StreamConfig:
    """Everything that defines a named stream.

    Examples
    --------
    >>> StreamConfig("rotated-digits", n_segments=4).segment_count()
    4
    """

    name: str  # one of STREAM_NAMES
    seed: int = 0  # seed of every random choice
    batch_size: int = 32  # samples per batch
    n_segments: int | None = None  # distinct segments; None: the recipe's default
    passes: float = 1.0  # passes over a segment's training data per occurrence
    transition: str = "abrupt"  # "abrupt", "gradual", "blurry"; "recurring" = abrupt + recurring
    labels: bool = True  # yield (x, y); False yields x only
    root: str | None = None  # folder with the torchvision files (not needed for *-digits, *-mnist1d)
    download: bool = False  # let torchvision download missing files (needs internet)
    verify: bool = True  # check torchvision's md5 sums (CIFAR, SVHN)
    flatten: bool = False  # yield inputs as (B, D)
    order: str | tuple[int, ...] | None = None  # None: 0..K-1; "recurring"; "return" (0..K-1, 0)
    random_lengths: bool = False  # scale each occurrence's length by a seeded U(0.5, 1.5)
    window: int | None = None  # gradual: window width in samples; None: half the shortest one
    share: float = 0.1  # blurry: share of samples from the other segments
    corruption: str = "noise"  # corrupted-*: "noise", "blur" or "contrast"
    max_severity: float = MAX_SEVERITY  # corrupted-*: severities run from 0 up to this
    angle_step: float = 30.0  # rotated-*: degrees between consecutive segments
    identity_first: bool = True  # permuted-*: segment 0 keeps the original pixel order
    max_eval: int | None = None  # cap on each evaluation set's size
    test_fraction: float = 0.2  # digits: held-out share of each class
    validation: float = 0.0  # > 0: evaluate on this share of the training data, never on the test data

    def __post_init__(self) -> None:
        if self.name not in STREAM_NAMES:
            raise ValueError(f"unknown stream {self.name!r}; allowed: {', '.join(STREAM_NAMES)}")
        if self.transition not in ("abrupt", "gradual", "blurry", "recurring"):
            raise ValueError(f"transition must be one of 'abrupt', 'gradual', 'blurry', "
                             f"'recurring', got {self.transition!r}")
        if isinstance(self.order, str) and self.order not in ("recurring", "return"):
            raise ValueError(f"order must be None, a list of segment ids, 'recurring' or "
                             f"'return', got {self.order!r}")
        if self.corruption not in CORRUPTIONS:
            raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {self.corruption!r}")
        if not 0.0 <= self.max_severity <= MAX_SEVERITY:
            raise ValueError(f"max_severity must lie in [0, {MAX_SEVERITY}], got "
                             f"{self.max_severity!r}")
        if not math.isfinite(self.angle_step):
            raise ValueError(f"angle_step must be a finite number, got {self.angle_step!r}")
        if isinstance(self.validation, bool) or not isinstance(self.validation, int | float) \
                or not 0.0 <= self.validation < 1.0:
            raise ValueError(f"validation must be a number in [0, 1) (0: evaluate on the test data), "
                             f"got {self.validation!r}")
        if self.n_segments is not None and (not isinstance(self.n_segments, int)
                                            or isinstance(self.n_segments, bool)
                                            or not 1 <= self.n_segments <= MAX_SEGMENTS):
            raise ValueError(f"n_segments must be None or an int in [1, {MAX_SEGMENTS}], got "
                             f"{self.n_segments!r}")

    @property
    def recipe(self) -> str:
        """``"permuted"``, ``"rotated"``, ``"split"``, ``"split-domain"`` or ``"corrupted"``."""
        head = self.name.split("-", 1)[0]
        return "split-domain" if self.name.endswith("-domain") else head

    @property
    def data(self) -> str:
        """``"digits"`` or a torchvision name."""
        rest = self.name.split("-", 1)[1]
        return rest[: -len("-domain")] if rest.endswith("-domain") else rest

    def segment_count(self, n_classes: int = 10) -> int:
        """``n_segments``, or the recipe's default (5; 6 severities 0..5 for corrupted-*;
        10 class splits for 100 classes)."""
        if self.n_segments is not None:
            return self.n_segments
        if self.recipe == "corrupted":
            return 6
        return 10 if self.recipe.startswith("split") and n_classes >= 100 else 5


MAX_SEGMENTS = 10_000  # each segment holds its transform (a permutation, an angle): keep it bounded


def make_stream(name: str, *, seed: int = 0, batch_size: int = 32, n_segments: int | None = None,
                passes: float = 1.0, transition: str = "abrupt", labels: bool = True,
                root: str | None = None, **options: Any) -> Stream:
    """Build a named stream; ``options`` are the other fields of :class:`StreamConfig`.

    Parameters
    ----------
    name : str
        One of :data:`STREAM_NAMES`, e.g. ``"permuted-digits"``, ``"split-mnist-domain"``.
    seed : int
        Seed of every random choice (permutations, sample order, draws, noise).
    batch_size : int
        Samples per batch.
    n_segments : int or None
        Number of distinct segments (default: 5; 6 for corrupted-*, 10 for split-cifar100).
    passes : float
        Passes over each segment's training data per occurrence; lengths are rounded to whole
        batches.
    transition : str
        ``"abrupt"``, ``"gradual"``, ``"blurry"`` or ``"recurring"`` (abrupt changes, segments
        coming back in the order of :func:`~streams.recurring_order`).
    labels : bool
        ``False`` yields inputs only (unlabeled mode).
    root : str or None
        Folder with the files of torchvision's set, required except for ``*-digits``.

    Returns
    -------
    Stream

    Examples
    --------
    >>> stream = make_stream("permuted-digits", n_segments=5, passes=10, seed=1)
    >>> len(stream), stream.change_points, stream.input_shape, stream.n_classes
    (2245, [449, 898, 1347, 1796], (1, 8, 8), 10)
    >>> x, y = next(iter(stream))
    >>> x.dtype, tuple(x.shape), y.dtype
    (torch.float32, (32, 1, 8, 8), torch.int64)
    >>> make_stream("shuffled-digits")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown stream 'shuffled-digits'; allowed: permuted-digits, rotated-digits, ...
    """
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(StreamConfig)})
    if unknown:
        allowed = [f.name for f in dataclasses.fields(StreamConfig) if f.name != "name"]
        raise TypeError(f"make_stream() got unknown options {unknown}; allowed: {allowed}")
    return build_stream(StreamConfig(name, seed=seed, batch_size=batch_size, n_segments=n_segments,
                                     passes=passes, transition=transition, labels=labels,
                                     root=root, **options))


def build_stream(config: StreamConfig) -> Stream:
    """Build the stream a :class:`StreamConfig` describes.

    Examples
    --------
    >>> build_stream(StreamConfig("split-digits-domain")).n_classes
    2
    """
    if not isinstance(config.batch_size, int) or config.batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {config.batch_size!r}")
    source = _source(config)
    if config.validation:  # hyperparameter selection: held-out training data, the test data unused
        source = validation_source(source, config.validation)
    segments = _segments(config, source)
    smallest = min(s.n_train for s in segments)
    if config.batch_size > smallest:
        raise ValueError(f"batch_size must be at most the smallest segment's training data "
                         f"({smallest} samples), got {config.batch_size!r}")
    schedule = make_schedule([s.n_train for s in segments], batch_size=config.batch_size,
                             passes=config.passes, transition=config.transition,
                             order=config.order, random_lengths=config.random_lengths,
                             window=config.window, share=config.share, seed=config.seed)
    return Stream(segments, schedule, batch_size=config.batch_size, seed=config.seed,
                  labels=config.labels, flatten=config.flatten, max_eval=config.max_eval,
                  name=config.name)


def _source(config: StreamConfig) -> Source:
    if config.data == "digits":
        return digits_source(test_fraction=config.test_fraction)
    if config.data == "mnist1d":
        return mnist1d_source()
    if config.root is None:
        raise ValueError(f"{config.name} reads {config.data} from disk: pass root= (the folder "
                         f"given to torchvision); only the *-digits and *-mnist1d streams work without files")
    return torchvision_source(config.data, config.root, download=config.download,
                              verify=config.verify)


def _segments(config: StreamConfig, source: Source) -> list[Segment]:
    k = config.segment_count(source.n_classes)
    if config.recipe == "permuted":
        return permutations(source, k, seed=config.seed, identity_first=config.identity_first)
    if config.recipe == "rotated":
        return rotations(source, [i * config.angle_step for i in range(k)])
    if config.recipe == "corrupted":
        step = config.max_severity / (k - 1) if k > 1 else 0.0
        return corruptions(source, [i * step for i in range(k)], kind=config.corruption)
    if config.recipe == "split-domain" and len(source.classes) % k:
        raise ValueError(f"{config.name} needs n_segments dividing the {len(source.classes)} "
                         f"classes into equal groups, got {k}")
    return class_splits(source, k, labels="domain" if config.recipe == "split-domain" else "class")
