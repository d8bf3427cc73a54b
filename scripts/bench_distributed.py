"""What online MAS's all-reduce costs per step, on 2 processes with gloo on CPU.

Run from the repository root::

    python scripts/bench_distributed.py                      # 2 ranks, both models
    python scripts/bench_distributed.py --steps 400 --reps 400 --out runs/bench_distributed

For each model (an MLP 784-256-256-10 and the digits MLP 64-100-100-10) the ranks measure:

1. one ``all_reduce_flat`` of a float32 buffer the size of the model's importance plus the three
   scalars (count, signal sum, signal weight): what a reducing update sends; and of the three
   scalars alone: what is sent between reductions with ``sync_every > 1``. Median over ``reps``
   calls, each after a barrier so that the ranks start together.
2. ``OnlineMAS.observe`` inside a DDP training loop (default Page-Hinkley detector, a batch of
   ``batch`` samples per rank) with ``sync_every`` = 1, 4 and 16, and the same loop in one process
   without torch.distributed: median ms per ``observe`` (the ranks start it together after a
   barrier) and the all-reduce time per step from ``OnlineMAS.comm_stats`` (which still includes
   waiting for the slower rank's importance computation), next to the time per
   step the barrier-timed medians of 1. predict (``isolated``: one full buffer per window of
   ``sync_every`` updates, the scalars in between).

3. ``--sharded``: what an importance update of a model sharded by FSDP2 sends, against DDP's, on
   an MLP 784-256-256-10 (269k parameters) and an MLP 1024-2048-2048-2048-10 (10.5M): DDP's
   one ``all_reduce_flat`` of the whole-model sums and the three scalars, against the sharded
   reduction (:func:`online_mas.sharded.scatter_sums`): the three scalars all-reduced, then one
   ``reduce_scatter_tensor`` that leaves each rank the sums of its shards. Interleaved rounds
   (the order rotates), each after a barrier, with the bare gloo ``all_reduce`` and
   ``reduce_scatter_tensor`` of one model-sized buffer for reference, in one process per rank;
   median ms per update, and the bytes of OnlineMAS's per-parameter state each rank then holds.
   Then ``observe`` of a training loop (every step an update) under DDP and under FSDP2: median
   ms per update. Last, whole FSDP2 training steps (forward, backward, optimizer step, and for
   OnlineMAS ``observe`` with an importance update on every step) in interleaved rounds: without
   OnlineMAS, with today's separate importance pass, and with ``MASConfig(shared_backward=True)``
   (the importance rows in the user's forward and backward); median ms per step and FSDP2's
   parameter all-gathers per step (``dist.all_gather_single`` counted).

Every process uses one thread. The tables are printed and written with the raw numbers to
``<out>/bench_distributed.json`` (``bench_sharded.json`` and ``results/bench_sharded.md`` for
``--sharded``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import socket
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import online_mas as om
from online_mas.distributed import CommStats, all_reduce_flat
from online_mas.sharded import local_nbytes, scatter_sums


@dataclass
class BenchConfig:
    world: int = 2  # processes
    steps: int = 200  # timed training steps per setting (after 10 warm-up steps)
    reps: int = 200  # timed all-reduces per buffer size
    batch: int = 32  # samples per rank per step
    sync_every: tuple[int, ...] = (1, 4, 16)  # MASConfig.sync_every settings
    models: dict[str, tuple[int, ...]] = field(default_factory=lambda: {
        "mlp 784-256-256-10": (784, 256, 256, 10),
        "digits mlp 64-100-100-10": (64, 100, 100, 10),
    })
    out: str = "runs/bench_distributed"  # run directory for the JSON
    sharded: bool = False  # compare the sharded (FSDP2) reduction with DDP's instead
    sharded_models: dict[str, tuple[int, ...]] = field(default_factory=lambda: {
        "mlp 784-256-256-10": (784, 256, 256, 10),
        "mlp 1024-2048-2048-2048-10": (1024, 2048, 2048, 2048, 10),
    })
    rounds: int = 30  # interleaved rounds of the two reductions (sharded comparison)
    observe_steps: int = 10  # timed observe() calls per loop (sharded comparison, after 2 warm-up)


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def time_all_reduce(numel: int, reps: int, bar: tqdm | None) -> float:
    """Median ms of one all_reduce_flat of a float32 buffer of ``numel`` elements."""
    buf = [torch.randn(numel)]
    times = []
    for i in range(reps + 5):
        dist.barrier()
        t0 = time.perf_counter()
        all_reduce_flat(buf)
        if i >= 5:
            times.append((time.perf_counter() - t0) * 1e3)
        if bar is not None:
            bar.update()
    return statistics.median(times)


def time_steps(sizes: tuple[int, ...], sync_every: int | None, cfg: BenchConfig, rank: int,
               bar: tqdm | None) -> dict[str, float]:
    """A training loop with OnlineMAS; ``sync_every=None``: one process, no torch.distributed."""
    torch.manual_seed(0)
    inner = mlp(sizes)
    model = inner if sync_every is None else nn.parallel.DistributedDataParallel(inner)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mas = om.OnlineMAS(model, lam=1.0, reducer=om.Reducer(sync_every=sync_every or 1))
    g = torch.Generator().manual_seed(rank)
    observe_ms = []
    for step in range(cfg.steps + 10):
        x = torch.randn(cfg.batch, sizes[0], generator=g)
        y = torch.randint(0, sizes[-1], (cfg.batch,), generator=g)
        loss = F.cross_entropy(model(x), y) + mas.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 10:
            mas.comm_stats = CommStats()
        if sync_every is not None:
            dist.barrier()  # start observe together: time the reduction, not the skew of training
        t0 = time.perf_counter()
        mas.observe(x)
        if step >= 10:
            observe_ms.append((time.perf_counter() - t0) * 1e3)
        if bar is not None:
            bar.update()
    s = mas.comm_stats
    return {
        "observe_ms": statistics.median(observe_ms),
        "comm_ms_per_step": s.seconds * 1e3 / cfg.steps,
        "calls_per_step": s.calls / cfg.steps,
        "kb_per_step": s.nbytes / 1024 / cfg.steps,
        "consolidations": len(mas.events),
    }


def worker(rank: int, cfg: BenchConfig, port: int) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=cfg.world, timeout=timedelta(seconds=120))
    total = len(cfg.models) * (2 * (cfg.reps + 5) + len(cfg.sync_every) * (cfg.steps + 10))
    bar = tqdm(total=total, desc="bench", unit="it") if rank == 0 else None
    results: list[dict[str, Any]] = []
    try:
        for name, sizes in cfg.models.items():
            numel = sum(p.numel() for p in mlp(sizes).parameters())
            row: dict[str, Any] = {
                "model": name, "params": numel,
                "all_reduce_full_ms": time_all_reduce(numel + 3, cfg.reps, bar),
                "all_reduce_scalars_ms": time_all_reduce(3, cfg.reps, bar),
            }
            row["steps"] = {k: time_steps(sizes, k, cfg, rank, bar) for k in cfg.sync_every}
            results.append(row)
    finally:
        if bar is not None:
            bar.close()
        dist.destroy_process_group()
    if rank == 0:  # one writer
        for row in results:
            row["steps"]["single process"] = time_steps(cfg.models[row["model"]], None, cfg, 0, None)
        report(cfg, results)


def fsdp(model: nn.Module) -> nn.Module:
    """FSDP2 on every layer with parameters, then on the root (as ``run.parallel = "fsdp"``)."""
    from torch.distributed.fsdp import fully_shard

    for m in model.children():
        if any(True for _ in m.parameters()):
            fully_shard(m)
    fully_shard(model)
    return model


def time_reductions(sizes: tuple[int, ...], cfg: BenchConfig, bar: tqdm | None) -> dict[str, Any]:
    """DDP's all-reduce of an update against the sharded reduction, in interleaved rounds."""
    torch.manual_seed(0)
    params = list(fsdp(mlp(sizes)).parameters())
    sums = [torch.rand(p.shape) for p in params]  # this rank's whole-model sums of one batch
    scalars = torch.tensor([32.0, 1.0, 32.0])
    numel = sum(p.numel() for p in params)
    raw = torch.rand(cfg.world * -(-numel // cfg.world))  # one buffer of the model's size
    raw_out = raw.new_empty(raw.numel() // cfg.world)
    times: dict[str, list[float]] = {"ddp": [], "sharded": [], "raw_all_reduce": [], "raw_reduce_scatter": []}
    kinds = list(times)
    for i in range(cfg.rounds + 2):
        for kind in kinds[i % len(kinds):] + kinds[:i % len(kinds)]:  # the order rotates
            dist.barrier()
            t0 = time.perf_counter()
            if kind == "ddp":
                all_reduce_flat([*sums, scalars])
            elif kind == "raw_all_reduce":
                dist.all_reduce(raw)
            elif kind == "raw_reduce_scatter":
                dist.reduce_scatter_tensor(raw_out, raw)
            else:
                all_reduce_flat([scalars])
                shards = scatter_sums(sums, params)  # type: ignore[arg-type]
            if i >= 2:
                times[kind].append((time.perf_counter() - t0) * 1e3)
        if bar is not None:
            bar.update()
    return {"params": numel, "ddp_ms": statistics.median(times["ddp"]),
            "sharded_ms": statistics.median(times["sharded"]),
            "raw_all_reduce_ms": statistics.median(times["raw_all_reduce"]),
            "raw_reduce_scatter_ms": statistics.median(times["raw_reduce_scatter"]),
            "ddp_result_bytes": 4 * (numel + 3), "sharded_result_bytes": local_nbytes(shards)}


def time_observe(sizes: tuple[int, ...], parallel: str, cfg: BenchConfig, rank: int,
                 bar: tqdm | None) -> dict[str, float]:
    """Median ms of ``observe`` (an importance update on every step) and the per-rank bytes of
    OnlineMAS's per-parameter state, under DDP or FSDP2."""
    torch.manual_seed(0)
    model = mlp(sizes)
    model = fsdp(model) if parallel == "fsdp" else nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mas = om.OnlineMAS(model, lam=1.0, config=om.MASConfig(share=1.0), detector=om.Periodic(every=4))
    g = torch.Generator().manual_seed(rank)
    times = []
    for step in range(cfg.observe_steps + 2):
        x = torch.randn(cfg.batch, sizes[0], generator=g)
        y = torch.randint(0, sizes[-1], (cfg.batch,), generator=g)
        loss = F.cross_entropy(model(x), y) + mas.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        dist.barrier()
        t0 = time.perf_counter()
        mas.observe(x)
        if step >= 2:
            times.append((time.perf_counter() - t0) * 1e3)
        if bar is not None:
            bar.update()
    state = mas.state_dict()
    per_param = [state["running"], state["consolidator"], state["anchor_policy"]]
    return {"observe_ms": statistics.median(times), "state_bytes": local_nbytes(per_param)}


STEP_KINDS = ("no OnlineMAS", "separate pass", "shared_backward")


def time_fsdp_steps(sizes: tuple[int, ...], cfg: BenchConfig, rank: int, bar: tqdm | None) -> dict[str, Any]:
    """Whole FSDP2 training steps of the three kinds of STEP_KINDS, one of each per round (the
    order rotates, a barrier before each): median ms per step and all-gathers per step."""
    variants = {}
    for kind in STEP_KINDS:
        torch.manual_seed(0)
        model = fsdp(mlp(sizes))
        config = om.MASConfig(share=1.0, shared_backward=kind == "shared_backward")
        mas = None if kind == "no OnlineMAS" else om.OnlineMAS(model, lam=1.0, config=config,
                                                                detector=om.Periodic(every=4))
        variants[kind] = (model, torch.optim.SGD(model.parameters(), lr=0.01), mas)
    g = torch.Generator().manual_seed(rank)
    times: dict[str, list[float]] = {k: [] for k in STEP_KINDS}
    gathers: dict[str, list[int]] = {k: [] for k in STEP_KINDS}
    why: dict[str, str] = {}
    count = [0]
    real = dist.all_gather_single

    def counting(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return real(*args, **kwargs)

    dist.all_gather_single = counting  # type: ignore[assignment]
    try:
        for i in range(cfg.observe_steps + 2):
            x = torch.randn(cfg.batch, sizes[0], generator=g)
            y = torch.randint(0, sizes[-1], (cfg.batch,), generator=g)
            for kind in STEP_KINDS[i % 3:] + STEP_KINDS[:i % 3]:
                model, opt, mas = variants[kind]
                dist.barrier()
                count[0] = 0
                t0 = time.perf_counter()
                loss = F.cross_entropy(model(x), y)
                if mas is not None:
                    loss = loss + mas.penalty()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if mas is not None:
                    mas.observe(x)
                if i >= 2:
                    times[kind].append((time.perf_counter() - t0) * 1e3)
                    gathers[kind].append(count[0])
                if mas is not None:
                    why[kind] = str(getattr(mas._seen.shared, "why_not", ""))
            if bar is not None:
                bar.update()
    finally:
        dist.all_gather_single = real
    return {kind: {"step_ms": statistics.median(times[kind]),
                   "gathers_per_step": statistics.median(gathers[kind]), "why_not": why.get(kind, "")}
            for kind in STEP_KINDS}


def sharded_worker(rank: int, cfg: BenchConfig, port: int) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=cfg.world, timeout=timedelta(seconds=300))
    total = len(cfg.sharded_models) * (cfg.rounds + 2 + 3 * (cfg.observe_steps + 2))
    bar = tqdm(total=total, desc="bench sharded", unit="it") if rank == 0 else None
    results: list[dict[str, Any]] = []
    try:
        for name, sizes in cfg.sharded_models.items():
            row = {"model": name, **time_reductions(sizes, cfg, bar)}
            row["observe"] = {k: time_observe(sizes, k, cfg, rank, bar) for k in ("ddp", "fsdp")}
            row["steps"] = time_fsdp_steps(sizes, cfg, rank, bar)
            results.append(row)
    finally:
        if bar is not None:
            bar.close()
        dist.destroy_process_group()
    if rank == 0:
        report_sharded(cfg, results)


def report_sharded(cfg: BenchConfig, results: list[dict[str, Any]]) -> None:
    head = (f"gloo, {cfg.world} processes x 1 thread, CPU; batch {cfg.batch}/rank; median of {cfg.rounds} "
            f"interleaved rounds (reductions) and {cfg.observe_steps} observe() calls")
    lines = [head, "",
             "| model | params | DDP all-reduce ms | sharded (scalars + reduce-scatter) ms | ratio | "
             "gloo all_reduce alone ms | gloo reduce_scatter alone ms | sums kept per rank, DDP | sharded |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['ddp_ms']:.2f} | {r['sharded_ms']:.2f} | "
                     f"{r['sharded_ms'] / r['ddp_ms']:.2f} | {r['raw_all_reduce_ms']:.2f} | "
                     f"{r['raw_reduce_scatter_ms']:.2f} | {r['ddp_result_bytes'] / 2**20:.2f} MiB | "
                     f"{r['sharded_result_bytes'] / 2**20:.2f} MiB |")
    lines += ["", "| model | observe ms, DDP | observe ms, FSDP2 | OnlineMAS state per rank, DDP | FSDP2 |",
              "|---|---|---|---|---|"]
    for r in results:
        d, f = r["observe"]["ddp"], r["observe"]["fsdp"]
        lines.append(f"| {r['model']} | {d['observe_ms']:.2f} | {f['observe_ms']:.2f} | "
                     f"{d['state_bytes'] / 2**20:.2f} MiB | {f['state_bytes'] / 2**20:.2f} MiB |")
    lines += ["", "Whole FSDP2 training steps (forward, backward, optimizer step, observe with an "
                  f"importance update on every step), median of {cfg.observe_steps} interleaved rounds; "
                  "all-gathers: FSDP2's parameter all-gathers per step", "",
              "| model | ms/step, no OnlineMAS | separate pass | shared_backward | ratio shared_backward / "
              "separate | all-gathers/step, no OnlineMAS | separate pass | shared_backward |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        st = r["steps"]
        p, s_, d = (st[k] for k in STEP_KINDS)
        lines.append(f"| {r['model']} | {p['step_ms']:.1f} | {s_['step_ms']:.1f} | {d['step_ms']:.1f} | "
                     f"{d['step_ms'] / s_['step_ms']:.2f} | {p['gathers_per_step']:g} | "
                     f"{s_['gathers_per_step']:g} | {d['gathers_per_step']:g} |")
        if d["why_not"]:
            lines.append(f"\nshared_backward fell back on {r['model']}: {d['why_not']}")
    table = "\n".join(lines)
    print(table)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count()}
    (out / "bench_sharded.json").write_text(json.dumps({"config": asdict(cfg), "meta": meta,
                                                        "results": results, "table": table}, indent=2))
    md = Path(__file__).resolve().parent.parent / "results" / "bench_sharded.md"
    md.write_text("# Sharded (FSDP2) importance reduction against DDP's all-reduce; shared_backward\n\n"
                  "Regenerate: `python scripts/bench_distributed.py --sharded`\n\n" + table + "\n")
    print(f"\nwrote {out / 'bench_sharded.json'} and {md}")


def report(cfg: BenchConfig, results: list[dict[str, Any]]) -> None:
    lines = [
        f"gloo, {cfg.world} processes x 1 thread, CPU; batch {cfg.batch}/rank; median of {cfg.reps} "
        f"all-reduces, {cfg.steps} steps",
        "",
        f"{'model':<26}{'params':>9}{'all-reduce full':>17}{'scalars only':>14}",
    ]
    for r in results:
        lines.append(f"{r['model']:<26}{r['params']:>9}{r['all_reduce_full_ms']:>14.3f} ms"
                     f"{r['all_reduce_scalars_ms']:>11.3f} ms")
    lines += ["", f"{'model':<26}{'sync_every':>16}{'observe ms':>12}{'all-reduce ms/step':>20}"
                  f"{'isolated':>10}{'calls/step':>12}{'KB/step':>10}"]
    for r in results:
        full, scalars = r["all_reduce_full_ms"], r["all_reduce_scalars_ms"]
        for k, s in r["steps"].items():
            # from the barrier-timed medians: one full buffer per window, the scalars in between
            s["isolated_ms_per_step"] = (full + (k - 1) * scalars) / k if isinstance(k, int) else 0.0
            lines.append(f"{r['model']:<26}{k!s:>16}{s['observe_ms']:>12.3f}{s['comm_ms_per_step']:>20.3f}"
                         f"{s['isolated_ms_per_step']:>10.3f}{s['calls_per_step']:>12.2f}"
                         f"{s['kb_per_step']:>10.1f}")
    table = "\n".join(lines)
    print(table)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count()}
    payload = {"config": asdict(cfg), "meta": meta, "results": results, "table": table}
    (out / "bench_distributed.json").write_text(json.dumps(payload, indent=2, default=str))
    print(f"\nwrote {out / 'bench_distributed.json'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = BenchConfig()
    p.add_argument("--world", type=int, default=d.world)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--reps", type=int, default=d.reps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--sync-every", type=int, nargs="+", default=list(d.sync_every))
    p.add_argument("--out", default=d.out)
    p.add_argument("--sharded", action="store_true", help="the FSDP2 reduction against DDP's")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--observe-steps", type=int, default=d.observe_steps)
    a = p.parse_args()
    cfg = BenchConfig(world=a.world, steps=a.steps, reps=a.reps, batch=a.batch,
                      sync_every=tuple(a.sync_every), out=a.out, sharded=a.sharded, rounds=a.rounds,
                      observe_steps=a.observe_steps)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    mp.start_processes(sharded_worker if cfg.sharded else worker, args=(cfg, port), nprocs=cfg.world,
                       join=True, start_method="spawn")


if __name__ == "__main__":
    main()
