"""How many samples go through the estimators at once: a chunk size chosen from a memory budget.

The transient memory of an importance pass grows with the samples it holds at once: the tensors
the forward keeps for the backward (activations), the per-sample gradients that ``torch.func``
forms (parameter-sized, one per sample) and, off the CPU, the per-sample products of the closed
forms (on the CPU they are formed in cache-sized blocks, whatever the chunk). One sample's share
is measured once per model and input shape, by a one-sample forward that counts the bytes
autograd saves for the backward (``torch.autograd.graph.saved_tensors_hooks``); the chunk is the
budget divided by it.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from online_mas.estimators.common import OutputFn, forward
from online_mas.estimators.inputs import Inputs, batch_size, rows

__all__ = ["DEFAULT_MEMORY_BUDGET", "auto_chunk", "check_memory_budget", "sample_bytes"]

DEFAULT_MEMORY_BUDGET = 2**30
"""1 GiB: the default bound on an importance pass's transient memory (``memory_budget=None``)."""

_PER_SAMPLE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], int]] = weakref.WeakKeyDictionary()


def check_memory_budget(memory_budget: int | None) -> int:
    """The budget in bytes (``None``: :data:`DEFAULT_MEMORY_BUDGET`); ValueError unless an int >= 1."""
    if memory_budget is None:
        return DEFAULT_MEMORY_BUDGET
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1:
        raise ValueError(f"memory_budget must be an int >= 1 (bytes) or None, got {memory_budget!r}")
    return memory_budget


def sample_bytes(model: nn.Module, x: Inputs, fn: OutputFn, named: Mapping[str, Tensor], method: str) -> int:
    """Transient bytes one sample of ``x`` costs the pass of ``method`` (measured, then cached).

    Activations: what autograd saves for the backward in a one-sample forward (parameters and
    other tensors shared by all samples not counted) plus the output. ``"vmap"``, ``"jacobian"``
    and ``"fisher"`` add one float32 gradient of every parameter; the closed forms add, off the
    CPU, their largest layer's per-sample product (bounded here by the same parameter size).
    Call in eval mode with gradients enabled.
    """
    leaves = [x] if isinstance(x, Tensor) else list(x if isinstance(x, tuple) else x.values())
    key = (method, id(fn), tuple((tuple(t.shape[1:]), t.dtype, t.device) for t in leaves),
           tuple(named))
    cache = _PER_SAMPLE.setdefault(model, {})
    if key not in cache:
        shared = {p.untyped_storage().data_ptr() for p in model.parameters()}
        shared |= {b.untyped_storage().data_ptr() for b in model.buffers()}
        seen: set[tuple[int, int, int]] = set()
        total = 0

        def pack(t: Tensor) -> Tensor:
            nonlocal total
            ptr = t.untyped_storage().data_ptr()
            ident = (ptr, int(t.storage_offset()), t.numel())
            if ptr not in shared and ident not in seen:
                seen.add(ident)
                total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = forward(model, rows(x, 0, 1), fn)
        total += out.numel() * out.element_size()
        params = sum(p.numel() for p in named.values()) * 4
        if method in ("vmap", "jacobian", "fisher"):
            total += params
        elif method in ("exact", "norm") and not all(p.device.type == "cpu" for p in named.values()):
            total += max((p.numel() * 4 for p in named.values()), default=0)
        cache[key] = max(1, total)
    return cache[key]


def auto_chunk(model: nn.Module, x: Inputs, fn: OutputFn, named: Mapping[str, Tensor], method: str,
               budget: int) -> int:
    """The most samples at once whose transient memory (:func:`sample_bytes`) fits ``budget``
    (at least 1, at most the batch)."""
    n = batch_size(x)
    if n == 1:
        return 1
    return max(1, min(n, budget // sample_bytes(model, x, fn, named, method)))
