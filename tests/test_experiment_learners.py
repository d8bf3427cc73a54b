"""Learners of the runner: penalties against hand computations, state round trips, models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from online_mas import MASConfig, OnlineMAS
from online_mas.experiment import ExperimentConfig, load_config
from online_mas.experiment.config import ModelConfig
from online_mas.experiment.learners import EWC, L2, MAS, build_learner
from online_mas.experiment.models import build_model


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def step(model: nn.Module, learner: object, x: torch.Tensor, y: torch.Tensor,
         opt: torch.optim.Optimizer) -> object:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    learner.after_backward()  # type: ignore[attr-defined]
    opt.step()
    return learner.after_step(x, loss.item())  # type: ignore[attr-defined]


def test_ewc_fisher_is_the_decayed_sum_of_segment_means() -> None:
    model = nn.Linear(1, 1, bias=False)
    ewc = EWC(model, 1.0, [2, 3], form="grad", lr=0.1, gamma=0.5)
    for g in (1.0, 3.0, 2.0):  # segment 1: squared grads 1, 9 -> F = 5; segment 2: 4 -> 0.5*5 + 4
        model.weight.grad = torch.tensor([[g]])
        ewc.after_backward()
        event = ewc.after_step(torch.zeros(1, 1), 0.0)
    assert event is not None and event.step == 3 and event.reason == "boundary"
    imp = ewc.importance()
    assert imp is not None and imp["weight"].item() == pytest.approx(6.5)


def test_ewc_fisher_ignores_the_penalty_gradient() -> None:
    model = nn.Linear(1, 1, bias=False)
    ewc = EWC(model, 100.0, [1, 2], form="loss", lr=0.1, gamma=1.0)
    model.weight.grad = torch.tensor([[1.0]])
    ewc.after_backward()
    ewc.after_step(torch.zeros(1, 1), 0.0)  # F = 1, anchored at the current weight
    with torch.no_grad():
        model.weight += 1.0  # far from the anchor: a large penalty gradient, 2 * 100 * 1 * 1
    model.weight.grad = torch.tensor([[2.0]])
    ewc.after_backward()
    assert model.weight.grad.item() == pytest.approx(2.0 + 200.0)
    ewc.after_step(torch.zeros(1, 1), 0.0)
    imp = ewc.importance()
    assert imp is not None and imp["weight"].item() == pytest.approx(1.0 + 4.0)  # not (202)^2


def test_l2_gradient_is_two_lam_times_the_displacement() -> None:
    model = tiny()
    l2 = L2(model, 0.25, [1], form="grad", lr=0.1)
    l2.after_step(torch.zeros(1, 4), 0.0)
    with torch.no_grad():
        shift = [torch.randn_like(p) for p in model.parameters()]
        for p, s in zip(model.parameters(), shift, strict=True):
            p += s
            p.grad = torch.zeros_like(p)
    l2.after_backward()
    for p, s in zip(model.parameters(), shift, strict=True):
        assert torch.allclose(p.grad, 2 * 0.25 * s, atol=1e-6)


@pytest.mark.parametrize("name", ["mas-oracle", "l2", "ewc"])
def test_penalty_forms_loss_and_grad_give_the_same_gradient(name: str) -> None:
    grads = {}
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    for form in ("loss", "grad"):
        model = tiny()
        cfg = load_config(None, [f'learner.{name}.penalty="{form}"', f"learner.{name}.lam=0.5"])
        learner = build_learner(name, cfg, model, [2, 10])
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            step(model, learner, x, y, opt)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        learner.after_backward()
        grads[form] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["loss"], grads["grad"], strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert any(bool((a != 0).any()) for a in grads["grad"])


def test_proximal_form_pulls_towards_the_anchor_without_touching_grad() -> None:
    model = tiny()
    lam, lr = 1e4, 0.1
    mas = OnlineMAS(model, lam, boundaries=[1], config=MASConfig(share=1.0))
    learner = MAS("mas-oracle", mas, form="proximal", lr=lr)
    x = torch.randn(8, 4)
    learner.after_step(x, 0.0)  # consolidates: anchor = current weights
    anchor = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p += 1.0
    learner.after_backward()
    assert all(p.grad is None for p in model.parameters())
    learner.after_step(x, 0.0)
    omega, c = learner.mas.omega, 2 * lr * lam
    for (n, p), a in zip(model.named_parameters(), anchor, strict=True):
        # theta <- (v + c Omega theta*) / (1 + c Omega), with v = theta* + 1
        expected = (a + 1.0 + c * omega[n] * a) / (1.0 + c * omega[n])
        assert torch.allclose(p, expected, atol=1e-5)
        assert bool((omega[n] > 0).any())


@pytest.mark.parametrize("name", ["finetune", "online-mas", "mas-oracle", "l2", "ewc", "joint"])
def test_state_round_trip_gives_the_same_next_steps(name: str) -> None:
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(8, 4, generator=g) for _ in range(12)]
    ys = [torch.randint(0, 3, (8,), generator=g) for _ in range(12)]
    cfg = load_config(None, ['learner.online-mas.detector="periodic"',
                             "learner.online-mas.detector_args={every=4}"])

    def fresh() -> tuple[nn.Module, object, torch.optim.Optimizer]:
        model = tiny()
        return model, build_learner(name, cfg, model, [3, 7, 12]), torch.optim.SGD(
            model.parameters(), lr=0.1, momentum=0.9)

    model, learner, opt = fresh()
    for x, y in zip(xs[:6], ys[:6], strict=True):
        step(model, learner, x, y, opt)
    saved = (model.state_dict(), opt.state_dict(), learner.state_dict())  # type: ignore[attr-defined]
    saved = torch.load(_roundtrip(saved), weights_only=True)
    for x, y in zip(xs[6:], ys[6:], strict=True):
        step(model, learner, x, y, opt)
    model2, learner2, opt2 = fresh()
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    learner2.load_state_dict(saved[2])  # type: ignore[attr-defined]
    for x, y in zip(xs[6:], ys[6:], strict=True):
        step(model2, learner2, x, y, opt2)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def _roundtrip(obj: object) -> object:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_loading_another_learners_state_is_refused() -> None:
    model = tiny()
    ewc = build_learner("ewc", ExperimentConfig(), model, [5])
    l2 = build_learner("l2", ExperimentConfig(), model, [5])
    with pytest.raises(ValueError, match="learner state was saved by 'ewc', not by 'l2'"):
        l2.load_state_dict(ewc.state_dict())


def test_loading_a_state_of_another_shape_names_the_parameter() -> None:
    ewc = build_learner("ewc", ExperimentConfig(), tiny(), [1])
    ewc.after_step(torch.zeros(1, 4), 0.0)  # a consolidated state
    other = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with pytest.raises(ValueError, match=r"ewc omega does not match the model: missing \[\], "
                                         r"unexpected \[\], shape mismatches \['0.bias: saved \(5,\)"):
        build_learner("ewc", ExperimentConfig(), other, [1]).load_state_dict(ewc.state_dict())


def test_detector_args_that_do_not_fit_are_reported() -> None:
    cfg = load_config(None, ['learner.online-mas.detector="cusum"',
                             "learner.online-mas.detector_args={period=3}"])
    with pytest.raises(ValueError, match=r"detector_args \{'period': 3\} do not fit detector 'cusum'"):
        build_learner("online-mas", cfg, tiny(), [5])


def test_only_oracle_learners_get_the_boundaries() -> None:
    model = tiny()
    online = build_learner("online-mas", ExperimentConfig(), model, [5, 9])
    oracle = build_learner("mas-oracle", ExperimentConfig(), model, [5, 9])
    assert isinstance(online, MAS) and online.mas.boundaries is None and online.mas.detector is not None
    assert isinstance(oracle, MAS) and oracle.mas.boundaries == frozenset({5, 9})


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_models_build_for_digits_and_are_seeded(kind: str) -> None:
    cfg = ModelConfig(kind=kind, hidden=(16,), channels=(4, 8))
    torch.manual_seed(3)
    a = build_model(cfg, (1, 8, 8), 10)
    torch.manual_seed(3)
    b = build_model(cfg, (1, 8, 8), 10)
    assert a(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_cnn_needs_images() -> None:
    with pytest.raises(ValueError, match=r"model kind 'cnn' needs image inputs of shape \(C, H, W\)"):
        build_model(ModelConfig(kind="cnn"), (64,), 10)


@pytest.mark.parametrize("learner", ["online-mas", "mas-oracle", "tfcl", "mas+er", "mas+lwf"])
def test_a_huber_shape_needs_its_delta_and_only_it(learner: str) -> None:
    with pytest.raises(ValueError, match="shape = 'huber' needs delta"):
        load_config(None, [f'learner.{learner}.shape="huber"'])
    with pytest.raises(ValueError, match="delta applies to shape = 'huber' only"):
        load_config(None, [f"learner.{learner}.delta=0.1"])
    with pytest.raises(ValueError, match="shape must be one of"):
        load_config(None, [f'learner.{learner}.shape="cubic"'])


@pytest.mark.parametrize("form", ["grad", "loss", "proximal"])
def test_config_shape_reaches_every_penalty_form(form: str) -> None:
    """L1 from the config: the explicit forms add lam Omega sign(d); proximal soft-thresholds."""
    lam = 0.3
    cfg = load_config(None, [f'learner.mas-oracle.penalty="{form}"', f"learner.mas-oracle.lam={lam}",
                             'learner.mas-oracle.shape="l1"', "learner.mas-oracle.mas.share=1.0"])
    lr = cfg.optim.lr  # the proximal step size
    model = tiny()
    learner = build_learner("mas-oracle", cfg, model, [1, 100])
    learner.after_step(torch.randn(8, 4), 0.0)  # consolidates: anchor = these weights
    anchor = [p.detach().clone() for p in model.parameters()]
    shift = [torch.randn_like(p) * 0.5 for p in anchor]
    with torch.no_grad():
        for p, s in zip(model.parameters(), shift, strict=True):
            p += s
    omega = learner.importance()
    assert omega is not None
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    learner.after_backward()
    names = [n for n, _ in model.named_parameters()]
    if form == "proximal":
        learner.after_step(torch.randn(8, 4), 0.0)
        for n, p, a, s in zip(names, model.parameters(), anchor, shift, strict=True):
            c = lr * lam * omega[n]
            assert torch.allclose(p, a + s.sign() * (s.abs() - c).clamp_min(0), atol=1e-6)
    else:
        for n, p, s in zip(names, model.parameters(), shift, strict=True):
            assert torch.allclose(p.grad, lam * omega[n] * s.sign(), atol=1e-6)
    assert learner.log_values()["penalty"] == pytest.approx(
        lam * sum(float((omega[n] * (p - a).abs()).sum())
                  for n, p, a in zip(names, model.parameters(), anchor, strict=True)), rel=1e-4)
