"""Exact importance from the user's own training forward (``MASConfig(shared_forward=True)``).

A separate importance pass costs a forward, a partial backward and the ``|G|^T |A|`` products. When
the training forward computes the same function as an eval-mode forward, its layer inputs are the
``A`` the exact estimator needs: recording them while the user's forward runs and taking the
backward of ``sum_n ||f(x_n)||^2`` to the layer outputs right after it (keeping the graph for the
user's own backward) gives the same per-sample sums without the second forward. The layers' inputs
and output gradients wait (activation-sized, no parameter-sized buffer) until ``observe`` turns them
into importance, folding the ``nn.Linear`` products straight into the running mean
(``accumulate.RunningImportance.update``).

Only used where it gives the same numbers as the separate pass:

- every trainable parameter belongs to a layer with a closed-form fast path (a rule of
  :mod:`.registry`), called once in the forward, and the forward is not compiled (hooks record
  nothing inside a ``torch.compile``-d graph); no layer's rule recomputes it from its weights
  (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``: the optimizer step changes them before ``observe``);
- no module that behaves differently in training mode is in training mode: dropout with ``p > 0``
  (samples would see random masks; also a stacked RNN's own ``dropout``), batch norm (couples the
  samples of a batch), instance norm with running statistics, ``nn.RReLU``, attention and
  transformer layers (their own dropout);
- gradients are enabled, autocast is off, and the forward's input is the very tensor later passed
  to ``observe``.

Otherwise ``observe`` runs the separate pass, as without the option. A custom module whose forward
reads ``self.training`` (e.g. calls ``F.dropout``) cannot be detected: leave the option off for it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from online_mas.estimators.common import BatchImportance, finite
from online_mas.estimators.exact import (
    Call,
    Pair,
    covered,
    factored_sums,
    fast_candidates,
    output_grads,
    record_hook,
    used_outside,
    versions,
)
from online_mas.estimators.registry import rule_for

_TRAIN_DEPENDENT = (
    nn.modules.batchnorm._BatchNorm,
    nn.RReLU,
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)


def train_dependent(model: nn.Module) -> nn.Module | None:
    """The first module in training mode whose training forward differs from its eval forward."""
    for m in model.modules():
        if not m.training:
            continue
        if isinstance(m, nn.modules.dropout._DropoutNd):
            if m.p > 0:
                return m
        elif isinstance(m, nn.RNNBase):  # dropout between stacked layers, in training mode only
            if m.dropout > 0 and m.num_layers > 1:
                return m
        elif isinstance(m, _TRAIN_DEPENDENT) or (
            isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.track_running_stats
        ):
            return m
    return None


class SharedForward:
    """Records the fast-path layers during the user's forward and their output gradients there.

    ``arm(names, params)`` before a forward whose importance is wanted, ``on_forward(x, out)`` from the
    model's forward hook, ``take(x)`` from ``observe``. ``gate()`` says whether the hooks may record
    (False while OnlineMAS runs forwards of its own).
    """

    def __init__(self, model: nn.Module, chunk: int | None, gate: Callable[[], bool]) -> None:
        self.model = model
        self.chunk = chunk
        self.gate = gate
        self.enabled = True
        self.why_not = ""  # why the last armed forward was not used
        self._cands: dict[nn.Module, list[str]] = {}
        self._names: tuple[str, ...] = ()  # the parameters of the last arm()
        self._named: dict[str, Tensor] = {}  # and the parameters themselves
        self._uncovered = False  # some of them have no fast path: nothing to record
        self._calls: dict[nn.Module, Call] = {}
        self._handles: list[RemovableHandle] = []
        # the forward's input, its layers' (module, input, output gradient), their inputs' versions
        # and the detached output
        self._result: tuple[Tensor, list[Pair], tuple[tuple[int, ...], ...], Tensor] | None = None

    @property
    def armed(self) -> bool:
        return bool(self._handles)

    def arm(self, names: list[str], params: list[Tensor]) -> None:
        """Record the next forward, if every one of these parameters has a fast path."""
        if not self.enabled or (tuple(names) == self._names and (self._handles or self._uncovered)):
            return  # armed already, or known not to be coverable, for the same parameters
        self.disarm()
        self._named = dict(zip(names, params, strict=True))
        cands = fast_candidates(self.model, self._named)
        self._names, self._uncovered = tuple(names), False
        if {n for ns in cands.values() for n in ns} != set(names):
            self.why_not = "some parameters have no closed-form fast path"
            self._uncovered = True
            return
        if any(getattr(rule_for(m), "record", None) is not None for m in cands):
            self.why_not = "attention layers are recorded by the separate pass"
            self._uncovered = True
            return
        replayed = [type(m).__name__ for m in cands if getattr(rule_for(m), "inputs", None) is not None]
        if replayed:  # the recurrent rule recomputes the layer: the optimizer moves its weights first
            self.why_not = f"the {replayed[0]} rule needs the weights of the forward, which the step changes"
            self._uncovered = True
            return
        record = record_hook(self._calls)

        def hook(m: nn.Module, inputs: tuple[object, ...], kwargs: dict[str, object], out: object) -> object:
            # not in cands: a deepcopy of the model, which copies its hooks along
            return record(m, inputs, kwargs, out) if m in self._cands and self.gate() else None

        self._cands = cands
        self._handles = [m.register_forward_hook(hook, prepend=True, with_kwargs=True) for m in cands]

    def disarm(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._calls.clear()
        self._result = None

    def on_forward(self, x: Tensor, out: Tensor) -> None:
        """After the user's forward of ``x`` gave ``out`` (still attached to its graph)."""
        if not self._handles:
            return
        try:
            why = self._why_not(x, out)
            if why:  # e.g. an evaluation forward under no_grad: keep the training forward's result
                self.why_not = why
                return
            self._result = None
            if not self._calls:
                self.why_not = "no layer was recorded (hooks do not run inside a compiled forward)"
                return
            used = covered(self._calls, x.shape[0])
            if {n for c in used for n in self._cands[c.module]} != set(self._names):
                self.why_not = "a layer was called more than once, skipped or changed in place"
                return
            if used_outside(out, used, self._cands, self._named):
                self.why_not = "a layer's parameter is also used outside its call"
                return
            pairs = output_grads(used, out, retain_graph=True)
            self._result = (x, pairs, tuple(versions(a) for _, a, _ in pairs), out.detach())
        except RuntimeError as err:  # never break the user's forward
            self.enabled = False
            self.disarm()
            warnings.warn(
                f"shared_forward is off for this OnlineMAS: the training forward could not be "
                f"reused ({type(err).__name__}: {err}); importance uses the separate pass",
                RuntimeWarning,
                stacklevel=3,
            )
        finally:
            self._calls.clear()

    @property
    def candidates(self) -> dict[nn.Module, list[str]]:
        """The recorded layers and the names of their parameters."""
        return self._cands

    def take(self, x: Tensor, names: list[str]) -> BatchImportance | None:
        """The importance of what the forward of this very ``x`` recorded (then forgotten), if it
        covers ``names``; the ``nn.Linear`` weights come as factors to fold. Raises
        :class:`~online_mas.estimators.common.NonFiniteError` if it is not finite."""
        result, self._result = self._result, None
        if result is None or result[0] is not x or tuple(names) != self._names:
            return None
        _, pairs, before, out = result
        if any(versions(a) != v for (_, a, _), v in zip(pairs, before, strict=True)):
            self.why_not = "a layer input was changed in place after the forward"
            return None
        sums: dict[str, Tensor] = {}
        factors = factored_sums(self._cands, pairs, sums, chunk=self.chunk)
        return BatchImportance(sums, x.shape[0], out, factors)

    def _why_not(self, x: Tensor, out: Tensor) -> str:
        if not torch.is_grad_enabled() or not out.requires_grad:
            return "the forward ran without gradients"
        if torch.is_autocast_enabled(out.device.type):
            return "the forward ran under autocast"
        if out.dim() == 0 or out.shape[0] != x.shape[0] or not out.is_floating_point():
            return "the output has no batch dimension first"
        if not finite(out.detach()):
            return "the output is not finite"
        module = train_dependent(self.model)
        if module is not None:
            return f"{type(module).__name__} is in training mode"
        return ""
