"""Label-free signals against hand computations."""

from __future__ import annotations

import io
import math
import warnings

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
@pytest.mark.parametrize(("projections", "fourier"), [(0, 0), (64, 0), (64, 256), (0, 64), (8, 64)])
def test_input_shift_piece_sums_are_the_sums_of_its_per_sample_values(batch: int, projections: int,
                                                                      fourier: int) -> None:
    g = torch.Generator().manual_seed(batch)
    bulk = InputShift(projections=projections, fourier=fourier)
    each = InputShift(projections=projections, fourier=fourier)
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
        if a is not None:  # piece_sums sums in float32, per_sample in float64
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert bulk.open_count == each.open_count
    assert bulk.fourier_scale == each.fourier_scale and (bulk.fourier_scale is None) == (fourier == 0)
    assert bulk.state_dict()["mean"].shape == (16 + projections + fourier,)  # type: ignore[union-attr]


def _stream(n: int = 1280, d: int = 10, seed: int = 0) -> torch.Tensor:
    """Inputs whose distribution moves at sample 640 (a mean shift of one standard deviation)."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    x[n // 2:] += 1.0
    return x


@pytest.mark.parametrize("bulk", [False, True])
def test_input_shift_fourier_values_are_the_same_at_batch_1_and_64(bulk: bool) -> None:
    x = _stream()
    got = {}
    for batch in (1, 64):
        shift = InputShift(fourier=256)
        if bulk:  # piece_sums at the batch ends: at batch 1 each sample's own value
            parts = [shift.piece_sums(x[i:i + batch], cuts=list(range(1, batch)))[0]
                     for i in range(0, len(x), batch)]
        else:
            parts = [shift.per_sample(x[i:i + batch]) for i in range(0, len(x), batch)]
        got[batch] = torch.cat(parts)
        assert shift.open_count == 0 and shift.fourier_scale is not None
    torch.testing.assert_close(got[1], got[64], rtol=1e-4, atol=1e-5)
    assert torch.equal(got[1][:32], torch.zeros(32, dtype=torch.float64))  # the first window
    assert bool((got[1][32:] != 0).all())  # then the reference's values
    # the change: the windows after it are far above the stationary ones (about 1 on average)
    assert 0.5 < float(got[1][64:640].mean()) < 1.5 and float(got[1][640:704].mean()) > 5


def test_input_shift_bandwidth_is_the_first_windows_median_distance_at_any_batch() -> None:
    x = _stream()
    want = 0.25 * float(torch.pdist(x[:32].double()).median())
    for batch in (1, 5, 31, 32, 33, 100):
        for bulk in (False, True):
            shift = InputShift(fourier=16, bandwidth=0.25)
            for i in range(0, 64, batch):
                if shift.fourier_scale is None:
                    assert shift.open_count == i  # the first window's inputs are kept until it closes
                if bulk:
                    shift.piece_sums(x[i:i + batch])
                else:
                    shift.per_sample(x[i:i + batch])
            assert shift.fourier_scale == pytest.approx(want, rel=1e-12), (batch, bulk)
    shift = InputShift(fourier=16)
    shift.per_sample(x[:40])
    shift.restart()  # a consolidation keeps the stream's length scale
    assert shift.fourier_scale == pytest.approx(0.5 * want / 0.25)
    shift.per_sample(torch.randn(40, 3, generator=torch.Generator().manual_seed(5)) * 100)
    assert shift.fourier_scale > 10 * want  # inputs of a new size: a new one, from them


def test_input_shift_degenerate_first_windows_give_finite_values() -> None:
    g = torch.Generator().manual_seed(3)
    cases = {  # first window -> the length scale over the bandwidth
        "zeros": (torch.zeros(32, 4), 1.0),
        "constant": (torch.full((32, 4), 3.0), 6.0),  # the inputs' norm, sqrt(4 * 9)
        "half the same": (torch.cat([torch.zeros(24, 4), torch.ones(8, 4)]), 2.0),  # positive ones
        "tiny": (torch.randn(32, 4, generator=g, dtype=torch.float64) * 1e-9 + 1.0, 2e-6),  # 1e-6 of the norm
    }
    for name, (first, scale) in cases.items():
        for bulk in (False, True):
            shift = InputShift(window=32, fourier=64)
            later = torch.randn(96, 4, generator=g) + 1.0
            x = torch.cat([first, later])
            x[40] = math.nan  # a non-finite sample is replaced, as before
            with pytest.warns(RuntimeWarning, match="1 of 128 samples have a nan"):
                v = (shift.piece_sums(x, cuts=list(range(1, 128)))[0] if bulk else shift.per_sample(x))
            assert shift.fourier_scale == pytest.approx(0.5 * scale, rel=1e-5), name
            assert bool(torch.isfinite(v).all()), (name, bulk)
            assert bool(torch.isfinite(shift.state_dict()["scale"]).all()), name  # type: ignore[arg-type]


@pytest.mark.parametrize("stop", [20, 50, 77])  # within the first window, within a later one
@pytest.mark.parametrize("bulk", [False, True])
def test_input_shift_fourier_state_round_trip(stop: int, bulk: bool) -> None:
    x = _stream()
    a = InputShift(fourier=128)
    for i in range(0, stop, 10):
        a.per_sample(x[i:min(i + 10, stop)])
    state = a.state_dict()
    assert state["version"] == 4 and (state["raw"] is not None) == (stop < 32)
    assert (state["fourier_scale"] is None) == (stop < 32)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    b = InputShift(fourier=128)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for i in range(stop, 300, 23):
        if bulk:
            assert torch.equal(a.piece_sums(x[i:i + 23], [5])[0], b.piece_sums(x[i:i + 23], [5])[0])
        else:
            assert torch.equal(a.per_sample(x[i:i + 23]), b.per_sample(x[i:i + 23]))
    assert a.fourier_scale == b.fourier_scale is not None
    assert repr(b) == ("InputShift(window=32, half_life=2048, eps=0.001, projections=64, fourier=128, "
                       "bandwidth=0.5, seed=0)")


def test_input_shift_states_before_fourier_features() -> None:
    x = _stream()
    old = InputShift(fourier=0)
    old.per_sample(x[:50])
    v2 = {k: v for k, v in old.state_dict().items()
          if k not in ("fourier", "bandwidth", "fourier_scale", "fourier_inputs", "raw")} | {"version": 2}
    with pytest.raises(ValueError, match=r"saved input shift has fourier=0 \(a version 2 state, before "
                                         r"Fourier features\); this one fourier=256: build it with the "
                                         r"saved value to continue \(default_detector\(shift_fourier=0\)\)"):
        InputShift().load_state_dict(v2)
    continued = InputShift(fourier=0)
    continued.load_state_dict(v2)
    assert torch.equal(continued.per_sample(x[50:90]), old.per_sample(x[50:90]))
    with pytest.raises(ValueError, match=r"saved input shift has fourier=64; this one fourier=256"):
        InputShift().load_state_dict(InputShift(fourier=64).state_dict())
    with pytest.raises(ValueError, match="unsupported InputShift state version 5; this library reads 1 to 4"):
        InputShift().load_state_dict({"version": 5})


def test_input_shift_fourier_bad_values() -> None:
    from online_mas.trigger import default_detector

    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f"fourier must be an int >= 0, got {bad!r}"):
            InputShift(fourier=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=f"shift_fourier must be an integer >= 0, got {bad!r}"):
            default_detector(shift_fourier=bad)  # type: ignore[arg-type]
    for bad in (0, -0.5, math.nan, math.inf, True, "1"):
        with pytest.raises(ValueError, match=f"bandwidth must be a finite number > 0, got {bad!r}"):
            InputShift(bandwidth=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=f"shift_bandwidth must be a finite number > 0, got {bad!r}"):
            default_detector(shift_bandwidth=bad)  # type: ignore[arg-type]
    assert "fourier=64, bandwidth=0.25" in repr(default_detector(shift_fourier=64, shift_bandwidth=0.25))


def test_per_sample_many_is_per_sample() -> None:
    out = torch.randn(300, 7, generator=torch.Generator().manual_seed(0)) * 3
    for name in ("entropy", "max_prob", "output_norm"):
        sig = signal_from(name)
        torch.testing.assert_close(sig.per_sample_many(out), per_sample(name, out))  # type: ignore[attr-defined]


def test_input_shift_leaves_out_unusable_inputs_with_a_warning() -> None:
    """A sample with a nan, or with values whose float32 features would overflow (beyond
    input_limit), moves nothing: the values are those of the stream with the reference's mean
    input in its place, by per_sample and piece_sums alike, and a warning says so."""
    x = _stream()
    shift = InputShift()
    limit = shift.input_limit(10)
    assert 1e6 < limit < 1e10  # the squares of the projections, summed over a window, in float32
    bad = x.clone()
    bad[300], bad[301, 2], bad[302, 5] = 10 * limit, math.nan, -math.inf
    for bulk in (False, True):
        a, b = InputShift(), InputShift()
        got, want = [], []
        for i in range(0, len(x), 50):
            if i == 300:
                with pytest.warns(RuntimeWarning, match=r"3 of 50 samples have a nan, an inf or a value "
                                                        r"beyond \+-[0-9.e+]+ \(float32 features would "
                                                        r"overflow\): they are left out"):
                    got.append(a.piece_sums(bad[i:i + 50])[0] if bulk else a.per_sample(bad[i:i + 50]))
                stand_in = x[i:i + 50].clone()
                stand_in[:3] = b.state_dict()["mean"][:10]  # type: ignore[index]
                want.append(b.piece_sums(stand_in)[0] if bulk else b.per_sample(stand_in))
            else:
                got.append(a.piece_sums(bad[i:i + 50])[0] if bulk else a.per_sample(bad[i:i + 50]))
                want.append(b.piece_sums(x[i:i + 50])[0] if bulk else b.per_sample(x[i:i + 50]))
        torch.testing.assert_close(torch.cat(got), torch.cat(want), rtol=1e-5, atol=1e-6)
        assert bool(torch.isfinite(torch.cat(got)).all())
    assert InputShift(projections=0).input_limit(10) > 1e17  # the inputs and their squares only


@pytest.mark.parametrize("bulk", [False, True])
def test_input_shift_first_window_ignores_unusable_samples_at_any_batch(bulk: bool) -> None:
    """Non-finite samples in the first window are left out of the Fourier length scale and stand
    in as the mean of its usable samples, so the length scale and the values do not depend on the
    batch size (before, a stand-in was its batch's mean and joined the median)."""
    x = _stream()[:256]
    x[[3, 17, 30]] = math.nan
    good = torch.ones(len(x), dtype=torch.bool)
    good[[3, 17, 30]] = False
    want = 0.5 * float(torch.pdist(x[:32][good[:32]].double()).median())
    got = {}
    for batch in (1, 5, 32, 64):
        shift = InputShift(fourier=64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            parts = [shift.piece_sums(x[i:i + batch], cuts=list(range(1, batch)))[0] if bulk
                     else shift.per_sample(x[i:i + batch]) for i in range(0, 256, batch)]
        assert shift.fourier_scale == pytest.approx(want, rel=1e-12), batch
        got[batch] = torch.cat(parts)
    for batch in (5, 32, 64):
        torch.testing.assert_close(got[batch], got[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fourier", [0, 64])
def test_input_shift_stand_ins_do_not_depend_on_the_batch_size(fourier: int) -> None:
    """An unusable sample's stand-in is the reference's mean at the start of its own window (and
    in the first window, that window's mean usable input, with or without Fourier features): the
    values are the same at any batch size, by per_sample and piece_sums (review of 0c0f487)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(640, 10, generator=g)
    x[64:] += 2.0  # the reference moves
    x[[5, 100, 101, 333]] = math.nan
    x[200, 3] = 1e30
    got = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for batch in (1, 32, 128, 640):
            for bulk in (False, True):
                shift = InputShift(fourier=fourier)
                parts = [shift.piece_sums(x[i:i + batch], cuts=list(range(1, batch)))[0] if bulk
                         else shift.per_sample(x[i:i + batch]) for i in range(0, len(x), batch)]
                got[batch, bulk] = torch.cat(parts)
                assert bool(torch.isfinite(got[batch, bulk]).all())
    for key, v in got.items():
        torch.testing.assert_close(v, got[1, False], rtol=1e-4, atol=1e-5, msg=str(key))


def test_input_shift_a_tiny_first_window_keeps_the_fourier_features_finite() -> None:
    """A first window of near-zero inputs gives a tiny length scale; it is floored where no usable
    input can overflow the features' arguments, so the values stay finite (they were nan, and
    Combined.update_batches refused them)."""
    import online_mas as om
    x = torch.randn(128, 10, generator=torch.Generator().manual_seed(1))
    x[:32] = 0.0
    x[5, 0] = 1e-39
    shift = InputShift()
    assert bool(torch.isfinite(shift.per_sample(x)).all())
    assert shift.fourier_scale is not None and shift.fourier_scale > 0
    late = x.clone()
    late[32:] *= 5e7  # below the input limit
    assert float(late.abs().max()) < InputShift().input_limit(10)
    a, b = om.default_detector(lag=0), om.default_detector(lag=0)
    a.update_many([0.0] * 128, inputs=late)
    b.update_batches(torch.zeros(128), late, [64, 64])
    assert a.detections == b.detections
    assert all(bool(torch.isfinite(t).all()) for t in b.shift.state_dict().values()
               if isinstance(t, torch.Tensor))


def test_input_shift_reads_bool_and_integer_inputs() -> None:
    x = torch.rand(96, 6, generator=torch.Generator().manual_seed(2)) > 0.5
    for inputs in (x, x.to(torch.int64), x.to(torch.uint8)):
        a, b = InputShift(), InputShift()
        torch.testing.assert_close(a.per_sample(inputs), b.per_sample(x.double()))


@pytest.mark.parametrize("bulk", [False, True])
def test_input_shift_version_3_states_continue_or_start_afresh(bulk: bool) -> None:
    """A version 3 state of inputs no larger than the projections continues exactly (the features
    are the same); one of larger inputs (its Fourier features were of the inputs, now of their
    projections) starts afresh with a warning, its length scale measured again on the next window,
    and Combined restarts the input shift's channel with it so that their windows stay aligned."""
    import online_mas as om
    for d, same in ((10, True), (100, False)):
        x = torch.randn(400, d, generator=torch.Generator().manual_seed(d))
        a = InputShift()
        a.per_sample(x[:77])
        v3 = a.state_dict() | {"version": 3}
        b = InputShift()
        if same:
            b.load_state_dict(v3)
            run = (lambda s, v: s.piece_sums(v)[0]) if bulk else (lambda s, v: s.per_sample(v))
            assert torch.equal(run(a, x[77:200]), run(b, x[77:200]))
            continue
        with pytest.warns(RuntimeWarning, match=r"a version 3 InputShift state of 100 inputs, more than its "
                                                r"64 projections: its Fourier features were of the inputs"):
            b.load_state_dict(v3)
        assert b.open_count == 0 and b.fourier_scale is None and b.state_dict()["mean"] is None
        b.per_sample(x[77:109])
        assert b.fourier_scale is not None
        c = om.default_detector()
        c.update_many([0.5] * 77, inputs=x[:77])
        state = c.state_dict()
        state["shift"] = state["shift"] | {"version": 3}
        fresh = om.default_detector()
        with pytest.warns(RuntimeWarning, match="starts afresh"):
            fresh.load_state_dict(state)
        assert fresh.shift_detector.open_count == fresh.shift.open_count == 0
        assert fresh.detector.open_count == c.detector.open_count  # the entropy channel goes on


@pytest.mark.parametrize("scale", [0.7, 1e3, 1e7])
def test_input_shift_a_constant_reference_is_exact_in_bulk(scale: float) -> None:
    """A reference of identical samples (every variance 0): piece_sums sums in float64 and steps
    the reference from where it was, so a window equal to it gives exactly 0, as per_sample does,
    and a change the same value; before, piece_sums gave 14 for such a window, then nan, and
    Combined.update_batches raised (review of 887032e). A constant stream gives no detection at
    lag 0 nor at the default lag (the rounding noise of the bulk path set off the shift channel's
    CUSUM, which is scale-free)."""
    import online_mas as om
    x = torch.cat([torch.ones(64, 10), -torch.ones(32, 10)]) * scale
    each, bulk = InputShift(), InputShift()
    v = torch.stack([t.sum() for t in each.per_sample(x).split(32)])
    b = bulk.piece_sums(x)[0]
    assert float(b[1]) == float(v[1]) == 0.0
    assert float(v[2]) > 1e6 and math.isfinite(float(b[2]))
    torch.testing.assert_close(b[2], v[2], rtol=1e-6, atol=0.0)
    stream = torch.full((8192, 10), scale)
    found = {}
    for lag in (0, 256):
        d = om.default_detector(lag=lag)
        if lag:
            d.update_batches(torch.full((len(stream),), 0.5), stream, [32] * (len(stream) // 32))
            found[lag] = d.detections
        else:
            found[lag] = []
            for i in range(0, len(stream), 32):
                d.update_many([0.5] * 32, inputs=stream[i:i + 32])
                found[lag] += d.detections
    assert found == {0: [], 256: []}
