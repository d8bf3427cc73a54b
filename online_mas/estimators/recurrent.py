"""Recurrent layers: ``nn.LSTM`` (with ``proj_size``), ``nn.GRU`` and ``nn.RNN`` (tanh, relu), stacked,
bidirectional, batch-first or not, with or without biases, with or without a given initial state.

A recurrent weight is shared by every time step, so its per-sample gradient is a sum over steps::

    dW_ih[n] = sum_t dgi_t[n] x_t[n]^T,    dW_hh[n] = sum_t dgh_t[n] h_{t-1}[n]^T

with ``dgi_t`` and ``dgh_t`` the gradients at the input and hidden pre-activations of step ``t``
(PyTorch's gate layout: LSTM ``i, f, g, o``; GRU ``r, z, n``, where the hidden part of ``n`` sits
inside ``r * (W_hn h + b_hn)``, so its gradient is ``r`` times the input part's; LSTM and plain RNN
have ``dgh = dgi``). The module's forward does not expose them, so the rule recomputes the
recurrence step by step from the recorded inputs, runs its backward by hand from the gradients at
the module's outputs (the output sequence, ``h_n`` and ``c_n``), layer by layer and direction by
direction, and forms each weight's per-sample gradients as one batched matmul over time; biases take
``sum_t`` of the same pre-activation gradients. For an LSTM call of one or two samples the
module's own (fused) backward, one sample at a time and seeded with that sample's output gradients,
is cheaper and just as exact (:data:`SAMPLE_BY_SAMPLE`). A ``PackedSequence`` or an unbatched input is not
covered (``torch.func`` takes those parameters); dropout between layers only acts in training mode,
which the estimators never use. Since the rule reads the weights, ``shared_forward`` takes the
separate pass for a model with one of these layers (the optimizer step moves the weights before
``observe``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from online_mas.estimators.common import Rule

__all__ = [
    "PER_SAMPLE_BYTES", "RULE", "SAMPLE_BY_SAMPLE", "rnn_inputs", "rnn_outputs", "rnn_sums", "rnn_supported",
]

PER_SAMPLE_BYTES = 64 * 2**20  # per-sample weight gradients formed at once, at most this many bytes
SAMPLE_BY_SAMPLE = {"LSTM": 2}  # up to this many samples: the module's own backward, sample by sample

_FORWARDS = {nn.LSTM: nn.LSTM.forward, nn.GRU: nn.GRU.forward, nn.RNN: nn.RNN.forward}
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}  # gate blocks in weight_ih


def rnn_supported(m: nn.Module) -> bool:
    """``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` or a subclass that keeps their forward."""
    for cls, fwd in _FORWARDS.items():
        if isinstance(m, cls):
            return type(m).forward is fwd and getattr(m, "mode", None) in _GATES
    return False


def rnn_inputs(
    m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[int, tuple[Tensor, ...]] | None:
    """``(samples, (x, h0[, c0]))`` of a call ``m(input, hx=None)``, or None for a call the rule does
    not cover (a ``PackedSequence``, an unbatched input, anything else passed)."""
    if len(args) > 2 or set(kwargs) - {"input", "hx"} or (args and "input" in kwargs):
        return None
    x = args[0] if args else kwargs.get("input")
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    if not isinstance(x, Tensor) or x.dim() != 3 or not x.is_floating_point():
        return None
    if hx is None:
        states: tuple[Tensor, ...] = ()
    elif isinstance(m, nn.LSTM):
        if not (isinstance(hx, tuple | list) and len(hx) == 2 and all(isinstance(t, Tensor) for t in hx)):
            return None
        states = (hx[0], hx[1])
    elif isinstance(hx, Tensor):
        states = (hx,)
    else:
        return None
    n = int(x.shape[0 if getattr(m, "batch_first", False) else 1])
    if any(t.dim() != 3 or t.shape[1] != n for t in states):
        return None
    return n, (x, *states)


@dataclass
class _Record:
    """What one layer and direction keeps from its forward for its backward (time-major, local
    time: a reverse direction's sequence is flipped)."""

    x: Tensor  # (T, B, I) the layer's input
    h: Tensor  # (T + 1, B, P) h_0 .. h_T
    acts: Tensor  # (T, B, G * H) gate activations
    c: Tensor | None = None  # LSTM: (T + 1, B, H) c_0 .. c_T
    tc: Tensor | None = None  # LSTM: (T, B, H) tanh(c_t)
    m: Tensor | None = None  # LSTM with proj_size: (T, B, H) o_t * tanh(c_t) before the projection
    gh: Tensor | None = None  # GRU: (T, B, 3H) W_hh h_{t-1} + b_hh


def rnn_sums(m: nn.Module, a: tuple[Tensor, ...], g: tuple[Tensor, ...], acc: dict[str, Tensor]) -> None:
    """Per-sample ``sum_n |dtheta_n|`` of every weight and bias of a recurrent module.

    ``a`` is ``(x, h0[, c0])`` (as :func:`rnn_inputs` gives), ``g`` the gradients at its outputs
    ``(output, h_n[, c_n])``. Computed in float64 for a float64 module, else in float32.
    """
    if not isinstance(m, nn.RNNBase):
        raise TypeError(f"rnn_sums needs an nn.LSTM, nn.GRU or nn.RNN, got {type(m).__name__}")
    if a[0].shape[0 if m.batch_first else 1] <= SAMPLE_BY_SAMPLE.get(m.mode, 0):  # measured: faster
        _sample_by_sample(m, a, g, acc)
        return
    records, weights = _replay(m, a)
    layers, dirs = m.num_layers, 2 if m.bidirectional else 1
    out_size = records[0].h.shape[-1]
    dtype = records[0].x.dtype
    dy = (g[0].transpose(0, 1) if m.batch_first else g[0]).to(dtype)
    dhn = g[1].to(dtype)
    dcn = g[2].to(dtype) if m.mode == "LSTM" else None
    mode = m.mode
    for layer in reversed(range(layers)):
        dx: Tensor | None = None
        for d in range(dirs):
            k = layer * dirs + d
            rec, w = records[k], weights[k]
            dyd = dy[..., d * out_size : (d + 1) * out_size]
            dgi, dgh, dh_all = _backward(mode, rec, dyd if d == 0 else dyd.flip(0), dhn[k],
                                         None if dcn is None else dcn[k], w)
            _add(acc, "weight_ih" + w.suffix, _products(dgi, rec.x))
            _add(acc, "weight_hh" + w.suffix, _products(dgh, rec.h[:-1]))
            if m.bias:
                b_ih = dgi.sum(0).abs_().sum(0).float()  # LSTM and RNN: the same for both biases
                b_hh = b_ih.clone() if dgh is dgi else dgh.sum(0).abs_().sum(0).float()
                _add(acc, "bias_ih" + w.suffix, b_ih)
                _add(acc, "bias_hh" + w.suffix, b_hh)
            if rec.m is not None and dh_all is not None:
                _add(acc, "weight_hr" + w.suffix, _products(dh_all, rec.m))
            if layer > 0:  # the gradient at this layer's input: the output gradient of the one below
                dxd = dgi @ w.ih
                dxd = dxd if d == 0 else dxd.flip(0)
                dx = dxd if dx is None else dx.add_(dxd)
        if dx is not None:
            dy = dx


def _sample_by_sample(
    m: nn.RNNBase, a: tuple[Tensor, ...], g: tuple[Tensor, ...], acc: dict[str, Tensor]
) -> None:
    """Each sample's exact gradients from the module's own forward and backward (``m.forward``: no
    hooks), seeded with that sample's output gradients: cheaper than the replay for a few samples."""
    named = [(n, p) for n, p in m.named_parameters(recurse=False) if p.requires_grad]
    bdim = 0 if m.batch_first else 1
    for i in range(a[0].shape[bdim]):
        states = tuple(t[:, i : i + 1] for t in a[1:])
        hx = None if not states else states if m.mode == "LSTM" else states[0]
        with torch.enable_grad():
            y, st = m.forward(a[0].narrow(bdim, i, 1), hx)
            outs = [y, *(st if isinstance(st, tuple) else (st,))]
            seeds = [g[0].narrow(bdim, i, 1), *(t[:, i : i + 1] for t in g[1:])]
            seeds = [s.to(o.dtype) for s, o in zip(seeds, outs, strict=True)]
            grads = torch.autograd.grad(outs, [p for _, p in named], seeds, allow_unused=True)
        for (name, _), gr in zip(named, grads, strict=True):
            if gr is not None:
                _add(acc, name, gr.abs().float())


def rnn_outputs(m: nn.Module, a: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """``(output, h_n[, c_n])`` as the rule recomputes them, step by step, from ``a = (x, h0[, c0])``
    (in the module's layout and the computing dtype): what its backward starts from, to compare with
    the module's own forward.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> lstm, x = nn.LSTM(3, 4, batch_first=True), torch.randn(2, 5, 3)
    >>> y, (h, c) = lstm(x)
    >>> [torch.allclose(p, q, atol=1e-6) for p, q in zip(rnn_outputs(lstm, (x,)), (y, h, c), strict=True)]
    [True, True, True]
    """
    if not isinstance(m, nn.RNNBase):
        raise TypeError(f"rnn_outputs needs an nn.LSTM, nn.GRU or nn.RNN, got {type(m).__name__}")
    records, _ = _replay(m, a)
    dirs = 2 if m.bidirectional else 1
    last = records[-dirs:]
    y = torch.cat([r.h[1:] if d == 0 else r.h[1:].flip(0) for d, r in enumerate(last)], -1)
    outs = [y.transpose(0, 1) if m.batch_first else y, torch.stack([r.h[-1] for r in records])]
    if m.mode == "LSTM":
        outs.append(torch.stack([r.c[-1] for r in records if r.c is not None]))
    return tuple(outs)


def _replay(m: nn.RNNBase, a: tuple[Tensor, ...]) -> tuple[list[_Record], list[_Weights]]:
    """The forward of every layer and direction (layer-major, as in ``h_n``), and their weights."""
    mode, layers, dirs = m.mode, m.num_layers, 2 if m.bidirectional else 1
    out_size = m.proj_size if m.proj_size > 0 else m.hidden_size
    dtype = torch.promote_types(m.all_weights[0][0].dtype, torch.float32)
    x = (a[0].transpose(0, 1) if m.batch_first else a[0]).to(dtype).contiguous()  # time-major
    batch = x.shape[1]
    h0 = a[1].to(dtype) if len(a) > 1 else x.new_zeros(layers * dirs, batch, out_size)
    c0 = a[2].to(dtype) if mode == "LSTM" and len(a) > 2 else x.new_zeros(layers * dirs, batch, m.hidden_size)
    weights = [_Weights.of(m, layer, d, dtype) for layer in range(layers) for d in range(dirs)]
    records: list[_Record] = []
    inp = x
    for layer in range(layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            rec = _forward(mode, inp if d == 0 else inp.flip(0), weights[k], h0[k], c0[k])
            records.append(rec)
            outs.append(rec.h[1:] if d == 0 else rec.h[1:].flip(0))
        inp = outs[0] if dirs == 1 else torch.cat(outs, -1)
    return records, weights


@dataclass
class _Weights:
    """One layer and direction's parameters (detached, in the computing dtype)."""

    suffix: str  # "_l0", "_l1_reverse", ...
    ih: Tensor
    hh: Tensor
    b_ih: Tensor | None
    b_hh: Tensor | None
    hr: Tensor | None  # LSTM with proj_size

    @staticmethod
    def of(m: nn.Module, layer: int, d: int, dtype: torch.dtype) -> _Weights:
        suffix = f"_l{layer}{'_reverse' if d else ''}"

        def get(kind: str) -> Tensor | None:
            p = getattr(m, kind + suffix, None)
            return p.detach().to(dtype) if isinstance(p, Tensor) else None

        ih, hh = get("weight_ih"), get("weight_hh")
        if ih is None or hh is None:
            raise RuntimeError(f"internal error: {type(m).__name__} has no weight_ih/hh{suffix}")
        return _Weights(suffix, ih, hh, get("bias_ih"), get("bias_hh"), get("weight_hr"))


def _forward(mode: str, x: Tensor, w: _Weights, h0: Tensor, c0: Tensor) -> _Record:
    """One layer and direction, step by step, keeping what the backward needs."""
    steps, batch = x.shape[0], x.shape[1]
    w_ih, w_hh, b_ih, b_hh, w_hr = w.ih, w.hh, w.b_ih, w.b_hh, w.hr
    gsize = w_ih.shape[0]
    hid = gsize // _GATES[mode]
    whh_t = w_hh.t()
    bias = b_ih if mode == "GRU" or b_hh is None else (b_ih + b_hh if b_ih is not None else b_hh)
    gi = x.reshape(steps * batch, -1) @ w_ih.t()
    if bias is not None:
        gi += bias
    gi = gi.view(steps, batch, gsize)
    h = x.new_empty(steps + 1, batch, h0.shape[-1])
    h[0] = h0
    acts = x.new_empty(steps, batch, gsize)
    if mode == "LSTM":
        c = x.new_empty(steps + 1, batch, hid)
        c[0] = c0
        tc = x.new_empty(steps, batch, hid)
        mt = x.new_empty(steps, batch, hid) if w_hr is not None else None
        whr_t = w_hr.t() if w_hr is not None else None
        for t in range(steps):
            gates = torch.addmm(gi[t], h[t], whh_t)
            at = acts[t]
            torch.sigmoid(gates, out=at)
            torch.tanh(gates[:, 2 * hid : 3 * hid], out=at[:, 2 * hid : 3 * hid])
            torch.mul(at[:, hid : 2 * hid], c[t], out=c[t + 1])
            c[t + 1].addcmul_(at[:, :hid], at[:, 2 * hid : 3 * hid])
            torch.tanh(c[t + 1], out=tc[t])
            if mt is not None and whr_t is not None:
                torch.mul(at[:, 3 * hid :], tc[t], out=mt[t])
                torch.mm(mt[t], whr_t, out=h[t + 1])
            else:
                torch.mul(at[:, 3 * hid :], tc[t], out=h[t + 1])
        return _Record(x, h, acts, c=c, tc=tc, m=mt)
    if mode == "GRU":
        gh = x.new_empty(steps, batch, gsize)
        for t in range(steps):
            if b_hh is not None:
                torch.addmm(b_hh, h[t], whh_t, out=gh[t])
            else:
                torch.mm(h[t], whh_t, out=gh[t])
            rz = acts[t, :, : 2 * hid]
            torch.add(gi[t, :, : 2 * hid], gh[t, :, : 2 * hid], out=rz)
            rz.sigmoid_()
            n = acts[t, :, 2 * hid :]
            torch.addcmul(gi[t, :, 2 * hid :], rz[:, :hid], gh[t, :, 2 * hid :], out=n)
            n.tanh_()
            torch.lerp(n, h[t], rz[:, hid:], out=h[t + 1])  # (1 - z) n + z h
        return _Record(x, h, acts, gh=gh)
    for t in range(steps):  # plain RNN: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
        torch.addmm(gi[t], h[t], whh_t, out=h[t + 1])
        h[t + 1].tanh_() if mode == "RNN_TANH" else h[t + 1].relu_()
    acts.copy_(h[1:])
    return _Record(x, h, acts)


def _backward(
    mode: str, rec: _Record, dy: Tensor, dh_last: Tensor, dc_last: Tensor | None, w: _Weights
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Backpropagation through time of one layer and direction from the gradients at its outputs
    ``dy`` (every step), ``h_T`` and ``c_T``: the pre-activation gradients ``(dgi, dgh)``, each
    ``(T, B, G * H)``, and (with a projection) the gradient at every ``h_t``."""
    w_hh, w_hr = w.hh, w.hr
    steps, batch, gsize = rec.acts.shape
    acts = rec.acts
    if mode == "LSTM":
        if rec.c is None or rec.tc is None:
            raise RuntimeError("internal error: an LSTM record without cell states")
        hid = gsize // 4
        i, f, gg, o = acts.view(steps, batch, 4, hid).unbind(2)
        tc = rec.tc
        k = torch.addcmul(o, o, tc * tc, value=-1)  # o (1 - tanh(c)^2): dc_t += dm_t * k_t
        s = acts.new_empty(steps, batch, 3, hid)  # d(i, f, g)_pre = dc_t * s_t
        torch.mul(gg, torch.addcmul(i, i, i, value=-1), out=s[:, :, 0])  # g i (1 - i)
        torch.mul(rec.c[:-1], torch.addcmul(f, f, f, value=-1), out=s[:, :, 1])  # c_{t-1} f (1 - f)
        torch.addcmul(i, i, gg * gg, value=-1, out=s[:, :, 2])  # i (1 - g^2)
        ro = tc * torch.addcmul(o, o, o, value=-1)  # do_pre = dm * tanh(c) o (1 - o)
        dp = acts.new_empty(steps, batch, gsize)
        dh_all = acts.new_empty(steps, batch, dh_last.shape[-1]) if w_hr is not None else None
        dh = dh_last + dy[-1]
        dc = dc_last if dc_last is not None else torch.zeros_like(tc[0])
        for t in reversed(range(steps)):
            if dh_all is not None and w_hr is not None:
                dh_all[t] = dh
                dm = dh @ w_hr
            else:
                dm = dh
            dc = torch.addcmul(dc, dm, k[t])
            torch.mul(dc.unsqueeze(1), s[t], out=dp[t, :, : 3 * hid].view(batch, 3, hid))
            torch.mul(dm, ro[t], out=dp[t, :, 3 * hid :])
            if t > 0:
                dh = torch.addmm(dy[t - 1], dp[t], w_hh)
                dc = dc * f[t]
        return dp, dp, dh_all
    if mode == "GRU":
        if rec.gh is None:
            raise RuntimeError("internal error: a GRU record without hidden pre-activations")
        hid = gsize // 3
        r, z, n = acts.view(steps, batch, 3, hid).unbind(2)
        pn = (1 - z) * (1 - n * n)  # dn_pre = dh * pn
        pz = (rec.h[:-1] - n) * z * (1 - z)  # dz_pre = dh * pz
        pr = pn * rec.gh[..., 2 * hid :] * r * (1 - r)  # dr_pre = dh * pr
        q = torch.stack((pr, pz, pn * r), 2)  # dgh = dh * q (the hidden part of n is scaled by r)
        dgh = acts.new_empty(steps, batch, gsize)
        dhs = acts.new_empty(steps, batch, hid)
        dh = dh_last + dy[-1]
        for t in reversed(range(steps)):
            dhs[t] = dh
            torch.mul(dh.unsqueeze(1), q[t], out=dgh[t].view(batch, 3, hid))
            if t > 0:
                dh = torch.addcmul(dy[t - 1], dh, z[t])
                dh.addmm_(dgh[t], w_hh)
        dgi = (dhs.unsqueeze(2) * torch.stack((pr, pz, pn), 2)).view(steps, batch, gsize)
        return dgi, dgh, None
    deriv = 1 - acts * acts if mode == "RNN_TANH" else (acts > 0).to(acts.dtype)
    dp = acts.new_empty(steps, batch, gsize)
    dh = dh_last + dy[-1]
    for t in reversed(range(steps)):
        torch.mul(dh, deriv[t], out=dp[t])
        if t > 0:
            dh = torch.addmm(dy[t - 1], dp[t], w_hh)
    return dp, dp, None


def _products(dg: Tensor, x: Tensor) -> Tensor:
    """``sum_n |sum_t dg[t, n] x[t, n]^T|`` (float32), ``dg`` ``(T, B, G)``, ``x`` ``(T, B, K)``;
    per-sample gradients formed a block of samples at a time (:data:`PER_SAMPLE_BYTES`)."""
    batch, gsize, ksize = dg.shape[1], dg.shape[2], x.shape[2]
    block = max(1, PER_SAMPLE_BYTES // (gsize * ksize * dg.element_size()))
    total = dg.new_zeros(gsize, ksize)
    for s in range(0, batch, block):
        per = torch.bmm(dg[:, s : s + block].permute(1, 2, 0), x[:, s : s + block].transpose(0, 1))
        total += per.abs_().sum(0)
    return total.float()


def _add(acc: dict[str, Tensor], key: str, t: Tensor) -> None:
    prev = acc.get(key)
    acc[key] = t if prev is None else prev.add_(t)


RULE = Rule("recurrent", rnn_sums, supported=rnn_supported, inputs=rnn_inputs)
