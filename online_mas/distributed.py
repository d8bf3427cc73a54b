"""Reductions across ranks with ``torch.distributed``, for data-parallel online MAS.

Under DistributedDataParallel every rank holds the same parameters and sees its own shard of each
global batch. MAS importance is a per-sample mean (Aljundi et al., ECCV 2018, arXiv:1711.09601), so
the importance of the global batch is ``sum over ranks of the per-rank sums / sum over ranks of the
per-rank counts``: each rank contributes its sums and its sample count, one all-reduce adds them,
and every rank divides the same totals. :class:`~online_mas.OnlineMAS` does this on its own when a
process group is initialised (or passed as ``process_group=``); these functions are the building
blocks, also for a runner that reduces its own metrics.

Everything goes through ``torch.distributed`` (``dist.all_reduce`` with ``SUM``); nothing here opens
a socket. A list of tensors is sent as one flat buffer, so a model with hundreds of parameter
tensors costs one all-reduce, not hundreds.

Devices and backends: the buffer lives on the tensors' device. NCCL reduces CUDA tensors in place
and gloo reduces CPU tensors (and CUDA tensors for ``all_reduce``), so the usual setups (CUDA model
with ``backend="nccl"``, CPU model with ``backend="gloo"``) need no copy and no code change. Only
where the backend cannot take the device is the buffer staged: CPU tensors on a pure NCCL group go
through the current CUDA device, tensors on other devices (``mps``, ...) through the CPU on gloo.

Launching: ``torchrun --nproc-per-node N script.py`` sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
and ``MASTER_PORT``; the script calls ``dist.init_process_group()`` before building ``OnlineMAS``.
Across machines the same command runs on each node with ``--nnodes M --node-rank i
--rdzv-endpoint HOST:PORT`` (or ``--rdzv-backend c10d``); nothing in online-mas changes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "CommStats", "all_gather_rows", "all_reduce_flat", "is_main_process", "reduce_scatter_rows",
    "reduce_weighted_mean", "world",
]


@dataclass
class CommStats:
    """Running totals of the all-reduces made through :func:`all_reduce_flat` with ``stats=``.

    Divide by the number of training steps for the cost per step. The time is measured on the
    host: with NCCL the reduction runs asynchronously on the GPU stream, so synchronise (or use
    ``scripts/bench_distributed.py``) for exact device times.
    """

    calls: int = 0  # all-reduce calls (one per flat buffer)
    elements: int = 0  # elements sent, summed over calls
    nbytes: int = 0  # bytes of the buffers, summed over calls
    seconds: float = 0.0  # wall time spent flattening, reducing and unflattening

    def to_dict(self) -> dict[str, float]:
        return {"calls": self.calls, "elements": self.elements, "nbytes": self.nbytes,
                "seconds": self.seconds}


def world(process_group: dist.ProcessGroup | None = None) -> tuple[int, int, dist.ProcessGroup | None]:
    """This process's rank, the world size and the group to reduce over.

    Parameters
    ----------
    process_group
        An explicit group (from ``dist.new_group``); ``None`` means the default group if
        ``torch.distributed`` is initialised, else a single process.

    Returns
    -------
    tuple
        ``(rank, world_size, group)``; ``(0, 1, None)`` when there is nothing to reduce over.
        ``group`` is ``process_group`` as given (``None`` stands for the default group).

    Examples
    --------
    >>> world()   # torch.distributed not initialised
    (0, 1, None)
    """
    if process_group is None:
        if not (dist.is_available() and dist.is_initialized()):
            return 0, 1, None
        return dist.get_rank(), dist.get_world_size(), None
    if dist.is_available() and process_group is dist.GroupMember.NON_GROUP_MEMBER:
        raise ValueError("this process is not a member of the process_group it was given")
    if not (dist.is_available() and isinstance(process_group, dist.ProcessGroup)):
        raise TypeError(
            f"process_group must be a torch.distributed.ProcessGroup or None, got {type(process_group)!r}"
        )
    rank = dist.get_rank(process_group)
    if rank < 0:
        raise ValueError("this process is not a member of the process_group it was given")
    return rank, dist.get_world_size(process_group), process_group


def is_main_process(process_group: dist.ProcessGroup | None = None) -> bool:
    """True on rank 0 (of ``process_group`` or the default group) and in a single process.

    The one process that should write checkpoints, logs and plots.

    Examples
    --------
    >>> is_main_process()
    True
    """
    return world(process_group)[0] == 0


def all_reduce_flat(
    tensors: Sequence[Tensor],
    group: dist.ProcessGroup | None = None,
    *,
    stats: CommStats | None = None,
) -> list[Tensor]:
    """Sum each tensor over the ranks of ``group`` with one all-reduce of a flat buffer.

    The tensors are copied into one contiguous buffer, the buffer is all-reduced (``SUM``) once, and
    the results come back as views of it, one per input, with the input's shape and device. The
    inputs are not modified. Without an initialised process group the sums are over one process:
    copies of the inputs.

    Parameters
    ----------
    tensors
        Tensors of one dtype (any shapes). They are sent from the first tensor's device.
    group
        The process group; ``None`` for the default one.
    stats
        If given, the call, its size and its wall time are added to it.

    Returns
    -------
    list of Tensor
        The sums over ranks, in the order of ``tensors``. Every rank receives the same values.

    Examples
    --------
    >>> import torch
    >>> a, b = torch.tensor([1.0, 2.0]), torch.tensor([[3.0], [4.0]])
    >>> all_reduce_flat([a, b])   # a single process: the sums are the inputs
    [tensor([1., 2.]), tensor([[3.],
            [4.]])]
    """
    if not tensors:
        return []
    bad = [type(t).__name__ for t in tensors if not isinstance(t, Tensor)]
    if bad:
        raise TypeError(f"tensors must be torch.Tensor objects, got {bad}")
    dtypes = sorted({str(t.dtype) for t in tensors})
    if len(dtypes) > 1:
        raise TypeError(f"all_reduce_flat needs tensors of one dtype, got {dtypes}")
    start = time.perf_counter()
    device = tensors[0].device
    flat = torch.cat([t.detach().reshape(-1).to(device) for t in tensors])
    world_size = world(group)[1]
    if world_size > 1:
        staging = _staging_device(device, str(dist.get_backend(group)))
        if staging == device:
            dist.all_reduce(flat, group=group)
        else:
            staged = flat.to(staging)
            dist.all_reduce(staged, group=group)
            flat.copy_(staged)
    out = [part.view(t.shape).to(t.device)
           for part, t in zip(flat.split([t.numel() for t in tensors]), tensors, strict=True)]
    if stats is not None:
        stats.calls += int(world_size > 1)
        stats.elements += flat.numel() if world_size > 1 else 0
        stats.nbytes += flat.numel() * flat.element_size() if world_size > 1 else 0
        stats.seconds += time.perf_counter() - start
    return out


def all_gather_rows(
    t: Tensor, group: dist.ProcessGroup | None = None, *, stats: CommStats | None = None
) -> Tensor:
    """Every rank's ``t`` (same shape on every rank) stacked along the first dimension, rank 0 first.

    Examples
    --------
    >>> import torch
    >>> all_gather_rows(torch.tensor([[1.0, 2.0]]))   # a single process: the input
    tensor([[1., 2.]])
    """
    start = time.perf_counter()
    world_size = world(group)[1]
    if world_size == 1:
        return t.clone()
    staging = _staging_device(t.device, str(dist.get_backend(group)))
    src = t.contiguous().to(staging)
    parts = [torch.empty_like(src) for _ in range(world_size)]
    dist.all_gather(parts, src, group=group)
    out = torch.cat(parts).to(t.device)
    if stats is not None:
        stats.calls += 1
        stats.elements += out.numel()
        stats.nbytes += out.numel() * out.element_size()
        stats.seconds += time.perf_counter() - start
    return out


def reduce_scatter_rows(
    t: Tensor, group: dist.ProcessGroup | None = None, *, stats: CommStats | None = None
) -> Tensor:
    """Row ``r`` of ``t`` (shape ``(world_size, S)``) summed over the ranks, on rank ``r``.

    One ``reduce_scatter_tensor``: every rank sends ``S * (world_size - 1)`` numbers and keeps
    ``S``, where an all-reduce of the whole buffer would leave every rank with all of it.

    Examples
    --------
    >>> import torch
    >>> reduce_scatter_rows(torch.tensor([[1.0, 2.0]]))   # a single process: its one row
    tensor([1., 2.])
    """
    start = time.perf_counter()
    world_size = world(group)[1]
    if t.dim() != 2 or t.shape[0] != world_size:
        raise ValueError(f"t must have shape (world_size={world_size}, S), got {tuple(t.shape)}")
    if world_size == 1:
        return t[0].clone()
    staging = _staging_device(t.device, str(dist.get_backend(group)))
    src = t.contiguous().to(staging)
    out = src.new_empty(src.shape[1])
    dist.reduce_scatter_tensor(out, src.reshape(-1), group=group)
    if stats is not None:
        stats.calls += 1
        stats.elements += src.numel()
        stats.nbytes += src.numel() * src.element_size()
        stats.seconds += time.perf_counter() - start
    return out.to(t.device)


def reduce_weighted_mean(
    values: Mapping[str, Tensor],
    n: float,
    group: dist.ProcessGroup | None = None,
    *,
    stats: CommStats | None = None,
) -> tuple[dict[str, Tensor], float]:
    """Mean over ranks of per-rank means, weighted by each rank's sample count.

    ``mean = sum_r n_r * values_r / sum_r n_r``: the mean over the global batch when each rank
    passes the mean over its own samples. One all-reduce carries every value and the count.

    Parameters
    ----------
    values
        Per-rank means by name, of one floating dtype.
    n
        This rank's sample count (>= 0; a rank with no samples passes 0 and still takes part).
    group
        The process group; ``None`` for the default one.
    stats
        Optional :class:`CommStats` to add the call to.

    Returns
    -------
    tuple
        ``(means, total_n)``. Where ``total_n`` is 0 the means are zeros.

    Examples
    --------
    >>> import torch
    >>> reduce_weighted_mean({"acc": torch.tensor(0.75)}, 8)   # a single process
    ({'acc': tensor(0.7500)}, 8.0)
    """
    if isinstance(n, bool) or not isinstance(n, int | float) or not n >= 0:
        raise ValueError(f"n must be a number >= 0 (this rank's samples), got {n!r}")
    names = list(values)
    if not names:
        raise ValueError("values must hold at least one tensor")
    first = values[names[0]]
    weight = torch.tensor([float(n)], dtype=first.dtype, device=first.device)
    *sums, total = all_reduce_flat([values[k] * float(n) for k in names] + [weight], group,
                                   stats=stats)
    total_n = float(total)
    means = {k: s / total_n if total_n > 0 else torch.zeros_like(s)
             for k, s in zip(names, sums, strict=True)}
    return means, total_n


def _staging_device(device: torch.device, backend: str) -> torch.device:
    """Where a buffer on ``device`` must be for ``backend`` to all-reduce it.

    >>> cpu = torch.device("cpu")
    >>> _staging_device(cpu, "gloo"), _staging_device(cpu, "cpu:gloo,cuda:nccl")
    (device(type='cpu'), device(type='cpu'))
    >>> _staging_device(torch.device("mps"), "gloo")
    device(type='cpu')
    """
    backend = backend.lower()
    if ":" in backend:  # one backend per device type, e.g. "cpu:gloo,cuda:nccl"
        types = {part.split(":")[0].strip() for part in backend.split(",")}
        if device.type in types:
            return device
        return torch.device("cpu") if "cpu" in types else device
    if backend == "nccl" and device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    if backend == "gloo" and device.type not in ("cpu", "cuda"):
        return torch.device("cpu")
    return device
