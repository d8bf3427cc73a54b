"""Affine normalisation layers: ``nn.LayerNorm``, ``nn.GroupNorm`` and eval-mode batch norm.

The per-sample gradient of the scale is ``sum over positions of g * xhat``, of the shift
``sum over positions of g``, with ``xhat`` the normalised input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from online_mas.estimators.common import Rule


def norm_supported(m: nn.Module) -> bool:
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return bool(m.track_running_stats) and m.running_mean is not None
    if isinstance(m, nn.LayerNorm):
        return bool(m.elementwise_affine)
    return bool(getattr(m, "affine", False))


def norm_sums(m: nn.Module, a: Tensor, g: Tensor, acc: dict[str, Tensor]) -> None:
    a = a.float()
    n = a.shape[0]
    if isinstance(m, nn.LayerNorm):
        xhat = F.layer_norm(a, m.normalized_shape, eps=m.eps)
        gw = (g * xhat).reshape(n, -1, *m.normalized_shape).sum(1)
        gb = g.reshape(n, -1, *m.normalized_shape).sum(1)
    else:
        if isinstance(m, nn.GroupNorm):
            xhat = F.group_norm(a, m.num_groups, eps=m.eps)
        else:  # eval-mode batch norm: running statistics (checked by norm_supported)
            rm, rv = m.running_mean, m.running_var
            if not isinstance(rm, Tensor) or not isinstance(rv, Tensor):
                raise RuntimeError("internal error: batch norm without running statistics")
            shape = (1, -1) + (1,) * (a.dim() - 2)
            xhat = (a - rm.view(shape)) / torch.sqrt(rv.view(shape) + float(m.eps))  # type: ignore[arg-type]
        gw = (g * xhat).reshape(n, a.shape[1], -1).sum(-1)
        gb = g.reshape(n, a.shape[1], -1).sum(-1)
    for key, t in (("weight", gw.abs().sum(0)), ("bias", gb.abs().sum(0))):
        if getattr(m, key, None) is not None:
            prev = acc.get(key)
            acc[key] = t if prev is None else prev.add_(t)


RULE = Rule("norm", norm_sums, supported=norm_supported)
