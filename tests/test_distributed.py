"""Online MAS across ranks: reductions with torch.distributed (gloo, 2 processes on CPU).

The two-process tests share one launch (the ``ranks`` fixture): both workers run every scenario
below and save what they saw; the tests compare the ranks with each other and with a
single-process run on the concatenated batches.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from models import MLP
from torch import Tensor, nn

import online_mas as om
from online_mas.distributed import (
    CommStats,
    _staging_device,
    all_reduce_flat,
    is_main_process,
    reduce_weighted_mean,
    world,
)

WORLD = 2
ROWS, SPLIT = 8, 3  # a global batch of 8 rows: rank 0 gets the first 3, rank 1 the other 5
STEPS, CONSOLIDATE = 8, 4  # observe 8 steps, consolidate by hand after step 4
CONFIGS = {  # name: (share, sync_every, average, collectives per rank: updates (an all-reduce and,
    # with sync_every=1, the all-gather of the nn.Linear factors) or windows, consolidation, final flush)
    "mean": (1.0, 1, "mean", 8 * 2 + 0 + 1),
    "mean_sync3": (1.0, 3, "mean", 2 + 1 + 1),  # windows end at steps 3 and 7
    "ema": (1.0, 1, "ema", 8 * 2 + 0 + 1),
    "mean_wide": (1.0, 1, "mean", 8 * 2 + 0 + 1),  # hidden width 64: gathering the factors sends less
    # half the samples: each rank's whole shard (3 and 5 rows) every other step, updates at 2, 4, 6, 8
    "half_sync2": (0.5, 2, "mean", 2 + 0 + 1),
}
SHIFT, STEPS_PH = 50, 60  # rank 1's data shrinks towards 0 after step 50: its entropy rises


def _short_default() -> object:
    """The default detector with a warm-up, a minimum segment and an entropy threshold (the one
    before issue 15) that fit 50 steps of 8 samples; ``lag=0``: across ranks nothing is deferred,
    so one process compares at lag 0."""
    return om.default_detector(window=8, warmup=128, min_segment=256, threshold=8.0, lag=0)

EVERY_STEP = om.MASConfig(share=1.0)  # estimate importance on every observe() call


def _batch(t: int) -> Tensor:
    return torch.randn(ROWS, 10, generator=torch.Generator().manual_seed(100 + t))


def _shard(x: Tensor, rank: int) -> Tensor:
    return x[:SPLIT] if rank == 0 else x[SPLIT:]


def _ph_batch(t: int) -> Tensor:
    x = torch.randn(ROWS, 10, generator=torch.Generator().manual_seed(1000 + t)) * 3
    if t > SHIFT:
        x[SPLIT:] *= 0.01
    return x


def _train(model: nn.Module, opt: torch.optim.Optimizer, parts: list[Tensor], mas: om.OnlineMAS) -> None:
    """One step. DDP averages the ranks' gradients, so the reference averages the shards' losses."""
    loss = sum(F.cross_entropy(model(p), (p[:, 0] > 0).long()) for p in parts) / len(parts)
    opt.zero_grad()
    (loss + mas.penalty()).backward()
    opt.step()


def _importance_run(name: str, rank: int | None) -> om.OnlineMAS:
    """``rank=None``: the single-process reference on whole batches."""
    torch.manual_seed(0)
    inner = MLP(hidden=64) if name.endswith("wide") else MLP()
    model = inner if rank is None else nn.parallel.DistributedDataParallel(inner)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    share, sync_every, average, _ = CONFIGS[name]
    mas = om.OnlineMAS(model, lam=0.5, detector=None, config=om.MASConfig(share=share),
                       average=om.RunningImportance(average, half_life=20.0),
                       reducer=om.Reducer(sync_every=sync_every))
    for t in range(1, STEPS + 1):
        x = _batch(t)
        parts = [_shard(x, 0), _shard(x, 1)] if rank is None else [_shard(x, rank)]
        _train(model, opt, parts, mas)
        mas.observe(x if rank is None else _shard(x, rank))
        if t == CONSOLIDATE:
            mas.consolidate()
    mas.flush()
    return mas


def _detector_run(detector: object, anchor: str, steps: int, rank: int | None) -> om.OnlineMAS:
    torch.manual_seed(0)
    inner = MLP()
    model = inner if rank is None else nn.parallel.DistributedDataParallel(inner)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    mas = om.OnlineMAS(model, lam=0.1, detector=detector,
                       anchor=om.StableAnchor() if anchor == "stable" else om.CurrentAnchor())
    for t in range(1, steps + 1):
        x = _ph_batch(t)
        parts = [_shard(x, 0), _shard(x, 1)] if rank is None else [_shard(x, rank)]
        _train(model, opt, parts, mas)
        mas.observe(x if rank is None else _shard(x, rank))
    return mas


def _nan_run(rank: int | None) -> om.OnlineMAS:
    """No training; at step 3 rank 1's half is not finite, so only rank 0's rows count."""
    torch.manual_seed(0)
    mas = om.OnlineMAS(MLP(), detector=None)
    for t in range(1, STEPS + 1):
        x = _batch(t)
        if rank is None:
            mas.observe(_shard(x, 0) if t == 3 else x)
            continue
        x = _shard(x, rank)
        if t == 3 and rank == 1:
            x = torch.full_like(x, float("nan"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "skipped a batch", counted below
            mas.observe(x)
    return mas


def _accumulate_run(rank: int | None) -> om.OnlineMAS:
    """No training; accumulate() at step 2 before that step's observe(), on wide layers (whose
    factors would be gathered across ranks): the kept sums must travel with the next update."""
    torch.manual_seed(0)
    mas = om.OnlineMAS(MLP(hidden=64), detector=None, config=EVERY_STEP)
    for t in range(1, STEPS + 1):
        x = _batch(t) if rank is None else _shard(_batch(t), rank)
        if t == 2:
            extra = _batch(50)
            mas.accumulate(extra if rank is None else _shard(extra, rank))
        mas.observe(x)
    mas.consolidate()
    return mas


def _signal_run(signal: str, buffer_size: int, rank: int | None) -> om.OnlineMAS:
    """No training; the detector never fires (loss, feature shift) or fires at 3 and 6 (buffer)."""
    torch.manual_seed(0)
    model = MLP()
    detector = om.Periodic(every=3) if buffer_size else om.NeverFires()
    mas = om.OnlineMAS(model, detector=detector, config=om.MASConfig(share=1.0), signal=signal,
                       buffer=om.HardBuffer(buffer_size, decay=1.0) if buffer_size else None)
    for t in range(1, STEPS + 1):
        x = _batch(t) if rank is None else _shard(_batch(t), rank)
        with torch.no_grad():
            loss = F.cross_entropy(model(x), (x[:, 0] > 0).long())
        mas.observe(x, loss=loss)
    return mas


def _snapshot(mas: om.OnlineMAS) -> dict[str, object]:
    return {
        "running": {n: t.clone() for n, t in mas.running_omega.items()},
        "omega": {n: t.clone() for n, t in mas.omega.items()},
        "anchors": {n: t.clone() for n, t in mas.anchors.items()},
        "events": [(e.step, e.reason, e.stats.get("samples")) for e in mas.events],
        "calls": mas.comm_stats.calls,
        "elements": mas.comm_stats.elements,
        "n_skipped": mas.n_skipped,
        "last_signal": mas.last_signal,
    }


# ----------------------------------------------------------------------------- the workers


def _slow_run(rank: int | None) -> om.OnlineMAS:
    """A detector and the slow anchor, importance on every step: the slow copy moves every
    ROWS samples (pooled over the ranks)."""
    torch.manual_seed(0)
    inner = MLP()
    model = inner if rank is None else nn.parallel.DistributedDataParallel(inner)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    mas = om.OnlineMAS(model, lam=0.1, detector=om.Periodic(every=3), config=EVERY_STEP,
                       anchor=om.StableAnchor(samples=ROWS, weight=0.5))
    for t in range(1, 6):
        x = _batch(t)
        _train(model, opt, [_shard(x, 0), _shard(x, 1)] if rank is None else [_shard(x, rank)], mas)
        mas.observe(x if rank is None else _shard(x, rank))
    return mas


def _doubled_run(rank: int | None) -> om.OnlineMAS:
    """``MASConfig(shared_backward=True)`` under DDP: the importance rows in the training step's
    forward and backward. The reference makes one forward of the whole batch (so that it is
    doubled too) and averages the shards' losses from its output."""
    torch.manual_seed(0)
    inner = MLP()
    model = inner if rank is None else nn.parallel.DistributedDataParallel(inner)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mas = om.OnlineMAS(model, lam=0.5, detector=None, config=om.MASConfig(share=1.0, shared_backward=True))
    for t in range(1, STEPS + 1):
        x = _batch(t)
        mine = x if rank is None else _shard(x, rank)
        out = model(mine)
        outs = [out[:SPLIT], out[SPLIT:]] if rank is None else [out]
        inputs = [_shard(x, 0), _shard(x, 1)] if rank is None else [mine]
        loss = sum(F.cross_entropy(o, (p[:, 0] > 0).long()) for o, p in zip(outs, inputs, strict=True))
        opt.zero_grad()
        (loss / len(outs) + mas.penalty()).backward()
        opt.step()
        mas.observe(mine)
        why = getattr(mas._seen.shared, "why_not", "no recorder")
        if why:
            raise AssertionError(f"shared_backward was not used: {why}")
        if t == CONSOLIDATE:
            mas.consolidate()
    return mas


def _worker(rank: int, port: int, out: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=30))
    try:
        res: dict[str, object] = {"primitives": _primitives(rank), "names": _names(rank)}
        for name in CONFIGS:
            res[name] = _snapshot(_importance_run(name, rank))
        res["nan"] = _snapshot(_nan_run(rank))
        res["doubled"] = _snapshot(_doubled_run(rank))
        slow = _slow_run(rank)
        res["slow"] = {**_snapshot(slow), "slow": dict(slow.anchor_policy.source() or {})}
        res["accumulate"] = _snapshot(_accumulate_run(rank))
        res["loss"] = _snapshot(_signal_run("loss", 0, rank))
        res["feature_shift"] = _snapshot(_signal_run("feature_shift", 0, rank))
        res["buffer"] = _snapshot(_signal_run("entropy", 4, rank))
        res["periodic"] = _snapshot(_detector_run(om.Periodic(every=4), "current", 12, rank))
        res["page_hinkley"] = _snapshot(_detector_run(_short_default(), "stable", STEPS_PH, rank))
        torch.save(res, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _primitives(rank: int) -> dict[str, object]:
    calls = []
    all_reduce = dist.all_reduce

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return all_reduce(*args, **kwargs)

    dist.all_reduce = counting
    try:
        a = torch.full((2, 3), float(rank + 1))
        b = torch.arange(5.0) * rank
        stats = CommStats()
        summed = all_reduce_flat([a, b], stats=stats)
        unchanged = torch.equal(a, torch.full((2, 3), float(rank + 1)))
        means, total = reduce_weighted_mean({"acc": torch.tensor([0.5, 1.0][rank])}, [2, 6][rank])
        group = dist.new_group([0, 1])
        assert isinstance(group, dist.ProcessGroup)
        return {
            "world": world(), "main": is_main_process(), "group_world": world(group)[:2],
            "summed": summed, "unchanged": unchanged, "calls": len(calls),
            "stats": (stats.calls, stats.elements, stats.nbytes),
            "mean": float(means["acc"]), "total": total,
        }
    finally:
        dist.all_reduce = all_reduce


def _names(rank: int) -> dict[str, object]:
    """DDP-wrapped, plain and explicit-group OnlineMAS on the same data; state dicts across them."""
    torch.manual_seed(0)
    inner = MLP()
    ddp = nn.parallel.DistributedDataParallel(inner)
    plain = MLP()
    plain.load_state_dict(inner.state_dict())
    group = dist.new_group([0, 1])
    assert isinstance(group, dist.ProcessGroup)
    masses = [om.OnlineMAS(ddp, detector=None), om.OnlineMAS(plain, detector=None),
              om.OnlineMAS(ddp, detector=None, reducer=om.Reducer(group))]
    for t in range(1, 3):
        for mas in masses:
            mas.observe(_shard(_batch(t), rank))
    for mas in masses:
        mas.consolidate()
    ddp_state, plain_state = masses[0].state_dict(), masses[1].state_dict()
    into_plain = om.OnlineMAS(MLP(), detector=None)
    into_plain.load_state_dict(ddp_state)
    into_ddp = om.OnlineMAS(nn.parallel.DistributedDataParallel(MLP()), detector=None)
    into_ddp.load_state_dict(plain_state)
    return {
        "keys": sorted(ddp_state["consolidator"]["omega"]),  # type: ignore[index]
        "omegas": [m.omega for m in (*masses, into_plain, into_ddp)],
        "anchors": [m.anchors for m in (*masses, into_plain)],
    }


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The references run tiny models: one thread is much faster on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    out = tmp_path_factory.mktemp("ranks")
    ctx = mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 90
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail("the 2-process gloo workers did not finish in 90 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# ----------------------------------------------------------------------------- two processes


def _close(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert list(a) == list(b)
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=0.0)


def _identical(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert list(a) == list(b)
    assert all(torch.equal(a[n], b[n]) for n in a), "ranks differ"


def test_primitives_sum_over_ranks_in_one_all_reduce(ranks: list[dict[str, object]]) -> None:
    for rank, res in enumerate(ranks):
        p = res["primitives"]
        assert isinstance(p, dict)
        assert p["world"] == (rank, 2, None) and p["main"] == (rank == 0)
        assert p["group_world"] == (rank, 2)
        a, b = p["summed"]
        assert torch.equal(a, torch.full((2, 3), 3.0)) and torch.equal(b, torch.arange(5.0))
        assert p["unchanged"]
        assert p["calls"] == 2  # all_reduce_flat: one; reduce_weighted_mean: one
        assert p["stats"] == (1, 11, 44)
        assert p["mean"] == pytest.approx((0.5 * 2 + 1.0 * 6) / 8) and p["total"] == 8.0


@pytest.mark.parametrize("name", list(CONFIGS))
def test_importance_equals_single_process_on_the_concatenated_batches(
    ranks: list[dict[str, object]], name: str
) -> None:
    with _one_thread():
        ref = _importance_run(name, None)
    r0, r1 = (res[name] for res in ranks)
    assert isinstance(r0, dict) and isinstance(r1, dict)
    _identical(r0["running"], r1["running"])
    _identical(r0["omega"], r1["omega"])
    _identical(r0["anchors"], r1["anchors"])
    samples = 2 * ROWS if name == "half_sync2" else CONSOLIDATE * ROWS
    assert r0["events"] == [(CONSOLIDATE, "manual", float(samples))]
    _close(r0["running"], ref.running_omega)
    _close(r0["omega"], ref.omega)
    _close(r0["anchors"], ref.anchors)
    assert r0["calls"] == r1["calls"] == CONFIGS[name][3]
    if name in ("mean", "mean_wide"):  # what travelled: products all-reduced, or factors gathered
        widths = [(m.in_features, m.out_features) for m in ref.model.modules() if isinstance(m, nn.Linear)]
        params = sum(p.numel() for p in ref.model.parameters())
        flat = params + 4 + len(widths) * 2 + WORLD  # sums, scalars, factored names, rows per rank
        rows = ROWS - SPLIT  # the larger shard
        factors = WORLD * rows * sum(i + o for i, o in widths)
        products = sum(i * o for i, o in widths)
        per_update = flat + (factors if name == "mean_wide" else products)
        assert (factors < products) == (name == "mean_wide")
        assert r0["elements"] == STEPS * per_update + params + 3  # and the final flush

def test_shared_backward_under_ddp_equals_the_single_process_run(ranks: list[dict[str, object]]) -> None:
    with _one_thread():
        ref = _doubled_run(None)
    r0, r1 = (res["doubled"] for res in ranks)
    assert isinstance(r0, dict) and isinstance(r1, dict)
    _identical(r0["omega"], r1["omega"])
    _close(r0["running"], ref.running_omega)
    _close(r0["omega"], ref.omega)
    _close(r0["anchors"], ref.anchors)


def test_the_slow_anchor_counts_the_pooled_samples_when_every_step_is_an_update(
    ranks: list[dict[str, object]]
) -> None:
    with _one_thread():
        ref = _slow_run(None)
    want = ref.anchor_policy.source()
    assert want is not None
    for res in ranks:
        got = res["slow"]
        assert isinstance(got, dict)
        for key, value in (("slow", want), ("anchors", ref.anchors)):  # parameters near 0: atol
            assert list(got[key]) == list(value)  # type: ignore[call-overload]
            for n in value:
                torch.testing.assert_close(got[key][n], value[n], rtol=1e-5, atol=1e-7)  # type: ignore[index]
        assert [e[0] for e in got["events"]] == [e.step for e in ref.events] == [3]


def test_sums_kept_by_accumulate_travel_with_the_next_update(ranks: list[dict[str, object]]) -> None:
    with _one_thread():
        ref = _accumulate_run(None)
    r0, r1 = (res["accumulate"] for res in ranks)
    assert isinstance(r0, dict) and isinstance(r1, dict)
    _identical(r0["omega"], r1["omega"])
    _close(r0["omega"], ref.omega)
    assert r0["events"] == [(STEPS, "manual", float((STEPS + 1) * ROWS))]


def test_a_rank_with_a_non_finite_batch_takes_part_with_zeros(ranks: list[dict[str, object]]) -> None:
    with _one_thread():
        ref = _nan_run(None)
    r0, r1 = (res["nan"] for res in ranks)
    assert isinstance(r0, dict) and isinstance(r1, dict)
    assert (r0["n_skipped"], r1["n_skipped"]) == (0, 1)
    _identical(r0["running"], r1["running"])
    _close(r0["running"], ref.running_omega)


def test_signals_and_buffer_are_reduced(ranks: list[dict[str, object]]) -> None:
    for name in ("loss", "feature_shift", "buffer"):
        r0, r1 = (res[name] for res in ranks)
        assert isinstance(r0, dict) and isinstance(r1, dict)
        assert r0["last_signal"] is not None and r0["last_signal"] == r1["last_signal"], name
        assert r0["events"] == r1["events"], name
        _identical(r0["omega"], r1["omega"])
    with _one_thread():
        ref = _signal_run("loss", 0, None)  # the loss of the whole batch: sum_r n_r loss_r / sum_r n_r
    assert ranks[0]["loss"]["last_signal"] == pytest.approx(ref.last_signal, rel=1e-6)  # type: ignore[index]
    # each rank's 4 buffered samples join the 3 batches of 8 at both consolidations
    assert ranks[0]["buffer"]["events"] == [(3, "detector", 32.0), (6, "detector", 32.0)]  # type: ignore[index]


@pytest.mark.parametrize("name", ["periodic", "page_hinkley"])
def test_ranks_consolidate_at_the_same_step_with_identical_anchor_and_omega(
    ranks: list[dict[str, object]], name: str
) -> None:
    r0, r1 = (res[name] for res in ranks)
    assert isinstance(r0, dict) and isinstance(r1, dict)
    assert r0["events"] == r1["events"]
    assert r0["last_signal"] == r1["last_signal"]
    _identical(r0["anchors"], r1["anchors"])
    _identical(r0["omega"], r1["omega"])
    events = r0["events"]
    assert isinstance(events, list)
    steps = [e[0] for e in events]
    if name == "periodic":
        assert steps == [4, 8, 12]
        return
    # only rank 1's data changes, yet both ranks fire, where one process on the whole batch does
    with _one_thread():
        ref = _detector_run(_short_default(), "stable", STEPS_PH, None)
    assert steps == [e.step for e in ref.events] and len(steps) == 1 and SHIFT < steps[0] <= SHIFT + 10
    _close(r0["omega"], ref.omega)
    _close(r0["anchors"], ref.anchors)


def test_ddp_wrapped_plain_and_explicit_group_agree(ranks: list[dict[str, object]]) -> None:
    for res in ranks:
        names = res["names"]
        assert isinstance(names, dict)
        assert names["keys"] == sorted(n for n, _ in MLP().named_parameters())
        first, *others = names["omegas"]
        for other in others:
            _identical(first, other)
        first, *others = names["anchors"]
        for other in others:
            _identical(first, other)


# ----------------------------------------------------------------------------- one process


def test_wrapped_model_has_the_importance_and_state_of_the_plain_one() -> None:
    torch.manual_seed(0)
    plain = MLP()
    wrapped = nn.DataParallel(MLP())  # no GPU: a pass-through wrapper with "module." names
    wrapped.module.load_state_dict(plain.state_dict())
    x = torch.randn(12, 10)
    a = om.OnlineMAS(plain, detector=None, config=EVERY_STEP)
    b = om.OnlineMAS(wrapped, detector=None, config=EVERY_STEP)
    a.observe(x)
    b.observe(x)
    assert list(b.running_omega) == [n for n, _ in plain.named_parameters()]
    for n, v in a.running_omega.items():
        assert v.sum() > 0
        torch.testing.assert_close(b.running_omega[n], v)
    a.consolidate()
    b.consolidate()
    for src, dst in ((a, om.OnlineMAS(nn.DataParallel(MLP()), detector=None, config=EVERY_STEP)),
                     (b, om.OnlineMAS(MLP(), detector=None, config=EVERY_STEP))):
        dst.load_state_dict(src.state_dict())
        for n, v in src.omega.items():
            assert torch.equal(dst.omega[n], v) and torch.equal(dst.anchors[n], src.anchors[n])


def test_importance_of_a_ddp_model_has_the_names_of_the_plain_one(tmp_path: Path) -> None:
    """om.importance(DDP(m)) and OnlineMAS(DDP(m)) agree: no ``module.`` prefix (one gloo process)."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = MLP()
        ddp = nn.parallel.DistributedDataParallel(MLP())
        ddp.module.load_state_dict(plain.state_dict())
        x = torch.randn(9, 10)
        want = om.importance(plain, x)
        for method in ("exact", "vmap"):
            got = om.importance(ddp, x, method=method)
            assert list(got) == list(want)
            for n, v in want.items():
                torch.testing.assert_close(got[n], v, rtol=1e-4, atol=1e-7)
        assert om.plan(ddp, x) == om.plan(plain, x)
        mas = om.OnlineMAS(ddp, detector=None, config=EVERY_STEP)
        mas.observe(x)
        assert list(mas.running_omega) == list(want)
        for n, v in want.items():
            torch.testing.assert_close(mas.running_omega[n], v, rtol=1e-4, atol=1e-7)
    finally:
        dist.destroy_process_group()


def test_single_process_never_communicates_and_ignores_sync_every(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_all_reduce(*args: object, **kwargs: object) -> None:
        raise AssertionError("all_reduce called in a single process")

    monkeypatch.setattr(dist, "all_reduce", no_all_reduce)
    assert world() == (0, 1, None) and is_main_process()
    runs = []
    for sync_every in (1, 3):
        torch.manual_seed(0)
        mas = om.OnlineMAS(MLP(), detector=om.Periodic(every=4), buffer=om.HardBuffer(4),
                           reducer=om.Reducer(sync_every=sync_every))
        for t in range(1, 7):
            mas.observe(_batch(t))
        mas.flush()
        runs.append(mas)
        assert mas.comm_stats.calls == 0 and [e.step for e in mas.events] == [4]
        mas.state_dict()  # nothing pending in a single process
    _identical(runs[0].running_omega, runs[1].running_omega)
    _identical(runs[0].omega, runs[1].omega)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sync_every must be an int >= 1, got 0"):
        om.Reducer(sync_every=0)
    with pytest.raises(TypeError, match=r"process_group must be a torch\.distributed\.ProcessGroup"):
        om.Reducer("world")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="one dtype"):
        all_reduce_flat([torch.zeros(2), torch.zeros(2, dtype=torch.float64)])
    with pytest.raises(ValueError, match="n must be a number >= 0"):
        reduce_weighted_mean({"a": torch.zeros(1)}, -1)


def test_staging_device_for_backends_that_cannot_take_the_tensor() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert _staging_device(cpu, "gloo") == cpu and _staging_device(cuda, "gloo") == cuda
    assert _staging_device(cuda, "nccl") == cuda
    assert _staging_device(torch.device("mps"), "gloo") == cpu
    assert _staging_device(cpu, "cpu:gloo,cuda:nccl") == cpu
    assert _staging_device(cuda, "cpu:gloo,cuda:nccl") == cuda
    assert _staging_device(torch.device("xpu"), "cpu:gloo,cuda:nccl") == cpu
