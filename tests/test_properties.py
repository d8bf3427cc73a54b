"""Property tests over random models and batches (hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import online_mas as om
from online_mas.consolidate import RULES


@st.composite
def models_and_batches(draw: st.DrawFn) -> tuple[nn.Module, torch.Tensor]:
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    d_in = draw(st.integers(1, 6))
    widths = draw(st.lists(st.integers(1, 8), min_size=1, max_size=3))
    acts = [nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity]
    layers: list[nn.Module] = []
    d = d_in
    for w in widths:
        layers += [nn.Linear(d, w, bias=draw(st.booleans())), draw(st.sampled_from(acts))()]
        d = w
    if draw(st.booleans()):
        layers.append(nn.LayerNorm(d))
    model = nn.Sequential(*layers)
    n = draw(st.integers(1, 9))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0]))
    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed + 1)) * scale
    return model, x


@settings(max_examples=40, deadline=None)
@given(models_and_batches(), st.sampled_from(["exact", "batch", "local"]))
def test_importance_is_finite_non_negative_and_exact_matches_loop(mb, method: str) -> None:  # type: ignore[no-untyped-def]
    model, x = mb
    omega = om.importance(model, x, method=method)
    assert set(omega) == {n for n, _ in model.named_parameters()}
    for v in omega.values():
        assert v.dtype == torch.float32 and bool(torch.isfinite(v).all()) and bool((v >= 0).all())
    if method == "exact":
        # Random models include ill-conditioned ones (LayerNorm after dead ReLUs), where float32
        # itself is inexact. The exact path must be as accurate as the float32 per-sample loop:
        # both are compared with a float64 loop (the model families in test_importance.py are
        # held to rtol=1e-4 elementwise against the float32 loop).
        loop32 = om.importance(model, x, method="loop")
        ref = om.importance(model.double(), x.double(), method="loop")
        for k in omega:
            scale = float(ref[k].abs().max()) + 1e-12
            err_exact = float((omega[k] - ref[k]).abs().max())
            err_loop = float((loop32[k] - ref[k]).abs().max())
            assert err_exact <= 2 * err_loop + 1e-4 * scale + 1e-9, (k, err_exact, err_loop)


@settings(max_examples=30, deadline=None)
@given(models_and_batches(), st.floats(0.0, 1e3), st.sampled_from(RULES))
def test_penalty_non_negative_zero_at_anchor_and_rules_keep_invariants(mb, lam: float, rule: str) -> None:  # type: ignore[no-untyped-def]
    model, x = mb
    mas = om.OnlineMAS(model, lam, rule=rule, detector=None)
    mas.observe(x)
    first = {k: v.clone() for k, v in mas.running_omega.items()}
    mas.consolidate()
    assert mas.penalty().item() == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    assert mas.penalty().item() >= 0.0
    mas.observe(x)
    second = {k: v.clone() for k, v in mas.running_omega.items()}
    mas.consolidate()
    for k, v in mas.omega.items():
        lo, hi = torch.minimum(first[k], second[k]), torch.maximum(first[k], second[k])
        assert bool(torch.isfinite(v).all()) and bool((v >= 0).all())
        if rule in ("mean", "ema", "max"):  # combinations stay within the segments' range
            assert bool((v >= lo - 1e-6 * (1 + hi)).all()) and bool((v <= hi * (1 + 1e-6) + 1e-12).all())
        else:
            assert torch.allclose(v, first[k] + second[k], rtol=1e-6, atol=1e-12)
