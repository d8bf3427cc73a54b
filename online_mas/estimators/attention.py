"""``nn.MultiheadAttention``: its projections are linear maps over the sequence.

The module calls ``F.multi_head_attention_forward`` with its weights, so no hook sees the
projections' inputs and outputs (not even ``out_proj``'s). During the exact pass its forward is
replaced by :func:`attention_forward`, which computes the same output from its parts, batch
first, and records each projection's input ``X`` and output::

    q, k, v = X_q W_q^T + b_q, X_k W_k^T + b_k, X_v W_v^T + b_v   # one matmul when q is k is v
    k, v = [k; bias_k], [v; bias_v]                                 # add_bias_kv
    k, v = [k; 0], [v; 0]                                           # add_zero_attn
    y = softmax(q_h k_h^T / sqrt(d_h) + mask) v_h  for each head h;  out = y W_o^T + b_o

A projection's per-sample weight gradient is ``G_n^T X_n``, summed over the positions of sample
``n`` (:func:`.linear.sequence_sums`); ``in_proj_weight``'s rows are the query, key and value
projections in PyTorch's order. The per-sample gradient of ``bias_k`` (``bias_v``) is the
gradient at the appended key (value) row; ``out_proj`` takes the ``nn.Linear`` rule. Masks
(``attn_mask`` 2-D or 3-D, bool or float, ``key_padding_mask``, ``is_causal``),
``need_weights``, ``average_attn_weights``, ``batch_first`` and ``kdim``/``vdim`` behave as in
the module. A call this does not cover (unbatched inputs, a second call) runs the module's own
forward and its parameters go to ``torch.func``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from online_mas.estimators.common import Call, Rule, Sites
from online_mas.estimators.linear import sequence_sums

__all__ = ["RULE", "attention_forward", "attention_record", "attention_sums", "attention_supported"]


def attention_supported(m: nn.Module) -> bool:
    """``nn.MultiheadAttention`` (or a subclass) that keeps the module's own forward."""
    own = m.__dict__.get("forward")  # an instance's own forward, other than the recording one
    return (isinstance(m, nn.MultiheadAttention) and type(m).forward is nn.MultiheadAttention.forward
            and (own is None or getattr(own, "recording", False)))


def attention_record(
    m: nn.Module, calls: dict[nn.Module, Call], cands: Mapping[nn.Module, list[str]]
) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """The forward that replaces ``m.forward`` while the exact pass records (:class:`.Rule`)."""
    if not isinstance(m, nn.MultiheadAttention):
        raise TypeError(f"attention_record needs an nn.MultiheadAttention, got {type(m).__name__}")
    mha = m

    def forward(query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None,
                average_attn_weights: bool = True, is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        args = (query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal)
        if mha in calls or torch.compiler.is_compiling() or not _covers(mha, *args):
            for part in (mha, mha.out_proj):  # not covered, or called again: no closed form
                if part in calls:
                    calls[part].count += 1
                else:
                    calls[part] = Call(part, (), (), (), rows=-1, count=2)
            return nn.MultiheadAttention.forward(mha, *args)
        return attention_forward(mha, *args, calls=calls, record_out=mha.out_proj in cands)

    forward.recording = True  # type: ignore[attr-defined]
    return forward


def attention_forward(
    m: nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
    *,
    calls: dict[nn.Module, Call] | None = None,
    record_out: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``m(query, key, value, ...)`` computed from its parts (eval mode, batched inputs).

    With ``calls``, records a call of ``m`` (its projections' inputs, outputs and the appended
    bias rows) and, with ``record_out``, one of ``m.out_proj``.
    """
    self_attn, kv_same = query is key and key is value, key is value
    if not m.batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    n, tgt, e = query.shape
    heads, head = m.num_heads, e // m.num_heads
    inputs: list[Tensor] = []
    outputs: list[Tensor] = []
    meta: list[tuple[str, int, int]] = []

    def project(x: Tensor, name: str, w: Tensor, b: Tensor | None, row: int, brow: int) -> Tensor:
        y = F.linear(x, w, b)
        inputs.append(x)
        outputs.append(y)
        meta.append((name, row, brow))
        return y

    b = m.in_proj_bias
    if m._qkv_same_embed_dim:
        w = m.in_proj_weight
        if self_attn:
            q, k, v = project(query, "in_proj_weight", w, b, 0, 0).split(e, -1)
        elif kv_same:
            q = project(query, "in_proj_weight", w[:e], None if b is None else b[:e], 0, 0)
            k, v = project(key, "in_proj_weight", w[e:], None if b is None else b[e:], e, e).split(e, -1)
        else:
            q, k, v = (project(x, "in_proj_weight", w[i * e:(i + 1) * e],
                               None if b is None else b[i * e:(i + 1) * e], i * e, i * e)
                       for i, x in enumerate((query, key, value)))
    else:
        q, k, v = (project(x, f"{c}_proj_weight", getattr(m, f"{c}_proj_weight"),
                           None if b is None else b[i * e:(i + 1) * e], 0, i * e)
                   for i, (c, x) in enumerate(zip("qkv", (query, key, value), strict=True)))
    extra: list[Tensor] = []
    pads = 0
    if m.bias_k is not None and m.bias_v is not None:
        bk, bv = m.bias_k.expand(n, 1, e), m.bias_v.expand(n, 1, e)
        extra += [bk, bv]
        k, v = torch.cat([k, bk], 1), torch.cat([v, bv], 1)
        pads += 1
    if m.add_zero_attn:
        zeros = k.new_zeros(n, 1, e)
        k, v = torch.cat([k, zeros], 1), torch.cat([v, zeros], 1)
        pads += 1
    src = k.shape[1]

    mask = _float_mask(attn_mask, q.dtype)
    pad_mask = _float_mask(key_padding_mask, q.dtype)
    if is_causal and pad_mask is None and not need_weights:
        mask = None  # scaled_dot_product_attention's own causal mask
    else:
        is_causal = False if pad_mask is not None else is_causal
    if mask is not None:
        mask = mask.unsqueeze(0) if mask.dim() == 2 else mask.view(n, heads, tgt, -1)  # (1|N, 1|H, L, S)
        mask = mask.unsqueeze(0) if mask.dim() == 3 else mask
        mask = F.pad(mask, (0, pads)) if pads else mask
    if pad_mask is not None:
        pad_mask = F.pad(pad_mask, (0, pads)) if pads else pad_mask
        pad_mask = pad_mask.view(n, 1, 1, src)
        mask = pad_mask if mask is None else mask + pad_mask
    q, k, v = (t.reshape(n, -1, heads, head).transpose(1, 2) for t in (q, k, v))  # (N, H, len, head)
    weights = None
    if need_weights:
        scores = torch.matmul(q * math.sqrt(1.0 / head), k.transpose(-2, -1))
        if mask is not None:
            scores = scores + mask
        weights = torch.softmax(scores, dim=-1)
        y = torch.matmul(weights, v)
        if average_attn_weights:
            weights = weights.mean(dim=1)
    else:
        y = F.scaled_dot_product_attention(q, k, v, mask, 0.0, is_causal)
    y = y.transpose(1, 2).reshape(n, tgt, e)
    out = F.linear(y, m.out_proj.weight, m.out_proj.bias)
    if calls is not None:
        targets = (*outputs, *extra)
        calls[m] = Call(m, tuple(inputs), targets, _versions(inputs, targets), rows=n,
                        pair=_pairing(tuple(t.detach() for t in inputs), tuple(meta)))
        if record_out:
            calls[m.out_proj] = Call(m.out_proj, (y,), (out,), _versions([y], [out]), rows=n)
    return (out if m.batch_first else out.transpose(0, 1)), weights


def attention_sums(m: nn.Module, a: Sites, g: Sites, acc: dict[str, Tensor]) -> None:
    """Per-sample ``|grad|`` of ``m``'s own parameters summed over the batch, from the recorded
    projections (``a``: their inputs; ``g``: the gradients at their outputs, then at the appended
    ``bias_k``/``bias_v`` rows)."""
    if not isinstance(m, nn.MultiheadAttention):
        raise TypeError(f"attention_sums needs an nn.MultiheadAttention, got {type(m).__name__}")
    own = {k: p for k, p in m._parameters.items() if p is not None}
    for k, p in own.items():
        if k not in acc:
            acc[k] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
    bias = acc.get("in_proj_bias")
    for (name, row, brow), x, gs in zip(a.meta, a.tensors, g.tensors, strict=False):
        w, bsum = sequence_sums(x.float(), gs, bias=bias is not None)
        acc[name][row:row + w.shape[0]] += w
        if bias is not None and bsum is not None:
            bias[brow:brow + bsum.shape[0]] += bsum
    if m.bias_k is not None:
        gk, gv = g.tensors[len(a.meta):]
        acc["bias_k"] += gk.abs().sum(0, keepdim=True)
        acc["bias_v"] += gv.abs().sum(0, keepdim=True)


def _covers(m: nn.MultiheadAttention, query: object, key: object, value: object,
            key_padding_mask: object, need_weights: object, attn_mask: object,
            average_attn_weights: object, is_causal: object) -> bool:
    """Whether :func:`attention_forward` computes this call: batched, well-formed, eval mode
    (anything else runs the module's own forward, which also raises its own errors)."""
    if m.training and m.dropout > 0:
        return False
    if not (isinstance(query, Tensor) and isinstance(key, Tensor) and isinstance(value, Tensor)):
        return False
    if not query.dim() == key.dim() == value.dim() == 3:
        return False
    n_ax = 0 if m.batch_first else 1
    n, tgt, src = query.shape[n_ax], query.shape[1 - n_ax], key.shape[1 - n_ax]
    if key.shape[n_ax] != n or value.shape[n_ax] != n or value.shape[1 - n_ax] != src:
        return False
    if query.shape[-1] != m.embed_dim or key.shape[-1] != m.kdim or value.shape[-1] != m.vdim:
        return False
    if m._qkv_same_embed_dim and key is not value and key.shape != value.shape:
        return False
    if not all(isinstance(f, bool) for f in (need_weights, average_attn_weights, is_causal)):
        return False
    for mask, shapes in ((key_padding_mask, [(n, src)]),
                         (attn_mask, [(tgt, src), (n * m.num_heads, tgt, src)])):
        if mask is None:
            continue
        if not isinstance(mask, Tensor) or tuple(mask.shape) not in shapes:
            return False
        if mask.dtype != torch.bool and not mask.is_floating_point():
            return False
    return not (is_causal and attn_mask is None)  # the module raises: it needs the mask


def _float_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A bool mask (True: not attended) as 0 / -inf in ``dtype``; a float mask as it is."""
    if mask is None or mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))


def _versions(inputs: list[Tensor], targets: list[Tensor] | tuple[Tensor, ...]) -> tuple[int, ...]:
    return tuple(t._version for t in (*inputs, *targets))


def _pairing(inputs: tuple[Tensor, ...], meta: tuple[tuple[str, int, int], ...]
             ) -> Callable[[tuple[Tensor, ...]], tuple[Sites, Sites]]:
    def pair(grads: tuple[Tensor, ...]) -> tuple[Sites, Sites]:
        return Sites(inputs, meta), Sites(grads)

    return pair


RULE = Rule("attention", attention_sums, supported=attention_supported, record=attention_record)
