"""``nn.Embedding``: a sample's gradient touches only the rows it looks up."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from online_mas.estimators.common import Rule


def embedding_supported(m: nn.Module) -> bool:
    return not getattr(m, "scale_grad_by_freq", False)


def embedding_sums(m: nn.Module, idx: Tensor, g: Tensor, acc: dict[str, Tensor]) -> None:
    """Per-(sample, row) gradients by one ``index_add_``, then ``|.|`` summed into the rows."""
    if not isinstance(m, nn.Embedding):
        raise TypeError(f"embedding_sums needs nn.Embedding, got {type(m).__name__}")
    n, v = idx.shape[0], m.num_embeddings
    flat = idx.reshape(n, -1).long()
    gf = g.reshape(n, -1, g.shape[-1])
    sample = torch.arange(n, device=idx.device).unsqueeze(1).expand_as(flat)
    keys = (sample * v + flat).reshape(-1)
    uniq, inverse = torch.unique(keys, return_inverse=True)
    per = torch.zeros(uniq.shape[0], g.shape[-1], device=g.device)
    per.index_add_(0, inverse, gf.reshape(-1, g.shape[-1]))  # per-(sample, row) gradient
    w = torch.zeros(m.weight.shape, device=g.device)
    w.index_add_(0, uniq % v, per.abs_())
    if m.padding_idx is not None:
        w[m.padding_idx] = 0.0
    prev = acc.get("weight")
    acc["weight"] = w if prev is None else prev.add_(w)


RULE = Rule("embedding", embedding_sums, supported=embedding_supported)
