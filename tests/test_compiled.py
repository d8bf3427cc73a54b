"""torch.compile-d models: the importance of the model they wrap, under its names (no ``_orig_mod.``)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from models import CNN2d, batchnorm_with_stats, loop_reference
from torch import Tensor, nn

import online_mas as om
from online_mas.forward import unwrap

# aot_eager goes through AOTAutograd as inductor does (where hooks saw zero gradients) and
# compiles in well under a second; one test uses the default backend.
BACKEND = "aot_eager"


def _loop_reference(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    return {n: a.float() for n, a in loop_reference(model, x).items()}


def _assert_close(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), (k, (a[k] - b[k]).abs().max())


def _mlp(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 3)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 6])
@pytest.mark.parametrize("user_first", [False, True], ids=["library-first", "user-first"])
def test_compiled_model_gives_the_uncompiled_importance_under_its_names(
    dtype: torch.dtype, batch: int, user_first: bool
) -> None:
    model = _mlp(dtype)
    x = torch.randn(batch, 5, dtype=dtype)
    reference = _loop_reference(model, x)
    compiled = torch.compile(model, backend=BACKEND)
    if user_first:  # the user's own (training-mode) forward compiled the model already
        compiled(x).sum().backward()
        model.zero_grad(set_to_none=True)
    for method in ("exact", "vmap", "loop"):
        _assert_close(om.importance(compiled, x, method=method), reference)
    assert om.plan(compiled) == om.plan(model)


def test_compiled_cnn_submodule_and_in_place_compile() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    model = batchnorm_with_stats(CNN2d(), x)
    reference = _loop_reference(model, x)
    inplace = copy.deepcopy(model)
    inplace.compile(backend=BACKEND)  # nn.Module.compile: same names, compiled call
    _assert_close(om.importance(inplace, x), reference)
    outer = nn.Sequential(torch.compile(copy.deepcopy(model), backend=BACKEND))  # a compiled part
    got = om.importance(outer, x)
    assert list(got) == [f"0._orig_mod.{k}" for k in reference]  # the outer model's own names
    _assert_close({k.removeprefix("0._orig_mod."): v for k, v in got.items()}, reference)


def test_default_backend() -> None:
    model = _mlp()
    x = torch.randn(3, 5)
    _assert_close(om.importance(torch.compile(model), x), _loop_reference(model, x))


def test_unwrap_strips_compile_and_data_parallel_in_any_order() -> None:
    model = _mlp()
    compiled = torch.compile(model, backend=BACKEND)
    outside = torch.compile(nn.DataParallel(model), backend=BACKEND)
    for wrapped in (compiled, nn.DataParallel(compiled), outside):
        assert unwrap(wrapped) is model


def _train(model: nn.Module, mas: om.OnlineMAS, xs: list[Tensor]) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for x in xs:
        opt.zero_grad()
        out = model(x)
        (F.cross_entropy(out, torch.zeros(x.shape[0], dtype=torch.long)) + mas.penalty()).backward()
        opt.step()
        mas.observe(x)


@pytest.mark.parametrize("shared_forward", [False, True])
def test_online_mas_on_a_compiled_model_equals_the_uncompiled_one(shared_forward: bool) -> None:
    plain = _mlp()
    twin = copy.deepcopy(plain)
    compiled = torch.compile(twin, backend=BACKEND)
    config = om.MASConfig(share=1.0)
    a = om.OnlineMAS(plain, lam=1.0, config=config, detector=None)
    # shared_forward: hooks do not run inside the compiled forward, so observe takes the separate pass
    b = om.OnlineMAS(compiled, lam=1.0, config=om.MASConfig(share=1.0, shared_forward=shared_forward),
                     detector=None)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(6, 5, generator=g) for _ in range(3)]
    for steps in (xs, xs[:2]):  # the second round has a live penalty
        _train(plain, a, steps)
        _train(compiled, b, steps)
        a.consolidate()
        b.consolidate()
    if shared_forward:
        assert "compiled forward" in b._seen.shared.why_not  # type: ignore[union-attr]
    assert list(b.omega) == [n for n, _ in plain.named_parameters()]
    assert all(float(v.sum()) > 0 for v in b.omega.values())  # not the zeros of a compiled hook
    _assert_close(b.omega, a.omega)
    state = b.state_dict()
    fresh = om.OnlineMAS(copy.deepcopy(plain), lam=1.0, config=config, detector=None)
    fresh.load_state_dict(state)  # loads into the uncompiled model: the same names
    _assert_close(fresh.omega, a.omega)
