"""Unlabeled test-time adaptation of a trained model, protected by online MAS.

A deployed model meets a stream of unlabeled, shifting inputs. Entropy minimisation (Tent, Wang et
al., ICLR 2021) adapts it by lowering the entropy of its own predictions, which drifts and can
collapse on long or shifting streams; EATA (Niu et al., ICML 2022) skips unreliable samples and
adds a Fisher penalty that needs pseudo-labels. Here the anti-forgetting term is the label-free MAS
penalty (Aljundi et al., ECCV 2018, arXiv:1711.09601) of :class:`~online_mas.OnlineMAS`, anchored at
the source model with Omega estimated on unlabeled source data and kept up to date online.

Wired into a deployment loop in a few lines (the user keeps the model and the optimizer)::

    params = configure_model(model, "norm")           # adapt normalisation affine parameters only
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    mas = om.OnlineMAS(model, lam=1.0)
    adapter = Adapter(model, opt, mas=mas)
    adapter.calibrate(unlabeled_source_batches)       # Omega on source data, anchor = source model
    for x in stream:                                  # inputs only, never labels
        step = adapter.step(x)                        # step.predictions are this batch's answers

Pure functions compute the objective (:func:`entropy`, :func:`entropy_loss`) and the collapse rule
(:func:`collapse_stats`); :class:`Adapter` owns the step counter, the collapse patience and the
reset.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from online_mas.checks import check_choice as _choice
from online_mas.checks import is_int as _int
from online_mas.checks import is_real as _real
from online_mas.online import Event, OnlineMAS
from online_mas.penalty import PENALTY_FORMS

__all__ = [
    "AdaptConfig",
    "AdaptStep",
    "Adapter",
    "collapse_stats",
    "configure_model",
    "entropy",
    "entropy_loss",
    "norm_parameters",
    "norm_statistics",
]

STATE_VERSION = 1
PARAMS = ("norm", "all")
NORMS = ("batch", "running")
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
               nn.modules.instancenorm._InstanceNorm)


# ---------------------------------------------------------------------------------- pure functions


def entropy(logits: Tensor) -> Tensor:
    """Per-sample entropy of ``softmax(logits)`` in nats, ``-sum_c p_c log p_c`` (differentiable).

    Parameters
    ----------
    logits
        Shape ``(N, C)``.

    Returns
    -------
    Tensor
        Shape ``(N,)``, float32.

    Examples
    --------
    >>> import torch
    >>> [round(v, 4) for v in entropy(torch.tensor([[0.0, 0.0], [10.0, -10.0]])).tolist()]
    [0.6931, 0.0]
    """
    _check_logits(logits)
    logp = torch.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1)


def entropy_loss(logits: Tensor, *, threshold: float | None = None) -> tuple[Tensor, Tensor]:
    """Mean entropy over the confident samples, and which samples those are.

    ``loss = 1/|S| sum_{n in S} H(softmax(logits_n))`` with ``S = {n : H_n < threshold}`` (EATA's
    reliable-sample filter; ``threshold=None`` keeps every sample, as Tent does). With no sample
    kept the loss is ``0`` (still differentiable, with zero gradient).

    Parameters
    ----------
    logits
        Shape ``(N, C)``.
    threshold
        Entropy threshold in nats (EATA uses ``0.4 * ln C``), or ``None``.

    Returns
    -------
    loss : Tensor
        A scalar.
    kept : Tensor
        Boolean mask of shape ``(N,)``.

    Examples
    --------
    >>> import torch, math
    >>> logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 9.0, 0.0]])
    >>> loss, kept = entropy_loss(logits, threshold=0.4 * math.log(3))
    >>> kept.tolist(), round(loss.item(), 4)
    ([True, False, True], 0.0899)
    """
    if threshold is not None and (not _real(threshold) or threshold <= 0):
        raise ValueError(f"threshold must be a finite number of nats > 0 or None, got {threshold!r}")
    ent = entropy(logits)
    if threshold is None:
        return ent.mean(), torch.ones_like(ent, dtype=torch.bool)
    kept = ent.detach() < threshold
    return (ent * kept).sum() / kept.sum().clamp(min=1), kept


def collapse_stats(logits: Tensor) -> tuple[float, float]:
    """Mean prediction entropy as a fraction of ``ln C``, and the share of the most predicted class.

    A collapsed model gives near-zero entropy with one class dominating: both numbers say how close
    a batch is to that (:class:`Adapter` resets when the first is below ``collapse_entropy`` and
    the second at least ``collapse_share``).

    Examples
    --------
    >>> import torch
    >>> ent, share = collapse_stats(torch.tensor([[9.0, 0.0], [9.0, 0.0], [9.0, 0.0], [0.0, 9.0]]))
    >>> round(ent, 4), share
    (0.0018, 0.75)
    """
    _check_logits(logits)
    logits = logits.detach()
    n, c = logits.shape
    if n == 0:
        return float("nan"), float("nan")
    ent = float(entropy(logits).mean()) / math.log(c) if c > 1 else 0.0
    share = float(torch.bincount(logits.argmax(1), minlength=c).max()) / n
    return ent, share


def norm_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The affine parameters (weight, bias) of the normalisation layers, by name, as Tent adapts.

    BatchNorm, LayerNorm, GroupNorm and InstanceNorm layers of any dimension count.

    Examples
    --------
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    >>> [n for n, _ in norm_parameters(model)]
    ['1.weight', '1.bias']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model)!r}")
    out: list[tuple[str, nn.Parameter]] = []
    for mname, m in model.named_modules():
        if isinstance(m, _NORM_TYPES):
            for pname, p in m.named_parameters(recurse=False):
                if pname in ("weight", "bias"):
                    out.append((f"{mname}.{pname}" if mname else pname, p))
    return out


def configure_model(model: nn.Module, params: str = "norm") -> list[nn.Parameter]:
    """Make only the parameters to adapt trainable (``requires_grad``) and return them.

    ``"norm"``: the normalisation affine parameters (:func:`norm_parameters`; Tent); ``"all"``:
    every parameter. The others get ``requires_grad=False``, so :class:`~online_mas.OnlineMAS`
    built afterwards tracks (and stores Omega and anchors for) the adapted parameters only. Pass
    the returned list to the optimizer.

    Examples
    --------
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    >>> [tuple(p.shape) for p in configure_model(model, "norm")]
    [(3,), (3,)]
    >>> [p.requires_grad for p in model.parameters()]
    [False, False, True, True, False, False]
    >>> configure_model(model, "some")
    Traceback (most recent call last):
    ...
    ValueError: params must be one of ('norm', 'all'), got 'some'
    """
    _choice("params", params, PARAMS)
    chosen = [p for _, p in norm_parameters(model)] if params == "norm" else list(model.parameters())
    if not chosen:
        raise ValueError(f"the model has no parameters to adapt with params={params!r} "
                         "(params='norm' needs BatchNorm/LayerNorm/GroupNorm layers with affine=True)")
    ids = {id(p) for p in chosen}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    return chosen


@contextlib.contextmanager
def norm_statistics(model: nn.Module, norm: str = "batch") -> Iterator[None]:
    """Run ``model`` in eval mode, with BatchNorm normalising by the batch's own statistics.

    ``norm="batch"`` (Tent): BatchNorm layers normalise each batch with its own mean and variance
    and their running statistics are neither used nor updated. ``norm="running"``: plain eval mode.
    Dropout is off in both; every module's ``training`` flag is restored on exit.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> bn = nn.BatchNorm1d(1).eval()
    >>> x = torch.tensor([[1.0], [3.0]])
    >>> with norm_statistics(bn, "batch"):
    ...     y = bn(x)
    >>> [round(v, 3) for v in y.flatten().tolist()], bn.running_mean.tolist()
    ([-1.0, 1.0], [0.0])
    """
    _choice("norm", norm, NORMS)
    flags = [(m, m.training) for m in model.modules()]
    hidden: list[tuple[nn.modules.batchnorm._BatchNorm, Tensor | None, Tensor | None]] = []
    model.eval()
    if norm == "batch":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                hidden.append((m, m.running_mean, m.running_var))
                m.running_mean = None
                m.running_var = None
    try:
        yield
    finally:
        for m, mean, var in hidden:
            m.running_mean = mean
            m.running_var = var
        for m, flag in flags:
            m.training = flag


# ---------------------------------------------------------------------------------- the adapter


@dataclass(frozen=True)
class AdaptConfig:
    """How :class:`Adapter` adapts: forward mode, objective, penalty form, collapse and reset."""

    norm: str = "batch"  # BatchNorm statistics: "batch" (each batch's own, Tent) or "running" (eval)
    e_max: float | None = 0.4  # confident filter: keep samples with entropy < e_max * ln(C); None: all
    penalty: str = "proximal"  # MAS penalty: "proximal" step (stable for any lam), "loss" term, "grad"
    observe: bool = True  # feed every batch to mas.observe (online Omega, detector consolidation)
    reset: bool = True  # reset parameters to the anchor (and the optimizer state) on collapse
    collapse_entropy: float = 0.05  # collapse: mean entropy below this fraction of ln(C) ...
    collapse_share: float = 0.9  # ... and the most predicted class has at least this share
    collapse_patience: int = 3  # consecutive collapsed batches before a reset

    def __post_init__(self) -> None:
        _choice("norm", self.norm, NORMS)
        if self.e_max is not None and (not _real(self.e_max) or not self.e_max > 0):
            raise ValueError(f"e_max must be a finite number > 0 (a fraction of ln C) or None, "
                             f"got {self.e_max!r}")
        _choice("penalty", self.penalty, PENALTY_FORMS)
        for name in ("observe", "reset"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not _real(self.collapse_entropy) or not 0.0 <= self.collapse_entropy <= 1.0:
            raise ValueError(f"collapse_entropy must be a number in [0, 1] (a fraction of ln C), "
                             f"got {self.collapse_entropy!r}")
        if not _real(self.collapse_share) or not 0.0 < self.collapse_share <= 1.0:
            raise ValueError(f"collapse_share must be a number in (0, 1], got {self.collapse_share!r}")
        if not _int(self.collapse_patience) or self.collapse_patience < 1:
            raise ValueError(f"collapse_patience must be an int >= 1, got {self.collapse_patience!r}")


@dataclass
class AdaptStep:
    """What one :meth:`Adapter.step` did."""

    step: int  # the step() call, 1-based
    predictions: Tensor  # argmax of the logits this step computed, before its update, shape (N,)
    loss: float  # the entropy objective over the kept samples (before the update)
    penalty: float  # the MAS penalty before the update (0 without MAS)
    entropy: float  # mean prediction entropy of the batch, in nats
    n_used: int  # samples that passed the confident filter
    updated: bool  # whether the optimizer stepped (no kept sample or a reset: no step)
    collapsed: bool  # whether this batch met the collapse rule
    reset: bool  # whether the parameters were reset to the anchor at this step
    event: Event | None = None  # the consolidation mas.observe made at this step, if any

    def to_dict(self) -> dict[str, object]:
        """Primitives only (predictions dropped), for JSON logs."""
        d = {k: v for k, v in asdict(self).items() if k not in ("predictions", "event")}
        d["event"] = self.event.to_dict() if self.event is not None else None
        return d


class Adapter:
    """Test-time adaptation by entropy minimisation, regularised by online MAS.

    Each :meth:`step` on an unlabeled batch ``x``:

    1. runs the model on ``x`` (BatchNorm per ``config.norm``, dropout off) giving logits ``z``;
    2. checks the collapse rule on ``z``: mean entropy ``< collapse_entropy * ln C`` and one class
       predicted for ``>= collapse_share`` of the batch; after ``collapse_patience`` such batches in
       a row (and ``config.reset``), copies the anchor into the parameters, clears the optimizer
       state and skips the update;
    3. otherwise minimises ``L = mean_{n in S} H(softmax(z_n)) + lam sum_k Omega_k (theta_k -
       theta*_k)^2`` with ``S`` the samples whose entropy is below ``e_max * ln C`` (no update when
       ``S`` is empty): one optimizer step, the penalty entering per ``config.penalty``;
    4. calls ``mas.observe(x)`` (``config.observe``): Omega keeps being estimated on the stream and
       the detector of ``mas`` may consolidate, moving the anchor to a stable adapted state.

    Labels are never read: ``step`` takes a tensor of inputs.

    Parameters
    ----------
    model
        The trained model, returning logits ``(N, C)``; adapt the parameters the optimizer holds
        (see :func:`configure_model`).
    optimizer
        The user's optimizer over the parameters to adapt. ``Adapter`` calls ``step()`` on it and
        clears its ``state`` on a reset.
    mas
        :class:`~online_mas.OnlineMAS` on the same model, or ``None`` for plain entropy
        minimisation (Tent; with ``e_max`` set, EATA's filter without its penalty).
    config
        :class:`AdaptConfig`; defaults to ``AdaptConfig()``.

    Notes
    -----
    The anchor of a reset is the MAS anchor ``theta*`` (the source model after :meth:`calibrate`,
    later the state of the last consolidation); without MAS, the parameters the optimizer held
    when the adapter was built. With ``norm="batch"`` the BatchNorm running statistics stay those
    of the source model; OnlineMAS estimates importance in eval mode, i.e. with them.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from online_mas import OnlineMAS
    >>> from online_mas.adapt import AdaptConfig, Adapter, configure_model
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    >>> opt = torch.optim.SGD(configure_model(model, "norm"), lr=0.1)
    >>> mas = OnlineMAS(model, lam=1.0, detector=None)
    >>> adapter = Adapter(model, opt, mas=mas, config=AdaptConfig(e_max=None))
    >>> adapter.calibrate([torch.randn(16, 4) for _ in range(3)]).stats["samples"]
    48.0
    >>> step = adapter.step(torch.randn(16, 4) + 2.0)
    >>> step.step, step.n_used, step.updated, round(step.loss, 4)
    (1, 16, True, 1.0683)
    >>> bool(mas.penalty() > 0)
    True

    References
    ----------
    Wang, Shelhamer, Liu, Olshausen, Darrell. Tent: Fully Test-Time Adaptation by Entropy
    Minimization. ICLR 2021. Niu et al. Efficient Test-Time Model Adaptation without Forgetting
    (EATA). ICML 2022. Aljundi et al. Memory Aware Synapses. ECCV 2018.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        mas: OnlineMAS | None = None,
        config: AdaptConfig | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model)!r}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer)!r}")
        if mas is not None and not isinstance(mas, OnlineMAS):
            raise TypeError(f"mas must be an OnlineMAS or None, got {type(mas)!r}")
        if mas is not None and mas.model is not model:
            raise ValueError("mas must be built on the same model the adapter adapts")
        if config is not None and not isinstance(config, AdaptConfig):
            raise TypeError(f"config must be an AdaptConfig or None, got {type(config)!r}")
        self.model = model
        self.optimizer = optimizer
        self.mas = mas
        self.config = config if config is not None else AdaptConfig()
        names = {id(p): n for n, p in model.named_parameters()}
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        outside = [i for i, p in enumerate(self._params) if id(p) not in names]
        if outside:
            raise ValueError(f"the optimizer holds parameters that are not the model's "
                             f"(positions {outside})")
        self._names = [names[id(p)] for p in self._params]
        if self.config.penalty == "proximal" and mas is not None:
            lrs = {float(g["lr"]) for g in optimizer.param_groups}
            if len(lrs) != 1:
                raise ValueError(f"penalty='proximal' needs one learning rate, got {sorted(lrs)}")
        # without MAS, a reset goes back to the parameters as they were at construction
        self._source: dict[str, Tensor] | None = None
        if mas is None:
            self._source = {n: p.detach().clone() for n, p in zip(self._names, self._params,
                                                                   strict=True)}
        self._step = 0
        self._run = 0  # consecutive collapsed batches
        self.resets: list[int] = []  # steps at which a reset happened

    # ------------------------------------------------------------------ the calls

    @property
    def step_count(self) -> int:
        """How many times :meth:`step` was called."""
        return self._step

    def calibrate(self, batches: Iterable[Tensor]) -> Event:
        """Estimate Omega on unlabeled source batches and anchor the penalty at the current model.

        Estimates importance on every batch (``mas.accumulate``, whatever ``mas.config.share``),
        then consolidates with ``reason="source"``. Call once, before deployment.
        """
        if self.mas is None:
            raise ValueError("calibrate() needs an OnlineMAS: build the Adapter with mas=...")
        n = 0
        for x in batches:
            if not isinstance(x, Tensor):
                raise TypeError(f"calibrate() takes batches of input tensors (no labels), got "
                                f"{type(x)!r}")
            self.mas.accumulate(x)
            n += 1
        if n == 0:
            raise ValueError("calibrate() got no batches")
        return self.mas.consolidate(reason="source")

    def predict(self, x: Tensor) -> Tensor:
        """Logits of ``x`` as :meth:`step` computes them (``config.norm``), without any update."""
        _check_input(x)
        with torch.no_grad(), norm_statistics(self.model, self.config.norm):
            return self.model(x)

    def step(self, x: Tensor) -> AdaptStep:
        """Adapt on one unlabeled batch; see the class docstring for what happens."""
        _check_input(x)
        cfg = self.config
        self._step += 1
        with norm_statistics(self.model, cfg.norm):
            logits = self.model(x)
        _check_logits(logits)
        c = logits.shape[1]
        threshold = cfg.e_max * math.log(c) if cfg.e_max is not None and c > 1 else None
        loss, kept = entropy_loss(logits, threshold=threshold)
        ent, share = collapse_stats(logits)
        collapsed = ent < cfg.collapse_entropy and share >= cfg.collapse_share
        self._run = self._run + 1 if collapsed else 0
        pen = self.mas.penalty() if self.mas is not None and cfg.penalty == "loss" else None
        pen_value = float(pen.detach()) if pen is not None else self._penalty_value()
        n_used = int(kept.sum())
        did_reset = updated = False
        if cfg.reset and self._run >= cfg.collapse_patience:
            self.reset()
            did_reset = True
        elif n_used > 0:
            self._update(loss if pen is None else loss + pen)
            updated = True
        event = self.mas.observe(x) if self.mas is not None and cfg.observe else None
        return AdaptStep(
            step=self._step, predictions=logits.detach().argmax(1), loss=float(loss.detach()),
            penalty=pen_value, entropy=ent * math.log(c) if c > 1 else 0.0, n_used=n_used,
            updated=updated, collapsed=collapsed, reset=did_reset, event=event,
        )

    @torch.no_grad()
    def reset(self) -> None:
        """Copy the anchor into the adapted parameters and clear the optimizer state."""
        anchor = self.mas.anchors if self.mas is not None else (self._source or {})
        for n, p in zip(self._names, self._params, strict=True):
            a = anchor.get(n)
            if a is not None:
                p.copy_(a)
        self.optimizer.state.clear()
        self._run = 0
        self.resets.append(self._step)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, object]:
        """Tensors and primitives only; the model, optimizer and OnlineMAS keep their own state."""
        return {
            "version": STATE_VERSION,
            "config": asdict(self.config),
            "step": self._step,
            "run": self._run,
            "resets": list(self.resets),
            "source": {n: t.clone() for n, t in self._source.items()} if self._source else None,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore from :meth:`state_dict`; the saved reset anchor must match the parameters."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            got = state.get("version") if isinstance(state, dict) else type(state)
            raise ValueError(f"Adapter state version {got!r} is not supported (this version "
                             f"reads {STATE_VERSION})")
        source = state.get("source")
        if self._source is not None:
            if not isinstance(source, dict):
                raise ValueError("the state has no reset anchor but this Adapter (no MAS) needs one")
            mine = {n: tuple(p.shape) for n, p in zip(self._names, self._params, strict=True)}
            theirs = {n: tuple(t.shape) for n, t in source.items()}
            if mine != theirs:
                raise ValueError(f"Adapter state does not match the optimizer's parameters: "
                                 f"saved {theirs}, now {mine}")
            self._source = {n: t.clone() for n, t in source.items()}
        self._step = int(state["step"])  # type: ignore[call-overload]
        self._run = int(state["run"])  # type: ignore[call-overload]
        self.resets = [int(s) for s in state.get("resets", [])]  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ internals

    def _update(self, total: Tensor) -> None:
        params = [p for p in self._params if p.requires_grad]
        grads = torch.autograd.grad(total, params, allow_unused=True)
        for p, g in zip(params, grads, strict=True):
            p.grad = g if g is not None else torch.zeros_like(p)
        if self.mas is not None and self.config.penalty == "grad":
            self.mas.penalty_grad_()
        self.optimizer.step()
        if self.mas is not None and self.config.penalty == "proximal":
            self.mas.proximal_(float(self.optimizer.param_groups[0]["lr"]))
        for p in self.model.parameters():
            p.grad = None

    def _penalty_value(self) -> float:
        if self.mas is None:
            return 0.0
        with torch.no_grad():
            return float(self.mas.penalty())


def _check_input(x: object) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor of inputs (no labels), got {type(x)!r}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch, batch dimension first, got shape "
                         f"{tuple(x.shape)}")


def _check_logits(logits: object) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits)
        raise ValueError(f"the model must return logits of shape (N, C), got {shape}")
