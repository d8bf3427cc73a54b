"""Sources: labelled data split into a training pool and a disjoint held-out pool.

A :class:`Source` holds two :class:`Pool` objects. A pool keeps its labels in memory (one int64 per
sample, needed for class splits) and fetches inputs by index, as float32 tensors in ``[0, 1]``, one
batch at a time: nothing is copied per sample, and torchvision's arrays are viewed, not converted.

Four ways to get a source:

- :func:`digits_source`: scikit-learn's bundled 8x8 digits, the offline default;
- :func:`mnist1d_source`: MNIST-1D (Greydanus, 2020), generated locally by the ``mnist1d`` package
  (the ``mnist1d`` extra), 40-step 1-D signals, 10 classes;
- :func:`tensor_source`: arrays or tensors given directly;
- :func:`dataset_source`: any map-style ``torch.utils.data.Dataset``;
- :func:`torchvision_source` (in ``streams/torchvision_sources.py``): MNIST, FashionMNIST, KMNIST,
  CIFAR10, CIFAR100 and SVHN read from a local folder by torchvision's own classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from streams._seeding import numpy_rng

__all__ = ["DatasetPool", "Pool", "Source", "SubsetPool", "TensorPool", "dataset_source", "digits_source",
           "mnist1d_source", "stratified_split", "tensor_source", "validation_source"]


class Pool:
    """Base class of a pool of labelled samples: labels in memory, inputs fetched by index.

    Subclasses set ``y`` (int64 labels, one per sample) and ``input_shape`` and implement
    :meth:`fetch`.
    """

    y: Tensor
    input_shape: tuple[int, ...]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def fetch(self, idx: Tensor) -> Tensor:
        """Return the inputs at positions ``idx`` as float32, shape ``(len(idx), *input_shape)``."""
        raise NotImplementedError


class TensorPool(Pool):
    """A pool over a tensor of inputs, optionally restricted to some of its rows.

    Parameters
    ----------
    x : Tensor
        Inputs, shape ``(N, *input_shape)``, any real dtype. Kept as given (a view is enough).
    y : Tensor
        Integer labels, shape ``(N,)``.
    index : Tensor or None
        Rows of ``x`` that belong to this pool (default: all of them).
    scale : float or None
        Factor applied after conversion to float32; by default uint8 inputs are divided by 255
        and others are kept as they are.

    Examples
    --------
    >>> pool = TensorPool(torch.tensor([[0, 255], [51, 102]], dtype=torch.uint8),
    ...                   torch.tensor([1, 0]))
    >>> len(pool), pool.input_shape, pool.fetch(torch.tensor([1])).tolist()
    (2, (2,), [[0.20000000298023224, 0.4000000059604645]])
    """

    def __init__(self, x: Tensor, y: Tensor, *, index: Tensor | None = None,
                 scale: float | None = None) -> None:
        if not isinstance(x, Tensor) or x.dim() < 2:
            raise TypeError(f"x must be a tensor of shape (N, *input_shape), got {_describe(x)}")
        y = _as_labels(y, "y")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"x and y must have the same length, got {x.shape[0]} and "
                             f"{y.shape[0]}")
        self._x = x
        self._index = None if index is None else torch.as_tensor(index, dtype=torch.int64)
        self.y = y if self._index is None else y[self._index]
        self.input_shape = tuple(int(s) for s in x.shape[1:])
        self._scale = scale
        self._uint8 = x.dtype == torch.uint8

    def fetch(self, idx: Tensor) -> Tensor:
        rows = idx if self._index is None else self._index[idx]
        x = self._x[rows].to(torch.float32)
        if self._scale is not None:
            return x.mul_(self._scale)
        return x.div_(255.0) if self._uint8 else x


class DatasetPool(Pool):
    """A pool over a map-style ``Dataset`` whose items are ``(input, label)`` pairs.

    Inputs may be tensors, numpy arrays or PIL images; uint8 values are scaled to ``[0, 1]``.
    Labels are read once from ``dataset.targets`` when it exists, else by indexing every item.

    Parameters
    ----------
    dataset : Dataset
        The dataset; indexed lazily by :meth:`fetch`.
    index : Tensor or None
        Positions of ``dataset`` that belong to this pool (default: all).

    Examples
    --------
    >>> from torch.utils.data import TensorDataset
    >>> ds = TensorDataset(torch.arange(6.0).view(3, 2), torch.tensor([2, 0, 1]))
    >>> pool = DatasetPool(ds)
    >>> pool.y.tolist(), pool.fetch(torch.tensor([2, 0])).tolist()
    ([2, 0, 1], [[4.0, 5.0], [0.0, 1.0]])
    """

    def __init__(self, dataset: Dataset[Any], *, index: Tensor | None = None) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"dataset must be a map-style Dataset with __len__, got "
                            f"{_describe(dataset)}")
        self._dataset = dataset
        n = len(dataset)
        self._index = (torch.arange(n) if index is None
                       else torch.as_tensor(index, dtype=torch.int64))
        targets = getattr(dataset, "targets", None)
        if targets is not None and len(targets) == n:
            all_y = _as_labels(torch.as_tensor(np.asarray(targets)), "dataset.targets")
            self.y = all_y[self._index]
        else:
            self.y = torch.tensor([int(dataset[int(i)][1]) for i in self._index], dtype=torch.int64)
        if len(self._index) == 0:
            raise ValueError("dataset pool is empty; it needs at least one sample")
        self.input_shape = tuple(_to_float(dataset[int(self._index[0])][0]).shape)

    def fetch(self, idx: Tensor) -> Tensor:
        rows = self._index[idx].tolist()
        return torch.stack([_to_float(self._dataset[i][0]) for i in rows])


class SubsetPool(Pool):
    """Some of another pool's samples, by position.

    Examples
    --------
    >>> pool = SubsetPool(TensorPool(torch.arange(8.0).view(4, 2), torch.tensor([0, 1, 2, 3])),
    ...                   torch.tensor([3, 1]))
    >>> pool.y.tolist(), pool.fetch(torch.tensor([1])).tolist()
    ([3, 1], [[2.0, 3.0]])
    """

    def __init__(self, pool: Pool, index: Tensor) -> None:
        if not isinstance(pool, Pool):
            raise TypeError(f"pool must be a Pool, got {_describe(pool)}")
        self._pool = pool
        self._index = torch.as_tensor(index, dtype=torch.int64)
        if len(self._index) and (int(self._index.min()) < 0 or int(self._index.max()) >= len(pool)):
            raise ValueError(f"index must lie in [0, {len(pool)}), got range "
                             f"[{int(self._index.min())}, {int(self._index.max())}]")
        self.y = pool.y[self._index]
        self.input_shape = pool.input_shape

    def fetch(self, idx: Tensor) -> Tensor:
        return self._pool.fetch(self._index[idx])


@dataclass(frozen=True, eq=False)
class Source:
    """Labelled data as a training pool and a disjoint held-out pool.

    Parameters
    ----------
    train : Pool
        Samples the stream is drawn from.
    test : Pool
        Held-out samples, disjoint from ``train``, for the evaluation sets.
    n_classes : int
        Number of classes; labels lie in ``[0, n_classes)``.
    name : str
        Short name used in segment names and reprs.

    Examples
    --------
    >>> src = digits_source()
    >>> src.name, src.input_shape, src.n_classes, len(src.train), len(src.test)
    ('digits', (1, 8, 8), 10, 1438, 359)
    """

    train: Pool
    test: Pool
    n_classes: int
    name: str = "source"

    def __post_init__(self) -> None:
        if self.train.input_shape != self.test.input_shape:
            raise ValueError(f"train and test inputs differ in shape: {self.train.input_shape} "
                             f"and {self.test.input_shape}")
        for part, pool in (("train", self.train), ("test", self.test)):
            if len(pool) and (int(pool.y.min()) < 0 or int(pool.y.max()) >= self.n_classes):
                raise ValueError(f"{part} labels must lie in [0, {self.n_classes}), got range "
                                 f"[{int(pool.y.min())}, {int(pool.y.max())}]")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 8, 8)``."""
        return self.train.input_shape

    @property
    def classes(self) -> list[int]:
        """Sorted labels present in the training pool."""
        return sorted(int(c) for c in torch.unique(self.train.y))


def digits_source(*, test_fraction: float = 0.2, split_seed: int = 0) -> Source:
    """scikit-learn's bundled digits: 1797 images of 8x8 pixels, scaled from 0..16 to [0, 1].

    A stratified, seeded share ``test_fraction`` of each class is held out. The split does not
    depend on a stream's seed, so evaluation sets are the same across runs.

    Parameters
    ----------
    test_fraction : float
        Held-out share of each class, in ``(0, 1)``.
    split_seed : int
        Seed of the held-out split.

    Returns
    -------
    Source
        Inputs of shape ``(1, 8, 8)``, 10 classes.

    Examples
    --------
    >>> src = digits_source(test_fraction=0.25)
    >>> len(src.train), len(src.test), src.test.y.bincount().tolist()
    (1348, 449, [45, 46, 44, 46, 45, 45, 45, 45, 43, 45])
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(data.target.astype(np.int64))
    return tensor_source(x, y, test_fraction=test_fraction, split_seed=split_seed, name="digits")


def mnist1d_source(*, num_samples: int = 5000, seed: int = 42) -> Source:
    """MNIST-1D (Greydanus, 2020): 1-D signals of 40 steps, 10 classes, generated on this machine.

    The ``mnist1d`` package's own generator (``mnist1d.data.make_dataset``) with its default
    arguments, which give the published data set for ``seed=42``: 4000 training and 1000 held-out
    samples. Nothing is downloaded. The generator seeds numpy's and Python's global random state; it
    is restored afterwards. Inputs are standardised by the training set's mean and standard deviation
    (one number each), so they are not in ``[0, 1]``.

    Parameters
    ----------
    num_samples : int
        Samples generated, 80% of them for training (default 5000, the published size).
    seed : int
        The generator's seed (42: the published set).

    Returns
    -------
    Source
        Inputs of shape ``(1, 40)``, 10 classes.

    Examples
    --------
    >>> src = mnist1d_source()  # doctest: +SKIP
    >>> len(src.train), len(src.test), src.input_shape  # doctest: +SKIP
    (4000, 1000, (1, 40))
    """
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 50:
        raise ValueError(f"num_samples must be an int >= 50, got {num_samples!r}")
    x, y, x_test, y_test = _mnist1d_arrays(num_samples, int(seed))
    mean, std = float(x.mean()), float(x.std())
    norm = [torch.from_numpy(((a - mean) / std).astype(np.float32)).unsqueeze(1) for a in (x, x_test)]
    return tensor_source(norm[0], y, x_test=norm[1], y_test=y_test, n_classes=10, name="mnist1d")


def _mnist1d_arrays(num_samples: int, seed: int) -> tuple[Any, Any, Any, Any]:
    key = (num_samples, seed)
    if key not in _MNIST1D_CACHE:
        import random

        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError as err:
            raise ImportError("the mnist1d streams need the mnist1d package: "
                              "pip install 'online-mas[mnist1d]'") from err
        args = get_dataset_args()
        args.num_samples, args.seed = num_samples, seed
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            data = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        _MNIST1D_CACHE[key] = (np.asarray(data["x"]), np.asarray(data["y"], dtype=np.int64),
                               np.asarray(data["x_test"]), np.asarray(data["y_test"], dtype=np.int64))
    return _MNIST1D_CACHE[key]


_MNIST1D_CACHE: dict[tuple[int, int], tuple[Any, Any, Any, Any]] = {}


def tensor_source(x: Any, y: Any, *, x_test: Any = None, y_test: Any = None,
                  test_fraction: float = 0.2, split_seed: int = 0, n_classes: int | None = None,
                  scale: float | None = None, name: str = "tensors") -> Source:
    """A source from arrays or tensors given directly.

    Without ``x_test``/``y_test``, a stratified share ``test_fraction`` of ``(x, y)`` is held out.

    Parameters
    ----------
    x, y : array-like
        Inputs ``(N, *input_shape)`` and integer labels ``(N,)``.
    x_test, y_test : array-like or None
        Held-out data; both or neither.
    test_fraction : float
        Held-out share of each class when no held-out data is given, in ``(0, 1)``.
    split_seed : int
        Seed of that split.
    n_classes : int or None
        Number of classes (default: largest label + 1).
    scale : float or None
        Factor applied to inputs after conversion to float32 (default ``1/255`` for uint8, else 1).
    name : str
        Short name.

    Examples
    --------
    >>> x = torch.rand(40, 3)
    >>> y = torch.arange(40) % 4
    >>> src = tensor_source(x, y, test_fraction=0.25)
    >>> len(src.train), len(src.test), src.n_classes, src.test.y.bincount().tolist()
    (30, 10, 4, [3, 3, 2, 2])
    """
    x_t, y_t = _as_inputs(x, "x"), _as_labels(y, "y")
    if (x_test is None) != (y_test is None):
        raise ValueError("give both x_test and y_test, or neither")
    if x_test is None:
        train_idx, test_idx = stratified_split(y_t, test_fraction, seed=split_seed)
        train: Pool = TensorPool(x_t, y_t, index=train_idx, scale=scale)
        test: Pool = TensorPool(x_t, y_t, index=test_idx, scale=scale)
    else:
        train = TensorPool(x_t, y_t, scale=scale)
        test = TensorPool(_as_inputs(x_test, "x_test"), _as_labels(y_test, "y_test"), scale=scale)
    return Source(train, test, _n_classes(n_classes, train, test), name)


def dataset_source(train: Dataset[Any], test: Dataset[Any] | None = None, *,
                   test_fraction: float = 0.2, split_seed: int = 0, n_classes: int | None = None,
                   name: str = "dataset") -> Source:
    """A source from any map-style torch ``Dataset`` of ``(input, label)`` items.

    Without ``test``, a stratified share ``test_fraction`` of ``train`` is held out.

    Examples
    --------
    >>> from torch.utils.data import TensorDataset
    >>> ds = TensorDataset(torch.rand(20, 1, 2, 2), torch.arange(20) % 2)
    >>> src = dataset_source(ds, test_fraction=0.2)
    >>> len(src.train), len(src.test), src.input_shape, src.n_classes
    (16, 4, (1, 2, 2), 2)
    """
    if test is None:
        full = DatasetPool(train)
        train_idx, test_idx = stratified_split(full.y, test_fraction, seed=split_seed)
        train_pool = DatasetPool(train, index=train_idx)
        test_pool = DatasetPool(train, index=test_idx)
    else:
        train_pool, test_pool = DatasetPool(train), DatasetPool(test)
    return Source(train_pool, test_pool, _n_classes(n_classes, train_pool, test_pool), name)


def validation_source(source: Source, fraction: float, *, seed: int = 1) -> Source:
    """A source for choosing hyperparameters: its training pool split into training and validation.

    A stratified share ``fraction`` of each class of ``source.train`` becomes the held-out pool (the
    evaluation sets), the rest the training pool; ``source.test`` is not used at all, so nothing
    chosen on this source has seen the reported test data. The split is seeded by ``seed`` only
    (not by a stream's seed): the validation images are the same for every run.

    Examples
    --------
    >>> src = validation_source(digits_source(), 0.2)
    >>> len(src.train), len(src.test), src.name
    (1150, 288, 'digits-validation')
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be a number strictly between 0 and 1, got {fraction!r}")
    train_idx, val_idx = stratified_split(source.train.y, float(fraction), seed=seed)
    return Source(SubsetPool(source.train, train_idx), SubsetPool(source.train, val_idx),
                  source.n_classes, f"{source.name}-validation")


def stratified_split(y: Tensor, test_fraction: float, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split positions ``0..len(y)-1`` into sorted train and test indices, per class.

    ``round(test_fraction * N)`` samples go to the test side, shared among the classes in
    proportion to their sizes (largest remainders first; never all of a class).

    Examples
    --------
    >>> tr, te = stratified_split(torch.tensor([0, 0, 0, 0, 1, 1]), 0.5, seed=1)
    >>> tr.tolist(), te.tolist()
    ([1, 3, 4], [0, 2, 5])
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    rng = numpy_rng(seed)
    labels = y.numpy()
    classes, counts = np.unique(labels, return_counts=True)
    quota = test_fraction * counts
    n_test = np.floor(quota).astype(np.int64)
    extra = round(test_fraction * len(labels)) - int(n_test.sum())
    n_test[np.argsort(-(quota - n_test), kind="stable")[:extra]] += 1
    n_test = np.minimum(n_test, counts - 1)
    test_parts = [rng.permutation(np.flatnonzero(labels == c))[:n]
                  for c, n in zip(classes, n_test, strict=True)]
    test = np.sort(np.concatenate(test_parts)) if test_parts else np.zeros(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return torch.from_numpy(train.astype(np.int64)), torch.from_numpy(test.astype(np.int64))


def _n_classes(n_classes: int | None, *pools: Pool) -> int:
    largest = max(int(p.y.max()) for p in pools if len(p)) + 1
    if n_classes is None:
        return largest
    if not isinstance(n_classes, int) or n_classes < largest:
        raise ValueError(f"n_classes must be an int >= largest label + 1 = {largest}, "
                         f"got {n_classes!r}")
    return n_classes


def _describe(obj: object) -> str:
    shape = getattr(obj, "shape", None)
    return f"{type(obj).__name__} of shape {tuple(shape)}" if shape is not None else repr(obj)[:80]


def _as_inputs(x: Any, what: str) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.dim() < 2 or not (t.is_floating_point() or t.dtype == torch.uint8):
        raise TypeError(f"{what} must be a float or uint8 array of shape (N, *input_shape), "
                        f"got {_describe(x)} with dtype {t.dtype}")
    return t


def _as_labels(y: Any, what: str) -> Tensor:
    t = y if isinstance(y, Tensor) else torch.as_tensor(np.asarray(y))
    if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{what} must be a 1-d integer array of labels, got {_describe(y)} "
                        f"with dtype {t.dtype}")
    return t.to(torch.int64)


def _to_float(item: Any) -> Tensor:
    if isinstance(item, Tensor):
        t = item
    elif isinstance(item, np.ndarray):
        t = torch.from_numpy(item)
    elif hasattr(item, "getbands"):  # a PIL image
        from torchvision.transforms.functional import pil_to_tensor

        t = pil_to_tensor(item)
    else:
        raise TypeError(f"dataset inputs must be tensors, arrays or PIL images, got "
                        f"{_describe(item)}")
    return t.to(torch.float32) / 255.0 if t.dtype == torch.uint8 else t.to(torch.float32)
