"""Label-free parameter importance of one batch (Memory Aware Synapses).

The importance of a parameter theta_k is the mean over samples of the absolute sensitivity of the
squared L2 norm of the network's output to it (Aljundi et al., ECCV 2018, arXiv:1711.09601,
eq. 2-4)::

    Omega_k = 1/N * sum_n | d ||f(x_n)||_2^2 / d theta_k |

computed **per sample**: the absolute value is taken before averaging. No labels are used.

Methods (``method=``):

``"exact"``
    The formula above, exactly, at about the cost of one backward pass: closed-form rules per
    layer family (:mod:`.registry`: ``nn.Linear``, ``nn.Conv1d/2d/3d`` and ``nn.ConvTranspose1d/2d/3d``
    with any padding, ``nn.Embedding``, affine norms (layer, RMS, group, instance), eval-mode batch
    norm, ``nn.PReLU``, ``nn.LSTM``/``nn.GRU``/``nn.RNN`` by a recomputed recurrence,
    ``nn.MultiheadAttention`` by its projections, so the transformer layers in either layout) and
    ``torch.func`` per-sample gradients for every other parameter.
``"vmap"``
    ``torch.func`` per-sample gradients for every parameter.
``"loop"``
    A plain loop over single samples (the slow, obviously correct reference).
``"batch"``
    ``| d (1/N sum_n ||f(x_n)||^2) / d theta_k |``, the absolute gradient of the batch mean, as the
    original MAS code and Avalanche compute it: never larger than the exact value.
``"local"``
    Local MAS (l-MAS, section 4 of the paper): each layer judged by its own output (:mod:`.local`).
``"jacobian"``, ``"norm"``, ``"fisher"``
    Other per-sample sensitivities, to compare with MAS's (:mod:`.sensitivity`):
    ``sum_k |d f_k / d theta|`` (one gradient per output), ``|d ||f|| / d theta|`` (the unsquared
    norm, on the exact path), ``(d log softmax(f)_y / d theta)^2`` with ``y = argmax f`` (the
    own-prediction Fisher diagonal). Label-free, averaged over samples like the others.

Every method runs the model in eval mode (restoring each module's ``training`` flag), never writes
``param.grad`` and returns float32. A ``torch.compile``-d, ``DistributedDataParallel`` or
``DataParallel`` model is estimated as the model it wraps, under its names (no ``_orig_mod.`` or
``module.``, as in :class:`~online_mas.OnlineMAS`), on this process alone; compiled code runs
eagerly during the pass. :func:`plan`
shows which rule each parameter takes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from online_mas.estimators.budget import DEFAULT_MEMORY_BUDGET, auto_chunk, check_memory_budget
from online_mas.estimators.common import (
    BatchImportance,
    NonFiniteError,
    OutputFn,
    Rule,
    call_model,
    check_chunk_size,
    check_finite_sums,
    check_input,
    eager,
    eval_mode,
    forward,
    unwrapped,
)
from online_mas.estimators.costs import Cost, func_cost, layer_cost
from online_mas.estimators.exact import (
    covered,
    exact_sums,
    fast_candidates,
    recording,
    sequence_first,
    used_outside,
)
from online_mas.estimators.func import batch_sums, func_sums, loop_sums
from online_mas.estimators.inputs import Inputs, batch_size
from online_mas.estimators.local import local_sums
from online_mas.estimators.registry import register, rule_for
from online_mas.estimators.sensitivity import fisher_sums, jacobian_sums, norm_output, unit_output

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "METHODS",
    "BatchImportance",
    "Cost",
    "Inputs",
    "NonFiniteError",
    "OutputFn",
    "Rule",
    "estimate",
    "importance",
    "plan",
    "register",
]

METHODS = ("exact", "vmap", "loop", "batch", "local", "jacobian", "norm", "fisher")


def importance(
    model: nn.Module,
    x: Inputs,
    *,
    method: str = "exact",
    output: OutputFn | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
) -> dict[str, Tensor]:
    """Label-free MAS importance of every trainable parameter, averaged over the batch.

    Parameters
    ----------
    model
        Any ``nn.Module``. Only parameters with ``requires_grad=True`` are scored.
    x
        A batch of inputs, batch dimension first (floating point, or integer for embeddings): one
        tensor, or a tuple (``model(*x)``) or dict (``model(**x)``) of tensors.
    method
        ``"exact"`` (default), ``"vmap"``, ``"loop"``, ``"batch"``, ``"local"``, ``"jacobian"``,
        ``"norm"`` or ``"fisher"`` (see the module docstring).
    output
        Optional ``output(model, x) -> Tensor`` choosing the tensor whose squared L2 norm is used
        (features, an embedding, one head); default ``model(x)``. Models returning tuples or dicts
        need it.
    chunk_size
        Samples processed at once; the result does not depend on it. Default: as many as fit
        ``memory_budget``.
    memory_budget
        Bytes of transient memory the pass may take when ``chunk_size`` is None (default
        :data:`DEFAULT_MEMORY_BUDGET`, 1 GiB): one sample's share (the activations autograd keeps,
        and the per-sample gradients ``torch.func`` forms) is measured once per model and input
        shape by a one-sample forward, and the chunk is the budget divided by it
        (:mod:`.budget`).

    Returns
    -------
    dict[str, Tensor]
        Parameter name -> float32 tensor of the parameter's shape, ``Omega = mean_n |grad_n|``.

    Raises
    ------
    ValueError
        Unknown method, empty batch, non-finite input or output (:class:`NonFiniteError`), output
        without a batch dimension.
    TypeError
        ``x`` is not a tensor of a floating point or integer dtype, or the output is not a tensor.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import online_mas as om
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> x = torch.randn(8, 3)
    >>> omega = om.importance(model, x)
    >>> sorted(omega)
    ['0.bias', '0.weight', '2.bias', '2.weight']
    >>> loop = om.importance(model, x, method="loop")
    >>> all(torch.allclose(omega[k], loop[k], rtol=1e-4, atol=1e-7) for k in omega)
    True

    References
    ----------
    Aljundi, Babiloni, Elhoseiny, Rohrbach, Tuytelaars. Memory Aware Synapses: Learning what (not)
    to forget. ECCV 2018. arXiv:1711.09601.
    """
    return _run(model, x, method, output, chunk_size, memory_budget, mean=True).sums


def estimate(
    model: nn.Module,
    x: Inputs,
    *,
    method: str = "exact",
    output: OutputFn | None = None,
    chunk_size: int | None = None,
    factors: bool = False,
    memory_budget: int | None = None,
) -> BatchImportance:
    """Per-sample importance **summed** over the batch, with the batch size and the model output.

    What an accumulator needs to weight batches by their size. With ``factors=True`` and a batch of
    at most ``chunk_size`` samples, the exact method returns the 2-D ``nn.Linear`` weights as
    factors ``(|G|, |A|)`` instead of sums (see :class:`BatchImportance`). Everything returned is
    finite; a batch whose importance is not raises :class:`NonFiniteError`.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> b = estimate(nn.Linear(3, 2), torch.randn(5, 3), factors=True)
    >>> b.n, sorted(b.sums), sorted(b.factors), tuple(b.materialize()["weight"].shape)
    (5, ['bias'], ['weight'], (2, 3))
    """
    return _run(model, x, method, output, chunk_size, memory_budget, mean=False, factors=factors)


def importance_sums(
    model: nn.Module,
    x: Inputs,
    *,
    method: str = "exact",
    output: OutputFn | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
) -> tuple[dict[str, Tensor], int, Tensor]:
    """``(sums, n, output)`` of :func:`estimate`, every sum formed."""
    b = _run(model, x, method, output, chunk_size, memory_budget, mean=False)
    return b.sums, b.n, b.out


def plan(
    model: nn.Module,
    x: Inputs | None = None,
    *,
    output: OutputFn | None = None,
    costs: bool = False,
    memory_budget: int | None = None,
) -> dict[str, str] | dict[str, Cost]:
    """Which rule the exact method uses for each trainable parameter: ``"torch.func"`` where none.

    Without ``x`` this is what the module types allow; with ``x`` one forward also finds layers
    that the call pattern takes off the rules (called twice, in-place ops, no batch dimension).
    With ``costs=True`` (needs ``x``) each parameter maps to a :class:`~.costs.Cost`: its rule,
    its layer, and the estimated FLOPs and transient bytes of that layer's per-sample sums for
    the batch ``x`` (``torch.func``: its per-sample gradients for a chunk of ``memory_budget``).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.PReLU(), nn.LayerNorm(4))
    >>> plan(model)
    {'0.weight': 'linear', '0.bias': 'linear', '1.weight': 'prelu', '2.weight': 'norm', '2.bias': 'norm'}
    >>> print(plan(model, torch.randn(8, 3), costs=True)["0.weight"])
    linear (0): 0.0 MFLOP, 0.00 MiB
    >>> plan(model, torch.randn(8, 3), costs=True)["0.weight"].flops  # 2*8*4*3 + 2*8*(4+3)
    304
    """
    model = unwrapped(model)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    cands = fast_candidates(model, named)
    if costs and x is None:
        raise ValueError("plan(costs=True) needs an example batch x")
    entries: dict[str, Cost] = {}
    outside: set[str] = set()
    if x is not None:
        check_input(x)
        fn = output if output is not None else call_model
        layer = {m: name for name, m in model.named_modules()}
        with recording(cands, sequence_first(model)) as calls, eval_mode(model), torch.enable_grad(), eager():
            out = forward(model, x, fn)
            used = covered(calls, batch_size(x))
            outside = used_outside(out, used, cands, named)  # these go to torch.func
            del out
            for c in used if costs else []:
                a, g = (c.inputs[0], c.targets[0]) if c.pair is None else c.pair(c.targets)
                flops, memory = layer_cost(c.module, a, g)
                rule = rule_for(c.module)
                for n in cands[c.module]:
                    entries[n] = Cost(rule.name if rule else "?", layer[c.module], flops, memory)
            budget = check_memory_budget(memory_budget)
            chunk = auto_chunk(model, x, fn, named, "exact", budget) if costs else 0
        cands = {m: ns for m, ns in cands.items() if m in {c.module for c in used}}
    rules = {n: rule_for(m).name for m, ns in cands.items() for n in ns  # type: ignore[union-attr]
             if n not in outside}
    if not costs:
        return {n: rules.get(n, "torch.func") for n in named}
    return {n: entries[n] if n in rules else Cost("torch.func", n.rpartition(".")[0], None,
                                                   func_cost(p, chunk))
            for n, p in named.items()}


def _run(
    model: nn.Module,
    x: Inputs,
    method: str,
    output: OutputFn | None,
    chunk_size: int | None,
    memory_budget: int | None,
    *,
    mean: bool,
    factors: bool = False,
) -> BatchImportance:
    """Summed (``mean=False``) or averaged importance. The average scales the small output gradients
    on the exact path, never a parameter-sized tensor."""
    from online_mas.sharded import check_data_parallel  # here: sharded imports estimators.common

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model)!r}")
    check_data_parallel(model)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if output is not None and not callable(output):
        raise TypeError(f"output must be callable as output(model, x) or None, got {output!r}")
    check_input(x)
    fixed = check_chunk_size(chunk_size)
    budget = check_memory_budget(memory_budget)
    fn: OutputFn = output if output is not None else call_model
    model = unwrapped(model)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    folded: dict[str, tuple[Tensor, Tensor]] = {}
    with eval_mode(model), torch.enable_grad(), eager():
        chunk = fixed if fixed is not None or method in ("loop", "batch") else auto_chunk(
            model, x, fn, named, method, budget)
        chunk = chunk if chunk is not None else batch_size(x)
        scale = 1.0 / batch_size(x) if mean else 1.0
        if method in ("exact", "norm"):
            sums, out, folded = exact_sums(model, named, x, unit_output(fn) if method == "norm" else fn,
                                           chunk, scale=scale, factor=factors and not mean)
            out = norm_output(out) if method == "norm" else out
            scale = 1.0  # applied inside
        elif method == "vmap":
            out = forward(model, x, fn).detach()
            sums = func_sums(model, named, x, fn, chunk)
        elif method == "loop":
            sums, out = loop_sums(model, named, x, fn)
        elif method == "batch":
            sums, out = batch_sums(named, model, x, fn)
        elif method == "jacobian":
            sums, out = jacobian_sums(model, named, x, fn, chunk)
        elif method == "fisher":
            sums, out = fisher_sums(model, named, x, fn, chunk)
        else:
            sums, out = local_sums(model, named, x, chunk)
        if scale != 1.0 and sums:
            torch._foreach_mul_(list(sums.values()), scale)  # fresh tensors: in place is safe
    if not folded:  # a factored result was checked before it was returned
        check_finite_sums(sums)
    return BatchImportance(sums, batch_size(x), out, folded)
