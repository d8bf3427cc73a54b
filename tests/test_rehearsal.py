"""Rehearsal memories: a hand-traced reservoir, class-balance counts, the hard buffer, state."""

from __future__ import annotations

import io

import pytest
import torch

from online_mas import ClassBalanced, HardReplay, Reservoir

KINDS = [Reservoir, ClassBalanced, HardReplay]


def stream(n: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(start, start + n, dtype=torch.float32).view(n, 1)
    return x, torch.arange(start, start + n) % 3


def test_reservoir_matches_the_hand_trace_of_algorithm_r() -> None:
    # seed 0 draws u_t = 0.970, 0.708, 0.459, 0.921, 0.645, 0.791, 0.179 (t=6), 0.351, 0.581, 0.288
    # samples 0-2 fill the slots; t >= 3 goes to slot floor(u_t (t + 1)) if < 3:
    # t=3: 3, t=4: 3, t=5: 4 (all dropped); t=6: 1 (slot 1 <- 6); t=7: 2 (slot 2 <- 7);
    # t=8: 5 (dropped); t=9: 2 (slot 2 <- 9)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(10, generator=g, dtype=torch.float64)
    assert [int(u[t] * (t + 1)) for t in range(3, 10)] == [3, 3, 4, 1, 2, 5, 2]
    mem = Reservoir(3, seed=0)
    for lo, hi in ((0, 4), (4, 7), (7, 10)):  # batching does not change the draws
        x = torch.arange(lo, hi, dtype=torch.float32).view(-1, 1)
        mem.update(x, torch.arange(lo, hi))
    assert mem.y.tolist() == [0, 6, 9]
    assert mem.x is not None and mem.x.flatten().tolist() == [0.0, 6.0, 9.0]
    assert mem.seen == 10 and len(mem) == 3


def test_reservoir_keeps_each_sample_with_probability_size_over_seen() -> None:
    counts = torch.zeros(20)
    for seed in range(300):
        mem = Reservoir(5, seed=seed)
        mem.update(*stream(20))
        counts[mem.x.flatten().long()] += 1  # type: ignore[union-attr]
    freq = counts / 300
    assert freq.sum().item() == pytest.approx(5.0)
    assert (freq - 0.25).abs().max().item() < 0.1  # 300 draws: 3 sd of a Bernoulli(0.25) is 0.075


def test_class_balanced_counts() -> None:
    mem = ClassBalanced(12, seed=0)
    x = torch.zeros(45, 1)
    y = torch.tensor([0] * 30 + [1] * 10 + [2] * 5)
    mem.update(x, y)
    assert torch.bincount(mem.y).tolist() == [4, 4, 4]
    minority = ClassBalanced(10, seed=1)
    minority.update(torch.zeros(43, 1), torch.tensor([0] * 20 + [1] * 3 + [0] * 20))
    assert torch.bincount(minority.y).tolist() == [7, 3]  # every minority sample kept
    plain = Reservoir(10, seed=1)
    plain.update(torch.zeros(43, 1), torch.tensor([0] * 20 + [1] * 3 + [0] * 20))
    assert torch.bincount(plain.y, minlength=2)[1].item() < 3


def test_hard_replay_keeps_the_highest_losses_and_refreshes_replayed_ones() -> None:
    mem = HardReplay(3)
    x, y = stream(5)
    mem.update(x, y, torch.tensor([0.5, 3.0, float("nan"), 1.0, 2.0]))
    assert mem.x.flatten().tolist() == [1.0, 4.0, 3.0]  # type: ignore[union-attr]
    assert mem.scores.tolist() == [3.0, 2.0, 1.0] and mem.seen == 4
    xb, _ = mem.mix(*stream(2, start=10), n=3)
    assert xb.shape == (5, 1) and sorted(xb[2:].flatten().tolist()) == [1.0, 3.0, 4.0]
    fresh = {1.0: 0.1, 3.0: 0.2, 4.0: 0.3}  # the replayed samples are now easy
    replay_losses = torch.tensor([fresh[v] for v in xb[2:].flatten().tolist()])
    mem.update(*stream(2, start=10), torch.tensor([0.9, 0.05]), replay_losses=replay_losses)
    assert mem.x.flatten().tolist() == [10.0, 4.0, 3.0]  # type: ignore[union-attr]
    assert mem.scores.tolist() == pytest.approx([0.9, 0.3, 0.2])


def hand_era_deal(scores: list[float], eras: list[int], size: int) -> list[int]:
    """Round-robin by era, each era's hardest first; within a round the higher score first."""
    per_era: dict[int, list[int]] = {}
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        per_era.setdefault(eras[i], []).append(i)
    picked: list[int] = []
    for r in range(len(scores)):
        row = [ids[r] for ids in per_era.values() if r < len(ids)]
        picked += sorted(row, key=lambda i: -scores[i])
    return picked[:size]


def test_hard_replay_shares_its_slots_among_eras() -> None:
    g = torch.Generator().manual_seed(0)
    mem = HardReplay(8)
    offered_scores: list[float] = []
    offered_eras: list[int] = []
    offered_x: list[float] = []
    for era, (n, base) in enumerate([(10, 0.0), (6, 5.0), (3, 10.0)]):  # later eras: higher losses
        if era:
            mem.new_era()
        x = torch.arange(len(offered_x), len(offered_x) + n, dtype=torch.float32).view(n, 1)
        losses = base + torch.rand(n, generator=g)
        mem.update(x, torch.zeros(n, dtype=torch.long), losses)
        offered_x += x.flatten().tolist()
        offered_scores += losses.tolist()
        offered_eras += [era] * n
    want = hand_era_deal(offered_scores, offered_eras, 8)
    assert mem.x.flatten().tolist() == [offered_x[i] for i in want]  # type: ignore[union-attr]
    assert torch.bincount(mem.eras).tolist() == [2, 3, 3] and mem.era == 2  # the odd slots: hardest
    plain = HardReplay(8)  # without new_era: the 8 highest losses, all from the last two eras
    plain.update(torch.tensor(offered_x).view(-1, 1), torch.zeros(19, dtype=torch.long),
                 torch.tensor(offered_scores))
    top = sorted(range(19), key=lambda i: -offered_scores[i])[:8]
    assert plain.x.flatten().tolist() == [offered_x[i] for i in top]  # type: ignore[union-attr]
    assert set(plain.eras.tolist()) == {0} and min(offered_eras[i] for i in top) == 1


def test_an_era_with_few_samples_leaves_its_share_to_the_others() -> None:
    mem = HardReplay(4)
    mem.update(*stream(1), torch.tensor([0.1]))
    mem.new_era()
    mem.update(*stream(6, start=1), torch.arange(6.0))
    assert torch.bincount(mem.eras).tolist() == [1, 3]
    assert mem.x.flatten().tolist() == [6.0, 0.0, 5.0, 4.0]  # type: ignore[union-attr]


def test_logits_are_stored_and_replayed_with_their_samples() -> None:
    mem = Reservoir(4, seed=0)
    x, y = stream(4)
    mem.update(x, y, logits=x.repeat(1, 2))
    replay = mem.sample(2)
    assert replay is not None and replay.logits is not None
    assert torch.equal(replay.logits, replay.x.repeat(1, 2))
    assert torch.equal(replay.y, y[replay.slots])
    with pytest.raises(ValueError, match="pass logits= on every update or on none"):
        mem.update(x, y)


@pytest.mark.parametrize("kind", KINDS)
def test_state_round_trip_gives_the_same_next_batch(kind: type[Reservoir]) -> None:
    torch.manual_seed(0)
    a = kind(6, seed=3)
    for i in range(4):
        x, y = stream(5, start=5 * i)
        a.update(x, y, torch.rand(5))
        a.mix(x, y)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = kind(6, seed=99)
    b.load_state_dict(torch.load(buf, weights_only=True))
    x, y = stream(5, start=100)
    losses = torch.rand(5)
    for mem in (a, b):
        mem.update(x, y, losses)
    xa, ya = a.mix(x, y)
    xb, yb = b.mix(x, y)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.shape[0] == 10
    assert torch.equal(a.y, b.y) and torch.equal(a.scores, b.scores) and a.seen == b.seen


def test_hard_replay_state_keeps_the_eras_and_reads_a_state_without_them() -> None:
    a = HardReplay(4)
    a.update(*stream(3), torch.tensor([1.0, 2.0, 3.0]))
    a.new_era()
    a.update(*stream(3, start=3), torch.tensor([7.0, 8.0, 9.0]))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = HardReplay(4)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(a.eras, b.eras) and b.era == 1
    old = {k: v for k, v in a.state_dict().items() if k not in ("eras", "era")}
    c = HardReplay(4)
    c.load_state_dict(old)
    assert c.era == 0 and c.eras.tolist() == [0, 0, 0, 0]


def test_an_empty_memory_mixes_nothing_in() -> None:
    x, y = stream(3)
    xb, yb = Reservoir(2).mix(x, y)
    assert xb is x and yb is y and Reservoir(2).sample(1) is None


def test_bad_values_are_named() -> None:
    with pytest.raises(ValueError, match="size must be an int >= 1, got 0"):
        Reservoir(0)
    with pytest.raises(ValueError, match="seed must be an int >= 0, got -1"):
        ClassBalanced(2, seed=-1)
    with pytest.raises(ValueError, match="n must be an int >= 1, got 0"):
        Reservoir(2).sample(0)
    with pytest.raises(ValueError, match="needs the per-sample losses, got losses=None"):
        HardReplay(2).update(*stream(2))
    with pytest.raises(ValueError, match="need one label per sample: 3 samples, 2 labels"):
        Reservoir(2).update(torch.zeros(3, 1), torch.zeros(2))
    with pytest.raises(ValueError, match="need one value of losses per sample: 3 samples, 1 values"):
        Reservoir(2).update(torch.zeros(3, 1), torch.zeros(3), torch.zeros(1))
    mem = Reservoir(2)
    mem.update(torch.zeros(1, 2), torch.zeros(1))
    with pytest.raises(ValueError, match=r"inputs of shape \(3,\)"):
        mem.update(torch.zeros(1, 3), torch.zeros(1))
    with pytest.raises(ValueError, match="memory state is of kind 'reservoir' size 2, not 'hard' size 2"):
        HardReplay(2).load_state_dict(mem.state_dict())
