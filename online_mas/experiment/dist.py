"""``online-mas run`` under ``torchrun``: data-parallel runs, one process per rank.

``torchrun --standalone --nproc-per-node N -m online_mas run ...`` starts N processes with
``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. Every rank then:

- builds the same stream from the same seed and draws the same global batch, keeps its slice of it
  (``tensor_split(world)[rank]``), so the schedule and the hidden ground truth stay aligned and
  every rank runs the same number of steps;
- trains the model wrapped in ``DistributedDataParallel`` (``run.parallel = "ddp"``: a whole
  replica per rank, gradients averaged over ranks), or sharded by FSDP2 (``"fsdp"``:
  ``fully_shard`` on each block of the model, then on the root, so parameters, gradients,
  optimizer state and OnlineMAS's state are split over the ranks); :class:`~online_mas.OnlineMAS`
  reduces its importance and detector signal by itself (all-reduce, or reduce-scatter to the
  shards);
- adds its loss, correct count and batch size into one all-reduce per step, with a stop flag, so
  Ctrl-C (which torchrun forwards to every rank) stops every rank at the same step;
- evaluates its slice of every held-out set; the correct counts are summed over ranks.

Rank 0 alone creates the run directory, writes files (config, metrics, checkpoints, summaries,
plots) and shows progress; it chooses the run directory and reads the config, then broadcasts
both. On ``--resume`` rank 0 reads each checkpoint and broadcasts it, so the other machines need no
shared filesystem. A sharded run's checkpoint is a ``torch.distributed.checkpoint`` directory
(``checkpoint.dcp``) that every rank writes its shards into and reads them from: there the ranks
need a filesystem they all see. Units run one after the other (``run.workers`` is set to 1).

Outside torchrun (``WORLD_SIZE`` unset or 1) nothing here does anything.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from online_mas.distributed import all_reduce_flat, world

__all__ = ["FSDP_LEARNERS", "PARALLEL", "blocks", "broadcast", "init", "is_main", "launched", "ranks",
           "reduce_sums", "shard", "shutdown", "wrap"]

PARALLEL = ("ddp", "fsdp")  # run.parallel: DistributedDataParallel, or FSDP2's fully_shard per block
FSDP_LEARNERS = ("finetune", "online-mas", "mas-oracle")  # learners whose state follows a sharded model

T = TypeVar("T")


def launched() -> bool:
    """True when started by ``torchrun`` (or ``python -m torch.distributed.run``) with >1 process.

    >>> launched()   # doctest: +SKIP
    False
    """
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init() -> bool:
    """Join the process group torchrun describes; returns whether this is a distributed run.

    The runner trains on ``run.device``. With CUDA available the group is
    ``"cpu:gloo,cuda:nccl"`` (gloo for CPU tensors, NCCL for CUDA ones) and each process takes
    ``cuda:LOCAL_RANK``, which ``run.device = "auto"`` or ``"cuda"`` then means.
    """
    if not launched():
        return False
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend="cpu:gloo,cuda:nccl")
        else:
            dist.init_process_group(backend="gloo")
    return True


def shutdown() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def ranks() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group.

    >>> ranks()
    (0, 1)
    """
    rank, size, _ = world()
    return rank, size


def is_main() -> bool:
    """True on rank 0 and in a single process: the one process that writes files.

    >>> is_main()
    True
    """
    return ranks()[0] == 0


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (pickled; the ranks trust each other). A collective.

    >>> broadcast({"a": 1})
    {'a': 1}
    """
    if ranks()[1] == 1:
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(*tensors: Tensor) -> tuple[Tensor, ...]:
    """This rank's slice (along the first dimension) of each tensor; the tensors themselves alone.

    >>> [t.tolist() for t in shard(torch.arange(3))]
    [[0, 1, 2]]
    """
    rank, size = ranks()
    if size == 1:
        return tensors
    return tuple(t.tensor_split(size)[rank] for t in tensors)


def reduce_sums(values: list[float]) -> list[float]:
    """Each value summed over ranks (one all-reduce in float64). A collective.

    >>> reduce_sums([1.0, 2.5])
    [1.0, 2.5]
    """
    if ranks()[1] == 1:
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) \
        if str(dist.get_backend()) == "nccl" else torch.device("cpu")
    (out,) = all_reduce_flat([torch.tensor(values, dtype=torch.float64, device=device)])
    return [float(v) for v in out.tolist()]


def blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks FSDP shards one by one: the model's direct children that hold parameters,
    with containers that have no forward of their own (``nn.ModuleList``, ``nn.ModuleDict``)
    replaced by their entries.

    >>> [type(b).__name__ for b in blocks(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))]
    ['Linear', 'Linear']
    """
    out: list[nn.Module] = []
    todo = list(model.children())
    while todo:
        m = todo.pop(0)
        if isinstance(m, nn.ModuleList | nn.ModuleDict):
            todo = list(m.children()) + todo
        elif any(True for _ in m.parameters()):
            out.append(m)
    return out


def wrap(model: nn.Module, parallel: str = "ddp") -> nn.Module:
    """``model`` for a distributed run, else ``model`` itself.

    ``"ddp"``: in ``DistributedDataParallel``, which broadcasts rank 0's parameters and buffers,
    then averages gradients in ``backward()``. ``"fsdp"``: sharded in place by FSDP2
    (``fully_shard`` on each of :func:`blocks`, then on the root) over all ranks; every rank
    builds the same model from the same seed, each keeps its shard of every parameter, and
    the model itself is returned (build the optimizer after this).
    """
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {PARALLEL}, got {parallel!r}")
    if ranks()[1] == 1:
        return model
    if parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        mesh = init_device_mesh(device.type, (ranks()[1],))
        for block in blocks(model):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    if torch.cuda.is_available() and any(p.is_cuda for p in model.parameters()):
        return DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
    return DistributedDataParallel(model)
