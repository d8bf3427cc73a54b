"""Image sets read from a local folder through torchvision's own dataset classes.

The files must already be on disk (or ``download=True`` on a machine with internet). The arrays that
torchvision loads are wrapped without conversion: uint8 pixels are scaled to ``[0, 1]`` one batch at
a time. The official test split is the held-out pool.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from streams.sources import Source, TensorPool

__all__ = ["TORCHVISION_NAMES", "expected_files", "torchvision_source"]


@dataclass(frozen=True)
class _Spec:
    cls_name: str  # class in torchvision.datasets
    folder: str  # folder under root that holds the files ("" for root itself)
    files: tuple[str, ...]  # files torchvision reads
    n_classes: int
    archive: str  # what to copy by hand, for the error message


_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_SPECS: dict[str, _Spec] = {
    "mnist": _Spec("MNIST", "MNIST/raw", _IDX, 10, "the four MNIST IDX files, uncompressed"),
    "fashion-mnist": _Spec("FashionMNIST", "FashionMNIST/raw", _IDX, 10,
                           "the four Fashion-MNIST IDX files, uncompressed"),
    "kmnist": _Spec("KMNIST", "KMNIST/raw", _IDX, 10, "the four Kuzushiji-MNIST IDX files, "
                    "uncompressed"),
    "cifar10": _Spec("CIFAR10", "cifar-10-batches-py",
                     (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"), 10,
                     "cifar-10-python.tar.gz, extracted"),
    "cifar100": _Spec("CIFAR100", "cifar-100-python", ("train", "test", "meta"), 100,
                      "cifar-100-python.tar.gz, extracted"),
    "svhn": _Spec("SVHN", "", ("train_32x32.mat", "test_32x32.mat"), 10,
                  "train_32x32.mat and test_32x32.mat (cropped digits)"),
}

#: Names accepted by :func:`torchvision_source`.
TORCHVISION_NAMES: tuple[str, ...] = tuple(_SPECS)


def expected_files(name: str, root: str | os.PathLike[str]) -> list[str]:
    """Paths that torchvision reads for dataset ``name`` under ``root``.

    Examples
    --------
    >>> expected_files("cifar100", "data")
    ['data/cifar-100-python/train', 'data/cifar-100-python/test', 'data/cifar-100-python/meta']
    """
    spec = _spec(name)
    return [os.path.join(os.fspath(root), spec.folder, f) if spec.folder
            else os.path.join(os.fspath(root), f) for f in spec.files]


def torchvision_source(name: str, root: str | os.PathLike[str], *, download: bool = False,
                       verify: bool = True) -> Source:
    """Load MNIST, FashionMNIST, KMNIST, CIFAR10, CIFAR100 or SVHN from ``root``.

    Parameters
    ----------
    name : str
        One of :data:`TORCHVISION_NAMES`.
    root : str or path
        The folder given to torchvision's class as ``root``, e.g. ``root/MNIST/raw/...``,
        ``root/cifar-10-batches-py/...``, ``root/train_32x32.mat``.
    download : bool
        Passed through to torchvision (needs internet).
    verify : bool
        Check the files' md5 sums as torchvision does (CIFAR, SVHN). ``False`` loads files that
        differ from the official ones (re-packed or cut-down copies) with the same classes.

    Returns
    -------
    Source
        Train pool from the official training split, held-out pool from the official test split;
        inputs ``(C, H, W)`` in ``[0, 1]``.

    Raises
    ------
    ValueError
        Unknown name, missing files (the message names them and how to get them), or files whose
        checksums differ while ``verify=True``.

    Examples
    --------
    >>> torchvision_source("mnist", "/nonexistent")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: mnist: missing files under '/nonexistent': /nonexistent/MNIST/raw/train-images...
    """
    spec = _spec(name)
    paths = expected_files(name, root)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing and not download:
        raise ValueError(
            f"{name}: missing files under {os.fspath(root)!r}: {', '.join(missing)}. Expected "
            f"{', '.join(paths)}. Get them with download=True on a machine with internet "
            f"(torchvision.datasets.{spec.cls_name}(root, download=True)), or copy {spec.archive} "
            f"into {os.path.join(os.fspath(root), spec.folder)!r}")
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.cls_name)
    if not verify:
        cls = _unverified(cls)
    try:
        if spec.cls_name == "SVHN":
            parts = [cls(os.fspath(root), split=s, download=download) for s in ("train", "test")]
        else:
            parts = [cls(os.fspath(root), train=t, download=download) for t in (True, False)]
    except RuntimeError as err:
        raise ValueError(
            f"{name}: torchvision could not load the files under {os.fspath(root)!r} ({err}). They "
            f"exist, so their md5 checksums probably differ from the official ones: re-copy the "
            f"official files, or pass verify=False to load them as they are") from err
    train, test = (_pool(ds) for ds in parts)
    return Source(train, test, spec.n_classes, name)


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise ValueError(f"unknown torchvision dataset {name!r}; allowed: {', '.join(_SPECS)}")
    return _SPECS[name]


def _pool(ds: Any) -> TensorPool:
    data = ds.data
    x: Tensor = data if isinstance(data, Tensor) else torch.from_numpy(np.asarray(data))
    if x.dim() == 3:  # MNIST family: (N, H, W)
        x = x.unsqueeze(1)
    elif x.shape[-1] == 3:  # CIFAR: (N, H, W, C)
        x = x.permute(0, 3, 1, 2)
    labels = ds.labels if hasattr(ds, "labels") else ds.targets  # SVHN keeps .labels
    y = labels if isinstance(labels, Tensor) else torch.as_tensor(np.asarray(labels))
    return TensorPool(x, y)


def _unverified(cls: Any) -> Any:
    """A subclass of a torchvision dataset class with its md5 sums removed (same loading code)."""
    attrs: dict[str, Any] = {"__doc__": f"{cls.__name__} without checksum verification."}
    if hasattr(cls, "train_list"):  # CIFAR10 / CIFAR100
        attrs["train_list"] = [[f, None] for f, _ in cls.train_list]
        attrs["test_list"] = [[f, None] for f, _ in cls.test_list]
        attrs["meta"] = {**cls.meta, "md5": None}
    if hasattr(cls, "split_list"):  # SVHN
        attrs["split_list"] = {k: [u, f, None] for k, (u, f, _) in cls.split_list.items()}
    return type(cls.__name__, (cls,), attrs)
