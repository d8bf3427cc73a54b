"""Running averages are independent of batching; consolidation rules keep their invariants."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from online_mas.accumulate import RunningImportance
from online_mas.consolidate import RULES, combine, normalize


def _feed(r: RunningImportance, values: torch.Tensor, cuts: list[int]) -> None:
    start = 0
    for end in [*cuts, values.shape[0]]:
        if end > start:
            r.update({"w": values[start:end].sum(0)}, end - start)
            start = end


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    cuts_a=st.lists(st.integers(0, 60), max_size=8),
    cuts_b=st.lists(st.integers(0, 60), max_size=8),
    seed=st.integers(0, 2**16),
)
def test_running_mean_independent_of_batching(n: int, cuts_a: list[int], cuts_b: list[int],
                                              seed: int) -> None:
    values = torch.rand(n, 3, generator=torch.Generator().manual_seed(seed)) * 10
    a, b = RunningImportance(), RunningImportance()
    _feed(a, values, sorted(c for c in cuts_a if c < n))
    _feed(b, values, sorted(c for c in cuts_b if c < n))
    assert a.count == b.count == n
    assert torch.allclose(a.value()["w"], values.mean(0), rtol=1e-5)
    assert torch.allclose(a.value()["w"], b.value()["w"], rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), cuts=st.lists(st.integers(0, 40), max_size=6),
       half_life=st.floats(0.5, 100.0))
def test_ema_of_a_constant_is_that_constant_and_batching_matters_little(
    n: int, cuts: list[int], half_life: float
) -> None:
    r = RunningImportance("ema", half_life=half_life)
    _feed(r, torch.full((n, 2), 3.0), sorted(c for c in cuts if c < n))
    assert torch.allclose(r.value()["w"], torch.full((2,), 3.0))  # bias-corrected from sample 1


def test_ema_half_life_in_samples() -> None:
    r = RunningImportance("ema", half_life=10)
    r.update({"w": torch.zeros(1)}, 1_000)  # long history of zeros: weight ~ 1
    r.update({"w": torch.full((1,), 8.0) * 10}, 10)  # then 10 samples of value 8
    assert torch.allclose(r.value()["w"], torch.tensor([4.0]), rtol=1e-3)  # half way after 1 half-life
    per_sample = RunningImportance("ema", half_life=10)
    per_sample.update({"w": torch.zeros(1)}, 1_000)
    for _ in range(10):
        per_sample.update({"w": torch.full((1,), 8.0)}, 1)
    assert torch.allclose(per_sample.value()["w"], r.value()["w"], rtol=1e-5)


def test_statistics_are_float32_and_state_round_trips() -> None:
    r = RunningImportance()
    r.update({"w": torch.ones(2, dtype=torch.float64)}, 2)
    assert r.value()["w"].dtype == torch.float32
    s = RunningImportance()
    s.load_state_dict(r.state_dict())
    s.update({"w": torch.ones(2) * 4}, 2)
    r.update({"w": torch.ones(2) * 4}, 2)
    assert torch.equal(r.value()["w"], s.value()["w"]) and s.count == 4


def test_combine_rules_by_hand() -> None:
    old, new = torch.tensor([2.0, 0.0]), torch.tensor([4.0, 1.0])
    assert combine(old, new, rule="sum", segments=3).tolist() == [6.0, 1.0]
    assert combine(old, new, rule="mean", segments=3).tolist() == [2.5, 0.25]
    assert combine(old, new, rule="ema", segments=3, alpha=0.75).tolist() == [2.5, 0.25]
    assert combine(old, new, rule="max", segments=3).tolist() == [4.0, 1.0]
    for rule in RULES:  # the first segment is taken as it is
        assert combine(torch.zeros(2), new, rule=rule, segments=0).tolist() == [4.0, 1.0]


@settings(max_examples=40, deadline=None)
@given(segs=st.lists(st.lists(st.floats(0, 100), min_size=3, max_size=3), min_size=1, max_size=6))
def test_rule_invariants(segs: list[list[float]]) -> None:
    tensors = [torch.tensor(s) for s in segs]
    stacked = torch.stack(tensors)
    out = {r: torch.zeros(3) for r in RULES}
    for k, t in enumerate(tensors):
        for r in RULES:
            out[r] = combine(out[r], t, rule=r, segments=k, alpha=0.5)
    assert torch.allclose(out["sum"], stacked.sum(0), rtol=1e-5)
    assert torch.allclose(out["mean"], stacked.mean(0), rtol=1e-5, atol=1e-5)
    assert torch.equal(out["max"], stacked.max(0).values)
    assert bool((out["ema"] <= stacked.max(0).values + 1e-4).all())  # a convex combination
    assert bool((out["ema"] >= stacked.min(0).values - 1e-4).all())


def test_normalize() -> None:
    om = {"a": torch.tensor([1.0, 4.0]), "b": torch.tensor([2.0, 1.0])}
    assert normalize(om, "max")["a"].tolist() == [0.25, 1.0]
    assert normalize(om, "mean")["b"].tolist() == [1.0, 0.5]
    zeros = {"a": torch.zeros(2)}
    assert normalize(zeros, "max")["a"].tolist() == [0.0, 0.0]
    assert normalize(om, None) is om


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: RunningImportance("median"), "average must be one of"),
        (lambda: RunningImportance("ema", half_life=0), "half_life must be"),
        (lambda: RunningImportance().update({"w": torch.ones(1)}, 0), "n must be an int >= 1"),
        (lambda: combine(torch.ones(1), torch.ones(1), rule="min", segments=1), "rule must be"),
        (lambda: normalize({"w": torch.ones(1)}, "l2"), "normalize must be one of"),
    ],
)
def test_bad_input(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("average", ["mean", "ema"])
def test_an_update_with_factors_equals_a_plain_update_of_their_product(average: str) -> None:
    g = torch.Generator().manual_seed(0)
    first = {"w": torch.rand(3, 4, generator=g), "b": torch.rand(3, generator=g)}
    ga, aa = torch.rand(6, 3, generator=g), torch.rand(6, 4, generator=g)  # |G| and |A| of 6 samples
    second = {"w": ga.t() @ aa, "b": torch.rand(3, generator=g)}
    plain, folded = RunningImportance(average, half_life=5.0), RunningImportance(average, half_life=5.0)
    for r in (plain, folded):
        r.update({k: v.clone() for k, v in first.items()}, 4)
    plain.update({k: v.clone() for k, v in second.items()}, 6)
    folded.update({"b": second["b"].clone()}, 6, factors={"w": (ga, aa)})
    assert folded.count == plain.count == 10
    for k in first:
        torch.testing.assert_close(folded.value()[k], plain.value()[k])
    fresh = RunningImportance(average, half_life=5.0)  # no running value yet: the product over n
    fresh.update({}, 6, factors={"w": (ga, aa)})
    torch.testing.assert_close(fresh.value()["w"], second["w"] / 6)
    with pytest.raises(ValueError, match=r"either summed or factored, got both for \['w'\]"):
        folded.update({"w": second["w"]}, 1, factors={"w": (ga, aa)})


def test_a_state_dict_is_a_copy_that_later_updates_do_not_change() -> None:
    r = RunningImportance()
    r.update({"w": torch.ones(3)}, 1)
    state = r.state_dict()
    r.update({"w": torch.zeros(3)}, 1)  # updates the running value in place
    assert state["mean"]["w"].tolist() == [1.0, 1.0, 1.0]  # type: ignore[index]
