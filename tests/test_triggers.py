"""Trigger policies of OnlineMAS on streams with known boundaries; stable anchors; hard buffer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import online_mas as om
from online_mas.buffer import HardBuffer
from online_mas.detectors import Combined, PageHinkley, Periodic, ScaledCUSUM, Windowed
from online_mas.signals import InputShift


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def _stream(n_steps: int, change_at: int, *, seed: int = 0) -> list[torch.Tensor]:
    """Inputs whose scale jumps (x5) from step ``change_at`` (1-based) on."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 4, generator=g) * (5.0 if step >= change_at else 1.0)
            for step in range(1, n_steps + 1)]


def _fire_steps(mas: om.OnlineMAS, xs: list[torch.Tensor]) -> list[int]:
    return [e.step for x in xs if (e := mas.observe(x)) is not None]


def test_default_detector_watches_the_entropy_and_the_input_shift_per_sample() -> None:
    mas = om.OnlineMAS(_model())
    det = mas.detector
    assert isinstance(det, Combined) and isinstance(det.detector, Windowed)
    assert isinstance(det.detector.detector, ScaledCUSUM) and isinstance(det.shift, InputShift)
    assert mas.trigger.signal.name == "entropy" and mas.trigger.per_sample
    mas.observe(torch.randn(8, 4))
    assert mas.trigger.lag == det.lag == 256 and mas.trigger.pending == 8  # kept for a bulk evaluation
    assert mas.flush(detector=True) is None and mas.trigger.pending == 0
    assert mas.last_signal is not None and 0.0 <= mas.last_signal <= 1.0986123 + 1e-6
    state = det.state_dict()
    assert state["seen"] == 8 and state["signal_detector"]["seen"] == 8  # one update per sample
    assert state["shift_detector"]["seen"] == 8
    with pytest.raises(ValueError, match="window must be an integer >= 2, got 1"):
        om.default_detector(window=1)


def _samples(scales: list[float], n: int, *, seed: int, shifts: list[float] | None = None) -> torch.Tensor:
    """``n`` samples per scale (and mean shift of the first two inputs), in order; a fixed model's
    entropy rises as the scale falls, and does not see the shifts."""
    g = torch.Generator().manual_seed(seed)
    shifts = shifts if shifts is not None else [0.0] * len(scales)
    return torch.cat([torch.randn(n, 4, generator=g) * s + torch.tensor([m, m, 0.0, 0.0])
                      for s, m in zip(scales, shifts, strict=True)])


def _consolidations(data: torch.Tensor, batch: int) -> list[int]:
    """Samples seen when the default OnlineMAS consolidated, ``data`` cut into batches."""
    mas = om.OnlineMAS(_model())  # no training: the per-sample signal is the same at any batch size
    return [e.step * batch for i in range(0, len(data), batch)
            if (e := mas.observe(data[i:i + batch])) is not None]


@pytest.mark.filterwarnings("ignore:consolidation at step")
def test_default_detector_finds_the_same_changes_at_batch_1_and_64() -> None:
    data = _samples([10.0, 2.0, 0.3], 4096, seed=0)  # entropy rises at samples 4096 and 8192
    one, big = _consolidations(data, 1), _consolidations(data, 64)
    assert len(one) == 2 and 4096 < one[0] <= 4096 + 512 and 8192 < one[1] <= 8192 + 512, one
    assert [-(-s // 64) * 64 for s in one] == big  # the same samples, rounded up to the batch


@pytest.mark.filterwarnings("ignore:consolidation at step")
def test_default_detector_sees_a_return_that_the_entropy_does_not() -> None:
    # A B A: the inputs' mean moves by 1.5 standard deviations in two of four inputs and back
    data = _samples([1.0, 1.0, 1.0], 4096, seed=2, shifts=[0.0, 1.5, 0.0])
    one, big = _consolidations(data, 1), _consolidations(data, 64)
    assert len(one) == 2 and 4096 < one[0] <= 4096 + 256 and 8192 < one[1] <= 8192 + 256, one
    assert [-(-s // 64) * 64 for s in one] == big
    entropy_only = om.OnlineMAS(_model(), detector=om.default_detector().detector)
    assert [e for i in range(0, len(data), 64) if (e := entropy_only.observe(data[i:i + 64]))] == []


@pytest.mark.parametrize("batch", [1, 64])
def test_default_detector_never_consolidates_on_a_stationary_stream(batch: int) -> None:
    assert _consolidations(_samples([10.0], 8192, seed=1), batch) == []
    assert _consolidations(_samples([1.0], 8192, seed=3, shifts=[0.5]), batch) == []


def test_a_per_call_detector_sees_one_value_per_call_and_a_per_sample_one_every_sample() -> None:
    per_call = om.OnlineMAS(_model(), detector=Periodic(every=3))
    per_sample = om.OnlineMAS(_model(), detector=Windowed(Periodic(every=3), window=5))
    xs = [torch.randn(4, 4) for _ in range(8)]  # 32 samples: windows end at samples 5, 10, ...
    assert _fire_steps(per_call, xs) == [3, 6]
    assert _fire_steps(per_sample, xs) == [4, 8]  # windows 3 and 6 end at samples 15 and 30
    loss = om.OnlineMAS(_model(), signal="loss", detector=Windowed(Periodic(every=1), window=6))
    fired = [e.step for x in xs if (e := loss.observe(x, loss=1.0))]
    assert fired == [2, 3, 5, 6, 8]  # the batch loss counts once per sample: windows end at 6, 12, ...


def test_detector_on_output_norm_fires_right_after_the_change() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(4, 3)  # the output norm grows 25-fold with the input scale
    mas = om.OnlineMAS(linear, signal="output_norm",
                       detector=PageHinkley(delta=5.0, threshold=20.0, mode="up"))
    fired = _fire_steps(mas, _stream(200, change_at=101))
    assert len(fired) == 1 and 101 <= fired[0] <= 105, fired
    assert mas.events[0].reason == "detector" and "signal" in mas.events[0].stats


def test_periodic_and_oracle_policies_fire_exactly_on_schedule() -> None:
    xs = _stream(30, change_at=31)
    assert _fire_steps(om.OnlineMAS(_model(), detector=Periodic(every=7)), xs) == [7, 14, 21, 28]
    oracle = om.OnlineMAS(_model(), boundaries=[10, 25])
    assert _fire_steps(oracle, xs) == [10, 25]
    assert [e.reason for e in oracle.events] == ["boundary", "boundary"]
    assert _fire_steps(om.OnlineMAS(_model(), detector=None), xs) == []


def test_detector_is_fed_every_step_even_without_a_forward_of_the_users() -> None:
    model = _model()
    mas = om.OnlineMAS(model, config=om.MASConfig(share=0.25), detector=Periodic(every=3))
    fired = _fire_steps(mas, _stream(12, change_at=13))  # observe(x) alone: no model(x) before
    assert fired == [3, 6, 9, 12]
    assert [e.stats["samples"] for e in mas.events] == [0, 16, 16, 16]  # estimates at 4, 8, 12
    model.eval()
    with torch.no_grad():
        last = _stream(12, change_at=13)[-1]
        expected = float(om.signals.per_sample("entropy", model(last)).mean())
    assert mas.last_signal == pytest.approx(expected, rel=1e-6)  # from the estimate's eval pass


def test_loss_signal_needs_the_loss_and_drives_the_plateau_rule() -> None:
    mas = om.OnlineMAS(_model(), signal="loss",
                       detector=om.Plateau(window=3, mean_threshold=0.5, variance_threshold=0.1))
    with pytest.raises(ValueError, match="needs observe"):
        mas.observe(torch.randn(4, 4))
    losses = [2.0, 1.5, 1.0, 0.3, 0.2, 0.2, 0.2, 0.2, 3.0, 2.5, 2.0, 1.0, 0.2, 0.1, 0.1, 0.1]
    fired = [e.step for loss in losses if (e := mas.observe(torch.randn(4, 4), loss=loss))]
    assert fired == [6, 15]  # first plateau (the start counts as a peak), then after the new peak


@pytest.mark.parametrize(("weight", "offset"), [(0.5, 6.75), (0.25, 5.0625), (1.0, 9.0)])
def test_stable_anchor_is_the_slow_copy(weight: float, offset: float) -> None:
    model = _model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    mas = om.OnlineMAS(model, config=om.MASConfig(share=1.0),
                       anchor=om.StableAnchor(samples=12, weight=weight), detector=Periodic(every=10))
    for _ in range(10):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # after k steps the parameters are start + k
        event = mas.observe(torch.randn(4, 4))
    assert event is not None and event.step == 10
    # updates at steps 3, 6, 9 (every 12 samples): s = 3, then s + w (6 - s), then s + w (9 - s)
    for n, a in mas.anchors.items():
        torch.testing.assert_close(a, start[n] + offset)
    manual = mas.consolidate()  # a manual consolidation anchors the current parameters
    assert manual.reason == "manual"
    for n, p in model.named_parameters():
        assert torch.equal(mas.anchors[n], p.detach())
    assert len(mas.state_dict()["anchor_policy"]["slow"]) == len(start)  # one copy, not one per update


def test_stable_copy_follows_new_and_removed_parameters() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    anchor = om.StableAnchor(samples=2)
    mas = om.OnlineMAS(model, anchor=anchor, detector=Periodic(every=1000))
    mas.observe(torch.randn(2, 4))
    model.append(nn.Linear(3, 2))  # a new head joins at the next full sync
    mas.accumulate(torch.randn(2, 4))
    mas.observe(torch.randn(2, 4))
    assert sorted(anchor.source() or {}) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    del model[1]
    mas.accumulate(torch.randn(2, 4))
    mas.observe(torch.randn(2, 4))
    assert sorted(anchor.source() or {}) == ["0.bias", "0.weight"]


def test_hard_buffer_adds_the_most_surprising_samples_at_consolidation() -> None:
    model = _model()
    mas = om.OnlineMAS(model, config=om.MASConfig(share=1.0), buffer=HardBuffer(4, decay=1.0), detector=None)
    xs = _stream(5, change_at=6)
    for x in xs:
        mas.observe(x)
    buffered = mas.buffer.samples  # type: ignore[union-attr]
    assert buffered is not None and buffered.shape == (4, 4)
    model.eval()
    with torch.no_grad():
        ent = om.signals.per_sample("entropy", model(torch.cat(xs)))
    expected = torch.cat(xs)[torch.topk(ent, 4).indices]
    assert torch.equal(buffered, expected)
    event = mas.consolidate()
    assert event.stats["samples"] == 5 * 16 + 4
    assert len(mas.buffer) == 0  # type: ignore[arg-type]


def test_hard_buffer_unit() -> None:
    buf = HardBuffer(3, decay=0.5)
    buf.add(torch.arange(3.0).unsqueeze(1), torch.tensor([3.0, 2.0, 1.0]))
    buf.add(torch.tensor([[9.0]]), torch.tensor([1.2]))  # old scores halve: 1.5, 1.0, 0.5
    assert buf.samples.flatten().tolist() == [0.0, 9.0, 1.0]  # type: ignore[union-attr]
    buf.add(torch.tensor([[7.0]]), torch.tensor([float("nan")]))  # non-finite scores are dropped
    assert 7.0 not in buf.samples.flatten().tolist()  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="size must be an int >= 1"):
        HardBuffer(0)
    with pytest.raises(ValueError, match=r"decay must be a number in \(0, 1\]"):
        HardBuffer(2, decay=0.0)


def test_state_round_trip_with_detector_buffer_and_snapshots() -> None:
    def parts() -> dict[str, object]:
        return {"anchor": om.StableAnchor(samples=32), "buffer": HardBuffer(3), "signal": "feature_shift",
                "detector": PageHinkley(threshold=3.0, min_instances=5)}

    xs = _stream(40, change_at=21)
    a = om.OnlineMAS(_model(), **parts())  # type: ignore[arg-type]
    for x in xs[:15]:
        a.observe(x)
    state = a.state_dict()
    b = om.OnlineMAS(_model(), **parts())  # type: ignore[arg-type]
    b.load_state_dict(state)
    rest_a = _fire_steps(a, xs[15:])
    rest_b = _fire_steps(b, xs[15:])
    assert rest_a == rest_b and len(rest_a) >= 1
    for n in a.omega:
        assert torch.equal(a.omega[n], b.omega[n]) and torch.equal(a.anchors[n], b.anchors[n])


def test_bad_trigger_arguments() -> None:
    with pytest.raises(ValueError, match="either boundaries"):
        om.OnlineMAS(_model(), detector=Periodic(every=2), boundaries=[3])
    with pytest.raises(ValueError, match="step numbers >= 1"):
        om.OnlineMAS(_model(), boundaries=[0, 5])
    with pytest.raises(TypeError, match="sequence of int steps"):
        om.OnlineMAS(_model(), boundaries="12")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="signal must be one of"):
        om.OnlineMAS(_model(), signal="accuracy")
    with pytest.raises(TypeError, match="anchor must be a"):
        om.OnlineMAS(_model(), anchor="oldest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"weight must be a number in \(0, 1\], got 0"):
        om.StableAnchor(weight=0)


def test_signal_comes_from_the_training_forward_on_every_step() -> None:
    model = _model()
    mas = om.OnlineMAS(model, config=om.MASConfig(share=0.25), detector=Periodic(every=3))
    fired, signals = [], []
    for x in _stream(12, change_at=13):
        logits = model(x)  # the user's training forward, in train mode
        event = mas.observe(x)
        signals.append(mas.last_signal)
        expected = float(om.signals.per_sample("entropy", logits.detach()).mean())
        assert mas.last_signal == pytest.approx(expected, rel=1e-6)
        if event is not None:
            fired.append(event.step)
    assert fired == [3, 6, 9, 12]  # fed every step, although importance is estimated every 4th
    assert [e.stats["samples"] for e in mas.events] == [0, 16, 16, 16]  # steps 4, 8, 12


def test_signal_hook_is_removed_with_the_online_mas_object() -> None:
    import gc

    model = _model()
    mas = om.OnlineMAS(model)
    assert len(model._forward_hooks) == 1
    del mas
    gc.collect()
    assert len(model._forward_hooks) == 0
    om.OnlineMAS(model, detector=None)  # nothing to feed: no hook
    om.OnlineMAS(model, output=lambda m, x: m[0](x))  # custom output: signals from the estimate
    gc.collect()
    assert len(model._forward_hooks) == 0


def test_state_with_two_snapshots_from_0_1_loads_the_older_one() -> None:
    model = _model()
    mas = om.OnlineMAS(model, config=om.MASConfig(share=1.0), anchor=om.StableAnchor(samples=4))
    mas.observe(torch.randn(4, 4))
    state = _as_version_1(mas.state_dict())
    older = {n: torch.full_like(p, 1.0) for n, p in model.named_parameters()}
    newer = {n: torch.full_like(p, 2.0) for n, p in model.named_parameters()}
    state["stable"] = [older, newer]  # how 0.1 saved its two rotating snapshots
    anchor = om.StableAnchor(samples=4)
    other = om.OnlineMAS(_model(), config=om.MASConfig(share=1.0), anchor=anchor)
    other.load_state_dict(state)
    assert all(torch.equal((anchor.source() or {})[n], older[n]) for n in older)


def _as_version_1(state: dict[str, object]) -> dict[str, object]:
    """The flat layout of state version 1 (online-mas 0.1), for what the fixture file does not cover."""
    c, t = state["consolidator"], state["trigger"]
    return {"version": 1, "lam": state["lam"], "config": {**state["config"], "anchor": "stable",  # type: ignore[dict-item]
                                                            "stable_every": 1},
            "step": state["step"], "segments": c["segments"], "n_skipped": state["n_skipped"],  # type: ignore[index]
            "omega": c["omega"], "anchor": c["anchor"], "running": state["running"],  # type: ignore[index]
            "events": state["events"], "generator": state["generator"], "detector": t["detector"],  # type: ignore[index]
            "last_signal": t["last_signal"], "feature_shift": None, "buffer": None, "stable": {}}  # type: ignore[index]


def test_a_state_of_the_entropy_only_default_fails_with_a_clear_message() -> None:
    old = om.OnlineMAS(_model(), detector=Windowed(ScaledCUSUM(warmup=16, threshold=8.0, mode="up"),
                                                   window=32, min_segment=1024))
    old.observe(torch.randn(8, 4))
    with pytest.raises(ValueError, match=r"not the Combined default .* pass that detector explicitly"):
        om.OnlineMAS(_model()).load_state_dict(old.state_dict())
    again = om.OnlineMAS(_model(), detector=Windowed(ScaledCUSUM(warmup=16, threshold=8.0, mode="up"),
                                                     window=32, min_segment=1024))
    again.load_state_dict(old.state_dict())  # continued with the detector it was saved with
    assert again.detector.state_dict() == old.detector.state_dict()


# ---------------------------------------------------------------------------------- lag (deferral)


def _shifting(n: int, *, seed: int, d: int = 4) -> torch.Tensor:
    """``n`` inputs whose scale or mean moves every 3000 samples (segments A B C A ...)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    seg = torch.arange(n) // 3000 % 3
    return x * torch.where(seg == 1, 2.0, 1.0)[:, None] + torch.where(seg == 2, 0.8, 0.0)[:, None]


def _reports(trigger: Trigger_, data: torch.Tensor, batch: int, *, reuse: bool = False,
             out_dtype: torch.dtype = torch.float32) -> tuple[list[int], list[int]]:
    """Feed ``data`` in batches through a fixed model; the detections' sample indices and the
    sample counts at the calls that reported them."""
    model = _model().to(out_dtype)
    buf = torch.empty(batch, data.shape[1], dtype=data.dtype)
    found, at = [], []
    for step, i in enumerate(range(0, len(data) - batch + 1, batch), 1):
        x = data[i:i + batch]
        if reuse:  # one input buffer refilled in place, as a pinned-memory loader does
            buf.copy_(x)
            x = buf
        with torch.no_grad():
            out = model(x.to(out_dtype))
        trigger.see(x)
        if trigger.fire(step, trigger.value(out), n=batch):
            found += trigger.detector.detections  # type: ignore[attr-defined]
            at.append(step * batch)
    return found, at


Trigger_ = om.trigger.Trigger


@pytest.mark.parametrize("batch", [1, 64])
def test_a_lag_finds_the_same_samples_and_reports_them_at_most_lag_later(batch: int) -> None:
    data = _shifting(12000 if batch == 64 else 9000, seed=4)
    now, now_at = _reports(Trigger_(om.default_detector(lag=0)), data, batch)
    later, later_at = _reports(Trigger_(om.default_detector(lag=256)), data, batch)
    assert len(now) >= 2 and later == now, (now, later)  # the same sample indices
    assert all(0 <= b - a < 256 + batch for a, b in zip(now_at, later_at, strict=True))
    assert any(b > a for a, b in zip(now_at, later_at, strict=True))  # reported later


def test_lag_0_is_the_trigger_of_before() -> None:
    data = _shifting(9000, seed=5)
    t = Trigger_(om.default_detector(lag=0))
    found, _ = _reports(t, data, 32)
    assert t.pending == 0 and t.lag == 0
    ref = om.default_detector(lag=0)  # fed by hand as the Trigger of before fed it
    model, seen = _model(), []
    for i in range(0, len(data) - 31, 32):
        with torch.no_grad():
            out = model(data[i:i + 32])
        ref.update_many(om.signals.per_sample("entropy", out).tolist(), inputs=data[i:i + 32])
        seen += ref.detections
    assert found == seen and len(seen) >= 2
    a, b = t.detector.state_dict()["shift"], ref.state_dict()["shift"]
    assert all(torch.equal(a[k], b[k]) for k in ("mean", "var", "scale"))


def test_a_refilled_input_buffer_gives_the_same_detections() -> None:
    data = _shifting(9000, seed=6)
    fresh, _ = _reports(Trigger_(om.default_detector(lag=512)), data, 32)
    reused, _ = _reports(Trigger_(om.default_detector(lag=512)), data, 32, reuse=True)
    assert len(fresh) >= 2 and reused == fresh


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_lag_works_for_float64_and_bfloat16_inputs_and_outputs(dtype: torch.dtype) -> None:
    data = _shifting(9000, seed=7).to(dtype)
    now, _ = _reports(Trigger_(om.default_detector(lag=0)), data, 32, out_dtype=dtype)
    later, _ = _reports(Trigger_(om.default_detector(lag=256)), data, 32, out_dtype=dtype)
    assert len(now) >= 2 and later == now


def test_a_batch_larger_than_the_lag_is_evaluated_on_its_own_call() -> None:
    data = _shifting(3000 * 4, seed=8)
    now, now_at = _reports(Trigger_(om.default_detector(lag=0)), data, 1024)
    later, later_at = _reports(Trigger_(om.default_detector(lag=256)), data, 1024)
    assert len(now) >= 2 and (later, later_at) == (now, now_at)  # no delay at all


def test_a_resume_mid_lag_gives_the_same_detections(tmp_path: object) -> None:
    import io
    data = _shifting(9000, seed=9)
    whole, _ = _reports(Trigger_(om.default_detector(lag=256)), data, 32)
    first = Trigger_(om.default_detector(lag=256))
    a, _ = _reports(first, data[:4000], 32)  # 4000 = 125 batches: 29 batches pending
    assert first.pending == 4000 - 3840
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert state["version"] == 2 and len(state["pending_outputs"]) == 5
    second = Trigger_(om.default_detector(lag=256))
    second.load_state_dict(state)
    assert second.pending == first.pending
    rest = data[4000:]
    model = _model()
    b = []
    for step, i in enumerate(range(0, len(rest) - 31, 32), 126):
        with torch.no_grad():
            out = model(rest[i:i + 32])
        second.see(rest[i:i + 32])
        if second.fire(step, second.value(out), n=32):
            b += second.detector.detections  # type: ignore[attr-defined]
    assert len(whole) >= 2 and a + b == whole


def test_a_version_1_trigger_state_loads_with_nothing_pending() -> None:
    t = Trigger_(om.default_detector(lag=256))
    _reports(t, _shifting(1000, seed=1), 32)
    state = t.state_dict()
    old = {k: state[k] for k in ("detector", "last_signal", "signal")} | {"version": 1}
    fresh = Trigger_(om.default_detector(lag=256))
    fresh.load_state_dict(old)
    assert fresh.pending == 0 and fresh.last_signal == t.last_signal
    with pytest.raises(ValueError, match="unsupported Trigger state version 3"):
        fresh.load_state_dict({**state, "version": 3})
    with pytest.raises(ValueError, match="lists of tensors"):
        fresh.load_state_dict({**state, "pending_outputs": [1.0]})


def test_flush_evaluates_the_end_of_a_stream_and_consolidate_keeps_pending_samples() -> None:
    data = _shifting(6000, seed=4)
    now, _ = _reports(Trigger_(om.default_detector(lag=0)), data[:3300], 1)
    assert len(now) == 1  # a change at 3000, found before sample 3300
    mas = om.OnlineMAS(_model(), lam=1e-3, detector=om.default_detector(lag=1024))
    events = [e for i in range(3300) if (e := mas.observe(data[i:i + 1])) is not None]
    pending = mas.trigger.pending
    assert events == [] or events[0].step > now[0]
    if not events:  # still pending: a manual consolidation keeps it, flush() finds it
        mas.consolidate()
        assert mas.trigger.pending == pending > 0
        assert mas.flush() is None and mas.trigger.pending == pending  # the reducer only
        event = mas.flush(detector=True)
        assert event is not None and event.reason == "detector"
    assert mas.detector.detections == now  # type: ignore[union-attr]
    assert mas.trigger.pending == 0


def test_bad_lags() -> None:
    with pytest.raises(ValueError, match="lag must be an integer >= 0, got -1"):
        Trigger_(om.default_detector(lag=0), lag=-1)
    with pytest.raises(ValueError, match="lag must be an integer from 0 to min_segment=1024"):
        om.default_detector(lag=2048)


def test_a_lag_leaves_out_a_batch_whose_output_is_not_finite() -> None:
    t = Trigger_(om.default_detector(lag=64))
    x, out = torch.randn(8, 4), torch.zeros(8, 3)
    t.see(x)
    assert t.fire(1, t.value(out), n=8) is None and t.pending == 8
    bad = out.clone()
    bad[3, 1] = float("nan")
    t.see(x)
    value = t.value(bad)
    assert value != value and t.fire(2, value, n=8) is None and t.pending == 8  # nan: not kept


def test_a_lag_keeps_half_precision_batches_whose_output_sums_past_float16() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 1000)).half()
    model[0].bias.data.fill_(3.0)  # each output sums to about 3000 x 32 samples: past float16's range
    mas = om.OnlineMAS(model, lam=1.0, detector=om.default_detector(lag=256))
    for _ in range(10):
        x = torch.randn(32, 16).half()
        model(x)
        mas.observe(x)
    assert mas.n_skipped == 0 and mas.trigger.pending == 64  # 256 evaluated, 64 kept
