"""Checkpoints that never run code and are never half-written.

:func:`save` writes to a temporary file in the same folder, flushes and fsyncs it, then renames it
over the target (``os.replace`` is atomic on POSIX and Windows): a crash or a full disk leaves the
previous checkpoint intact. :func:`load` reads with ``torch.load(weights_only=True)``, so a file that
would run code on unpickling is refused, and checks the format version.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

__all__ = ["CheckpointError", "load", "save"]

FORMAT = "online-mas-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted, unsafe or from another format version."""


def save(obj: dict[str, object], path: str | os.PathLike[str]) -> Path:
    """Atomically write ``obj`` (tensors and primitives only) to ``path``.

    A ``"format"`` and ``"format_version"`` key are added. The data is serialised in memory first,
    so an object that cannot be saved never touches the disk.

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
    buf = io.BytesIO()
    torch.save({**obj, "format": FORMAT, "format_version": FORMAT_VERSION}, buf)
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
        The file is missing, truncated or corrupted, holds objects other than tensors and
        primitives (a pickle that would run code is refused before anything runs), or has another
        format or version.
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
    return obj


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
