"""Every public entry point answers wrong arguments with TypeError/ValueError naming the value.

Random wrong values (types, shapes, ranges, non-finite numbers) are fed to each entry point; the
only acceptable outcomes are success or a TypeError/ValueError. Anything else (AttributeError,
IndexError, RuntimeError, a crash deep inside torch) is a bug.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import online_mas as om
import streams
from online_mas.accumulate import RunningImportance
from online_mas.consolidate import combine, normalize

BAD_VALUES: list[object] = [
    None, "", "exact", -1, 0, 1, 10**9, -0.5, 1.5, math.nan, math.inf, -math.inf, True, [], [1, 2],
    {}, {"a": 1}, object(), b"x", (1,), torch.tensor(1.0), torch.zeros(0), torch.zeros(3),
    torch.zeros(2, 5), torch.zeros(4, 4, dtype=torch.bool), torch.full((4, 4), math.nan),
    torch.zeros(4, 4, dtype=torch.complex64), torch.ones(4, 4, dtype=torch.int64) * 99,
]
ALLOWED = (TypeError, ValueError)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def _mas() -> om.OnlineMAS:
    mas = om.OnlineMAS(_model(), detector=None)
    mas.observe(torch.randn(4, 4))
    return mas


def _tmp() -> Path:
    return Path(tempfile.mkdtemp())


# name -> (function taking the list of arguments, the list of valid arguments)
ENTRY_POINTS: dict[str, tuple[Callable[..., object], list[object]]] = {
    "importance": (lambda m, x, method: om.importance(m, x, method=method),
                   [_model(), torch.randn(3, 4), "exact"]),
    "OnlineMAS": (lambda m, lam, cfg: om.OnlineMAS(m, lam, config=cfg),
                  [_model(), 1.0, om.MASConfig()]),
    "MASConfig": (lambda method, share, least, normalize: om.MASConfig(
                      method=method, share=share, min_estimate=least, normalize=normalize),
                  ["exact", 0.25, 32, "max"]),
    "StableAnchor": (lambda samples, weight: om.StableAnchor(samples=samples, weight=weight), [320, 0.5]),
    "EMA rule": (lambda alpha: om.consolidate.EMA(alpha), [0.5]),
    "observe": (lambda x, loss: _mas().observe(x, loss=loss), [torch.randn(2, 4), 0.3]),
    "consolidate": (lambda reason: _mas().consolidate(reason=reason), ["manual"]),
    "proximal_": (lambda lr: _mas().proximal_(lr), [0.1]),
    "load_state_dict": (lambda state: _mas().load_state_dict(state), [_mas().state_dict()]),
    "penalty_loss": (lambda p, a, o, lam: om.penalty_loss(p, a, o, lam),
                [[torch.zeros(2, requires_grad=True)], [torch.zeros(2)], [torch.ones(2)], 1.0]),
    "PageHinkley": (lambda d, t, m: om.PageHinkley(delta=d, threshold=t, mode=m), [0.1, 5.0, "up"]),
    "CUSUM": (lambda k, h: om.CUSUM(slack=k, threshold=h), [0.5, 8.0]),
    "Plateau": (lambda w, m, v: om.Plateau(window=w, mean_threshold=m, variance_threshold=v),
                [5, 0.2, 0.1]),
    "Periodic": (lambda n: om.Periodic(n), [3]),
    "detector.update": (lambda v: om.PageHinkley().update(v), [1.0]),
    "RunningImportance": (lambda avg, hl: RunningImportance(avg, half_life=hl), ["mean", 10.0]),
    "RunningImportance.update": (lambda s, n: RunningImportance().update(s, n),
                                 [{"w": torch.ones(2)}, 2]),
    "combine": (lambda rule, seg: combine(torch.ones(2), torch.ones(2), rule=rule, segments=seg),
                ["sum", 1]),
    "normalize": (lambda how: normalize({"w": torch.ones(2)}, how), ["max"]),
    "HardBuffer": (lambda size, decay: om.HardBuffer(size, decay=decay), [4, 0.9]),
    "FeatureShift": (lambda hl: om.FeatureShift(half_life=hl), [10.0]),
    "per_sample": (lambda name: om.signals.per_sample(name, torch.zeros(2, 3)), ["entropy"]),
    "average_accuracy": (lambda r: om.average_accuracy(r), [[[1.0]]]),
    "forward_transfer": (lambda r, b: om.forward_transfer(r, b), [[[0.5, 0.1], [0.4, 0.9]], [0.1, 0.1]]),
    "detection_scores": (lambda d, t, tol, n: om.detection_scores(d, t, tolerance=tol, n_steps=n),
                         [[5], [3], 10, 100]),
    "checkpoint.save": (lambda obj: om.checkpoint.save(obj, _tmp() / "c.pt"), [{"a": 1}]),
    "checkpoint.load": (lambda path: om.checkpoint.load(path), [str(_tmp() / "missing.pt")]),
    "make_stream": (lambda name, bs, n: streams.make_stream(name, batch_size=bs, n_segments=n),
                    ["permuted-digits", 32, 2]),
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_every_single_wrong_argument_raises_a_clean_error(name: str) -> None:
    """Exhaustive: each argument position of each entry point, each bad value."""
    fn, valid = ENTRY_POINTS[name]
    for i in range(len(valid)):
        for bad in BAD_VALUES:
            args = list(valid)
            args[i] = bad
            try:
                fn(*args)
            except ALLOWED as err:
                assert str(err), f"{name}: empty error message"


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_combinations_of_wrong_arguments_raise_clean_errors(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(ENTRY_POINTS)))
    fn, valid = ENTRY_POINTS[name]
    args = list(valid)
    positions = data.draw(st.sets(st.integers(0, len(args) - 1), min_size=1))
    for i in positions:
        args[i] = data.draw(st.sampled_from(BAD_VALUES))
    try:
        fn(*args)
    except ALLOWED as err:  # CheckpointError and NonFiniteError are ValueErrors
        assert str(err), f"{name}: empty error message"


def test_messages_name_the_bad_value() -> None:
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: om.OnlineMAS(_model(), -3.5), "-3.5"),
        (lambda: om.OnlineMAS(_model(), rule="median"), "'median'"),
        (lambda: om.importance(_model(), torch.randn(3, 4), method="fish"), "'fish'"),
        (lambda: om.PageHinkley(threshold=-2.0), "-2.0"),
        (lambda: om.HardBuffer(-4), "-4"),
        (lambda: streams.make_stream("permuted-dgits"), "permuted-dgits"),
    ]
    for call, text in cases:
        try:
            call()
        except ALLOWED as err:
            assert text in str(err), (text, str(err))
        else:
            raise AssertionError(f"no error for {text}")
