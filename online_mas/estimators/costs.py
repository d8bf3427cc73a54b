"""What the exact pass costs per layer: the arithmetic and the transient memory of each rule.

:func:`layer_cost` estimates, from the shapes a recorded call had, the floating point operations
of a rule's per-sample sums over one batch (multiply-adds count 2) and the largest buffer they
form (bytes): the per-sample products of a linear map over a sequence or a convolution
(``N x out x in`` floats, formed :data:`~.common.BLOCK_BYTES` at a time on the CPU), the
``|G|``, ``|A|`` copies of a plain linear map, the normalised input of a norm. ``torch.func``
parameters cost one parameter-sized gradient per sample of a chunk. The forward and the backward
to the layer outputs, which every method shares with a training step, are not included.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from online_mas.estimators import common
from online_mas.estimators.common import Sites

__all__ = ["Cost", "func_cost", "layer_cost"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class Cost(NamedTuple):
    """One parameter's entry of ``om.plan(model, x, costs=True)``.

    ``flops`` and ``memory`` (bytes) are those of its layer's per-sample sums for the whole batch
    (shared by the layer's parameters: ``layer`` names it); ``flops`` is None for ``torch.func``,
    whose cost is that of a vmapped forward and backward per sample.
    """

    rule: str
    layer: str
    flops: int | None
    memory: int

    def __str__(self) -> str:
        flops = "-" if self.flops is None else f"{self.flops / 1e6:.1f} MFLOP"
        return f"{self.rule} ({self.layer}): {flops}, {self.memory / 2**20:.2f} MiB"


def layer_cost(m: nn.Module, a: Tensor | Sites, g: Tensor | Sites) -> tuple[int, int]:
    """``(flops, bytes)`` of the per-sample sums of layer ``m`` for one batch, from the shapes of
    its input ``a`` and output gradient ``g`` (or their :class:`~.common.Sites`)."""
    if isinstance(a, Sites) and isinstance(g, Sites):  # attention: one sequence product per projection
        flops, peak = 0, 0
        for x, y in zip(a.tensors, g.tensors, strict=False):
            f, b = _sequence(x, y)
            flops, peak = flops + f, max(peak, b)
        return flops + 2 * sum(t.numel() for t in g.tensors[len(a.tensors):]), peak
    if not isinstance(a, Tensor) or not isinstance(g, Tensor):
        raise TypeError(f"layer_cost needs tensors or Sites, got {type(a).__name__}, {type(g).__name__}")
    if isinstance(m, nn.Linear):
        if a.dim() == 2:
            n, i, o = a.shape[0], a.shape[1], g.shape[1]
            return 2 * n * o * i + 2 * n * (o + i), 4 * (o * i + n * (o + i))
        return _sequence(a, g)
    if isinstance(m, _CONV + _TRANSPOSED):
        n = a.shape[0]
        w = m.weight.numel()  # out x in / groups x kernel
        positions = (a if isinstance(m, _TRANSPOSED) else g)[0, 0].numel()
        if positions == 1:  # rank 1: one matmul of absolute values
            return 2 * n * w, 4 * (w + a.numel() + g.numel())
        flops = 2 * n * w * positions + 2 * n * w
        return flops, 4 * a.numel() + _products(n, w, a)
    return 4 * g.numel(), 8 * g.numel()  # norms, embeddings, PReLU: a few elementwise passes


def func_cost(p: Tensor, chunk: int) -> int:
    """Bytes of ``torch.func``'s per-sample gradients of ``p`` for a chunk of samples."""
    return chunk * p.numel() * 4


def _sequence(a: Tensor, g: Tensor) -> tuple[int, int]:
    """A linear map at every position: ``N`` products ``(out x T) (T x in)``, then abs and sum."""
    n, i, o = a.shape[0], a.shape[-1], g.shape[-1]
    t = a.numel() // max(1, n * i)
    return 2 * n * t * o * i + 2 * n * o * i, _products(n, o * i, a)


def _products(n: int, size: int, like: Tensor) -> int:
    """Bytes of ``n`` per-sample products of ``size`` floats: a cache-sized block of them on CPU."""
    full = 4 * n * size
    if like.device.type != "cpu":
        return full
    return min(full, max(4 * size, common.BLOCK_BYTES)) + 4 * size
