"""Checkpoints are atomic, load only tensors and primitives, and name what is wrong."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from online_mas import checkpoint


def test_round_trip(tmp_path: Path) -> None:
    p = checkpoint.save({"w": torch.arange(3.0), "step": 7}, tmp_path / "c.pt")
    got = checkpoint.load(p)
    assert torch.equal(got["w"], torch.arange(3.0)) and got["step"] == 7  # type: ignore[arg-type]
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.makedirs, (str(_Payload.marker),))

    marker = Path()


def test_a_pickle_that_runs_code_is_refused_without_running(tmp_path: Path) -> None:
    _Payload.marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "x": _Payload()}, evil)  # full pickle, not weights
    with pytest.raises(checkpoint.CheckpointError, match="could run code"):
        checkpoint.load(evil)
    assert not _Payload.marker.exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(raw)
    assert not _Payload.marker.exists()


def test_truncated_file_gives_a_clear_error_and_keeps_the_previous(tmp_path: Path) -> None:
    good = checkpoint.save({"w": torch.ones(100)}, tmp_path / "c.pt")
    data = good.read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupted"):
        checkpoint.load(broken)
    assert torch.equal(checkpoint.load(good)["w"], torch.ones(100))  # type: ignore[arg-type]


def test_a_write_that_fails_part_way_leaves_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = checkpoint.save({"w": torch.zeros(4)}, tmp_path / "c.pt")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save({"w": torch.ones(4)}, target)
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(target)["w"], torch.zeros(4))  # type: ignore[arg-type]
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]


def test_other_formats_and_versions_are_named(tmp_path: Path) -> None:
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint file"):
        checkpoint.load(tmp_path / "missing.pt")
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(1)}, plain)
    with pytest.raises(checkpoint.CheckpointError, match="not an online-mas checkpoint"):
        checkpoint.load(plain)
    future = tmp_path / "future.pt"
    torch.save({"format": checkpoint.FORMAT, "format_version": 99}, future)
    with pytest.raises(checkpoint.CheckpointError, match="format version 99"):
        checkpoint.load(future)
    with pytest.raises(TypeError, match="must be a dict"):
        checkpoint.save([1, 2], tmp_path / "x.pt")  # type: ignore[arg-type]


def _flip_high_byte(path: Path, values: torch.Tensor) -> None:
    """XOR the high byte of the first float of ``values`` where it is stored in ``path``."""
    data = bytearray(path.read_bytes())
    at = bytes(data).find(values.contiguous().numpy().tobytes())
    assert at >= 0, "the tensor's bytes are stored uncompressed in the zip"
    data[at + values.element_size() - 1] ^= 0x40  # little endian: the sign/exponent byte
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_stored_float_is_refused_naming_the_file(tmp_path: Path) -> None:
    w = torch.linspace(0.1, 0.9, 9)
    p = checkpoint.save({"w": w, "step": 3}, tmp_path / "c.pt")
    _flip_high_byte(p, w)
    assert not torch.equal(torch.load(p, weights_only=True)["w"], w)  # torch itself accepts it
    damaged = p.read_bytes()
    with pytest.raises(checkpoint.CheckpointError,
                       match=rf"'{p}' is corrupted: its contents do not match the SHA-256"):
        checkpoint.load(p)
    assert p.read_bytes() == damaged  # the file is kept as it is


def test_a_changed_primitive_is_refused(tmp_path: Path) -> None:
    p = checkpoint.save({"w": torch.ones(2), "step": 3}, tmp_path / "c.pt")
    state = torch.load(p, weights_only=True)
    torch.save({**state, "step": 4}, p)  # a valid file, but not what was written
    with pytest.raises(checkpoint.CheckpointError, match="is corrupted"):
        checkpoint.load(p)


def test_digest_covers_values_dtypes_shapes_and_structure() -> None:
    base = checkpoint.digest({"w": torch.zeros(2, 3), "n": 1, "t": (1, 2)})
    assert base == checkpoint.digest({"w": torch.zeros(3, 2).t(), "n": 1, "t": (1, 2)})  # strides
    others = [{"w": torch.zeros(3, 2), "n": 1, "t": (1, 2)}, {"w": torch.zeros(2, 3), "n": 1.0, "t": (1, 2)},
              {"w": torch.zeros(2, 3), "n": 1, "t": [1, 2]}, {"v": torch.zeros(2, 3), "n": 1, "t": (1, 2)},
              {"w": torch.zeros(2, 3, dtype=torch.float16), "n": 1, "t": (1, 2)}]
    assert len({base, *(checkpoint.digest(o) for o in others)}) == 1 + len(others)
    with pytest.raises(TypeError, match="tensors and primitive values only, got object"):
        checkpoint.digest({"x": object()})
