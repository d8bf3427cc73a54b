"""The exact estimator: closed-form per-sample sums from each layer's input and output gradient.

One forward records the inputs of the layers that have a rule (:mod:`.registry`) and the autograd
edge of each one's output; one backward of ``sum_n ||f(x_n)||^2`` to those edges gives every
sample's gradient at those layers' outputs; the rules turn the pairs into per-sample sums.
Parameters without a rule (attention projections, custom parameters, layers called twice, tied
weights) get theirs from ``torch.func`` (:func:`.func.func_sums`).
Batches larger than ``chunk`` go through in chunks, so transient memory does not grow with the batch.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from online_mas.estimators.common import (
    Call,
    OutputFn,
    Rule,
    Sites,
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
    "PatchedForward",
    "covered",
    "exact_sums",
    "fast_candidates",
    "is_recording",
    "output_grads",
    "pair_sums",
    "pair_versions",
    "record_hook",
    "recording",
    "sequence_first",
    "versions",
]

Pair = tuple[nn.Module, Any, Any]  # a layer, its input, the gradient at its output (or their Sites)
FACTOR_BOUND = 1e36  # |G|^T |A| entries stay below this, far from float32's 3.4e38


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


def sequence_first(model: nn.Module) -> dict[nn.Module, int]:
    """Layers whose inputs have the batch on dimension 1: the position-wise layers (linear maps,
    norms) of ``nn.TransformerEncoderLayer``/``DecoderLayer`` and the final norms of
    ``nn.TransformerEncoder``/``Decoder`` built with ``batch_first=False``."""
    dims: dict[nn.Module, int] = {}
    layers = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
    for m in model.modules():
        if isinstance(m, layers) and not m.self_attn.batch_first:
            for child in (m.linear1, m.linear2, m.norm1, m.norm2, getattr(m, "norm3", None)):
                if child is not None:
                    dims[child] = 1
        elif isinstance(m, nn.TransformerEncoder | nn.TransformerDecoder) and m.norm is not None:
            first = m.layers[0] if len(m.layers) else None
            if isinstance(first, layers) and not first.self_attn.batch_first:
                dims[m.norm] = 1
    return dims


Hook = Callable[[nn.Module, tuple[object, ...], dict[str, object], object], object]


def record_hook(
    calls: dict[nn.Module, Call],
    batch_dims: Mapping[nn.Module, int] | None = None,
    clone: Callable[[nn.Module], bool] | None = None,
    rules: Mapping[nn.Module, Rule | None] | None = None,
    edges: bool = False,
) -> Hook:
    """A forward hook (``with_kwargs=True``) that records each module's first call (input, output)
    into ``calls``; ``batch_dims[m]`` is the dimension of ``m``'s batch where it is not the first.

    The rest of the forward gets a copy of the output, so later in-place ops (``ReLU(inplace=True)``)
    cannot touch the record; with ``clone``, only for the modules where ``clone(m)`` (for the
    others an in-place change shows in the output's version, and :func:`covered` drops the call).
    A rule with ``inputs`` (several tensors in or out) records all of them, outputs copied.
    ``rules``: each module's rule, looked up once (else :func:`~.registry.rule_for` per call).
    ``edges``: a one-tensor output is recorded as its autograd edge (:class:`Call`), never copied
    (but an output that is a view of another tensor as the tensor itself, as without ``edges``).
    """

    def hook(m: nn.Module, inputs: tuple[object, ...], kwargs: dict[str, object], out: object) -> object:
        if torch.compiler.is_compiling():  # traced into a compiled graph: record nothing
            return None
        if m in calls:
            calls[m].count += 1
            return None
        rule = rules[m] if rules is not None and m in rules else rule_for(m)
        if rule is not None and rule.inputs is not None:
            got, copied = rule.inputs(m, inputs, kwargs), _cloned(out)
            if got is None or copied is None:
                calls[m] = Call(m, (), (), (), rows=-1, count=2)  # not covered
                return None
            samples, tensors = got
            outs = tuple(_flat(out))  # the originals: the rest of the forward gets the copies
            calls[m] = Call(m, tensors, outs, tuple(t._version for t in (*tensors, *outs)), samples,
                            pair=_all(tensors))
            return copied[0]
        tensors = tuple(t for t in inputs if isinstance(t, Tensor))
        if not isinstance(out, Tensor) or not tensors:
            calls[m] = Call(m, (), (), (), rows=-1, count=2)  # unsupported: not covered
            return None
        dim = batch_dims.get(m, 0) if batch_dims else 0
        rows = int(tensors[0].shape[dim]) if tensors[0].dim() > dim and out.dim() > dim else -1
        pair = None if dim == 0 else _moved(tensors[0], dim)
        if edges and not out._is_view():  # an in-place op on a view gives it a new grad_fn:
            # the recorded edge would leave the graph (and read a zero gradient); views (a Linear
            # over a sequence, InstanceNorm) are recorded as tensors, with their version checked
            if not out.requires_grad:
                calls[m] = Call(m, (), (), (), rows=-1, count=2)  # no gradient reaches it: not covered
                return None
            calls[m] = Call(m, tensors, (), tuple(t._version for t in tensors), rows, pair=pair,
                            edges=(get_gradient_edge(out),), like=((out.shape, out.dtype, out.device),))
            return None
        versions = tuple(t._version for t in (*tensors, out))
        calls[m] = Call(m, tensors, (out,), versions, rows, pair=pair)
        return out.clone() if clone is None or clone(m) else None

    return hook


Tensors = tuple[Tensor, ...]


def _all(inputs: Tensors) -> Callable[[Tensors], tuple[Tensors, Tensors]]:
    """A rule with ``inputs``: every input, every output gradient."""

    def pair(grads: Tensors) -> tuple[Tensors, Tensors]:
        return tuple(t.detach() for t in inputs), grads

    return pair


def _flat(out: object) -> list[Tensor]:
    """The tensors of ``out`` (a tensor, or tuples and lists of them), in order."""
    if isinstance(out, Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]  # type: ignore[attr-defined]


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


def _moved(a: Tensor, dim: int) -> Callable[[tuple[Tensor, ...]], tuple[Tensor, Tensor]]:
    def pair(grads: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        return a.detach().movedim(dim, 0), grads[0].movedim(dim, 0)

    return pair


@contextlib.contextmanager
def recording(
    cands: Mapping[nn.Module, list[str]],
    batch_dims: Mapping[nn.Module, int] | None = None,
    clone: Callable[[nn.Module], bool] | None = None,
    edges: bool = False,
) -> Iterator[dict[nn.Module, Call]]:
    """Record the calls of ``cands`` inside: for a rule with its own ``record``, the recording
    forward it gives in place of the module's; for the others the module's own forward followed
    by :func:`record_hook`'s recording, as an instance attribute too (a forward hook would send
    every call of the module through ``nn.Module``'s slower hook path), or as a forward hook where
    the instance already has a forward of its own. ``batch_dims``, ``clone`` and ``edges`` as in
    :func:`record_hook`."""
    calls: dict[nn.Module, Call] = {}
    rules = {m: rule_for(m) for m in cands}
    hook = record_hook(calls, batch_dims, clone, rules, edges)
    _ACTIVE[0] += 1
    handles = []
    patched = []
    for m, rule in rules.items():
        if rule is not None and rule.record is not None:  # an instance attribute, removed below
            m.__dict__["forward"] = PatchedForward(rule.record(m, calls, cands), m)
            patched.append(m)
        elif "forward" not in m.__dict__ and not isinstance(getattr(type(m), "forward", None), property):
            m.__dict__["forward"] = PatchedForward(_recorded_forward(m, hook), m)
            patched.append(m)
        else:
            handles.append(m.register_forward_hook(hook, with_kwargs=True))
    try:
        yield calls
    finally:
        _ACTIVE[0] -= 1
        for h in handles:
            h.remove()
        for m in patched:
            m.__dict__.pop("forward", None)


_ACTIVE = [0]  # recording() contexts now open


def is_recording() -> bool:
    """Whether a pass of the exact estimator is recording layer calls now (a doubled forward,
    :mod:`.doubled`, then leaves the batch as it is)."""
    return _ACTIVE[0] > 0


class PatchedForward:
    """A module's recording forward, installed as an instance attribute for one pass. A copy of
    the module made meanwhile (``copy.deepcopy`` or pickle, e.g. from a user's hook) gets its own
    class's forward instead, not this one, which is bound to the original module."""

    __slots__ = ("fn", "module", "recording")

    def __init__(self, fn: Callable[..., object], module: nn.Module) -> None:
        self.fn, self.module = fn, module
        self.recording = getattr(fn, "recording", False)  # a rule's own recording forward says so

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self.fn(*args, **kwargs)

    def __deepcopy__(self, memo: dict[int, object]) -> Callable[..., object]:
        return _class_forward(memo.get(id(self.module), self.module))  # type: ignore[arg-type]

    def __reduce__(self) -> tuple[Callable[[nn.Module], Callable[..., object]], tuple[nn.Module]]:
        return _class_forward, (self.module,)


def _class_forward(m: nn.Module) -> Callable[..., object]:
    """``m``'s class's forward, bound to ``m``."""
    return type(m).forward.__get__(m)


def _recorded_forward(m: nn.Module, hook: Hook) -> Callable[..., object]:
    """``m``'s own forward, then ``hook`` on the call (what it returns replaces the output)."""
    own = type(m).forward.__get__(m)

    def forward(*args: object, **kwargs: object) -> object:
        out = own(*args, **kwargs)
        replaced = hook(m, args, kwargs, out)
        return out if replaced is None else replaced

    return forward


def covered(calls: dict[nn.Module, Call], rows: int) -> list[Call]:
    """The recorded calls the rules can use: called once, differentiable, inputs untouched since
    (no in-place op changed them), batch dimension first."""
    return [
        c
        for c in calls.values()
        if c.count == 1
        and c.rows == rows
        and (c.targets or c.edges)
        and all(t.requires_grad for t in c.targets)
        and all(t._version == v for t, v in zip((*c.inputs, *c.targets), c.versions, strict=True))
    ]


def output_grads(calls: list[Call], out: Tensor, *, retain_graph: bool = False,
                 scale: float = 1.0) -> list[Pair]:
    """The gradient of ``scale * sum_n ||out_n||^2`` at each covered layer's output, with the
    layer's input (the scale rides on the backward's seed: no pass over the gradients).

    ``retain_graph`` keeps ``out``'s graph for a backward that comes later (someone else's).
    """
    targets = [t for c in calls for t in (c.edges or c.targets)]
    total = sq_norm_total(out)
    grads = iter(torch.autograd.grad(total * scale if scale != 1.0 else total, targets, allow_unused=True,
                                     retain_graph=retain_graph))
    pairs: list[Pair] = []
    for c in calls:
        if c.edges:
            gs = tuple(torch.zeros(shape, dtype=dtype, device=device) if g is None else g.detach()
                       for (shape, dtype, device), g in zip(c.like, itertools.islice(grads, len(c.edges)),
                                                            strict=True))
        else:
            gs = tuple(torch.zeros_like(t) if g is None else g.detach()
                       for t, g in zip(c.targets, itertools.islice(grads, len(c.targets)), strict=True))
        pairs.append((c.module, c.inputs[0].detach(), gs[0]) if c.pair is None else (c.module, *c.pair(gs)))
    return pairs


def versions(a: Tensor | tuple[Tensor, ...] | Sites) -> tuple[int, ...]:
    """The version counters of a pair's input(s), to see later whether they were changed in place."""
    ts = a.tensors if isinstance(a, Sites) else a if isinstance(a, tuple) else (a,)
    return tuple(t._version for t in ts)


pair_versions = versions


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
        if chunk is None or isinstance(a, tuple) or (a.rows if isinstance(a, Sites) else a.shape[0]) <= chunk:
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
    extra: set[str] = set()
    with recording(cands, sequence_first(model), clone=_INPLACE.__contains__, edges=True) as calls:
        for xc in pieces:
            for attempt in range(2):  # again (once) if an output was changed in place: copy it then
                calls.clear()
                out = forward(model, xc, fn)
                changed = [c.module for c in calls.values() if _changed(c)]
                if not changed or attempt:
                    break
                _INPLACE.update(changed)
            outs.append(out.detach())
            used = covered(calls, batch_size(xc))
            if used:
                outside = used_outside(out, used, cands, named)
                extra |= outside
                if keep and not outside:
                    pairs = output_grads(used, out)
                else:
                    pair_sums(cands, output_grads(used, out, scale=scale), sums)
                del out  # the graph is freed; keep only the layers' inputs and output grads
                for c in used:
                    for n in cands[c.module]:
                        if n not in extra:
                            hits[n] = hits.get(n, 0) + 1
                del used
    for n in [n for n, k in hits.items() if k != len(pieces)] + sorted(extra):  # covered in some
        sums.pop(n, None)  # chunks only, or also used outside their module: torch.func
    rest = {n: p for n, p in named.items() if n not in sums and hits.get(n) != len(pieces)}
    if rest:
        slow = func_sums(model, rest, x, fn, chunk)
        if scale != 1.0:
            torch._foreach_mul_(list(slow.values()), scale)
        sums.update(slow)
    factors = factored_sums(cands, pairs, sums) if pairs else {}
    out_all = outs[0] if len(outs) == 1 else torch.cat(outs)
    return {n: sums[n] for n in named if n not in factors}, out_all, factors


def used_outside(out: Tensor, used: list[Call], cands: Mapping[nn.Module, list[str]],
                 named: Mapping[str, Tensor]) -> set[str]:
    """Names of the recorded layers' parameters that the graph of ``out`` also reads outside
    their layer's call (``F.linear(h, emb.weight)``, a tied output head): a layer's rule sees its
    own call's share of such a parameter only. Counted as the edges into each parameter's
    gradient accumulator (one per use). The layers whose rule reads the call's inputs itself
    (attention, recurrent: their call may read a weight several times, per step or per slice of a
    packed projection, and the rule recomputes them all) are not checked."""
    expected: dict[int, str] = {}
    for c in used:
        rule = rule_for(c.module)
        if rule is not None and rule.record is None and rule.inputs is None:
            for n in cands[c.module]:
                expected[id(named[n])] = n
    if not expected or out.grad_fn is None:
        return set()
    uses: dict[int, int] = {}
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            variable = getattr(nxt, "variable", None)
            if variable is not None:  # a gradient accumulator: one use of a leaf
                uses[id(variable)] = uses.get(id(variable), 0) + 1
            elif nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return {n for k, n in expected.items() if uses.get(k, 0) > 1}


_INPLACE: weakref.WeakSet[nn.Module] = weakref.WeakSet()
"""Modules whose recorded output a later op of the model changed in place: their outputs are
copied for the rest of the forward (:func:`record_hook`); the others are not."""


def _changed(c: Call) -> bool:
    """Whether an in-place op changed one of the call's recorded outputs."""
    if c.count != 1 or not c.targets:
        return False
    return any(t._version != v for t, v in zip(c.targets, c.versions[len(c.inputs):], strict=True))


def _layer(m: nn.Module, names: list[str], a: Tensor | tuple[Tensor, ...] | Sites,
           g: Tensor | tuple[Tensor, ...] | Sites, scale: float, acc: dict[str, Tensor]) -> None:
    """Add ``scale`` times one layer's sums to ``acc`` (by full name). Every per-sample gradient
    is linear in ``g``, so the scale goes on ``g``."""
    rule = rule_for(m)
    if rule is None:
        raise RuntimeError(f"internal error: no rule for {type(m).__name__}")

    def scaled(t: Tensor) -> Tensor:
        t = t.float()
        return t * scale if scale != 1.0 else t

    if isinstance(g, Sites):
        g = g.map(scaled)
    else:
        g = tuple(map(scaled, g)) if isinstance(g, tuple) else scaled(g)
    short = {n: n.rsplit(".", 1)[-1] for n in names}
    local = {short[n]: acc[n] for n in names if n in acc}
    rule.sums(m, a, g, local)
    own = own_params(m)
    for n in names:
        t = local.get(short[n])
        if t is None or t.shape != own[short[n]].shape:
            raise RuntimeError(f"internal error: the rule for {type(m).__name__} gave no {short[n]}")
        acc[n] = t
