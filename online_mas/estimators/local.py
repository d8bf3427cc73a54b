"""Local MAS (l-MAS, section 4 of Aljundi et al., ECCV 2018): each layer is judged by its own output.

For a layer ``z = F_l(a; theta_l)`` with its input held fixed::

    Omega_k = 1/N * sum_n | d ||F_l(a_n)||^2 / d theta_k |,   a_n detached

For ``nn.Linear`` this is ``2/N sum_n |z_ni| |a_nj|``, twice the mean Hebbian product of the post-
and pre-synaptic activities; other layers use per-sample ``torch.func`` gradients of the layer alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from online_mas.estimators.common import call_model, forward, kept_parameters, zeros
from online_mas.estimators.inputs import Inputs

__all__ = ["local_sums"]


def local_sums(
    model: nn.Module, named: Mapping[str, Tensor], x: Inputs, chunk: int
) -> tuple[dict[str, Tensor], Tensor]:
    """Each module is judged by the squared norm of its own output, its inputs held fixed."""
    name_of = {id(p): n for n, p in named.items()}
    owners = {m: [name_of[id(p)] for p in m.parameters(recurse=False) if id(p) in name_of]
              for m in model.modules()}
    owners = {m: ns for m, ns in owners.items() if ns}
    records: dict[nn.Module, list[tuple[tuple[object, ...], dict[str, object]]]] = {}

    def hook(m: nn.Module, args: tuple[object, ...], kwargs: dict[str, object], out: object) -> None:
        detach = lambda t: t.detach() if isinstance(t, Tensor) else t  # noqa: E731
        records.setdefault(m, []).append(
            (tuple(detach(t) for t in args), {k: detach(v) for k, v in kwargs.items()})
        )

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in owners]
    try:
        with torch.no_grad():
            out = forward(model, x, call_model)
    finally:
        for h in handles:
            h.remove()
    sums = zeros(named)
    for m, calls in records.items():
        for args, kwargs in calls:
            layer_sums = _module_sums(m, owners[m], named, args, kwargs, chunk)
            for n, s in layer_sums.items():
                sums[n] += s
    return sums, out.detach()


def _module_sums(
    m: nn.Module,
    names: list[str],
    named: Mapping[str, Tensor],
    args: tuple[object, ...],
    kwargs: dict[str, object],
    chunk: int,
) -> dict[str, Tensor]:
    if isinstance(m, nn.Linear) and len(args) == 1 and not kwargs:
        a = args[0]
        if isinstance(a, Tensor) and a.dim() == 2:
            with torch.no_grad():
                z = m(a).float()
            # d||z_n||^2/dW = 2 z_n a_n^T  ->  sum_n |.| = 2 |Z|^T |A|
            res = {"weight": 2 * z.abs().t() @ a.float().abs(), "bias": 2 * z.abs().sum(0)}
            return {n: res[n.rsplit(".", 1)[-1]] for n in names}
    from torch.func import functional_call, grad, vmap

    short = {n: n.rsplit(".", 1)[-1] for n in names}
    params = {short[n]: named[n].detach() for n in names}
    tensors = [i for i, t in enumerate(args) if isinstance(t, Tensor)]
    if not tensors:
        return {}

    def sq_norm(p: dict[str, Tensor], *sample: Tensor) -> Tensor:
        call_args = list(args)
        for i, t in zip(tensors, sample, strict=True):
            call_args[i] = t.unsqueeze(0)
        out = functional_call(m, p, tuple(call_args), dict(kwargs))
        if isinstance(out, tuple):  # e.g. nn.MultiheadAttention returns (output, weights)
            out = out[0]
        return out.float().pow(2).sum()

    batch = [t for t in args if isinstance(t, Tensor)]
    n_samples = batch[0].shape[0]
    per = vmap(grad(sq_norm), in_dims=(None, *([0] * len(batch))))
    sums = {n: torch.zeros(named[n].shape, device=named[n].device) for n in names}
    with kept_parameters(m):
        for start in range(0, n_samples, chunk):
            piece = [t[start : start + chunk] for t in batch]
            grads = per(params, *piece)
            for n in names:
                sums[n] += grads[short[n]].float().abs().sum(0)
    return sums
