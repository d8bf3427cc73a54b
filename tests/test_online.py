"""OnlineMAS: accumulation, consolidation, penalty, model changes, state, bad input."""

from __future__ import annotations

import io
import itertools
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from models import MLP
from torch import nn

import online_mas as om

EVERY_STEP = om.MASConfig(share=1.0)  # estimate importance on every observe() call


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MLP()


def _data(n: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 10, generator=torch.Generator().manual_seed(seed))


def test_running_omega_is_the_sample_mean_of_exact_importance() -> None:
    model, x = _model(), _data()
    mas = om.OnlineMAS(model, config=EVERY_STEP)
    for chunk in x.split(7):
        assert mas.observe(chunk) is None
    expected = om.importance(model, x)
    for n, v in mas.running_omega.items():
        assert torch.allclose(v, expected[n], rtol=1e-5, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 39), max_size=6, unique=True))
def test_observe_is_independent_of_how_the_stream_is_cut(cuts: list[int]) -> None:
    model, x = _model(), _data()
    a, b = om.OnlineMAS(model, config=EVERY_STEP), om.OnlineMAS(model, config=EVERY_STEP)
    for chunk in x.split(40):
        a.observe(chunk)
    bounds = [0, *sorted(cuts), 40]
    for lo, hi in itertools.pairwise(bounds):
        b.observe(x[lo:hi])
    for n in a.running_omega:
        assert torch.allclose(a.running_omega[n], b.running_omega[n], rtol=1e-5, atol=1e-7)


def test_observe_leaves_grad_untouched_and_training_flag() -> None:
    model, x = _model(), _data()
    model.train()
    out = model(x).sum()
    out.backward()
    grads = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    mas = om.OnlineMAS(model, config=EVERY_STEP)
    mas.observe(x)
    mas.consolidate()
    mas.penalty()
    assert model.training
    for p, g in zip(model.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)  # type: ignore[arg-type]
    fresh = _model()
    om.OnlineMAS(fresh, config=EVERY_STEP).observe(x)
    assert all(p.grad is None for p in fresh.parameters())


def test_consolidation_anchors_and_rules() -> None:
    model, x = _model(), _data()
    mas = om.OnlineMAS(model, lam=2.0, config=om.MASConfig(share=1.0), rule="mean")
    assert mas.penalty().item() == 0.0  # nothing consolidated yet
    mas.observe(x[:20])
    first = {n: v.clone() for n, v in mas.running_omega.items()}
    e1 = mas.consolidate()
    assert e1.stats["samples"] == 20 and mas.segments == 1
    for n, p in model.named_parameters():
        assert torch.equal(mas.anchors[n], p.detach())
        assert torch.equal(mas.omega[n], first[n])
        assert float(mas.running_omega[n].abs().sum()) == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    mas.observe(x[20:])
    second = {n: v.clone() for n, v in mas.running_omega.items()}
    mas.consolidate()
    for n in first:
        assert torch.allclose(mas.omega[n], (first[n] + second[n]) / 2)
    assert [e.step for e in mas.events] == [1, 2]
    mas.consolidate()  # nothing seen since: Omega unchanged, only the anchor moves
    assert mas.segments == 2


def test_penalty_equals_hand_formula_and_grad_form() -> None:
    model, x = _model(), _data()
    mas = om.OnlineMAS(model, lam=0.3, config=EVERY_STEP)
    mas.observe(x)
    mas.consolidate()
    assert mas.penalty().item() == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hand = 0.3 * sum(float((mas.omega[n] * (p.detach() - mas.anchors[n]) ** 2).sum())
                     for n, p in model.named_parameters())
    loss = mas.penalty()
    assert loss.item() == pytest.approx(hand, rel=1e-5)
    loss.backward()
    autograd = {n: p.grad.clone() for n, p in model.named_parameters()}  # type: ignore[union-attr]
    model.zero_grad(set_to_none=True)
    mas.penalty_grad_()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, autograd[n], rtol=1e-5, atol=1e-8)  # type: ignore[arg-type]


def test_new_head_gets_zero_importance_and_frozen_are_skipped() -> None:
    model = _model()
    mas = om.OnlineMAS(model, config=EVERY_STEP)
    mas.observe(_data())
    mas.consolidate()
    model.add_module("extra", nn.Linear(5, 2))  # a parameter the forward does not use yet
    model[0].weight.requires_grad_(False)
    assert "extra.weight" in mas.omega and float(mas.omega["extra.weight"].sum()) == 0.0
    assert "0.weight" not in mas.omega
    mas.observe(_data())
    assert "0.weight" not in mas.running_omega
    model[0].weight.requires_grad_(True)  # unfreezing brings back its consolidated importance
    assert float(mas.omega["0.weight"].sum()) > 0


def test_a_parameter_that_changes_shape_restarts_with_a_warning() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    mas = om.OnlineMAS(model)
    mas.observe(torch.randn(8, 4))
    mas.consolidate()
    model[2] = nn.Linear(3, 5)  # the head grows
    with pytest.warns(RuntimeWarning, match="changed shape"):
        omega = mas.omega
    assert omega["2.weight"].shape == (5, 3) and float(omega["2.weight"].sum()) == 0.0
    mas.observe(torch.randn(8, 4))
    mas.consolidate()
    assert mas.penalty().item() == 0.0


def test_update_every_k_steps_and_subsample() -> None:
    model, x = _model(), _data(32)
    mas = om.OnlineMAS(model, config=om.MASConfig(share=1 / 3))
    for _ in range(7):
        mas.observe(x)
    assert mas.running.count == 2 * 32  # steps 3 and 6
    sub = om.OnlineMAS(model, config=om.MASConfig(share=1.0, subsample=5, seed=3))
    sub.observe(x)
    assert sub.running.count == 5


def test_non_finite_batches_are_skipped_and_counted() -> None:
    model, x = _model(), _data()
    mas = om.OnlineMAS(model, config=EVERY_STEP)
    mas.observe(x)
    before = {n: v.clone() for n, v in mas.running_omega.items()}
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.warns(RuntimeWarning, match="skipped a batch"):
        assert mas.observe(bad) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mas.observe(torch.full_like(x, float("inf")))  # only one warning per instance
    assert mas.n_skipped == 2
    for n, v in mas.running_omega.items():
        assert torch.equal(v, before[n])
    mas.consolidate()
    assert all(bool(torch.isfinite(v).all()) for v in mas.omega.values())


def test_state_round_trip_gives_identical_results(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, x = _model(), _data(64)
    cfg = om.MASConfig(share=1.0, subsample=16)
    mas = om.OnlineMAS(model, lam=0.5, config=cfg, rule=om.consolidate.EMA(0.3))
    mas.observe(x[:32])
    mas.consolidate()
    mas.observe(x[32:])
    buf = io.BytesIO()
    torch.save(mas.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    twin_model = _model()
    twin_model.load_state_dict(model.state_dict())
    twin = om.OnlineMAS(twin_model, lam=0.5, config=cfg, rule=om.consolidate.EMA(0.3))
    twin.load_state_dict(state)
    for m in (model, twin_model):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01)
    assert twin.penalty().item() == mas.penalty().item()
    mas.observe(x)
    twin.observe(x)  # the subsample generator resumes too
    for n in mas.running_omega:
        assert torch.equal(mas.running_omega[n], twin.running_omega[n])
    assert [e.to_dict() for e in twin.events] == [e.to_dict() for e in mas.events]


def test_load_state_names_mismatches() -> None:
    mas = om.OnlineMAS(_model())
    other = om.OnlineMAS(nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)))
    with pytest.raises(ValueError, match=r"missing \['4.bias', '4.weight'\].*2.weight: saved \(3, 16\)"):
        mas.load_state_dict(other.state_dict())
    state = mas.state_dict()
    state["version"] = 99
    with pytest.raises(ValueError, match="version 99 is not supported"):
        mas.load_state_dict(state)


def test_detector_fires_consolidation() -> None:
    class FireAt:
        def __init__(self, at: int) -> None:
            self.at, self.n = at, 0

        def update(self, value: float) -> None:
            self.n += 1

        @property
        def drift_detected(self) -> bool:
            return self.n == self.at

    mas = om.OnlineMAS(_model(), detector=FireAt(3))
    x = _data(8)
    results = [mas.observe(x, loss=1.0) for _ in range(4)]
    assert [r is not None for r in results] == [False, False, True, False]
    assert mas.events[0].reason == "detector" and mas.events[0].step == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lam": -1.0}, ValueError, "lam must be a finite number >= 0, got -1.0"),
        ({"lam": float("nan")}, ValueError, "lam must be a finite number >= 0"),
        ({"config": {"rule": "sum"}}, TypeError, "config must be a MASConfig"),
        ({"detector": object()}, TypeError, "river's"),
        ({"output": 3}, TypeError, "output must be callable"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        om.OnlineMAS(_model(), **kwargs)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("method", "hessian", "method must be one of"),
        ("normalize", "l2", "normalize must be one of"),
        ("share", 0, r"share must be a number in \(0, 1\]"),
        ("share", 64, r"share must be a number in \(0, 1\].*the old every=k \(observe\(\) calls\) is "
                      r"share=1/k"),
        ("share", float("nan"), r"share must be a number in \(0, 1\]"),
        ("min_estimate", 0, r"min_estimate must be an int >= 1 \(samples\), got 0"),
        ("every", 4, r"MASConfig\(every=4\) counted observe\(\) calls.*share=1/k is every=k"),
        ("subsample", 0, "subsample must be an int >= 1"),
        ("chunk_size", 0, "chunk_size must be"),
    ],
)
def test_bad_config(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        om.MASConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: om.RunningImportance("median"), "average must be one of"),
        (lambda: om.RunningImportance("ema", half_life=-3.0), "half_life must be"),
        (lambda: om.OnlineMAS(nn.Linear(2, 2), rule="min"), "rule must be one of"),
        (lambda: om.consolidate.EMA(1.5), r"alpha must be a number in \[0, 1\]"),
        (lambda: om.Reducer(sync_every=0), "sync_every must be an int >= 1"),
    ],
)
def test_bad_policy(make, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        make()


def test_a_state_dict_of_version_1_loads_and_continues_as_it_did() -> None:
    """``tests/data/online_mas_state_v1.pt`` was written by commit 0c0308d (state version 1)::

        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))   # after torch.manual_seed(0)
        mas = om.OnlineMAS(model, lam=0.5, config=om.MASConfig(every=2, stable_every=3),
                           detector=om.Periodic(every=6))
        # 15 steps of model(x); mas.observe(x); small parameter moves; then state_dict(), and the
        # 5 next steps' events, omega, anchors, running omega, penalty, last signal, segments
    """
    saved = torch.load(Path(__file__).parent / "data" / "online_mas_state_v1.pt", weights_only=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    model.load_state_dict(saved["model"])
    mas = om.OnlineMAS(model, lam=0.5, config=om.MASConfig(share=0.5), anchor=om.StableAnchor(samples=15),
                       detector=om.Periodic(every=6))
    mas.load_state_dict(saved["mas"])
    events = []
    for x in saved["inputs"]:
        model(x)
        e = mas.observe(x)
        events.append(e.step if e else 0)
    want = saved["expected"]
    assert events == want["events"] == [0, 0, 18, 0, 0] and mas.segments == want["segments"]
    for key, got in (("omega", mas.omega), ("anchors", mas.anchors), ("running", mas.running_omega)):
        for n, t in got.items():
            torch.testing.assert_close(t, want[key][n], rtol=1e-6, atol=1e-9)
    assert mas.penalty().item() == pytest.approx(want["penalty"], rel=1e-6)
    assert mas.last_signal == pytest.approx(want["last_signal"], rel=1e-6)
    with pytest.raises(ValueError, match="saved with a 'stable' anchor, this OnlineMAS has a 'current'"):
        om.OnlineMAS(model, anchor=om.CurrentAnchor()).load_state_dict(saved["mas"])


def test_model_must_be_a_module_and_x_validated() -> None:
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        om.OnlineMAS("model")  # type: ignore[arg-type]
    mas = om.OnlineMAS(_model())
    with pytest.raises(ValueError, match="non-empty batch"):
        mas.observe(torch.zeros(0, 10))
    with pytest.raises(TypeError, match="floating point or integer"):
        mas.observe(torch.zeros(4, 10, dtype=torch.bool))


def test_public_api_is_importable() -> None:
    for name in om.__all__:
        assert getattr(om, name) is not None


def test_accumulate_estimates_now_whatever_the_interval() -> None:
    model, x = _model(), _data(12)
    mas = om.OnlineMAS(model, config=om.MASConfig(share=1 / 64), detector=om.Periodic(every=1))
    assert mas.accumulate(x) == 12
    assert mas.step == 0 and mas.events == []  # not a step; the detector is not fed
    expected = om.importance(model, x)
    for n, v in mas.running_omega.items():
        assert torch.allclose(v, expected[n], rtol=1e-5, atol=1e-7)
    with pytest.warns(RuntimeWarning, match="skipped"):
        assert mas.accumulate(torch.full_like(x, float("nan"))) == 0
    with pytest.raises(ValueError, match="non-empty batch"):
        mas.accumulate(torch.zeros(0, 10))


def test_a_consolidation_with_no_estimate_warns() -> None:
    mas = om.OnlineMAS(_model(), config=om.MASConfig(share=1 / 64), detector=None)
    for _ in range(10):
        mas.observe(_data(4))
    with pytest.warns(RuntimeWarning, match="folds no importance"):
        event = mas.consolidate()
    assert event.stats["samples"] == 0 and mas.segments == 0


def test_lam_assignment_and_lr_are_checked() -> None:
    mas = om.OnlineMAS(_model(), detector=None)
    with pytest.raises(ValueError, match="lam must be a finite number >= 0, got -1"):
        mas.lam = -1
    mas.lam = 2.0
    assert mas.lam == 2.0
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got 0"):
        mas.proximal_(0)  # checked even before anything was consolidated
