"""Batch transforms and scenarios (segments built from a source)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from streams import (
    Corrupt,
    Permute,
    Rotate,
    class_splits,
    corruptions,
    dataset_segments,
    digits_source,
    label_shift,
    permutations,
    rotations,
    tensor_source,
)


@pytest.fixture(scope="module")
def streams_digits():
    return digits_source()


def test_rotate_quarter_turn_is_rot90_counterclockwise() -> None:
    x = torch.rand(5, 2, 8, 8)
    assert torch.allclose(Rotate(90)(x), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)
    assert torch.allclose(Rotate(-90)(x), torch.rot90(x, -1, dims=(2, 3)), atol=1e-5)
    assert torch.allclose(Rotate(180)(x), torch.rot90(x, 2, dims=(2, 3)), atol=1e-5)
    assert Rotate(360)(x) is x


def test_rotate_matches_torchvision_direction() -> None:
    from torchvision.transforms.functional import InterpolationMode, rotate

    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 6:] = 1.0  # a bar pointing right from the centre
    ours = Rotate(90)(x)
    theirs = rotate(x, 90, interpolation=InterpolationMode.BILINEAR)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert float(ours[0, 0, :4, 4].sum()) == pytest.approx(3.0)  # now pointing up


def test_permute_is_undone_by_the_inverse_permutation() -> None:
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    x = torch.rand(4, 1, 8, 8)
    out = Permute(perm)(x)
    assert out.shape == x.shape
    assert torch.equal(Permute(torch.argsort(perm))(out), x)
    with pytest.raises(ValueError, match=r"permutation of 0\.\.D-1"):
        Permute(torch.tensor([0, 0, 1]))


def test_corruptions_severity_zero_is_identity_and_effects_grow() -> None:
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for kind in ("noise", "blur", "contrast"):
        assert torch.equal(Corrupt(kind, 0)(x), x)
    gray = torch.full((2000, 1, 8, 8), 0.5)
    for s in (1, 2):  # small enough that clipping to [0, 1] barely matters
        noisy = Corrupt("noise", s)(gray, torch.Generator().manual_seed(0))
        assert float((noisy - gray).std()) == pytest.approx(0.08 * s, rel=0.05)
    spread = [float(Corrupt("contrast", s)(x).std()) for s in (0, 2, 4)]
    assert spread[0] > spread[1] > spread[2]
    assert torch.allclose(Corrupt("contrast", 5)(x).mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-6)
    blurred = [Corrupt("blur", s)(x) for s in (1, 3, 5)]
    roughness = [float((b[..., 1:] - b[..., :-1]).abs().mean()) for b in blurred]
    assert roughness[0] > roughness[1] > roughness[2]
    flat = torch.full((1, 1, 8, 8), 0.3)
    assert torch.allclose(Corrupt("blur", 5)(flat), flat)


def test_noise_is_reproducible_from_the_generator() -> None:
    x = torch.rand(3, 1, 8, 8)
    a = Corrupt("noise", 2)(x, torch.Generator().manual_seed(5))
    b = Corrupt("noise", 2)(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, x)


@pytest.mark.parametrize("severity", [-0.1, 5.5, float("nan"), "3", True])
def test_severity_out_of_range_is_rejected(severity: object, streams_digits) -> None:
    with pytest.raises(ValueError, match=r"severity must lie in \[0, 5.0\]"):
        corruptions(streams_digits, [0, severity])  # type: ignore[list-item]


def test_permutations_identity_first_and_seeded(streams_digits) -> None:
    segs = permutations(streams_digits, 3, seed=4)
    assert segs[0].transform is None
    p1, p2 = segs[1].transform.perm, segs[2].transform.perm
    assert not torch.equal(p1, p2)
    assert torch.equal(p1, permutations(streams_digits, 3, seed=4)[1].transform.perm)
    assert not torch.equal(p1, permutations(streams_digits, 3, seed=5)[1].transform.perm)
    assert permutations(streams_digits, 2, identity_first=False)[0].transform is not None


def test_class_splits_class_and_domain_labels(streams_digits) -> None:
    ci = class_splits(streams_digits, 5)
    assert [s.name for s in ci] == [f"classes {2 * k}/{2 * k + 1}" for k in range(5)]
    for k, seg in enumerate(ci):
        _, y = seg.fetch(torch.arange(seg.n_train))
        assert set(y.tolist()) == {2 * k, 2 * k + 1} and seg.n_classes == 10
        _, yt = seg.fetch(torch.arange(seg.n_test), train=False)
        assert set(yt.tolist()) == {2 * k, 2 * k + 1}
    di = class_splits(streams_digits, [[3, 7, 1], [0, 2, 9]], labels="domain")
    _, y = di[0].fetch(torch.arange(di[0].n_train))
    raw = streams_digits.train.y[di[0].train_idx]
    assert torch.equal(y, torch.tensor([3, 7, 1]).eq(raw[:, None]).int().argmax(1))
    assert di[0].n_classes == 3
    parity = class_splits(streams_digits, 5, labels="domain")
    _, y = parity[2].fetch(torch.arange(parity[2].n_train))
    assert torch.equal(y, streams_digits.train.y[parity[2].train_idx] % 2)


@pytest.mark.parametrize(("splits", "match"), [
    ([[0, 1], [1, 2]], "disjoint; class 1"),
    ([[0, 1], [2, 12]], r"class 12 .* is absent from digits; allowed classes: \[0, 1, 2"),
    ([[0, 1], []], "must not be empty"),
    (11, "cannot cut 10 classes into 11 splits"),
    (0, "int >= 1, got 0"),
])
def test_bad_class_splits_are_rejected(streams_digits, splits: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        class_splits(streams_digits, splits)  # type: ignore[arg-type]


def test_label_shift_follows_the_proportions(streams_digits) -> None:
    props = [[1.0] * 5 + [0.2] * 5, [0.0] * 5 + [1.0] * 5]
    segs = label_shift(streams_digits, props, seed=0)
    counts = streams_digits.train.y[segs[0].train_idx].bincount(minlength=10).float()
    full = streams_digits.train.y.bincount().float()
    assert torch.allclose(counts / full, torch.tensor(props[0]), atol=0.01)
    _, y1 = segs[1].fetch(torch.arange(segs[1].n_test), train=False)
    assert set(y1.tolist()) == {5, 6, 7, 8, 9}
    with pytest.raises(ValueError, match=r"proportions\[0\] must hold 10 non-negative"):
        label_shift(streams_digits, [[1.0, -1.0] * 5])


def test_dataset_segments_and_rotations_check_shapes(streams_digits) -> None:
    a = tensor_source(torch.rand(20, 1, 8, 8), torch.arange(20) % 2, name="a")
    segs = dataset_segments([streams_digits, a])
    assert [s.name for s in segs] == ["digits", "a"] and segs[1].n_classes == 2
    flat = tensor_source(torch.rand(20, 64), torch.arange(20) % 2, name="flat")
    with pytest.raises(ValueError, match="one input shape"):
        dataset_segments([streams_digits, flat])
    with pytest.raises(ValueError, match=r"rotations need image inputs \(C, H, W\), got \(64,\)"):
        rotations(flat, [0, 30])
    x, _ = rotations(streams_digits, [0, 45])[1].fetch(torch.arange(3))
    ref = streams_digits.train.fetch(torch.arange(3))
    assert x.shape == ref.shape and not torch.allclose(x, ref)
    assert F.mse_loss(x.mean(0), ref.mean(0)) > 0
