"""OnlineMAS: a thin front that wires the estimator, the running importance, the consolidator, the
trigger and the reducer into three calls of the user's own loop (see ``ARCHITECTURE.md``)."""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from online_mas.accumulate import RunningImportance
from online_mas.bounded import (
    PENALTY_SHAPES,
    check_delta,
    huber_grad_,
    huber_loss,
    huber_proximal_,
    l1_grad_,
    l1_loss,
    l1_proximal_,
)
from online_mas.buffer import HardBuffer
from online_mas.checks import check_choice, is_int, is_real
from online_mas.consolidate import NORMALIZE, ConsolidationRule, Consolidator, CurrentAnchor, StableAnchor
from online_mas.estimators import METHODS, BatchImportance, NonFiniteError, OutputFn, estimate
from online_mas.estimators.common import call_model, check_input, finite, model_output
from online_mas.estimators.doubled import DoubledBatch
from online_mas.estimators.exact import fast_candidates
from online_mas.estimators.inputs import Inputs, batch_size, select
from online_mas.forward import LastForward, Parameters, unwrap
from online_mas.migrate import STATE_VERSION, current_state
from online_mas.penalty import (
    EXPLICIT_LIMIT,
    PROXIMAL_SAFE_ABOVE,
    check_lam,
    penalty_grad_,
    penalty_loss,
    proximal_,
)
from online_mas.reduce import Reducer
from online_mas.schedule import Schedule
from online_mas.sharded import (
    any_sharded,
    check_data_parallel,
    finite_copy,
    local_grads,
    local_lists,
    whole_value,
)
from online_mas.signals import per_sample
from online_mas.skips import Skips
from online_mas.trigger import Trigger, default_detector

if TYPE_CHECKING:
    from online_mas.distributed import CommStats

__all__ = ["DEFAULT", "Event", "MASConfig", "OnlineMAS", "default_detector"]


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()
"""Sentinel: ``OnlineMAS(detector=DEFAULT)`` builds :func:`default_detector`."""


@dataclass(frozen=True)
class MASConfig:
    """The numbers of OnlineMAS's importance estimate; every field always applies.

    ``share`` and ``min_estimate`` count samples, never calls (:class:`~online_mas.schedule.Schedule`):
    each batch of ``n`` samples adds ``n * share`` to what is owed, and a batch is estimated once
    ``min(min_estimate, n)`` samples are owed, on ``min(n, floor(owed))`` of its samples (drawn with
    the seeded generator when fewer than ``n``; ``subsample`` caps them). A batch of at most
    ``min_estimate`` samples is thus estimated whole every ``1 / share`` batches (the default is
    every 64th batch at batch 32); at batch 1024, 32 samples every other batch. Either way the
    estimated samples are ``share`` of the stream's at any batch size. ``every=k`` (observe() calls)
    is gone: ``share=1/k`` is the same at a fixed batch size of at most ``min_estimate``.
    """

    method: str = "exact"  # importance estimator, one of om.METHODS (exact, ..., jacobian, norm, fisher)
    share: float = 1 / 64  # fraction of the stream's samples whose importance is estimated, in (0, 1]
    min_estimate: int = 32  # fewest samples one estimate covers (a smaller batch: the whole batch)
    subsample: int | None = None  # estimate on at most this many samples of each batch (seeded)
    chunk_size: int | None = None  # samples estimated at once; None: as many as fit memory_budget
    memory_budget: int | None = None  # bytes of transient memory per estimate (None: 1 GiB)
    seed: int = 0  # seed of the subsample generator
    normalize: str | None = None  # rescale a segment's Omega before folding it: None, "max", "mean"
    shared_forward: bool = False  # exact importance from the training forward where it is the same
    shared_backward: bool = False  # exact importance in the training forward and backward (a doubled batch)
    every: InitVar[object] = None  # gone (it counted observe() calls): raises, naming share

    def __post_init__(self, every: object) -> None:
        if every is not None:
            raise ValueError(f"MASConfig(every={every!r}) counted observe() calls; the importance "
                             f"interval is now a share of the samples: share=1/k is every=k at a fixed "
                             f"batch size of at most min_estimate={self.min_estimate} samples (every=64 "
                             f"is the default share=1/64; every=1 is share=1.0)")
        check_choice("method", self.method, METHODS)
        check_choice("normalize", self.normalize, NORMALIZE)
        if is_real(self.share) and self.share > 1:
            raise ValueError(f"share must be a number in (0, 1] (the fraction of samples estimated), got "
                             f"{self.share!r}; the old every=k (observe() calls) is share=1/k")
        Schedule(self.share, self.min_estimate)  # checks share and min_estimate
        if self.subsample is not None and (not is_int(self.subsample) or self.subsample < 1):
            raise ValueError(f"subsample must be an int >= 1 or None, got {self.subsample!r}")
        if self.chunk_size is not None and (not is_int(self.chunk_size) or self.chunk_size < 1):
            raise ValueError(f"chunk_size must be an int >= 1 or None, got {self.chunk_size!r}")
        if self.memory_budget is not None and (not is_int(self.memory_budget) or self.memory_budget < 1):
            raise ValueError(f"memory_budget must be an int >= 1 (bytes) or None, got {self.memory_budget!r}")
        if not is_int(self.seed):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if not isinstance(self.shared_forward, bool):
            raise TypeError(f"shared_forward must be a bool, got {self.shared_forward!r}")
        if not isinstance(self.shared_backward, bool):
            raise TypeError(f"shared_backward must be a bool, got {self.shared_backward!r}")
        if self.shared_forward and self.shared_backward:
            raise ValueError("shared_forward and shared_backward are two ways of reusing the training "
                             "step: set one of them, got both True")


@dataclass
class Event:
    """A consolidation: when it happened, why, and what it consolidated."""

    step: int  # the observe() call (1-based) that consolidated
    reason: str  # "manual", "detector", "boundary", ...
    stats: dict[str, float] = field(default_factory=dict)  # samples, segments, omega mean/max, ...

    def to_dict(self) -> dict[str, object]:
        return {"step": self.step, "reason": self.reason, "stats": dict(self.stats)}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Event:
        stats = d.get("stats", {})
        return cls(int(d["step"]), str(d["reason"]), dict(stats))  # type: ignore[call-overload]


class OnlineMAS:
    """Online Memory Aware Synapses over an unlabeled stream.

    ``observe(x)`` updates a running estimate of the MAS importance from the inputs alone and lets
    a trigger decide when the stream has moved on; a consolidation folds the running importance
    into ``omega`` and moves the anchor ``theta*`` of the penalty
    ``lam * sum_k Omega_k (theta_k - theta*_k)^2``.

    Parameters
    ----------
    model
        The user's model; trainable parameters are followed by name (a new head starts at zero).
    lam
        Penalty strength, a finite number >= 0.
    config
        :class:`MASConfig`: estimator, share of the samples estimated, subsample, normalisation.
    detector
        River's contract (``update``, ``drift_detected``); default :func:`default_detector`;
        None: consolidate only on :meth:`consolidate`.
    signal
        What the detector watches: a name of :data:`~online_mas.signals.SIGNALS` or an object.
    anchor
        :class:`~online_mas.consolidate.StableAnchor` (default) or ``CurrentAnchor``.
    average
        :class:`~online_mas.accumulate.RunningImportance` (default: the running mean).
    rule
        ``"sum"`` (the paper), ``"mean"``, ``"max"``, ``"ema"`` or a rule object.
    buffer
        :class:`~online_mas.buffer.HardBuffer` whose importance joins at consolidation, or None.
    boundaries
        Oracle mode: consolidate after these ``observe`` steps; no detector.
    output
        ``output(model, x) -> Tensor``: the tensor whose squared norm MAS uses.
    reducer
        :class:`~online_mas.reduce.Reducer` across data-parallel ranks (default group if any).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import online_mas as om
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Linear(4, 2)
    >>> mas = om.OnlineMAS(model, lam=1.0, config=om.MASConfig(share=1.0))
    >>> mas.observe(torch.randn(8, 4)) is None
    True
    >>> event = mas.consolidate()
    >>> event.step, event.reason, event.stats["samples"]
    (1, 'manual', 8.0)
    >>> mas.penalty().item()   # at the anchor
    0.0

    References
    ----------
    Aljundi, Babiloni, Elhoseiny, Rohrbach, Tuytelaars. Memory Aware Synapses: Learning what (not)
    to forget. ECCV 2018. Aljundi, Kelchtermans, Tuytelaars. Task-Free Continual Learning. CVPR 2019.
    """

    def __init__(
        self,
        model: nn.Module,
        lam: float = 1.0,
        *,
        config: MASConfig | None = None,
        detector: object | None = DEFAULT,
        signal: object = "entropy",
        anchor: CurrentAnchor | StableAnchor | None = None,
        average: RunningImportance | None = None,
        rule: str | ConsolidationRule = "sum",
        buffer: HardBuffer | None = None,
        boundaries: Sequence[int] | None = None,
        output: OutputFn | None = None,
        reducer: Reducer | None = None,
    ) -> None:
        _check_parts(model=model, config=config, anchor=anchor, average=average, buffer=buffer,
                     reducer=reducer, output=output)
        if boundaries is not None and detector is DEFAULT:
            detector = None
        self.model = model
        self.lam = lam
        self.config = config if config is not None else MASConfig()
        self.output = output
        self.events: list[Event] = []
        self.trigger = Trigger(default_detector() if detector is DEFAULT else detector, signal, boundaries)
        self.running = average if average is not None else RunningImportance()
        self.consolidator = Consolidator(rule, normalize=self.config.normalize)
        self.anchor_policy = anchor if anchor is not None else StableAnchor()
        self.buffer = buffer
        self.reducer = reducer if reducer is not None else Reducer()
        check_data_parallel(model)
        self._params = Parameters(model)
        self._step = 0
        self._skips = Skips()
        self._generator = torch.Generator().manual_seed(self.config.seed)
        self._schedule = Schedule(self.config.share, self.config.min_estimate)
        self._last_n = self.config.min_estimate  # the batch size _arm_next expects next
        self._seen = LastForward()
        reuse = output is None and self.config.method == "exact" and self.config.subsample is None
        shared, doubled = reuse and self.config.shared_forward, reuse and self.config.shared_backward
        if output is None and (shared or doubled or self.trigger.every_step):
            weakref.finalize(self, self._seen.attach(model, shared=shared, doubled=doubled,
                                                     chunk=self.config.chunk_size))
        self._sync()
        self._arm_next()

    # ------------------------------------------------------------------ readable state

    @property
    def lam(self) -> float:
        """Penalty strength; assigning checks it is a finite number >= 0."""
        return self._lam

    @lam.setter
    def lam(self, value: float) -> None:
        self._lam = check_lam(value)

    @property
    def detector(self) -> object | None:
        return self.trigger.detector

    @property
    def boundaries(self) -> frozenset[int] | None:
        return self.trigger.boundaries

    @property
    def last_signal(self) -> float | None:
        """The last value fed to the detector."""
        return self.trigger.last_signal

    @property
    def comm_stats(self) -> CommStats:
        """All-reduces made across ranks (none in a single process)."""
        return self.reducer.stats

    @property
    def step(self) -> int:
        """How many times ``observe`` was called."""
        return self._step

    def estimates(self, n: int) -> int:
        """How many samples of a batch of ``n`` the next :meth:`observe` would estimate the
        importance of (0: none), by ``config.share`` and ``config.min_estimate``; before
        ``config.subsample`` caps them (a shared forward estimates the whole batch)."""
        if not is_int(n) or n < 0:
            raise ValueError(f"n must be an int >= 0 (the samples of a batch), got {n!r}")
        return self._schedule.due(n)

    @property
    def segments(self) -> int:
        """How many consolidations folded importance into ``omega``."""
        return self.consolidator.segments

    @property
    def n_skipped(self) -> int:
        """Batches skipped because the input, output or importance was not finite."""
        return self._skips.count

    @property
    def omega(self) -> dict[str, Tensor]:
        """Consolidated importance used by the penalty (float32, keyed by parameter name)."""
        self._sync()
        return {n: self.consolidator.omega[n] for n in self._params.names}

    @property
    def running_omega(self) -> dict[str, Tensor]:
        """Running importance since the last consolidation (zeros where nothing was seen yet;
        across ranks, updates not yet reduced are left out: :meth:`flush` first)."""
        self._sync()
        value = self.running.value()
        return {n: value.get(n, torch.zeros_like(self.consolidator.omega[n])) for n in self._params.names}

    @property
    def anchors(self) -> dict[str, Tensor]:
        """The anchor ``theta*`` of the penalty (parameter dtype)."""
        self._sync()
        return {n: self.consolidator.anchor[n] for n in self._params.names}

    # ------------------------------------------------------------------ the three calls

    def penalty(self, *, shape: str = "quadratic", delta: float | None = None) -> Tensor:
        """Differentiable ``lam * sum_k Omega_k rho(theta_k - theta*_k)`` (0 before any consolidation):
        ``rho(d) = d^2`` (``shape="quadratic"``), ``|d|`` (``"l1"``) or the Huber ``h(d)`` with
        threshold ``delta`` (``"huber"``, :mod:`online_mas.bounded`). A sharded (DTensor) model:
        each rank differentiates its shards' share and every rank gets the whole value (a
        collective: call it on every rank)."""
        delta = _check_shape(shape, delta)
        if self._active(explicit=True):
            lists = self._lists()
            if shape == "l1":
                value = l1_loss(*lists, self.lam, check=False)
            elif shape == "huber":
                value = huber_loss(*lists, self.lam, delta=delta, check=False)
            else:
                value = penalty_loss(*lists, self.lam, check=False)
            # sharded: this rank's shards' share, plus the others' as a constant (one all-reduce)
            return whole_value(value, self._params.params) if any_sharded(self._params.params) else value
        device = self._params.params[0].device if self._params.params else torch.device("cpu")
        return torch.zeros((), device=device)

    def penalty_grad_(self, *, shape: str = "quadratic", delta: float | None = None) -> None:
        """Add the penalty's gradient (``2 lam Omega (theta - theta*)`` for the quadratic) to ``.grad``
        in place; call after ``loss.backward()`` instead of adding :meth:`penalty` to the loss."""
        delta = _check_shape(shape, delta)
        if self._active(explicit=True):
            with self._stand_ins() as params:  # a DTensor's local shard and its grad's
                lists = self._lists(params)
                if shape == "l1":
                    l1_grad_(*lists, self.lam, check=False)
                elif shape == "huber":
                    huber_grad_(*lists, self.lam, delta=delta, check=False)
                else:
                    penalty_grad_(*lists, self.lam, check=False)

    def proximal_(self, lr: float, *, shape: str = "quadratic", delta: float | None = None) -> None:
        """The penalty as an implicit step after ``optimizer.step()``, stable for any ``lam``; for the
        quadratic ``theta <- (theta + c Omega theta*) / (1 + c Omega)``, ``c = 2 lr lam``."""
        if not is_real(lr) or lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        delta = _check_shape(shape, delta)
        if self._active():
            with self._stand_ins() as params:  # a DTensor parameter's local shard
                if shape == "l1":
                    l1_proximal_(*self._lists(params), self.lam, lr, check=False)
                elif shape == "huber":
                    huber_proximal_(*self._lists(params), self.lam, lr, delta=delta, check=False)
                else:
                    safe = not 2.0 * lr * self.lam * self.consolidator.peak < PROXIMAL_SAFE_ABOVE
                    proximal_(*self._lists(params), self.lam, lr, check=False, safe=safe)

    def observe(self, x: Inputs, *, loss: float | Tensor | None = None) -> Event | None:
        """Update the running importance from a batch of inputs (never labels), batch dimension
        first (a tensor, or a tuple or dict of tensors for ``model(*x)``, ``model(**x)``);
        consolidate if the trigger fires. ``loss``: this step's loss, for ``signal="loss"``.
        Returns the :class:`Event` if this call consolidated."""
        if self.trigger.by_loss and loss is None:
            raise ValueError("signal='loss' needs observe(x, loss=...) on every call")
        check_input(x, finite=False)  # wrong types and shapes raise before anything changes
        if self.buffer is not None and not isinstance(x, Tensor):
            raise TypeError("a HardBuffer keeps tensor inputs: with a tuple or dict x, pass buffer=None")
        value = _loss_value(loss)
        try:
            return self._observe(x, value)
        finally:
            self._arm_next()

    def _observe(self, x: Inputs, loss: float | None) -> Event | None:
        """One step; nothing changes before everything that can raise has run (the step is
        counted at the end, also for a skipped batch)."""
        step = self._step + 1
        n = batch_size(x)
        k = self._schedule.due(n)  # the same on every rank while ranks keep their batch sizes
        update = k > 0
        ranks = self.reducer.size > 1
        self._sync(full=update or ranks)
        seen = _for_signal(self._seen.take(x))
        self.trigger.see(x)  # the default detector also watches the inputs' shift
        batch: BatchImportance | None = None
        value: float | None = None
        weight = float(batch_size(x))
        try:
            if update:
                self._check_batch(x)
                batch = self._estimate(x, k=k)
                if seen is None and batch.n < n and self.trigger.every_step:  # the detector sees all n
                    seen = _for_signal(self._output(x))
                    if seen is not None and not bool(torch.isfinite(seen).all()):
                        raise NonFiniteError("the model output is not finite (nan or inf)")
                out, weight = (seen, weight) if seen is not None else (_for_signal(batch.out), float(batch.n))
                value = self.trigger.value(out, pooled=ranks)  # type: ignore[arg-type]
            elif seen is not None and self.trigger.every_step:
                value = self.trigger.value(seen, pooled=ranks)
                if not math.isfinite(value):  # type: ignore[arg-type]  # the output stands in for x
                    raise NonFiniteError("the model output is not finite (nan or inf)")
            else:
                check_input(x)
                if self.trigger.every_step:
                    value = self.trigger.value(_for_signal(self._output(x)), pooled=ranks)  # type: ignore[arg-type]
        except NonFiniteError as err:
            self._step = step
            self._count(n, k, None)
            self._skips.observed(False, str(err), check=not ranks)
            if not ranks:
                return None
            batch, value = None, None
        else:
            self._step = step
            self._count(n, k, batch)
            self._skips.observed(True)
        if self.trigger.by_loss and loss is not None:
            value, weight = loss, float(batch_size(x))
        if ranks and value is not None and not math.isfinite(value):
            value = None
        feed = self.trigger.task_free and (update or self.trigger.by_loss or self.trigger.every_step)
        total, value = self.reducer.reduce(batch, update=update, feed=feed, value=value, weight=weight,
                                           named=self._params.named() if ranks else {})
        self._add(total)
        # the anchor counts samples; across ranks the same count on every rank (the pooled one
        # when the step was reduced, else this rank's batch times the world size)
        samples = batch_size(x)
        if ranks:
            samples = round(self.reducer.last_weight) if feed else samples * self.reducer.size
        return self._after(value, round(self.reducer.last_weight if ranks else weight), pooled=ranks,
                           samples=samples)

    def _count(self, n: int, k: int, batch: BatchImportance | None) -> None:
        """Pay the schedule for this step: the ``k`` samples due (also when the batch was skipped or
        ``subsample`` took fewer), or the whole batch a shared forward estimated."""
        self._schedule.count(n, max(k, batch.n) if batch is not None else k)
        self._last_n = n

    def accumulate(self, x: Inputs) -> int:
        """Estimate the importance of a batch now and add it to the running average, outside the
        step count and the detector (e.g. unlabeled source data before deployment). Returns the
        samples added (0 if the batch was skipped as non-finite)."""
        self._sync()
        try:
            check_input(x)  # wrong types and shapes raise; nan/inf is skipped and counted
            batch = self._estimate(x, step=False)
        except NonFiniteError as err:
            self._skips.skip(str(err))
            return 0
        self._keep(batch, update=True)
        return batch.n

    def consolidate(self, *, reason: str = "manual") -> Event:
        """Fold the running importance into ``omega`` (by the rule) and anchor ``theta*`` at the
        current parameters. Across ranks a collective: call it on every rank at the same step.
        The detector is not touched: samples it has pending (``lag``) stay pending, as its state
        does at ``lag=0``."""
        return self._consolidate(reason, None, None)

    def flush(self, *, detector: bool = False) -> Event | None:
        """All-reduce the importance pending under ``Reducer(sync_every > 1)`` (a collective).
        ``detector=True``: also evaluate the samples the detector has pending (its ``lag``, e.g. at
        the end of a stream); the :class:`Event` if they hold a detection (then consolidated)."""
        self._sync()
        self._add(self.reducer.flush(self._params.named()))
        if detector:
            self.trigger.evaluated = 0
            if self.trigger.flush() == "detector":
                return self._detected()
            if self.trigger.evaluated:
                self.anchor_policy.track(self.trigger.runs, self._params.names, self._params.params)
        return None

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, object]:
        """Tensors and primitives only, keyed by parameter name; loads with ``weights_only=True``."""
        if self.reducer.pending_updates:
            raise RuntimeError(
                f"OnlineMAS holds importance of {self.reducer.pending_updates} updates not yet "
                "reduced across ranks: call flush() on every rank before state_dict()")
        self._sync()
        return {
            "version": STATE_VERSION, "lam": self.lam, "config": asdict(self.config),
            "step": self._step, "n_skipped": self._skips.count, "schedule": self._schedule.state_dict(),
            "events": [e.to_dict() for e in self.events], "generator": self._generator.get_state(),
            "running": self.running.state_dict(),
            "consolidator": self.consolidator.state_dict(self._params.names),
            "anchor_policy": self.anchor_policy.state_dict(), "trigger": self.trigger.state_dict(),
            "buffer": self.buffer.state_dict() if self.buffer is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore from :meth:`state_dict` (also of version 1); names and shapes must match."""
        state = current_state(state, anchor=self.anchor_policy.state_dict()["kind"])  # type: ignore[arg-type]
        self._sync()
        named = self._params.named()
        self.consolidator.load_state_dict(state["consolidator"], named)  # type: ignore[arg-type]
        self.running.load_state_dict(state["running"])  # type: ignore[arg-type]
        self.lam = state["lam"]  # type: ignore[assignment]
        self._step = int(state["step"])  # type: ignore[call-overload]
        self._skips.count = int(state["n_skipped"])  # type: ignore[call-overload]
        self._schedule.load_state_dict(state["schedule"])  # type: ignore[arg-type]
        self.events = [Event.from_dict(e) for e in state.get("events", [])]  # type: ignore[attr-defined]
        generator = state.get("generator")
        if isinstance(generator, Tensor):
            self._generator.set_state(generator)
        self.trigger.load_state_dict(state["trigger"])  # type: ignore[arg-type]
        if isinstance(self.anchor_policy, StableAnchor):
            self.anchor_policy.load_state_dict(state["anchor_policy"], named)  # type: ignore[arg-type]
        buffer = state.get("buffer")
        if self.buffer is not None and isinstance(buffer, dict):
            self.buffer.load_state_dict(buffer)
        self._params.forget()
        self._sync()
        self._arm_next()

    def __getstate__(self) -> dict[str, object]:
        """For pickle and deepcopy: the subsample generator as bytes, so equal objects pickle to
        equal bytes (a generator's state tensor is new at every read)."""
        state = self.__dict__.copy()
        state["_generator"] = bytes(self._generator.get_state().tolist())
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        generator = torch.Generator()
        generator.set_state(torch.tensor(list(state["_generator"]), dtype=torch.uint8))  # type: ignore[call-overload]
        self.__dict__.update(state, _generator=generator)

    # ------------------------------------------------------------------ wiring

    def _sync(self, *, full: bool = True) -> None:
        """Follow the model's trainable parameters (full: also find new ones)."""
        if (full or self._params.moved()) and self._params.changed():
            named, replaced = self._params.named(), self._params.replaced
            self.running.follow(named, restart=replaced)
            self.consolidator.follow(named, restart=replaced)

    def _active(self, *, explicit: bool = False) -> bool:
        """Whether the penalty is on; the explicit forms refuse a ``lam`` whose gradient overflows."""
        self._sync(full=False)
        if explicit and not 2.0 * self.lam * self.consolidator.peak < EXPLICIT_LIMIT:
            raise ValueError(f"lam={self.lam!r} times the largest importance ({self.consolidator.peak:.3g}) "
                             "overflows float32 in the penalty's gradient: use proximal_(lr), stable for any "
                             "lam, or a smaller lam")
        return self.consolidator.segments > 0 and self.lam != 0.0

    def _lists(self, params: list[Tensor] | None = None) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Parameters (``params``: stand-ins for them), anchors and Omega; the local shards of
        DTensors (a sharded model: the penalty of this rank's shards, whose sum over the ranks is
        the penalty)."""
        names, c = self._params.names, self.consolidator
        lists = (self._params.params if params is None else params, [c.anchor[n] for n in names],
                 [c.omega[n] for n in names])
        if not any_sharded(self._params.params):
            return lists
        a, b, d = local_lists(*lists)
        return a, b, d

    def _stand_ins(self) -> contextlib.AbstractContextManager[list[Tensor]]:
        """The parameters for in-place updates: the DTensors' local shards (with their grads')."""
        params = self._params.params
        return local_grads(params) if any_sharded(params) else contextlib.nullcontext(params)

    def _estimate(self, x: Inputs, *, step: bool = True, k: int | None = None,
                  vote: bool = True) -> BatchImportance:
        """This batch's importance: from the user's forward (shared_forward, shared_backward: the
        whole batch) or a separate pass. ``step``: an observe step (``k`` of its samples, at most
        ``subsample``; factors to fold; offered to the buffer). ``vote``: with shared_backward on
        a sharded model, the ranks agree whether every one of them can skip the separate pass
        (False: it was agreed already that they cannot)."""
        shared = self._seen.shared
        batch, failed = None, None
        try:
            if shared is not None and isinstance(x, Tensor):
                batch = shared.take(x, self._params.names)
        except NonFiniteError as err:
            failed = err
        # a doubled forward across the ranks of a sharded model: every rank takes the separate
        # pass (FSDP's collectives) or none does
        if isinstance(shared, DoubledBatch) and self.reducer.size > 1 and any_sharded(self._params.params) \
                and not (vote and self.reducer.all_agree(batch is not None or failed is not None)):
            batch, failed = None, None
        if failed is not None:
            raise failed
        xs = x
        if batch is None:
            xs = self._subsample(x, k) if step else x
            # across the ranks of a sharded model the pass's backward (FSDP's collectives) runs
            # even where this rank's output is not finite: on the output with nan/inf set to 0,
            # and the batch is skipped after it (raising before it left the ranks' collectives
            # out of step: the other ranks' all-gathers paired with this rank's next reduction)
            output, bad = _finite_output(self.output) if self.reducer.size > 1 and any_sharded(
                self._params.params) else (self.output, None)
            self._seen.active = False
            try:
                batch = estimate(unwrap(self.model), xs, method=self.config.method, output=output,
                                 chunk_size=self._chunk(xs), factors=step,
                                 memory_budget=self.config.memory_budget)
            finally:
                self._seen.active = True
            if bad:
                raise NonFiniteError("the model output contains non-finite values (nan or inf)")
        if self.buffer is not None and step and isinstance(xs, Tensor):
            surprise = getattr(self.trigger.signal, "surprise", None)
            scores = surprise(batch.out) if callable(surprise) else per_sample("entropy", batch.out)
            self.buffer.add(xs, scores)
        return batch

    def _chunk(self, x: Inputs) -> int | None:
        """``config.chunk_size``; a sharded model: the whole batch, since its forward and backward
        are collectives that every rank must run as often (one pass each, whatever its batch)."""
        if not any_sharded(self._params.params):
            return self.config.chunk_size
        if self.config.method != "exact":
            raise ValueError(f"a sharded (DTensor) model takes method='exact', got {self.config.method!r}")
        cands = fast_candidates(unwrap(self.model), self._params.named())
        ruled = {n for names in cands.values() for n in names}
        missing = [n for n in self._params.names if n not in ruled]
        if missing:  # torch.func's functional_call would swap out the parameters FSDP manages
            raise ValueError(f"a sharded (DTensor) model needs a closed-form rule (om.estimators.register) "
                             f"for every parameter, since the torch.func fallback cannot run on it; none "
                             f"for {missing}")
        return max(1, batch_size(x))

    def _check_batch(self, x: Inputs) -> None:
        """``check_input``; across the ranks of a sharded model, a rank whose batch is not finite
        still runs the estimate's forward and backward (FSDP's collectives) on a finite copy,
        then skips its batch as every model does (with ``shared_backward`` only when another rank
        takes the separate pass)."""
        try:
            check_input(x)
        except NonFiniteError:
            if self.reducer.size > 1 and any_sharded(self._params.params):
                if not isinstance(self._seen.shared, DoubledBatch):
                    self._estimate(finite_copy(x), step=False)
                elif not self.reducer.all_agree(True):  # this rank needs no pass; do the others?
                    self._estimate(finite_copy(x), step=False, vote=False)
            raise

    def _keep(self, batch: BatchImportance, *, update: bool) -> None:
        """Add a batch now (one process) or keep it for the next reduction across ranks."""
        if self.reducer.size > 1:
            self.reducer.defer(batch.materialize(), batch.n, update=update)
        else:
            self._add(batch)

    def _add(self, total: BatchImportance | None) -> None:
        if total is not None:
            self.running.update(total.sums, total.n, factors=total.factors)

    def _output(self, x: Inputs) -> Tensor:
        self._seen.active = False
        try:
            return model_output(unwrap(self.model), x, self.output)
        finally:
            self._seen.active = True

    def _after(self, value: float | None, n: int = 1, *, pooled: bool = False,
               samples: int = 1) -> Event | None:
        """The step's end: move the anchor policy by this step's ``samples`` (this process's),
        then consolidate if the trigger fires (``value`` of ``n`` samples; ``pooled``: a mean over
        ranks)."""
        if self.trigger.task_free:
            self.anchor_policy.step(samples, self._params.names, self._params.params)
        reason = self.trigger.fire(self._step, value, n=n, pooled=pooled)
        if reason == "detector":  # the signal of the last batch the detector evaluated
            return self._detected()
        if self.trigger.evaluated:  # the parameters where a run opens (StableAnchor(onset=True))
            self.anchor_policy.track(self.trigger.runs, self._params.names, self._params.params)
        return self._consolidate(reason, None, None) if reason else None

    def _detected(self) -> Event:
        """Consolidate at a detection, anchored before the change where the detector says where it
        began (then the anchor policy starts afresh with the detector)."""
        event = self._consolidate("detector", self.anchor_policy.source(self.trigger.onset),
                                  self.trigger.last_signal)
        self.anchor_policy.track(self.trigger.runs, self._params.names, self._params.params, detected=True)
        return event

    def _consolidate(self, reason: str, anchor: dict[str, Tensor] | None, signal: float | None) -> Event:
        self._sync()
        if self.buffer is not None and self.buffer.samples is not None:
            kept = self.buffer.samples  # on the CPU after loading a state: to the model's device
            if self._params.params and kept.device != self._params.params[0].device:
                kept = kept.to(self._params.params[0].device)
            try:
                self._keep(self._estimate(kept, step=False), update=False)
            except NonFiniteError as err:
                self._skips.skip(str(err))
        if self.buffer is not None:
            self.buffer.clear()
        if self.reducer.size > 1 and (self.reducer.pending_updates or self.buffer is not None):
            self._add(self.reducer.flush(self._params.named()))  # the same condition on every rank
        samples = self.running.count
        if samples == 0 and self._step > 0:
            warnings.warn(
                f"consolidation at step {self._step} folds no importance: nothing was estimated "
                f"since the last one (config.share={self.config.share:g}: a batch of n samples is "
                f"estimated once min(config.min_estimate={self.config.min_estimate}, n) / share samples "
                "have been observed); raise config.share for shorter segments, or call "
                "accumulate(x) before consolidating",
                RuntimeWarning, stacklevel=3)
        self.consolidator.consolidate(self.running_omega if samples > 0 else None,
                                      self._params.named(), anchor)
        self.running.reset()
        stats = {"samples": float(samples), **self.consolidator.stats(self._params.names)}
        if signal is not None:
            stats["signal"] = float(signal)
        event = Event(self._step, reason, stats)
        self.events.append(event)
        return event

    def _arm_next(self) -> None:
        """shared_forward: record the user's next forward if the next observe estimates importance
        at the last batch size (a batch of another size may find it unrecorded and take the
        separate pass, or leave the recording unused)."""
        if self._seen.shared is not None:
            ranks_ok = self.reducer.size == 1 or isinstance(self._seen.shared, DoubledBatch)
            due = ranks_ok and self._schedule.due(self._last_n) > 0
            self._seen.arm(self._params.names if due else None, self._params.params)

    def _subsample(self, x: Inputs, k: int | None) -> Inputs:
        """``k`` samples of ``x`` (None: all), at most ``config.subsample``, drawn with the seeded
        generator when fewer than the batch."""
        cap = self.config.subsample
        k = batch_size(x) if k is None else k
        k = k if cap is None else min(k, cap)
        if batch_size(x) <= k:
            return x
        return select(x, torch.randperm(batch_size(x), generator=self._generator)[:k])


def _for_signal(out: Tensor | None) -> Tensor | None:
    """A model output as the signals read it: ``(B,)`` (a regressor) as ``(B, 1)``."""
    if out is None:
        return None
    if not out.is_floating_point():
        raise TypeError(f"the model output must be floating point for the detector's signal, got "
                        f"{out.dtype}: pass output= to choose a floating tensor")
    return out.unsqueeze(1) if out.dim() == 1 else out


def _finite_output(fn: OutputFn | None) -> tuple[OutputFn, list[bool]]:
    """``fn`` (default: the model's forward) with nan/inf outputs set to 0, and a list that
    records each call whose output was not finite."""
    bad: list[bool] = []

    def output(model: nn.Module, x: Inputs) -> Tensor:
        out = fn(model, x) if fn is not None else call_model(model, x)
        if isinstance(out, Tensor) and out.is_floating_point() and not finite(out):
            bad.append(True)
            out = torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        return out

    return output, bad


def _loss_value(loss: object) -> float | None:
    """``observe``'s ``loss=`` as a float: a real number or a one-element tensor."""
    if loss is None:
        return None
    if isinstance(loss, Tensor):
        if loss.numel() != 1 or loss.is_complex():
            raise ValueError(f"loss must be a real number or a one-element tensor, got a tensor of "
                             f"shape {tuple(loss.shape)} and dtype {loss.dtype}")
        return float(loss.detach())
    if isinstance(loss, bool) or not isinstance(loss, int | float):
        raise TypeError(f"loss must be a real number or a one-element tensor, got {loss!r}")
    return float(loss)


def _check_parts(*, model: object, config: object, output: object, **parts: object) -> None:
    """TypeError naming the argument that is not of its kind."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model)!r}")
    if config is not None and not isinstance(config, MASConfig):
        raise TypeError(f"config must be a MASConfig or None, got {type(config)!r}")
    kinds = {"anchor": CurrentAnchor | StableAnchor, "average": RunningImportance, "buffer": HardBuffer,
             "reducer": Reducer}
    for name, value in parts.items():
        if value is not None and not isinstance(value, kinds[name]):
            raise TypeError(f"{name} must be a {kinds[name]} or None, got {type(value)!r}")
    if output is not None and not callable(output):
        raise TypeError(f"output must be callable as output(model, x) or None, got {output!r}")


def _check_shape(shape: object, delta: object) -> float:
    """A penalty shape of ``PENALTY_SHAPES``; ``delta`` (> 0) given exactly when it is ``"huber"``."""
    check_choice("shape", shape, PENALTY_SHAPES)
    if shape == "huber":
        if delta is None:
            raise ValueError("shape='huber' needs delta, a finite number > 0, got None")
        return check_delta(delta)
    if delta is not None:
        raise ValueError(f"delta applies to shape='huber' only, got delta={delta!r} with shape={shape!r}")
    return 0.0
