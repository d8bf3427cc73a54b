"""Affine normalisation layers: ``nn.LayerNorm``, ``nn.RMSNorm``, ``nn.GroupNorm``,
``nn.InstanceNorm1d/2d/3d`` and eval-mode batch norm.

The per-sample gradient of the scale is ``sum over positions of g * xhat``, of the shift
``sum over positions of g``, with ``xhat`` the normalised input (in eval mode: instance norm with
running statistics uses them, without them each sample's own).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from online_mas.estimators.common import Rule

_INSTANCE = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_BATCHED_DIMS = {nn.InstanceNorm1d: 3, nn.InstanceNorm2d: 4, nn.InstanceNorm3d: 5}


def norm_supported(m: nn.Module) -> bool:
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return bool(m.track_running_stats) and m.running_mean is not None
    if isinstance(m, nn.LayerNorm | nn.RMSNorm):
        return bool(m.elementwise_affine)
    if isinstance(m, _INSTANCE):
        return bool(m.affine) and (not m.track_running_stats or m.running_mean is not None)
    return bool(getattr(m, "affine", False))


def norm_sums(m: nn.Module, a: Tensor, g: Tensor, acc: dict[str, Tensor]) -> None:
    dtype = a.dtype
    a = a.float()
    n = a.shape[0]
    if isinstance(m, nn.LayerNorm | nn.RMSNorm):
        if isinstance(m, nn.LayerNorm):
            xhat = F.layer_norm(a, m.normalized_shape, eps=m.eps)
        else:  # eps None: the input dtype's machine epsilon, as nn.RMSNorm takes it
            eps = m.eps if m.eps is not None else torch.finfo(dtype).eps
            xhat = F.rms_norm(a, m.normalized_shape, eps=eps)
        gw = xhat.mul_(g).reshape(n, -1, *m.normalized_shape).sum(1)  # xhat is this call's own
        gb = g.reshape(n, -1, *m.normalized_shape).sum(1)
    else:
        if isinstance(m, nn.GroupNorm):
            xhat = F.group_norm(a, m.num_groups, eps=m.eps)
        elif isinstance(m, _INSTANCE) and not m.track_running_stats:  # each sample's own statistics
            if all(a.dim() != d for cls, d in _BATCHED_DIMS.items() if isinstance(m, cls)):
                raise RuntimeError("internal error: unbatched instance norm reached the fast path")
            xhat = F.instance_norm(a, eps=m.eps)
        else:  # eval-mode batch or instance norm: running statistics (checked by norm_supported)
            rm, rv = m.running_mean, m.running_var
            if not isinstance(rm, Tensor) or not isinstance(rv, Tensor):
                raise RuntimeError("internal error: batch norm without running statistics")
            shape = (1, -1) + (1,) * (a.dim() - 2)
            xhat = (a - rm.float().view(shape)) / torch.sqrt(rv.float().view(shape) + float(m.eps))  # type: ignore[arg-type]
        gw = xhat.mul_(g).reshape(n, a.shape[1], -1).sum(-1)
        gb = g.reshape(n, a.shape[1], -1).sum(-1)
    for key, t in (("weight", gw.abs_().sum(0)), ("bias", gb.abs_().sum(0))):
        if getattr(m, key, None) is not None:
            prev = acc.get(key)
            acc[key] = t if prev is None else prev.add_(t)


RULE = Rule("norm", norm_sums, supported=norm_supported)
