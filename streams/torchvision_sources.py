"""Image sets read from a local folder: MNIST-family and SVHN files through torchvision's classes,
the CIFAR pickles with a restricted unpickler of our own.

The files must already be on disk (or ``download=True`` on a machine with internet). The arrays are
wrapped without conversion: uint8 pixels are scaled to ``[0, 1]`` one batch at a time. The official
test split is the held-out pool.

The CIFAR files are Python pickles, and a plain unpickler runs whatever code a pickle names. They
are therefore never read with one, checksum verified or not: :func:`load_array_pickle` admits only
numpy arrays, numpy scalars and plain containers (dicts, lists, tuples, strings, numbers), and
refuses anything else before it runs. With ``verify=True`` (the default) the files' md5 sums must
also be the official ones; ``verify=False`` warns. A file that cannot be read (garbage, truncated,
the wrong format) is a ``ValueError`` naming it.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from streams.sources import Source, TensorPool

__all__ = ["TORCHVISION_NAMES", "expected_files", "load_array_pickle", "torchvision_source"]


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
        Check the files' md5 sums against the official ones (CIFAR, SVHN). ``False`` loads files
        that differ (re-packed or cut-down copies), with a warning; CIFAR pickles are read with
        :func:`load_array_pickle` either way, so a pickle that would run code is refused.

    Returns
    -------
    Source
        Train pool from the official training split, held-out pool from the official test split;
        inputs ``(C, H, W)`` in ``[0, 1]``.

    Raises
    ------
    ValueError
        Unknown name, missing files (the message names them and how to get them), files whose
        checksums differ while ``verify=True``, or a file that cannot be read (garbage, truncated,
        a pickle naming anything but numpy arrays and plain containers); the message names it.

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
    if not verify and spec.cls_name in ("CIFAR10", "CIFAR100", "SVHN"):
        how = (" (a restricted unpickler: numpy arrays and plain containers only)"
               if spec.cls_name != "SVHN" else "")
        warnings.warn(f"{name}: verify=False: the files under {os.fspath(root)!r} are NOT checked "
                      f"against the official md5 checksums; they are read as they are{how}",
                      UserWarning, stacklevel=2)
    if spec.cls_name in ("CIFAR10", "CIFAR100"):
        if download and missing:
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(cls.url, os.fspath(root), filename=cls.filename,
                                         md5=cls.tgz_md5)
        train, test = _cifar(name, cls, os.path.join(os.fspath(root), spec.folder), verify=verify)
        return Source(train, test, spec.n_classes, name)
    if spec.cls_name == "SVHN":
        if not verify:
            cls = _unverified(cls)
        parts = []
        for split, path in zip(("train", "test"), paths, strict=True):
            try:
                parts.append(cls(os.fspath(root), split=split, download=download))
            except RuntimeError as err:
                raise ValueError(_checksum_message(name, root, err)) from err
            except Exception as err:  # scipy's MatReadError, ValueError, OSError, ...
                raise ValueError(f"{name}: {path} is not a readable SVHN .mat file "
                                 f"({type(err).__name__}: {err})") from None
    else:  # the MNIST family: IDX files; torchvision asserts on a bad header
        if not download:
            for path in paths:
                _check_idx(path)
        try:
            parts = [cls(os.fspath(root), train=t, download=download) for t in (True, False)]
        except Exception as err:
            raise ValueError(f"{name}: torchvision could not read the IDX files {', '.join(paths)} "
                             f"({type(err).__name__}: {err})") from None
    train, test = (_pool(ds) for ds in parts)
    return Source(train, test, spec.n_classes, name)


def _checksum_message(name: str, root: str | os.PathLike[str], err: object) -> str:
    return (f"{name}: torchvision could not load the files under {os.fspath(root)!r} ({err}). They "
            f"exist, so their md5 checksums probably differ from the official ones: re-copy the "
            f"official files, or pass verify=False to load them as they are")


def _check_idx(path: str) -> None:
    """An IDX file (MNIST family): magic ``0x0000 08 <ndim>``, ``ndim`` big-endian sizes, uint8s."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
        if len(head) < 4 or head[:3] != b"\x00\x00\x08" or not 1 <= head[3] <= 4:
            raise ValueError(f"{path} is not an IDX file of uint8 (it starts with {head!r}, not "
                             "b'\\x00\\x00\\x08' and a dimension count 1-4): re-copy it")
        dims = fh.read(4 * head[3])
    if len(dims) < 4 * head[3]:
        raise ValueError(f"{path} is truncated: its IDX header is cut short; re-copy it")
    shape = struct.unpack(f">{head[3]}I", dims)
    want = 4 + 4 * head[3] + int(np.prod(shape, dtype=np.int64))
    if size != want:
        raise ValueError(f"{path} has {size} bytes, but its IDX header {list(shape)} says {want}: "
                         "truncated or corrupted; re-copy it")


# --------------------------------------------------------------------------- CIFAR pickles

_PICKLE_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
})


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which is not a numpy array or "
                                         "a plain container (refused before anything ran)")
        return super().find_class(module, name)


def load_array_pickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle a file that may hold only numpy arrays, numpy scalars and plain containers.

    Any other global (a function to call, a class to build) is refused before it is looked up, so
    a pickle written to run code (``os.system``, ``eval``, ...) runs nothing.

    Raises
    ------
    ValueError
        The file is not such a pickle (garbage, truncated, or naming anything else); the message
        names it.

    Examples
    --------
    >>> import os, pickle, tempfile, numpy as np
    >>> p = os.path.join(tempfile.mkdtemp(), "batch")
    >>> with open(p, "wb") as fh:
    ...     pickle.dump({"data": np.arange(3, dtype=np.uint8), "labels": [1, 2, 3]}, fh)
    >>> load_array_pickle(p)["data"]
    array([0, 1, 2], dtype=uint8)
    >>> with open(p, "wb") as fh:
    ...     pickle.dump(print, fh)
    >>> load_array_pickle(p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: .../batch is not a pickle of numpy arrays and plain containers: it names builtins.print, ...
    """
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core in old pickles
            return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as err:  # UnpicklingError, EOFError, ValueError, TypeError, ...
        raise ValueError(f"{os.fspath(path)} is not a pickle of numpy arrays and plain containers: "
                         f"{err or type(err).__name__}") from None


def _cifar(name: str, cls: Any, folder: str, *, verify: bool) -> tuple[TensorPool, TensorPool]:
    """The CIFAR train and test pools, read like torchvision does but with :func:`load_array_pickle`."""
    files = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    if verify:
        from torchvision.datasets.utils import check_integrity

        bad = [os.path.join(folder, f) for f, md5 in files
               if not check_integrity(os.path.join(folder, f), md5)]
        if bad:
            raise ValueError(f"{name}: the md5 checksums of {', '.join(bad)} differ from the official "
                             "ones: re-copy the official files, or pass verify=False to load them as "
                             "they are")
    k = _spec(name).n_classes
    pools = []
    for part in (cls.train_list, cls.test_list):
        xs, ys = [], []
        for f, _ in part:
            path = os.path.join(folder, f)
            entry = load_array_pickle(path)
            labels = entry.get("labels", entry.get("fine_labels")) if isinstance(entry, dict) else None
            x = entry.get("data") if isinstance(entry, dict) else None
            if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 \
                    or x.shape[1] != 3072 or not isinstance(labels, list) or len(labels) != len(x) \
                    or not all(isinstance(v, int) and 0 <= v < k for v in labels):
                raise ValueError(f"{path} is not a CIFAR batch: expected a dict with 'data' (uint8, "
                                 f"N x 3072) and N labels in [0, {k})")
            xs.append(x)
            ys.extend(labels)
        pools.append(TensorPool(torch.from_numpy(np.vstack(xs).reshape(-1, 3, 32, 32)),
                                torch.as_tensor(ys, dtype=torch.int64)))
    meta_path = os.path.join(folder, cls.meta["filename"])
    meta = load_array_pickle(meta_path)
    if not isinstance(meta, dict) or cls.meta["key"] not in meta:
        raise ValueError(f"{meta_path} is not CIFAR metadata: no {cls.meta['key']!r} entry")
    return pools[0], pools[1]


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise ValueError(f"unknown torchvision dataset {name!r}; allowed: {', '.join(_SPECS)}")
    return _SPECS[name]


def _pool(ds: Any) -> TensorPool:
    data = ds.data
    x: Tensor = data if isinstance(data, Tensor) else torch.from_numpy(np.asarray(data))
    if x.dim() == 3:  # MNIST family: (N, H, W); SVHN is (N, C, H, W) already
        x = x.unsqueeze(1)
    labels = ds.labels if hasattr(ds, "labels") else ds.targets  # SVHN keeps .labels
    y = labels if isinstance(labels, Tensor) else torch.as_tensor(np.asarray(labels))
    return TensorPool(x, y)


def _unverified(cls: Any) -> Any:
    """A subclass of torchvision's SVHN class with its md5 sums removed (same loading code)."""
    attrs: dict[str, Any] = {"__doc__": f"{cls.__name__} without checksum verification."}
    if hasattr(cls, "split_list"):  # SVHN
        attrs["split_list"] = {k: [u, f, None] for k, (u, f, _) in cls.split_list.items()}
    return type(cls.__name__, (cls,), attrs)
