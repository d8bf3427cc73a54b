"""The runner's rehearsal learners: a memory of labeled samples replayed in the training loss.

Each step the run loop's task loss on the stream's batch gets an extra term from
:meth:`Rehearsal.extra_loss`: a replay batch drawn from the memory, forwarded through the model
(so a step trains on the stream's batch and ``batch`` replayed samples); after the optimizer's
step the memory is offered the stream's batch with its per-sample losses (from the training
forward, before the step). None of them sees the boundaries.

- ``er``: experience replay, ``loss + weight * CE(replayed)``, reservoir memory by default;
- ``der``: DER++ (Buzzega et al., NeurIPS 2020), ``loss + alpha * MSE(logits, stored logits) +
  beta * CE(second replay batch)``, the logits stored at insertion;
- ``mas+er``: task-free online MAS (its penalty and detector) plus ``er``'s term;
- ``tfcl``: the task-free paper (Aljundi, Kelchtermans, Tuytelaars, CVPR 2019): online MAS plus
  the hard buffer (highest recent loss) in the loss; whenever the stream's importance is estimated
  (``mas.share``) the buffer's inputs also join the running importance (label-free,
  :meth:`~online_mas.OnlineMAS.accumulate`). Each consolidation starts a new era of the buffer
  (``eras``), whose slots are shared among eras.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from online_mas.online import Event, OnlineMAS
from online_mas.rehearsal import HardReplay, Reservoir

__all__ = ["Inner", "Rehearsal"]

_VERSION = 1


def check_learner_state(state: object, name: str) -> None:
    """ValueError unless ``state`` is a learner state of this version saved by learner ``name``."""
    if not isinstance(state, dict) or state.get("version") != _VERSION:
        raise ValueError(f"learner state must be a dict with version {_VERSION}, got "
                         f"{state.get('version') if isinstance(state, dict) else type(state)!r}")
    if state.get("learner") != name:
        raise ValueError(f"learner state was saved by {state.get('learner')!r}, not by {name!r}")


class Inner(Protocol):
    """The MAS learner a rehearsal or distillation learner adds its term to."""

    mas: OnlineMAS

    def after_backward(self) -> None: ...

    def after_step(self, x: Tensor, loss: float) -> Event | None: ...

    def log_values(self) -> dict[str, float]: ...

    def importance(self) -> dict[str, Tensor] | None: ...

    def state_dict(self) -> dict[str, object]: ...

    def load_state_dict(self, state: dict[str, object]) -> None: ...


class Rehearsal:
    """Replay from ``memory`` in the loss, optionally on top of a MAS learner.

    Parameters
    ----------
    name
        The learner's name in LEARNERS.
    model
        The run's model (the replay batch is forwarded through it).
    memory
        A :class:`~online_mas.Reservoir` (or subclass), empty.
    batch
        Replayed samples per step.
    weight
        Weight of the replayed samples' mean cross-entropy (``er``, ``mas+er``, ``tfcl``).
    mas
        The :class:`~online_mas.experiment.learners.MAS` learner (:class:`Inner`) whose penalty and
        detector join
        (``mas+er``, ``tfcl``), or None.
    der
        ``(alpha, beta)`` of DER++ (then the memory stores logits), or None.
    buffer_importance
        Also estimate importance on the memory's inputs on the steps that estimate the stream's
        (``OnlineMAS.estimates``, by ``mas.share``; ``tfcl``).
    eras
        With ``mas`` and a :class:`~online_mas.HardReplay` memory: start a new era of the memory at
        each of the MAS learner's consolidations, so the hard buffer's slots are shared among the
        detected segments instead of all going to the current one (whose losses are highest).

    Examples
    --------
    >>> import torch
    >>> from online_mas import Reservoir
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(2, 2)
    >>> er = Rehearsal("er", model, Reservoir(4), batch=2, weight=1.0)
    >>> x, y = torch.randn(3, 2), torch.tensor([0, 1, 1])
    >>> er.extra_loss(x, y, model(x)) is None  # nothing stored yet
    True
    >>> _ = er.after_step(x, 0.0)
    >>> er.stored_samples(), er.extra_loss(x, y, model(x)).shape
    (3, torch.Size([]))
    """

    iid = False

    def __init__(self, name: str, model: nn.Module, memory: Reservoir, *, batch: int, weight: float,
                 mas: Inner | None = None, der: tuple[float, float] | None = None,
                 buffer_importance: bool = False, eras: bool = False) -> None:
        self.name = name
        self.model = model
        self.memory = memory
        self.batch = batch
        self.weight = weight
        self.mas = mas
        self.der = der
        self.buffer_importance = buffer_importance
        self.eras = eras and isinstance(memory, HardReplay)
        self._step = 0
        self._pending: tuple[Tensor, Tensor, Tensor, Tensor | None] | None = None
        self._replayed: Tensor | None = None  # per-sample losses of this step's replay batch

    # -- the run loop's calls --------------------------------------------------------------

    def extra_loss(self, x: Tensor, y: Tensor, logits: Tensor) -> Tensor | None:
        """The replay term of this step's loss (None while the memory is empty)."""
        with torch.no_grad():
            losses = F.cross_entropy(logits.detach(), y, reduction="none")
        self._pending = (x, y, losses, logits.detach() if self.der is not None else None)
        self._replayed = None
        replay = self.memory.sample(self.batch)
        if replay is None:
            return None
        out = self.model(replay.x)
        if self.der is None:
            per = F.cross_entropy(out, replay.y, reduction="none")
            self._replayed = per.detach()
            return self.weight * per.mean()
        alpha, beta = self.der
        if replay.logits is None:  # a DER memory stores logits with every sample
            raise RuntimeError("internal error: a DER replay batch came without logits")
        term = alpha * F.mse_loss(out, replay.logits)
        second = self.memory.sample(self.batch)
        if second is not None and beta:
            term = term + beta * F.cross_entropy(self.model(second.x), second.y)
        return term

    def after_backward(self) -> None:
        if self.mas is not None:
            self.mas.after_backward()

    def after_step(self, x: Tensor, loss: float) -> Event | None:
        self._step += 1
        if self.buffer_importance and self.mas is not None and self.memory.x is not None \
                and self.mas.mas.estimates(len(x)) > 0:
            self.mas.mas.accumulate(self.memory.x)
        event = self.mas.after_step(x, loss) if self.mas is not None else None
        if event is not None and self.eras and isinstance(self.memory, HardReplay):
            self.memory.new_era()
        if self._pending is not None:  # not after a skipped (non-finite) batch
            px, py, losses, logits = self._pending
            self.memory.update(px, py, losses, logits=logits,
                               replay_losses=self._replayed if self.der is None else None)
        self._pending = self._replayed = None
        return event

    def log_values(self) -> dict[str, float]:
        out = self.mas.log_values() if self.mas is not None else {}
        return {**out, "stored": float(len(self.memory))}

    def importance(self) -> dict[str, Tensor] | None:
        return self.mas.importance() if self.mas is not None else None

    def stored_samples(self) -> int | None:
        """Samples held in the memory now."""
        return len(self.memory)

    def state_dict(self) -> dict[str, object]:
        return {"version": _VERSION, "learner": self.name, "step": self._step,
                "memory": self.memory.state_dict(),
                "mas": self.mas.state_dict() if self.mas is not None else None}

    def load_state_dict(self, state: dict[str, object]) -> None:
        check_learner_state(state, self.name)
        self._step = int(state["step"])  # type: ignore[call-overload]
        self.memory.load_state_dict(state["memory"])  # type: ignore[arg-type]
        if self.mas is not None:
            self.mas.load_state_dict(state["mas"])  # type: ignore[arg-type]
