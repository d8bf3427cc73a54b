"""MASConfig(shared_backward=True): the importance rows ride the user's forward and backward.

Exact (equal to the separate pass at the parameters of the forward, and to the per-sample loop),
training gradients unchanged, and every case the mode cannot take falls back to the separate pass
with ``why_not`` saying why. The FSDP2 runs (2 processes, all-gathers counted) are in
``tests/test_sharded.py``.
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import torch.nn.functional as F
from models import loop_reference
from torch import Tensor, nn

import online_mas as om
from online_mas.estimators import importance_sums


class _EmbedBag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 3)

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(torch.relu(self.norm(self.emb(idx))).mean(1))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(inplace=True), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def _cnn() -> nn.Module:
    bn = nn.BatchNorm2d(4).eval()  # frozen batch norm: running statistics, samples independent
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), bn, nn.ReLU(), nn.GroupNorm(2, 4),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2), nn.Flatten(), nn.Linear(4 * 3 * 3, 3),
    )


MODELS = {"mlp": _mlp, "cnn": _cnn, "embedding": _EmbedBag}


def _batch(kind: str, n: int, g: torch.Generator) -> Tensor:
    if kind == "mlp":
        return torch.randn(n, 5, generator=g)
    if kind == "cnn":
        return torch.randn(n, 1, 6, 6, generator=g)
    return torch.randint(0, 20, (n, 4), generator=g)


def _forbid_separate_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pass(*args: object, **kwargs: object) -> object:
        raise AssertionError("the separate importance pass ran")

    monkeypatch.setattr(sys.modules["online_mas.online"], "estimate", no_pass)


def _config(**kw: object) -> om.MASConfig:
    return om.MASConfig(share=1.0, shared_backward=True, **kw)  # type: ignore[arg-type]


def _step(model: nn.Module, opt: torch.optim.Optimizer, mas: om.OnlineMAS | None,
          x: Tensor) -> dict[str, Tensor]:
    """One training step with the penalty; the parameters' gradients (before the step)."""
    opt.zero_grad()
    out = model(x)
    loss = F.cross_entropy(out, torch.arange(x.shape[0]) % out.shape[1]) + out.pow(2).mean()
    if mas is not None:
        loss = loss + mas.penalty()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    if mas is not None:
        mas.observe(x)
    return grads


@pytest.mark.parametrize("n", [1, 7, 64])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_equals_the_separate_pass_at_the_parameters_of_the_forward(
    kind: str, n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = MODELS[kind]()
    mas = om.OnlineMAS(model, lam=0.5, config=_config(), detector=None)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _forbid_separate_pass(monkeypatch)
    g = torch.Generator().manual_seed(1)
    for segment in range(2):  # the second with the penalty live
        expected = om.RunningImportance()
        for _ in range(3):
            x = _batch(kind, n, g)
            expected.update(importance_sums(copy.deepcopy(model), x)[0], n)
            _step(model, opt, mas, x)
        assert mas._seen.shared is not None and mas._seen.shared.why_not == ""
        for name, value in mas.running_omega.items():
            torch.testing.assert_close(value, expected.value()[name], rtol=1e-5, atol=1e-7)
        if segment == 0:
            mas.consolidate()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_the_per_sample_loop(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = _cnn().to(dtype)
    mas = om.OnlineMAS(model, config=_config(), detector=None)
    x = torch.randn(5, 1, 6, 6, dtype=dtype)
    ref = loop_reference(copy.deepcopy(model), x)
    model(x).sum().backward()
    mas.observe(x)
    for name, value in mas.running_omega.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, ref[name].float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_bfloat16_equals_the_separate_pass(kind: str) -> None:
    torch.manual_seed(0)
    model = MODELS[kind]().to(torch.bfloat16)
    mas = om.OnlineMAS(model, config=_config(), detector=None)
    x = _batch(kind, 7, torch.Generator().manual_seed(4)).to(torch.bfloat16)
    ref, _, _ = importance_sums(copy.deepcopy(model), x)
    model(x).float().pow(2).sum().backward()
    mas.observe(x)
    assert mas._seen.shared is not None and mas._seen.shared.why_not == ""
    for name, value in mas.running_omega.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, ref[name] / 7, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_training_gradients_and_outputs_are_unchanged(kind: str) -> None:
    torch.manual_seed(0)
    a = MODELS[kind]()
    b = copy.deepcopy(a)
    mas_a = om.OnlineMAS(a, lam=0.5, config=_config(), detector=None)
    mas_b = om.OnlineMAS(b, lam=0.5, config=om.MASConfig(share=1.0), detector=None)
    opt_a, opt_b = (torch.optim.SGD(m.parameters(), lr=0.05) for m in (a, b))
    g = torch.Generator().manual_seed(3)
    for t in range(4):
        x = _batch(kind, 6, g)
        ga, gb = _step(a, opt_a, None, x), _step(b, opt_b, None, x)  # no penalty: the same steps
        mas_a.observe(x)
        mas_b.observe(x)
        with torch.no_grad():
            plain = b(x)
        assert ga.keys() == gb.keys()
        for name in ga:
            torch.testing.assert_close(ga[name], gb[name], rtol=1e-6, atol=1e-8)
        out = a(x)
        assert out.shape == plain.shape and out.requires_grad
        torch.testing.assert_close(out.detach(), plain, rtol=1e-6, atol=1e-7)
        out.sum().backward()  # the backward of the doubled forward above, so that observe takes it
        mas_a.observe(x)
        assert mas_a._seen.shared is not None and mas_a._seen.shared.why_not == ""
        if t == 1:
            mas_a.consolidate()
            mas_b.consolidate()


class _Tied(nn.Module):
    """The embedding's weight also read outside its call (a tied output head)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.lin = nn.Linear(6, 6)

    def forward(self, idx: Tensor) -> Tensor:
        return F.linear(torch.tanh(self.lin(self.emb(idx).mean(1))), self.emb.weight)


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(torch.tanh(self.lin(x)))


class _SequenceFirst(nn.Module):
    """A linear map applied to a sequence-first view of the batch, whose length is twice the batch:
    its input's first dimension is 2n without being the doubled batch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x.transpose(0, 1)).transpose(0, 1).mean(1)


class _Noisy(nn.Module):
    """Noise in training mode from a module the training-mode check does not know."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        out = self.lin(x)
        return out + 0.1 * torch.randn_like(out) if self.training else out


def _idx(n: int) -> Tensor:
    return torch.randint(0, 10, (n, 3), generator=torch.Generator().manual_seed(n))


@pytest.mark.parametrize(
    ("make", "batch", "why"),
    [
        (_Tied, _idx, "also used outside its call"),
        (_Twice, lambda n: torch.randn(n, 5), "called more than once"),
        (_SequenceFirst, lambda n: torch.randn(n, 2 * n, 5), "not on the doubled batch"),
        (lambda: nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.Linear(8, 3)),
         lambda n: torch.randn(n, 5), "Dropout is in training mode"),
    ],
)
def test_what_it_cannot_take_falls_back_with_training_unchanged(make: object, batch: object,
                                                                why: str) -> None:
    torch.manual_seed(0)
    a = make()  # type: ignore[operator]
    b = copy.deepcopy(a)
    mas = om.OnlineMAS(a, config=_config(), detector=None)
    x = batch(6)  # type: ignore[operator]
    torch.manual_seed(5)
    a(x).pow(2).sum().backward()
    torch.manual_seed(5)  # the same dropout mask
    b(x).pow(2).sum().backward()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):  # a tied weight's: zero rows added
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)
    mas.observe(x)
    assert mas._seen.shared is not None and why in mas._seen.shared.why_not
    ref, _, _ = importance_sums(copy.deepcopy(a), x)  # the separate pass ran, parameters unchanged
    for name, value in mas.running_omega.items():
        torch.testing.assert_close(value, ref[name] / 6)


def test_a_non_finite_output_skips_the_batch_without_a_separate_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    class Exp(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.exp()

    model = nn.Sequential(nn.Linear(5, 8), Exp(), nn.Linear(8, 3))
    mas = om.OnlineMAS(model, config=_config(), detector=None)
    _forbid_separate_pass(monkeypatch)
    x = torch.randn(4, 5)
    model(x).sum().backward()
    mas.observe(x)
    before = {k: v.clone() for k, v in mas.running_omega.items()}
    huge = torch.full((4, 5), 1e3)  # finite, but the output overflows
    assert not torch.isfinite(model(huge)).all()
    model(huge).sum().backward()
    with pytest.warns(RuntimeWarning, match="skipped a batch"):
        mas.observe(huge)
    assert mas.n_skipped == 1 and "not finite" in mas._seen.shared.why_not  # type: ignore[union-attr]
    for k, v in mas.running_omega.items():
        assert torch.equal(v, before[k])


def test_random_numbers_the_checks_do_not_know_fall_back() -> None:
    """Noise drawn in the forward: the training rows draw other numbers than without the mode
    (as valid a draw), the importance half differs from the training half: the separate pass."""
    torch.manual_seed(0)
    model = _Noisy()
    mas = om.OnlineMAS(model, config=_config(), detector=None)
    x = torch.randn(6, 5)
    model(x).pow(2).sum().backward()
    mas.observe(x)
    assert "halves of the doubled output differ" in mas._seen.shared.why_not  # type: ignore[union-attr]
    ref, _, _ = importance_sums(copy.deepcopy(model), x)  # eval mode: no noise
    for name, value in mas.running_omega.items():
        torch.testing.assert_close(value, ref[name] / 6)


def test_no_backward_before_observe_falls_back() -> None:
    torch.manual_seed(0)
    model = _mlp()
    mas = om.OnlineMAS(model, config=_config(), detector=None)
    x = torch.randn(4, 5)
    model(x)  # no backward
    mas.observe(x)
    assert "ran 0 times" in mas._seen.shared.why_not  # type: ignore[union-attr]
    ref, _, _ = importance_sums(model, x)
    for name, value in mas.running_omega.items():
        torch.testing.assert_close(value, ref[name] / 4)


def test_a_model_that_bounds_its_batch_size_turns_the_mode_off_with_a_warning() -> None:
    class Bounded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(5, 3)
            self.register_buffer("offset", torch.arange(6.0).unsqueeze(1))  # at most 6 rows

        def forward(self, x: Tensor) -> Tensor:
            return self.lin(x) + self.offset[: x.shape[0]]

    model = Bounded()
    mas = om.OnlineMAS(model, config=_config(), detector=None)
    x = torch.randn(4, 5)
    with pytest.warns(RuntimeWarning, match="shared_backward is off"):
        out = model(x)
    assert out.shape == (4, 3)
    out.sum().backward()
    mas.observe(x)
    assert not mas._seen.shared.enabled  # type: ignore[union-attr]
    ref, _, _ = importance_sums(model, x)
    for name, value in mas.running_omega.items():
        torch.testing.assert_close(value, ref[name] / 4)


def test_a_copy_of_an_armed_model_runs_its_own_class_forward() -> None:
    torch.manual_seed(0)
    model = _mlp()
    mas = om.OnlineMAS(model, config=_config(), detector=None)
    assert "forward" in model.__dict__ and mas._seen.shared is not None and mas._seen.shared.armed
    copied = copy.deepcopy(model)
    x = torch.randn(3, 5)
    with torch.no_grad():
        copied[0].weight.zero_()  # the copy computes with its own weights
        torch.testing.assert_close(copied(x), nn.Sequential(*copied)(x))
        assert not torch.allclose(copied(x), model(x))


def test_config_checks() -> None:
    with pytest.raises(TypeError, match="shared_backward must be a bool, got 1"):
        om.MASConfig(shared_backward=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="set one of them, got both True"):
        om.MASConfig(shared_forward=True, shared_backward=True)


@pytest.mark.parametrize("how", ["inputs", "autograd.grad"])
def test_a_backward_to_some_tensors_only_falls_back(how: str) -> None:
    # backward(inputs=params) and torch.autograd.grad prune the importance rows, whose hooks then
    # never fire: the importance was all zeros, silently (found by review)
    torch.manual_seed(0)
    model = _mlp()
    mas = om.OnlineMAS(model, config=_config(), detector=None)
    x = torch.randn(6, 5)
    ref, _, _ = importance_sums(copy.deepcopy(model), x)
    loss = model(x).pow(2).sum()
    params = list(model.parameters())
    if how == "inputs":
        loss.backward(inputs=params)
    else:
        for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
            p.grad = g
    mas.observe(x)
    shared = mas._seen.shared
    assert shared is not None and "did not reach a layer's importance rows" in shared.why_not
    for name, value in mas.running_omega.items():
        torch.testing.assert_close(value, ref[name] / 6)


def test_a_hook_inside_the_model_sees_the_batch_and_training_is_unchanged() -> None:
    # a forward hook on a layer saw the doubled batch: a loss on its features halved their
    # gradient and reached the importance rows (found by review)
    torch.manual_seed(0)
    a = _mlp()
    b = copy.deepcopy(a)
    mas = om.OnlineMAS(a, config=_config(), detector=None)
    x = torch.randn(6, 5)
    ref, _, _ = importance_sums(copy.deepcopy(a), x)
    feats: list[Tensor] = []
    grads = []
    for m in (a, b):
        m[2].register_forward_hook(lambda mod, i, o: feats.append(o))
        out = m(x)
        assert feats[-1].shape[0] == 6
        (F.cross_entropy(out, torch.arange(6) % 3) + feats[-1].pow(2).mean()).backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})  # type: ignore[union-attr]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-6, atol=1e-8)
    mas.observe(x)
    shared = mas._seen.shared
    assert shared is not None and "Linear '2' has a forward or backward hook" in shared.why_not
    for name, value in mas.running_omega.items():
        torch.testing.assert_close(value, ref[name] / 6)
