"""Bad data and model changes mid-stream: nothing learned is lost, nothing becomes non-finite."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import online_mas as om
import streams

EVERY_STEP = om.MASConfig(share=1.0)  # estimate importance on every observe() call


def _train(mas: om.OnlineMAS | None, model: nn.Module, stream: streams.Stream,
           poison: set[int]) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step, (x, y) in enumerate(stream):
        if step in poison:  # a corrupted batch: the pipeline sends nan, the learner must survive
            x = x.clone()
            x[0, 0] = float("nan")
        model.train()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            if mas is not None:
                mas.observe(x)
            continue
        if mas is not None:
            loss = loss + mas.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if mas is not None:
            mas.observe(x)


def _digits_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def test_one_percent_poisoned_batches_keep_the_snapshot_count() -> None:
    torch.set_num_threads(1)
    make = lambda: streams.make_stream("permuted-digits", n_segments=3, passes=3, seed=0)  # noqa: E731
    n = len(make())
    poison = set(torch.randperm(n, generator=torch.Generator().manual_seed(1))[: n // 100].tolist())
    counts = []
    for bad in (set(), poison):
        model = _digits_mlp()
        mas = om.OnlineMAS(model, 1e-3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            _train(mas, model, make(), bad)
        assert mas.n_skipped == len(bad)
        for t in (*mas.omega.values(), *mas.anchors.values(), *mas.running_omega.values()):
            assert bool(torch.isfinite(t).all())
        counts.append(len(mas.events))
    assert counts[0] >= 2
    assert abs(counts[0] - counts[1]) <= 1, counts


def test_a_poisoned_batch_changes_nothing() -> None:
    model = _digits_mlp()
    mas = om.OnlineMAS(model, detector=om.PageHinkley(threshold=1.0), config=EVERY_STEP)
    x = torch.rand(8, 1, 8, 8)
    for _ in range(40):
        mas.observe(x)
    mas.consolidate()
    mas.observe(x)
    before = mas.state_dict()
    bad = x.clone()
    bad[2] = float("inf")
    with pytest.warns(RuntimeWarning, match="skipped"):
        assert mas.observe(bad) is None
    after = mas.state_dict()
    assert after["n_skipped"] == 1 and after["step"] == before["step"] + 1
    for key in ("omega", "anchor"):
        for name in before["consolidator"][key]:  # type: ignore[index]
            assert torch.equal(before["consolidator"][key][name], after["consolidator"][key][name])  # type: ignore[index]
    for name, t in before["running"]["mean"].items():  # type: ignore[index]
        assert torch.equal(t, after["running"]["mean"][name])  # type: ignore[index]
    assert before["trigger"]["detector"] == after["trigger"]["detector"]  # type: ignore[index]


def test_parameters_change_dtype_mid_stream() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    mas = om.OnlineMAS(model, detector=None, config=EVERY_STEP)
    mas.observe(torch.randn(8, 4))
    mas.consolidate()
    omega = {n: v.clone() for n, v in mas.omega.items()}
    model.double()
    mas.observe(torch.randn(8, 4, dtype=torch.float64))
    assert all(v.dtype == torch.float32 for v in mas.omega.values())  # statistics stay float32
    assert all(a.dtype == torch.float64 for a in mas.anchors.values())  # anchors follow the model
    for n in omega:
        assert torch.equal(mas.omega[n], omega[n])  # nothing learned is lost
    assert mas.penalty().item() == pytest.approx(0.0, abs=1e-12)
    mas.penalty().backward()
    mas.penalty_grad_()
    mas.proximal_(0.1)
    model.to(torch.bfloat16)
    mas.observe(torch.randn(8, 4, dtype=torch.bfloat16))
    assert bool(torch.isfinite(mas.penalty()).all())


def test_head_grows_layer_frozen_then_unfrozen() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    mas = om.OnlineMAS(model, detector=None, config=EVERY_STEP)
    mas.observe(torch.randn(16, 4))
    mas.consolidate()
    kept = mas.omega["0.weight"].clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model[2] = nn.Linear(6, 5)  # a class-incremental head grows from 3 to 5 outputs
        model[0].requires_grad_(False)  # and the first layer is frozen
        mas.observe(torch.randn(16, 4))
    assert "0.weight" not in mas.omega and float(mas.omega["2.weight"].sum()) == 0.0
    model[0].requires_grad_(True)
    assert torch.equal(mas.omega["0.weight"], kept)


# ----------------------------------------------------------------------------- issue 18, items 9-12, 14, 15


@pytest.mark.parametrize("signal", ["entropy", "output_norm", "max_prob", "feature_shift"])
def test_a_regressor_with_outputs_of_shape_b_is_observed(signal: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0))  # output (B,)
    mas = om.OnlineMAS(model, signal=signal, config=EVERY_STEP, detector=om.Periodic(every=3))
    for _ in range(3):
        x = torch.randn(6, 4)
        model(x)
        mas.observe(x)
    assert mas.step == 3 and mas.last_signal is not None and len(mas.events) == 1
    expected = om.importance(model, x)
    assert set(mas.running_omega) == set(expected)


def test_an_integer_output_is_a_clear_error_before_anything_changes() -> None:
    class Classes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x).argmax(1)

    model = Classes()
    mas = om.OnlineMAS(model)
    x = torch.randn(5, 4)
    model(x)
    with pytest.raises(TypeError, match=r"floating point for the detector.s signal, got torch\.int64"):
        mas.observe(x)
    assert mas.step == 0


@pytest.mark.parametrize(("loss", "error", "match"), [
    (torch.zeros(5), ValueError, r"one-element tensor, got a tensor of shape \(5,\)"),
    ("abc", TypeError, "loss must be a real number or a one-element tensor, got 'abc'"),
    ([1.0], TypeError, r"got \[1.0\]"),
])
def test_a_bad_loss_raises_before_the_step_or_the_importance_moves(loss: object, error: type,
                                                                   match: str) -> None:
    model = nn.Linear(4, 3)
    mas = om.OnlineMAS(model, signal="loss", config=EVERY_STEP,
                       detector=om.Plateau(window=3, mean_threshold=0.5, variance_threshold=0.1))
    mas.observe(torch.randn(4, 4), loss=1.0)
    before = {n: t.clone() for n, t in mas.running_omega.items()}
    with pytest.raises(error, match=match):
        mas.observe(torch.randn(4, 4), loss=loss)  # type: ignore[arg-type]
    assert mas.step == 1 and mas.running.count == 4
    assert all(torch.equal(before[n], t) for n, t in mas.running_omega.items())
    assert mas.observe(torch.randn(4, 4), loss=torch.tensor([0.5])) is None  # one element is fine


def test_an_exception_in_the_forward_leaves_the_step_uncounted() -> None:
    class Fails(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.fail = nn.Linear(4, 3), False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.fail:
                raise KeyError("boom")
            return self.lin(x)

    model = Fails()
    mas = om.OnlineMAS(model, config=EVERY_STEP, detector=None)
    mas.observe(torch.randn(4, 4))
    model.fail = True
    with pytest.raises(KeyError, match="boom"):
        mas.observe(torch.randn(4, 4))
    assert mas.step == 1 and mas.running.count == 4


@pytest.mark.parametrize("change", ["freeze", "delete"])
def test_a_state_saved_after_freezing_or_deleting_a_parameter_loads_into_the_same_model(change: str) -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    mas = om.OnlineMAS(model, config=EVERY_STEP, detector=None)
    mas.observe(torch.randn(8, 4))
    mas.consolidate()
    if change == "freeze":
        model[0].weight.requires_grad_(False)
    else:
        model[2].bias = None  # type: ignore[assignment]
    mas.observe(torch.randn(8, 4))
    state = mas.state_dict()
    twin = om.OnlineMAS(model, config=EVERY_STEP, detector=None)
    twin.load_state_dict(state)
    assert set(twin.omega) == set(mas.omega) and len(twin.omega) == 3
    for n, t in mas.omega.items():
        assert torch.equal(twin.omega[n], t)


def test_a_replaced_layer_is_followed_on_the_next_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    mas = om.OnlineMAS(model, lam=1.0, config=om.MASConfig(share=1 / 64), detector=None)
    mas.accumulate(torch.randn(16, 4))
    mas.consolidate()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    assert mas.penalty().item() > 0
    model[2] = nn.Linear(8, 3)  # a new head of the same shape, mid-segment
    with pytest.warns(RuntimeWarning, match="'2.weight' was replaced by a new parameter"):
        value = mas.penalty()
    value.backward()
    assert model[2].weight.grad is None or float(model[2].weight.grad.abs().sum()) == 0.0  # no importance yet
    assert float(mas.omega["2.weight"].abs().sum()) == 0.0 and torch.equal(mas.anchors["2.weight"],
                                                                           model[2].weight.detach())
    assert float(model[0].weight.grad.abs().sum()) > 0  # the old layers are still held
    assert mas._params.params[-1] is model[2].bias  # the penalty reads the new parameters


def test_proximal_is_finite_for_any_lam_and_explicit_forms_refuse_an_overflowing_lam() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    mas = om.OnlineMAS(model, lam=1e308, config=EVERY_STEP, detector=None)
    mas.observe(torch.randn(16, 4))
    mas.consolidate()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    mas.proximal_(0.1)
    for n, p in model.named_parameters():
        assert torch.isfinite(p).all()
        important = mas.omega[n] > 0  # pulled back onto the anchor
        torch.testing.assert_close(p[important], mas.anchors[n][important])
    with pytest.raises(ValueError, match=r"lam=1e\+308 times the largest importance .* use proximal_"):
        mas.penalty_grad_()
    p = torch.nn.Parameter(torch.tensor([1.0, 3.0]))  # the pure form chooses the safe form itself
    om.proximal_([p], [torch.zeros(2)], [torch.tensor([1e30, 0.0])], lam=1e10, lr=1.0)
    assert p.tolist() == [0.0, 3.0]


def test_a_diverged_model_is_an_error_not_a_quiet_count() -> None:
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    mas = om.OnlineMAS(model, config=EVERY_STEP, detector=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(89):
            mas.observe(torch.randn(4, 4))
        assert mas.n_skipped == 89
        for _ in range(10):  # 99 calls: fewer than 100 seen
            mas.observe(torch.randn(4, 4))
        with pytest.raises(RuntimeError, match="skipped 90 or more of the last 100 batches"):
            mas.observe(torch.randn(4, 4))
