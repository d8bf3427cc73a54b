"""The importance schedule counts samples, not calls (issue 15, must-have 1): ``MASConfig.share`` of
the stream's samples are estimated at every batch size; ``every`` (calls) fails or migrates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import online_mas as om
from online_mas.estimators import importance_sums
from online_mas.migrate import current_state
from online_mas.schedule import Schedule

STREAM = 4096  # samples


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _stream(seed: int = 1) -> torch.Tensor:
    return torch.randn(STREAM, 6, generator=torch.Generator().manual_seed(seed))


def test_batch_32_at_share_1_64_is_the_old_every_64_exactly() -> None:
    """The old rule (``step % 64 == 0``: the whole batch) computed by hand, on a fixed model: the
    running importance is the mean of the per-sample sums of the batches at steps 64, 128."""
    model, xs = _model(), _stream().split(32)
    mas = om.OnlineMAS(model, config=om.MASConfig(), detector=None)
    estimated = []
    for step, x in enumerate(xs[:150], start=1):
        before = mas.running.count
        mas.observe(x)
        if mas.running.count > before:
            estimated.append((step, mas.running.count - before))
    assert estimated == [(64, 32), (128, 32)]
    totals = [importance_sums(model, xs[s - 1])[0] for s in (64, 128)]
    for name, value in mas.running_omega.items():
        torch.testing.assert_close(value, (totals[0][name] + totals[1][name]) / 64)
    fresh = torch.Generator().manual_seed(0)  # the whole batch: the subsample generator never drew
    assert torch.equal(mas.state_dict()["generator"], fresh.get_state())  # type: ignore[arg-type]


@pytest.mark.parametrize("share", [1 / 64, 0.25, 1.0])
def test_the_same_stream_at_batch_1_4_32_1024_estimates_the_same_number_of_samples(share: float) -> None:
    config = om.MASConfig(share=share)
    model, xs = _model(), _stream()
    counts = {}
    for batch in (1, 4, 32, 1024):
        if batch == 1 and share != 1 / 64:
            continue  # 1024 or 4096 estimates of one sample: the schedule alone below covers it
        mas = om.OnlineMAS(model, config=config, detector=None)
        for x in xs.split(batch):
            mas.observe(x)
        counts[batch] = mas.running.count
    for batch in (1, 4, 32, 1024):  # the schedule alone, on the same stream
        s = Schedule(share, 32)
        taken = sum(s.take(batch) for _ in range(STREAM // batch))
        assert taken == counts.get(batch, taken) and abs(taken - STREAM * share) <= 32
    assert max(counts.values()) - min(counts.values()) <= 32  # up to one min_estimate
    assert max(abs(c - STREAM * share) for c in counts.values()) <= 32


def test_a_large_batch_is_estimated_on_a_seeded_subsample_of_min_estimate_samples() -> None:
    model, x = _model(), _stream()[:1024]
    mas = om.OnlineMAS(model, config=om.MASConfig(seed=5), detector=None)
    assert mas.estimates(1024) == 0  # 16 samples owed < 32
    mas.observe(x)
    assert mas.running.count == 0 and mas.estimates(1024) == 32
    mas.observe(x)
    assert mas.running.count == 32
    rows = torch.randperm(1024, generator=torch.Generator().manual_seed(5))[:32]
    ref, _, _ = importance_sums(model, x[rows])
    for name, value in mas.running_omega.items():
        torch.testing.assert_close(value, ref[name] / 32)
    capped = om.OnlineMAS(model, config=om.MASConfig(subsample=8), detector=None)
    for _ in range(4):
        capped.observe(x)
    assert capped.running.count == 2 * 8  # subsample caps each estimate; the rest is not carried


def test_at_batch_1_the_estimates_are_spread_over_the_stream() -> None:
    """Every 500-sample segment gets its share (an estimate every 64 samples), not a burst of 32
    consecutive samples every 2048 that would leave most such segments without any."""
    s = Schedule(1 / 64, 32)
    taken = [s.take(1) for _ in range(60_000)]
    per_segment = [sum(taken[i:i + 500]) for i in range(0, 60_000, 500)]
    assert min(per_segment) >= 7 and max(per_segment) <= 8
    assert [i for i, k in enumerate(taken[:200]) if k] == [63, 127, 191]


def test_a_varying_batch_size_still_estimates_its_share() -> None:
    s = Schedule(0.1, 16)
    sizes = [1, 7, 40, 3, 200, 16, 5] * 300
    total = sum(s.take(n) for n in sizes)
    assert abs(total - 0.1 * sum(sizes)) <= 200  # what is owed never exceeds the largest batch
    third = Schedule(1 / 3, 32)
    assert [third.take(3) for _ in range(6)] == [0, 0, 3, 0, 0, 3]  # exact fractions, no drift


def test_shared_forward_estimates_the_whole_batch_and_credits_the_surplus() -> None:
    model, xs = _model(), _stream().split(64) * 2  # 128 batches
    mas = om.OnlineMAS(model, config=om.MASConfig(shared_forward=True), detector=None)
    seen = []
    for step, x in enumerate(xs, start=1):
        model(x).sum().backward()  # the user's training forward, recorded when due
        before = mas.running.count
        mas.observe(x)
        if mas.running.count > before:
            seen.append((step, mas.running.count - before))
    # 1 sample owed per batch of 64: the first estimate at step 32 (32 owed) on the whole batch
    # (a separate pass would take 32 samples), which pays 32 ahead: the next 64 batches later
    assert seen == [(32, 64), (96, 64)]
    assert mas.running.count == 2 * STREAM / 64


def test_schedule_state_round_trips_and_a_saved_object_continues_identically() -> None:
    model, xs = _model(), _stream().split(8)
    a = om.OnlineMAS(model, config=om.MASConfig(share=1 / 16), detector=None)
    for x in xs[:21]:
        a.observe(x)
    state = a.state_dict()
    # 21 batches of 8 owe 21 * 8 / 16 samples, 8 of them paid at step 16: 2.5 samples, 40 / 16
    assert state["schedule"] == {"version": 1, "owed": 40, "denominator": 16, "next_batch": [0, 1]}
    b = om.OnlineMAS(model, config=om.MASConfig(share=1 / 16), detector=None)
    b.load_state_dict(state)
    assert a.estimates(8) == b.estimates(8) == 0
    for x in xs[21:60]:
        a.observe(x)
        b.observe(x)
    assert a.running.count == b.running.count == 3 * 8  # steps 16, 32, 48
    with pytest.raises(ValueError, match="a Schedule state is"):
        Schedule(0.5, 32).load_state_dict({"version": 1, "owed": 1.5, "denominator": 2})


@pytest.mark.parametrize("saved_at", [14, 15, 16])
def test_a_version_2_state_migrates_to_the_steps_the_old_every_had(saved_at: int) -> None:
    """A version-2 state (``config.every = 4``) saved at ``saved_at``: the next estimates come at the
    next multiples of 4, as they did, since what was owed is kept as a fraction of the next batch."""
    model, x = _model(), _stream()[:8]
    new = om.OnlineMAS(model, config=om.MASConfig(share=0.25), detector=None)
    state = new.state_dict()
    old = {k: v for k, v in state.items() if k != "schedule"}
    old.update(version=2, step=saved_at, config={**state["config"], "every": 4})  # type: ignore[dict-item]
    del old["config"]["share"], old["config"]["min_estimate"]  # type: ignore[attr-defined]
    assert current_state(old, anchor="stable")["schedule"]["next_batch"] == [saved_at % 4, 4]  # type: ignore[index]
    mas = om.OnlineMAS(model, config=om.MASConfig(share=0.25), detector=None)
    mas.load_state_dict(old)
    steps = []
    for _ in range(9):
        before = mas.running.count
        mas.observe(x)
        if mas.running.count > before:
            steps.append(mas.step)
    assert steps == [s for s in range(saved_at + 1, saved_at + 10) if s % 4 == 0]
    with pytest.raises(ValueError, match=r"config.every='x' at step 3 cannot be read"):
        current_state({**old, "step": 3, "config": {"every": "x"}}, anchor="stable")


def test_every_fails_naming_share_and_share_and_min_estimate_are_checked() -> None:
    with pytest.raises(ValueError, match=r"MASConfig\(every=4\) counted observe\(\) calls.*share=1/k is "
                                         r"every=k"):
        om.MASConfig(every=4)
    with pytest.raises(ValueError, match=r"share must be a number in \(0, 1\].*every=k.*is share=1/k"):
        om.MASConfig(share=4)
    with pytest.raises(ValueError, match=r"at least 2\*\*-20 \(one sample in 1,048,576\), got 6e-07"):
        Schedule(0.6e-6, 1)  # would round to 2**-20, not what was asked
    with pytest.raises(ValueError, match=r"share must be at least 2\*\*-20 .*, got 1e-09"):
        om.MASConfig(share=1e-9)
    with pytest.raises(ValueError, match=r"min_estimate must be an int >= 1 \(samples\), got 2.0"):
        om.MASConfig(min_estimate=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"n must be an int >= 0 \(the samples of a batch\), got -1"):
        om.OnlineMAS(_model()).estimates(-1)


@pytest.mark.parametrize(("key", "match"), [
    ("learner.online-mas.mas.every=4", r"learner\.online-mas\.mas\.every is no longer read: it counted "
                                       r"observe\(\) calls.*write share = 1/every"),
    ("adapt.mas_every=4", r"adapt\.mas_every is no longer read: it counted adaptation steps.*write "
                          r"mas_share = 1/mas_every"),
])
def test_old_config_keys_fail_naming_the_new_one(key: str, match: str) -> None:
    from online_mas.experiment import load_config
    with pytest.raises(ValueError, match=match):
        load_config(None, [key])


def test_the_ssl_configs_keep_an_estimate_every_4th_batch_of_32() -> None:
    from pathlib import Path

    from online_mas.experiment import load_config
    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("ssl-*.toml")):
        cfg = load_config(path)
        assert cfg.stream.batch_size == 32
        for learner in (cfg.learner.online_mas, cfg.learner.mas_oracle):
            s = Schedule(learner.mas.share, learner.mas.min_estimate)
            assert [s.take(32) for _ in range(8)] == [0, 0, 0, 32] * 2
