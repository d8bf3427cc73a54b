"""Named streams, their options and errors, and the package's public names."""

from __future__ import annotations

import pytest
import torch

import streams
from streams import STREAM_NAMES, StreamConfig, make_stream


@pytest.fixture(autouse=True)
def streams_one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_public_name_imports() -> None:
    for name in streams.__all__:
        assert getattr(streams, name) is not None, name
    assert len(set(streams.__all__)) == len(streams.__all__)


DIGITS = [n for n in STREAM_NAMES if "digits" in n]


def test_names_cover_the_recipes_over_digits_and_torchvision_sets() -> None:
    assert DIGITS == ["permuted-digits", "rotated-digits", "split-digits", "corrupted-digits",
                      "split-digits-domain"]
    for data in ("mnist", "fashion-mnist"):
        for recipe in ("permuted", "rotated", "split", "corrupted"):
            assert f"{recipe}-{data}" in STREAM_NAMES
        assert f"split-{data}-domain" in STREAM_NAMES


@pytest.mark.parametrize(("name", "n_segments", "n_classes", "classes_of_segment_1"), [
    ("permuted-digits", 5, 10, set(range(10))),
    ("rotated-digits", 5, 10, set(range(10))),
    ("split-digits", 5, 10, {2, 3}),
    ("split-digits-domain", 5, 2, {0, 1}),
    ("corrupted-digits", 6, 10, set(range(10))),
])
def test_digits_streams_build_and_yield_batches(name: str, n_segments: int, n_classes: int,
                                                classes_of_segment_1: set[int]) -> None:
    stream = make_stream(name, batch_size=16, seed=1)
    assert stream.n_segments == n_segments == len(stream.eval_sets)
    assert stream.n_classes == n_classes and stream.input_shape == (1, 8, 8)
    step = stream.change_points[0]
    x, y = stream.batch(step)
    assert x.shape == (16, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert set(stream.eval_sets[1][1].tolist()) == classes_of_segment_1
    assert stream.truth.segment_at(step) == 1


def test_corrupted_severities_rise_and_can_return_to_clean() -> None:
    stream = make_stream("corrupted-digits", order="return", corruption="blur", max_severity=4)
    assert stream.truth.segment_names == [f"blur {s}" for s in (0, 0.8, 1.6, 2.4, 3.2, 4)]
    assert stream.truth.order == [0, 1, 2, 3, 4, 5, 0]
    clean = make_stream("rotated-digits", n_segments=1)
    x0, _ = stream.batch(len(stream) - 1)  # back on the clean segment
    assert stream.segments[0].transform.severity == 0.0  # type: ignore[union-attr]
    assert x0.shape == clean.batch(0)[0].shape


def test_recurring_and_explicit_orders() -> None:
    rec = make_stream("split-digits", transition="recurring", n_segments=4)
    assert rec.truth.order == [0, 1, 0, 2, 1, 3, 1]
    assert make_stream("split-digits", transition="recurring", seed=9).truth.order[:3] == [0, 1, 0]
    explicit = make_stream("rotated-digits", n_segments=3, order=(2, 0, 2, 1),
                           transition="gradual")
    assert explicit.truth.order == [2, 0, 2, 1] and explicit.schedule.kind == "gradual"


def test_passes_set_the_length_and_random_lengths_vary_it() -> None:
    one = make_stream("permuted-digits", n_segments=2)
    ten = make_stream("permuted-digits", n_segments=2, passes=10)
    assert (len(one), len(ten)) == (90, 898)
    rnd = make_stream("permuted-digits", n_segments=4, random_lengths=True, seed=3)
    gaps = [b - a for a, b in zip([0, *rnd.change_points], [*rnd.change_points, len(rnd)],
                                  strict=True)]
    assert len(set(gaps)) > 1 and all(22 <= g <= 68 for g in gaps)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"name": "permuted-imagenet"}, ValueError, "unknown stream 'permuted-imagenet'; allowed: "),
    ({"name": "split-digits", "batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
    ({"name": "split-digits", "batch_size": -3}, ValueError, "got -3"),
    ({"name": "split-digits", "transition": "smooth"}, ValueError, "transition must be one of"),
    ({"name": "split-digits", "n_segments": 11}, ValueError, "cannot cut 10 classes into 11"),
    ({"name": "split-digits-domain", "n_segments": 3}, ValueError, "dividing the 10 classes"),
    ({"name": "corrupted-digits", "max_severity": 9}, ValueError, r"max_severity must lie in"),
    ({"name": "corrupted-digits", "corruption": "fog"}, ValueError, "corruption must be one of"),
    ({"name": "rotated-digits", "order": "shuffled"}, ValueError, "order must be None"),
    ({"name": "rotated-digits", "order": (0, 7)}, ValueError, r"segment ids in \[0, 5\)"),
    ({"name": "rotated-digits", "passes": 0}, ValueError, "passes must be a finite number > 0"),
    ({"name": "rotated-digits", "transition": "blurry", "share": 1.5}, ValueError,
     r"share must lie in \[0, 1\)"),
    ({"name": "rotated-digits", "transition": "gradual", "window": 10**6}, ValueError,
     "gradual width must be an int"),
    ({"name": "rotated-digits", "colour": True}, TypeError, r"unknown options \['colour'\]"),
    ({"name": "rotated-digits", "validation": 1.0}, ValueError, r"validation must be a number in \[0, 1\)"),
    ({"name": "rotated-digits", "validation": True}, ValueError, "validation must be a number"),
])
def test_bad_options_are_rejected(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        make_stream(**kwargs)


def test_config_knows_recipe_and_data() -> None:
    cfg = StreamConfig("split-fashion-mnist-domain")
    assert (cfg.recipe, cfg.data, cfg.segment_count()) == ("split-domain", "fashion-mnist", 5)
    assert StreamConfig("split-cifar100").segment_count(100) == 10


def test_mnist1d_streams_are_generated_locally_and_leave_global_seeds_alone() -> None:
    import random

    import numpy as np

    assert [n for n in STREAM_NAMES if "mnist1d" in n] == [
        "permuted-mnist1d", "split-mnist1d", "split-mnist1d-domain"]
    np.random.seed(7)
    random.seed(7)
    stream = make_stream("permuted-mnist1d", batch_size=8, seed=0)
    assert (np.random.rand(), random.random()) == (np.random.RandomState(7).rand(),
                                                   random.Random(7).random())
    assert stream.input_shape == (1, 40) and stream.n_classes == 10 and stream.n_segments == 5
    assert len(stream.eval_sets[0][1]) == 1000
    x, y = stream.batch(0)
    assert x.shape == (8, 1, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    again = make_stream("permuted-mnist1d", batch_size=8, seed=0).batch(0)[0]
    assert torch.equal(x, again)
    split = make_stream("split-mnist1d-domain", batch_size=8)
    assert split.n_classes == 2 and set(split.eval_sets[1][1].tolist()) == {0, 1}
    with pytest.raises(ValueError, match="unknown stream 'rotated-mnist1d'"):
        make_stream("rotated-mnist1d")


@pytest.mark.parametrize("name", ["split-digits-domain", "permuted-digits"])
def test_validation_streams_evaluate_on_held_out_training_data_only(name: str) -> None:
    from streams import digits_source, validation_source

    plain = make_stream(name, seed=3)
    val = make_stream(name, seed=3, validation=0.25)
    src = digits_source()
    split = validation_source(src, 0.25)
    assert len(split.train) + len(split.test) == len(src.train)  # the test pool is not in it at all
    assert len(split.test) == round(0.25 * len(src.train))
    test_rows = {tuple(r.flatten().tolist()) for r in src.test.fetch(torch.arange(len(src.test)))}
    for (xv, _), (xt, _) in zip(val.eval_sets, plain.eval_sets, strict=True):
        if name == "permuted-digits":  # every segment evaluates on all held-out images, permuted
            assert (len(xv), len(xt)) == (len(split.test), len(src.test))
        assert len(xv) > 0
        seen_in_test = sum(tuple(r.flatten().tolist()) in test_rows for r in xv)
        if name == "split-digits-domain":  # untransformed images: none of them is a test image
            assert seen_in_test == 0
    assert len(val) < len(plain)  # it trains on the remaining 75% of the training data
    again = make_stream(name, seed=4, validation=0.25)  # the split does not follow the stream's seed
    if name == "split-digits-domain":
        assert all(torch.equal(a[1], b[1]) for a, b in zip(val.eval_sets, again.eval_sets, strict=True))
