"""The other per-sample sensitivities (jacobian, norm, fisher) against plain per-sample loops."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from models import MLP, families
from torch import Tensor, nn

import online_mas as om

FAMILIES = families()


def _jacobian(out: Tensor, params: list[Tensor]) -> list[Tensor]:
    """sum_k |d f_k / d theta| for one sample: one autograd call per output unit."""
    acc = [torch.zeros_like(p) for p in params]
    flat = out.reshape(-1)
    for k in range(flat.numel()):
        grads = torch.autograd.grad(flat[k], params, retain_graph=True, allow_unused=True)
        for a, g in zip(acc, grads, strict=True):
            if g is not None:
                a += g.abs()
    return acc


def _norm(out: Tensor, params: list[Tensor]) -> list[Tensor]:
    grads = torch.autograd.grad(out.reshape(-1).norm(), params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.abs() for p, g in zip(params, grads, strict=True)]


def _fisher(out: Tensor, params: list[Tensor]) -> list[Tensor]:
    logp = torch.log_softmax(out.reshape(-1), 0)
    grads = torch.autograd.grad(logp[int(logp.argmax())], params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.pow(2) for p, g in zip(params, grads, strict=True)]


REFERENCES: dict[str, Callable[[Tensor, list[Tensor]], list[Tensor]]] = {
    "jacobian": _jacobian, "norm": _norm, "fisher": _fisher,
}


def _loop(model: nn.Module, x: Tensor, method: str) -> dict[str, Tensor]:
    """The plain loop: one sample at a time in eval mode, the method's per-sample term averaged."""
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    acc = {n: torch.zeros_like(p) for n, p in named}
    for i in range(x.shape[0]):
        for (n, _), t in zip(named, REFERENCES[method](model(x[i : i + 1]), params), strict=True):
            acc[n] += t
    return {n: a / x.shape[0] for n, a in acc.items()}


def _assert_close(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-7), (k, (a[k] - b[k]).abs().max())


def _mlp_batch(n: int) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    return MLP(), torch.randn(n, 10, generator=torch.Generator().manual_seed(1))


def _cnn_batch(n: int) -> tuple[nn.Module, Tensor]:
    model, _ = FAMILIES["cnn2d"]
    return model, torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("method", sorted(REFERENCES))
@pytest.mark.parametrize("make", [_mlp_batch, _cnn_batch], ids=["mlp", "cnn"])
@pytest.mark.parametrize("n", [1, 37])
def test_method_equals_its_per_sample_loop(method: str, make: Callable, n: int) -> None:
    model, x = make(n)
    reference = _loop(model, x, method)
    _assert_close(om.importance(model, x, method=method), reference)
    _assert_close(om.importance(model, x, method=method, chunk_size=3), reference)  # chunked


@pytest.mark.parametrize("method", sorted(REFERENCES))
@pytest.mark.parametrize("family", ["cnn1d", "shared", "transformer"])
def test_method_equals_its_loop_on_other_families(method: str, family: str) -> None:
    model, x = FAMILIES[family]
    _assert_close(om.importance(model, x, method=method), _loop(model, x, method))


def test_norm_is_exact_over_twice_the_output_norm_for_one_sample() -> None:
    model, x = _mlp_batch(1)
    with torch.no_grad():
        scale = 2.0 * model(x).norm()
    exact = om.importance(model, x)
    norm = om.importance(model, x, method="norm")
    _assert_close(norm, {k: v / scale for k, v in exact.items()})


def test_jacobian_bounds_the_squared_norm_gradient() -> None:
    """|sum_k 2 f_k df_k| <= 2 max_k |f_k| sum_k |df_k|: MAS's gradient never exceeds the jacobian's
    scaled by twice the largest output (per sample, here one sample)."""
    model, x = _mlp_batch(1)
    with torch.no_grad():
        peak = 2.0 * model(x).abs().max()
    exact = om.importance(model, x)
    jac = om.importance(model, x, method="jacobian")
    assert all(bool((exact[k] <= peak * jac[k] * (1 + 1e-5) + 1e-7).all()) for k in exact)


def test_new_methods_are_accepted_by_mas_config_and_observe() -> None:
    for method in ("jacobian", "norm", "fisher"):
        torch.manual_seed(0)
        model = MLP()
        mas = om.OnlineMAS(model, lam=1.0, config=om.MASConfig(method=method, share=1.0),
                           detector=None)
        x = torch.randn(5, 10)
        model(x)
        mas.observe(x)
        mas.consolidate()
        expected = _loop(model, x, method)
        _assert_close({k: v.to(expected[k].dtype) for k, v in mas.omega.items()}, expected)
