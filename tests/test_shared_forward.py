"""MASConfig(shared_forward=True): importance from the training forward equals the separate pass."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import online_mas as om
from online_mas.estimators import importance_sums
from online_mas.estimators import shared as shared_module


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


def _batch(kind: str, g: torch.Generator) -> Tensor:
    if kind == "mlp":
        return torch.randn(7, 5, generator=g)
    if kind == "cnn":
        return torch.randn(7, 1, 6, 6, generator=g)
    return torch.randint(0, 20, (7, 4), generator=g)


MODELS = {"mlp": _mlp, "cnn": _cnn, "embedding": _EmbedBag}


def _no_separate_pass(*args: object, **kwargs: object) -> object:
    raise AssertionError("the separate importance pass ran")


def _forbid_separate_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules["online_mas.online"], "estimate", _no_separate_pass)


def _train(model: nn.Module, mas: om.OnlineMAS, xs: list[Tensor], *, record: list | None = None) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x in xs:
        if record is not None:  # the reference: a separate pass at the parameters of this forward
            record.append(importance_sums(copy.deepcopy(model), x)[0])
        opt.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, torch.zeros(x.shape[0], dtype=torch.long)) + out.pow(2).mean()
        loss.backward()
        mas.penalty_grad_()
        opt.step()
        mas.observe(x)


@pytest.mark.parametrize("average", ["mean", "ema"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_shared_forward_equals_a_separate_pass_at_the_same_parameters(
    kind: str, average: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = MODELS[kind]()
    config = om.MASConfig(share=1.0, shared_forward=True)
    mas = om.OnlineMAS(model, lam=0.5, config=config, detector=None,
                       average=om.RunningImportance(average, half_life=20.0))

    _forbid_separate_pass(monkeypatch)
    g = torch.Generator().manual_seed(1)
    refs: list[dict[str, Tensor]] = []
    _train(model, mas, [_batch(kind, g) for _ in range(4)], record=refs)
    mas.consolidate()  # the penalty is live for the next steps
    refs = []
    _train(model, mas, [_batch(kind, g) for _ in range(3)], record=refs)
    expected = om.RunningImportance(average, half_life=20.0)  # the updates, made one at a time
    for r in refs:
        expected.update(r, 7)
    for name, value in mas.running_omega.items():
        torch.testing.assert_close(value, expected.value()[name], rtol=1e-5, atol=1e-7)


def test_shared_forward_does_not_change_training() -> None:
    torch.manual_seed(0)
    a, b = _mlp(), _mlp()
    b.load_state_dict(a.state_dict())
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(7, 5, generator=g) for _ in range(5)]
    shared = om.MASConfig(share=1.0, shared_forward=True)
    _train(a, om.OnlineMAS(a, lam=0.0, config=shared, detector=None), xs)
    _train(b, om.OnlineMAS(b, lam=0.0, config=om.MASConfig(share=1.0), detector=None), xs)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.Linear(8, 3)), "Dropout is in training mode"),
        (nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)), "BatchNorm1d is in training"),
    ],
)
def test_training_mode_layers_fall_back_to_the_separate_pass(model: nn.Module, why: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    mas = om.OnlineMAS(model, config=om.MASConfig(share=1.0, shared_forward=True), detector=None)
    x = torch.randn(7, 5)
    model(x).sum().backward()
    mas.observe(x)
    assert why in mas._seen.shared.why_not  # type: ignore[union-attr]
    ref, _, _ = importance_sums(model, x)  # eval mode, parameters unchanged: the same numbers
    for name, value in mas.running_omega.items():
        torch.testing.assert_close(value, ref[name] / 7)
    model.eval()  # in eval mode the forward is shareable: no separate pass
    _forbid_separate_pass(monkeypatch)
    model(x).sum()
    mas.observe(x)
    assert mas.running_omega["0.weight"].abs().sum() > 0


def test_an_evaluation_forward_in_between_keeps_the_shared_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = _mlp()
    mas = om.OnlineMAS(model, config=om.MASConfig(share=1.0, shared_forward=True), detector=None)
    _forbid_separate_pass(monkeypatch)
    x = torch.randn(7, 5)
    ref, _, _ = importance_sums(model, x)
    model(x).sum().backward()
    with torch.no_grad():
        model(torch.randn(3, 5))  # a look at held-out data before observe
    mas.observe(x)
    for name, value in mas.running_omega.items():
        torch.testing.assert_close(value, ref[name] / 7)


def test_other_forwards_fall_back_and_give_the_same_numbers() -> None:
    torch.manual_seed(0)
    model = _mlp()
    mas = om.OnlineMAS(model, config=om.MASConfig(share=1.0, shared_forward=True), detector=None)
    x = torch.randn(7, 5)
    with torch.no_grad():
        model(x)  # no graph to reuse
    mas.observe(x)
    assert mas._seen.shared.why_not == "the forward ran without gradients"  # type: ignore[union-attr]
    model(x.clone())  # a forward of another tensor than the observed one: not used
    mas.observe(x)
    ref, _, _ = importance_sums(model, x)
    for name, value in mas.running_omega.items():
        torch.testing.assert_close(value, ref[name] / 7)


def test_uncovered_parameters_never_arm_the_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(5, 3)
            self.scale = nn.Parameter(torch.ones(3))  # no closed-form fast path

        def forward(self, x: Tensor) -> Tensor:
            return self.lin(x) * self.scale

    model = Scaled()
    calls = []
    real = shared_module.fast_candidates
    monkeypatch.setattr(shared_module, "fast_candidates", lambda *a: calls.append(1) or real(*a))
    mas = om.OnlineMAS(model, config=om.MASConfig(share=1.0, shared_forward=True), detector=None)
    assert not mas._seen.shared.armed  # type: ignore[union-attr]
    assert "fast path" in mas._seen.shared.why_not  # type: ignore[union-attr]
    x = torch.randn(4, 5)
    for _ in range(3):
        model(x).sum().backward()
        mas.observe(x)
    assert len(calls) == 1  # the answer is kept while the parameters stay the same
    mas.running.reset()
    model(x).sum().backward()
    mas.observe(x)
    ref, _, _ = importance_sums(model, x)
    for name, value in mas.running_omega.items():
        torch.testing.assert_close(value, ref[name] / 4)


def test_hooks_are_armed_only_before_estimate_steps() -> None:
    model = _mlp()
    mas = om.OnlineMAS(model, config=om.MASConfig(share=1 / 3, shared_forward=True), detector=None)
    armed = []
    for _ in range(7):
        armed.append(mas._seen.shared.armed)  # type: ignore[union-attr]
        x = torch.randn(4, 5)
        model(x).sum().backward()
        mas.observe(x)
    assert armed == [False, False, True, False, False, True, False]
    assert mas.running_omega["0.weight"].abs().sum() > 0


def test_non_finite_batches_are_skipped_without_touching_the_importance() -> None:
    torch.manual_seed(0)
    model = _mlp()
    mas = om.OnlineMAS(model, config=om.MASConfig(share=1.0, shared_forward=True), detector=None)
    x = torch.randn(7, 5)
    model(x).sum().backward()
    mas.observe(x)
    before = {k: v.clone() for k, v in mas.running_omega.items()}
    bad = x.clone()
    bad[0, 0] = float("nan")
    model(bad).sum()
    with pytest.warns(RuntimeWarning, match="skipped a batch"):
        mas.observe(bad)
    assert mas.n_skipped == 1
    for k, v in mas.running_omega.items():
        assert torch.equal(v, before[k])


def test_shared_forward_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="shared_forward must be a bool, got 'yes'"):
        om.MASConfig(shared_forward="yes")  # type: ignore[arg-type]


def test_overflowing_importance_skips_that_batch_only(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    mas = om.OnlineMAS(model, config=om.MASConfig(share=1.0, shared_forward=True), detector=None)
    _forbid_separate_pass(monkeypatch)
    x = torch.rand(7, 5) + 0.5
    model(x).sum().backward()
    mas.observe(x)  # the first update fills the running importance: the next ones fold into it
    before = {k: v.clone() for k, v in mas.running_omega.items()}
    huge = x * 3e19  # finite outputs (about 1e19) whose |G|^T |A| products overflow float32
    model(huge).sum().backward()
    with pytest.warns(RuntimeWarning, match="importance is not finite"):
        mas.observe(huge)
    assert mas.n_skipped == 1 and mas._seen.shared is not None and mas._seen.shared.enabled
    for k, v in mas.running_omega.items():
        assert torch.equal(v, before[k])
    x2 = torch.rand(7, 5) + 0.5
    model(x2).sum().backward()  # the next batch is shared again, and folds
    mas.observe(x2)
    assert mas.n_skipped == 1
    for k, v in mas.running_omega.items():
        assert torch.isfinite(v).all() and not torch.equal(v, before[k])
