"""Online MAS on sharded models: parameters that are DTensors (FSDP2's ``fully_shard``).

Under FSDP2 every parameter is a :class:`~torch.distributed.tensor.DTensor` sharded along dim 0
over a device mesh; each block is unsharded for its forward and its backward only. OnlineMAS keeps
its per-parameter state (running importance, Omega, theta*, the slow anchor) as DTensors with the
parameter's mesh and placements, so each rank holds the shard of the state that matches its shard
of the parameters: memory per rank about ``state / N``.

The importance of a batch is the sum over the data-parallel ranks of per-rank sums (Aljundi et al.,
ECCV 2018, arXiv:1711.09601: a per-sample mean). Each rank's sums are formed by the estimator's
hooks during a pass through the sharded model, while FSDP has each layer unsharded; they are then
**reduce-scattered** (:func:`scatter_sums`): rank ``r`` receives only the rows of its shard, summed
over the ranks, in one ``reduce_scatter_tensor`` per bucket of tensors, instead of an all-reduce
that leaves the whole sum on every rank. The penalty, its gradient form and the proximal step run
on the local shards (:func:`local_lists`, :func:`local_grads`).

Every mesh dimension is taken as data-parallel (FSDP2 on a 1-D mesh, HSDP on a 2-D one); tensor
parallelism, whose ranks see the same batch, is not supported. The estimate takes ``method="exact"``
with a closed-form rule for every parameter (``torch.func``'s ``functional_call`` would swap out
the parameters FSDP manages), in one pass per batch, since each forward and backward of a
sharded model is a collective that every rank must run as often.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from online_mas.distributed import CommStats, reduce_scatter_rows
from online_mas.estimators.common import finite

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

__all__ = [
    "BUCKET",
    "any_sharded",
    "finite_copy",
    "float_zeros",
    "full",
    "global_stats",
    "is_sharded",
    "local",
    "local_grads",
    "local_lists",
    "local_nbytes",
    "place",
    "scatter_sums",
    "whole_value",
]

BUCKET = 1 << 24  # elements of full-size sums formed and reduce-scattered at once (64 MiB in float32)


def is_sharded(t: object) -> bool:
    """Whether ``t`` is a DTensor (``torch.distributed.tensor`` is not imported until one exists:
    importing it costs more than a second).

    >>> is_sharded(torch.zeros(2))
    False
    """
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def any_sharded(tensors: Sequence[Tensor]) -> bool:
    """Whether any of ``tensors`` is a DTensor (the model is sharded); one dictionary look-up
    while ``torch.distributed.tensor`` is not imported."""
    module = sys.modules.get("torch.distributed.tensor")
    if module is None:
        return False
    cls = module.DTensor
    return any(isinstance(t, cls) for t in tensors)


def check_data_parallel(model: nn.Module) -> None:
    """Raise where a DTensor parameter is not sharded by FSDP2 for data parallelism: one outside
    every ``fully_shard``-ed module, or with more than one ``Shard`` placement (tensor
    parallelism: its ranks see the same batch, each holding a slice of the layer, so neither the
    per-sample products of the rules nor the sum over ranks would be the importance).

    >>> check_data_parallel(nn.Linear(2, 2))  # plain parameters: nothing to check
    """
    module = sys.modules.get("torch.distributed.tensor")
    if module is None or not any(isinstance(p, module.DTensor) for p in model.parameters()):
        return
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import Replicate, Shard

    managed: set[int] = set()
    for m in model.modules():
        if isinstance(m, FSDPModule):
            managed.update(id(p) for p in m.parameters())
    for name, p in model.named_parameters():
        if not isinstance(p, module.DTensor):
            continue
        shards = sum(isinstance(q, Shard) for q in p.placements)
        others = [q for q in p.placements if not isinstance(q, Shard | Replicate)]
        if id(p) not in managed or shards > 1 or others:
            where = "outside every fully_shard-ed module" if id(p) not in managed else "on a 2-D mesh"
            raise ValueError(
                f"parameter {name!r} is a DTensor with placements {tuple(p.placements)} {where}"
                f": tensor parallelism is not supported (its ranks share a batch and each holds a slice "
                f"of the layer); OnlineMAS and om.importance take FSDP2's fully_shard on a 1-D "
                f"mesh (data parallel) or HSDP (Replicate, Shard), or DDP")


def local(t: Any) -> Tensor:
    """This rank's shard of a DTensor (differentiable under autograd), a plain tensor itself."""
    return t.to_local() if is_sharded(t) else t


def full(t: Any) -> Tensor:
    """The whole tensor: a DTensor gathered (a collective), a plain tensor itself."""
    return t.full_tensor() if is_sharded(t) else t


def float_zeros(p: Tensor) -> Tensor:
    """float32 zeros laid out like ``p``: sharded like it if it is a DTensor.

    >>> float_zeros(torch.ones(2, dtype=torch.float64))
    tensor([0., 0.])
    """
    if is_sharded(p):
        return torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format)
    return torch.zeros(p.shape, dtype=torch.float32, device=p.device)


def place(t: Any, like: Any, *, dtype: torch.dtype | None = None) -> Tensor:
    """``t`` (a whole tensor or a DTensor of ``like``'s shape) laid out as ``like``: its device,
    ``dtype`` (default ``like``'s) and, for a DTensor ``like``, its mesh and placements.

    A whole tensor becomes this rank's shard of it (no communication: every rank holds it); a
    DTensor sharded otherwise is redistributed, one of a sharded ``like`` gathered for a plain one
    (collectives: every rank calls them together). Returns a new tensor.
    """
    dtype = like.dtype if dtype is None else dtype
    t = t.detach()
    if is_sharded(like):
        from torch.distributed.tensor import distribute_tensor

        if is_sharded(t):
            if t.device_mesh != like.device_mesh or tuple(t.placements) != tuple(like.placements):
                t = t.redistribute(like.device_mesh, like.placements)
            return t.to(dtype=dtype).clone()
        whole = t.to(device=like.device, dtype=dtype)
        return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None).clone()
    if is_sharded(t):
        t = t.full_tensor()
    return t.to(device=like.device, dtype=dtype).clone()


def scatter_sums(
    sums: Sequence[Tensor | Callable[[], Tensor]],
    params: Sequence[DTensor],
    *,
    stats: CommStats | None = None,
    bucket: int = BUCKET,
) -> list[Tensor]:
    """Full-size per-rank sums summed over the ranks and scattered to the shards of ``params``.

    ``sums[i]`` is this rank's float32 sum for the whole of ``params[i]`` (or a function that
    forms it, called when its bucket is sent, so at most ``bucket`` elements of full-size sums
    exist at once). On a 1-D mesh with ``Shard(d)`` placements (FSDP2) each bucket travels as one
    ``reduce_scatter_tensor`` (:func:`~online_mas.distributed.reduce_scatter_rows`); other layouts
    (HSDP's 2-D mesh) go tensor by tensor through ``DTensor.redistribute`` from ``Partial()``.

    Returns
    -------
    list of DTensor
        One per parameter, with its mesh, placements, shape and stride; each rank holds its shard.
    """
    from torch.distributed.tensor import DTensor, Partial, Shard

    if len(sums) != len(params):
        raise ValueError(f"sums and params must have the same length, got {len(sums)} and {len(params)}")
    out: list[Tensor | None] = [None] * len(params)
    flat: dict[tuple[object, int], list[int]] = {}  # (mesh, dim) -> indices sent as one buffer
    for i, p in enumerate(params):
        if not is_sharded(p):
            raise TypeError(f"params[{i}] must be a DTensor, got {type(p).__name__}")
        placement = p.placements[0]
        if p.device_mesh.ndim == 1 and isinstance(placement, Shard):
            flat.setdefault((p.device_mesh, placement.dim), []).append(i)
        else:
            s = _formed(sums[i])
            partial = DTensor.from_local(s, p.device_mesh, [Partial()] * p.device_mesh.ndim,
                                         shape=p.shape, stride=p.stride())
            out[i] = partial.redistribute(p.device_mesh, p.placements)
    for (mesh, dim), idx in flat.items():
        for chunk in _buckets(idx, params, bucket):
            for i, t in zip(chunk, _scatter_flat([sums[i] for i in chunk], [params[i] for i in chunk],
                                                 mesh, dim, stats), strict=True):
                out[i] = t
    return out  # type: ignore[return-value]


def _formed(s: Tensor | Callable[[], Tensor]) -> Tensor:
    return (s() if callable(s) else s).detach().float()


def _buckets(idx: list[int], params: Sequence[Tensor], bucket: int) -> Iterator[list[int]]:
    """Consecutive runs of ``idx`` of at most ``bucket`` elements (a bigger tensor goes alone)."""
    run: list[int] = []
    size = 0
    for i in idx:
        n = params[i].numel()
        if run and size + n > bucket:
            yield run
            run, size = [], 0
        run.append(i)
        size += n
    if run:
        yield run


def _scatter_flat(sums: Sequence[Tensor | Callable[[], Tensor]], params: Sequence[DTensor], mesh: object,
                  dim: int, stats: CommStats | None) -> list[Tensor]:
    """One reduce-scatter for tensors sharded along ``dim`` of a 1-D mesh. Each tensor is split
    as ``torch.chunk`` splits it (the DTensor's own layout: ``ceil(size / N)`` rows per rank, the
    last ranks shorter or empty), padded to ``N`` equal blocks; row ``r`` of the send buffer holds
    every tensor's block ``r``."""
    from torch.distributed.tensor import DTensor

    group = mesh.get_group()  # type: ignore[attr-defined]
    n = mesh.size()  # type: ignore[attr-defined]
    blocks, widths, rows = [], [], []
    for s in sums:
        t = _formed(s).movedim(dim, 0)
        c = -(-t.shape[0] // n)
        t = t.reshape(t.shape[0], -1)
        if t.shape[0] != c * n:
            t = torch.cat([t, t.new_zeros(c * n - t.shape[0], t.shape[1])])
        blocks.append(t.reshape(n, -1))
        widths.append(blocks[-1].shape[1])
        rows.append(c)
    recv = reduce_scatter_rows(torch.cat(blocks, dim=1), group, stats=stats)
    del blocks
    out: list[Tensor] = []
    for part, p, c in zip(recv.split(widths), params, rows, strict=True):
        moved = list(p.shape)
        moved.insert(0, moved.pop(dim))
        mine = local(p).shape[dim]
        shard = part.view(c, *moved[1:])[:mine].movedim(0, dim).contiguous()
        out.append(DTensor.from_local(shard, p.device_mesh, p.placements, shape=p.shape, stride=p.stride()))
    return out


def global_stats(tensors: Sequence[Tensor]) -> tuple[float, int, float]:
    """``(sum, numel, max)`` over the whole of ``tensors`` (max 0 when there is no element).

    DTensors sharded on a 1-D mesh are reduced on their local shards, then with one all-reduce
    for the sum and one for the max (a collective); other DTensors through their own reductions.

    >>> global_stats([torch.tensor([1.0, 3.0]), torch.tensor([2.0])])
    (6.0, 3, 3.0)
    """
    numel = sum(int(t.numel()) for t in tensors)
    shards: list[Any] = [] if not any_sharded(tensors) else _shards_1d(tensors)
    ids = {id(t) for t in shards}
    none = torch.tensor(-torch.inf, dtype=torch.float64)
    total, peak = torch.zeros((), dtype=torch.float64), none
    for t in tensors:
        if id(t) in ids or not t.numel():
            continue
        s, m = t.sum(), t.amax()
        total = total + _whole(s).double().cpu()
        peak = torch.maximum(peak, _whole(m).double().cpu())
    if shards:
        meshes = {t.device_mesh for t in shards}
        if len(meshes) > 1:
            raise ValueError(f"global_stats takes DTensors of one device mesh, got {len(meshes)}")
        group = shards[0].device_mesh.get_group()
        parts = [local(t) for t in shards]
        device = parts[0].device
        s = torch.stack([q.sum().double() for q in parts]).sum().reshape(1)
        m = torch.stack([q.amax().double() for q in parts if q.numel()] or [none.to(device)]).max().reshape(1)
        dist.all_reduce(s, group=group)
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        total = total + s[0].cpu()
        peak = torch.maximum(peak, m[0].cpu())
    return float(total), numel, float(peak) if numel else 0.0


def _shards_1d(tensors: Sequence[Any]) -> list[Any]:
    """The DTensors sharded (``Shard(d)``) on a 1-D mesh."""
    from torch.distributed.tensor import Shard

    return [t for t in tensors if is_sharded(t) and t.device_mesh.ndim == 1
            and isinstance(t.placements[0], Shard)]


def _whole(t: Any) -> Tensor:
    return t.full_tensor() if is_sharded(t) else t


def whole_value(part: Tensor, like: Sequence[Tensor]) -> Tensor:
    """``part`` (this rank's share of a sum over the shards of ``like``, DTensors of one 1-D
    mesh) plus the other ranks' shares as a constant: the whole value on every rank, with the
    gradient of this rank's share (a collective). Otherwise ``part`` itself.
    """
    meshes = {t.device_mesh for t in _shards_1d(like)}
    if len(meshes) != 1:
        return part
    total = part.detach().clone().reshape(1)
    dist.all_reduce(total, group=next(iter(meshes)).get_group())
    return part + (total[0] - part.detach())


def local_lists(*lists: Sequence[Tensor]) -> tuple[list[Tensor], ...]:
    """Each list with its DTensors replaced by their local shards (differentiable: a loss of the
    shards sends its gradient to the DTensor parameters)."""
    return tuple([local(t) for t in seq] for seq in lists)


@contextlib.contextmanager
def local_grads(params: Sequence[Any]) -> Iterator[list[Tensor]]:
    """The parameters as tensors whose data and ``.grad`` are the local shards of the DTensor
    parameters' (plain parameters pass through): in-place updates of either land in the shards.

    A parameter without a ``.grad`` gets the one its local stand-in has at the end.
    """
    stand: list[Tensor] = []
    with torch.no_grad():
        for p in params:
            if not is_sharded(p):
                stand.append(p)
                continue
            q = p.to_local()
            if is_sharded(p.grad):
                q.grad = p.grad.to_local()
            stand.append(q)
    try:
        yield stand
    finally:
        with torch.no_grad():
            for p, q in zip(params, stand, strict=True):
                if q is p:
                    continue
                if p.grad is None and q.grad is not None:
                    p.grad = DTensor.from_local(q.grad, p.device_mesh, p.placements,
                                                shape=p.shape, stride=p.stride())
                q.grad = None


def finite_copy(x: Any) -> Any:
    """A batch (a tensor, or a tuple, list or dict of them) with nan and inf replaced by 0; a
    tensor whose values are finite but whose sum overflows (the input check's one reduction,
    :func:`~online_mas.estimators.common.finite`, refuses it) becomes zeros.

    >>> finite_copy((torch.tensor([1.0, float("nan")]), 3))
    (tensor([1., 0.]), 3)
    >>> finite_copy(torch.tensor([3e38, 3e38]))
    tensor([0., 0.])
    """
    if isinstance(x, Tensor):
        if not x.is_floating_point():
            return x
        y = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        return y if finite(y) else torch.zeros_like(y)
    if isinstance(x, dict):
        return {k: finite_copy(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(finite_copy(v) for v in x)
    return x


def local_nbytes(obj: object) -> int:
    """Bytes this rank holds for the tensors in a (nested) state: the local shards of DTensors.

    >>> local_nbytes({"a": torch.zeros(4), "b": [torch.zeros(2, dtype=torch.float64), 3]})
    32
    """
    if isinstance(obj, Tensor):
        t = local(obj)
        return int(t.numel() * t.element_size())
    if isinstance(obj, dict):
        return sum(local_nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(local_nbytes(v) for v in obj)
    return 0
