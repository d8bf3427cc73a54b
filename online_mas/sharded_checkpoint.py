"""Checkpoints of sharded state with ``torch.distributed.checkpoint`` (DCP).

:func:`save_sharded` writes a nested state (dicts and lists of tensors and primitives, such as
``OnlineMAS.state_dict()`` of a model sharded with FSDP2) to a checkpoint directory: every
DTensor goes through DCP, each rank writing its own shard; everything else (primitives and plain
tensors: steps, detector state, generator) is serialised with ``torch.save`` and stored as one
byte tensor, written once and read back with ``torch.load(weights_only=True)``.

:func:`load_sharded` reads it back for a model on any number of ranks: each saved DTensor is laid
out like the parameter whose name is in its path (``("running", "mean", "fc.weight")`` ->
``fc.weight``), sharded like it on this run's mesh or whole in a single process; DCP reads just
the pieces each rank needs. Every rank calls both functions together (collectives), with the same
path (a filesystem all ranks see).

Examples
--------
>>> import tempfile, torch
>>> from torch import nn
>>> import online_mas as om
>>> model = nn.Linear(3, 2)
>>> mas = om.OnlineMAS(model, detector=None, config=om.MASConfig(share=1.0))
>>> _ = mas.observe(torch.ones(4, 3)); _ = mas.consolidate()
>>> with tempfile.TemporaryDirectory() as d:
...     save_sharded(mas.state_dict(), d + "/mas")
...     state = load_sharded(d + "/mas", model)
>>> again = om.OnlineMAS(model, detector=None); again.load_state_dict(state)
>>> torch.equal(again.omega["weight"], mas.omega["weight"])
True
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from online_mas.distributed import world
from online_mas.sharded import is_sharded

__all__ = ["load_sharded", "save_sharded"]

_REST = "__rest__"  # the DCP key of the serialised non-sharded part
_MARK = "__sharded__"  # stands in the serialised part for a tensor stored through DCP
_FORMAT = 1


def save_sharded(state: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``state`` to the checkpoint directory ``path`` (replaced if it exists) on every rank.

    Rank 0's non-sharded part is the one written (it is broadcast first, so ranks that differ in
    it, e.g. each rank's own ``HardBuffer``, all save rank 0's). The directory appears whole:
    it is written under a temporary name and renamed by rank 0 once every rank has finished.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    target = Path(path)
    rank, size, _ = world()
    tensors: dict[str, Tensor] = {}
    rest = _split(dict(state), (), tensors)
    buf = io.BytesIO()
    torch.save({"format": _FORMAT, "state": rest}, buf)
    data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    if size > 1:  # every rank writes rank 0's bytes: DCP may pick any rank to write a plain tensor
        box: list[Any] = [data]
        dist.broadcast_object_list(box, src=0)
        data = box[0]
    tmp = target.with_name(f".{target.name}.tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier(size)
    import torch.distributed.checkpoint as dcp

    with _quiet():
        dcp.save({**tensors, _REST: data}, checkpoint_id=str(tmp), no_dist=size == 1)
    _barrier(size)
    if rank == 0:
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    _barrier(size)


def load_sharded(path: str | os.PathLike[str], model: nn.Module | Mapping[str, Tensor]) -> dict[str, Any]:
    """The state :func:`save_sharded` wrote, laid out for ``model`` (its parameters by name, or
    the module) on this run's ranks: a saved DTensor whose path names a parameter of the same
    shape comes back sharded like that parameter (a DTensor parameter) or whole (a plain one);
    one that names none comes back whole.

    Raises
    ------
    FileNotFoundError
        ``path`` is not a checkpoint directory written by :func:`save_sharded`.
    """
    import torch.distributed.checkpoint as dcp

    target = Path(path)
    if not (target / ".metadata").is_file():
        raise FileNotFoundError(f"{target} is not a sharded checkpoint directory (no .metadata)")
    params = dict(model.named_parameters()) if isinstance(model, nn.Module) else dict(model)
    size = world()[1]
    meta = dcp.FileSystemReader(str(target)).read_metadata().state_dict_metadata
    if _REST not in meta:
        raise FileNotFoundError(f"{target} was not written by save_sharded (no {_REST!r} entry)")
    template: dict[str, Tensor] = {}
    for key, item in meta.items():
        shape = getattr(item, "size", None)
        props = getattr(item, "properties", None)
        if shape is None or props is None:
            raise ValueError(f"{target}: entry {key!r} is not a tensor; not written by save_sharded")
        like = _layout(key, tuple(shape), params)
        if like is not None and is_sharded(like):
            template[key] = torch.zeros_like(like, dtype=props.dtype)
        else:
            device = like.device if like is not None else torch.device("cpu")
            template[key] = torch.zeros(tuple(shape), dtype=props.dtype, device=device)
    with _quiet():
        dcp.load(template, checkpoint_id=str(target), no_dist=size == 1)
    saved = torch.load(io.BytesIO(template.pop(_REST).numpy().tobytes()), weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
        raise ValueError(f"{target}: unsupported sharded checkpoint format")
    return _join(saved["state"], (), template)


def _split(obj: Any, path: tuple[str, ...], out: dict[str, Tensor]) -> Any:
    """``obj`` with its DTensors moved to ``out`` (keyed by their path), marks in their place."""
    if is_sharded(obj):
        key = "/".join(path)
        out[key] = obj
        return _MARK
    if isinstance(obj, dict):
        bad = [k for k in obj if not isinstance(k, str) or "/" in k]
        if any(is_sharded(v) for v in obj.values()) and bad:
            raise ValueError(f"keys over sharded tensors must be str without '/', got {bad}")
        return {k: _split(v, (*path, str(k)), out) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        items = [_split(v, (*path, str(i)), out) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    return obj


def _join(obj: Any, path: tuple[str, ...], tensors: Mapping[str, Tensor]) -> Any:
    if isinstance(obj, str) and obj == _MARK:
        return tensors["/".join(path)]
    if isinstance(obj, dict):
        return {k: _join(v, (*path, str(k)), tensors) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        items = [_join(v, (*path, str(i)), tensors) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    return obj


def _layout(key: str, shape: tuple[int, ...], params: Mapping[str, Tensor]) -> Tensor | None:
    """The parameter named in the key's path (the innermost one) if it has the saved shape."""
    for part in reversed(key.split("/")):
        p = params.get(part)
        if p is not None:
            return p if tuple(p.shape) == shape else None
    return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DCP warns that a single process saves or loads alone even when told so (``no_dist``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _barrier(size: int) -> None:
    if size > 1:
        dist.barrier()
