"""Penalties with a bounded gradient, beside MAS's quadratic one: L1 and Huber, in three forms.

With ``d = theta - theta*`` and ``c = lr * lam * Omega``:

- L1: ``lam * sum_k Omega_k |d_k|``; gradient ``lam Omega sign(d)``; proximal step the
  soft-threshold ``theta <- theta* + sign(d) max(|d| - c, 0)``.
- Huber (threshold ``delta``): ``lam * sum_k Omega_k h(d_k)``, ``h(d) = d^2`` for ``|d| <= delta``,
  ``2 delta |d| - delta^2`` beyond (the quadratic inside, its tangent outside); gradient
  ``2 lam Omega clamp(d, -delta, delta)``; proximal step ``theta <- theta* + d / (1 + 2c)`` for
  ``|d| <= delta (1 + 2c)``, else ``theta <- theta - 2 c delta sign(d)``.

The gradient of both is at most ``lam Omega`` (L1) or ``2 lam Omega delta`` (Huber) in size, so an
explicit SGD step moves a parameter by at most ``lr`` times that, whatever its distance from the
anchor. Same parallel lists as :mod:`online_mas.penalty`; :data:`PENALTY_SHAPES` names the three penalties.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from online_mas.penalty import check_lam, check_lists

__all__ = [
    "PENALTY_SHAPES", "check_delta", "huber_grad_", "huber_loss", "huber_proximal_", "l1_grad_", "l1_loss",
    "l1_proximal_",
]

PENALTY_SHAPES = ("quadratic", "l1", "huber")  # lam Omega d^2 (penalty.py), lam Omega |d|, lam Omega h(d)


def check_delta(delta: object) -> float:
    """Validate a Huber threshold: a finite real number > 0."""
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not math.isfinite(delta) \
            or delta <= 0:
        raise ValueError(f"delta must be a finite number > 0, got {delta!r}")
    return float(delta)


def _check_lr(lr: object) -> float:
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    return float(lr)


def l1_loss(
    params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor], lam: float,
    *, check: bool = True,
) -> Tensor:
    """Differentiable ``lam * sum_k Omega_k |theta_k - theta*_k|``, a float32 scalar.

    Examples
    --------
    >>> import torch
    >>> p = torch.tensor([1.0, 2.0, -1.0], requires_grad=True)
    >>> loss = l1_loss([p], [torch.tensor([0.0, 2.0, 1.0])], [torch.tensor([3.0, 5.0, 1.0])], lam=0.5)
    >>> loss.item()
    2.5
    >>> loss.backward(); p.grad.tolist()  # lam * Omega * sign(theta - theta*)
    [1.5, 0.0, -0.5]
    """
    if check:
        lam = check_lam(lam)
        check_lists(params, anchors, omegas)
    total = torch.zeros((), device=params[0].device if params else None)
    for p, a, o in zip(params, anchors, omegas, strict=True):
        total = total + (o.float() * (p.float() - a.float()).abs()).sum()
    return total * lam


def huber_loss(
    params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor], lam: float,
    *, delta: float, check: bool = True,
) -> Tensor:
    """Differentiable ``lam * sum_k Omega_k h(theta_k - theta*_k)``, ``h(d) = d^2`` for
    ``|d| <= delta``, else ``2 delta |d| - delta^2``; a float32 scalar.

    Examples
    --------
    >>> import torch
    >>> p = torch.tensor([0.5, 3.0], requires_grad=True)
    >>> loss = huber_loss([p], [torch.zeros(2)], [torch.ones(2)], lam=1.0, delta=1.0)
    >>> loss.item()  # 0.5^2 + (2 * 3 - 1)
    5.25
    >>> loss.backward(); p.grad.tolist()  # 2 lam Omega clamp(d, -delta, delta)
    [1.0, 2.0]
    """
    if check:
        lam = check_lam(lam)
        delta = check_delta(delta)
        check_lists(params, anchors, omegas)
    total = torch.zeros((), device=params[0].device if params else None)
    for p, a, o in zip(params, anchors, omegas, strict=True):
        d = (p.float() - a.float()).abs()
        h = torch.where(d <= delta, d * d, 2.0 * delta * d - delta * delta)
        total = total + (o.float() * h).sum()
    return total * lam


@torch.no_grad()
def l1_grad_(
    params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor], lam: float,
    *, check: bool = True,
) -> None:
    """Add ``lam * Omega * sign(theta - theta*)`` to every ``param.grad`` in place (``None``: set).

    Examples
    --------
    >>> import torch
    >>> p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> l1_grad_([p], [torch.zeros(2)], [torch.tensor([3.0, 5.0])], lam=0.5)
    >>> p.grad.tolist()
    [1.5, -2.5]
    """
    if check:
        lam = check_lam(lam)
        check_lists(params, anchors, omegas)
    for p, a, o in zip(params, anchors, omegas, strict=True):
        g = (p - a.to(p.dtype)).sign_().mul_(o.to(p.dtype)).mul_(lam)
        p.grad = g if p.grad is None else p.grad.add_(g)


@torch.no_grad()
def huber_grad_(
    params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor], lam: float,
    *, delta: float, check: bool = True,
) -> None:
    """Add ``2 lam Omega clamp(theta - theta*, -delta, delta)`` to every ``param.grad`` in place.

    Examples
    --------
    >>> import torch
    >>> p = torch.nn.Parameter(torch.tensor([0.5, -3.0]))
    >>> huber_grad_([p], [torch.zeros(2)], [torch.ones(2)], lam=1.0, delta=1.0)
    >>> p.grad.tolist()
    [1.0, -2.0]
    """
    if check:
        lam = check_lam(lam)
        delta = check_delta(delta)
        check_lists(params, anchors, omegas)
    for p, a, o in zip(params, anchors, omegas, strict=True):
        g = (p - a.to(p.dtype)).clamp_(-delta, delta).mul_(o.to(p.dtype)).mul_(2.0 * lam)
        p.grad = g if p.grad is None else p.grad.add_(g)


@torch.no_grad()
def l1_proximal_(
    params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor], lam: float,
    lr: float, *, check: bool = True,
) -> None:
    """Soft-threshold toward the anchor: ``theta <- theta* + sign(d) max(|d| - lr lam Omega, 0)``.

    Examples
    --------
    >>> import torch
    >>> p = torch.nn.Parameter(torch.tensor([1.0, 0.05, -1.0]))
    >>> l1_proximal_([p], [torch.zeros(3)], [torch.ones(3)], lam=1.0, lr=0.1)
    >>> [round(v, 4) for v in p.tolist()]
    [0.9, 0.0, -0.9]
    """
    if check:
        lam = check_lam(lam)
        lr = _check_lr(lr)
        check_lists(params, anchors, omegas)
    for p, a, o in zip(params, anchors, omegas, strict=True):
        a = a.to(p.dtype)
        d = p - a
        shrunk = (d.abs() - o.to(p.dtype) * (lr * lam)).clamp_(min=0.0)
        p.copy_(a + d.sign() * shrunk)


@torch.no_grad()
def huber_proximal_(
    params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor], lam: float,
    lr: float, *, delta: float, check: bool = True,
) -> None:
    """Proximal step of the Huber penalty, ``c = lr lam Omega``: ``theta <- theta* + d / (1 + 2c)``
    where ``|d| <= delta (1 + 2c)``, else ``theta <- theta - 2 c delta sign(d)``.

    Examples
    --------
    >>> import torch
    >>> p = torch.nn.Parameter(torch.tensor([0.3, 5.0]))
    >>> huber_proximal_([p], [torch.zeros(2)], [torch.ones(2)], lam=1.0, lr=1.0, delta=1.0)
    >>> [round(v, 4) for v in p.tolist()]  # 0.3 / 3, and 5 - 2
    [0.1, 3.0]
    """
    if check:
        lam = check_lam(lam)
        lr = _check_lr(lr)
        delta = check_delta(delta)
        check_lists(params, anchors, omegas)
    for p, a, o in zip(params, anchors, omegas, strict=True):
        a = a.to(p.dtype)
        d = p - a
        c2 = o.to(p.dtype) * (2.0 * lr * lam)
        inside = d.abs() <= delta * (1.0 + c2)
        p.copy_(torch.where(inside, a + d / (1.0 + c2), p - c2 * delta * d.sign()))
