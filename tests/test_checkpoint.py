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
