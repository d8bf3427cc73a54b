"""Label-free signals against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from online_mas.signals import SIGNALS, FeatureShift, InputShift, per_sample, signal_from, signal_value


def test_per_sample_values_by_hand() -> None:
    out = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0, 0.0]])
    # probabilities: uniform 1/4; then (3/6, 1/6, 1/6, 1/6)
    assert per_sample("entropy", out)[0].item() == pytest.approx(math.log(4))
    h2 = -(0.5 * math.log(0.5) + 3 * (1 / 6) * math.log(1 / 6))
    assert per_sample("entropy", out)[1].item() == pytest.approx(h2, rel=1e-6)
    assert per_sample("max_prob", out).tolist() == pytest.approx([0.25, 0.5])
    assert per_sample("output_norm", out).tolist() == pytest.approx([0.0, math.log(3.0) ** 2])
    assert signal_value("max_prob", out) == pytest.approx(0.375)


def test_signals_flatten_extra_dimensions() -> None:
    out = torch.zeros(2, 2, 3)
    assert per_sample("entropy", out).tolist() == pytest.approx([math.log(6)] * 2)


def test_feature_shift_is_about_one_when_stationary_and_jumps_on_a_shift() -> None:
    g = torch.Generator().manual_seed(1)
    fs = FeatureShift(half_life=30)
    values = [fs(torch.randn(64, 8, generator=g) * 3 + 1) for _ in range(300)]
    assert values[0] == 0.0
    assert 0.7 < sum(values[50:]) / 250 < 1.5
    assert fs(torch.randn(64, 8, generator=g) * 3 + 3) > 20  # the mean moved by 2/3 std


def test_feature_shift_state_round_trip() -> None:
    g = torch.Generator().manual_seed(2)
    batches = [torch.randn(16, 4, generator=g) for _ in range(20)]
    a = FeatureShift(half_life=5)
    for b in batches[:10]:
        a(b)
    b_ = FeatureShift(half_life=5)
    b_.load_state_dict(a.state_dict())
    assert [a(b) for b in batches[10:]] == [b_(b) for b in batches[10:]]


def test_bad_names_and_parameters() -> None:
    assert "loss" in SIGNALS
    with pytest.raises(ValueError, match="per-sample values exist for"):
        per_sample("loss", torch.zeros(2, 2))
    with pytest.raises(ValueError, match="half_life must be"):
        FeatureShift(half_life=0)


@pytest.mark.parametrize("batch", [1, 7, 32, 48, 1000])
@pytest.mark.parametrize("projections", [0, 64])
def test_input_shift_piece_sums_are_the_sums_of_its_per_sample_values(batch: int, projections: int) -> None:
    g = torch.Generator().manual_seed(batch)
    bulk, each = InputShift(projections=projections), InputShift(projections=projections)
    for i in range(max(6, 1200 // batch)):
        x = torch.rand(batch, 16, generator=g) + (0.5 if i * batch > 600 else 0.0)
        cuts = [batch // 2] if batch > 1 else []
        sums, lengths = bulk.piece_sums(x, cuts)
        ref = torch.stack([v.sum() for v in each.per_sample(x).split(lengths)])
        assert sum(lengths) == batch and all(k <= 32 for k in lengths)
        torch.testing.assert_close(sums, ref, rtol=1e-4, atol=1e-6)
    for key in ("mean", "var", "scale", "sum", "sumsq", "prefix"):
        a, b = getattr(bulk, "_" + key), getattr(each, "_" + key)
        assert (a is None) == (b is None), key
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert bulk.open_count == each.open_count


def test_per_sample_many_is_per_sample() -> None:
    out = torch.randn(300, 7, generator=torch.Generator().manual_seed(0)) * 3
    for name in ("entropy", "max_prob", "output_norm"):
        sig = signal_from(name)
        torch.testing.assert_close(sig.per_sample_many(out), per_sample(name, out))  # type: ignore[attr-defined]
