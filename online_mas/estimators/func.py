"""The reference paths: ``torch.func`` per-sample gradients, a plain loop, and the batch gradient."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from online_mas.estimators.common import OutputFn, forward, kept_parameters, sq_norm_total, zeros
from online_mas.estimators.inputs import Inputs, batch_size, rows, split, unsqueeze

__all__ = ["Wrapped", "batch_sums", "func_sums", "loop_sums"]


class Wrapped(nn.Module):
    """Lets torch.func.functional_call substitute parameters under a custom ``output`` function."""

    def __init__(self, model: nn.Module, fn: OutputFn) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, x: Inputs) -> Tensor:
        return self.fn(self.model, x)


def func_sums(
    model: nn.Module, named: Mapping[str, Tensor], x: Inputs, fn: OutputFn, chunk: int
) -> dict[str, Tensor]:
    """Exact per-sample |grad| summed over the batch for ``named`` via torch.func, in chunks."""
    if not named:
        return {}
    from torch.func import functional_call, grad, vmap

    wrapped = Wrapped(model, fn)
    detached = {"model." + n: p.detach() for n, p in named.items()}

    def sq_norm(p: dict[str, Tensor], xi: Inputs) -> Tensor:
        out = functional_call(wrapped, p, (unsqueeze(xi),))
        return out.float().pow(2).sum()

    per_sample = vmap(grad(sq_norm), in_dims=(None, 0))
    sums = zeros(named)
    try:
        with kept_parameters(model):
            for xc in split(x, chunk):
                grads = per_sample(detached, xc)
                for n in named:
                    sums[n] += grads["model." + n].float().abs().sum(0)
    except (RuntimeError, NotImplementedError) as err:  # data-dependent control flow, in-place ops
        warnings.warn(
            f"torch.func could not vmap this model ({type(err).__name__}: {err}); "
            "falling back to a per-sample loop for the parameters the fast paths do not cover",
            RuntimeWarning,
            stacklevel=4,
        )
        sums, _ = loop_sums(model, named, x, fn)
    return sums


def loop_sums(
    model: nn.Module, named: Mapping[str, Tensor], x: Inputs, fn: OutputFn
) -> tuple[dict[str, Tensor], Tensor]:
    """One sample at a time: the slow, obviously correct reference."""
    sums = zeros(named)
    names, params = list(named), list(named.values())
    outs = []
    for i in range(batch_size(x)):
        out = forward(model, rows(x, i, i + 1), fn)
        outs.append(out.detach())
        grads = torch.autograd.grad(sq_norm_total(out), params, allow_unused=True)
        for name, g in zip(names, grads, strict=True):
            if g is not None:
                sums[name] += g.float().abs()
    return sums, torch.cat(outs)


def batch_sums(
    named: Mapping[str, Tensor], model: nn.Module, x: Inputs, fn: OutputFn
) -> tuple[dict[str, Tensor], Tensor]:
    """``|d sum_n ||f(x_n)||^2 / d theta|``: N times the absolute gradient of the batch mean (the
    original MAS code's approximation, never larger than the exact sum)."""
    out = forward(model, x, fn)
    params = list(named.values())
    grads = torch.autograd.grad(sq_norm_total(out), params, allow_unused=True)
    sums = {
        name: (g.float().abs() if g is not None else torch.zeros_like(p, dtype=torch.float32))
        for (name, p), g in zip(named.items(), grads, strict=True)
    }
    return sums, out.detach()
