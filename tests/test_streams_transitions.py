"""Schedules: validation, mixing weights, lengths, recurring orders."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import Schedule, recurring_order, segment_lengths


def test_abrupt_weights_are_one_hot_per_occurrence() -> None:
    s = Schedule((0, 2, 1), (5, 3, 4), n_segments=3)
    assert s.starts == (0, 5, 8) and s.n_samples == 12 and s.change_samples == [5, 8]
    w = s.weights(0, 12)
    assert w.argmax(1).tolist() == [0] * 5 + [2] * 3 + [1] * 4
    assert torch.equal(w.sum(1), torch.ones(12, dtype=torch.float64))
    assert all(s.is_pure(a, a + 1) for a in range(12)) and not s.is_pure(4, 6)


def test_gradual_weights_rise_linearly_over_the_window() -> None:
    s = Schedule((0, 1, 0), (40, 40, 40), kind="gradual", width=20)
    w = s.weights(0, 120)
    incoming = w[30:50, 1]
    assert torch.allclose(incoming, (torch.arange(20, dtype=torch.float64) + 0.5) / 20)
    assert torch.equal(w[:30, 0], torch.ones(30, dtype=torch.float64))
    assert torch.equal(w[50:70, 1], torch.ones(20, dtype=torch.float64))
    assert torch.allclose(w[70:90, 0], (torch.arange(20, dtype=torch.float64) + 0.5) / 20)
    assert s.is_pure(50, 70) and not s.is_pure(48, 52)
    assert float(w[40, 1]) > 0.5 > float(w[39, 1])  # the change point is the window's middle


def test_blurry_weights_give_the_share_to_the_other_segments() -> None:
    s = Schedule((0, 1, 2, 3), (10, 10, 10, 10), kind="blurry", share=0.3)
    w = s.weights(10, 20)
    assert torch.allclose(w[:, 1], torch.full((10,), 0.7, dtype=torch.float64))
    assert torch.allclose(w[:, [0, 2, 3]], torch.full((10, 3), 0.1, dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(4, 50), min_size=1, max_size=6),
       kind=st.sampled_from(["abrupt", "gradual", "blurry"]), data=st.data())
def test_weights_are_distributions_and_draws_follow_them(lengths: list[int], kind: str,
                                                         data: st.DataObject) -> None:
    order = tuple(i % 3 for i in range(len(lengths)))
    width = data.draw(st.integers(1, min(lengths))) if kind == "gradual" else 0
    share = data.draw(st.floats(0.0, 0.9)) if kind == "blurry" else 0.0
    s = Schedule(order, tuple(lengths), kind=kind, width=width, share=share,
                 n_segments=max(order) + 1 if kind != "blurry" else 3)
    w = s.weights(0, s.n_samples)
    assert torch.allclose(w.sum(1), torch.ones(s.n_samples, dtype=torch.float64))
    assert bool((w >= 0).all())
    drawn = s.draw(0, s.n_samples, seed=1)
    assert bool((w[torch.arange(s.n_samples), drawn] > 0).all())  # only segments with weight


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"order": (0, 0), "lengths": (4, 4)}, "repeats segment 0 at positions 0 and 1"),
    ({"order": (0, 1), "lengths": (4,)}, "equally long"),
    ({"order": (0, 1), "lengths": (4, 0)}, "lengths must be ints >= 1, got 0"),
    ({"order": (0, -1), "lengths": (4, 4)}, "order entries must be ints >= 0, got -1"),
    ({"order": (0, 1), "lengths": (4, 4), "kind": "smooth"}, "unknown transition 'smooth'"),
    ({"order": (0, 1), "lengths": (4, 8), "kind": "gradual", "width": 5},
     r"width must be an int in \[1, shortest length 4\], got 5"),
    ({"order": (0, 1), "lengths": (4, 4), "kind": "blurry", "share": 1.0},
     r"share must lie in \[0, 1\)"),
    ({"order": (0, 3), "lengths": (4, 4), "n_segments": 2}, "n_segments must be an int >"),
])
def test_bad_schedules_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Schedule(**kwargs)


def test_segment_lengths_are_whole_batches() -> None:
    assert segment_lengths([1438] * 3, [0, 1, 2], passes=10, batch_size=32) == [14368] * 3
    assert segment_lengths([10], [0], passes=0.01, batch_size=8) == [8]  # at least one batch
    rnd = segment_lengths([1000] * 50, list(range(50)), passes=1, batch_size=10, random=True,
                          seed=2)
    assert all(n % 10 == 0 and 500 <= n <= 1500 for n in rnd) and len(set(rnd)) > 10
    assert rnd != segment_lengths([1000] * 50, list(range(50)), passes=1, batch_size=10,
                                  random=True, seed=3)
    with pytest.raises(ValueError, match="passes must be a finite number > 0, got 0"):
        segment_lengths([10], [0], passes=0)
    with pytest.raises(ValueError, match="batch_size must be ints >= 1, got 0"):
        segment_lengths([10], [0], batch_size=0)


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_recurring_order_revisits_without_repeats(n: int) -> None:
    order = recurring_order(n, seed=n)
    assert len(order) == max(1, 2 * n - 1)
    assert list(dict.fromkeys(order)) == list(range(n))  # new segments come in order
    assert all(a != b for a, b in itertools.pairwise(order))
    Schedule(tuple(order), (1,) * len(order))  # a valid schedule
