"""Convolutions: ``nn.Conv1d/2d/3d`` with any padding (numbers, ``"same"``, ``"valid"``) and padding
mode, and ``nn.ConvTranspose1d/2d/3d``.

A convolution's weight gradient is a correlation of its (padded) input with its output gradient:
``dW_n[o, c, k] = sum_p G_n[o, p] A_n[c, s p + d k]``. The input is padded the way the module pads
it (``F.pad`` with its mode), then one of three exact forms sums ``|dW_n|`` over samples:

- one output position (``p`` takes one value, e.g. a ResNet's last stage at 1x1): every
  ``dW_n`` is rank 1, ``|dW_n| = |G_n| |A_n|^T``, and the sum is one matmul of absolute values;
- at most :data:`GROUPED_CHANNELS` input channels per group: every sample's ``dW_n`` from one
  weight-gradient convolution whose groups are the samples (``torch.nn.grad.conv*d_weight`` with
  ``groups = N * groups``), a block of samples at a time;
- otherwise one batched matmul per kernel offset, without the ``k``-times larger unfolded copy
  (the im2col form, all offsets side by side, remains for :func:`im2col`'s cases).

A transposed convolution's weight gradient is the same correlation with the roles swapped: its
input plays the output gradient and its zero-padded output gradient the input.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import grad as nn_grad

from online_mas.estimators import common
from online_mas.estimators.common import Rule, abs_bmm_sum

__all__ = [
    "GROUPED_CHANNELS", "IM2COL_BYTES", "RULE", "conv_sums", "conv_supported", "correlation_sums", "im2col",
    "input_padding",
]

IM2COL_BYTES = 64 * 2**20  # im2col form when its per-sample gradients and columns fit in this
GROUPED_CHANNELS = 32  # the samples-as-groups convolution for at most this many input channels per group
_WEIGHT_GRAD = {1: nn_grad.conv1d_weight, 2: nn_grad.conv2d_weight, 3: nn_grad.conv3d_weight}

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
    else:
        padded = _pad(a, input_padding(m), m.padding_mode)
        weight = correlation_sums(padded, g, kernel, stride, dilation, m.groups)
    _add(acc, "weight", weight.reshape(m.weight.shape))
    if m.bias is not None:
        _add(acc, "bias", g.flatten(2).sum(-1).abs().sum(0))


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
        return _grouped(a, g, kernel, stride, dilation, groups)
    gl = gl.reshape(n * groups, og, p)
    if im2col(n, groups, og, cg, k, p):  # one matmul per sample
        cols = torch.stack([window(off).reshape(n * groups, cg, p) for off in offsets], 2)
        per = abs_bmm_sum(gl, cols.reshape(n * groups, cg * k, p).transpose(1, 2), groups)
        return per.reshape(out_c, cg, *kernel)
    w = torch.empty(k, out_c, cg, device=a.device)
    for i, off in enumerate(offsets):  # one batched matmul per kernel offset
        w[i] = abs_bmm_sum(gl, window(off).reshape(n * groups, cg, p).transpose(1, 2), groups).view(out_c, cg)
    return w.permute(1, 2, 0).reshape(out_c, cg, *kernel)


def _grouped(a: Tensor, g: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...],
             dilation: tuple[int, ...], groups: int) -> Tensor:
    """``sum_n |dW_n|`` from weight-gradient convolutions with one group per sample (and group)."""
    n, in_c, out_c = a.shape[0], a.shape[1], g.shape[1]
    positions = g.shape[2:]
    extent = tuple(s * (q - 1) + d * (k - 1) + 1 for s, d, k, q in zip(stride, dilation, kernel, positions,
                                                                      strict=True))
    a = a[(slice(None), slice(None), *(slice(0, e) for e in extent))]  # the part the windows read
    shape = (out_c, in_c // groups, *kernel)
    weight_grad = _WEIGHT_GRAD[len(kernel)]
    size = out_c * (in_c // groups) * math.prod(kernel) * 4  # one sample's gradient, bytes
    step = max(1, common.BLOCK_BYTES // size) if a.device.type == "cpu" else n
    total = torch.zeros(shape, dtype=a.dtype, device=a.device)
    for start in range(0, n, step):
        stop = min(n, start + step)
        m = stop - start
        per = weight_grad(a[start:stop].reshape(1, m * in_c, *extent), (m * out_c, *shape[1:]),
                          g[start:stop].reshape(1, m * out_c, *positions), stride=stride, dilation=dilation,
                          groups=m * groups)
        total += per.view(m, *shape).abs_().sum(0)
    return total


def im2col(n: int, groups: int, og: int, cg: int, k: int, p: int) -> bool:
    """Whether the im2col form is the cheaper one: few input channels per group (the per-offset
    matmuls would be thin) and its columns and per-sample gradients within :data:`IM2COL_BYTES`."""
    return cg < 16 and og >= 8 and 4 * n * groups * (og * cg * k + cg * k * p) <= IM2COL_BYTES


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
