"""The learners compared by the runner: one small class each, sharing a four-call protocol.

The run loop owns the model, the optimizer and the stream. On every batch it computes the task
loss, adds ``learner.extra_loss(x, y, logits)`` unless that is None (replay, distillation), calls
``backward()``, then

1. ``learner.after_backward()``: ``.grad`` holds the task gradient; add the penalty's gradient
   (penalty forms ``"loss"`` and ``"grad"``; EWC reads the task gradient first);
2. ``optimizer.step()``;
3. ``learner.after_step(x, loss)``: the proximal form, importance updates, consolidation; returns
   the consolidation :class:`~online_mas.Event` if one happened.

and on logged steps ``learner.log_values()`` (penalty value, detector signal) for ``metrics.jsonl``.

The penalty forms give the same update in exact arithmetic except ``"proximal"``: ``"loss"``
backpropagates the penalty's autograd graph (after the task loss's, which adds the same gradient
as putting it in the loss), ``"grad"`` adds ``2 lam Omega (theta - theta*)`` to ``.grad`` without a
graph, ``"proximal"`` takes the implicit step after ``optimizer.step()`` (stable for any ``lam``).

Which learners see what:

- ``finetune``: the task loss only.
- ``online-mas``: task-free: importance from the inputs alone, consolidation when its detector
  fires; it never sees the boundaries.
- ``mas-oracle``, ``l2``, ``ewc``: consolidate at the **true** boundaries (the last batch of each
  segment); they are not task-free. ``ewc`` also uses the labels for its Fisher information.
- ``joint``: the same batches in a seeded random order (i.i.d.), an upper bound.
- ``er``, ``der``, ``tfcl``, ``mas+er`` (:mod:`~online_mas.experiment.replay_learners`) replay a
  memory of stored samples; ``lwf`` and ``mas+lwf``
  (:mod:`~online_mas.experiment.distill_learners`) distil from a frozen teacher. ``lwf`` refreshes
  its teacher at the true boundaries; the others are task-free.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from online_mas.distill import Distiller
from online_mas.experiment.config import ExperimentConfig
from online_mas.experiment.distill_learners import Distillation
from online_mas.experiment.registry import LEARNERS, MEMORIES, build_detector, build_mas
from online_mas.experiment.replay_learners import Rehearsal, check_learner_state
from online_mas.online import Event, OnlineMAS
from online_mas.penalty import penalty_grad_, penalty_loss, proximal_
from online_mas.rehearsal import Reservoir

__all__ = ["EWC", "L2", "MAS", "Finetune", "Learner", "build_learner"]

_VERSION = 1


class Learner(Protocol):
    """What the run loop calls; see the module docstring."""

    name: str  # the learner's name in LEARNERS
    iid: bool  # True: train on the stream's batches in a seeded random order (joint)

    def extra_loss(self, x: Tensor, y: Tensor, logits: Tensor) -> Tensor | None: ...

    def after_backward(self) -> None: ...

    def after_step(self, x: Tensor, loss: float) -> Event | None: ...

    def log_values(self) -> dict[str, float]: ...

    def importance(self) -> dict[str, Tensor] | None: ...

    def stored_samples(self) -> int | None: ...

    def state_dict(self) -> dict[str, object]: ...

    def load_state_dict(self, state: dict[str, object]) -> None: ...


class Finetune:
    """Plain training on the task loss (``joint=True``: in a random order over the whole stream).

    Examples
    --------
    >>> Finetune().after_step(None, 0.0) is None, Finetune(joint=True).name
    (True, 'joint')
    """

    def __init__(self, *, joint: bool = False) -> None:
        self.name = "joint" if joint else "finetune"
        self.iid = joint

    def extra_loss(self, x: Tensor, y: Tensor, logits: Tensor) -> Tensor | None:
        return None

    def stored_samples(self) -> int | None:
        return None

    def after_backward(self) -> None:
        pass

    def after_step(self, x: Tensor, loss: float) -> Event | None:
        return None

    def log_values(self) -> dict[str, float]:
        return {}

    def importance(self) -> dict[str, Tensor] | None:
        return None

    def state_dict(self) -> dict[str, object]:
        return {"version": _VERSION, "learner": self.name}

    def load_state_dict(self, state: dict[str, object]) -> None:
        check_learner_state(state, self.name)


class MAS:
    """MAS through :class:`~online_mas.OnlineMAS`: task-free (a detector) or oracle (boundaries).

    Parameters
    ----------
    name
        ``"online-mas"`` or ``"mas-oracle"``.
    mas
        The OnlineMAS object, built on the run's model.
    form
        Penalty form: ``"loss"``, ``"grad"`` or ``"proximal"``.
    lr
        Step size of the proximal form (the optimizer's learning rate).
    shape, delta
        The penalty of ``d = theta - theta*``: ``"quadratic"`` (MAS), ``"l1"`` or ``"huber"`` with
        threshold ``delta`` (:mod:`online_mas.bounded`), in every form.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(4, 2)
    >>> from online_mas.experiment.registry import build_mas
    >>> from online_mas.experiment.mas_section import MASSection
    >>> learner = MAS("mas-oracle", build_mas(model, 1.0, MASSection(), boundaries=[2]), form="grad",
    ...               lr=0.1)
    >>> [learner.after_step(torch.randn(8, 4), 0.0) for _ in range(2)][1].reason
    'boundary'
    """

    iid = False

    def __init__(self, name: str, mas: OnlineMAS, *, form: str, lr: float, shape: str = "quadratic",
                 delta: float | None = None) -> None:
        self.name = name
        self.mas = mas
        self.form = form
        self.lr = lr
        self.shape, self.delta = shape, delta
        mas.penalty(shape=shape, delta=delta)  # a bad shape or delta raises here, not at the first step
        self._loss_signal = mas.trigger.by_loss

    def extra_loss(self, x: Tensor, y: Tensor, logits: Tensor) -> Tensor | None:
        return None

    def stored_samples(self) -> int | None:
        return None

    def after_backward(self) -> None:
        if self.form == "loss":
            value = self.mas.penalty(shape=self.shape, delta=self.delta)
            if value.requires_grad:
                value.backward()
        elif self.form == "grad":
            self.mas.penalty_grad_(shape=self.shape, delta=self.delta)

    def after_step(self, x: Tensor, loss: float) -> Event | None:
        if self.form == "proximal":
            self.mas.proximal_(self.lr, shape=self.shape, delta=self.delta)
        return self.mas.observe(x, loss=loss if self._loss_signal else None)

    def log_values(self) -> dict[str, float]:
        with torch.no_grad():
            out = {"penalty": float(self.mas.penalty(shape=self.shape, delta=self.delta))}
        if self.mas.last_signal is not None:
            out["signal"] = self.mas.last_signal
        return out

    def importance(self) -> dict[str, Tensor] | None:
        return self.mas.omega

    def state_dict(self) -> dict[str, object]:
        if self.mas.reducer.sync_every > 1:  # under torchrun: reduce what is pending (a collective)
            self.mas.flush()
        return {"version": _VERSION, "learner": self.name, "mas": self.mas.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        check_learner_state(state, self.name)
        self.mas.load_state_dict(state["mas"])  # type: ignore[arg-type]


class _Anchored:
    """A quadratic penalty with its own importance, consolidated at the true boundaries."""

    iid = False
    name = "anchored"

    def __init__(self, model: nn.Module, lam: float, boundaries: list[int], *, form: str,
                 lr: float) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self.lam = lam
        self.form = form
        self.lr = lr
        self.boundaries = frozenset(boundaries)
        self._step = 0
        self._omega: list[Tensor] | None = None  # None until the first boundary
        self._anchor: list[Tensor] | None = None

    def extra_loss(self, x: Tensor, y: Tensor, logits: Tensor) -> Tensor | None:
        return None

    def stored_samples(self) -> int | None:
        return None

    def after_backward(self) -> None:
        self._read_gradient()
        if self._omega is None or self._anchor is None or self.form == "proximal":
            return
        if self.form == "loss":
            penalty_loss(self._params, self._anchor, self._omega, self.lam).backward()
        else:
            penalty_grad_(self._params, self._anchor, self._omega, self.lam)

    def after_step(self, x: Tensor, loss: float) -> Event | None:
        if self.form == "proximal" and self._omega is not None and self._anchor is not None:
            proximal_(self._params, self._anchor, self._omega, self.lam, self.lr)
        self._step += 1
        if self._step not in self.boundaries:
            return None
        with torch.no_grad():
            self._omega = self._consolidate()
            self._anchor = [p.detach().clone() for p in self._params]
        total = sum(int(o.numel()) for o in self._omega)
        return Event(self._step, "boundary", {
            "omega_mean": sum(float(o.sum()) for o in self._omega) / max(1, total),
            "omega_max": max((float(o.max()) for o in self._omega if o.numel()), default=0.0)})

    def log_values(self) -> dict[str, float]:
        if self._omega is None or self._anchor is None:
            return {"penalty": 0.0}
        with torch.no_grad():
            return {"penalty": float(penalty_loss(self._params, self._anchor, self._omega, self.lam))}

    def importance(self) -> dict[str, Tensor] | None:
        return None if self._omega is None else dict(zip(self._names, self._omega, strict=True))

    def _read_gradient(self) -> None:
        pass

    def _consolidate(self) -> list[Tensor]:
        raise NotImplementedError

    def _tensors(self) -> dict[str, object]:
        return {}

    def _load_tensors(self, state: dict[str, object]) -> None:
        pass

    def state_dict(self) -> dict[str, object]:
        def named(ts: list[Tensor] | None) -> dict[str, Tensor] | None:
            return None if ts is None else {n: t.clone() for n, t in zip(self._names, ts, strict=True)}
        return {"version": _VERSION, "learner": self.name, "step": self._step,
                "omega": named(self._omega), "anchor": named(self._anchor), **self._tensors()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        check_learner_state(state, self.name)
        self._step = int(state["step"])  # type: ignore[call-overload]
        self._omega = self._unnamed(state["omega"], "omega")
        self._anchor = self._unnamed(state["anchor"], "anchor")
        self._load_tensors(state)

    def _unnamed(self, saved: object, what: str) -> list[Tensor] | None:
        if saved is None:
            return None
        if not isinstance(saved, dict):
            raise TypeError(f"{self.name} state entry {what!r} must be a dict of tensors or None")
        _check_names(saved, dict(zip(self._names, self._params, strict=True)), f"{self.name} {what}")
        return [saved[n].detach().clone().to(p.device) for n, p in zip(self._names, self._params,
                                                                       strict=True)]


class L2(_Anchored):
    """Uniform importance: ``lam * sum (theta - theta*)^2``, anchored at each true boundary.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> l2 = L2(model, 0.5, boundaries=[1], form="grad", lr=0.1)
    >>> l2.after_step(torch.zeros(1, 2), 0.0).reason
    'boundary'
    >>> with torch.no_grad():
    ...     model.bias += 2.0
    >>> round(l2.log_values()["penalty"], 4)  # 0.5 * 2^2
    2.0
    """

    name = "l2"

    def importance(self) -> dict[str, Tensor] | None:
        return None  # uniform by construction: nothing to report

    def _consolidate(self) -> list[Tensor]:
        return [torch.ones_like(p, dtype=torch.float32) for p in self._params]


class EWC(_Anchored):
    """Online EWC (Schwarz et al., 2018): a decayed sum of per-segment diagonal Fisher matrices.

    The Fisher of a segment is the mean over its batches of the squared mini-batch gradient of
    the task loss (an empirical Fisher from the labels; the penalty's gradient is not included).
    At each true boundary ``F <- gamma F + F_segment`` and ``theta* <- theta``; the penalty is
    ``lam * sum F (theta - theta*)^2``.

    References
    ----------
    Kirkpatrick et al. Overcoming catastrophic forgetting in neural networks. PNAS 2017.
    Schwarz et al. Progress & Compress: A scalable framework for continual learning. ICML 2018.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(1, 1, bias=False)
    >>> ewc = EWC(model, 1.0, boundaries=[2], form="grad", lr=0.1, gamma=0.5)
    >>> for g in (1.0, 3.0):   # squared gradients 1 and 9: the segment's Fisher is their mean, 5
    ...     model.weight.grad = torch.tensor([[g]])
    ...     ewc.after_backward()
    ...     event = ewc.after_step(torch.zeros(1, 1), 0.0)
    >>> ewc.importance()["weight"].item()
    5.0
    """

    name = "ewc"

    def __init__(self, model: nn.Module, lam: float, boundaries: list[int], *, form: str, lr: float,
                 gamma: float) -> None:
        super().__init__(model, lam, boundaries, form=form, lr=lr)
        self.gamma = gamma
        self._sum = [torch.zeros_like(p, dtype=torch.float32) for p in self._params]
        self._count = 0

    def _read_gradient(self) -> None:
        with torch.no_grad():
            grads = [p.grad.float() if p.grad is not None else torch.zeros_like(s)
                     for p, s in zip(self._params, self._sum, strict=True)]
            torch._foreach_addcmul_(self._sum, grads, grads)
        self._count += 1

    def _consolidate(self) -> list[Tensor]:
        fisher = [s / max(1, self._count) for s in self._sum]
        if self._omega is not None:
            fisher = [self.gamma * o + f for o, f in zip(self._omega, fisher, strict=True)]
        for s in self._sum:
            s.zero_()
        self._count = 0
        return fisher

    def _tensors(self) -> dict[str, object]:
        return {"fisher_sum": {n: s.clone() for n, s in zip(self._names, self._sum, strict=True)},
                "fisher_count": self._count}

    def _load_tensors(self, state: dict[str, object]) -> None:
        sums = self._unnamed(state["fisher_sum"], "fisher_sum")
        if sums is None:
            raise TypeError("ewc state entry 'fisher_sum' must be a dict of tensors")
        self._sum = sums
        self._count = int(state["fisher_count"])  # type: ignore[call-overload]


def build_learner(name: str, config: ExperimentConfig, model: nn.Module,
                  boundaries: list[int], *, seed: int = 0) -> Learner:
    """The learner ``name`` on ``model``, with its options from ``config.learner``.

    Parameters
    ----------
    name
        One of :data:`~online_mas.experiment.registry.LEARNERS`.
    config
        The experiment (for the learner's options and the optimizer's learning rate).
    model
        The run's model.
    boundaries
        The true boundaries as 1-based step counts: the last batch of each segment, i.e.
        ``[*stream.change_points, len(stream)]``. Only the oracle learners (and ``lwf``) read them.
    seed
        Seed of a replay learner's memory (the runner passes the run's seed).

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(4, 2)
    >>> build_learner("online-mas", ExperimentConfig(), model, [10, 20]).mas.boundaries is None
    True
    >>> build_learner("sgd", ExperimentConfig(), model, [10, 20])
    Traceback (most recent call last):
    ...
    ValueError: unknown learner 'sgd'; allowed: finetune, online-mas, mas-oracle, l2, ewc, joint, er, \
der, lwf, tfcl, mas+er, mas+lwf
    """
    lr = config.optim.lr
    opts = config.learner
    if name in ("finetune", "joint"):
        return Finetune(joint=name == "joint")
    if name == "online-mas":
        o = opts.online_mas
        detector = build_detector(o.detector, o.detector_args, where="learner.online-mas")
        return MAS(name, build_mas(model, o.lam, o.mas, detector=detector), form=o.penalty, lr=lr,
                   shape=o.shape, delta=o.delta)
    if name == "mas-oracle":
        m = opts.mas_oracle
        return MAS(name, build_mas(model, m.lam, m.mas, boundaries=boundaries), form=m.penalty, lr=lr,
                   shape=m.shape, delta=m.delta)
    if name == "l2":
        return L2(model, opts.l2.lam, boundaries, form=opts.l2.penalty, lr=lr)
    if name == "ewc":
        return EWC(model, opts.ewc.lam, boundaries, form=opts.ewc.penalty, lr=lr,
                   gamma=opts.ewc.gamma)
    if name == "er":
        e = opts.er
        return Rehearsal(name, model, MEMORIES[e.buffer](e.size, seed=seed), batch=e.batch,
                         weight=e.weight)
    if name == "der":
        d = opts.der
        return Rehearsal(name, model, Reservoir(d.size, seed=seed), batch=d.batch, weight=0.0,
                         der=(d.alpha, d.beta))
    if name == "lwf":
        w = opts.lwf
        return Distillation(name, Distiller(model, temperature=w.temperature, weight=w.weight,
                                            confidence=w.confidence), boundaries=boundaries)
    if name in ("tfcl", "mas+er"):
        r = opts.tfcl if name == "tfcl" else opts.mas_er
        detector = build_detector(r.detector, r.detector_args, where=f"learner.{name}")
        inner = MAS(name, build_mas(model, r.lam, r.mas, detector=detector), form=r.penalty, lr=lr,
                    shape=r.shape, delta=r.delta)
        return Rehearsal(name, model, MEMORIES[r.buffer](r.size, seed=seed), batch=r.batch,
                         weight=r.weight, mas=inner, buffer_importance=r.buffer_importance,
                         eras=r.eras)
    if name == "mas+lwf":
        m2 = opts.mas_lwf
        detector = build_detector(m2.detector, m2.detector_args, where="learner.mas+lwf")
        inner = MAS(name, build_mas(model, m2.lam, m2.mas, detector=detector), form=m2.penalty, lr=lr,
                    shape=m2.shape, delta=m2.delta)
        return Distillation(name, Distiller(model, temperature=m2.temperature, weight=m2.weight,
                                            confidence=m2.confidence), mas=inner)
    raise ValueError(f"unknown learner {name!r}; allowed: {', '.join(LEARNERS)}")


def _check_names(saved: dict[str, Tensor], current: dict[str, Tensor], what: str) -> None:
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    shapes = sorted(f"{n}: saved {tuple(saved[n].shape)}, model {tuple(current[n].shape)}"
                    for n in set(saved) & set(current) if saved[n].shape != current[n].shape)
    if missing or unexpected or shapes:
        raise ValueError(f"{what} does not match the model: missing {missing}, unexpected "
                         f"{unexpected}, shape mismatches {shapes}")
