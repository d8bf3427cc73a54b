"""The Stream: determinism, resumption, ground truth against the data, mixing, memory, speed."""

from __future__ import annotations

import gc
import io
import resource
import time
import tracemalloc

import numpy as np
import pytest
import torch

from streams import (
    Schedule,
    Segment,
    Stream,
    digits_source,
    make_stream,
    permutations,
    tensor_source,
)


@pytest.fixture(autouse=True)
def streams_one_thread():
    """Batches are small: on a busy 2-core machine, torch's thread pool only adds waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _same(a: object, b: object) -> bool:
    if isinstance(a, tuple):
        return all(torch.equal(u, v) for u, v in zip(a, b, strict=True))  # type: ignore[arg-type]
    return torch.equal(a, b)  # type: ignore[arg-type]


def _id_stream(seed: int, length: int) -> Stream:
    """One segment of 64 training samples whose input is their own id: easy to audit."""
    src = tensor_source(torch.arange(64.0).view(64, 1), torch.zeros(64, dtype=torch.int64),
                        x_test=torch.zeros(4, 1), y_test=torch.zeros(4, dtype=torch.int64))
    return Stream([Segment(src, "ids")], Schedule((0,), (length,)), batch_size=16, seed=seed)


def test_same_seed_same_batches_other_seed_other_order() -> None:
    a = make_stream("permuted-digits", n_segments=3, seed=3, transition="blurry")
    b = make_stream("permuted-digits", n_segments=3, seed=3, transition="blurry")
    assert all(_same(u, v) for u, v in zip(a, b, strict=True))
    ids = {s: torch.cat([x for x, _ in _id_stream(s, 128)]).flatten() for s in (0, 1)}
    for s in (0, 1):  # every sample exactly once per pass, in a seed-dependent order
        assert sorted(ids[s][:64].tolist()) == list(range(64))
        assert sorted(ids[s][64:].tolist()) == list(range(64))
        assert not torch.equal(ids[s][:64], ids[s][64:])
    assert not torch.equal(ids[0], ids[1])


RESUME_CASES = [
    ("permuted-digits", {}),
    ("rotated-digits", {"transition": "gradual"}),
    ("split-digits", {"transition": "blurry", "share": 0.3}),
    ("corrupted-digits", {"transition": "recurring"}),
    ("corrupted-digits", {"labels": False, "random_lengths": True, "seed": 5}),
]


@pytest.mark.parametrize(("name", "options"), RESUME_CASES)
def test_resume_from_saved_cursor_gives_exactly_the_remaining_batches(name: str,
                                                                      options: dict) -> None:
    full = list(make_stream(name, **options))
    stop = len(full) // 2 + 3
    stream = make_stream(name, **options)
    for i, _ in enumerate(stream):
        if i == stop - 1:
            break
    assert stream.step == stop
    buffer = io.BytesIO()
    torch.save(stream.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = make_stream(name, **options)
    fresh.load_state_dict(state)
    rest = list(fresh)
    assert len(rest) == len(full) - stop
    assert all(_same(u, v) for u, v in zip(rest, full[stop:], strict=True))
    assert list(fresh) == []  # the stream is consumed, like a file
    fresh.reset()
    assert _same(next(iter(fresh)), full[0])


def test_load_state_dict_rejects_another_stream() -> None:
    state = make_stream("rotated-digits", seed=0).state_dict()
    with pytest.raises(ValueError, match="different stream; seed: saved 0, this stream 1"):
        make_stream("rotated-digits", seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="name: saved 'rotated-digits', this stream"):
        make_stream("permuted-digits").load_state_dict(state)
    with pytest.raises(ValueError, match="version 1, got version 7"):
        make_stream("rotated-digits").load_state_dict({**state, "version": 7})


def test_seek_and_random_access_match_iteration() -> None:
    stream = make_stream("split-digits", transition="gradual", seed=2)
    batches = list(stream)
    assert len(stream) == 45  # 5 segments of 9 batches
    for step in (0, 8, 9, 30, len(stream) - 1):
        assert _same(stream.batch(step), batches[step])
    stream.seek(30)
    assert _same(next(iter(stream)), batches[30]) and stream.step == 31
    for bad in (-1, len(stream) + 1, 2.0):
        with pytest.raises(ValueError, match=r"step must be an int in \[0, "):
            stream.seek(bad)  # type: ignore[arg-type]


def test_unlabeled_mode_yields_the_same_inputs_only() -> None:
    labeled = make_stream("corrupted-digits", n_segments=3, seed=1)
    unlabeled = make_stream("corrupted-digits", n_segments=3, seed=1, labels=False)
    for (x, _), u in zip(labeled, unlabeled, strict=True):
        assert isinstance(u, torch.Tensor) and torch.equal(x, u)


def test_change_points_are_where_the_data_really_changes() -> None:
    """Identify each batch's permutation from the pixels alone and compare with the truth."""
    src = digits_source()
    train_rows = {r.tobytes() for r in src.train.fetch(torch.arange(len(src.train))).view(-1, 64)
                  .numpy()}
    stream = make_stream("permuted-digits", n_segments=4, transition="recurring", seed=7)
    perms = [torch.arange(64)] + [s.transform.perm for s in stream.segments[1:]]  # type: ignore
    found = []
    for x, _ in stream:
        flat = x.view(len(x), 64)
        matches = [k for k, p in enumerate(perms)
                   if all(r.tobytes() in train_rows for r in flat[:, torch.argsort(p)].numpy())]
        assert len(matches) == 1
        found.append(matches[0])
    truth = stream.truth
    assert found == truth.segments().tolist()
    assert [i for i in range(1, len(found)) if found[i] != found[i - 1]] == truth.change_points
    assert truth.order == [0, 1, 0, 2, 1, 3, 1]


def test_eval_sets_come_from_the_held_out_data() -> None:
    stream = make_stream("permuted-digits", n_segments=3, seed=2)
    src = stream.segments[0].source
    x_test = src.test.fetch(torch.arange(len(src.test)))
    for k, (x, y) in enumerate(stream.eval_sets):
        perm = stream.segments[k].transform
        want = x_test if perm is None else perm(x_test)
        assert torch.equal(x, want) and torch.equal(y, src.test.y)
    capped = make_stream("split-digits-domain", max_eval=20, flatten=True)
    x, y = capped.eval_sets[3]
    assert x.shape == (20, 64) and set(y.tolist()) <= {0, 1}
    noisy = make_stream("corrupted-digits")
    assert torch.equal(noisy.eval_sets[4][0], noisy.eval_sets[4][0])  # reproducible noise


def test_gradual_mixing_matches_the_stated_weights() -> None:
    """Count, over a long window, how many samples come from the incoming segment."""
    stream = make_stream("split-digits", n_segments=2, passes=40, batch_size=50,
                         transition="gradual", window=20000, seed=3)
    truth = stream.truth
    (first, last), cp = truth.windows[0], truth.change_points[0]
    assert (first, last) == (cp - 200, cp + 200)
    steps = list(range(int(first), int(last)))
    incoming, stated = [], []
    for step in steps:
        _, y = stream.batch(step)
        assert torch.equal(truth.batch_segments(step), (y >= 5).long())  # truth agrees with data
        incoming.append(float((y >= 5).float().mean()))
        stated.append(float(truth.weights_at(step)[1]))
    assert stated[0] < 0.01 and stated[-1] > 0.99 and abs(stated[200] - 0.5) < 0.01
    bins = np.array(incoming).reshape(10, 40).mean(1)
    want = np.array(stated).reshape(10, 40).mean(1)
    assert np.allclose(bins, want, atol=4 * np.sqrt(0.25 / 2000))  # 4 sigma over 2000 samples
    assert float(truth.weights_at(int(first) - 1)[1]) == 0.0
    assert float(truth.weights_at(int(last))[1]) == 1.0


def test_blurry_share_within_tolerance() -> None:
    stream = make_stream("split-digits", passes=5, transition="blurry", share=0.2, seed=4)
    truth = stream.truth
    foreign, per_segment = 0, np.zeros(5)
    for step, (_, y) in enumerate(stream):
        own = truth.segment_at(step)
        assert torch.equal(truth.batch_segments(step), y // 2)
        foreign += int((y // 2 != own).sum())
        per_segment += np.bincount((y // 2).numpy(), minlength=5) * (np.arange(5) != own)
    n = len(stream) * stream.batch_size
    assert abs(foreign / n - 0.2) < 4 * np.sqrt(0.16 / n)
    # each segment gives 0.2 / 4 of the samples while one of the 4 others is active
    assert np.allclose(per_segment / n, 0.04, atol=4 * np.sqrt(0.04 * 0.96 / n))


@pytest.mark.parametrize("transition", ["abrupt", "blurry"])
def test_a_million_samples_iterate_in_bounded_memory(transition: str) -> None:
    stream = make_stream("permuted-digits", n_segments=5, passes=139.1, batch_size=500,
                         transition=transition)
    assert len(stream) * stream.batch_size >= 10**6
    src = stream.segments[0].source
    one_copy = len(src.train) * 64 * 4  # the training data once, as float32
    batches = iter(stream)
    next(batches)  # warm up imports and caches
    gc.collect()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    count = 1 + sum(1 for _ in batches)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert count == len(stream)
    assert peak < one_copy / 4, f"tracemalloc peak {peak} B vs one copy {one_copy} B"
    assert rss_growth * 1024 < 64 * 2**20  # materialising 10^6 samples would take 256 MB


def test_iterating_a_typical_experiment_stream_is_fast() -> None:
    stream = make_stream("permuted-digits", n_segments=5, passes=10, batch_size=32, seed=0)
    start = time.perf_counter()
    count = sum(1 for _ in stream)
    elapsed = time.perf_counter() - start
    assert count == 2245 and stream.change_points == [449, 898, 1347, 1796]
    assert elapsed < 5.0, f"{count} batches took {elapsed:.2f} s"


def test_stream_rejects_bad_construction() -> None:
    segs = permutations(digits_source(), 2)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        Stream(segs, Schedule((0, 1), (64, 64)), batch_size=0)
    with pytest.raises(ValueError, match="multiples of batch_size=32"):
        Stream(segs, Schedule((0, 1), (64, 50)), batch_size=32)
    with pytest.raises(ValueError, match="schedule has 3 segments but 2 were given"):
        Stream(segs, Schedule((0, 2), (64, 64)))
    with pytest.raises(ValueError, match="seed must be an int >= 0, got -1"):
        Stream(segs, Schedule((0, 1), (64, 64)), seed=-1)


def test_truth_describes_the_stream() -> None:
    stream = make_stream("rotated-digits", n_segments=3, passes=2, order="return", flatten=True)
    truth = stream.truth
    assert truth.order == [0, 1, 2, 0] and truth.n_segments == 3 == stream.n_segments
    assert truth.change_points == [90, 180, 270] and len(stream) == 360
    assert truth.segments().tolist() == [0] * 90 + [1] * 90 + [2] * 90 + [0] * 90
    assert torch.equal(truth.weights_at(100), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    assert stream.input_shape == (64,) and stream.batch(0)[0].shape == (32, 64)
    assert truth.segment_names == ["rotation 0°", "rotation 30°", "rotation 60°"]
    with pytest.raises(ValueError, match=r"step must be an int in \[0, 360\), got 360"):
        truth.segment_at(360)


def test_a_list_of_datasets_as_segments_with_a_gradual_handover() -> None:
    from streams import dataset_segments, make_schedule

    a = tensor_source(torch.zeros(100, 2, 2), torch.zeros(100, dtype=torch.int64), name="a")
    b = tensor_source(torch.ones(100, 2, 2), torch.ones(100, dtype=torch.int64), name="b")
    segs = dataset_segments([a, b])
    schedule = make_schedule([s.n_train for s in segs], batch_size=10, passes=2,
                             transition="gradual", window=40)
    stream = Stream(segs, schedule, batch_size=10, seed=0)
    assert len(stream) == 32 and stream.change_points == [16]
    from_b = [float(x.mean()) for x, _ in stream]
    assert from_b[:14] == [0.0] * 14 and from_b[18:] == [1.0] * 14
    assert all(torch.equal(y.float(), x.flatten(1).mean(1)) for x, y in
               (stream.batch(s) for s in range(14, 18)))  # each sample keeps its own label
    with pytest.raises(ValueError, match="transition must be one of"):
        make_schedule([10, 10], batch_size=5, transition="sudden")
    with pytest.raises(ValueError, match=r"order must list segment ids in \[0, 2\)"):
        make_schedule([10, 10], batch_size=5, order=[0, 2])
