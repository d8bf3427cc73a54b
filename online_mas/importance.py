"""Label-free parameter importance (Memory Aware Synapses).

The importance of a parameter theta_k is the mean over samples of the absolute sensitivity of the
squared L2 norm of the network's output to that parameter (Aljundi et al., ECCV 2018,
arXiv:1711.09601, eq. 2-4)::

    Omega_k = 1/N * sum_n | d ||f(x_n)||_2^2 / d theta_k |

computed **per sample**: the absolute value is taken before averaging. No labels are used.

Estimators (``method=``):

``"exact"``
    The formula above, exactly, at about the cost of one backward pass. One forward pass records
    the inputs of ``nn.Linear``, ``nn.Conv1d``/``nn.Conv2d``, ``nn.Embedding``, ``nn.LayerNorm``,
    ``nn.GroupNorm`` and eval-mode ``nn.BatchNorm1d/2d`` layers; one backward pass of
    ``sum_n ||f(x_n)||^2`` gives every sample's gradient with respect to those layers' outputs, from
    which per-sample parameter gradients follow in closed form (for a 2-D ``nn.Linear`` the sum of
    per-sample ``|g_n a_n^T|`` is the single matmul ``|G|^T |A|``; a convolution takes one batched
    matmul per kernel offset). Batches larger than ``chunk_size`` go through in chunks, so transient
    memory does not grow with the batch. Parameters these fast paths do not cover (attention
    projections, custom parameters, layers called twice, tied weights) get their per-sample
    gradients from ``torch.func`` (``vmap`` of ``grad``) in chunks of ``chunk_size`` samples, which
    is still exact.
``"vmap"``
    ``torch.func`` per-sample gradients for every parameter (the reference fast method).
``"loop"``
    A plain Python loop over single samples (the slow, obviously correct reference).
``"batch"``
    ``| d (1/N sum_n ||f(x_n)||^2) / d theta_k |``: the absolute value of the gradient of the batch
    mean, as the original MAS code and Avalanche compute it. An approximation: it is never larger
    than the exact value and underestimates parameters whose per-sample gradients disagree in sign.
``"local"``
    Local MAS (l-MAS, section 4 of the paper, its link to Hebb's rule): each layer is judged by its
    own output with its input held fixed. For a layer ``z = F_l(a; theta_l)``::

        Omega_k = 1/N * sum_n | d ||F_l(a_n)||^2 / d theta_k |,   a_n detached

    For ``nn.Linear`` this is ``2/N sum_n |z_ni| |a_nj|``: twice the mean Hebbian product of the
    post- and pre-synaptic activities of the connection. Other layers use the same definition with
    their own output (per-sample ``torch.func`` gradients of the layer alone).

All estimators run the model in eval mode (restoring every module's ``training`` flag afterwards),
never write ``param.grad`` and never touch an optimizer. Importance is returned in float32.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["METHODS", "NonFiniteError", "OutputFn", "importance"]

OutputFn = Callable[[nn.Module, Tensor], Tensor]
"""Maps ``(model, x)`` to the tensor whose squared norm is used; batch dimension first."""

METHODS = ("exact", "vmap", "loop", "batch", "local")


class NonFiniteError(ValueError):
    """The input, the model output or the importance holds nan or inf."""

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)
_FAST = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, *_NORMS)


def importance(
    model: nn.Module,
    x: Tensor,
    *,
    method: str = "exact",
    output: OutputFn | None = None,
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """Label-free MAS importance of every trainable parameter, averaged over the batch.

    Parameters
    ----------
    model
        Any ``nn.Module``. Only parameters with ``requires_grad=True`` are scored.
    x
        A batch of inputs, batch dimension first (floating point, or integer for embeddings).
    method
        ``"exact"`` (default), ``"vmap"``, ``"loop"``, ``"batch"`` or ``"local"``; see the module
        docstring.
    output
        Optional ``output(model, x) -> Tensor`` choosing the tensor whose squared L2 norm is used
        (features, an embedding, one head). Default: ``model(x)``. It must return one tensor with
        the batch dimension first; models returning tuples or dicts need ``output=`` to pick one.
    chunk_size
        Maximum number of samples processed at once: the exact method runs its forward, backward
        and per-sample gradients on ``chunk_size`` samples at a time, and the ``torch.func`` paths
        materialise per-sample gradients for that many samples, so transient memory is bounded
        by ``chunk_size`` whatever the batch size. The result does not depend on it. Default: 64.

    Returns
    -------
    dict[str, Tensor]
        Parameter name -> float32 tensor of the parameter's shape, ``Omega = mean_n |grad_n|``.

    Raises
    ------
    ValueError
        Unknown method, empty batch, non-finite input or output, output without a batch dimension.
    TypeError
        ``x`` is not a tensor or has a dtype that is neither floating point nor integer, or the
        model output is not a single tensor.

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
    >>> bool((om.importance(model, x, method="batch")["0.weight"] <= omega["0.weight"] + 1e-6).all())
    True

    References
    ----------
    Aljundi, Babiloni, Elhoseiny, Rohrbach, Tuytelaars. Memory Aware Synapses: Learning what (not)
    to forget. ECCV 2018. arXiv:1711.09601.
    """
    return _sums(model, x, method, output, chunk_size, mean=True)[0]


def importance_sums(
    model: nn.Module,
    x: Tensor,
    *,
    method: str = "exact",
    output: OutputFn | None = None,
    chunk_size: int | None = None,
) -> tuple[dict[str, Tensor], int, Tensor]:
    """Per-sample importance **summed** over the batch, the batch size, and the model output.

    The building block of :func:`importance` and of the online accumulator (which needs sums and
    counts to weight batches by their size). The returned output is detached and computed in eval
    mode, so callers can derive label-free signals from it without another forward pass.
    """
    sums, n, out, _ = _sums(model, x, method, output, chunk_size, mean=False)
    return sums, n, out


_Fold = tuple[dict[str, Tensor], float, float]  # running means, keep, add (see _fold_sums)


def _sums(
    model: nn.Module,
    x: Tensor,
    method: str,
    output: OutputFn | None,
    chunk_size: int | None,
    *,
    mean: bool,
    fold: _Fold | None = None,
) -> tuple[dict[str, Tensor], int, Tensor, list[str]]:
    """Summed (``mean=False``) or averaged importance. The average divides where it is cheapest
    (the exact paths scale the small output gradients, never a parameter-sized tensor) instead of
    allocating a parameter-sized quotient.

    ``fold`` (sums only; OnlineMAS's running update): the exact method folds what it can straight
    into these running means (:func:`_fold_sums`) when the batch is one chunk; the names folded
    come last in the result, and are missing from the sums."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model)!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if output is not None and not callable(output):
        raise TypeError(f"output must be callable as output(model, x) or None, got {output!r}")
    check_input(x)
    chunk = _check_chunk_size(chunk_size)
    fn: OutputFn = output if output is not None else _call
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with _eval_mode(model), torch.enable_grad():
        scale = 1.0 / x.shape[0] if mean else 1.0
        folded: list[str] = []
        if method == "exact":
            sums, out, folded = _exact(model, named, x, fn, chunk, scale, None if mean else fold)
            scale = 1.0  # applied inside
        elif method == "vmap":
            out = _forward(model, x, fn).detach()
            sums = _func_sums(model, named, x, fn, chunk)
        elif method == "loop":
            sums, out = _loop(model, named, x, fn)
        elif method == "batch":
            sums, out = _batch(named, model, x, fn)
        else:
            sums, out = _local(model, named, x, chunk)
        if scale != 1.0 and sums:
            torch._foreach_mul_(list(sums.values()), scale)  # fresh tensors: in place is safe
    if not folded:  # a fold checked every sum before it changed anything
        _check_finite_sums(sums)
    return sums, x.shape[0], out, folded


def _check_finite_sums(sums: Mapping[str, Tensor]) -> None:
    """Raise NonFiniteError naming the parameters whose importance overflowed (one reduction)."""
    if sums and not _finite(torch.stack([s.sum() for s in sums.values()])):
        bad = [n for n, s in sums.items() if not _finite(s)]
        raise NonFiniteError(f"importance is not finite for {bad} (the gradients overflowed)")


# ----------------------------------------------------------------------------- helpers


def model_output(model: nn.Module, x: Tensor, output: OutputFn | None = None) -> Tensor:
    """The output MAS uses for ``x``, in eval mode and without gradients (for signals).

    Raises :class:`NonFiniteError` if it is not finite, like the estimators.
    """
    with _eval_mode(model), torch.no_grad():
        return _forward(model, x, output if output is not None else _call)


def _call(model: nn.Module, x: Tensor) -> Tensor:
    return model(x)


def check_input(x: Tensor, *, finite: bool = True) -> None:
    """Raise TypeError/ValueError for what is not a batch, NonFiniteError for nan/inf (if ``finite``)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor with the batch dimension first, got {type(x)!r}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"x must have a floating point or integer dtype, got {x.dtype}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (batch dimension first), got shape "
                         f"{tuple(x.shape)}")
    if finite and x.is_floating_point() and not _finite(x):
        raise NonFiniteError("x contains non-finite values (nan or inf)")


def _check_chunk_size(chunk_size: int | None) -> int:
    if chunk_size is None:
        return 64
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1 or None, got {chunk_size!r}")
    return chunk_size


def _forward(model: nn.Module, x: Tensor, fn: OutputFn) -> Tensor:
    try:
        out = fn(model, x)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as err:  # shape or dtype the model does not accept
        raise ValueError(
            f"the model cannot run on x of shape {tuple(x.shape)} and dtype {x.dtype}: {err}"
        ) from err
    if not isinstance(out, Tensor):
        raise TypeError(
            f"the model output is a {type(out).__name__}, not a tensor: pass "
            "output=lambda model, x: ... to choose the tensor whose squared norm MAS uses "
            "(e.g. output=lambda m, x: m(x)[0])"
        )
    if out.dim() == 0 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"the output must have the batch dimension first: input batch {x.shape[0]}, "
            f"output shape {tuple(out.shape)}"
        )
    if not out.is_floating_point():
        raise TypeError(f"the output must be floating point, got {out.dtype}")
    if not _finite(out):
        raise NonFiniteError("the model output contains non-finite values (nan or inf)")
    return out


def _finite(t: Tensor) -> bool:
    """No nan or inf in ``t``. One reduction: a sum is finite unless an element is not (or the sum
    overflows float range, which only values near 1e38 can do; those count as not finite too)."""
    return bool(torch.isfinite(t.sum()))


def _sq_norm_total(out: Tensor) -> Tensor:
    """sum_n ||f(x_n)||^2, computed in float32."""
    return out.float().pow(2).sum()


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
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


def _zeros(named: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in named.items()}


# ----------------------------------------------------------------------------- references


def _loop(
    model: nn.Module, named: Mapping[str, Tensor], x: Tensor, fn: OutputFn
) -> tuple[dict[str, Tensor], Tensor]:
    sums = _zeros(named)
    names, params = list(named), list(named.values())
    outs = []
    for i in range(x.shape[0]):
        out = _forward(model, x[i : i + 1], fn)
        outs.append(out.detach())
        grads = torch.autograd.grad(_sq_norm_total(out), params, allow_unused=True)
        for name, g in zip(names, grads, strict=True):
            if g is not None:
                sums[name] += g.float().abs()
    return sums, torch.cat(outs)


def _batch(
    named: Mapping[str, Tensor], model: nn.Module, x: Tensor, fn: OutputFn
) -> tuple[dict[str, Tensor], Tensor]:
    out = _forward(model, x, fn)
    params = list(named.values())
    # N * |d (1/N sum_n ||f(x_n)||^2) / d theta| = |d sum_n ||f(x_n)||^2 / d theta|
    grads = torch.autograd.grad(_sq_norm_total(out), params, allow_unused=True)
    sums = {
        name: (g.float().abs() if g is not None else torch.zeros_like(p, dtype=torch.float32))
        for (name, p), g in zip(named.items(), grads, strict=True)
    }
    return sums, out.detach()


class _Wrapped(nn.Module):
    """Lets torch.func.functional_call substitute parameters under a custom ``output`` function."""

    def __init__(self, model: nn.Module, fn: OutputFn) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.model, x)


def _func_sums(
    model: nn.Module, named: Mapping[str, Tensor], x: Tensor, fn: OutputFn, chunk: int
) -> dict[str, Tensor]:
    """Exact per-sample |grad| summed over the batch for ``named`` via torch.func, in chunks."""
    if not named:
        return {}
    from torch.func import functional_call, grad, vmap

    wrapped = _Wrapped(model, fn)
    detached = {"model." + n: p.detach() for n, p in named.items()}

    def sq_norm(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        out = functional_call(wrapped, p, (xi.unsqueeze(0),))
        return out.float().pow(2).sum()

    per_sample = vmap(grad(sq_norm), in_dims=(None, 0))
    sums = _zeros(named)
    try:
        for xc in x.split(chunk):
            grads = per_sample(detached, xc)
            for n in named:
                sums[n] += grads["model." + n].float().abs().sum(0)
    except (RuntimeError, NotImplementedError) as err:  # data-dependent control flow, in-place ops
        warnings.warn(
            f"torch.func could not vmap this model ({type(err).__name__}: {err}); "
            "falling back to a per-sample loop for the parameters the fast paths do not cover",
            RuntimeWarning,
            stacklevel=4,
        )
        sums, _ = _loop(model, named, x, fn)
    return sums


# ----------------------------------------------------------------------------- exact fast paths


@dataclass
class _Call:
    module: nn.Module
    inputs: tuple[Tensor, ...]
    output: Tensor
    versions: tuple[int, ...]
    count: int = 1
    extra: dict[str, Tensor] = field(default_factory=dict)


def _own_params(m: nn.Module) -> dict[str, nn.Parameter]:
    """A module's own parameters (``parameters(recurse=False)`` without its generator overhead)."""
    return {k: p for k, p in m._parameters.items() if p is not None}


def _fast_candidates(model: nn.Module, named: Mapping[str, Tensor]) -> dict[nn.Module, list[str]]:
    """Modules with a fast path whose trainable parameters belong to them alone."""
    mods = list(model.modules())
    owners: dict[int, int] = {}
    for m in mods:
        for p in _own_params(m).values():
            owners[id(p)] = owners.get(id(p), 0) + 1
    name_of = {id(p): n for n, p in named.items()}
    cands: dict[nn.Module, list[str]] = {}
    for m in mods:
        if not isinstance(m, _FAST) or not _fast_supported(m):
            continue
        own = [p for p in _own_params(m).values() if id(p) in name_of]
        if own and all(owners[id(p)] == 1 for p in own):
            cands[m] = [name_of[id(p)] for p in own]
    return cands


def _fast_supported(m: nn.Module) -> bool:
    if isinstance(m, nn.Conv1d | nn.Conv2d):
        return m.padding_mode == "zeros" and not isinstance(m.padding, str)
    if isinstance(m, nn.Embedding):
        return not m.scale_grad_by_freq
    if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        return m.track_running_stats and m.running_mean is not None
    if isinstance(m, nn.LayerNorm):
        return m.elementwise_affine
    if isinstance(m, nn.GroupNorm):
        return m.affine
    return True


def _record_hook(calls: dict[nn.Module, _Call]) -> Callable[[nn.Module, tuple[object, ...], object], object]:
    """A forward hook that records each module's first call (input, output) into ``calls``."""

    def hook(m: nn.Module, inputs: tuple[object, ...], out: object) -> object:
        if m in calls:
            calls[m].count += 1
            return None
        tensors = tuple(t for t in inputs if isinstance(t, Tensor))
        if not isinstance(out, Tensor) or not tensors:
            calls[m] = _Call(m, (), torch.empty(0), (), count=2)  # unsupported: not covered
            return None
        calls[m] = _Call(m, tensors, out, tuple(t._version for t in tensors))
        return out.clone()  # later in-place ops (ReLU(inplace=True)) must not touch the record

    return hook


@contextlib.contextmanager
def _recording(cands: dict[nn.Module, list[str]]) -> Iterator[dict[nn.Module, _Call]]:
    calls: dict[nn.Module, _Call] = {}
    hook = _record_hook(calls)
    handles = [m.register_forward_hook(hook) for m in cands]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def _covered(calls: dict[nn.Module, _Call], rows: int) -> list[_Call]:
    """The recorded calls the fast paths can use: called once, differentiable, inputs untouched
    since (no in-place op changed them), batch dimension first."""
    return [
        c
        for c in calls.values()
        if c.count == 1
        and c.output.requires_grad
        and all(t._version == v for t, v in zip(c.inputs, c.versions, strict=True))
        and c.inputs[0].shape[:1] == (rows,)
    ]


def _layer_sums(
    cands: dict[nn.Module, list[str]],
    covered: list[_Call],
    out: Tensor,
    scale: float,
    sums: dict[str, Tensor],
    *,
    chunk: int | None = None,
) -> None:
    """One backward of ``sum_n ||out_n||^2`` to the covered layers' outputs, then their sums."""
    _pair_sums(cands, _output_grads(covered, out), scale, sums, chunk=chunk)


_Pair = tuple[nn.Module, Tensor, Tensor]  # a layer, its input, the gradient at its output


def _output_grads(covered: list[_Call], out: Tensor, *, retain_graph: bool = False) -> list[_Pair]:
    """The gradient of ``sum_n ||out_n||^2`` at each covered layer's output, with the layer's input.

    ``retain_graph`` keeps ``out``'s graph for a backward that comes later (someone else's).
    """
    grads = torch.autograd.grad(
        _sq_norm_total(out), [c.output for c in covered], allow_unused=True, retain_graph=retain_graph
    )
    return [(c.module, c.inputs[0].detach(), torch.zeros_like(c.output) if g is None else g.detach())
            for c, g in zip(covered, grads, strict=True)]


def _pair_sums(
    cands: dict[nn.Module, list[str]],
    pairs: list[_Pair],
    scale: float,
    sums: dict[str, Tensor],
    *,
    chunk: int | None = None,
) -> None:
    """Add each layer's per-sample importance sums to ``sums``; ``chunk`` splits the closed-form
    per-sample products into row blocks (transient memory)."""
    for m, a, g in pairs:
        if chunk is None or a.shape[0] <= chunk:
            _fast_sums(m, cands[m], a, g, scale, sums)
        else:
            for ac, gc in zip(a.split(chunk), g.split(chunk), strict=True):
                _fast_sums(m, cands[m], ac, gc, scale, sums)


_FOLD_BOUND = 1e36  # |G|^T |A| entries stay below this, far from float32's 3.4e38


def _fold_sums(
    cands: dict[nn.Module, list[str]],
    pairs: list[_Pair],
    means: dict[str, Tensor],
    keep: float,
    add: float,
    *,
    sums: dict[str, Tensor],
    chunk: int | None = None,
) -> list[str]:
    """Per-sample importance sums of ``pairs``, with the weights of 2-D ``nn.Linear`` layers folded
    into running means in place: ``m <- keep * m + add * |G|^T |A|`` is one ``addmm_`` (its ``beta``
    and ``alpha``), so no parameter-sized sum is made, nor a second pass over the means.

    Adds the sums of everything not folded to ``sums`` and returns the names folded. Nothing is
    folded unless every sum is known finite first: those in ``sums`` are checked
    (:class:`NonFiniteError`, no running mean changed), and the folded products are bounded by
    ``rows * max|G| * max|A|``; if that bound is not finite and small, every sum is computed and
    checked instead, and none folded.
    """
    fold: list[tuple[str, Tensor, Tensor, Tensor]] = []  # (name, mean, |g|, |a|) of folded weights
    rest: list[_Pair] = []
    own: dict[str, Tensor] = {}
    for m, a, g in pairs:
        names = {n.rsplit(".", 1)[-1]: n for n in cands[m]}
        mean = means.get(names.get("weight", ""))
        if (isinstance(m, nn.Linear) and a.dim() == 2 and mean is not None
                and mean.shape == m.weight.shape and mean.device == a.device):
            fold.append((names["weight"], mean, g.float().abs(), a.float().abs()))
            if "bias" in names:
                own[names["bias"]] = fold[-1][2].sum(0)  # sum_n |g_n|, as _linear gives
        else:
            rest.append((m, a, g))
    if fold:
        peaks = torch.stack([t.amax() for *_, g, a in fold for t in (g, a)]).tolist()
        rows = max(a.shape[0] for *_, a in fold)
        # every layer's bound on its own: a nan fails its comparison (max() could skip it)
        if not all(g * a * rows < _FOLD_BOUND for g, a in zip(peaks[::2], peaks[1::2], strict=True)):
            fold, rest, own = [], list(pairs), {}  # possibly not finite: no fold
    _pair_sums(cands, rest, 1.0, own, chunk=chunk)
    sums.update(own)
    _check_finite_sums(sums)
    for _, mean, g, a in fold:
        mean.addmm_(g.t(), a, beta=keep, alpha=add)
    return [name for name, *_ in fold]


def _exact(
    model: nn.Module,
    named: Mapping[str, Tensor],
    x: Tensor,
    fn: OutputFn,
    chunk: int,
    scale: float,
    fold: _Fold | None = None,
) -> tuple[dict[str, Tensor], Tensor, list[str]]:
    """Fast paths where they apply, torch.func for the rest; every result is multiplied by ``scale``.

    The batch goes through ``chunk`` samples at a time (forward, backward and per-sample
    gradients), so every transient buffer is bounded by ``chunk``, whatever the batch size; the
    sums accumulate in place across chunks. Samples are independent in eval mode, so chunking
    does not change the result. ``fold`` (with ``scale == 1``): a batch of one chunk folds its
    ``nn.Linear`` weights into the running means, once every other sum is known finite.
    """
    cands = _fast_candidates(model, named)
    sums: dict[str, Tensor] = {}
    hits: dict[str, int] = {}
    pieces = x.split(chunk)
    pairs: list[_Pair] = []  # kept for the fold (one chunk only)
    outs = []
    with _recording(cands) as calls:
        for xc in pieces:
            calls.clear()
            out = _forward(model, xc, fn)
            outs.append(out.detach())
            covered = _covered(calls, xc.shape[0])
            if covered:
                if fold is not None and len(pieces) == 1 and scale == 1.0:
                    pairs = _output_grads(covered, out)
                else:
                    _layer_sums(cands, covered, out, scale, sums)
                del out  # the graph is freed; keep only this layer's input and output grad
                for c in covered:
                    for n in cands[c.module]:
                        hits[n] = hits.get(n, 0) + 1
                del covered
    for n in [n for n, k in hits.items() if k != len(pieces)]:  # covered in some chunks only
        del sums[n]
    rest = {n: p for n, p in named.items() if n not in sums and hits.get(n) != len(pieces)}
    if rest:
        slow = _func_sums(model, rest, x, fn, chunk)
        if scale != 1.0:
            torch._foreach_mul_(list(slow.values()), scale)
        sums.update(slow)
    folded: list[str] = []
    if pairs and fold is not None:
        folded = _fold_sums(cands, pairs, *fold, sums=sums)
    out_all = outs[0] if len(outs) == 1 else torch.cat(outs)
    return {n: sums[n] for n in named if n not in folded}, out_all, folded


def _fast_sums(
    m: nn.Module, names: list[str], a: Tensor, g: Tensor, scale: float, acc: dict[str, Tensor]
) -> None:
    """Add ``scale`` times the sum over samples of |per-sample grad| of one layer to ``acc``, from
    the layer's input ``a`` and output gradient ``g``. Every per-sample gradient is linear in ``g``,
    so the scale goes on ``g``."""
    g = g.float()
    if scale != 1.0:
        g = g * scale
    own = _own_params(m)
    w: Tensor | None
    b: Tensor | None
    short = {name: name.rsplit(".", 1)[-1] for name in names}
    if isinstance(m, nn.Linear):
        w_name = next((n for n in names if short[n] == "weight"), None)
        w, b = _linear(a.float(), g, bias=m.bias is not None,
                       into=acc.get(w_name) if w_name is not None else None)
    elif isinstance(m, nn.Conv1d | nn.Conv2d):
        w, b = _conv(m, a.float(), g)
    elif isinstance(m, nn.Embedding):
        w, b = _embedding(m, a, g), None
    else:
        w, b = _norm(m, a.float(), g)
    by_param = {"weight": w, "bias": b}
    for name in names:
        t = by_param[short[name]]
        if t is None or t.shape != own[short[name]].shape:
            raise RuntimeError(f"internal error: fast path for {type(m).__name__} gave no {short[name]}")
        prev = acc.get(name)
        if prev is None:
            acc[name] = t
        elif prev is not t:
            prev.add_(t)


def _linear(a: Tensor, g: Tensor, *, bias: bool, into: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Weight and bias sums of a Linear layer; the weight sum is added to ``into`` in place if given."""
    if a.dim() == 2:
        # sum_n |g_n a_n^T| = sum_n |g_n| |a_n|^T = |G|^T |A|: one matmul.
        ga = g.abs()
        w = ga.t() @ a.abs() if into is None else into.addmm_(ga.t(), a.abs())
        return w, (ga.sum(0) if bias else None)
    a3, g3 = a.reshape(a.shape[0], -1, a.shape[-1]), g.reshape(g.shape[0], -1, g.shape[-1])
    per = torch.bmm(g3.transpose(1, 2), a3).abs_()  # per-sample gradients of this chunk
    w = per.sum(0) if into is None else into.add_(per.sum(0))
    return w, (g3.sum(1).abs().sum(0) if bias else None)


def _conv(m: nn.Conv1d | nn.Conv2d, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor | None]:
    """Per-sample convolution weight gradients, one kernel offset at a time.

    For kernel offset ``(i, j)`` the per-sample gradient is ``dW_n[:, :, i, j] = G_n S_n^T`` with
    ``G_n`` the output gradient (out channels x positions) and ``S_n`` the input window that the
    offset sees (in channels x positions): one batched matmul per offset, whose ``|.|`` is summed
    over samples at once. Same arithmetic as unfolding (im2col) the input, without the
    ``k*k``-times larger unfolded copy; transient memory is one window and one ``(samples, out,
    in)`` product per chunk of samples.
    """
    padding = tuple(int(p) for p in m.padding)  # str padding never reaches here
    if isinstance(m, nn.Conv1d):  # a 1-D convolution is a 2-D one of height 1
        a, g = a.unsqueeze(-2), g.unsqueeze(-2)
        (kh, kw), (sh, sw), (dh, dw) = (1, *m.kernel_size), (1, *m.stride), (1, *m.dilation)
        ph, pw = 0, padding[0]
    else:
        (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
        ph, pw = padding
    if a.dim() != 4:  # unbatched call: not a batch of samples
        raise RuntimeError("internal error: unbatched convolution reached the fast path")
    groups, out_c, in_c = m.groups, g.shape[1], a.shape[1]
    og, cg = out_c // groups, in_c // groups
    ho, wo = g.shape[-2:]
    w = torch.empty(kh, kw, out_c, cg, device=a.device)
    n = a.shape[0]
    ap = F.pad(a, (pw, pw, ph, ph)) if ph or pw else a
    gl = g.reshape(n * groups, og, ho * wo)
    for i in range(kh):
        for j in range(kw):
            r, c = i * dh, j * dw
            window = ap[:, :, r : r + sh * (ho - 1) + 1 : sh, c : c + sw * (wo - 1) + 1 : sw]
            per = torch.bmm(gl, window.reshape(n * groups, cg, ho * wo).transpose(1, 2))
            torch.sum(per.abs_().view(n, out_c, cg), 0, out=w[i, j])
    b = g.flatten(2).sum(-1).abs().sum(0) if m.bias is not None else None
    return w.permute(2, 3, 0, 1).reshape(m.weight.shape), b


def _embedding(m: nn.Embedding, idx: Tensor, g: Tensor) -> Tensor:
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
    return w


def _norm(m: nn.Module, a: Tensor, g: Tensor) -> tuple[Tensor | None, Tensor | None]:
    n = a.shape[0]
    if isinstance(m, nn.LayerNorm):
        xhat = F.layer_norm(a, m.normalized_shape, eps=m.eps)
        gw = (g * xhat).reshape(n, -1, *m.normalized_shape).sum(1)
        gb = g.reshape(n, -1, *m.normalized_shape).sum(1)
    else:
        if isinstance(m, nn.GroupNorm):
            xhat = F.group_norm(a, m.num_groups, eps=m.eps)
        else:  # eval-mode batch norm: running statistics (checked by _fast_supported)
            rm, rv = m.running_mean, m.running_var
            if not isinstance(rm, Tensor) or not isinstance(rv, Tensor):
                raise RuntimeError("internal error: batch norm without running statistics")
            shape = (1, -1) + (1,) * (a.dim() - 2)
            xhat = (a - rm.view(shape)) / torch.sqrt(rv.view(shape) + float(m.eps))  # type: ignore[arg-type]
        gw = (g * xhat).reshape(n, a.shape[1], -1).sum(-1)
        gb = g.reshape(n, a.shape[1], -1).sum(-1)
    return gw.abs().sum(0), gb.abs().sum(0)


# ----------------------------------------------------------------------------- local (l-MAS)


def _local(
    model: nn.Module, named: Mapping[str, Tensor], x: Tensor, chunk: int
) -> tuple[dict[str, Tensor], Tensor]:
    """Each module is judged by the squared norm of its own output, its inputs held fixed."""
    name_of = {id(p): n for n, p in named.items()}
    owners = {m: [name_of[id(p)] for p in m.parameters(recurse=False) if id(p) in name_of]
              for m in model.modules()}
    owners = {m: ns for m, ns in owners.items() if ns}
    records: dict[nn.Module, list[tuple[tuple[object, ...], dict[str, object]]]] = {}

    def hook(m: nn.Module, args: tuple[object, ...], kwargs: dict[str, object], out: object) -> None:
        detach = lambda t: t.detach() if isinstance(t, Tensor) else t  # noqa: E731
        records.setdefault(m, []).append(
            (tuple(detach(t) for t in args), {k: detach(v) for k, v in kwargs.items()})
        )

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in owners]
    try:
        with torch.no_grad():
            out = _forward(model, x, _call)
    finally:
        for h in handles:
            h.remove()
    sums = _zeros(named)
    for m, calls in records.items():
        for args, kwargs in calls:
            layer_sums = _local_module(m, owners[m], named, args, kwargs, chunk)
            for n, s in layer_sums.items():
                sums[n] += s
    return sums, out.detach()


def _local_module(
    m: nn.Module,
    names: list[str],
    named: Mapping[str, Tensor],
    args: tuple[object, ...],
    kwargs: dict[str, object],
    chunk: int,
) -> dict[str, Tensor]:
    if isinstance(m, nn.Linear) and len(args) == 1 and not kwargs:
        a = args[0]
        if isinstance(a, Tensor) and a.dim() == 2:
            with torch.no_grad():
                z = m(a).float()
            # d||z_n||^2/dW = 2 z_n a_n^T  ->  sum_n |.| = 2 |Z|^T |A|
            res = {"weight": 2 * z.abs().t() @ a.float().abs(), "bias": 2 * z.abs().sum(0)}
            return {n: res[n.rsplit(".", 1)[-1]] for n in names}
    from torch.func import functional_call, grad, vmap

    short = {n: n.rsplit(".", 1)[-1] for n in names}
    params = {short[n]: named[n].detach() for n in names}
    tensors = [i for i, t in enumerate(args) if isinstance(t, Tensor)]
    if not tensors:
        return {}

    def sq_norm(p: dict[str, Tensor], *sample: Tensor) -> Tensor:
        call_args = list(args)
        for i, t in zip(tensors, sample, strict=True):
            call_args[i] = t.unsqueeze(0)
        out = functional_call(m, p, tuple(call_args), dict(kwargs))
        if isinstance(out, tuple):  # e.g. nn.MultiheadAttention returns (output, weights)
            out = out[0]
        return out.float().pow(2).sum()

    batch = [t for t in args if isinstance(t, Tensor)]
    n_samples = batch[0].shape[0]
    per = vmap(grad(sq_norm), in_dims=(None, *([0] * len(batch))))
    sums = {n: torch.zeros(named[n].shape, device=named[n].device) for n in names}
    for start in range(0, n_samples, chunk):
        piece = [t[start : start + chunk] for t in batch]
        grads = per(params, *piece)
        for n in names:
            sums[n] += grads[short[n]].float().abs().sum(0)
    return sums
