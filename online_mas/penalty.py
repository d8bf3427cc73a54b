"""The MAS quadratic penalty, in three forms.

``lam * sum_k Omega_k (theta_k - theta*_k)^2`` (Aljundi et al., ECCV 2018, eq. 3) holds important
parameters near the anchor ``theta*``.

- :func:`penalty`: a differentiable loss term, to add to the task loss before ``backward()``.
- :func:`penalty_grad_`: adds its gradient ``2 * lam * Omega * (theta - theta*)`` to ``.grad`` in
  place with ``torch._foreach`` ops and no autograd graph (the original MAS code's "Elastic SGD"
  idea). Call it after ``backward()`` and before ``optimizer.step()``.
- :func:`proximal_`: the implicit (proximal) step for the penalty, applied to the parameters after
  ``optimizer.step()`` on the task loss: the exact minimiser of
  ``||theta - v||^2 / (2 lr) + lam * Omega (theta - theta*)^2``, i.e.
  ``theta = (v + 2 lr lam Omega theta*) / (1 + 2 lr lam Omega)``. Unlike the explicit gradient it
  cannot overshoot, whatever ``lam * Omega * lr``.

All three take parallel lists (parameters, anchors, importances) so they stay pure; ``OnlineMAS``
keeps the lists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["penalty", "penalty_grad_", "proximal_"]


def check_lam(lam: object) -> float:
    """Validate a penalty strength: a finite real number >= 0."""
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    return float(lam)


def penalty(
    params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor], lam: float
) -> Tensor:
    """Differentiable ``lam * sum_k Omega_k (theta_k - theta*_k)^2``, as a float32 scalar.

    Examples
    --------
    >>> import torch
    >>> p = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> penalty([p], [torch.tensor([0.0, 2.0])], [torch.tensor([3.0, 5.0])], lam=0.5)
    tensor(1.5000, grad_fn=<MulBackward0>)
    """
    lam = check_lam(lam)
    _check_lists(params, anchors, omegas)
    if not params:
        return torch.zeros(())
    total = torch.zeros((), device=params[0].device)
    for p, a, o in zip(params, anchors, omegas, strict=True):
        total = total + (o * (p.float() - a.float()).pow(2)).sum().to(total.device)
    return total * lam


@torch.no_grad()
def penalty_grad_(
    params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor], lam: float
) -> None:
    """Add ``2 * lam * Omega * (theta - theta*)`` to every ``param.grad`` in place.

    A parameter whose ``.grad`` is ``None`` gets the penalty gradient as its ``.grad``. No autograd
    graph is built. Parameters are grouped by dtype and device so each group is one ``_foreach`` call.

    Examples
    --------
    >>> import torch
    >>> p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    >>> penalty_grad_([p], [torch.tensor([0.0, 0.0])], [torch.tensor([3.0, 5.0])], lam=0.5)
    >>> p.grad.tolist()
    [3.0, 10.0]
    """
    lam = check_lam(lam)
    for group in _groups(params, anchors, omegas):
        ps, anc, om = group
        for p in ps:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        diff = torch._foreach_sub(ps, anc)
        torch._foreach_mul_(diff, om)
        torch._foreach_add_([p.grad for p in ps], diff, alpha=2.0 * lam)  # type: ignore[misc]


@torch.no_grad()
def proximal_(
    params: Sequence[Tensor],
    anchors: Sequence[Tensor],
    omegas: Sequence[Tensor],
    lam: float,
    lr: float,
) -> None:
    """Proximal step for the penalty: ``theta <- (theta + c Omega theta*) / (1 + c Omega)``, ``c = 2 lr lam``.

    Examples
    --------
    >>> import torch
    >>> p = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    >>> proximal_([p], [torch.tensor([0.0, 0.0])], [torch.tensor([0.0, 1e6])], lam=1.0, lr=0.1)
    >>> p.data
    tensor([1.0000e+00, 5.0000e-06])
    """
    lam = check_lam(lam)
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    c = 2.0 * lr * lam
    for ps, anc, om in _groups(params, anchors, omegas):
        scaled = torch._foreach_mul(om, c)  # c * Omega
        num = torch._foreach_mul(scaled, anc)
        torch._foreach_add_(num, ps)  # theta + c Omega theta*
        torch._foreach_add_(scaled, 1.0)  # 1 + c Omega
        torch._foreach_div_(num, scaled)
        torch._foreach_copy_(ps, num)


def _check_lists(params: object, anchors: object, omegas: object) -> None:
    """Parallel sequences of tensors of matching shapes (a few microseconds per call)."""
    for name, seq in (("params", params), ("anchors", anchors), ("omegas", omegas)):
        if not isinstance(seq, list | tuple) or not all(isinstance(t, Tensor) for t in seq):
            raise TypeError(f"{name} must be a list or tuple of tensors, got {seq!r}"[:300])
    if not len(params) == len(anchors) == len(omegas):  # type: ignore[arg-type]
        raise ValueError(
            f"params, anchors and omegas must have the same length, got {len(params)}, "  # type: ignore[arg-type]
            f"{len(anchors)}, {len(omegas)}"  # type: ignore[arg-type]
        )
    for i, (p, a, o) in enumerate(zip(params, anchors, omegas, strict=True)):  # type: ignore[call-overload]
        if p.shape != a.shape or p.shape != o.shape:
            raise ValueError(
                f"entry {i}: parameter, anchor and omega shapes differ: {tuple(p.shape)}, "
                f"{tuple(a.shape)}, {tuple(o.shape)}"
            )
        if not (p.is_floating_point() and a.is_floating_point() and o.is_floating_point()):
            raise TypeError(f"entry {i}: parameter, anchor and omega must be floating point, got "
                            f"{p.dtype}, {a.dtype}, {o.dtype}")


def _groups(
    params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor]
) -> list[tuple[list[Tensor], list[Tensor], list[Tensor]]]:
    """Split into groups of one dtype and device; omegas are cast to the parameter dtype."""
    _check_lists(params, anchors, omegas)
    groups: dict[tuple[torch.dtype, torch.device], tuple[list[Tensor], list[Tensor], list[Tensor]]]
    groups = {}
    for p, a, o in zip(params, anchors, omegas, strict=True):
        g = groups.setdefault((p.dtype, p.device), ([], [], []))
        g[0].append(p)
        g[1].append(a if a.dtype == p.dtype else a.to(p.dtype))
        g[2].append(o if o.dtype == p.dtype else o.to(p.dtype))
    return list(groups.values())
