"""What every estimator shares: input checks, the eval-mode forward, and the result of one batch."""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from online_mas.estimators.inputs import Inputs, batch_size, call, check_inputs, describe

__all__ = [
    "BLOCK_BYTES",
    "BatchImportance",
    "Call",
    "CallInputs",
    "NonFiniteError",
    "OutputFn",
    "Rule",
    "Sites",
    "abs_bmm_sum",
    "block_rows",
    "call_model",
    "check_chunk_size",
    "check_finite_sums",
    "check_input",
    "eager",
    "eval_mode",
    "finite",
    "forward",
    "kept_parameters",
    "model_output",
    "sq_norm_total",
    "uncompiled",
    "unwrapped",
    "zeros",
]

BLOCK_BYTES = 2**20
"""On CPU, per-sample products are formed this many bytes at a time, so their absolute values are
summed while they are still in cache (a core's L2 holds 1-2 MiB)."""

OutputFn = Callable[[nn.Module, Any], Tensor]
"""Maps ``(model, x)`` to the tensor whose squared norm is used; batch dimension first."""


class NonFiniteError(ValueError):
    """The input, the model output or the importance holds nan or inf."""


CallInputs = Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], tuple[int, tuple[Tensor, ...]] | None]
"""Maps a module call's ``(args, kwargs)`` to ``(samples, input tensors)``, or None (see :class:`Rule`)."""


@dataclass(frozen=True)
class Rule:
    """The closed-form per-sample importance of one layer family.

    ``sums(m, a, g, acc)`` adds, for each of ``m``'s own parameters (by short name: ``"weight"``,
    ``"bias"``), the sum over samples of ``|per-sample gradient|`` to ``acc`` (in place where
    ``acc`` has one), from the layer's input ``a`` and the gradient ``g`` of
    ``sum_n ||f(x_n)||^2`` at its output. ``supported(m)`` says whether this module's settings
    are covered. ``factors(a, g)``, where given, returns ``(|G|, |A|)`` whose product
    ``|G|^T |A|`` is the weight's sum, so an accumulator can fold it without forming it.

    ``record``, where given, replaces the module's forward hook: ``record(m, calls, cands)``
    returns a forward (same signature as ``m.forward``) that computes the module's output from
    its parts and records a :class:`~online_mas.estimators.exact.Call` of its own into ``calls``
    (for modules such as ``nn.MultiheadAttention``, whose projections run inside one functional
    call, where no hook sees them). ``sums`` then gets the :class:`Sites` that call made.

    ``inputs(m, args, kwargs)``, where given, is for a module that takes or returns several
    tensors (``nn.LSTM``: ``(x, (h0, c0))`` in, ``(y, (h_n, c_n))`` out): it maps a call's arguments
    to ``(samples in the call, the input tensors)``, or None for a call the rule does not cover.
    ``sums`` then receives that tuple of inputs as ``a`` and the tuple of gradients at every tensor
    the module returned (nested tuples flattened in order, zeros where none reached) as ``g``.
    """

    name: str
    sums: Callable[[nn.Module, Any, Any, dict[str, Tensor]], None]
    supported: Callable[[nn.Module], bool] = lambda m: True
    factors: Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, Tensor] | None] | None = None
    record: Callable[..., Callable[..., Any]] | None = None
    inputs: CallInputs | None = None


@dataclass
class Call:
    """A recorded call of a layer: the tensors whose in-place change voids it (its inputs, first
    the one the rule uses), the outputs whose gradients the rule needs (``targets``), their
    versions when recorded, the call's batch size and how often the layer was called.

    ``pair(grads)``, where given, turns the gradients at ``targets`` into the rule's ``(a, g)``
    (:class:`Sites`); by default they are the first input and the gradient at the one target.

    ``edges``, where given, stand for the outputs instead of ``targets`` (then empty): the
    autograd edges (``torch.autograd.graph.get_gradient_edge``) into the layer's backward, whose
    gradient is the one at the layer's own output whatever later ops do to it in place, without
    keeping the output's memory alive; ``like`` holds their shapes, dtypes and devices (for the
    zeros where no gradient reached).
    """

    module: nn.Module
    inputs: tuple[Tensor, ...]
    targets: tuple[Tensor, ...]
    versions: tuple[int, ...]
    rows: int
    count: int = 1
    pair: Callable[[tuple[Tensor, ...]], tuple[Any, Any]] | None = None
    edges: tuple[Any, ...] = ()
    like: tuple[tuple[torch.Size, torch.dtype, torch.device], ...] = ()


@dataclass(frozen=True)
class Sites:
    """Several batch-first tensors of one module (its projections' inputs, or the gradients at
    their outputs), split along the batch together; ``meta`` says which parameter each belongs to."""

    tensors: tuple[Tensor, ...]
    meta: tuple[tuple[str, int, int], ...] = ()  # per projection: weight name, its first row, bias row

    @property
    def rows(self) -> int:
        return int(self.tensors[0].shape[0])

    def split(self, chunk: int) -> list[Sites]:
        return [Sites(ts, self.meta) for ts in zip(*(t.split(chunk) for t in self.tensors), strict=True)]

    def map(self, fn: Callable[[Tensor], Tensor]) -> Sites:
        return Sites(tuple(fn(t) for t in self.tensors), self.meta)


@dataclass
class BatchImportance:
    """Importance of one batch, summed over its samples (the estimators' result).

    ``sums`` maps parameter names to float32 sums of ``|per-sample gradient|``; ``factors`` maps
    the names left out of ``sums`` to ``(|G|, |A|)`` with sum ``|G|^T |A|`` (2-D ``nn.Linear``
    weights, for an in-place fold). Everything in it is known to be finite.
    """

    sums: dict[str, Tensor]
    n: int
    out: Tensor  # the detached model output (eval mode), for signals; empty for totals over ranks
    factors: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def materialize(self) -> dict[str, Tensor]:
        """Every sum, the factored ones multiplied out (a new dict)."""
        full = dict(self.sums)
        for name, (g, a) in self.factors.items():
            full[name] = g.t() @ a
        return full


def abs_bmm_sum(x: Tensor, y: Tensor, groups: int = 1) -> Tensor:
    """``sum_n |x_n y_n|``: the absolute per-sample products of a batched matmul summed over samples.

    ``x`` is ``(N * groups, M, K)``, ``y`` ``(N * groups, K, P)`` (sample-major); returns
    ``(groups, M, P)``. On CPU the products are formed a block of samples at a time, within
    :data:`BLOCK_BYTES`, and summed while in cache; elsewhere in one batched matmul. Each block's
    absolute values are summed over its samples by one matrix product with a row of ones (a
    ``(1, k) x (k, groups M P)`` ``addmm`` into the total), which reads the block once and
    beats a reduction over the block's first dimension.

    Examples
    --------
    >>> import torch
    >>> x, y = torch.randn(6, 2, 3), torch.randn(6, 3, 4)
    >>> torch.allclose(abs_bmm_sum(x, y)[0], (x @ y).abs().sum(0), atol=1e-6)
    True
    """
    b, m, p = x.shape[0], x.shape[1], y.shape[2]
    n = b // groups
    per_sample = groups * m * p * x.element_size()
    step = block_rows(n, per_sample) if x.device.type == "cpu" else n
    if step >= n:
        return torch.bmm(x, y).abs_().view(n, groups, m, p).sum(0)
    acc = torch.zeros(1, groups * m * p, dtype=x.dtype, device=x.device)
    buf = torch.empty(step * groups, m, p, dtype=x.dtype, device=x.device)
    flat = buf.view(step, groups * m * p)  # the same memory, one row per sample
    ones = torch.ones(1, step, dtype=x.dtype, device=x.device)
    for xs, ys in zip(x.split(step * groups), y.split(step * groups), strict=True):
        k = xs.shape[0] // groups
        if k == step:
            torch.bmm(xs, ys, out=buf)
            acc.addmm_(ones, flat.abs_())
        else:  # the last, smaller block
            torch.bmm(xs, ys, out=buf[: k * groups])
            acc.addmm_(ones[:, :k], flat[:k].abs_())
    return acc.view(groups, m, p)


def block_rows(n: int, per_sample: int) -> int:
    """Samples per block when ``n`` samples of ``per_sample`` bytes each go through in blocks of at
    most :data:`BLOCK_BYTES` (at least one sample): as few blocks as that allows, of equal sizes
    (no small last block with its own fixed cost).

    Examples
    --------
    >>> block_rows(64, 18432)  # 1 MiB holds 56 of them: two blocks of 32, not 56 and 8
    32
    """
    step = max(1, BLOCK_BYTES // max(1, per_sample))
    if step >= n:
        return n
    blocks = -(-n // step)
    return -(-n // blocks)


def call_model(model: nn.Module, x: Inputs) -> Tensor:
    """``model(x)``, ``model(*x)`` or ``model(**x)`` (:mod:`.inputs`)."""
    return call(model, x)


def check_input(x: Inputs, *, finite: bool = True) -> None:
    """Raise TypeError/ValueError for what is not a batch, NonFiniteError for nan/inf (if ``finite``)."""
    check_inputs(x, finite=finite)


def check_chunk_size(chunk_size: int | None) -> int | None:
    """``chunk_size`` checked: an int >= 1, or None (chosen from the memory budget)."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1 or None, got {chunk_size!r}")
    return chunk_size


def forward(model: nn.Module, x: Inputs, fn: OutputFn) -> Tensor:
    """``fn(model, x)``, checked: one floating tensor, batch dimension first, finite."""
    try:
        out = fn(model, x)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as err:  # shape or dtype the model does not accept
        raise ValueError(
            f"the model cannot run on x of shape {describe(x)}: {err}"
        ) from err
    if not isinstance(out, Tensor):
        raise TypeError(
            f"the model output is a {type(out).__name__}, not a tensor: pass "
            "output=lambda model, x: ... to choose the tensor whose squared norm MAS uses "
            "(e.g. output=lambda m, x: m(x)[0])"
        )
    if out.dim() == 0 or out.shape[0] != batch_size(x):
        raise ValueError(
            f"the output must have the batch dimension first: input batch {batch_size(x)}, "
            f"output shape {tuple(out.shape)}"
        )
    if not out.is_floating_point():
        raise TypeError(f"the output must be floating point, got {out.dtype}")
    if not _all_finite(out):
        raise NonFiniteError("the model output contains non-finite values (nan or inf)")
    return out


def model_output(model: nn.Module, x: Inputs, output: OutputFn | None = None) -> Tensor:
    """The output MAS uses for ``x``, in eval mode and without gradients (for signals).

    Raises :class:`NonFiniteError` if it is not finite, like the estimators.
    """
    model = unwrapped(model)
    with eval_mode(model), torch.no_grad(), eager():
        return forward(model, x, output if output is not None else call_model)


def finite(t: Tensor) -> bool:
    """No nan or inf in ``t``. One reduction: a sum is finite unless an element is not (or the sum
    overflows float range, which only values near 1e38 can do; those count as not finite too).
    Half-precision tensors are summed in float32, so finite float16 values never overflow it."""
    total = t.detach().sum(dtype=torch.float32) if t.dtype in _HALF else t.detach().sum()
    if type(total) is Tensor:  # one number read back (``torch.isfinite`` is several ops)
        return math.isfinite(total.item())
    return bool(torch.isfinite(total))  # a tensor subclass (DTensor): its own reduction


_all_finite = finite
_HALF = (torch.float16, torch.bfloat16)


@contextlib.contextmanager
def kept_parameters(model: nn.Module) -> Iterator[None]:
    """Every module's parameter and buffer dicts restored on exit: ``torch.func.functional_call``
    (torch 2.14) leaves plain tensors in place of the Parameters of a module instance that appears
    twice in the model, which would cut them off from the user's optimizer."""
    saved = [(m, dict(m._parameters), dict(m._buffers)) for m in model.modules()]
    try:
        yield
    finally:
        for m, params, buffers in saved:
            m._parameters.clear()
            m._parameters.update(params)
            m._buffers.clear()
            m._buffers.update(buffers)


def check_finite_sums(sums: Mapping[str, Tensor]) -> None:
    """Raise NonFiniteError naming the parameters whose importance overflowed (one reduction)."""
    if sums and not finite(torch.stack([s.sum() for s in sums.values()])):
        bad = [n for n, s in sums.items() if not finite(s)]
        raise NonFiniteError(f"importance is not finite for {bad} (the gradients overflowed)")


def sq_norm_total(out: Tensor) -> Tensor:
    """sum_n ||f(x_n)||^2, computed in float32 at least (a float64 output stays float64: the
    backward's seed ``2 f(x_n)`` rounded to float32 is amplified wherever the gradient is a
    cancellation, e.g. before a final LayerNorm, whose output norm barely depends on its input)."""
    return (out if out.dtype == torch.float64 else out.float()).pow(2).sum()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside; every module's own ``training`` flag restored on exit.

    When no module overrides ``train()``, the flags are set directly (what ``nn.Module.train``
    does, without its per-call recursion); otherwise ``model.eval()`` runs so overrides are honoured.
    """
    mods = list(model.modules())
    flags = [m.training for m in mods]
    if any(flags):
        if all(type(m).train is nn.Module.train for m in mods):
            for m in mods:
                object.__setattr__(m, "training", False)
        else:
            model.eval()
    try:
        yield
    finally:
        for m, flag in zip(mods, flags, strict=True):
            if m.training is not flag:
                object.__setattr__(m, "training", flag)


def uncompiled(model: nn.Module) -> nn.Module:
    """The module that ``torch.compile`` wrapped (``OptimizedModule._orig_mod``), else ``model``.

    Its parameter names carry no ``_orig_mod.`` prefix: the names of the uncompiled model.

    Examples
    --------
    >>> from torch import nn
    >>> lin = nn.Linear(2, 2)
    >>> uncompiled(lin) is lin
    True
    """
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # not loaded: nothing was compiled
    while eval_frame is not None and isinstance(model, eval_frame.OptimizedModule):
        inner = model._orig_mod
        if not isinstance(inner, nn.Module):  # a compiled function, not a module: keep it
            break
        model = inner
    return model


def unwrapped(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel``/``DataParallel`` and ``torch.compile``, in any
    order, else ``model``: its parameter names carry no ``module.`` or ``_orig_mod.`` prefix, and
    its forward runs on this process alone, without the wrapper's gradient hooks or scatter.

    Examples
    --------
    >>> from torch import nn
    >>> lin = nn.Linear(2, 2)
    >>> unwrapped(nn.DataParallel(lin)) is lin
    True
    """
    while True:
        inner = uncompiled(model)
        if isinstance(inner, nn.parallel.DistributedDataParallel | nn.DataParallel):
            inner = inner.module
        if inner is model:
            return model
        model = inner


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Compiled code runs eagerly inside (``torch.compiler.set_stance("force_eager")``).

    The estimators' hooks and their backward to recorded layer outputs need the eager modules: in
    a compiled graph the hooks see tensors that the graph's own backward does not pass through, so
    their gradients would be zero. Costs nothing when ``torch.compile`` was never used.
    """
    if "torch._dynamo" not in sys.modules:
        yield
        return
    with torch.compiler.set_stance("force_eager"):
        yield


def zeros(named: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in named.items()}
