"""The runner's distillation learners: LwF-style, from a frozen teacher, on the current inputs.

The term ``weight * T^2 KL(teacher || student)`` (:class:`~online_mas.Distiller`) joins the
task loss once a teacher exists:

- ``lwf``: the teacher is the model at the last **true** boundary (the oracle's schedule, like
  Avalanche's LwF); it sees the boundaries, not the labels of old segments;
- ``mas+lwf``: task-free: online MAS (its penalty and detector) plus distillation from its anchor
  ``theta*``, the teacher refreshed at each consolidation the detector triggers.
"""

from __future__ import annotations

from torch import Tensor

from online_mas.distill import Distiller
from online_mas.experiment.replay_learners import Inner, check_learner_state
from online_mas.online import Event

__all__ = ["Distillation"]

_VERSION = 1


class Distillation:
    """Distillation from ``distiller``'s teacher, refreshed at true boundaries or MAS events.

    Parameters
    ----------
    name
        The learner's name in LEARNERS.
    distiller
        The :class:`~online_mas.Distiller` on the run's model.
    mas
        The MAS learner (``mas+lwf``): the teacher becomes its ``theta*`` at each of its events.
    boundaries
        Without ``mas``: refresh the teacher to the current model after these steps (``lwf``).

    Examples
    --------
    >>> import torch
    >>> from online_mas import Distiller
    >>> model = torch.nn.Linear(2, 2)
    >>> lwf = Distillation("lwf", Distiller(model), boundaries=[1])
    >>> x = torch.randn(3, 2)
    >>> lwf.extra_loss(x, None, model(x)) is None, lwf.after_step(x, 0.0).reason
    (True, 'boundary')
    >>> float(lwf.extra_loss(x, None, model(x)).detach())  # the teacher is the model itself
    0.0
    """

    iid = False

    def __init__(self, name: str, distiller: Distiller, *, mas: Inner | None = None,
                 boundaries: list[int] | None = None) -> None:
        self.name = name
        self.distiller = distiller
        self.mas = mas
        self.boundaries = frozenset(boundaries or ())
        self._step = 0

    def extra_loss(self, x: Tensor, y: Tensor, logits: Tensor) -> Tensor | None:
        """The distillation term (None before the first teacher)."""
        if self.distiller.teacher is None:
            return None
        return self.distiller.loss(x, logits)

    def after_backward(self) -> None:
        if self.mas is not None:
            self.mas.after_backward()

    def after_step(self, x: Tensor, loss: float) -> Event | None:
        self._step += 1
        if self.mas is not None:
            event = self.mas.after_step(x, loss)
            if event is not None:
                self.distiller.refresh(self.mas.mas.anchors)
            return event
        if self._step in self.boundaries:
            self.distiller.refresh()
            return Event(self._step, "boundary", {})
        return None

    def log_values(self) -> dict[str, float]:
        return self.mas.log_values() if self.mas is not None else {}

    def importance(self) -> dict[str, Tensor] | None:
        return self.mas.importance() if self.mas is not None else None

    def stored_samples(self) -> int | None:
        """No samples are stored."""
        return 0

    def state_dict(self) -> dict[str, object]:
        return {"version": _VERSION, "learner": self.name, "step": self._step,
                "distiller": self.distiller.state_dict(),
                "mas": self.mas.state_dict() if self.mas is not None else None}

    def load_state_dict(self, state: dict[str, object]) -> None:
        check_learner_state(state, self.name)
        self._step = int(state["step"])  # type: ignore[call-overload]
        self.distiller.load_state_dict(state["distiller"])  # type: ignore[arg-type]
        if self.mas is not None:
            self.mas.load_state_dict(state["mas"])  # type: ignore[arg-type]


