"""Online MAS on FSDP2-sharded models (DTensor parameters): gloo, 2 processes on CPU.

One launch serves the module (the ``ranks`` fixture): both workers run every scenario and save
what they saw, gathered with ``full_tensor()`` for the comparison only; the tests compare it with a
single-process run on the concatenated batches.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from models import MLP
from torch import Tensor, nn

import online_mas as om
from online_mas.sharded import full, local, local_nbytes, scatter_sums

WORLD = 2
ROWS, SPLIT = 8, 3  # a global batch of 8 rows: rank 0 gets the first 3, rank 1 the other 5
STEPS, CONSOLIDATE, LR = 6, 3, 0.05
FORMS = ("loss", "grad", "proximal")  # the penalty's form on step t: FORMS[t % 3]
SCATTER = [((7, 3), 0), ((5,), 0), ((1, 4), 0), ((4, 6), 1), ((6, 2), "hsdp")]  # shape, Shard dim


class Scaled(nn.Module):
    """A parameter of the root used in the forward (no rule: torch.func gives its importance)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(10, 8), nn.Linear(8, 3)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 8))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.inp(x)) * self.scale)


def _families() -> dict[str, tuple[nn.Module, Tensor]]:
    """A seeded model and a seeded input shape per family (built identically on every rank)."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv1d(2, 6, 5, stride=2, padding=1), nn.GroupNorm(2, 6), nn.ReLU(),
                         nn.Flatten(), nn.LayerNorm(30), nn.Linear(30, 3))  # no BatchNorm: its batch
    return {"mlp": (MLP(), torch.zeros(1, 10)), "conv": (conv, torch.zeros(1, 2, 12))}  # statistics differ


def _batch(family: str, t: int) -> Tensor:
    g = torch.Generator().manual_seed(100 + t)
    return torch.randn(ROWS, 2, 12, generator=g) if family == "conv" else torch.randn(ROWS, 10, generator=g)


def _shard(x: Tensor, rank: int) -> Tensor:
    return x[:SPLIT] if rank == 0 else x[SPLIT:]


def _labels(out: Tensor) -> Tensor:
    return torch.arange(out.shape[0]) % out.shape[1]


def _sharded(model: nn.Module) -> nn.Module:
    """FSDP2 on every submodule that owns parameters, then on the root."""
    from torch.distributed.fsdp import fully_shard

    for m in list(model.modules())[1:]:
        if any(True for _ in m.parameters(recurse=False)):
            fully_shard(m)
    fully_shard(model)
    return model


def _mas(model: nn.Module, detector: object | None, *, doubled: bool = False) -> om.OnlineMAS:
    anchor = om.StableAnchor(samples=ROWS, weight=0.5) if detector is not None else om.CurrentAnchor()
    return om.OnlineMAS(model, lam=2.0, config=om.MASConfig(share=1.0, shared_backward=doubled),
                        detector=detector, anchor=anchor)


@contextlib.contextmanager
def _gathers() -> Iterator[list[int]]:
    """Counts FSDP2's parameter all-gathers (``dist.all_gather_single``) inside."""
    count = [0]
    real = dist.all_gather_single

    def counting(*args: object, **kwargs: object) -> object:
        count[0] += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    dist.all_gather_single = counting  # type: ignore[assignment]
    try:
        yield count
    finally:
        dist.all_gather_single = real


def _run(family: str, rank: int | None, *, detector: bool = False, doubled: bool = False
         ) -> tuple[nn.Module, om.OnlineMAS, dict[str, object]]:
    """STEPS training steps with the penalty in its three forms in turn; a manual consolidation
    after step CONSOLIDATE (no detector) or a Periodic detector every 2 steps. ``rank`` None: the
    single-process reference on the whole batches, its loss the mean of the two shards' losses
    (FSDP averages the ranks' gradients); with ``doubled`` (``shared_backward``) from one forward
    of the whole batch. Also returns the all-gathers of each step and the gradients of the steps
    before the consolidation (the penalty is zero until then)."""
    model = _families()[family][0]
    if rank is not None:
        model = _sharded(model)
    mas = _mas(model, om.Periodic(every=2) if detector else None, doubled=doubled)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    seen: dict[str, list[object]] = {"gathers": [], "grads": [], "why": []}
    for t in range(1, STEPS + 1):
        x = _batch(family, t)
        with _gathers() as count:
            if rank is None and doubled:
                out = model(x)
                outs = [out[:SPLIT], out[SPLIT:]]
            else:
                parts = [_shard(x, 0), _shard(x, 1)] if rank is None else [_shard(x, rank)]
                outs = [model(p) for p in parts]
                mine = parts[0]  # the very tensor of this rank's forward
            loss = sum(F.cross_entropy(o, _labels(o)) for o in outs) / len(outs)
            form = FORMS[t % 3]
            opt.zero_grad()
            (loss + mas.penalty() if form == "loss" else loss).backward()
            if form == "grad":
                mas.penalty_grad_()
            if t <= CONSOLIDATE:
                seen["grads"].append({k: full(p.grad) for k, p in model.named_parameters()})
            opt.step()
            if form == "proximal":
                mas.proximal_(LR)
            mas.observe(x if rank is None else mine)
        seen["gathers"].append(count[0])
        seen["why"].append(getattr(mas._seen.shared, "why_not", None))
        if not detector and t == CONSOLIDATE:
            mas.consolidate()
    return model, mas, seen


def _snapshot(model: nn.Module, mas: om.OnlineMAS) -> dict[str, object]:
    state = mas.state_dict()
    per_param = [state["running"]["mean"], state["consolidator"]["omega"],  # type: ignore[index]
                 state["consolidator"]["anchor"], state["anchor_policy"].get("slow", {})]  # type: ignore[index]
    return {
        "running": {k: full(v) for k, v in mas.running_omega.items()},
        "omega": {k: full(v) for k, v in mas.omega.items()},
        "anchors": {k: full(v) for k, v in mas.anchors.items()},
        "params": {k: full(p.detach()) for k, p in model.named_parameters()},
        "local_shapes": {k: tuple(local(v).shape) for k, v in mas.omega.items()},
        "kinds": sorted({type(v).__name__ for d in per_param for v in d.values()}),
        "state_bytes": local_nbytes(per_param),
        "events": [(e.step, e.reason) for e in mas.events],
        "samples": [e.stats["samples"] for e in mas.events],
    }


def _scatter(rank: int) -> dict[str, object]:
    """scatter_sums of per-rank seeded tensors: flat (1-D mesh, Shard(0) and Shard(1)) and
    through redistribute (a 2-D mesh, HSDP's layout)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    mesh2 = init_device_mesh("cpu", (1, WORLD), mesh_dim_names=("replicate", "shard"))
    params, sums = [], []
    for i, (shape, dim) in enumerate(SCATTER):
        if dim == "hsdp":
            params.append(distribute_tensor(torch.zeros(shape), mesh2, [Replicate(), Shard(0)]))
        else:
            params.append(distribute_tensor(torch.zeros(shape), mesh, [Shard(dim)]))  # type: ignore[arg-type]
        sums.append(torch.randn(shape, generator=torch.Generator().manual_seed(10 * i + rank)))
    stats = om.distributed.CommStats()
    out = scatter_sums(sums, params, stats=stats, bucket=30)  # two buckets of the flat ones
    return {"full": [o.full_tensor() for o in out], "local": [tuple(local(o).shape) for o in out],
            "calls": stats.calls}


def _collectives(rank: int) -> dict[str, object]:
    """Sizes of the all-reduces and reduce-scatters of the observe() calls of a sharded MLP."""
    model = _sharded(MLP())
    mas = _mas(model, None)
    sizes: dict[str, list[int]] = {"all_reduce": [], "reduce_scatter": []}
    all_reduce, reduce_scatter = dist.all_reduce, dist.reduce_scatter_tensor

    def counting_ar(t: Tensor, *args: object, **kwargs: object) -> object:
        sizes["all_reduce"].append(t.numel())
        return all_reduce(t, *args, **kwargs)  # type: ignore[arg-type]

    def counting_rs(out: Tensor, inp: Tensor, *args: object, **kwargs: object) -> object:
        sizes["reduce_scatter"].append(inp.numel())
        return reduce_scatter(out, inp, *args, **kwargs)  # type: ignore[arg-type]

    dist.all_reduce, dist.reduce_scatter_tensor = counting_ar, counting_rs  # type: ignore[assignment]
    try:
        for t in range(1, 4):
            mas.observe(_shard(_batch("mlp", t), rank))
    finally:
        dist.all_reduce, dist.reduce_scatter_tensor = all_reduce, reduce_scatter  # type: ignore[assignment]
    scaled = om.OnlineMAS(_sharded(Scaled()), detector=None, config=om.MASConfig(share=1.0))
    try:
        scaled.observe(_shard(_batch("mlp", 1), rank))
    except ValueError as err:
        sizes["no_rule"] = str(err)  # type: ignore[assignment]
    vmap = om.OnlineMAS(model, detector=None, config=om.MASConfig(share=1.0, method="vmap"))
    try:
        vmap.observe(_shard(_batch("mlp", 1), rank))
    except ValueError as err:
        sizes["method"] = str(err)  # type: ignore[assignment]
    windowed = om.OnlineMAS(model, detector=None, config=om.MASConfig(share=1.0),
                            reducer=om.Reducer(sync_every=2))
    try:
        windowed.observe(_shard(_batch("mlp", 1), rank))
    except ValueError as err:
        sizes["refused"] = str(err)  # type: ignore[assignment]
    return sizes


def _plain_gathers(family: str) -> list[int]:
    """The all-gathers of each of STEPS plain FSDP2 training steps, without OnlineMAS."""
    model = _sharded(_families()[family][0])
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    counts = []
    for t in range(1, STEPS + 1):
        with _gathers() as count:
            out = model(_batch(family, t)[:SPLIT])
            opt.zero_grad()
            F.cross_entropy(out, _labels(out)).backward()
            opt.step()
        counts.append(count[0])
    return counts


def _checkpoint(rank: int, path: str) -> dict[str, object]:
    """Save with 2 ranks; load with 2 ranks into a fresh sharded model: the next step agrees."""
    model, mas, _ = _run("mlp", rank, detector=True)
    om.save_sharded({"model": model.state_dict(), "mas": mas.state_dict()}, path)
    again = _sharded(_families()["mlp"][0])
    state = om.load_sharded(path, again)
    again.load_state_dict(state["model"])
    mas2 = _mas(again, om.Periodic(every=2))
    mas2.load_state_dict(state["mas"])
    before = _snapshot(again, mas2)
    x = _shard(_batch("mlp", STEPS + 1), rank)
    for m, o in ((model, mas), (again, mas2)):
        m(x)
        o.observe(x)
    return {"loaded": before, "next": [_snapshot(model, mas), _snapshot(again, mas2)],
            "penalty": [float(mas.penalty().detach()), float(mas2.penalty().detach())]}


def _accumulated(rank: int | None) -> dict[str, Tensor]:
    """accumulate() outside the steps (kept, reduce-scattered by the consolidation's flush),
    consolidate; accumulate again, then a one-sample batch per rank observed (the kept sums travel
    with its update), consolidate: Omega."""
    model = _families()["mlp"][0]
    if rank is not None:
        model = _sharded(model)
    mas = _mas(model, None)
    x = _batch("mlp", 50)
    mas.accumulate(x if rank is None else _shard(x, rank))
    mas.consolidate()
    x = _batch("mlp", 52)
    mas.accumulate(x if rank is None else _shard(x, rank))
    one = _batch("mlp", 51)[:2]  # one sample per rank
    mas.observe(one if rank is None else one[rank:rank + 1])
    mas.consolidate()
    return {k: full(v) for k, v in mas.omega.items()}


def _from_one_process(path: Path) -> dict[str, object]:
    """A state saved by one process (torch.save) loaded into a sharded model's OnlineMAS."""
    state = torch.load(path, weights_only=True)
    mas = _mas(_sharded(_families()["mlp"][0]), om.Periodic(every=2))
    mas.load_state_dict(state)
    slow = mas.anchor_policy.source() or {}
    return {"kinds": sorted({type(v).__name__ for v in [*mas.omega.values(), *slow.values()]}),
            "omega": {k: full(v) for k, v in mas.omega.items()},
            "anchors": {k: full(v) for k, v in mas.anchors.items()},
            "slow": {k: full(v) for k, v in slow.items()}}


def _nan(rank: int | None, *, doubled: bool = False, overflow: str = ""
         ) -> tuple[dict[str, Tensor], int, list[int]]:
    """Three observed batches; at step 2 rank 1's slice is nan (its forwards still run, on
    zeros, since FSDP's are collectives). The reference sees rank 0's slice alone at step 2.
    ``doubled``: each observe follows a forward and backward (no optimizer step) under
    ``shared_backward``, rank 1 skips its batch and no rank takes the separate pass. Also the
    all-gathers of each step. ``overflow``: an unbounded ReLU MLP (first weights x 1000), and rank
    1's slice is finite but large: ``"sum"``, values near 1e38, whose sum (the input check's one
    reduction) overflows; ``"output"``, values near 1e36, whose sum does not but the model's output
    does (the separate pass finds it after its forward, on one rank only)."""
    family = "mlp"
    model = _families()[family][0]
    if overflow:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
        with torch.no_grad():
            model[0].weight.mul_(1000.0)
    if rank is not None:
        model = _sharded(model)
    mas = _mas(model, None, doubled=doubled)
    gathers = []
    for t in range(1, 4):
        x = _batch(family, 60 + t)
        if rank is None:
            mas.observe(x[:SPLIT] if t == 2 else x)
            continue
        part = _shard(x, rank)
        if t == 2 and rank == 1:
            part = (part.clamp(-3, 3) * (1e38 if overflow == "sum" else 1e36) if overflow
                    else torch.full_like(part, float("nan")))
            assert bool(torch.isfinite(part).all()) == bool(overflow)
        with _gathers() as count:
            if doubled:
                model(part).pow(2).sum().backward()
            mas.observe(part)
        gathers.append(count[0])
    return {k: full(v) for k, v in mas.running_omega.items()}, mas.n_skipped, gathers


def _tensor_parallel(rank: int) -> list[str]:
    """Tensor parallelism (``parallelize_module``, ranks sharing a batch): a clear error from
    ``OnlineMAS``, ``om.importance`` and an FSDP2 model with one TP layer, never a number."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    errors = []
    mesh = init_device_mesh("cpu", (WORLD,))
    torch.manual_seed(0)
    tp = parallelize_module(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), mesh,
                            {"0": ColwiseParallel(), "2": RowwiseParallel()})
    mixed = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    parallelize_module(mixed[0], mesh, ColwiseParallel())
    fully_shard(mixed[2])
    for model, make in ((tp, lambda m: om.OnlineMAS(m, lam=1.0)),
                        (tp, lambda m: om.importance(m, torch.randn(4, 8))),
                        (mixed, lambda m: om.OnlineMAS(m, lam=1.0))):
        try:
            make(model)
        except ValueError as e:
            errors.append(str(e))
        else:
            errors.append("no error")
    return errors


def _worker(rank: int, port: int, out: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        res: dict[str, object] = {"scatter": _scatter(rank), "collectives": _collectives(rank),
                                  "accumulate": _accumulated(rank), "nan": _nan(rank),
                                  "nan_doubled": _nan(rank, doubled=True),
                                  **{f"overflow {k}": _nan(rank, overflow=k) for k in ("sum", "output")}}
        for family in _families():
            model, mas, seen = _run(family, rank)
            res[family] = {**_snapshot(model, mas), **seen}
            model, mas, seen = _run(family, rank, doubled=True)
            res[f"{family} doubled"] = {**_snapshot(model, mas), **seen}
            res[f"{family} plain"] = _plain_gathers(family)
        res["detector"] = _snapshot(*_run("mlp", rank, detector=True)[:2])
        res["checkpoint"] = _checkpoint(rank, str(Path(out) / "ckpt"))
        res["from_one"] = _from_one_process(Path(out) / "single.pt")
        res["tensor_parallel"] = _tensor_parallel(rank)
        torch.save(res, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, object]], Path]:
    out = tmp_path_factory.mktemp("sharded")
    torch.save(_run("mlp", None, detector=True)[1].state_dict(), out / "single.pt")
    ctx = mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 180
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail("the 2-process gloo workers did not finish in 180 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)], out


def _close(a: object, b: object) -> None:
    assert isinstance(a, dict) and isinstance(b, dict) and list(a) == list(b)
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-7)


def _identical(a: object, b: object) -> None:
    assert isinstance(a, dict) and isinstance(b, dict) and list(a) == list(b)
    assert all(torch.equal(a[n], b[n]) for n in a), "differ"


@pytest.fixture(scope="module")
def references() -> dict[str, dict[str, object]]:
    torch.set_num_threads(1)
    out = {family: _snapshot(*_run(family, None)[:2]) for family in _families()}
    for family in _families():
        out[f"{family} doubled"] = _snapshot(*_run(family, None, doubled=True)[:2])
    out["detector"] = _snapshot(*_run("mlp", None, detector=True)[:2])
    return out


@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_importance_omega_and_anchor_equal_the_single_process_run(
    ranks: tuple[list[dict[str, object]], Path], references: dict[str, dict[str, object]], family: str
) -> None:
    ref = references[family]
    for res in ranks[0]:
        got = res[family]
        assert isinstance(got, dict)
        assert got["kinds"] == ["DTensor"]  # running, omega, anchor held as shards
        for key in ("running", "omega", "anchors", "params"):
            _close(got[key], ref[key])
        assert got["events"] == ref["events"] == [(CONSOLIDATE, "manual")]
        assert got["samples"] == ref["samples"] == [float(CONSOLIDATE * ROWS)]
    assert ranks[0][0][family]["local_shapes"] != ranks[0][1][family]["local_shapes"]  # type: ignore[index]


@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_shared_backward_equals_the_single_process_run_and_gathers_each_block_once_per_step(
    ranks: tuple[list[dict[str, object]], Path], references: dict[str, dict[str, object]], family: str
) -> None:
    """MASConfig(shared_backward=True) on FSDP2: the values of one process on the concatenated
    batches, no separate pass (why_not empty on every step), and per step exactly the all-gathers
    of a plain training step (one per block in the forward, one in the backward); today's
    separate pass gathers every block twice more."""
    ref = references[f"{family} doubled"]
    blocks = sum(1 for m in _families()[family][0].modules()
                 if any(True for _ in m.parameters(recurse=False)))
    for res in ranks[0]:
        got, today, plain = res[f"{family} doubled"], res[family], res[f"{family} plain"]
        assert isinstance(got, dict) and isinstance(today, dict)
        assert got["why"] == [""] * STEPS
        for key in ("running", "omega", "anchors", "params"):
            _close(got[key], ref[key])
        assert got["kinds"] == ["DTensor"]
        print(f"{family}: all-gathers per step: plain {plain}, shared_backward {got['gathers']}, "
              f"separate pass {today['gathers']}")
        assert plain == [2 * blocks] * STEPS
        assert got["gathers"] == plain
        assert today["gathers"] == [4 * blocks] * STEPS  # the separate pass: a forward and a backward more


@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_shared_backward_leaves_the_training_gradients_unchanged(
    ranks: tuple[list[dict[str, object]], Path], family: str
) -> None:
    for res in ranks[0]:
        got, today = res[f"{family} doubled"], res[family]
        assert isinstance(got, dict) and isinstance(today, dict)
        assert len(got["grads"]) == len(today["grads"]) == CONSOLIDATE  # the penalty is 0 until then
        for a, b in zip(got["grads"], today["grads"], strict=True):
            _close(a, b)


def test_shared_backward_skips_a_non_finite_rank_without_a_separate_pass(
    ranks: tuple[list[dict[str, object]], Path]
) -> None:
    ref, _, _ = _nan(None)
    for rank, res in enumerate(ranks[0]):
        running, skipped, gathers = res["nan_doubled"]  # type: ignore[misc]
        _close(running, ref)
        assert skipped == rank
        assert gathers == [6, 6, 6]  # the training forward and backward only, on every step


def test_both_ranks_consolidate_at_the_same_step_with_the_slow_anchor_sharded(
    ranks: tuple[list[dict[str, object]], Path], references: dict[str, dict[str, object]]
) -> None:
    ref = references["detector"]
    assert ref["events"] == [(2, "detector"), (4, "detector"), (6, "detector")]
    for res in ranks[0]:
        got = res["detector"]
        assert isinstance(got, dict)
        assert got["events"] == ref["events"]
        for key in ("running", "omega", "anchors", "params"):
            _close(got[key], ref[key])


def test_accumulate_and_a_one_sample_batch_per_rank(ranks: tuple[list[dict[str, object]], Path]) -> None:
    ref = _accumulated(None)
    for res in ranks[0]:
        _close(res["accumulate"], ref)


def test_a_rank_with_a_non_finite_batch_takes_part_and_is_left_out(
    ranks: tuple[list[dict[str, object]], Path]
) -> None:
    ref, _, _ = _nan(None)
    for rank, res in enumerate(ranks[0]):
        running, skipped, gathers = res["nan"]  # type: ignore[misc]
        _close(running, ref)
        assert skipped == rank  # rank 1 counted its one skipped batch
        assert gathers == [6, 6, 6]  # every rank took the separate pass (3 blocks, twice)


@pytest.mark.parametrize("overflow", ["sum", "output"])
def test_a_rank_whose_finite_batch_overflows_is_left_out_without_a_hang(
    ranks: tuple[list[dict[str, object]], Path], overflow: str
) -> None:
    """Both hung before (the other ranks' all-gathers waited for this rank's estimate pass):
    ``sum``, the input check refused the batch and its finite copy alike; ``output``, the pass
    raised after its forward, before its backward."""
    ref, _, _ = _nan(None, overflow=overflow)
    seen = []
    for rank, res in enumerate(ranks[0]):
        running, skipped, gathers = res[f"overflow {overflow}"]  # type: ignore[misc]
        assert skipped == rank  # rank 1 skipped its batch
        _close(running, ref)  # which is left out of the sum
        seen.append(gathers)
    assert seen[0] == seen[1] and len(set(seen[0])) == 1  # every step the same all-gathers


def test_state_per_rank_is_about_half_of_the_single_process_state(
    ranks: tuple[list[dict[str, object]], Path], references: dict[str, dict[str, object]]
) -> None:
    for family in ("mlp", "conv", "detector"):
        single = references[family]["state_bytes"]
        per_rank = [res[family]["state_bytes"] for res in ranks[0]]  # type: ignore[index]
        print(f"{family}: OnlineMAS per-parameter state {single} bytes in one process; "
              f"{per_rank} bytes on the 2 ranks ({[round(b / single, 3) for b in per_rank]})")  # type: ignore[operator]
        assert sum(per_rank) == single  # type: ignore[arg-type]
        assert all(0.4 * single <= b <= 0.6 * single for b in per_rank)  # type: ignore[operator]


def test_a_batch_is_one_small_all_reduce_and_one_reduce_scatter(
    ranks: tuple[list[dict[str, object]], Path]
) -> None:
    n_params = sum(p.numel() for p in MLP().parameters())
    for res in ranks[0]:
        sizes = res["collectives"]
        assert isinstance(sizes, dict)
        assert sizes["all_reduce"] == [3, 3, 3]  # samples, weighted signal, weight
        assert len(sizes["reduce_scatter"]) == 3
        # each rank sends every tensor padded to 2 equal blocks: about the model, never twice it
        assert all(n_params <= n <= n_params + 2 * 16 for n in sizes["reduce_scatter"])


def test_scatter_sums_matches_the_sum_over_ranks(ranks: tuple[list[dict[str, object]], Path]) -> None:
    for res in ranks[0]:
        got = res["scatter"]
        assert isinstance(got, dict)
        for i, (shape, _) in enumerate(SCATTER):
            want = sum(torch.randn(shape, generator=torch.Generator().manual_seed(10 * i + r))
                       for r in range(WORLD))
            torch.testing.assert_close(got["full"][i], want)
        assert got["calls"] == 2  # the flat ones in two buckets of at most 30 elements; hsdp apart
    assert [r["scatter"]["local"] for r in ranks[0]] == [  # type: ignore[index]
        [(4, 3), (3,), (1, 4), (4, 3), (3, 2)], [(3, 3), (2,), (0, 4), (4, 3), (3, 2)]]


def test_a_save_with_two_ranks_loads_with_two(ranks: tuple[list[dict[str, object]], Path]) -> None:
    for res in ranks[0]:
        ck = res["checkpoint"]
        assert isinstance(ck, dict)
        saved, loaded = res["detector"], ck["loaded"]
        for key in ("running", "omega", "anchors", "params"):
            _identical(saved[key], loaded[key])  # type: ignore[index]
        assert loaded["events"] == saved["events"]  # type: ignore[index]
        a, b = ck["next"]
        for key in ("running", "omega", "anchors", "params"):
            _identical(a[key], b[key])
        assert ck["penalty"][0] == ck["penalty"][1]


def test_a_save_with_two_ranks_loads_with_one(ranks: tuple[list[dict[str, object]], Path]) -> None:
    results, out = ranks
    model = _families()["mlp"][0]
    state = om.load_sharded(out / "ckpt", model)
    model.load_state_dict(state["model"])
    mas = _mas(model, om.Periodic(every=2))
    mas.load_state_dict(state["mas"])
    saved = results[0]["detector"]
    assert isinstance(saved, dict)
    for key, got in (("running", mas.running_omega), ("omega", mas.omega), ("anchors", mas.anchors),
                     ("params", dict(model.named_parameters()))):
        assert not any(type(v).__name__ == "DTensor" for v in got.values())
        _identical(saved[key], {k: v.detach() for k, v in got.items()})
    assert [(e.step, e.reason) for e in mas.events] == saved["events"]
    assert mas.step == STEPS


def test_a_single_process_state_loads_sharded(ranks: tuple[list[dict[str, object]], Path]) -> None:
    single = torch.load(ranks[1] / "single.pt", weights_only=True)
    for res in ranks[0]:
        got = res["from_one"]
        assert isinstance(got, dict) and got["kinds"] == ["DTensor"]
        _identical(got["omega"], single["consolidator"]["omega"])
        _identical(got["anchors"], single["consolidator"]["anchor"])
        _identical(got["slow"], single["anchor_policy"]["slow"])


def test_sync_every_torch_func_and_other_methods_are_refused_for_a_sharded_model(
    ranks: tuple[list[dict[str, object]], Path]
) -> None:
    for res in ranks[0]:
        got = res["collectives"]
        assert isinstance(got, dict)
        assert "sync_every=2 keeps whole-model sums" in got["refused"]
        assert "needs a closed-form rule" in got["no_rule"] and "['scale']" in got["no_rule"]
        assert "takes method='exact', got 'vmap'" in got["method"]


def test_bad_arguments() -> None:
    with pytest.raises(FileNotFoundError, match="not a sharded checkpoint"):
        om.load_sharded("/nonexistent/ckpt", MLP())
    with pytest.raises(TypeError, match="state must be a dict"):
        om.save_sharded([1, 2], "/tmp/never")  # type: ignore[arg-type]


def test_tensor_parallel_parameters_are_refused_by_name(ranks: tuple[list[dict[str, object]], Path]) -> None:
    for res in ranks[0]:
        errors = res["tensor_parallel"]
        assert isinstance(errors, list) and len(errors) == 3
        for e in errors:
            assert "tensor parallelism is not supported" in e and "'0.weight'" in e, e
