"""OnlineMAS: label-free importance kept online, anchors, consolidation and the penalty.

Wired into an existing training loop in three lines::

    mas = om.OnlineMAS(model, lam=1.0)
    loss = task_loss + mas.penalty()        # lam * sum_k Omega_k (theta_k - theta*_k)^2
    loss.backward(); opt.step()
    event = mas.observe(x)                  # inputs only, never labels

``observe`` updates a running estimate of the MAS importance (Aljundi et al., ECCV 2018,
arXiv:1711.09601) from the inputs alone and lets a detector decide when the stream has moved on
(task-free continual learning, Aljundi, Kelchtermans, Tuytelaars, CVPR 2019). A consolidation
snapshots ``theta*`` and folds the running importance into the consolidated ``Omega`` that the
penalty uses.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from online_mas._checks import check_choice as _choice
from online_mas._checks import is_int as _int
from online_mas._checks import is_real as _real
from online_mas._shared import SharedForward
from online_mas.accumulate import AVERAGES, NORMALIZE, RULES, RunningImportance, combine, normalize
from online_mas.buffer import HardBuffer
from online_mas.detectors import PageHinkley
from online_mas.distributed import CommStats, all_reduce_flat, world
from online_mas.importance import (
    METHODS,
    NonFiniteError,
    OutputFn,
    _fold_sums,
    _sums,
    check_input,
    model_output,
)
from online_mas.penalty import _penalty, _penalty_grad, _proximal, check_lam
from online_mas.signals import SIGNALS, FeatureShift, per_sample, signal_value

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["DEFAULT", "Event", "MASConfig", "OnlineMAS", "default_detector"]

STATE_VERSION = 1
ANCHORS = ("current", "stable")


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: object = _Default()
"""Sentinel: ``OnlineMAS(detector=DEFAULT)`` builds :func:`default_detector`."""


def default_detector() -> PageHinkley:
    """The detector ``OnlineMAS`` uses when none is given: one-sided Page-Hinkley on the entropy.

    A new distribution makes the model unsure, so the mean predictive entropy of its outputs
    jumps (on permuted digits from about 0.05 to 0.5-1.5 nats); ``mode="up"`` ignores the slow
    decrease while a segment is being learned. Thresholds are in nats. Measured by
    ``scripts/detect_digits.py`` (README, "Task-free detection").
    """
    return PageHinkley(min_instances=30, delta=0.05, threshold=1.0, alpha=0.999, mode="up")


@dataclass(frozen=True)
class MASConfig:
    """How OnlineMAS estimates, averages and consolidates importance."""

    method: str = "exact"  # importance estimator: exact, vmap, loop, batch, local (om.importance)
    average: str = "mean"  # running importance: "mean" since the last consolidation, or "ema"
    half_life: float = 10_000.0  # EMA half-life in samples (average="ema")
    every: int = 64  # estimate importance on every k-th call of observe() (1: every call)
    subsample: int | None = None  # estimate on at most this many samples of each batch (seeded)
    rule: str = "sum"  # consolidation: sum (paper), mean (task-free code), ema (Avalanche), max
    alpha: float = 0.5  # weight of the old Omega for rule="ema", in [0, 1]
    normalize: str | None = None  # rescale a segment's Omega before combining: None, "max", "mean"
    chunk_size: int | None = None  # max samples whose per-sample gradients exist at once
    seed: int = 0  # seed of the subsample generator
    signal: str = "entropy"  # what the detector watches: output_norm, entropy, max_prob, feature_shift, loss
    anchor: str = "stable"  # a detector's consolidation anchors the "stable" or the "current" parameters
    stable_every: int = 10  # anchor="stable": steps between updates of the slow parameter copy
    stable_weight: float = 0.5  # anchor="stable": weight of the current parameters in an update, (0, 1]
    buffer_size: int = 0  # hard-sample buffer of the most surprising recent samples (0: off)
    buffer_decay: float = 0.99  # per-update fading of the buffer's surprise scores, in (0, 1]
    sync_every: int = 1  # torch.distributed: all-reduce importance every k-th importance update
    shared_forward: bool = False  # exact importance from the training forward where it is the same

    def __post_init__(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("average", self.average, AVERAGES)
        _choice("rule", self.rule, RULES)
        _choice("normalize", self.normalize, NORMALIZE)
        if not _real(self.half_life) or not self.half_life > 0:
            raise ValueError(f"half_life must be a finite number > 0, got {self.half_life!r}")
        if not _int(self.every) or self.every < 1:
            raise ValueError(f"every must be an int >= 1, got {self.every!r}")
        if self.subsample is not None and (not _int(self.subsample) or self.subsample < 1):
            raise ValueError(f"subsample must be an int >= 1 or None, got {self.subsample!r}")
        if not _real(self.alpha) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be a number in [0, 1], got {self.alpha!r}")
        if self.chunk_size is not None and (not _int(self.chunk_size) or self.chunk_size < 1):
            raise ValueError(f"chunk_size must be an int >= 1 or None, got {self.chunk_size!r}")
        if not _int(self.seed):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        _choice("signal", self.signal, SIGNALS)
        _choice("anchor", self.anchor, ANCHORS)
        if not _int(self.stable_every) or self.stable_every < 1:
            raise ValueError(f"stable_every must be an int >= 1, got {self.stable_every!r}")
        if not _real(self.stable_weight) or not 0.0 < self.stable_weight <= 1.0:
            raise ValueError(f"stable_weight must be a number in (0, 1], got {self.stable_weight!r}")
        if not _int(self.buffer_size) or self.buffer_size < 0:
            raise ValueError(f"buffer_size must be an int >= 0, got {self.buffer_size!r}")
        if not _real(self.buffer_decay) or not 0.0 < self.buffer_decay <= 1.0:
            raise ValueError(f"buffer_decay must be a number in (0, 1], got {self.buffer_decay!r}")
        if not _int(self.sync_every) or self.sync_every < 1:
            raise ValueError(f"sync_every must be an int >= 1, got {self.sync_every!r}")
        if not isinstance(self.shared_forward, bool):
            raise TypeError(f"shared_forward must be a bool, got {self.shared_forward!r}")


@dataclass
class Event:
    """A consolidation: when it happened, why, and what it consolidated."""

    step: int  # the observe() call (1-based) that consolidated
    reason: str  # "manual", "detector", "boundary", ...
    stats: dict[str, float] = field(default_factory=dict)  # samples, segment, omega mean/max, ...

    def to_dict(self) -> dict[str, object]:
        return {"step": self.step, "reason": self.reason, "stats": dict(self.stats)}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Event:
        stats = d.get("stats", {})
        return cls(int(d["step"]), str(d["reason"]), dict(stats))  # type: ignore[call-overload]


class _LastForward:
    """The latest input and (detached) output of the user's own forward pass.

    A forward hook on the model keeps them so that ``observe(x)`` can compute the label-free signal
    of a batch from the forward the training step already made, on every step and at no cost,
    instead of only on the steps that estimate importance.
    """

    __slots__ = ("active", "out", "shared", "x")

    def __init__(self) -> None:
        self.x: Tensor | None = None
        self.out: Tensor | None = None
        self.active = True
        self.shared: SharedForward | None = None  # config.shared_forward: importance from here

    def hook(self, module: nn.Module, args: tuple[object, ...], out: object) -> None:
        if self.active and args and isinstance(args[0], Tensor) and isinstance(out, Tensor):
            self.x, self.out = args[0], out.detach()
            if self.shared is not None:
                self.shared.on_forward(args[0], out)

    def take(self, x: Tensor) -> Tensor | None:
        """The output recorded for this very tensor ``x`` (then forgotten), or None."""
        out = self.out if self.x is x else None
        self.x = self.out = None
        if out is not None and (out.dim() == 0 or out.shape[0] != x.shape[0]):
            return None
        return out


class OnlineMAS:
    """Online Memory Aware Synapses over an unlabeled stream.

    Parameters
    ----------
    model
        The user's model. OnlineMAS reads its trainable parameters by name on every call, so
        parameters added later (a new head) start with zero importance and frozen ones are skipped.
    lam
        Penalty strength, a finite number >= 0.
    config
        :class:`MASConfig`; defaults to ``MASConfig()``.
    detector
        Any object with river's detector contract (``update(value)``, ``drift_detected``), fed
        ``config.signal`` once per importance update; when it fires, ``observe`` consolidates.
        Default: :func:`default_detector` (Page-Hinkley on the predictive entropy). ``None``: never
        consolidate on its own (call :meth:`consolidate`).
    boundaries
        Oracle mode, for comparison: consolidate at the end of these ``observe`` steps (the last
        step of each segment) and use no detector.
    output
        Optional ``output(model, x) -> Tensor`` choosing the tensor whose squared norm MAS uses
        (``model`` without its DistributedDataParallel/DataParallel wrapper, if it has one).
    process_group
        Reduce across the ranks of this ``torch.distributed`` group; by default the default group
        whenever ``torch.distributed`` is initialised (see Notes). Ignored in a single process.

    Notes
    -----
    Trigger policies: a change detector (default) consolidates as soon as it sees the stream move
    on. With ``config.anchor="stable"`` (default) the anchor is a slow copy of the parameters, a
    moving average updated every ``stable_every`` steps (``s <- s + stable_weight (theta - s)``)
    that trails the model by about 20 steps, so the first steps on the new data, taken before the
    detector could fire, barely move it (on permuted digits this is worth about 10 points of
    average accuracy over anchoring the current parameters, and matches keeping two rotating
    snapshots). It costs one parameter copy on top of the three float32 buffers (running Omega,
    Omega, theta*); ``anchor="current"`` keeps memory at those three.
    :class:`~online_mas.detectors.Plateau` on ``signal="loss"`` consolidates when the loss settles
    after a peak (the task-free paper); :class:`~online_mas.detectors.Periodic` on a fixed
    schedule; ``boundaries=`` at known boundaries.

    The detector sees one value per ``observe`` call. A label-free signal comes from the output of
    the user's own forward pass of the same ``x`` tensor when there was one (a forward hook keeps
    the latest; no extra cost), else from the importance pass on the steps that estimate
    importance, else from one gradient-free forward pass. ``"loss"`` is read from ``loss=``.

    Cost (``scripts/bench.py``, MLP 784-256-256-10, batch 64, one thread): importance is
    estimated on every ``config.every``-th call (default 64), which puts an online step at about
    1.2x a plain training step; ``every=1`` estimates on every batch at about 2.6x, 2.1x with
    ``config.shared_forward=True`` (the estimate reuses the training forward; see
    ``online_mas/_shared.py`` for when it applies).

    Data parallel (DistributedDataParallel, one process per rank): when ``torch.distributed`` is
    initialised with more than one rank, every rank's importance sums and sample count are
    all-reduced (one flat buffer, see :mod:`online_mas.distributed`), so the running importance is
    the single-process value on the global batch, with ``average="mean"`` exactly (up to float
    rounding). The detector's signal is reduced the same way, as ``sum_r n_r s_r / sum_r n_r``:
    the global-batch value for the stateless signals; for ``"feature_shift"`` each rank keeps its
    own statistics and the per-rank values are averaged; for ``"loss"`` the losses are weighted by
    batch size. Every rank therefore feeds its detector the same float, consolidates at the same
    step and, with DDP keeping the parameters identical, holds the same ``theta*`` and ``Omega``.
    Every rank must call ``observe`` the same number of times (as DDP requires), and ``consolidate``
    and ``flush`` together. ``config.sync_every=k`` all-reduces the importance every k-th update
    (and before every consolidation) and only the three scalars in between (none without a
    detector); with ``average="ema"`` the k batches of a window then enter the average as one batch.
    Between reductions, :attr:`running_omega` leaves out the pending updates and :meth:`state_dict`
    raises until :meth:`flush`. ``comm_stats`` (:class:`~online_mas.distributed.CommStats`) counts
    the all-reduces and their time. OnlineMAS writes no files: guard checkpoints and logs with
    :func:`~online_mas.distributed.is_main_process`. The hard-sample buffer is kept per rank
    (``buffer_size`` samples each); its importance is reduced at consolidation.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import online_mas as om
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Linear(4, 2)
    >>> mas = om.OnlineMAS(model, lam=1.0, config=om.MASConfig(every=1))
    >>> mas.observe(torch.randn(8, 4)) is None
    True
    >>> event = mas.consolidate()
    >>> event.step, event.reason, event.stats["samples"]
    (1, 'manual', 8.0)
    >>> mas.penalty().item()   # at the anchor
    0.0
    >>> with torch.no_grad():
    ...     model.weight += 0.1
    >>> bool(mas.penalty() > 0)
    True

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
        boundaries: Sequence[int] | None = None,
        output: OutputFn | None = None,
        process_group: ProcessGroup | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model)!r}")
        if config is not None and not isinstance(config, MASConfig):
            raise TypeError(f"config must be a MASConfig or None, got {type(config)!r}")
        if boundaries is not None:
            if detector is not DEFAULT and detector is not None:
                raise ValueError("pass either boundaries= (oracle) or detector=, not both")
            detector = None
        elif detector is DEFAULT:
            detector = default_detector()
        if detector is not None and not (
            callable(getattr(detector, "update", None)) and hasattr(detector, "drift_detected")
        ):
            raise TypeError(
                "detector must have update(value) and a drift_detected property (river's "
                f"contract), got {type(detector)!r}"
            )
        if output is not None and not callable(output):
            raise TypeError(f"output must be callable as output(model, x) or None, got {output!r}")
        if process_group is not None:
            world(process_group)  # a ProcessGroup this process belongs to
        self.model = model
        self.lam = lam
        self.config = config if config is not None else MASConfig()
        self.detector = detector
        self.boundaries = _check_boundaries(boundaries) if boundaries is not None else None
        self.output = output
        self.events: list[Event] = []
        self.last_signal: float | None = None  # the last value fed to the detector
        self._running = RunningImportance(self.config.average, half_life=self.config.half_life)
        self._omega: dict[str, Tensor] = {}
        self._anchor: dict[str, Tensor] = {}
        self._names: list[str] = []
        self._params: list[Tensor] = []
        self._key: tuple[object, ...] = ()
        self._step = 0
        self._segments = 0
        self._n_skipped = 0
        self._warned = False
        self._generator = torch.Generator().manual_seed(self.config.seed)
        self._shift = FeatureShift() if self.config.signal == "feature_shift" else None
        self._buffer = HardBuffer(self.config.buffer_size, decay=self.config.buffer_decay) \
            if self.config.buffer_size else None
        self._stable: dict[str, Tensor] = {}  # anchor="stable": slow (moving-average) parameter copy
        self.process_group = process_group
        self.comm_stats = CommStats()  # all-reduces made across ranks (none in a single process)
        self._pending: dict[str, Tensor] = {}  # sync_every > 1: importance sums not yet reduced
        self._pending_n = 0
        self._pending_updates = 0  # importance updates since the last reduction
        self._seen = _LastForward()
        shared = self.config.shared_forward and output is None and self.config.method == "exact" \
            and self.config.subsample is None
        if output is None and (shared or (detector is not None and self.config.signal != "loss")):
            handle = model.register_forward_hook(self._seen.hook)
            weakref.finalize(self, handle.remove)
        self._sync()
        if shared:
            seen = self._seen
            self._seen.shared = SharedForward(_unwrap(model), self.config.chunk_size,
                                              gate=lambda: seen.active)
            weakref.finalize(self, self._seen.shared.disarm)
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
    def step(self) -> int:
        """How many times ``observe`` was called."""
        return self._step

    @property
    def segments(self) -> int:
        """How many consolidations folded importance into ``omega``."""
        return self._segments

    @property
    def n_skipped(self) -> int:
        """Batches skipped because the input, output or importance was not finite."""
        return self._n_skipped

    @property
    def omega(self) -> dict[str, Tensor]:
        """Consolidated importance used by the penalty (float32, keyed by parameter name)."""
        self._sync()
        return {n: self._omega[n] for n in self._names}

    @property
    def running_omega(self) -> dict[str, Tensor]:
        """Running importance since the last consolidation (zeros where nothing was seen yet).

        Across ranks with ``config.sync_every > 1``, updates not yet all-reduced are left out
        (call :meth:`flush` on every rank first).
        """
        self._sync()
        value = self._running.value()
        return {n: value.get(n, torch.zeros_like(self._omega[n])) for n in self._names}

    @property
    def anchors(self) -> dict[str, Tensor]:
        """The anchor ``theta*`` of the penalty (parameter dtype)."""
        self._sync()
        return {n: self._anchor[n] for n in self._names}

    # ------------------------------------------------------------------ the three calls

    def penalty(self) -> Tensor:
        """Differentiable ``lam * sum_k Omega_k (theta_k - theta*_k)^2`` (0 before any consolidation)."""
        self._quick_sync()
        if self._segments == 0 or self.lam == 0.0:
            return torch.zeros((), device=self._device())
        return _penalty(self._params, self._anchors(), self._omegas(), self.lam)

    def penalty_grad_(self) -> None:
        """Add the penalty's gradient ``2 lam Omega (theta - theta*)`` to ``.grad`` in place.

        Use instead of ``penalty()`` in the loss: call after ``loss.backward()`` and before
        ``optimizer.step()``. Builds no autograd graph.
        """
        self._quick_sync()
        if self._segments and self.lam:
            with torch.no_grad():
                _penalty_grad(self._params, self._anchors(), self._omegas(), self.lam)

    def proximal_(self, lr: float) -> None:
        """Apply the penalty as an implicit (proximal) step; call after ``optimizer.step()``.

        ``theta <- (theta + c Omega theta*) / (1 + c Omega)`` with ``c = 2 lr lam``: stable for any
        ``lam``, unlike the explicit gradient. ``lr`` is the optimizer's learning rate.
        """
        self._quick_sync()
        if not _real(lr) or lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if self._segments and self.lam:
            with torch.no_grad():
                _proximal(self._params, self._anchors(), self._omegas(), self.lam, lr)

    def observe(self, x: Tensor, *, loss: float | Tensor | None = None) -> Event | None:
        """Update the running importance from a batch of inputs; consolidate if the trigger fires.

        Parameters
        ----------
        x
            A batch of inputs (never labels), batch dimension first.
        loss
            Optional training loss of this step, for ``config.signal="loss"``.

        Returns
        -------
        Event or None
            The consolidation event if this call consolidated.
        """
        if self.config.signal == "loss" and self.detector is not None and loss is None:
            raise ValueError("config.signal='loss' needs observe(x, loss=...) on every call")
        if world(self.process_group)[1] > 1:
            return self._observe_across_ranks(x, loss)
        try:
            return self._observe(x, loss)
        finally:
            self._arm_next()

    def _observe(self, x: Tensor, loss: float | Tensor | None) -> Event | None:
        """``observe`` in a single process."""
        check_input(x, finite=False)  # wrong types and shapes raise before anything changes
        self._step += 1
        estimate = self._step % self.config.every == 0
        self._sync() if estimate else self._quick_sync()  # new parameters join at the next estimate
        seen = self._seen.take(x)
        value = self._signal(seen) if seen is not None else None
        if value is not None and not estimate:
            if not math.isfinite(value):  # the output of x stands in for x's own check
                self._skip("the model output is not finite (nan or inf)")
                return None
        else:
            try:
                check_input(x)
            except NonFiniteError as err:
                self._skip(str(err))
                return None
        if estimate:
            shared = self._seen.shared.take(x, self._names) if self._seen.shared else None
            folded: list[str] = []
            try:
                if shared is not None:  # the user's forward of this x gave the layers' gradients
                    xs = x
                    pairs, n, out = shared
                    sums: dict[str, Tensor] = {}
                    folded = _fold_sums(
                        self._seen.shared.candidates, pairs, self._running.value(),  # type: ignore[union-attr]
                        *self._running.weights(n), sums=sums, chunk=self.config.chunk_size)
                else:
                    xs = self._subsample(x)
                    sums, n, out, folded = self._estimate(xs, fold=True)
            except NonFiniteError as err:
                self._skip(str(err))
                return None
            self._running.update(sums, n, folded=folded)
            if seen is None:
                value = self._signal(out)
            if self._buffer is not None:
                surprise = self.config.signal if self.config.signal in ("output_norm", "entropy") \
                    else "entropy"
                self._buffer.add(xs, per_sample(surprise, out))
        elif seen is None and self._seen_every_step():
            try:  # no forward of the user's to reuse: one without gradients, for the signal
                value = self._signal(self._output_for_signal(x))
            except NonFiniteError as err:
                self._skip(str(err))
                return None
        if self.config.signal == "loss" and loss is not None:
            value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
        return self._trigger(value)

    def _trigger(self, value: float | None) -> Event | None:
        """After the importance update of a step: consolidate at a boundary or when the detector fires."""
        if self.boundaries is not None:
            return self._at_boundary()
        if self.detector is None:
            return None
        if self.config.anchor == "stable" and self._step % self.config.stable_every == 0:
            self._snapshot()
        if value is None:
            return None
        self.last_signal = value
        self.detector.update(value)  # type: ignore[attr-defined]
        if not self.detector.drift_detected:
            return None
        anchor = self._stable if self.config.anchor == "stable" and self._stable else None
        return self.consolidate(reason="detector", _anchor=anchor, _signal=value)

    def accumulate(self, x: Tensor) -> int:
        """Estimate the importance of a batch now and add it to the running average.

        Unlike :meth:`observe` it ignores ``config.every``, feeds no detector and does not count
        as a step: use it to estimate importance on data of your choice, e.g. unlabeled source
        data before deployment, then :meth:`consolidate`. Under ``torch.distributed`` the sums
        wait on this rank and are reduced at the next consolidation or :meth:`flush`.

        Returns
        -------
        int
            The number of samples added (0 if the batch was skipped as non-finite).
        """
        self._sync()
        try:
            check_input(x)  # wrong types and shapes raise; nan/inf is skipped and counted
            sums, n, _, _ = self._estimate(x)
        except NonFiniteError as err:
            self._skip(str(err))
            return 0
        if world(self.process_group)[1] > 1:
            self._add_pending(sums, n)
            self._pending_updates += 1
        else:
            self._running.update(sums, n)
        return n

    def consolidate(
        self,
        *,
        reason: str = "manual",
        _anchor: dict[str, Tensor] | None = None,
        _signal: float | None = None,
    ) -> Event:
        """Snapshot ``theta*`` and fold the running importance into ``omega``.

        The running importance of the segment that ends (normalised if ``config.normalize``) is
        combined with the consolidated one by ``config.rule``; then the running average restarts.
        If no sample was seen since the last consolidation, ``omega`` is left as it is and only the
        anchor moves. Under torch.distributed this reduces the pending importance across ranks: call
        it on every rank at the same step (``observe`` does so when it consolidates).
        """
        self._sync()
        _, world_size, group = world(self.process_group)
        if self._buffer is not None and len(self._buffer):
            samples_x = self._buffer.samples
            if samples_x is not None:
                try:
                    sums, count, _, _ = self._estimate(samples_x)
                    if world_size > 1:
                        self._add_pending(sums, count)
                    else:
                        self._running.update(sums, count)
                except NonFiniteError as err:
                    self._skip(str(err))
            self._buffer.clear()
        if world_size > 1 and (self._pending_updates or self._buffer is not None):
            self._flush(group)  # a collective: the condition is the same on every rank
        samples = self._running.count
        if samples == 0 and self._step > 0:
            warnings.warn(
                f"consolidation at step {self._step} folds no importance: nothing was estimated "
                f"since the last one (config.every={self.config.every}); lower config.every for "
                "segments shorter than that, or call accumulate(x) before consolidating",
                RuntimeWarning,
                stacklevel=2,
            )
        if samples > 0:
            new = normalize(self.running_omega, self.config.normalize)
            for n in self._names:
                self._omega[n] = combine(
                    self._omega[n], new[n], rule=self.config.rule, segments=self._segments,
                    alpha=self.config.alpha,
                )
            self._segments += 1
        with torch.no_grad():
            for n, p in zip(self._names, self._params, strict=True):
                src = _anchor.get(n) if _anchor is not None else None
                self._anchor[n].copy_(src if src is not None and src.shape == p.shape else p)
        self._running.reset()
        omegas = self._omegas()
        total = sum(int(o.numel()) for o in omegas)
        stats = {
            "samples": float(samples),
            "segments": float(self._segments),
            "omega_mean": sum(float(o.sum()) for o in omegas) / max(1, total),
            "omega_max": max((float(o.max()) for o in omegas if o.numel()), default=0.0),
        }
        if _signal is not None:
            stats["signal"] = float(_signal)
        event = Event(self._step, reason, stats)
        self.events.append(event)
        return event

    def flush(self) -> None:
        """All-reduce the importance this rank accumulated since the last reduction.

        Only useful under ``torch.distributed`` with ``config.sync_every > 1``, before reading
        :attr:`running_omega` or calling :meth:`state_dict` between reductions. A collective: call
        it on every rank at the same step. Does nothing in a single process.
        """
        self._sync()
        _, world_size, group = world(self.process_group)
        if world_size > 1:
            self._flush(group)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, object]:
        """Tensors and primitives only, keyed by parameter name; loads with ``weights_only=True``."""
        if self._pending_updates:
            raise RuntimeError(
                f"OnlineMAS holds importance of {self._pending_updates} updates not yet reduced "
                f"across ranks (config.sync_every={self.config.sync_every}): call flush() on every "
                "rank before state_dict()"
            )
        self._sync()
        detector_state = None
        if self.detector is not None and callable(getattr(self.detector, "state_dict", None)):
            detector_state = self.detector.state_dict()  # type: ignore[attr-defined]
        return {
            "version": STATE_VERSION,
            "lam": self.lam,
            "config": asdict(self.config),
            "step": self._step,
            "segments": self._segments,
            "n_skipped": self._n_skipped,
            "omega": {n: t.clone() for n, t in self._omega.items()},
            "anchor": {n: t.clone() for n, t in self._anchor.items()},
            "running": self._running.state_dict(),
            "events": [e.to_dict() for e in self.events],
            "generator": self._generator.get_state(),
            "detector": detector_state,
            "last_signal": self.last_signal,
            "feature_shift": self._shift.state_dict() if self._shift is not None else None,
            "buffer": self._buffer.state_dict() if self._buffer is not None else None,
            "stable": {n: t.clone() for n, t in self._stable.items()},
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore from :meth:`state_dict`; names and shapes must match the model's parameters."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from OnlineMAS.state_dict(), got {type(state)!r}")
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"OnlineMAS state version {state.get('version')!r} is not supported "
                f"(this version reads {STATE_VERSION})"
            )
        omega, anchor = state["omega"], state["anchor"]
        if not isinstance(omega, dict) or not isinstance(anchor, dict):
            raise TypeError("state['omega'] and state['anchor'] must be dicts of tensors")
        self._sync()
        current = dict(zip(self._names, self._params, strict=True))
        missing = sorted(set(current) - set(omega))
        unexpected = sorted(set(omega) - set(current))
        shapes = sorted(
            f"{n}: saved {tuple(omega[n].shape)}, model {tuple(current[n].shape)}"
            for n in set(current) & set(omega)
            if omega[n].shape != current[n].shape
        )
        if missing or unexpected or shapes:
            raise ValueError(
                "OnlineMAS state does not match the model: "
                f"missing {missing}, unexpected {unexpected}, shape mismatches {shapes}"
            )
        config = state.get("config")
        if isinstance(config, dict) and config.get("average") != self.config.average:
            raise ValueError(
                f"state was saved with average={config.get('average')!r}, this OnlineMAS uses "
                f"average={self.config.average!r}"
            )
        self.lam = state["lam"]  # type: ignore[assignment]
        self._step = int(state["step"])  # type: ignore[call-overload]
        self._segments = int(state["segments"])  # type: ignore[call-overload]
        self._n_skipped = int(state["n_skipped"])  # type: ignore[call-overload]
        for n, p in current.items():
            self._omega[n] = omega[n].detach().to(device=p.device, dtype=torch.float32).clone()
            self._anchor[n] = anchor[n].detach().to(device=p.device, dtype=p.dtype).clone()
        self._running.load_state_dict(state["running"])  # type: ignore[arg-type]
        events = state.get("events", [])
        if not isinstance(events, list):
            raise TypeError("state['events'] must be a list")
        self.events = [Event.from_dict(e) for e in events]
        generator = state.get("generator")
        if isinstance(generator, Tensor):
            self._generator.set_state(generator)
        detector_state = state.get("detector")
        if detector_state is not None and self.detector is not None:
            load = getattr(self.detector, "load_state_dict", None)
            if callable(load):
                load(detector_state)
        last = state.get("last_signal")
        self.last_signal = float(last) if isinstance(last, int | float) else None
        shift, buffer = state.get("feature_shift"), state.get("buffer")
        if self._shift is not None and isinstance(shift, dict):
            self._shift.load_state_dict(shift)
        if self._buffer is not None and isinstance(buffer, dict):
            self._buffer.load_state_dict(buffer)
        stable = state.get("stable", {})
        if isinstance(stable, list):  # saved by 0.1: [older, newer] snapshots; keep the older
            stable = stable[0] if stable else {}
        self._stable = {n: t.detach().to(device=current[n].device, dtype=current[n].dtype).clone()
                        for n, t in stable.items() if n in current} if isinstance(stable, dict) else {}
        self._pending, self._pending_n, self._pending_updates = {}, 0, 0
        self._key = ()
        self._sync()
        self._arm_next()

    # ------------------------------------------------------------------ internals

    def _arm_next(self) -> None:
        """shared_forward: record the user's next forward if the next observe estimates importance."""
        shared = self._seen.shared
        if shared is None:
            return
        if (self._step + 1) % self.config.every == 0 and world(self.process_group)[1] == 1:
            shared.arm(self._names, self._params)
        else:
            shared.disarm()

    def _quick_sync(self) -> None:
        """The per-step check of the penalty: the known parameters moved, changed or froze?

        Parameters added to the model are picked up by the next full ``_sync``: at the next
        importance estimate, consolidation, or read of ``omega``/``anchors``/``running_omega``.
        """
        for p, key in zip(self._params, self._key, strict=False):
            if (p.requires_grad is False or p.shape != key[2] or p.dtype != key[3]  # type: ignore[index]
                    or p.device != key[4]):  # type: ignore[index]
                self._sync()
                return

    def _sync(self) -> None:
        """Follow the model's trainable parameters: new ones start at zero importance."""
        named = [(n, p) for n, p in _named_parameters(self.model) if p.requires_grad]
        key = tuple((n, id(p), p.shape, p.dtype, p.device) for n, p in named)
        if key == self._key:
            return
        running = self._running.value()
        for n, p in named:
            o = self._omega.get(n)
            if o is not None and o.shape != p.shape:
                warnings.warn(
                    f"parameter {n!r} changed shape from {tuple(o.shape)} to {tuple(p.shape)}: "
                    "its importance restarts at zero and its anchor at the current value",
                    RuntimeWarning,
                    stacklevel=3,
                )
                o = None
                running.pop(n, None)
            if o is None:
                self._omega[n] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
                self._anchor[n] = p.detach().clone()
                continue
            if o.device != p.device:
                self._omega[n] = o.to(p.device)
                if n in running:
                    running[n] = running[n].to(p.device)
            a = self._anchor[n]
            if a.device != p.device or a.dtype != p.dtype:
                self._anchor[n] = a.to(device=p.device, dtype=p.dtype)
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._key = key

    def _observe_across_ranks(self, x: Tensor, loss: float | Tensor | None) -> Event | None:
        """``observe`` under torch.distributed: every rank runs the same collectives in order.

        One all-reduce per importance update carries the flat importance sums (on every
        ``sync_every``-th update; local sums wait in ``_pending`` in between) and three scalars: the
        sample count, ``signal * weight`` and ``weight``. The detector gets ``sum(signal * weight) /
        sum(weight)``, the same float on every rank, so every rank consolidates at the same step. A
        rank whose batch is not finite takes part with zeros.
        """
        finite, why = True, ""
        try:
            check_input(x)  # wrong types and shapes raise before anything changes
        except NonFiniteError as err:
            finite, why = False, str(err)
        self._step += 1
        self._sync()
        update = self._step % self.config.every == 0
        sums: dict[str, Tensor] = {}
        n, weighted, weight = 0, 0.0, 0.0
        seen = self._seen.take(x) if finite else None
        if seen is not None:
            value = self._signal(seen)
            if value is not None and math.isfinite(value):
                weighted, weight = value * x.shape[0], float(x.shape[0])
        if finite and update:
            xs = self._subsample(x)
            try:
                sums, n, out, _ = self._estimate(xs)
                value = self._signal(out) if seen is None else None
                if value is not None and math.isfinite(value):
                    weighted, weight = value * n, float(n)
                if self._buffer is not None:
                    surprise = self.config.signal if self.config.signal in ("output_norm", "entropy") \
                        else "entropy"
                    self._buffer.add(xs, per_sample(surprise, out))
            except NonFiniteError as err:
                finite, why, sums, n = False, str(err), {}, 0
        elif finite and seen is None and self._seen_every_step():
            try:
                value = self._signal(self._output_for_signal(x))
                if value is not None and math.isfinite(value):
                    weighted, weight = value * x.shape[0], float(x.shape[0])
            except NonFiniteError as err:
                finite, why = False, str(err)
        if not finite:
            self._skip(why)
        by_loss = self.config.signal == "loss" and self.detector is not None
        if by_loss and loss is not None:
            lv = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
            weighted, weight = (lv * x.shape[0], float(x.shape[0])) if math.isfinite(lv) else (0.0, 0.0)
        group = world(self.process_group)[2]
        if update:
            self._pending_updates += 1
            if self.config.sync_every > 1:  # sync_every=1 reduces this update's sums directly
                self._add_pending(sums, n)
                sums, n = self._pending, self._pending_n
            if self._pending_updates >= self.config.sync_every:
                return self._trigger(self._reduce(sums, n, weighted, weight, group))
        if self.detector is not None and (update or by_loss or self._seen_every_step()):
            return self._trigger(self._reduce(None, 0, weighted, weight, group))
        return self._trigger(None)

    def _add_pending(self, sums: dict[str, Tensor], n: int) -> None:
        for name, s in sums.items():
            p = self._pending.get(name)
            if p is None or p.shape != s.shape:
                self._pending[name] = s.detach().float()
            else:
                p.add_(s)
        self._pending_n += n

    def _flush(self, group: ProcessGroup | None) -> None:
        self._reduce(self._pending, self._pending_n, 0.0, 0.0, group)

    def _reduce(
        self,
        sums: dict[str, Tensor] | None,
        n: int,
        weighted: float,
        weight: float,
        group: ProcessGroup | None,
    ) -> float | None:
        """One all-reduce of ``[importance sums..., n, signal * weight, weight]`` over the ranks.

        With ``sums`` (zeros stand in for names this rank has none of) the totals enter the running
        importance as one update of ``sum(n)`` samples and the pending window restarts; without,
        only the scalars travel. Returns the detector's value ``sum(signal * weight) / sum(weight)``
        (None if no rank has one): the same float on every rank. The buffer is float32, so counts
        are exact up to 2**24 samples per reduction.
        """
        local = [] if sums is None else [
            sums[name] if name in sums else _zeros(p)
            for name, p in zip(self._names, self._params, strict=True)
        ]
        scalars = torch.tensor([float(n), weighted, weight], dtype=torch.float32, device=self._device())
        *total, scalars = all_reduce_flat([*local, scalars], group, stats=self.comm_stats)
        count, weighted, weight = scalars.tolist()
        if sums is not None:
            self._pending, self._pending_n, self._pending_updates = {}, 0, 0
            if round(count) >= 1:
                self._running.update(dict(zip(self._names, total, strict=True)), round(count))
        return weighted / weight if weight > 0 else None

    def _omegas(self) -> list[Tensor]:
        return [self._omega[n] for n in self._names]

    def _anchors(self) -> list[Tensor]:
        return [self._anchor[n] for n in self._names]

    def _device(self) -> torch.device:
        return self._params[0].device if self._params else torch.device("cpu")

    def _estimate(
        self, xs: Tensor, *, fold: bool = False
    ) -> tuple[dict[str, Tensor], int, Tensor, list[str]]:
        """Importance sums of a batch; the signal hook is off during this forward. ``fold``: the
        exact method may fold some sums into the running importance itself (their names come last,
        for ``RunningImportance.update(..., folded=)``)."""
        self._seen.active = False
        try:
            return _sums(
                _unwrap(self.model), xs, self.config.method, self.output, self.config.chunk_size,
                mean=False, fold=(self._running.value(), *self._running.weights(xs.shape[0]))
                if fold else None,
            )
        finally:
            self._seen.active = True

    def _output_for_signal(self, x: Tensor) -> Tensor:
        self._seen.active = False
        try:
            return model_output(_unwrap(self.model), x, self.output)
        finally:
            self._seen.active = True

    def _seen_every_step(self) -> bool:
        """Whether the detector is fed a label-free signal on every step (all ranks agree)."""
        return self.detector is not None and self.config.signal != "loss"

    def _signal(self, out: Tensor) -> float | None:
        name = self.config.signal
        if name == "loss" or self.detector is None:
            return None
        if name == "feature_shift":
            return self._shift(out) if self._shift is not None else None
        return signal_value(name, out)

    def _at_boundary(self) -> Event | None:
        if self.boundaries is not None and self._step in self.boundaries:
            return self.consolidate(reason="boundary")
        return None

    def _snapshot(self) -> None:
        """Move the slow copy of anchor="stable" toward the parameters: ``s <- s + w (theta - s)``.

        One parameter-sized buffer. With ``w = stable_weight`` every ``stable_every`` steps, the
        parameters of the last update weigh ``w``, those of the one before ``w (1 - w)``, ...: the
        copy trails the model by about ``stable_every / w`` steps, so the few steps a detector
        needs to see a change barely move it (``w = 1``: a plain snapshot, 0 to
        ``stable_every - 1`` steps old).
        """
        w = self.config.stable_weight
        with torch.no_grad():
            slow, params = [], []
            for n, p in zip(self._names, self._params, strict=True):
                t = self._stable.get(n)
                if t is None or t.shape != p.shape or t.dtype != p.dtype or t.device != p.device:
                    self._stable[n] = p.detach().clone()  # new (or reshaped) parameter
                else:
                    slow.append(t)
                    params.append(p)
            if slow:
                torch._foreach_lerp_(slow, params, w)
            if len(self._stable) > len(self._names):  # parameters that left the model
                names = set(self._names)
                self._stable = {n: t for n, t in self._stable.items() if n in names}

    def _subsample(self, x: Tensor) -> Tensor:
        k = self.config.subsample
        if k is None or not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] <= k:
            return x
        idx = torch.randperm(x.shape[0], generator=self._generator)[:k]
        return x[idx.to(x.device)]

    def _skip(self, why: str) -> None:
        self._n_skipped += 1
        if not self._warned:
            warnings.warn(
                f"OnlineMAS skipped a batch: {why}; importance and anchors are unchanged "
                "(further skips are only counted in n_skipped)",
                RuntimeWarning,
                stacklevel=3,
            )
            self._warned = True


def _named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Parameter names without the ``module.`` prefix of DistributedDataParallel/DataParallel."""
    return list(_unwrap(model).named_parameters())


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel/DataParallel, else the model itself.

    Importance is estimated on it: its parameter names carry no ``module.`` prefix, and its forward
    runs on this process alone, without the wrapper's gradient hooks or scatter to replicas.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        return model.module
    return model


def _zeros(p: Tensor) -> Tensor:
    return torch.zeros(p.shape, dtype=torch.float32, device=p.device)


def _check_boundaries(boundaries: Sequence[int]) -> frozenset[int]:
    if isinstance(boundaries, str | bytes) or not hasattr(boundaries, "__iter__"):
        raise TypeError(f"boundaries must be a sequence of int steps, got {boundaries!r}")
    steps = list(boundaries)
    bad = [b for b in steps if not _int(b) or b < 1]
    if bad:
        raise ValueError(f"boundaries must be observe() step numbers >= 1, got {bad}")
    return frozenset(steps)
