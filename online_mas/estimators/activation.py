"""``nn.PReLU``: ``y = max(0, x) + w min(0, x)``, so a sample's gradient of ``w`` is
``sum over positions of g * min(0, x)`` (over the channels too when ``w`` has one element)."""

from __future__ import annotations

from torch import Tensor, nn

from online_mas.estimators.common import Rule

__all__ = ["RULE", "prelu_sums"]


def prelu_sums(m: nn.Module, a: Tensor, g: Tensor, acc: dict[str, Tensor]) -> None:
    """``sum_n |sum_p g_n min(0, a_n)|`` per channel (channels on dimension 1, as PReLU has them)."""
    if not isinstance(m, nn.PReLU):
        raise TypeError(f"prelu_sums needs nn.PReLU, got {type(m).__name__}")
    per = g.float() * a.float().clamp(max=0.0)
    n = per.shape[0]
    if m.num_parameters == 1:
        w = per.reshape(n, -1).sum(1).abs().sum(0, keepdim=True)
    else:
        if per.dim() < 2:
            raise RuntimeError("internal error: PReLU with channels on a batch of scalars")
        w = per.reshape(n, per.shape[1], -1).sum(-1).abs().sum(0)
    prev = acc.get("weight")
    acc["weight"] = w if prev is None else prev.add_(w)


RULE = Rule("prelu", prelu_sums)
