"""Distillation: the loss against a hand formula, the teacher at the anchor, composition, state."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from online_mas import Distiller, MASConfig, OnlineMAS, distillation_loss


def hand_kl(student: list[list[float]], teacher: list[list[float]], t: float) -> float:
    total = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        zs = sum(math.exp(v / t) for v in s_row)
        zt = sum(math.exp(v / t) for v in t_row)
        for sv, tv in zip(s_row, t_row, strict=True):
            p, q = math.exp(tv / t) / zt, math.exp(sv / t) / zs
            total += p * math.log(p / q)
    return t * t * total / len(student)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
def test_distillation_loss_matches_the_hand_formula(temperature: float) -> None:
    student = [[0.3, -1.2, 2.0], [1.0, 1.0, -0.5]]
    teacher = [[1.5, 0.2, -0.7], [0.0, 2.5, 0.1]]
    got = distillation_loss(torch.tensor(student), torch.tensor(teacher), temperature=temperature)
    assert got.item() == pytest.approx(hand_kl(student, teacher, temperature), rel=1e-5)


def hand_confident_kl(student: list[list[float]], teacher: list[list[float]], t: float,
                      power: float) -> float:
    """Per-sample hand KL, each weighted by the teacher's top probability (at T = 1) ** power."""
    total = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        top = max(math.exp(v) for v in t_row) / sum(math.exp(v) for v in t_row)
        total += top**power * hand_kl([s_row], [t_row], t)
    return total / len(student)


@pytest.mark.parametrize("n", [1, 2, 64])
@pytest.mark.parametrize("power", [0.0, 1.0, 4.0])
def test_confidence_weighting_matches_the_hand_formula(n: int, power: float) -> None:
    g = torch.Generator().manual_seed(n)
    student, teacher = torch.randn(n, 5, generator=g), 3 * torch.randn(n, 5, generator=g)
    got = distillation_loss(student, teacher, temperature=2.0, confidence=power)
    want = hand_confident_kl(student.tolist(), teacher.tolist(), 2.0, power)
    assert got.item() == pytest.approx(want, rel=1e-5)
    if power == 0.0:
        assert torch.equal(got, distillation_loss(student, teacher, temperature=2.0))
    else:  # weights lie in (0, 1]: never more than plain LwF
        assert got.item() < distillation_loss(student, teacher, temperature=2.0).item()


def test_confident_teacher_samples_dominate_the_gradient() -> None:
    # the same KL gap on a sure and on an unsure sample: the sure one is pulled harder
    student = torch.zeros(2, 3, requires_grad=True)
    teacher = torch.tensor([[6.0, 0.0, 0.0], [0.4, 0.0, 0.0]])
    distillation_loss(student, teacher, temperature=1.0, confidence=4.0).backward()
    assert student.grad is not None
    sure, unsure = student.grad.norm(dim=1).tolist()
    plain = torch.zeros(2, 3, requires_grad=True)
    distillation_loss(plain, teacher, temperature=1.0).backward()
    assert plain.grad is not None
    ratio = plain.grad.norm(dim=1)
    top = torch.softmax(teacher, 1).max(1).values
    assert sure / unsure == pytest.approx(float(ratio[0] / ratio[1] * (top[0] / top[1]) ** 4), rel=1e-5)


def test_distillation_gradient_is_the_soft_target_gap() -> None:
    # d/ds of T^2 KL(p || softmax(s / T)) = T (softmax(s / T) - p), averaged over the batch
    s = torch.tensor([[0.3, -1.2, 2.0]], requires_grad=True)
    t = torch.tensor([[1.5, 0.2, -0.7]])
    distillation_loss(s, t, temperature=2.0).backward()
    expected = 2.0 * (F.softmax(s.detach() / 2.0, 1) - F.softmax(t / 2.0, 1))
    assert s.grad is not None and torch.allclose(s.grad, expected, atol=1e-6)


def test_the_teacher_is_the_model_at_the_anchor_and_stays_frozen() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    d = Distiller(model, temperature=1.0, weight=2.0)
    anchor = {n: p.detach() + 0.5 for n, p in model.named_parameters()}
    d.refresh(anchor)
    x = torch.randn(5, 3)
    expected = torch.func.functional_call(model, anchor, (x,))
    assert d.teacher is not None and torch.allclose(d.teacher(x), expected)
    student = model(x)
    loss = d.loss(x, student)
    assert loss.item() == pytest.approx(2.0 * hand_kl(student.tolist(), expected.tolist(), 1.0), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in d.teacher.parameters())
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert torch.allclose(d.teacher(x), expected)  # a snapshot, not a view of the live model


def test_refresh_at_each_consolidation_event_and_the_signal_is_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    mas = OnlineMAS(model, 1.0, config=MASConfig(share=1.0), boundaries=[2, 4])
    plain = OnlineMAS(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), 1.0,
                      config=MASConfig(share=1.0), boundaries=[2, 4])
    plain.model.load_state_dict(model.state_dict())
    d = Distiller(model, weight=1.0)
    refreshed = []
    for step in range(1, 5):
        x = torch.randn(6, 3)
        out = model(x)
        d.loss(x, out)  # the teacher's forward after the user's must not hide the user's output
        plain.model(x)
        event = mas.observe(x)
        plain.observe(x)
        assert mas.last_signal == plain.last_signal
        if event is not None:
            d.refresh(mas.anchors)
            refreshed.append(step)
            with torch.no_grad():
                model[2].bias.add_(1.0)  # training moves on; the teacher stays at theta*
                plain.model[2].bias.add_(1.0)
    assert refreshed == [2, 4] and d.teacher is not None
    teacher = dict(d.teacher.named_parameters())
    assert all(torch.equal(teacher[n], a) for n, a in mas.anchors.items())


def test_state_round_trip_gives_the_same_next_loss() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    d = Distiller(model, temperature=3.0, weight=0.7, confidence=2.0)
    d.refresh()
    with torch.no_grad():
        model.weight.mul_(-1.0)
    buf = io.BytesIO()
    torch.save(d.state_dict(), buf)
    buf.seek(0)
    e = Distiller(model)
    e.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(4, 3)
    assert torch.equal(d.loss(x, model(x)), e.loss(x, model(x))) and e.temperature == 3.0
    assert e.confidence == 2.0
    empty = Distiller(model)
    empty.load_state_dict(Distiller(model).state_dict())
    assert empty.teacher is None and float(empty.loss(x, model(x))) == 0.0


def test_bad_values_are_named() -> None:
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        Distiller(model, temperature=0)
    with pytest.raises(ValueError, match="weight must be a finite number >= 0, got -1"):
        Distiller(model, weight=-1)
    with pytest.raises(ValueError, match=r"unknown \['head.weight'\]"):
        Distiller(model).refresh({"head.weight": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match=r"shape mismatches \['bias: anchor \(3,\), model \(2,\)'\]"):
        Distiller(model).refresh({"bias": torch.zeros(3)})
    with pytest.raises(ValueError, match="confidence must be a finite number >= 0, got -1"):
        Distiller(model, confidence=-1)
    with pytest.raises(ValueError, match="confidence must be a finite number >= 0, got nan"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), confidence=float("nan"))
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="missing"):
        Distiller(nn.Linear(4, 2)).load_state_dict(
            {"version": 1, "temperature": 2.0, "weight": 1.0, "teacher": {"weight": torch.zeros(2, 3)}})
