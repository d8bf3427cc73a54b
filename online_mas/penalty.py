"""The MAS quadratic penalty, in three forms.

``lam * sum_k Omega_k (theta_k - theta*_k)^2`` (Aljundi et al., ECCV 2018, eq. 3) holds important
parameters near the anchor ``theta*``.

- :func:`penalty_loss`: a differentiable loss term, to add to the task loss before ``backward()``.
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

__all__ = [
    "EXPLICIT_LIMIT", "PENALTY_FORMS", "PROXIMAL_SAFE_ABOVE", "check_lam", "check_lists", "penalty_grad_",
    "penalty_loss", "proximal_",
]

PENALTY_FORMS = ("loss", "grad", "proximal")  # penalty_loss in the loss, penalty_grad_, proximal_
PROXIMAL_SAFE_ABOVE = 1e30  # proximal_ switches to its overflow-safe form when c * max(Omega) is larger
EXPLICIT_LIMIT = 1e38  # 2 lam max(Omega) beyond this overflows float32 in the explicit forms


def check_lam(lam: object) -> float:
    """Validate a penalty strength: a finite real number >= 0."""
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    return float(lam)


def penalty_loss(
    params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor], lam: float,
    *, check: bool = True,
) -> Tensor:
    """Differentiable ``lam * sum_k Omega_k (theta_k - theta*_k)^2``, as a float32 scalar.

    Examples
    --------
    >>> import torch
    >>> p = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> loss = penalty_loss([p], [torch.tensor([0.0, 2.0])], [torch.tensor([3.0, 5.0])], lam=0.5)
    >>> loss.item(), loss.requires_grad
    (1.5, True)
    >>> loss.backward()
    >>> p.grad.tolist()  # 2 * lam * Omega * (theta - theta*)
    [3.0, 0.0]
    """
    if check:  # False: the lists are valid by construction (OnlineMAS)
        lam = check_lam(lam)
        check_lists(params, anchors, omegas)
    return _penalty(params, anchors, omegas, lam)


def _penalty(
    params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor], lam: float
) -> Tensor:
    """:func:`penalty_loss` without the checks, for callers whose lists are valid by construction."""
    if not params:
        return torch.zeros(())
    if any(t.requires_grad for t in (*anchors, *omegas)):
        # differentiate through anchors or importance too: the plain autograd formula
        total = torch.zeros((), device=params[0].device)
        for p, a, o in zip(params, anchors, omegas, strict=True):
            total = total + (o * (p.float() - a.float()).pow(2)).sum().to(total.device)
        return total * lam
    return _Quadratic.apply(lam, len(params), *params, *anchors, *omegas)


class _Quadratic(torch.autograd.Function):
    """``lam * sum_k Omega_k (theta_k - theta*_k)^2`` with its gradient computed in the forward.

    Same value and gradient as the autograd formula with fewer passes over parameter-sized
    tensors: the forward forms ``D_k = 2 lam Omega_k (theta_k - theta*_k)`` (the gradient) and the
    value ``1/2 sum_k <D_k, theta_k - theta*_k>``; the backward hands ``g * D_k`` to autograd
    (``D_k`` itself when ``g == 1``, the usual ``loss.backward()``, on CPU). ``D`` is kept between
    forward and backward, as autograd keeps its own saved tensors. Under ``create_graph=True`` the
    backward recomputes the gradient with differentiable ops, so second derivatives stay correct.
    """

    @staticmethod
    def forward(ctx, lam: float, n: int, *tensors: Tensor) -> Tensor:
        ps, anc, om = tensors[:n], tensors[n : 2 * n], tensors[2 * n :]
        diff = torch._foreach_sub([p.float() for p in ps], [a.float() for a in anc])
        grads = torch._foreach_mul(diff, [o.float() for o in om])
        torch._foreach_mul_(grads, 2.0 * lam)
        device = ps[0].device
        total = torch.zeros((), device=device)
        for gk, d in zip(grads, diff, strict=True):
            total += torch.dot(gk.reshape(-1), d.reshape(-1)).to(device)
        ctx.lam, ctx.n = lam, n
        ctx.save_for_backward(*tensors, *grads)
        return total * 0.5

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:
        n, lam = ctx.n, ctx.lam
        saved = ctx.saved_tensors
        ps, anc, om, grads = saved[:n], saved[n : 2 * n], saved[2 * n : 3 * n], saved[3 * n :]
        if torch.is_grad_enabled():  # create_graph=True: keep the formula differentiable
            out = [
                (2.0 * lam * g.to(p.device) * o * (p.float() - a.float())).to(p.dtype)
                for p, a, o in zip(ps, anc, om, strict=True)
            ]
        else:
            if not (g.device.type == "cpu" and float(g) == 1.0):  # no device sync on accelerators
                grads = tuple(torch._foreach_mul(list(grads), g))
            out = [gk if gk.dtype == p.dtype else gk.to(p.dtype) for gk, p in zip(grads, ps, strict=True)]
        return (None, None, *out, *([None] * (2 * n)))


@torch.no_grad()
def penalty_grad_(
    params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor], lam: float,
    *, check: bool = True,
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
    if check:
        lam = check_lam(lam)
        check_lists(params, anchors, omegas)
    _penalty_grad(params, anchors, omegas, lam)


def _penalty_grad(
    params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor], lam: float
) -> None:
    """:func:`penalty_grad_` without the checks (``torch.no_grad`` is the caller's)."""
    for ps, anc, om in _groups(params, anchors, omegas):
        for p in ps:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        diff = torch._foreach_sub(ps, anc)
        torch._foreach_addcmul_([p.grad for p in ps], diff, om, value=2.0 * lam)  # type: ignore[misc]


@torch.no_grad()
def proximal_(
    params: Sequence[Tensor],
    anchors: Sequence[Tensor],
    omegas: Sequence[Tensor],
    lam: float,
    lr: float,
    *,
    check: bool = True,
    safe: bool | None = None,
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
    if check:
        lam = check_lam(lam)
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        check_lists(params, anchors, omegas)
    if safe is None:  # the overflow-safe form once c * max(Omega) nears float range
        peak = max((float(o.max()) for o in omegas if o.numel()), default=0.0)
        safe = not 2.0 * lr * lam * peak < PROXIMAL_SAFE_ABOVE
    _proximal(params, anchors, omegas, lam, lr, safe)


def _proximal(
    params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor], lam: float,
    lr: float, safe: bool = False,
) -> None:
    """:func:`proximal_` without the checks (``torch.no_grad`` is the caller's). ``safe`` computes
    ``theta* + (theta - theta*) / (1 + c Omega)``, the same value, which stays finite when
    ``c Omega`` overflows (it then gives ``theta*``)."""
    c = 2.0 * lr * lam
    for ps, anc, om in _groups(params, anchors, omegas):
        scaled = torch._foreach_mul(om, c)  # c * Omega
        if safe:
            torch._foreach_add_(scaled, 1.0)  # 1 + c Omega, possibly inf
            diff = torch._foreach_sub(ps, anc)
            torch._foreach_div_(diff, scaled)
            torch._foreach_add_(diff, anc)
            torch._foreach_copy_(ps, diff)
            continue
        num = torch._foreach_mul(scaled, anc)
        torch._foreach_add_(num, ps)  # theta + c Omega theta*
        torch._foreach_add_(scaled, 1.0)  # 1 + c Omega
        torch._foreach_div_(num, scaled)
        torch._foreach_copy_(ps, num)


def check_lists(params: object, anchors: object, omegas: object) -> None:
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
    groups: dict[tuple[torch.dtype, torch.device], tuple[list[Tensor], list[Tensor], list[Tensor]]]
    groups = {}
    for p, a, o in zip(params, anchors, omegas, strict=True):
        g = groups.setdefault((p.dtype, p.device), ([], [], []))
        g[0].append(p)
        g[1].append(a if a.dtype == p.dtype else a.to(p.dtype))
        g[2].append(o if o.dtype == p.dtype else o.to(p.dtype))
    return list(groups.values())

