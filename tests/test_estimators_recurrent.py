"""The closed-form rule of nn.LSTM, nn.GRU and nn.RNN against a per-sample autograd loop."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from models import spy_fallback
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

import online_mas as om
from online_mas.estimators import importance_sums, recurrent
from online_mas.estimators.recurrent import rnn_inputs, rnn_outputs
from online_mas.estimators.shared import train_dependent

exact = sys.modules["online_mas.estimators.exact"]
IN, HID, STEPS = 3, 4, 5


class Seq(nn.Module):
    """A recurrent body and a head on the mean of the output sequence and the last layer's final
    hidden (and cell) state, so that gradients reach every output of the module. With ``state``
    the initial state comes in batch first (``model(x, h0[, c0])``)."""

    def __init__(self, body: nn.RNNBase, *, state: bool = False, hx_keyword: bool = False) -> None:
        super().__init__()
        self.body, self.state, self.hx_keyword = body, state, hx_keyword
        dirs = 2 if body.bidirectional else 1
        out = body.proj_size or body.hidden_size
        width = dirs * out + out + (body.hidden_size if isinstance(body, nn.LSTM) else 0)
        self.head = nn.Linear(width, 3)

    def forward(self, x: Tensor, *h: Tensor) -> Tensor:
        b = self.body
        x = x if b.batch_first else x.transpose(0, 1)
        hx: object = None
        if h:
            states = tuple(t.transpose(0, 1).contiguous() for t in h)
            hx = states if isinstance(b, nn.LSTM) else states[0]
        y, st = b(x, hx=hx) if self.hx_keyword else b(x, hx)
        feats = [y.mean(1 if b.batch_first else 0)]
        feats += [t[-1] for t in st] if isinstance(st, tuple) else [st[-1]]
        return self.head(torch.cat(feats, -1))


def loop(model: nn.Module, *x: Tensor) -> dict[str, Tensor]:
    """The independent reference: one autograd call per sample, |grad| averaged (float32)."""
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    acc = {n: torch.zeros_like(p) for n, p in named}
    n_samples = x[0].shape[0]
    for i in range(n_samples):
        out = model(*(t[i : i + 1] for t in x))
        grads = torch.autograd.grad(out.pow(2).sum(), [p for _, p in named], allow_unused=True)
        for (n, _), g in zip(named, grads, strict=True):
            if g is not None:
                acc[n] += g.abs()
    return {n: (a / n_samples).float() for n, a in acc.items()}


def assert_close(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-7), (k, (a[k] - b[k]).abs().max())


SETTINGS = {
    "one layer": {},
    "stacked bidirectional": {"num_layers": 2, "bidirectional": True},
    "time first": {"batch_first": False},
    "no bias, stacked": {"bias": False, "num_layers": 2},
}
CELLS = {
    "lstm": (nn.LSTM, {}),
    "gru": (nn.GRU, {}),
    "rnn-tanh": (nn.RNN, {"nonlinearity": "tanh"}),
    "rnn-relu": (nn.RNN, {"nonlinearity": "relu"}),
}


def build(cell: str, setting: dict[str, object], dtype: torch.dtype, **kw: bool) -> Seq:
    torch.manual_seed(0)
    cls, extra = CELLS[cell]
    opts = {"batch_first": True, **extra, **setting}
    return Seq(cls(IN, HID, **opts), **kw).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch", [1, 6])
@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_recurrent_rule_equals_the_per_sample_loop(
    cell: str, setting: str, batch: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build(cell, SETTINGS[setting], dtype)
    x = torch.randn(batch, STEPS, IN, dtype=dtype, generator=torch.Generator().manual_seed(1))
    calls = spy_fallback(monkeypatch)
    got = om.importance(model, x)
    assert calls == []  # every parameter on a closed form
    assert_close(got, loop(model, x))
    assert {n: r for n, r in om.plan(model, x).items() if n.startswith("body.")} == {
        "body." + n: "recurrent" for n, _ in model.body.named_parameters()
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_with_projections_equals_the_per_sample_loop(
    batch: int, layers: int, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    model = Seq(nn.LSTM(IN, HID, num_layers=layers, proj_size=2, bidirectional=layers == 2,
                        batch_first=True)).to(dtype)
    x = torch.randn(batch, STEPS, IN, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # oneDNN has no projections: PyTorch says so
        got, ref, plan = om.importance(model, x), loop(model, x), om.plan(model, x)
    assert_close(got, ref)
    assert plan["body.weight_hr_l0"] == "recurrent"


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn-relu"])
def test_both_exact_forms_give_the_same_sums(cell: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay with its own backward and the module's backward sample by sample (small batches)."""
    model = build(cell, {"num_layers": 2, "bidirectional": True}, torch.float64, state=True)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, STEPS, IN, dtype=torch.float64, generator=g)
    h0 = torch.randn(3, 4, HID, dtype=torch.float64, generator=g)
    inputs = (x, h0, torch.randn_like(h0)) if cell == "lstm" else (x, h0)
    reference = loop(model, *inputs)
    for small in (0, 3):
        monkeypatch.setattr(recurrent, "SAMPLE_BY_SAMPLE", {model.body.mode: small})
        assert_close(om.importance(model, inputs), reference)


@pytest.mark.parametrize("hx_keyword", [False, True], ids=["hx-positional", "hx-keyword"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_an_initial_state_given_as_input_is_used(cell: str, hx_keyword: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    model = build(cell, {"num_layers": 2, "bidirectional": True}, torch.float64, state=True,
                  hx_keyword=hx_keyword)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, STEPS, IN, dtype=torch.float64, generator=g)
    h0 = torch.randn(4, 4, HID, dtype=torch.float64, generator=g)  # batch first: (B, layers * dirs, H)
    inputs = (x, h0, torch.randn_like(h0)) if cell == "lstm" else (x, h0)
    calls = spy_fallback(monkeypatch)
    got = om.importance(model, inputs, chunk_size=3)  # chunks of 3 and 1
    assert calls == []
    assert_close(got, loop(model, *inputs))
    without = om.importance(model, (x, torch.zeros_like(h0), torch.zeros_like(h0))[: len(inputs)])
    assert not torch.allclose(got["body.weight_hh_l0"], without["body.weight_hh_l0"])  # h0 matters


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn-tanh"])
def test_the_recomputed_recurrence_is_the_modules_own_forward(cell: str) -> None:
    torch.manual_seed(0)
    cls, extra = CELLS[cell]
    for opts in ({"batch_first": True}, {"num_layers": 3, "bidirectional": True}):
        m = cls(IN, HID, **extra, **opts)
        x = torch.randn(2, STEPS, IN) if opts.get("batch_first") else torch.randn(STEPS, 2, IN)
        h0 = torch.randn(m.num_layers * (2 if m.bidirectional else 1), 2, HID)
        hx = (h0, torch.randn_like(h0)) if cls is nn.LSTM else h0
        y, st = m(x, hx)
        theirs = (y, *st) if cls is nn.LSTM else (y, st)
        got = rnn_inputs(m, (x, hx), {})
        assert got is not None and got[0] == 2
        mine = rnn_outputs(m, got[1])
        assert len(mine) == len(theirs)
        for p, q in zip(mine, theirs, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_only_the_outputs_that_are_used_get_gradients() -> None:
    """The head reads c_n only: the output sequence and h_n get zero gradients."""
    torch.manual_seed(0)

    class CellOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.head = nn.LSTM(IN, HID, num_layers=2, batch_first=True), nn.Linear(HID, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.lstm(x)[1][1][-1])

    model = CellOnly()
    x = torch.randn(5, STEPS, IN)
    assert_close(om.importance(model, x), loop(model, x))


def test_layers_below_and_above_the_rnn_still_get_their_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """An embedding below the GRU: its rule needs the gradient that flows through the recurrence."""
    torch.manual_seed(0)

    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.gru = nn.Embedding(11, IN), nn.GRU(IN, HID, batch_first=True, bidirectional=True)
            self.out = nn.Linear(2 * HID, 3)

        def forward(self, idx: Tensor) -> Tensor:
            return self.out(torch.relu(self.gru(self.emb(idx))[0]))  # (B, T, 3): every step scored

    model = Tagger()
    idx = torch.randint(0, 11, (6, STEPS), generator=torch.Generator().manual_seed(3))
    calls = spy_fallback(monkeypatch)
    assert_close(om.importance(model, idx), loop(model, idx))
    assert calls == []


def test_packed_sequences_and_overridden_forwards_fall_back_to_torch_func() -> None:
    torch.manual_seed(0)

    class Packed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.head = nn.LSTM(IN, HID, batch_first=True), nn.Linear(HID, 2)

        def forward(self, x: Tensor) -> Tensor:
            lengths = torch.full((x.shape[0],), x.shape[1])
            _, (h, _) = self.lstm(pack_padded_sequence(x, lengths, batch_first=True))
            return self.head(h[-1])

    class MyGRU(nn.GRU):
        def forward(self, x: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:  # type: ignore[override]
            y, h = super().forward(x * 2, hx)
            return y, h

    x = torch.randn(3, STEPS, IN)
    packed = Packed()
    assert set(om.plan(packed, x).values()) == {"torch.func", "linear"}
    assert om.plan(packed, x)["lstm.weight_ih_l0"] == "torch.func"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # vmap cannot: the per-sample loop
        assert_close(om.importance(packed, x), loop(packed, x))
    custom = Seq(MyGRU(IN, HID, batch_first=True))
    assert om.plan(custom)["body.weight_ih_l0"] == "torch.func"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert_close(om.importance(custom, x), loop(custom, x))


def test_rnn_inputs_covers_batched_calls_only() -> None:
    lstm, gru = nn.LSTM(IN, HID), nn.GRU(IN, HID, batch_first=True)
    x = torch.randn(STEPS, 2, IN)
    h = torch.zeros(1, 2, HID)
    assert rnn_inputs(lstm, (x,), {}) == (2, (x,))
    got = rnn_inputs(lstm, (x, (h, h)), {})
    assert got is not None and got[0] == 2 and len(got[1]) == 3
    assert rnn_inputs(lstm, (), {"input": x, "hx": (h, h)}) is not None
    assert rnn_inputs(lstm, (x[:, 0],), {}) is None  # unbatched
    assert rnn_inputs(lstm, (x, h), {}) is None  # an LSTM state is a pair
    xb = x.transpose(0, 1)
    got = rnn_inputs(gru, (xb, h), {})
    assert got is not None and got[0] == 2 and got[1][0] is xb and got[1][1] is h
    assert rnn_inputs(gru, (x.transpose(0, 1), torch.zeros(1, 3, HID)), {}) is None  # batch sizes differ


def _seq_batch(g: torch.Generator) -> Tensor:
    return torch.randn(6, STEPS, IN, generator=g)


def test_shared_forward_takes_the_separate_pass_for_rnns() -> None:
    """The rule recomputes the recurrence from the weights, which the step changes before observe:
    the hooks are never armed, and the separate pass gives the importance at the new weights."""
    model = build("lstm", {"num_layers": 2}, torch.float32)
    mas = om.OnlineMAS(model, lam=0.5, config=om.MASConfig(share=1.0, shared_forward=True), detector=None)
    assert not mas._seen.shared.armed  # type: ignore[union-attr]
    assert "LSTM rule needs the weights" in mas._seen.shared.why_not  # type: ignore[union-attr]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = _seq_batch(torch.Generator().manual_seed(4))
    opt.zero_grad()
    F.cross_entropy(model(x), torch.zeros(6, dtype=torch.long)).backward()
    opt.step()
    mas.observe(x)
    ref, _, _ = importance_sums(model, x)
    for name, value in mas.running_omega.items():
        torch.testing.assert_close(value, ref[name] / 6)


def test_a_stacked_rnns_own_dropout_counts_as_training_dependent() -> None:
    model = build("gru", {"num_layers": 2, "dropout": 0.5}, torch.float32)
    assert train_dependent(model) is model.body  # dropout between its layers, in training mode
    assert train_dependent(build("gru", {"dropout": 0.0, "num_layers": 2}, torch.float32)) is None
    model.eval()
    assert train_dependent(model) is None


def test_compiled_model_with_an_lstm_gives_the_uncompiled_importance() -> None:
    model = build("lstm", {"num_layers": 2, "bidirectional": True}, torch.float32)
    x = torch.randn(4, STEPS, IN)
    reference = loop(model, x)
    first = torch.compile(model, backend="aot_eager")
    assert_close(om.importance(first, x), reference)  # the library's pass is the first to run it
    compiled = torch.compile(model, backend="aot_eager")
    compiled(x).sum().backward()  # the user's own forward compiled it first
    model.zero_grad(set_to_none=True)
    assert_close(om.importance(compiled, x), reference)
    assert om.plan(compiled, x) == om.plan(model, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_on_cuda_the_rule_equals_the_per_sample_loop(cell: str) -> None:
    model = build(cell, {"num_layers": 2, "bidirectional": True}, torch.float64).cuda()
    x = torch.randn(6, STEPS, IN, dtype=torch.float64, device="cuda")
    got = om.importance(model, x)
    assert all(t.is_cuda for t in got.values())
    assert_close(got, loop(model, x))
    assert set(om.plan(model, x).values()) == {"recurrent", "linear"}
