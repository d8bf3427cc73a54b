"""OnlineMAS on float64 and bfloat16 models, and on CUDA: every tensor follows the model.

Importance (``omega``, the running value) is float32 whatever the model's dtype; the anchors keep
the parameters' dtype and device. CUDA tests skip without CUDA.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import online_mas as om

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
DTYPES = [torch.float64, torch.bfloat16]
CONFIGS = {
    "exact": {},
    "vmap": {"method": "vmap"},
    "local": {"method": "local"},
    "shared-forward": {"shared_forward": True},
    "subsample": {"subsample": 3},
}


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 3)).to(dtype)


def _batches(n: int, dtype: torch.dtype, device: str | torch.device = "cpu") -> list[Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(5, 6, generator=g).to(device=device, dtype=dtype) for _ in range(n)]


def _mas(model: nn.Module, config: dict[str, object], **kw: object) -> om.OnlineMAS:
    return om.OnlineMAS(model, lam=0.5, config=om.MASConfig(share=1.0, **config),  # type: ignore[arg-type]
                        detector=om.detectors.Periodic(3), **kw)  # type: ignore[arg-type]


def _train(model: nn.Module, mas: om.OnlineMAS, xs: list[Tensor]) -> list[float]:
    """The user's loop with the penalty's gradient form; the loss of every step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for x in xs:
        out = model(x)
        loss = out.float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        mas.penalty_grad_()
        opt.step()
        mas.observe(x)
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CONFIGS)
def test_importance_is_float32_and_anchors_keep_the_parameter_dtype(dtype: torch.dtype, name: str) -> None:
    model = _model(dtype)
    mas = _mas(model, CONFIGS[name])
    _train(model, mas, _batches(7, dtype))
    assert [e.step for e in mas.events] == [3, 6] and mas.n_skipped == 0
    params = dict(model.named_parameters())
    for n, p in params.items():
        assert mas.omega[n].dtype == torch.float32 and mas.running_omega[n].dtype == torch.float32
        assert mas.anchors[n].dtype == dtype and mas.anchors[n].shape == p.shape
        assert bool(torch.isfinite(mas.omega[n]).all()) and float(mas.omega[n].max()) > 0
    assert mas.penalty().dtype == torch.float32


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_importance_of_a_float64_or_bf16_model_matches_float32(dtype: torch.dtype) -> None:
    """The same weights in another dtype: the same importance, to that dtype's precision."""
    ref, other = _model(), _model(dtype)
    x = _batches(1, torch.float32)[0]
    want = om.importance(ref, x)
    got = om.importance(other, x.to(dtype))
    tol = {torch.float64: 1e-5, torch.bfloat16: 5e-2}[dtype]
    for n in want:
        assert got[n].dtype == torch.float32
        assert torch.allclose(got[n], want[n], rtol=tol, atol=tol * float(want[n].abs().max())), n


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_penalty_forms_follow_the_formula_in_the_parameter_dtype(dtype: torch.dtype) -> None:
    model = _model(dtype)
    mas = _mas(model, {})
    _train(model, mas, _batches(4, dtype))  # consolidated at step 3, moved on at step 4
    params = dict(model.named_parameters())
    omega, anchor = mas.omega, mas.anchors
    want = 0.5 * sum(float((omega[n] * (p.detach().float() - anchor[n].float()).pow(2)).sum())
                     for n, p in params.items())
    tol = 1e-5 if dtype == torch.float64 else 1e-2
    assert float(mas.penalty().detach()) == pytest.approx(want, rel=tol) and want > 0
    for p in params.values():
        p.grad = None
    mas.penalty_grad_()
    for n, p in params.items():
        assert p.grad is not None and p.grad.dtype == dtype
        grad = 2 * 0.5 * omega[n] * (p.detach().float() - anchor[n].float())
        assert torch.allclose(p.grad.float(), grad, rtol=tol, atol=tol * float(grad.abs().max()) + 1e-30)
    before = {n: p.detach().float().clone() for n, p in params.items()}
    mas.proximal_(0.1)
    for n, p in params.items():
        c = 2 * 0.1 * 0.5 * omega[n]
        prox = (before[n] + c * anchor[n].float()) / (1 + c)
        assert p.dtype == dtype
        assert torch.allclose(p.detach().float(), prox, rtol=tol, atol=tol * float(prox.abs().max()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_state_dict_round_trip_gives_identical_next_steps(dtype: torch.dtype) -> None:
    model = _model(dtype)
    mas = _mas(model, {}, signal=om.FeatureShift(), buffer=om.HardBuffer(4))
    xs = _batches(10, dtype)
    _train(model, mas, xs[:5])
    state = mas.state_dict()
    twin = copy.deepcopy(model)
    twin_mas = _mas(twin, {}, signal=om.FeatureShift(), buffer=om.HardBuffer(4))
    twin_mas.load_state_dict(state)
    assert all(twin_mas.anchors[n].dtype == dtype for n in twin_mas.anchors)
    assert _train(model, mas, xs[5:]) == _train(twin, twin_mas, xs[5:])
    assert [e.step for e in mas.events] == [e.step for e in twin_mas.events] == [3, 6, 9]
    for n in mas.omega:
        assert torch.equal(mas.omega[n], twin_mas.omega[n])
        assert torch.equal(mas.anchors[n], twin_mas.anchors[n])
        assert torch.equal(mas.running_omega[n], twin_mas.running_omega[n])


def test_a_forward_under_bf16_autocast_feeds_the_shared_estimate() -> None:
    """The runner's bf16-mixed step: the user's forward runs under autocast, observe reuses it."""
    model = _model()
    mas = _mas(model, {"shared_forward": True})
    ref_model = _model()
    ref = _mas(ref_model, {})
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # no update: both estimate the same weights
    for x in _batches(3, torch.float32):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            loss = out.float().pow(2).mean()
        assert out.dtype == torch.bfloat16
        opt.zero_grad()
        loss.backward()
        opt.step()
        mas.observe(x)
        ref_model(x)
        ref.observe(x)
    assert mas.n_skipped == 0 and [e.step for e in mas.events] == [3]
    for n, want in ref.omega.items():
        got = mas.omega[n]
        assert got.dtype == torch.float32
        assert torch.allclose(got, want, rtol=5e-2, atol=5e-2 * float(want.abs().max())), n


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_on_cuda_every_tensor_stays_on_the_gpu(dtype: torch.dtype) -> None:
    model = _model(dtype).cuda()
    mas = _mas(model, {}, signal=om.FeatureShift(), buffer=om.HardBuffer(4))
    _train(model, mas, _batches(7, dtype, "cuda"))
    for n in mas.omega:
        assert mas.omega[n].is_cuda and mas.anchors[n].is_cuda and mas.running_omega[n].is_cuda
    assert mas.penalty().is_cuda


@needs_cuda
def test_a_state_loaded_on_the_cpu_continues_on_the_gpu() -> None:
    """A checkpoint is read with map_location='cpu': the parts move to the model's device."""
    model = _model()
    mas = _mas(model, {}, signal=om.FeatureShift(), buffer=om.HardBuffer(4))
    xs = _batches(10, torch.float32)
    _train(model, mas, xs[:5])
    state = mas.state_dict()  # CPU tensors, as checkpoint.load gives them
    gpu = copy.deepcopy(model).cuda()
    gpu_mas = _mas(gpu, {}, signal=om.FeatureShift(), buffer=om.HardBuffer(4))
    gpu_mas.load_state_dict(state)
    losses = _train(gpu, gpu_mas, [x.cuda() for x in xs[5:]])
    want = _train(model, mas, xs[5:])
    assert losses == pytest.approx(want, rel=1e-4)
    assert [e.step for e in gpu_mas.events] == [3, 6, 9]
    for n in gpu_mas.omega:
        assert gpu_mas.omega[n].is_cuda and gpu_mas.anchors[n].is_cuda
        assert torch.allclose(gpu_mas.omega[n].cpu(), mas.omega[n], rtol=1e-4, atol=1e-6)
