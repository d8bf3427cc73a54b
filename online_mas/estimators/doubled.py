"""Exact importance inside the user's own forward and backward (``MASConfig(shared_backward=True)``).

The separate importance pass runs a forward and a backward of its own; on a model sharded by FSDP2
each of them gathers every block's parameters again. Here the user's training forward runs on a
doubled batch ``cat(x, x.detach())``: each recorded layer computes the first ``n`` rows (training)
with its parameters and the last ``n`` rows (importance) with the same parameters detached, so
they add nothing to any parameter's gradient. The output the user sees is the training half; its
backward seeds the importance half with the gradient of ``sum_n ||f(x_n)||^2`` (``2 f``), so the
user's one backward carries both: the training gradients, unchanged, and at each recorded layer's
output the gradient the rules need (kept by a tensor hook), while FSDP has the layer unsharded for
that backward anyway. No parameter is gathered a second time; the cost is a forward and a
``grad_input`` backward of ``n`` more rows, and the layers' importance inputs and output gradients
(activation-sized) kept until ``observe``.

Used only where it gives the numbers of the separate pass and leaves training unchanged: every
trainable parameter belongs to a layer with a closed-form rule that needs only the layer's input
and output gradient (``nn.Linear``, convolutions, norms, ``nn.Embedding``, ``nn.PReLU``; not the
attention and recurrent rules), called once, with the batch first, and used nowhere else; the
model called as ``model(x)`` with one tensor, returning one tensor with the batch first; no
module whose training forward couples samples or draws random numbers (as for
``shared_forward``); no forward or backward hook on a submodule (it would see the doubled
batch; FSDP's are fine); gradients enabled, no autocast, not compiled. Where a forward breaks one of
these after it ran (also: the two halves of a recorded layer's input or of the output differ, as
a sequence-first input or random numbers make them), the importance half is seeded with zeros
(the training gradients stay exact) and ``observe`` takes the separate pass; ``why_not`` says why.
A custom module that mixes the samples of a batch (batch statistics in its forward) cannot be
detected: leave the option off.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from online_mas.estimators.common import BatchImportance, NonFiniteError, finite
from online_mas.estimators.exact import (
    Pair,
    PatchedForward,
    factored_sums,
    fast_candidates,
    is_recording,
    versions,
)
from online_mas.estimators.registry import rule_for
from online_mas.estimators.shared import train_dependent

__all__ = ["DoubledBatch"]

_NOT_FINITE = "the output is not finite"


class _Record:
    """One recorded layer call of a doubled forward: the importance rows' input, their output
    (for its shape), its versions, the parameters the call read and the gradient the hook caught."""

    __slots__ = ("a", "grads", "like", "node", "params", "reached", "versions")

    def __init__(self, a: Tensor, like: Tensor, params: list[Tensor]) -> None:
        self.a, self.params = a, params
        self.like = (like.shape, like.dtype, like.device)
        self.versions = versions(a)
        self.grads: list[Tensor] = []
        self.node: object = get_gradient_edge(like).node  # until the output's graph is walked
        self.reached = False  # the output depends on the importance rows' output


class _Run:
    """The state of one doubled forward and its backward."""

    def __init__(self, x: Tensor) -> None:
        self.x, self.n = x, x.shape[0]
        self.records: dict[nn.Module, _Record] = {}
        self.why = ""  # set: the importance half is seeded with zeros
        self.out: Tensor | None = None  # the importance half of the output, detached
        self.seeds = 0  # backwards that reached the output
        self.finite = True  # False: the output is not finite (observe skips the batch)


class _Seed(torch.autograd.Function):
    """``out[:n]`` forward; backward: the incoming gradient for the training rows, ``2 out[n:]``
    (the gradient of ``sum ||f||^2``, in float32 then the output's dtype) for the importance rows,
    or zeros where the forward cannot be used."""

    @staticmethod
    def forward(ctx: Any, out: Tensor, run: _Run) -> Tensor:
        ctx.run = run
        return out[: run.n].clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        run: _Run = ctx.run
        run.seeds += 1
        imp = run.out
        if imp is None or run.why:
            rest = grad.new_zeros((run.n, *grad.shape[1:]))
        else:
            rest = imp.float().mul(2.0).to(grad.dtype)
        return torch.cat([grad, rest]), None


class DoubledBatch:
    """Doubles the user's forward for the recorded layers' importance (same interface as
    :class:`~online_mas.estimators.shared.SharedForward`): ``arm(names, params)`` before a forward
    whose importance is wanted, ``take(x, names)`` from ``observe``; ``gate()`` says whether the
    forward may be doubled (False while OnlineMAS runs forwards of its own)."""

    def __init__(self, model: nn.Module, chunk: int | None, gate: Callable[[], bool]) -> None:
        self.model = model
        self.chunk = chunk
        self.gate = gate
        self.enabled = True
        self.why_not = ""  # why the last armed forward was not used
        self._cands: dict[nn.Module, list[str]] = {}
        self._names: tuple[str, ...] = ()
        self._uncovered = False
        self._patched: list[nn.Module] = []
        self._run: _Run | None = None  # the doubled forward now running
        self._result: _Run | None = None  # the last doubled forward, until taken

    @property
    def armed(self) -> bool:
        return bool(self._patched)

    @property
    def candidates(self) -> dict[nn.Module, list[str]]:
        """The recorded layers and the names of their parameters."""
        return self._cands

    def arm(self, names: list[str], params: list[Tensor]) -> None:
        """Double the next forward, if every one of these parameters has a rule that needs only
        the layer's input and output gradient."""
        if not self.enabled or (tuple(names) == self._names and (self._patched or self._uncovered)):
            return
        self.disarm()
        named = dict(zip(names, params, strict=True))
        cands = fast_candidates(self.model, named)
        self._names, self._uncovered = tuple(names), False
        why = ""
        if {n for ns in cands.values() for n in ns} != set(names):
            why = "some parameters have no closed-form fast path"
        elif any(getattr(rule_for(m), "record", None) or getattr(rule_for(m), "inputs", None) for m in cands):
            why = "attention and recurrent layers are recorded by the separate pass"
        elif any("forward" in m.__dict__ for m in {self.model, *cands}):
            why = "a recorded module has a forward of its own instance"
        if why:
            self.why_not, self._uncovered = why, True
            return
        self._cands = cands
        for m in cands:
            if m is not self.model:
                m.__dict__["forward"] = PatchedForward(self._layer_forward(m, _own(m)), m)
                self._patched.append(m)
        base = self._layer_forward(self.model, _own(self.model)) if self.model in cands else _own(self.model)
        self.model.__dict__["forward"] = PatchedForward(self._root_forward(base), self.model)
        self._patched.append(self.model)

    def disarm(self) -> None:
        for m in self._patched:
            if isinstance(m.__dict__.get("forward"), PatchedForward):
                del m.__dict__["forward"]
        self._patched = []
        self._result = None

    def on_forward(self, x: Tensor, out: Tensor) -> None:
        """Nothing: the doubled forward keeps its own result (the interface of SharedForward)."""

    def take(self, x: Tensor, names: list[str]) -> BatchImportance | None:
        """The importance of the doubled forward of this very ``x`` (then forgotten), if its
        backward ran once and it covers ``names``. Raises
        :class:`~online_mas.estimators.common.NonFiniteError` if it is not finite."""
        run, self._result = self._result, None
        if run is None or run.x is not x or tuple(names) != self._names:
            return None
        if not run.finite:  # skipped as the separate pass would skip it, without running it
            raise NonFiniteError("the model output contains non-finite values (nan or inf)")
        if run.seeds != 1:
            self.why_not = (f"the backward of the doubled forward's output ran {run.seeds} times "
                            "before observe (it must run once)")
            return None
        if any(rec.reached and not rec.grads for rec in run.records.values()):
            # the backward went only to some tensors (backward(inputs=...), torch.autograd.grad),
            # which prunes the importance rows: their gradients never came
            self.why_not = ("the backward did not reach a layer's importance rows (backward(inputs=...) "
                            "or torch.autograd.grad computes only the gradients asked for)")
            return None
        pairs: list[Pair] = []
        for m, rec in run.records.items():
            if versions(rec.a) != rec.versions:
                self.why_not = "a layer input was changed in place after the forward"
                return None
            if len(rec.grads) > 1:
                self.why_not = "a layer's output gradient arrived more than once"
                return None
            shape, dtype, device = rec.like
            g = rec.grads[0] if rec.grads else torch.zeros(shape, dtype=dtype, device=device)
            pairs.append((m, rec.a, g))
        sums: dict[str, Tensor] = {}
        factors = factored_sums(self._cands, pairs, sums, chunk=self.chunk)
        if run.out is None:
            raise RuntimeError("internal error: a doubled forward kept without its output")
        return BatchImportance(sums, run.n, run.out, factors)

    # ------------------------------------------------------------------ the patched forwards

    def _root_forward(self, base: Callable[..., Any]) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            x = args[0] if len(args) == 1 and not kwargs else None
            if self._run is not None or not self._patched or not isinstance(x, Tensor) \
                    or not self._can_double(x):
                return base(*args, **kwargs)
            run = self._run = _Run(x)
            try:
                out = base(torch.cat([x, x.detach()]))
            except (RuntimeError, ValueError, TypeError) as err:  # e.g. a batch size fixed in the model
                self._run = None
                self._give_up(f"{type(err).__name__}: {err}")
                return base(*args, **kwargs)
            self._run = None
            if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != 2 * run.n \
                    or not out.is_floating_point():
                self._give_up("the model does not return one floating tensor with the batch first")
                return base(*args, **kwargs)
            run.why = run.why or self._check(run, out)
            if not run.why:
                run.out = out[run.n:].detach()
            run.finite = run.why != _NOT_FINITE
            self._result = run if not run.why or not run.finite else None
            self.why_not = run.why
            return _Seed.apply(out, run)

        return forward

    def _layer_forward(self, m: nn.Module, own: Callable[..., Any]) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            run = self._run
            if run is None:
                return own(*args, **kwargs)
            a = args[0] if len(args) == 1 and not kwargs else None
            n = run.n
            if m in run.records or not isinstance(a, Tensor) or a.dim() == 0 or a.shape[0] != 2 * n \
                    or not _halves_agree(a, n):  # e.g. a sequence-first input whose length is 2n
                run.why = run.why or (f"a {type(m).__name__} was called more than once or not on the "
                                      "doubled batch")
                return own(*args, **kwargs)  # the importance half is then seeded with zeros
            top = own(a[:n])
            saved = dict(m._parameters)
            try:
                for k, p in saved.items():
                    if p is not None:
                        m._parameters[k] = p.detach()  # type: ignore[assignment]
                low = own(a[n:])
            finally:
                m._parameters.update(saved)
            if not isinstance(top, Tensor) or not isinstance(low, Tensor):
                run.why = run.why or f"a {type(m).__name__} does not return one tensor"
                return own(*args, **kwargs)
            if not low.requires_grad:  # nothing before it needs a gradient: a leaf to catch it at
                low = low.detach().requires_grad_(True)
            rec = _Record(a[n:].detach(), low, [p for p in saved.values() if p is not None])
            low.register_hook(lambda g: rec.grads.append(g.detach()))
            run.records[m] = rec
            return torch.cat([top, low])

        return forward

    def _can_double(self, x: Tensor) -> bool:
        if not self.gate() or not torch.is_grad_enabled() or torch.compiler.is_compiling() \
                or is_recording() or _functorch_active():
            return False  # OnlineMAS's own or an estimator's forward, or traced
        if x.dim() == 0 or x.shape[0] == 0:
            return False
        if torch.is_autocast_enabled(x.device.type):
            self.why_not = "the forward ran under autocast"
            return False
        module = train_dependent(self.model)
        if module is not None:
            self.why_not = f"{type(module).__name__} is in training mode"
            return False
        hooked = _hooked(self.model)
        if hooked:
            self.why_not = f"{hooked} has a forward or backward hook, which would see the doubled batch"
            return False
        return True

    def _check(self, run: _Run, out: Tensor) -> str:
        """Why the importance half cannot be used ("" if it can): a recorded layer not called,
        a parameter also read outside its layer's call (its gradient would take the importance
        rows: they are then seeded with zeros), an output that is not finite, or whose halves
        differ."""
        missing = [type(m).__name__ for m in self._cands if m not in run.records]
        if missing:
            return f"a {missing[0]} was not called in the forward"
        if not out.requires_grad:
            return "the output does not require a gradient"
        if not finite(out.detach()):
            return _NOT_FINITE
        if not _halves_agree(out, run.n):
            return "the two halves of the doubled output differ (random numbers in the forward?)"
        expected = {id(p) for rec in run.records.values() for p in rec.params if p.requires_grad}
        uses, nodes = _leaf_uses(out)
        for rec in run.records.values():
            rec.reached, rec.node = id(rec.node) in nodes, None
        if any(uses.get(k, 0) != 1 for k in expected):
            return "a layer's parameter is also used outside its call"
        return ""

    def _give_up(self, why: str) -> None:
        self.enabled = False
        self.disarm()
        self.why_not = f"the forward could not be doubled ({why})"
        warnings.warn(f"shared_backward is off for this OnlineMAS: {self.why_not}; importance uses the "
                      "separate pass", RuntimeWarning, stacklevel=4)


def _halves_agree(a: Tensor, n: int) -> bool:
    """Whether the two halves of a layer's input are the same rows (the training rows and their
    copy): equal, or as close as the rounding of kernels run on other row counts allows."""
    top, low = a[:n].detach(), a[n:].detach()
    if torch.equal(top, low):
        return True
    return bool(a.is_floating_point() and torch.allclose(top, low, rtol=1e-5, atol=1e-6))


def _hooked(model: nn.Module) -> str:
    """A submodule of ``model`` (or all modules: a global hook) with a forward or backward hook
    ("" if none): inside the model's forward it would see, and could use or change, the doubled
    batch, e.g. a loss on a layer's features. The model's own hooks see the training rows only;
    FSDP's (``torch.distributed``) move parameters and cast inputs, which a doubled batch keeps."""
    def foreign(hooks: object) -> bool:
        return any(not (getattr(h, "__module__", None) or "").startswith("torch.distributed.")
                   for h in hooks.values())  # type: ignore[attr-defined]
    kinds = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
    everywhere = nn.modules.module
    if any(foreign(getattr(everywhere, f"_global{k}", {})) for k in kinds):
        return "every module"
    for name, m in model.named_modules():
        if m is not model and any(foreign(getattr(m, k, {})) for k in kinds):
            return f"{type(m).__name__} {name!r}"
    return ""


def _functorch_active() -> bool:
    """Whether the forward runs inside a ``torch.func`` transform (``vmap``, ``grad``)."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if callable(active) else False


def _own(m: nn.Module) -> Callable[..., Any]:
    """``m``'s class's forward, bound to ``m``."""
    return type(m).forward.__get__(m)


def _leaf_uses(out: Tensor) -> tuple[dict[int, int], set[int]]:
    """For each leaf tensor in ``out``'s graph, the number of edges into its gradient accumulator;
    and the ids of all the graph's nodes (gradient accumulators included)."""
    uses: dict[int, int] = {}
    if out.grad_fn is None:
        return uses, set()
    seen, stack = {out.grad_fn}, [out.grad_fn]
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            variable = getattr(nxt, "variable", None)
            if variable is not None:
                uses[id(variable)] = uses.get(id(variable), 0) + 1
                seen.add(nxt)
            elif nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return uses, {id(node) for node in seen}
