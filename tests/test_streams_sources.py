"""Sources: digits split, tensors, datasets, torchvision's classes on tiny files in real formats."""

from __future__ import annotations

import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

import streams
from streams import (
    dataset_source,
    digits_source,
    expected_files,
    make_stream,
    stratified_split,
    tensor_source,
    torchvision_source,
)

N_TRAIN, N_TEST = 30, 20


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) in the IDX format of the MNIST files: big-endian header, bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


@pytest.fixture(scope="module")
def streams_tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MNIST-family IDX files, CIFAR-10/100 pickles and SVHN .mat files, tiny, in real formats."""
    root = tmp_path_factory.mktemp("tv")
    rng = np.random.default_rng(0)
    for folder in ("MNIST", "FashionMNIST", "KMNIST"):
        for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
            _write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte",
                       _images(rng, n, (28, 28)))
            _write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte",
                       np.arange(n, dtype=np.uint8) % 10)
    c10 = root / "cifar-10-batches-py"
    c10.mkdir()
    for i in range(1, 6):
        batch = {"data": _images(rng, 6, (3072,)), "labels": [(i + j) % 10 for j in range(6)]}
        (c10 / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    (c10 / "test_batch").write_bytes(pickle.dumps(
        {"data": _images(rng, N_TEST, (3072,)), "labels": [j % 10 for j in range(N_TEST)]}))
    (c10 / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    c100 = root / "cifar-100-python"
    c100.mkdir()
    for part, n in (("train", 200), ("test", 100)):
        (c100 / part).write_bytes(pickle.dumps(
            {"data": _images(rng, n, (3072,)), "fine_labels": [j % 100 for j in range(n)],
             "coarse_labels": [j % 20 for j in range(n)]}))
    (c100 / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"f{i}" for i in range(100)]}))
    from scipy.io import savemat

    for part, n in (("train", N_TRAIN), ("test", N_TEST)):
        # SVHN stores (H, W, C, N) and labels 1..10, with 10 meaning the digit 0
        savemat(root / f"{part}_32x32.mat",
                {"X": _images(rng, n, (32, 32, 3)).transpose(1, 2, 3, 0),
                 "y": (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)})
    return root


def test_digits_split_is_disjoint_stratified_and_fixed() -> None:
    src = digits_source()
    assert (len(src.train), len(src.test)) == (1438, 359)
    assert src.input_shape == (1, 8, 8) and src.n_classes == 10
    x = src.train.fetch(torch.arange(len(src.train)))
    assert x.dtype == torch.float32 and float(x.min()) == 0.0 and float(x.max()) == 1.0
    from sklearn.datasets import load_digits

    y = torch.from_numpy(load_digits().target)
    tr, te = stratified_split(y, 0.2, seed=0)
    assert set(tr.tolist()).isdisjoint(te.tolist())
    assert sorted(tr.tolist() + te.tolist()) == list(range(1797))
    share = te.numel() and (torch.bincount(y[te]) / torch.bincount(y)).tolist()
    assert all(abs(s - 0.2) < 0.01 for s in share)
    assert torch.equal(src.test.y, digits_source().test.y)  # same split every time


def test_tensor_source_keeps_given_test_split_and_scales_uint8() -> None:
    x = torch.arange(24, dtype=torch.uint8).view(6, 4) * 10
    src = tensor_source(x, [0, 1, 2, 0, 1, 2], x_test=x[:3], y_test=[0, 1, 2], n_classes=5)
    assert len(src.train) == 6 and len(src.test) == 3 and src.n_classes == 5
    assert torch.allclose(src.train.fetch(torch.tensor([1])), x[1:2].float() / 255)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"x": torch.zeros(4, 2), "y": [0, 1, 0]}, ValueError, "same length"),
    ({"x": torch.zeros(4), "y": [0, 1, 0, 1]}, TypeError, r"shape \(N, \*input_shape\)"),
    ({"x": torch.zeros(4, 2), "y": [0.5, 1, 0, 1]}, TypeError, "integer array of labels"),
    ({"x": torch.zeros(4, 2), "y": [0, 1, 0, 1], "n_classes": 1}, ValueError, "n_classes"),
    ({"x": torch.zeros(4, 2), "y": [0, 1, 0, 1], "test_fraction": 1.0}, ValueError,
     "test_fraction"),
    ({"x": torch.zeros(4, 2), "y": [0, 1, 0, 1], "x_test": torch.zeros(2, 2)}, ValueError,
     "both x_test and y_test"),
])
def test_tensor_source_rejects_bad_input(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        tensor_source(**kwargs)


class _PILDigits(Dataset):
    """Items as PIL images with no ``targets`` attribute: labels must be read item by item."""

    def __init__(self, n: int) -> None:
        self.images = [np.full((3, 3), 10 * i, dtype=np.uint8) for i in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i]), i % 2


def test_dataset_source_reads_pil_items_lazily() -> None:
    src = dataset_source(_PILDigits(10), _PILDigits(4))
    assert src.input_shape == (1, 3, 3) and src.n_classes == 2
    assert src.train.y.tolist() == [0, 1] * 5
    x = src.train.fetch(torch.tensor([7, 2]))
    assert torch.allclose(x[:, 0, 0, 0], torch.tensor([70 / 255, 20 / 255]))


def test_dataset_source_holds_out_part_of_a_single_dataset() -> None:
    ds = TensorDataset(torch.arange(40.0).view(20, 2), torch.arange(20) % 4)
    src = dataset_source(ds, test_fraction=0.25)
    assert (len(src.train), len(src.test)) == (15, 5)
    train_rows = src.train.fetch(torch.arange(15))[:, 0].tolist()
    test_rows = src.test.fetch(torch.arange(5))[:, 0].tolist()
    assert sorted(train_rows + test_rows) == [2.0 * i for i in range(20)]


@pytest.mark.parametrize(("name", "shape", "n_train", "n_test"), [
    ("mnist", (1, 28, 28), N_TRAIN, N_TEST),
    ("fashion-mnist", (1, 28, 28), N_TRAIN, N_TEST),
    ("kmnist", (1, 28, 28), N_TRAIN, N_TEST),
])
def test_mnist_family_idx_files_load_through_torchvision(streams_tiny_root: Path, name: str,
                                                         shape: tuple, n_train: int,
                                                         n_test: int) -> None:
    src = torchvision_source(name, streams_tiny_root)
    assert (len(src.train), len(src.test), src.input_shape) == (n_train, n_test, shape)
    folder = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}[name]
    raw = (streams_tiny_root / folder / "raw" / "train-images-idx3-ubyte").read_bytes()
    first = torch.tensor(list(raw[16:16 + 784]), dtype=torch.float32).view(1, 28, 28) / 255
    assert torch.allclose(src.train.fetch(torch.tensor([0]))[0], first)
    assert src.test.y.tolist() == [i % 10 for i in range(n_test)]


def test_cifar_and_svhn_files_load_with_verify_false(streams_tiny_root: Path) -> None:
    with pytest.warns(UserWarning, match=r"cifar10: verify=False: the files under .* are NOT checked"):
        c10 = torchvision_source("cifar10", streams_tiny_root, verify=False)
    assert (len(c10.train), len(c10.test), c10.input_shape) == (30, N_TEST, (3, 32, 32))
    batch = pickle.loads((streams_tiny_root / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    want = torch.from_numpy(batch["data"][2].reshape(3, 32, 32)).float() / 255
    assert torch.allclose(c10.train.fetch(torch.tensor([2]))[0], want)
    assert c10.train.y[:6].tolist() == [1, 2, 3, 4, 5, 6]
    with pytest.warns(UserWarning, match="cifar100: verify=False"):
        c100 = torchvision_source("cifar100", streams_tiny_root, verify=False)
    assert (len(c100.train), c100.n_classes, c100.test.y[:3].tolist()) == (200, 100, [0, 1, 2])
    with pytest.warns(UserWarning, match="svhn: verify=False"):
        svhn = torchvision_source("svhn", streams_tiny_root, verify=False)
    assert (len(svhn.train), svhn.input_shape) == (N_TRAIN, (3, 32, 32))
    assert svhn.train.y[:11].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]  # label 10 -> 0


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_checksum_mismatch_says_how_to_proceed(streams_tiny_root: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"checksums.*verify=False"):
        torchvision_source(name, streams_tiny_root)


@pytest.mark.parametrize("name", streams.TORCHVISION_NAMES)
def test_missing_root_names_the_files_and_how_to_get_them(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="missing files") as err:
        torchvision_source(name, tmp_path / "nowhere")
    message = str(err.value)
    assert all(path in message for path in expected_files(name, tmp_path / "nowhere"))
    assert "download=True" in message and "copy" in message


def test_unknown_torchvision_name_lists_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown torchvision dataset 'imagenet'; allowed: mnist"):
        torchvision_source("imagenet", tmp_path)


def test_named_streams_over_tiny_files(streams_tiny_root: Path) -> None:
    root = os.fspath(streams_tiny_root)
    stream = make_stream("permuted-mnist", root=root, n_segments=2, batch_size=10, passes=2)
    assert len(stream) == 12 and stream.input_shape == (1, 28, 28)
    x, y = stream.batch(7)
    assert x.shape == (10, 1, 28, 28) and y.dtype == torch.int64
    with pytest.warns(UserWarning, match="verify=False"):
        split = make_stream("split-cifar10-domain", root=root, verify=False, batch_size=2)
    assert split.n_classes == 2 and split.eval_sets[4][1].tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="pass root="):
        make_stream("rotated-fashion-mnist")


class _RunsCode:
    """A pickle that calls os.system when a plain unpickler reads it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch '{self.marker}'",))


def _copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(("stream", "folder", "files"), [
    ("permuted-cifar10", "cifar-10-batches-py", ["data_batch_1", "test_batch", "batches.meta"]),
    ("split-cifar100", "cifar-100-python", ["train", "test", "meta"]),
])
def test_a_cifar_pickle_that_runs_code_is_refused_without_running_it(
        streams_tiny_root: Path, tmp_path: Path, stream: str, folder: str, files: list[str]) -> None:
    """Issue 18, item 7: verify=False never hands a file to the plain unpickler."""
    for target in files:
        root = _copy_tree(streams_tiny_root, tmp_path / f"root-{target}")
        marker = tmp_path / f"ran-{target}"
        path = root / folder / target
        path.write_bytes(pickle.dumps({"data": _RunsCode(marker), "labels": [1]}, protocol=2))
        with pytest.warns(UserWarning, match="verify=False"), \
                pytest.raises(ValueError, match=rf"{path} is not a pickle of numpy arrays and plain "
                                                r"containers: it names posix\.system"):
            make_stream(stream, root=os.fspath(root), verify=False)
        assert not marker.exists(), "the pickle's code ran"


@pytest.mark.parametrize(("name", "relative", "damage", "message"), [
    ("mnist", "MNIST/raw/train-images-idx3-ubyte", b"garbage!", "is not an IDX file of uint8"),
    ("mnist", "MNIST/raw/t10k-labels-idx1-ubyte", "truncate", "truncated or corrupted"),
    ("cifar10", "cifar-10-batches-py/data_batch_2", b"\x80\x04garbage", "is not a pickle of numpy"),
    ("cifar10", "cifar-10-batches-py/test_batch", "truncate", "is not a pickle of numpy"),
    ("cifar10", "cifar-10-batches-py/data_batch_1", pickle.dumps({"labels": [1]}), "is not a CIFAR batch"),
    ("cifar100", "cifar-100-python/meta", b"", "is not a pickle of numpy"),
    ("svhn", "test_32x32.mat", b"not a mat file at all", "is not a readable SVHN .mat file"),
    ("svhn", "train_32x32.mat", "mat", "is not a readable SVHN .mat file"),
])
def test_garbage_data_files_name_the_file(streams_tiny_root: Path, tmp_path: Path, name: str,
                                          relative: str, damage: bytes | str, message: str) -> None:
    """Issue 18, item 8: not a raw AssertionError, UnpicklingError, EOFError or MatReadError."""
    root = _copy_tree(streams_tiny_root, tmp_path / "root")
    path = root / relative
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "mat":
        path.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(range(256)) * 3)
    else:
        assert isinstance(damage, bytes)
        path.write_bytes(damage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ValueError, match=message) as err:
            torchvision_source(name, root, verify=False)
    assert str(path) in str(err.value)
