"""Model inputs that are not one tensor: a tuple (positional arguments) or a dict (keyword
arguments) of tensors, each with the batch dimension first.

Every per-sample operation of the estimators goes through these functions, so a model called as
``model(x)``, ``model(*x)`` or ``model(**x)`` is estimated the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Inputs", "batch_size", "call", "check_inputs", "describe", "is_same", "rows", "select",
           "split", "unsqueeze"]

Inputs = Tensor | tuple[Tensor, ...] | dict[str, Tensor]
"""One tensor, a tuple of tensors (``model(*x)``) or a dict of tensors (``model(**x)``)."""


def _leaves(x: Any) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, tuple):
        return list(x)
    return list(x.values())


def _map(x: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, tuple):
        return tuple(fn(t) for t in x)
    return {k: fn(t) for k, t in x.items()}


def check_inputs(x: object, *, finite: bool = True) -> None:
    """TypeError/ValueError for what is not a batch; NonFiniteError (``finite``) for nan or inf.

    A plain tensor must be floating point or integer; in a tuple or dict, bool tensors (masks) are
    allowed too. Every tensor has the same batch size, first.
    """
    from online_mas.estimators.common import NonFiniteError
    from online_mas.estimators.common import finite as all_finite

    structured = isinstance(x, tuple | Mapping)
    if not isinstance(x, Tensor) and not structured:
        raise TypeError("x must be a torch.Tensor, a tuple or a dict of tensors with the batch dimension "
                        f"first, got {type(x)!r}")
    if isinstance(x, Mapping) and not all(isinstance(k, str) for k in x):
        raise TypeError(f"a dict x must have str keys (keyword arguments), got {list(x)!r}")
    leaves = _leaves(x)
    bad = [type(t).__name__ for t in leaves if not isinstance(t, Tensor)]
    if bad or not leaves:
        raise TypeError(f"every entry of x must be a tensor, got {bad or 'none'}")
    for t in leaves:
        if t.is_complex() or (t.dtype == torch.bool and not structured):
            raise TypeError(f"x must have a floating point or integer dtype, got {t.dtype}")
        if t.dim() == 0 or t.shape[0] == 0:
            raise ValueError(f"x must be a non-empty batch (batch dimension first), got shape {describe(x)}")
    if len({t.shape[0] for t in leaves}) > 1:
        raise ValueError(f"every tensor of x must have the same batch size first, got {describe(x)}")
    if finite and not all(all_finite(t) for t in leaves if t.is_floating_point()):
        raise NonFiniteError("x contains non-finite values (nan or inf)")


def batch_size(x: Inputs) -> int:
    return int(_leaves(x)[0].shape[0])


def describe(x: object) -> str:
    """Shapes, for error messages."""
    if isinstance(x, Tensor):
        return str(tuple(x.shape))
    if isinstance(x, tuple):
        return str(tuple(tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in x))
    if isinstance(x, Mapping):
        return str({k: tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for k, t in x.items()})
    return type(x).__name__


def call(model: nn.Module, x: Inputs) -> Any:
    """``model(x)``, ``model(*x)`` or ``model(**x)``."""
    if isinstance(x, Tensor):
        return model(x)
    if isinstance(x, tuple):
        return model(*x)
    return model(**x)


def split(x: Inputs, chunk: int) -> list[Inputs]:
    """Chunks of at most ``chunk`` samples."""
    if isinstance(x, Tensor):
        return list(x.split(chunk))
    n = batch_size(x)
    return [rows(x, i, min(n, i + chunk)) for i in range(0, n, chunk)]


def rows(x: Inputs, start: int, stop: int) -> Inputs:
    return _map(x, lambda t: t[start:stop])


def select(x: Inputs, idx: Tensor) -> Inputs:
    """The samples at ``idx``."""
    return _map(x, lambda t: t[idx.to(t.device)])


def unsqueeze(x: Inputs) -> Inputs:
    """One sample as a batch of one."""
    return _map(x, lambda t: t.unsqueeze(0))


def is_same(x: Inputs, args: tuple[object, ...], kwargs: Mapping[str, object]) -> bool:
    """Whether a forward called with ``(args, kwargs)`` got this very ``x`` (identity, not value)."""
    if isinstance(x, Tensor):
        return bool(args) and args[0] is x
    if isinstance(x, tuple):
        return len(args) == len(x) and all(a is b for a, b in zip(args, x, strict=True))
    return not args and kwargs.keys() == x.keys() and all(kwargs[k] is x[k] for k in x)
