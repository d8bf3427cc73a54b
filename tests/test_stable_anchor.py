"""StableAnchor's interval in samples: the same slow copy whatever the batch size; the old
calls-based ``every`` (keyword, config key, saved state) fails clearly or migrates exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import online_mas as om
from online_mas.experiment import load_config
from online_mas.migrate import current_state

N = 480  # samples of the stream


def _theta(i: int) -> torch.Tensor:
    """The parameter after ``i`` samples of training: a trajectory defined per sample."""
    return torch.tensor([float(i), (0.97 ** i), float(i % 7)], dtype=torch.float64)


def _anchor_after(batch: int, samples: int, weight: float) -> torch.Tensor:
    anchor = om.StableAnchor(samples=samples, weight=weight)
    for end in range(batch, N + 1, batch):  # the step that ends at sample ``end``
        anchor.step(batch, ["w"], [_theta(end)])
    return (anchor.source() or {})["w"]


@pytest.mark.parametrize("weight", [0.5, 0.2, 1.0])
@pytest.mark.parametrize("samples", [32, 96])
def test_same_anchor_for_the_stream_cut_into_batches_of_1_4_and_32(samples: int, weight: float) -> None:
    got = {b: _anchor_after(b, samples, weight) for b in (1, 4, 32)}
    want = _theta(samples)  # by hand: the copy starts at the first move, then lerps at each
    for k in range(2, N // samples + 1):
        want = want + weight * (_theta(k * samples) - want)
    for b, a in got.items():
        torch.testing.assert_close(a, want, rtol=0, atol=1e-12, msg=f"batch {b}")


def test_a_batch_larger_than_the_interval_moves_as_that_many_moves_would() -> None:
    a = om.StableAnchor(samples=4, weight=0.5)
    a.step(4, ["w"], [torch.zeros(1)])
    a.step(12, ["w"], [torch.ones(1)])  # three intervals at once toward the same parameters
    torch.testing.assert_close((a.source() or {})["w"], torch.tensor([1 - 0.5 ** 3]))
    assert a.pending == 0
    a.step(6, ["w"], [torch.ones(1)])
    assert a.pending == 2


def test_through_online_mas_the_copy_moves_after_the_same_samples_at_batch_1_and_4() -> None:
    def first_move(batch: int) -> int:
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        anchor = om.StableAnchor(samples=8)
        mas = om.OnlineMAS(model, anchor=anchor, detector=om.Periodic(every=10_000))
        for step in range(1, 40):
            mas.observe(torch.randn(batch, 3))
            if anchor.source() is not None:
                return step * batch
        raise AssertionError("the copy never moved")

    assert first_move(1) == first_move(4) == 8


def test_the_old_every_keyword_and_positional_use_fail_naming_what_to_use() -> None:
    with pytest.raises(TypeError, match=r"every=10.*StableAnchor\(samples=k\*B\) for every=k at batch B"):
        om.StableAnchor(every=10)
    with pytest.raises(TypeError, match=r"keyword arguments only.*samples=k\*B"):
        om.StableAnchor(10, 0.5)  # type: ignore[call-arg]
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="samples must be an int >= 1"):
            om.StableAnchor(samples=bad)  # type: ignore[arg-type]


def test_state_round_trip_keeps_the_samples_since_the_last_move() -> None:
    a = om.StableAnchor(samples=10)
    a.step(10, ["w"], [torch.zeros(2)])
    a.step(7, ["w"], [torch.ones(2)])
    b = om.StableAnchor(samples=10)
    b.load_state_dict(a.state_dict())
    assert b.pending == 7
    b.step(3, ["w"], [torch.ones(2)])
    torch.testing.assert_close((b.source() or {})["w"], torch.full((2,), 0.5))


def _v1_anchor(every: int) -> dict[str, object]:
    return {"version": 1, "kind": "stable", "every": every, "weight": 0.5, "slow": {"w": torch.ones(2)}}


def test_an_old_anchor_state_fails_alone_and_migrates_only_where_exact() -> None:
    with pytest.raises(ValueError, match=r"version 1 \(interval in observe\(\) calls, every=3\)"):
        om.StableAnchor().load_state_dict(_v1_anchor(3))
    mas = om.OnlineMAS(nn.Linear(3, 2))
    state = mas.state_dict()
    moved = current_state({**state, "step": 12, "anchor_policy": _v1_anchor(3)}, anchor="stable")
    policy = moved["anchor_policy"]
    assert isinstance(policy, dict) and {k: v for k, v in policy.items() if k != "slow"} == \
        {"version": 2, "kind": "stable", "weight": 0.5, "pending": 0}
    assert torch.equal(policy["slow"]["w"], torch.ones(2))
    with pytest.raises(ValueError, match=r"every=3\) and was saved 1 call\(s\) after its slow copy "
                                         r"last moved \(step 13\).*cannot migrate exactly"):
        current_state({**state, "step": 13, "anchor_policy": _v1_anchor(3)}, anchor="stable")


@pytest.mark.parametrize("config", ["permuted-digits.toml", "recurring-digits.toml"])
def test_runner_key_stable_samples_and_the_old_stable_every_fails_clearly(config: str) -> None:
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "configs" / config
    cfg = load_config(path)
    section = cfg.learner.online_mas.mas
    assert section.stable_samples == 320  # the old default of 10 calls at batch 32
    anchor = section.policies()["anchor"]
    assert isinstance(anchor, om.StableAnchor) and anchor.samples == 320
    with pytest.raises(ValueError, match=r"learner\.online-mas\.mas\.stable_every is no longer read: "
                                         r"the slow anchor's interval is now in samples"):
        load_config(path, ["learner.online-mas.mas.stable_every=10"])
