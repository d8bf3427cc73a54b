"""The three penalty forms agree with the hand formula and with each other."""

from __future__ import annotations

import pytest
import torch

from online_mas.penalty import penalty_grad_, penalty_loss, proximal_


def _setup(seed: int = 0, dtype: torch.dtype = torch.float32):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(3, 4, generator=g).to(dtype)),
              torch.nn.Parameter(torch.randn(5, generator=g).to(dtype))]
    anchors = [p.detach().clone() + torch.randn(p.shape, generator=g).to(dtype) for p in params]
    omegas = [torch.rand(p.shape, generator=g) for p in params]
    return params, anchors, omegas


def test_loss_form_equals_hand_formula_and_is_zero_at_anchor() -> None:
    params, anchors, omegas = _setup()
    hand = 0.7 * sum(float((o * (p.detach() - a) ** 2).sum())
                     for p, a, o in zip(params, anchors, omegas, strict=True))
    assert penalty_loss(params, anchors, omegas, 0.7).item() == pytest.approx(hand, rel=1e-6)
    at_anchor = [torch.nn.Parameter(a.clone()) for a in anchors]
    assert penalty_loss(at_anchor, anchors, omegas, 0.7).item() == 0.0


def test_grad_form_equals_autograd_of_loss_form() -> None:
    params, anchors, omegas = _setup()
    penalty_loss(params, anchors, omegas, 2.5).backward()
    autograd = [p.grad.clone() for p in params]  # type: ignore[union-attr]
    for p in params:
        p.grad = None
    penalty_grad_(params, anchors, omegas, 2.5)
    for p, g in zip(params, autograd, strict=True):
        assert torch.allclose(p.grad, g, rtol=1e-6)  # type: ignore[arg-type]
    penalty_grad_(params, anchors, omegas, 2.5)  # adds to an existing .grad
    for p, g in zip(params, autograd, strict=True):
        assert torch.allclose(p.grad, 2 * g, rtol=1e-6)  # type: ignore[arg-type]


def test_grad_form_handles_mixed_dtypes() -> None:
    params, anchors, omegas = _setup()
    p64 = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    penalty_grad_([*params, p64], [*anchors, torch.zeros(2, dtype=torch.float64)],
                  [*omegas, torch.ones(2)], 1.0)
    assert p64.grad is not None and p64.grad.dtype == torch.float64
    assert p64.grad.tolist() == [2.0, 2.0]


def test_proximal_is_the_exact_minimiser() -> None:
    params, anchors, omegas = _setup()
    v = [p.detach().clone() for p in params]
    lr, lam = 0.1, 3.0
    proximal_(params, anchors, omegas, lam, lr)
    for p, vi, a, o in zip(params, v, anchors, omegas, strict=True):
        # gradient of ||theta - v||^2 / (2 lr) + lam Omega (theta - a)^2 vanishes at the result
        grad = (p.detach() - vi) / lr + 2 * lam * o * (p.detach() - a)
        assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-4)


def test_proximal_never_overshoots_at_huge_lambda() -> None:
    params, anchors, omegas = _setup()
    proximal_(params, anchors, omegas, 1e12, 1.0)
    for p, a in zip(params, anchors, strict=True):
        assert torch.allclose(p.detach(), a, atol=1e-4)


@pytest.mark.parametrize("lam", [-1.0, float("nan"), float("inf"), "1", True])
def test_bad_lambda(lam: object) -> None:
    params, anchors, omegas = _setup()
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        penalty_loss(params, anchors, omegas, lam)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        penalty_grad_(params, anchors, omegas, lam)  # type: ignore[arg-type]


def test_bad_lr_and_lengths() -> None:
    params, anchors, omegas = _setup()
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        proximal_(params, anchors, omegas, 1.0, 0.0)
    with pytest.raises(ValueError, match="same length"):
        penalty_grad_(params, anchors[:1], omegas, 1.0)


def _reference(params, anchors, omegas, lam):  # type: ignore[no-untyped-def]
    """The plain autograd formula the fast loss form must match."""
    return lam * sum((o * (p.float() - a.float()).pow(2)).sum()
                     for p, a, o in zip(params, anchors, omegas, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fast_loss_form_matches_autograd_formula(dtype: torch.dtype) -> None:
    params, anchors, omegas = _setup(dtype=dtype)
    fast = penalty_loss(params, anchors, omegas, 0.3)
    fast_grads = torch.autograd.grad(fast, params)
    ref = _reference(params, anchors, omegas, 0.3)
    ref_grads = torch.autograd.grad(ref, params)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
    assert fast.dtype == torch.float32
    assert torch.allclose(fast, ref, rtol=tol)
    for f, r, p in zip(fast_grads, ref_grads, params, strict=True):
        assert f.dtype == p.dtype
        assert torch.allclose(f, r, rtol=tol, atol=tol)


def test_fast_loss_form_backward_twice_and_second_derivatives() -> None:
    params, anchors, omegas = _setup()
    loss = penalty_loss(params, anchors, omegas, 0.7)
    first = torch.autograd.grad(loss, params, retain_graph=True)
    again = torch.autograd.grad(loss, params)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    # Hessian-vector product: d/dtheta <grad, v> = 2 lam Omega * v
    grads = torch.autograd.grad(penalty_loss(params, anchors, omegas, 0.7), params, create_graph=True)
    vs = [torch.randn_like(p) for p in params]
    hvp = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vs, strict=True)), params)
    for h, o, v in zip(hvp, omegas, vs, strict=True):
        assert torch.allclose(h, 2 * 0.7 * o * v, rtol=1e-5, atol=1e-6)


def test_loss_form_differentiates_anchors_and_importance_when_they_require_grad() -> None:
    params, anchors, omegas = _setup()
    anchors = [a.requires_grad_() for a in anchors]
    omegas = [o.requires_grad_() for o in omegas]
    loss = penalty_loss(params, anchors, omegas, 2.0)
    ga = torch.autograd.grad(loss, [*anchors, *omegas])
    for g, p, a, o in zip(ga, params, anchors, omegas, strict=False):
        assert torch.allclose(g, -2 * 2.0 * o.detach() * (p.detach() - a.detach()), rtol=1e-5)
    for g, p, a in zip(ga[len(anchors):], params, anchors, strict=True):
        assert torch.allclose(g, 2.0 * (p.detach() - a.detach()) ** 2, rtol=1e-5)
