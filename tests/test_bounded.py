"""L1 and Huber penalties: hand formula, autograd, proximal optimality, the quadratic as a limit."""

from __future__ import annotations

import pytest
import torch

from online_mas.bounded import (
    huber_grad_,
    huber_loss,
    huber_proximal_,
    l1_grad_,
    l1_loss,
    l1_proximal_,
)
from online_mas.penalty import penalty_grad_, penalty_loss, proximal_

DELTA = 0.5


def _setup(seed: int = 0, dtype: torch.dtype = torch.float32):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(3, 4, generator=g).to(dtype)),
              torch.nn.Parameter(torch.randn(5, generator=g).to(dtype))]
    anchors = [p.detach().clone() + torch.randn(p.shape, generator=g).to(dtype) for p in params]
    omegas = [torch.rand(p.shape, generator=g) for p in params]
    return params, anchors, omegas


def _hand(params, anchors, omegas, lam, shape):  # type: ignore[no-untyped-def]
    """Element by element in Python floats."""
    total = 0.0
    for p, a, o in zip(params, anchors, omegas, strict=True):
        for pv, av, ov in zip(p.detach().reshape(-1).tolist(), a.reshape(-1).tolist(),
                              o.reshape(-1).tolist(), strict=True):
            d = abs(pv - av)
            if shape == "l1":
                total += ov * d
            else:
                total += ov * (d * d if d <= DELTA else 2 * DELTA * d - DELTA * DELTA)
    return lam * total


def _loss(shape, *args):  # type: ignore[no-untyped-def]
    return l1_loss(*args) if shape == "l1" else huber_loss(*args, delta=DELTA)


def _grad_(shape, *args):  # type: ignore[no-untyped-def]
    return l1_grad_(*args) if shape == "l1" else huber_grad_(*args, delta=DELTA)


@pytest.mark.parametrize("shape", ["l1", "huber"])
def test_loss_equals_hand_formula_and_is_zero_at_anchor(shape: str) -> None:
    params, anchors, omegas = _setup()
    hand = _hand(params, anchors, omegas, 0.7, shape)
    assert _loss(shape, params, anchors, omegas, 0.7).item() == pytest.approx(hand, rel=1e-6)
    at_anchor = [torch.nn.Parameter(a.clone()) for a in anchors]
    assert _loss(shape, at_anchor, anchors, omegas, 0.7).item() == 0.0


@pytest.mark.parametrize("shape", ["l1", "huber"])
def test_grad_form_equals_autograd_of_loss_and_is_bounded(shape: str) -> None:
    params, anchors, omegas = _setup()
    _loss(shape, params, anchors, omegas, 2.5).backward()
    autograd = [p.grad.clone() for p in params]  # type: ignore[union-attr]
    for p in params:
        p.grad = None
    _grad_(shape, params, anchors, omegas, 2.5)
    bound = 1.0 if shape == "l1" else 2.0 * DELTA
    for p, g, o in zip(params, autograd, omegas, strict=True):
        assert torch.allclose(p.grad, g, rtol=1e-6)  # type: ignore[arg-type]
        assert bool((p.grad.abs() <= 2.5 * bound * o * (1 + 1e-6)).all())  # type: ignore[union-attr]
    _grad_(shape, params, anchors, omegas, 2.5)  # adds to an existing .grad
    for p, g in zip(params, autograd, strict=True):
        assert torch.allclose(p.grad, 2 * g, rtol=1e-6)  # type: ignore[arg-type]


def test_l1_proximal_is_the_soft_threshold_and_satisfies_optimality() -> None:
    params, anchors, omegas = _setup()
    lam, lr = 1.3, 0.4
    before = [p.detach().clone() for p in params]
    l1_proximal_(params, anchors, omegas, lam, lr)
    for v, p, a, o in zip(before, params, anchors, omegas, strict=True):
        t = lr * lam * o
        at_anchor = (v - a).abs() <= t  # the minimiser is theta* exactly
        assert torch.equal(p.detach()[at_anchor], a[at_anchor])
        # elsewhere (theta - v) / lr + lam Omega sign(theta - theta*) = 0
        rest = ~at_anchor
        resid = (p.detach() - v) / lr + lam * o * torch.sign(p.detach() - a)
        assert torch.allclose(resid[rest], torch.zeros_like(resid[rest]), atol=1e-5)
    assert any(bool(((v - a).abs() <= lr * lam * o).any()) for v, a, o in zip(before, anchors, omegas,
                                                                                 strict=True))


def test_huber_proximal_satisfies_optimality() -> None:
    params, anchors, omegas = _setup(1)
    lam, lr = 2.0, 0.3
    before = [p.detach().clone() for p in params]
    huber_proximal_(params, anchors, omegas, lam, lr, delta=DELTA)
    probe = [torch.nn.Parameter(p.detach().clone()) for p in params]
    huber_loss(probe, anchors, omegas, lam, delta=DELTA).backward()
    for v, q in zip(before, probe, strict=True):  # (theta - v) / lr + grad h(theta) = 0
        resid = (q.detach() - v) / lr + q.grad  # type: ignore[operator]
        assert torch.allclose(resid, torch.zeros_like(resid), atol=1e-5)
    moved = torch.cat([(p.detach() - a).abs().reshape(-1) for p, a in zip(params, anchors, strict=True)])
    assert bool((moved > DELTA).any()) and bool((moved < DELTA).any())  # both branches exercised


def test_huber_with_a_large_delta_is_the_quadratic_in_all_three_forms() -> None:
    params, anchors, omegas = _setup()
    big = 1e3
    assert huber_loss(params, anchors, omegas, 0.9, delta=big).item() == pytest.approx(
        penalty_loss(params, anchors, omegas, 0.9).item(), rel=1e-6)
    huber_grad_(params, anchors, omegas, 0.9, delta=big)
    hub = [p.grad.clone() for p in params]  # type: ignore[union-attr]
    for p in params:
        p.grad = None
    penalty_grad_(params, anchors, omegas, 0.9)
    assert all(torch.allclose(p.grad, h) for p, h in zip(params, hub, strict=True))  # type: ignore[arg-type]
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    huber_proximal_(params, anchors, omegas, 0.9, 0.2, delta=big)
    proximal_(twin, anchors, omegas, 0.9, 0.2)
    assert all(torch.allclose(p, t, atol=1e-6) for p, t in zip(params, twin, strict=True))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda ps, an, om: huber_loss(ps, an, om, 1.0, delta=0.0),
         "delta must be a finite number > 0, got 0.0"),
        (lambda ps, an, om: huber_grad_(ps, an, om, 1.0, delta=float("nan")), "got nan"),
        (lambda ps, an, om: l1_proximal_(ps, an, om, 1.0, -0.1), "lr must be a finite number > 0, got -0.1"),
        (lambda ps, an, om: huber_proximal_(ps, an, om, 1.0, 0.1, delta=True), "got True"),
        (lambda ps, an, om: l1_loss(ps, an, om, -1.0), "lam must be a finite number >= 0, got -1.0"),
        (lambda ps, an, om: l1_grad_(ps, an[:1], om, 1.0), "same length"),
    ],
)
def test_bad_arguments_name_the_value(call, match: str) -> None:  # type: ignore[no-untyped-def]
    params, anchors, omegas = _setup()
    with pytest.raises(ValueError, match=match):
        call(params, anchors, omegas)


def test_online_mas_shape_argument_calls_the_pure_functions() -> None:
    import online_mas as om

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    mas = om.OnlineMAS(model, lam=0.8, config=om.MASConfig(share=1.0), detector=None)
    model(torch.randn(6, 4))
    mas.observe(torch.randn(6, 4))
    mas.consolidate()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape))
    names = [n for n, _ in model.named_parameters()]
    lists = ([p for _, p in model.named_parameters()], [mas.anchors[n] for n in names],
             [mas.omega[n] for n in names])
    assert mas.penalty(shape="l1").item() > 0
    assert mas.penalty(shape="l1").item() == pytest.approx(l1_loss(*lists, 0.8).item(), rel=1e-6)
    assert mas.penalty(shape="huber", delta=DELTA).item() == pytest.approx(
        huber_loss(*lists, 0.8, delta=DELTA).item(), rel=1e-6)
    mas.penalty_grad_(shape="huber", delta=DELTA)
    got = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    model.zero_grad(set_to_none=True)
    huber_grad_(*lists, 0.8, delta=DELTA)
    assert all(torch.equal(g, p.grad) for g, p in zip(got, model.parameters(), strict=True))
    twin = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
    mas.proximal_(0.1, shape="l1")
    l1_proximal_(twin, lists[1], lists[2], 0.8, 0.1)
    assert all(torch.equal(t, p) for t, p in zip(twin, model.parameters(), strict=True))
    with pytest.raises(ValueError, match=r"shape must be one of .*, got 'l2'"):
        mas.penalty(shape="l2")
    with pytest.raises(ValueError, match="needs delta"):
        mas.penalty_grad_(shape="huber")
    with pytest.raises(ValueError, match=r"delta=0\.1 with shape='l1'"):
        mas.proximal_(0.1, shape="l1", delta=0.1)
