"""Checkpoints that never run code, are never half-written and are checked for corruption.

:func:`save` writes to a temporary file in the same folder, flushes and fsyncs it, then renames it
over the target (``os.replace`` is atomic on POSIX and Windows): a crash or a full disk leaves the
previous checkpoint intact. The file carries a SHA-256 digest of its contents (every tensor's dtype,
shape and bytes, every primitive value and the structure around them), written in the same atomic
write. :func:`load` reads with ``torch.load(weights_only=True)``, so a file that would run code on
unpickling is refused, checks the format version and recomputes the digest: a flipped bit anywhere
in the payload raises :class:`CheckpointError` naming the file, and the file is left as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "digest", "load", "save"]

FORMAT = "online-mas-checkpoint"
FORMAT_VERSION = 2  # 2: with a "checksum" entry (version 1 files had none)
_RESERVED = ("format", "format_version", "checksum")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted, unsafe or from another format version."""


def save(obj: dict[str, object], path: str | os.PathLike[str]) -> Path:
    """Atomically write ``obj`` (tensors and primitives only) to ``path``.

    A ``"format"``, ``"format_version"`` and ``"checksum"`` (SHA-256 of the contents) key are added
    (those of a loaded checkpoint passed back in are replaced). The data is serialised in memory
    first, so an object that cannot be saved never touches the disk.

    Examples
    --------
    >>> import tempfile, torch
    >>> from online_mas import checkpoint
    >>> folder = tempfile.mkdtemp()
    >>> p = checkpoint.save({"w": torch.ones(2)}, f"{folder}/ckpt.pt")
    >>> checkpoint.load(p)["w"]
    tensor([1., 1.])
    """
    if not isinstance(obj, dict):
        raise TypeError(f"a checkpoint must be a dict, got {type(obj)!r}")
    target = Path(path)
    payload = {k: v for k, v in obj.items() if k not in _RESERVED}
    buf = io.BytesIO()
    torch.save({**payload, "format": FORMAT, "format_version": FORMAT_VERSION,
                "checksum": digest(payload)}, buf)
    data = buf.getbuffer()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)
    return target


def load(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> dict[str, object]:
    """Read a checkpoint written by :func:`save` with ``torch.load(weights_only=True)``.

    Raises
    ------
    CheckpointError
        The file is missing, truncated or corrupted (its contents do not match the checksum
        stored with them), holds objects other than tensors and primitives (a pickle that would run
        code is refused before anything runs), or has another format or version.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no checkpoint file at {str(p)!r}")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {str(p)!r}: it holds objects other than tensors and primitive "
            f"values, which could run code (weights_only=True rejected it: {_first_line(err)})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(
            f"{str(p)!r} is not a readable checkpoint (truncated or corrupted?): {_first_line(err)}"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{str(p)!r} is not an online-mas checkpoint")
    if obj.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(p)!r} has checkpoint format version {obj.get('format_version')!r}; this "
            f"online-mas reads version {FORMAT_VERSION}"
        )
    payload = {k: v for k, v in obj.items() if k not in _RESERVED}
    try:
        actual = digest(payload)
    except TypeError as err:
        raise CheckpointError(f"{str(p)!r} holds a value that no checkpoint holds: {err}") from None
    if obj.get("checksum") != actual:
        raise CheckpointError(
            f"{str(p)!r} is corrupted: its contents do not match the SHA-256 checksum stored with "
            f"them (stored {obj.get('checksum')!r}, computed {actual!r}); the file was changed "
            "after it was written (a disk error, or an edit)"
        )
    return payload | {"format": FORMAT, "format_version": FORMAT_VERSION}


def digest(obj: object) -> str:
    """SHA-256 (hex) of a checkpoint's contents: tensors (dtype, shape, bytes), primitives, containers.

    Equal contents give equal digests whatever the tensors' strides or devices; a changed bit, key,
    dtype or shape gives another.

    Examples
    --------
    >>> import torch
    >>> digest({"w": torch.zeros(2)}) == digest({"w": torch.zeros(4)[::2]})
    True
    >>> digest({"w": torch.zeros(2)}) == digest({"w": torch.zeros(2, dtype=torch.float64)})
    False
    """
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: object) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}:".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    elif obj is None or isinstance(obj, bool | int | float | str | bytes):
        h.update(f"{type(obj).__name__}:{len(repr(obj))}:{obj!r}".encode("utf-8", "surrogatepass"))
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}:".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, list | tuple):
        h.update(f"{type(obj).__name__[0]}{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, set | frozenset):
        _feed(h, sorted(obj, key=repr))
    elif isinstance(obj, torch.dtype | torch.device | torch.Size):
        h.update(f"{type(obj).__name__}:{obj!r}".encode())
    else:
        raise TypeError(f"a checkpoint holds tensors and primitive values only, got "
                        f"{type(obj).__name__}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
