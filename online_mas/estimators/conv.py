"""Convolutions: ``nn.Conv1d/2d/3d`` with any padding (numbers, ``"same"``, ``"valid"``) and padding
mode, and ``nn.ConvTranspose1d/2d/3d``.

A convolution's weight gradient is a correlation of its (padded) input with its output gradient:
``dW_n[o, c, k] = sum_p G_n[o, p] A_n[c, s p + d k]``. The input is padded the way the module pads
it (``F.pad`` with its mode), then one of three exact forms sums ``|dW_n|`` over samples:

- one output position (``p`` takes one value, e.g. a ResNet's last stage at 1x1): every
  ``dW_n`` is rank 1, ``|dW_n| = |G_n| |A_n|^T``, and the sum is one matmul of absolute values;
- narrow columns (few input channels per group times kernel offsets, :func:`im2col`, e.g. a first
  layer on one-channel images): the im2col form, one matmul per sample of the output gradient and
  the input's windows side by side, with a row of ones beside them, so the same product also
  gives the bias's per-sample gradient;
- at most :data:`GROUPED_CHANNELS` input channels per group: every sample's ``dW_n`` and ``db_n``
  from one weight-gradient convolution whose groups are the samples (``convolution_backward``
  with ``groups = N * groups``, zero padding inside it), a block of samples at a time;
- otherwise one batched matmul per kernel offset, without the ``k``-times larger unfolded copy.

A transposed convolution's weight gradient is the same correlation with the roles swapped: its
input plays the output gradient and its zero-padded output gradient the input.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from online_mas.estimators import common
from online_mas.estimators.common import Rule, abs_bmm_sum

__all__ = [
    "GROUPED_CHANNELS", "IM2COL_BYTES", "IM2COL_WIDTH", "RULE", "conv_sums", "conv_supported",
    "correlation_sums", "im2col", "input_padding",
]

IM2COL_BYTES = 64 * 2**20  # im2col form when its per-sample gradients and columns fit in this
IM2COL_WIDTH = 16  # im2col form for at most this many input channels per group times kernel offsets
GROUPED_CHANNELS = 32  # the samples-as-groups convolution for at most this many input channels per group

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def conv_supported(m: nn.Module) -> bool:
    if isinstance(m, _TRANSPOSED):
        return m.padding_mode == "zeros" and not isinstance(m.padding, str)
    return isinstance(m, _CONV) and m.padding_mode in ("zeros", "reflect", "replicate", "circular")


def input_padding(m: nn.Module) -> list[int]:
    """``(left, right)`` per spatial dimension, first dimension first, as the module pads its input.

    ``"same"`` puts the odd element on the right, as ``nn.Conv*d`` does.

    Examples
    --------
    >>> from torch import nn
    >>> input_padding(nn.Conv2d(1, 1, (3, 4), padding="same"))
    [1, 1, 1, 2]
    """
    if not isinstance(m, _CONV + _TRANSPOSED):
        raise TypeError(f"input_padding needs an nn.Conv*d or nn.ConvTranspose*d, got {type(m).__name__}")
    kernel, dilation, padding = m.kernel_size, m.dilation, m.padding
    if padding == "valid":
        return [0] * (2 * len(kernel))
    if padding == "same":
        pads = []
        for k, d in zip(kernel, dilation, strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return pads
    return [int(p) for p in padding for _ in range(2)]


def conv_sums(m: nn.Module, a: Tensor, g: Tensor, acc: dict[str, Tensor]) -> None:
    """Per-sample ``|dW|`` and ``|db|`` of a (transposed) convolution summed over the batch."""
    if not isinstance(m, _CONV + _TRANSPOSED):
        raise TypeError(f"conv_sums needs an nn.Conv*d or nn.ConvTranspose*d, got {type(m).__name__}")
    spatial = len(m.kernel_size)
    if a.dim() != spatial + 2:  # unbatched call: not a batch of samples
        raise RuntimeError("internal error: unbatched convolution reached the fast path")
    a, g = a.float(), g.float()
    kernel, stride, dilation = tuple(m.kernel_size), tuple(m.stride), tuple(m.dilation)
    if isinstance(m, _TRANSPOSED):  # the input plays the output gradient: (C_in, C_out / groups, *k)
        pads = input_padding(m)
        weight = correlation_sums(_pad(g, pads, "zeros"), a, kernel, stride, dilation, m.groups)
        bias = None
    elif isinstance(m, _CONV):
        weight, bias = _conv_forms(m, a, g, kernel, stride, dilation)
    else:
        raise TypeError(f"conv_sums needs an nn.Conv*d or nn.ConvTranspose*d, got {type(m).__name__}")
    _add(acc, "weight", weight.reshape(m.weight.shape))
    if m.bias is not None:
        _add(acc, "bias", bias if bias is not None else g.flatten(2).sum(-1).abs().sum(0))


def _conv_forms(m: nn.Conv1d | nn.Conv2d | nn.Conv3d, a: Tensor, g: Tensor, kernel: tuple[int, ...],
                stride: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[Tensor, Tensor | None]:
    """A convolution's weight sum and, where the form gives it with the weight's, its bias sum."""
    groups, bias = int(m.groups), m.bias is not None
    n, cg, og = a.shape[0], a.shape[1] // groups, g.shape[1] // groups
    k, p = math.prod(kernel), g.shape[2:].numel()
    pads = input_padding(m)
    if p > 1 and im2col(n, groups, og, cg, k, p):
        return _im2col(_pad(a, pads, m.padding_mode), g, kernel, stride, dilation, groups, bias=bias)
    if p > 1 and cg <= GROUPED_CHANNELS:
        if m.padding_mode == "zeros" and pads[::2] == pads[1::2]:  # symmetric zeros: inside the convolution
            return _grouped(a, g, kernel, stride, dilation, groups, padding=tuple(pads[::2]), bias=bias)
        return _grouped(_pad(a, pads, m.padding_mode), g, kernel, stride, dilation, groups, bias=bias)
    return correlation_sums(_pad(a, pads, m.padding_mode), g, kernel, stride, dilation, groups), None


def correlation_sums(
    a: Tensor, g: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...],
    groups: int,
) -> Tensor:
    """``sum_n |dW_n|`` with ``dW_n[o, c, k] = sum_p g[n, o, p] a[n, c, s p + d k]``.

    ``a`` (already padded) is ``(N, C, *S)``, ``g`` is ``(N, O, *P)``; returns ``(O, C / groups, *k)``.
    """
    n, in_c, out_c = a.shape[0], a.shape[1], g.shape[1]
    og, cg = out_c // groups, in_c // groups
    positions = g.shape[2:]
    p = positions.numel()
    offsets = list(itertools.product(*(range(k) for k in kernel)))

    def window(off: tuple[int, ...]) -> Tensor:
        index = tuple(slice(o * d, o * d + s * (q - 1) + 1, s)
                      for o, d, s, q in zip(off, dilation, stride, positions, strict=True))
        return a[(slice(None), slice(None), *index)]

    gl = g.reshape(n, groups, og, p)
    if p == 1:  # rank 1: sum_n |g_n| |a_n|^T, one matmul per group over the batch
        cols = torch.stack([window(off).reshape(n, groups, cg) for off in offsets], -1).abs_()
        w = torch.bmm(gl.abs().reshape(n, groups, og).permute(1, 2, 0),
                      cols.permute(1, 0, 2, 3).reshape(groups, n, cg * len(offsets)))
        return w.reshape(out_c, cg, *kernel)
    k = len(offsets)
    if cg <= GROUPED_CHANNELS:
        return _grouped(a, g, kernel, stride, dilation, groups)[0]
    gl = gl.reshape(n * groups, og, p)
    if im2col(n, groups, og, cg, k, p):  # one matmul per sample
        return _im2col(a, g, kernel, stride, dilation, groups)[0]
    w = torch.empty(k, out_c, cg, device=a.device)
    for i, off in enumerate(offsets):  # one batched matmul per kernel offset
        w[i] = abs_bmm_sum(gl, window(off).reshape(n * groups, cg, p).transpose(1, 2), groups).view(out_c, cg)
    return w.permute(1, 2, 0).reshape(out_c, cg, *kernel)


def _grouped(a: Tensor, g: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...],
             dilation: tuple[int, ...], groups: int, *, padding: tuple[int, ...] | None = None,
             bias: bool = False) -> tuple[Tensor, Tensor | None]:
    """``sum_n |dW_n|`` (and ``sum_n |db_n|`` with ``bias``) from weight-gradient convolutions with
    one group per sample (and group); ``padding``: zeros the convolution adds itself (else ``a`` is
    already padded)."""
    n, in_c, out_c = a.shape[0], a.shape[1], g.shape[1]
    positions = g.shape[2:]
    if padding is None:
        padding = (0,) * len(kernel)
        extent = tuple(s * (q - 1) + d * (k - 1) + 1
                       for s, d, k, q in zip(stride, dilation, kernel, positions, strict=True))
        a = a[(slice(None), slice(None), *(slice(0, e) for e in extent))]  # the part the windows read
    spatial = a.shape[2:]
    shape = (out_c, in_c // groups, *kernel)
    size = out_c * (in_c // groups) * math.prod(kernel) * 4  # one sample's gradient, bytes
    step = common.block_rows(n, size) if a.device.type == "cpu" else n
    total = torch.zeros(1, math.prod(shape), dtype=a.dtype, device=a.device)
    total_b = torch.zeros(1, out_c, dtype=a.dtype, device=a.device) if bias else None
    ones = torch.ones(1, min(step, n), dtype=a.dtype, device=a.device)
    for start in range(0, n, step):
        stop = min(n, start + step)
        m = stop - start
        weight = a.new_empty(1).expand(m * out_c, *shape[1:])  # only its shape is read
        _, per, per_b = torch.ops.aten.convolution_backward(
            g[start:stop].reshape(1, m * out_c, *positions), a[start:stop].reshape(1, m * in_c, *spatial),
            weight, [m * out_c] if bias else None, list(stride), list(padding), list(dilation), False,
            [0] * len(kernel), m * groups, [False, True, bias])
        total.addmm_(ones[:, :m], per.abs_().view(m, -1))
        if total_b is not None:
            total_b.addmm_(ones[:, :m], per_b.abs_().view(m, out_c))
    return total.view(shape), (total_b.view(out_c) if total_b is not None else None)


def _im2col(a: Tensor, g: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...],
            dilation: tuple[int, ...], groups: int, *, bias: bool = False) -> tuple[Tensor, Tensor | None]:
    """``sum_n |dW_n|`` (and ``sum_n |db_n|`` with ``bias``) from one matmul per sample of the output
    gradient ``(O / groups, P)`` and the columns ``(P, C / groups * k)`` of the (padded) input's
    windows; with ``bias`` a column of ones beside them gives ``db_n = sum_p g[n, :, p]`` too."""
    n, in_c, out_c = a.shape[0], a.shape[1], g.shape[1]
    og, cg = out_c // groups, in_c // groups
    positions = g.shape[2:]
    p = positions.numel()
    offsets = list(itertools.product(*(range(k) for k in kernel)))
    k = len(offsets)
    width = cg * k + (1 if bias else 0)
    cols = torch.empty(n * groups, width, p, dtype=a.dtype, device=a.device)
    if bias:
        cols[:, -1] = 1
    view = cols[:, : cg * k].unflatten(1, (cg, k))  # (N G, cg, k, P)
    for i, off in enumerate(offsets):
        index = tuple(slice(o * d, o * d + s * (q - 1) + 1, s)
                      for o, d, s, q in zip(off, dilation, stride, positions, strict=True))
        view[:, :, i].unflatten(0, (n, groups)).unflatten(-1, tuple(positions)).copy_(
            a[(slice(None), slice(None), *index)].unflatten(1, (groups, cg)))
    per = abs_bmm_sum(g.reshape(n * groups, og, p), cols.transpose(1, 2), groups)  # (groups, og, width)
    weight = per[:, :, : cg * k].reshape(out_c, cg, *kernel)
    return weight, (per[:, :, -1].reshape(out_c) if bias else None)


def im2col(n: int, groups: int, og: int, cg: int, k: int, p: int) -> bool:
    """Whether the im2col form is the cheaper one: narrow columns (at most :data:`IM2COL_WIDTH`
    input channels per group times kernel offsets, where a samples-as-groups convolution is
    inefficient), at least 8 outputs per group, and its columns and per-sample gradients within
    :data:`IM2COL_BYTES`."""
    width = cg * k + 1  # with the bias's column
    return cg * k <= IM2COL_WIDTH and og >= 8 and 4 * n * groups * width * (og + p) <= IM2COL_BYTES


def _pad(a: Tensor, pads: list[int], mode: str) -> Tensor:
    """Pad the spatial dimensions by ``pads`` ((left, right) per dimension, first one first)."""
    if not any(pads):
        return a
    flat = [p for i in reversed(range(len(pads) // 2)) for p in pads[2 * i : 2 * i + 2]]  # last dim first
    return F.pad(a, flat, mode="constant" if mode == "zeros" else mode)


def _add(acc: dict[str, Tensor], key: str, t: Tensor) -> None:
    prev = acc.get(key)
    acc[key] = t if prev is None else prev.add_(t)


RULE = Rule("conv", conv_sums, supported=conv_supported)
