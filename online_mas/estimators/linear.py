"""``nn.Linear``: per-sample weight gradients are outer products ``g_n a_n^T``."""

from __future__ import annotations

from torch import Tensor, nn

from online_mas.estimators.common import Rule, abs_bmm_sum

__all__ = ["RULE", "linear_factors", "linear_sums", "sequence_sums"]


def linear_sums(m: nn.Module, a: Tensor, g: Tensor, acc: dict[str, Tensor]) -> None:
    """For 2-D inputs ``sum_n |g_n a_n^T| = |G|^T |A|`` is one matmul; otherwise one batched
    matmul over the extra (sequence) dimensions per chunk of samples."""
    a = a.float()
    w = acc.get("weight")
    if a.dim() == 2:
        ga = g.abs()
        acc["weight"] = ga.t() @ a.abs() if w is None else w.addmm_(ga.t(), a.abs())
        if m.bias is not None:
            _add(acc, "bias", ga.sum(0))
        return
    weight, bias = sequence_sums(a, g, bias=m.bias is not None)
    acc["weight"] = weight if w is None else w.add_(weight)
    if bias is not None:
        _add(acc, "bias", bias)


def sequence_sums(a: Tensor, g: Tensor, *, bias: bool = True) -> tuple[Tensor, Tensor | None]:
    """``(sum_n |G_n^T A_n|, sum_n |sum_t g_nt|)`` for a linear map applied at every position
    ``t`` of ``a`` (``(N, ..., in)``, output gradients ``g`` ``(N, ..., out)``): each sample's
    gradient is a sum over its positions, one batched matmul per chunk of samples."""
    a3, g3 = a.reshape(a.shape[0], -1, a.shape[-1]), g.reshape(g.shape[0], -1, g.shape[-1])
    weight = abs_bmm_sum(g3.transpose(1, 2), a3)[0]  # per-sample gradients, in cache-sized blocks
    return weight, (g3.sum(1).abs_().sum(0) if bias else None)


def linear_factors(m: nn.Module, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(|G|, |A|)`` with ``|G|^T |A|`` the weight's sum, for 2-D inputs."""
    return (g.float().abs(), a.float().abs()) if a.dim() == 2 else None


def _add(acc: dict[str, Tensor], key: str, t: Tensor) -> None:
    prev = acc.get(key)
    acc[key] = t if prev is None else prev.add_(t)


RULE = Rule("linear", linear_sums, factors=linear_factors)
