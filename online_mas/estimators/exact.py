"""The exact estimator: closed-form per-sample sums from each layer's input and output gradient.

One forward records the inputs of the layers that have a rule (:mod:`.registry`); one backward of
``sum_n ||f(x_n)||^2`` gives every sample's gradient at those layers' outputs; the rules turn the
pairs into per-sample sums. Parameters without a rule (attention projections, custom parameters,
layers called twice, tied weights) get theirs from ``torch.func`` (:func:`.func.func_sums`).
Batches larger than ``chunk`` go through in chunks, so transient memory does not grow with the batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from online_mas.estimators.common import (
    OutputFn,
    check_finite_sums,
    forward,
    sq_norm_total,
)
from online_mas.estimators.func import func_sums
from online_mas.estimators.inputs import Inputs, batch_size, split
from online_mas.estimators.registry import rule_for

__all__ = [
    "Call",
    "Pair",
    "covered",
    "exact_sums",
    "fast_candidates",
    "output_grads",
    "pair_sums",
    "record_hook",
    "recording",
    "versions",
]

Pair = tuple[nn.Module, Tensor | tuple[Tensor, ...], Tensor | tuple[Tensor, ...]]
"""A layer, its input, the gradient at its output (tuples of them for a rule with ``inputs``)."""
FACTOR_BOUND = 1e36  # |G|^T |A| entries stay below this, far from float32's 3.4e38


@dataclass
class Call:
    """A recorded call of a layer: its tensor inputs, output, the inputs' versions, how often.

    For a rule with ``inputs`` (several tensors in or out), ``outputs`` holds every tensor the
    module returned and ``samples`` the number of samples the rule found in the call.
    """

    module: nn.Module
    inputs: tuple[Tensor, ...]
    output: Tensor
    versions: tuple[int, ...]
    count: int = 1
    outputs: tuple[Tensor, ...] = ()
    samples: int | None = None


def own_params(m: nn.Module) -> dict[str, nn.Parameter]:
    """A module's own parameters (``parameters(recurse=False)`` without its generator overhead)."""
    return {k: p for k, p in m._parameters.items() if p is not None}


def fast_candidates(model: nn.Module, named: Mapping[str, Tensor]) -> dict[nn.Module, list[str]]:
    """Modules with a rule whose trainable parameters belong to them alone, with those names."""
    mods = list(model.modules())
    owners: dict[int, int] = {}
    for m in mods:
        for p in own_params(m).values():
            owners[id(p)] = owners.get(id(p), 0) + 1
    name_of = {id(p): n for n, p in named.items()}
    cands: dict[nn.Module, list[str]] = {}
    for m in mods:
        if rule_for(m) is None:
            continue
        own = [p for p in own_params(m).values() if id(p) in name_of]
        if own and all(owners[id(p)] == 1 for p in own):
            cands[m] = [name_of[id(p)] for p in own]
    return cands


Hook = Callable[[nn.Module, tuple[object, ...], dict[str, object], object], object]


def record_hook(calls: dict[nn.Module, Call]) -> Hook:
    """A forward hook (``with_kwargs=True``) that records each module's first call (input, output)
    into ``calls``."""

    def hook(m: nn.Module, inputs: tuple[object, ...], kwargs: dict[str, object], out: object) -> object:
        if torch.compiler.is_compiling():  # traced into a compiled graph: record nothing
            return None
        if m in calls:
            calls[m].count += 1
            return None
        rule = rule_for(m)
        if rule is not None and rule.inputs is not None:
            got, copied = rule.inputs(m, inputs, kwargs), _cloned(out)
            if got is None or copied is None:
                calls[m] = Call(m, (), torch.empty(0), (), count=2)  # not covered
                return None
            samples, tensors = got
            calls[m] = Call(m, tensors, copied[1][0], tuple(t._version for t in tensors),
                            outputs=tuple(copied[1]), samples=samples)
            return copied[0]
        tensors = tuple(t for t in inputs if isinstance(t, Tensor))
        if not isinstance(out, Tensor) or not tensors:
            calls[m] = Call(m, (), torch.empty(0), (), count=2)  # unsupported: not covered
            return None
        calls[m] = Call(m, tensors, out, tuple(t._version for t in tensors))
        return out.clone()  # later in-place ops (ReLU(inplace=True)) must not touch the record

    return hook


@contextlib.contextmanager
def recording(cands: Mapping[nn.Module, list[str]]) -> Iterator[dict[nn.Module, Call]]:
    calls: dict[nn.Module, Call] = {}
    hook = record_hook(calls)
    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in cands]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def covered(calls: dict[nn.Module, Call], rows: int) -> list[Call]:
    """The recorded calls the rules can use: called once, differentiable, inputs untouched since
    (no in-place op changed them), batch dimension first."""
    return [
        c
        for c in calls.values()
        if c.count == 1
        and all(o.requires_grad for o in c.outputs or (c.output,))
        and all(t._version == v for t, v in zip(c.inputs, c.versions, strict=True))
        and (c.inputs[0].shape[:1] == (rows,) if c.samples is None else c.samples == rows)
    ]


def output_grads(calls: list[Call], out: Tensor, *, retain_graph: bool = False) -> list[Pair]:
    """The gradient of ``sum_n ||out_n||^2`` at each covered layer's output, with the layer's input.

    ``retain_graph`` keeps ``out``'s graph for a backward that comes later (someone else's).
    """
    targets = [t for c in calls for t in c.outputs or (c.output,)]
    grads = iter(torch.autograd.grad(sq_norm_total(out), targets, allow_unused=True,
                                     retain_graph=retain_graph))
    pairs: list[Pair] = []
    for c in calls:
        gs = tuple(torch.zeros_like(t) if g is None else g.detach()
                   for t, g in zip(c.outputs or (c.output,), grads, strict=False))
        if c.outputs:  # a rule with ``inputs``: every input, every output gradient
            pairs.append((c.module, tuple(t.detach() for t in c.inputs), gs))
        else:
            pairs.append((c.module, c.inputs[0].detach(), gs[0]))
    return pairs


def versions(a: Tensor | tuple[Tensor, ...]) -> tuple[int, ...]:
    """The version counters of a pair's input(s), to see later whether they were changed in place."""
    return tuple(t._version for t in (a if isinstance(a, tuple) else (a,)))


def pair_sums(
    cands: Mapping[nn.Module, list[str]],
    pairs: list[Pair],
    sums: dict[str, Tensor],
    *,
    scale: float = 1.0,
    chunk: int | None = None,
) -> None:
    """Add each layer's per-sample sums (times ``scale``) to ``sums``; ``chunk`` splits the
    products into row blocks (transient memory)."""
    for m, a, g in pairs:
        if chunk is None or not isinstance(a, Tensor) or not isinstance(g, Tensor) or a.shape[0] <= chunk:
            _layer(m, cands[m], a, g, scale, sums)
        else:
            for ac, gc in zip(a.split(chunk), g.split(chunk), strict=True):
                _layer(m, cands[m], ac, gc, scale, sums)


def factored_sums(
    cands: Mapping[nn.Module, list[str]],
    pairs: list[Pair],
    sums: dict[str, Tensor],
    *,
    chunk: int | None = None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Like :func:`pair_sums`, but the weights whose rule has ``factors`` come back as
    ``(|G|, |A|)`` instead of being summed (an accumulator folds them in place).

    Only when every factored product is bounded by ``rows * max|G| * max|A| < 1e36`` (each layer on
    its own: a nan fails its comparison); otherwise every sum is formed. The sums are checked finite
    (:class:`~online_mas.estimators.common.NonFiniteError`), so what is returned can be folded.
    """
    factors: dict[str, tuple[Tensor, Tensor]] = {}
    extra: dict[str, Tensor] = {}
    rest: list[Pair] = []
    for m, a, g in pairs:
        rule = rule_for(m)
        names = {n.rsplit(".", 1)[-1]: n for n in cands[m]}
        f = (rule.factors(m, a, g) if rule is not None and rule.factors and "weight" in names
             and isinstance(a, Tensor) and isinstance(g, Tensor) else None)
        if f is None:
            rest.append((m, a, g))
            continue
        ga, aa = f
        factors[names["weight"]] = (ga, aa)
        if "bias" in names:
            extra[names["bias"]] = ga.sum(0)  # sum_n |g_n|, as the rule gives
    if factors:
        peaks = torch.stack([t.amax() for g, a in factors.values() for t in (g, a)]).tolist()
        rows = max(a.shape[0] for _, a in factors.values())
        if not all(g * a * rows < FACTOR_BOUND for g, a in zip(peaks[::2], peaks[1::2], strict=True)):
            factors, extra, rest = {}, {}, list(pairs)  # possibly not finite: form every sum
    pair_sums(cands, rest, extra, chunk=chunk)
    sums.update(extra)
    check_finite_sums(sums)
    return factors


def exact_sums(
    model: nn.Module,
    named: Mapping[str, Tensor],
    x: Inputs,
    fn: OutputFn,
    chunk: int,
    *,
    scale: float = 1.0,
    factor: bool = False,
) -> tuple[dict[str, Tensor], Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """Rules where they apply, torch.func for the rest; every result is multiplied by ``scale``.

    The batch goes through ``chunk`` samples at a time (forward, backward, per-sample sums),
    accumulating in place; samples are independent in eval mode, so chunking does not change the
    result. ``factor`` (with ``scale == 1``): a batch of one chunk returns the ``nn.Linear``
    weights as factors (:func:`factored_sums`). Returns ``(sums, output, factors)``; the sums are
    checked finite only when factors were asked for (the caller checks otherwise).
    """
    cands = fast_candidates(model, named)
    sums: dict[str, Tensor] = {}
    hits: dict[str, int] = {}
    pieces = split(x, chunk)
    keep = factor and len(pieces) == 1 and scale == 1.0
    pairs: list[Pair] = []
    outs = []
    with recording(cands) as calls:
        for xc in pieces:
            calls.clear()
            out = forward(model, xc, fn)
            outs.append(out.detach())
            used = covered(calls, batch_size(xc))
            if used:
                if keep:
                    pairs = output_grads(used, out)
                else:
                    pair_sums(cands, output_grads(used, out), sums, scale=scale)
                del out  # the graph is freed; keep only the layers' inputs and output grads
                for c in used:
                    for n in cands[c.module]:
                        hits[n] = hits.get(n, 0) + 1
                del used
    for n in [n for n, k in hits.items() if k != len(pieces)]:  # covered in some chunks only
        sums.pop(n, None)
    rest = {n: p for n, p in named.items() if n not in sums and hits.get(n) != len(pieces)}
    if rest:
        slow = func_sums(model, rest, x, fn, chunk)
        if scale != 1.0:
            torch._foreach_mul_(list(slow.values()), scale)
        sums.update(slow)
    factors = factored_sums(cands, pairs, sums) if pairs else {}
    out_all = outs[0] if len(outs) == 1 else torch.cat(outs)
    return {n: sums[n] for n in named if n not in factors}, out_all, factors


def _layer(m: nn.Module, names: list[str], a: Tensor | tuple[Tensor, ...], g: Tensor | tuple[Tensor, ...],
           scale: float, acc: dict[str, Tensor]) -> None:
    """Add ``scale`` times one layer's sums to ``acc`` (by full name). Every per-sample gradient
    is linear in ``g``, so the scale goes on ``g``."""
    rule = rule_for(m)
    if rule is None:
        raise RuntimeError(f"internal error: no rule for {type(m).__name__}")
    g = g.float() if isinstance(g, Tensor) else tuple(t.float() for t in g)
    if scale != 1.0:
        g = g * scale if isinstance(g, Tensor) else tuple(t * scale for t in g)
    short = {n: n.rsplit(".", 1)[-1] for n in names}
    local = {short[n]: acc[n] for n in names if n in acc}
    rule.sums(m, a, g, local)
    own = own_params(m)
    for n in names:
        t = local.get(short[n])
        if t is None or t.shape != own[short[n]].shape:
            raise RuntimeError(f"internal error: the rule for {type(m).__name__} gave no {short[n]}")
        acc[n] = t


def _cloned(out: object) -> tuple[object, list[Tensor]] | None:
    """``out`` (a tensor, or tuples and lists of them) with every tensor cloned, and the clones in
    order; None for anything else."""
    if isinstance(out, Tensor):
        c = out.clone()
        return c, [c]
    if type(out) in (tuple, list):
        items, flat = [], []
        for o in out:  # type: ignore[attr-defined]
            r = _cloned(o)
            if r is None:
                return None
            items.append(r[0])
            flat += r[1]
        return type(out)(items), flat  # type: ignore[call-arg]
    return None
