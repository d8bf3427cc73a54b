"""nn.MultiheadAttention and the transformer layers: the closed form against the per-sample loop."""

from __future__ import annotations

import sys

import pytest
import torch
from models import loop_reference
from torch import Tensor, nn

import online_mas as om
from online_mas.estimators.attention import attention_forward

exact = sys.modules["online_mas.estimators.exact"]


def _assert_close(got: dict[str, Tensor], ref: dict[str, Tensor]) -> None:
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.allclose(got[k].to(ref[k].dtype), ref[k], rtol=1e-4, atol=1e-6), (
            k, (got[k] - ref[k]).abs().max())


def _no_torch_func(model: nn.Module, x: Tensor, monkeypatch: pytest.MonkeyPatch) -> dict[str, Tensor]:
    """``om.importance`` with the torch.func fallback forbidden."""
    def refuse(model, named, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError(f"torch.func was used for {sorted(named)}")

    monkeypatch.setattr(exact, "func_sums", refuse)
    return om.importance(model, x, chunk_size=3)


class Attend(nn.Module):
    """An MHA over a batch-first input ``(N, L, 8)``: self-attention, cross-attention (key is
    value, from a linear map of the input) or separate key and value (``kdim``/``vdim`` 6)."""

    def __init__(self, mode: str, *, batch_first: bool = True, mask: str = "", need_weights: bool = False,
                 average_attn_weights: bool = True, **kw: object) -> None:
        super().__init__()
        kdim = 6 if mode == "separate" else None
        self.mha = nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim, **kw)  # type: ignore[arg-type]
        self.k = nn.Linear(8, kdim or 8) if mode != "self" else None
        self.v = nn.Linear(8, kdim or 8) if mode == "separate" else None
        self.mode, self.mask, self.need_weights, self.average = mode, mask, need_weights, average_attn_weights

    def forward(self, x: Tensor) -> Tensor:
        bf = self.mha.batch_first
        seq = (lambda t: t) if bf else (lambda t: t.transpose(0, 1))
        q = seq(x)
        k = v = q
        if self.k is not None:
            k = v = seq(self.k(x))
        if self.v is not None:
            v = seq(self.v(x))
        kw: dict[str, object] = {"need_weights": self.need_weights, "average_attn_weights": self.average}
        length = x.shape[1]
        if self.mask == "causal":
            kw |= {"attn_mask": nn.Transformer.generate_square_subsequent_mask(length, dtype=x.dtype),
                   "is_causal": True}
        elif self.mask == "bool":
            kw["attn_mask"] = torch.rand(length, length, generator=torch.Generator().manual_seed(0)) > 0.7
        elif self.mask == "padding":
            kw["key_padding_mask"] = x[..., 0] > 1.0  # per sample: some keys masked
        out, weights = self.mha(q, k, v, **kw)
        y = seq(out).mean(1)
        return y if weights is None else y + weights.flatten(1)[:, :8]


CONFIGS = [
    ("self", {}),
    ("self", {"mask": "causal"}),
    ("self", {"mask": "padding", "need_weights": True}),
    ("self", {"batch_first": False, "mask": "bool"}),
    ("self", {"add_bias_kv": True, "add_zero_attn": True, "mask": "causal", "need_weights": True}),
    ("self", {"bias": False, "add_bias_kv": True}),
    ("cross", {"mask": "padding"}),
    ("cross", {"batch_first": False, "need_weights": True, "average_attn_weights": False}),
    ("separate", {"add_bias_kv": True, "mask": "bool"}),
    ("separate", {"bias": False, "batch_first": False, "add_zero_attn": True}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize(("mode", "kw"), CONFIGS, ids=[f"{m}-{'-'.join(kw) or 'plain'}" for m, kw in CONFIGS])
def test_attention_rule_equals_per_sample_loop(mode: str, kw: dict, batch: int, dtype: torch.dtype,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = Attend(mode, **kw).to(dtype)
    x = torch.randn(batch, 5, 8, dtype=dtype)
    reference = loop_reference(model, x)
    _assert_close(_no_torch_func(model, x, monkeypatch), reference)
    rules = om.plan(model, x)
    assert {rules[n] for n in rules if n.startswith("mha.") and "out_proj" not in n} == {"attention"}
    assert rules["mha.out_proj.weight"] == "linear"


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("average", [True, False])
def test_the_recomputed_forward_equals_the_module(batch_first: bool, need_weights: bool,
                                                  average: bool) -> None:
    torch.manual_seed(0)
    for kw in ({}, {"add_bias_kv": True, "add_zero_attn": True}, {"kdim": 6, "vdim": 5, "bias": False}):
        m = nn.MultiheadAttention(8, 4, batch_first=batch_first, **kw).eval()  # type: ignore[arg-type]
        shape = (3, 7) if batch_first else (7, 3)
        q = torch.randn(*shape, 8)
        k, v = torch.randn(4, 3, m.kdim), torch.randn(4, 3, m.vdim)
        if batch_first:
            k, v = k.transpose(0, 1), v.transpose(0, 1)
        pad = torch.zeros(3, 4, dtype=torch.bool)
        pad[0, 1] = True
        mask = torch.randn(3 * 4, 7, 4)  # a 3-D float mask, per sample and head
        for pad_mask, attn_mask in ((pad, None), (None, mask)):
            args = (q, k, v, pad_mask, need_weights, attn_mask, average)
            with torch.no_grad():
                want, want_w = m(*args)
                got, got_w = attention_forward(m, *args)
            assert torch.allclose(got, want, atol=1e-6)
            assert (got_w is None) == (want_w is None)
            if want_w is not None and got_w is not None:
                assert torch.allclose(got_w, want_w, atol=1e-6)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("batch", [1, 4])
def test_transformer_layers_take_the_closed_forms(norm_first: bool, batch_first: bool, batch: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            kw = {"dropout": 0.1, "norm_first": norm_first, "batch_first": batch_first}
            self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, **kw),  # type: ignore[arg-type]
                                             1, norm=nn.LayerNorm(8), enable_nested_tensor=False)
            self.dec = nn.TransformerDecoderLayer(8, 2, 16, **kw)  # type: ignore[arg-type]

        def forward(self, x: Tensor) -> Tensor:
            mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
            h = x if batch_first else x.transpose(0, 1)  # (L, N, E) when not batch first
            memory = self.enc(h, mask=mask, is_causal=True)
            out = self.dec(h, memory, tgt_mask=mask, tgt_is_causal=True)
            return (out if batch_first else out.transpose(0, 1)).mean(1)

    torch.manual_seed(0)
    model = Block()
    x = torch.randn(batch, 6, 8)
    got = _no_torch_func(model, x, monkeypatch)  # in eval mode: no dropout
    assert model.training  # the flags are restored
    _assert_close(got, loop_reference(model, x))


def test_calls_it_does_not_cover_go_to_torch_func() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: Tensor) -> Tensor:
            h = self.mha(x, x, x, need_weights=False)[0]
            return self.mha(h, h, h, need_weights=False)[0].mean(1)

    torch.manual_seed(0)
    x = torch.randn(3, 4, 8)
    model = Twice()
    _assert_close(om.importance(model, x), loop_reference(model, x))
    assert set(om.plan(model, x).values()) == {"torch.func"}  # called twice: out_proj too
    assert "forward" not in model.mha.__dict__  # the recording forward is removed again


def test_float64_output_after_a_final_norm_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose output is a LayerNorm's: ``||LN(h)||^2`` barely depends on ``h``, so every
    gradient before the norm is a cancellation, which a float32 seed (``2 f(x)``) would turn into
    relative errors of 1e-3 in a float64 model (and in float32 both the loop and the closed form
    are rounding noise there: no float32 comparison of such a model means anything)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
                          nn.Flatten()).double()
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    got, ref = _no_torch_func(model, x, monkeypatch), loop_reference(model, x)
    for k in ref:  # float32 sums: 1e-7 relative; the float32 seed gave 1e-3
        assert torch.allclose(got[k].double(), ref[k], rtol=1e-5, atol=1e-5 * float(ref[k].abs().max())), k


def test_compiled_transformer_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)  # a head after the layer, as in any real model (see the test above)
    model = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), nn.Flatten(),
                          nn.Linear(32, 5))
    x = torch.randn(3, 4, 8)
    reference = loop_reference(model, x)
    compiled = torch.compile(model, backend="aot_eager")
    compiled(x).sum().backward()  # the user's compiled forward ran first
    model.zero_grad(set_to_none=True)
    _assert_close(_no_torch_func(compiled, x, monkeypatch), reference)
