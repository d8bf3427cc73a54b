"""``nn.Conv1d`` and ``nn.Conv2d`` with zero padding given as numbers: one batched matmul per
kernel offset."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from online_mas.estimators.common import Rule


def conv_supported(m: nn.Module) -> bool:
    return getattr(m, "padding_mode", None) == "zeros" and not isinstance(getattr(m, "padding", 0), str)


def conv_sums(m: nn.Module, a: Tensor, g: Tensor, acc: dict[str, Tensor]) -> None:
    """Per-sample weight gradients, one kernel offset at a time.

    For kernel offset ``(i, j)`` the per-sample gradient is ``dW_n[:, :, i, j] = G_n S_n^T`` with
    ``G_n`` the output gradient (out channels x positions) and ``S_n`` the input window that the
    offset sees (in channels x positions): one batched matmul per offset, whose ``|.|`` is summed
    over samples at once. Same arithmetic as unfolding (im2col) the input, without the
    ``k*k``-times larger unfolded copy.
    """
    if not isinstance(m, nn.Conv1d | nn.Conv2d):
        raise TypeError(f"conv_sums needs nn.Conv1d or nn.Conv2d, got {type(m).__name__}")
    a = a.float()
    padding = tuple(int(p) for p in m.padding)  # str padding has no rule
    if isinstance(m, nn.Conv1d):  # a 1-D convolution is a 2-D one of height 1
        a, g = a.unsqueeze(-2), g.unsqueeze(-2)
        (kh, kw), (sh, sw), (dh, dw) = (1, *m.kernel_size), (1, *m.stride), (1, *m.dilation)
        ph, pw = 0, padding[0]
    else:
        (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
        ph, pw = padding
    if a.dim() != 4:  # unbatched call: not a batch of samples
        raise RuntimeError("internal error: unbatched convolution reached the fast path")
    groups, out_c, in_c = m.groups, g.shape[1], a.shape[1]
    og, cg = out_c // groups, in_c // groups
    ho, wo = g.shape[-2:]
    w = torch.empty(kh, kw, out_c, cg, device=a.device)
    n = a.shape[0]
    ap = F.pad(a, (pw, pw, ph, ph)) if ph or pw else a
    gl = g.reshape(n * groups, og, ho * wo)
    for i in range(kh):
        for j in range(kw):
            r, c = i * dh, j * dw
            window = ap[:, :, r : r + sh * (ho - 1) + 1 : sh, c : c + sw * (wo - 1) + 1 : sw]
            per = torch.bmm(gl, window.reshape(n * groups, cg, ho * wo).transpose(1, 2))
            torch.sum(per.abs_().view(n, out_c, cg), 0, out=w[i, j])
    weight = w.permute(2, 3, 0, 1).reshape(m.weight.shape)
    _add(acc, "weight", weight)
    if m.bias is not None:
        _add(acc, "bias", g.flatten(2).sum(-1).abs().sum(0))


def _add(acc: dict[str, Tensor], key: str, t: Tensor) -> None:
    prev = acc.get(key)
    acc[key] = t if prev is None else prev.add_(t)


RULE = Rule("conv", conv_sums, supported=conv_supported)
