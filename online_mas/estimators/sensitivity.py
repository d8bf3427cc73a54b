"""Other label-free per-sample sensitivities, to compare with MAS's gradient of the squared norm.

With ``f_n = f(x_n)`` flattened to ``K`` outputs, the methods sum over samples:

- ``"jacobian"``: ``sum_k |d f_nk / d theta|``, one gradient per output unit (``K`` per sample),
  so outputs of opposite sign cannot cancel; :func:`jacobian_sums`.
- ``"norm"``: ``|d ||f_n||_2 / d theta|``, the unsquared norm (Avalanche's MASPlugin, apart from its
  batch mean); equal to ``|d ||f_n||^2 / d theta| / (2 ||f_n||)``, so it runs on the exact path
  with the output ``f_n / sqrt(2 ||f_n||)`` (its scale detached); :func:`unit_output`.
- ``"fisher"``: ``(d log p_n(y_n) / d theta)^2``, ``p_n = softmax(f_n)``, ``y_n = argmax_k f_nk``:
  the empirical Fisher diagonal under the model's own prediction, no label; :func:`fisher_sums`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from online_mas.estimators.common import OutputFn, forward, kept_parameters, zeros
from online_mas.estimators.func import Wrapped
from online_mas.estimators.inputs import Inputs, split, unsqueeze

__all__ = ["fisher_sums", "jacobian_sums", "norm_output", "unit_output"]

_TINY = 1e-30  # a sample whose output is zero contributes zero to "norm"


def jacobian_sums(
    model: nn.Module, named: Mapping[str, Tensor], x: Inputs, fn: OutputFn, chunk: int
) -> tuple[dict[str, Tensor], Tensor]:
    """``sum_n sum_k |d f_nk / d theta|`` via ``torch.func`` (``vmap`` of ``jacrev``), in chunks of
    ``max(1, chunk // K)`` samples so that at most about ``chunk`` gradients exist at once."""
    from torch.func import functional_call, jacrev, vmap

    with torch.no_grad():
        out = forward(model, x, fn).detach()
    sums = zeros(named)
    if not named:
        return sums, out
    wrapped = Wrapped(model, fn)
    detached = {"model." + n: p.detach() for n, p in named.items()}

    def outputs(p: dict[str, Tensor], xi: Inputs) -> Tensor:
        return functional_call(wrapped, p, (unsqueeze(xi),)).float().reshape(-1)

    per_sample = vmap(jacrev(outputs), in_dims=(None, 0))
    k = max(1, out[0].numel())
    with kept_parameters(model):
        for xc in split(x, max(1, chunk // k)):
            jac = per_sample(detached, xc)  # name -> (samples, K, *shape)
            for n in named:
                sums[n] += jac["model." + n].abs().sum((0, 1))
    return sums, out


def fisher_sums(
    model: nn.Module, named: Mapping[str, Tensor], x: Inputs, fn: OutputFn, chunk: int
) -> tuple[dict[str, Tensor], Tensor]:
    """``sum_n (d max_k log softmax(f_n)_k / d theta)^2`` via ``torch.func``, in chunks."""
    from torch.func import functional_call, grad, vmap

    with torch.no_grad():
        out = forward(model, x, fn).detach()
    sums = zeros(named)
    if not named:
        return sums, out
    wrapped = Wrapped(model, fn)
    detached = {"model." + n: p.detach() for n, p in named.items()}

    def log_prob(p: dict[str, Tensor], xi: Inputs) -> Tensor:
        f = functional_call(wrapped, p, (unsqueeze(xi),)).float().reshape(-1)
        return torch.log_softmax(f, 0).max()  # log p of the predicted class

    per_sample = vmap(grad(log_prob), in_dims=(None, 0))
    with kept_parameters(model):
        for xc in split(x, chunk):
            grads = per_sample(detached, xc)
            for n in named:
                sums[n] += grads["model." + n].float().pow(2).sum(0)
    return sums, out


def unit_output(fn: OutputFn) -> OutputFn:
    """``fn`` rescaled per sample to ``f_n / sqrt(2 ||f_n||)`` (scale detached), whose squared-norm
    gradient is the gradient of ``||f_n||``."""

    def scaled(model: nn.Module, x: Inputs) -> Tensor:
        f = fn(model, x)
        if not isinstance(f, Tensor) or f.dim() == 0:
            return f  # forward() reports it
        norm = f.detach().float().reshape(f.shape[0], -1).norm(dim=1).clamp_min(_TINY)
        return f / (2.0 * norm).sqrt().to(f.dtype).reshape(-1, *([1] * (f.dim() - 1)))

    return scaled


def norm_output(scaled: Tensor) -> Tensor:
    """The output ``f`` back from :func:`unit_output`'s ``g = f / sqrt(2 ||f||)``: ``f = 2 ||g|| g``."""
    norm = scaled.float().reshape(scaled.shape[0], -1).norm(dim=1)
    return (2.0 * norm).to(scaled.dtype).reshape(-1, *([1] * (scaled.dim() - 1))) * scaled
