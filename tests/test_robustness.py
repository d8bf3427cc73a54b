"""Bad data and model changes mid-stream: nothing learned is lost, nothing becomes non-finite."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import online_mas as om
import streams

EVERY_STEP = om.MASConfig(every=1)  # estimate importance on every observe() call


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
