"""Label-free distillation from a frozen snapshot of the model (Learning without Forgetting).

The teacher is a frozen copy of the model at an anchor, e.g. the ``theta*`` that
:class:`~online_mas.OnlineMAS` keeps; on the current inputs the student is pulled towards the
teacher's softened outputs. It needs no labels and no boundaries, so it composes with a detector:
refresh the teacher at each consolidation :class:`~online_mas.Event`::

    loss = F.cross_entropy(out, y) + distiller.loss(x, out) + mas.penalty()
    ...
    if mas.observe(x) is not None:
        distiller.refresh(mas.anchors)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Distiller", "distillation_loss"]

_VERSION = 1


def _check_temperature(temperature: object) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _check_confidence(confidence: object) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) \
            or not math.isfinite(confidence) or confidence < 0:
        raise ValueError(f"confidence must be a finite number >= 0, got {confidence!r}")
    return float(confidence)


def distillation_loss(student: Tensor, teacher: Tensor, *, temperature: float = 2.0,
                      confidence: float = 0.0) -> Tensor:
    """``T^2 * mean_n c_n KL(softmax(teacher_n / T) || softmax(student_n / T))``.

    The ``T^2`` keeps the gradient's scale independent of ``T`` (Hinton et al., 2015); the
    teacher's logits are treated as constants. Each sample's term is weighted by the teacher's
    confidence ``c_n = (max_k softmax(teacher_n)_k) ** confidence`` (at temperature 1): with
    ``confidence = 0`` every weight is 1 (plain LwF); a larger exponent keeps the teacher's
    function where it is sure and lets go where it is not, e.g. on inputs of a new domain it has
    never seen, whose outputs it would otherwise pin to its guesses. Still label-free.

    Parameters
    ----------
    student, teacher
        Logits of shape ``(batch, classes)``.
    temperature
        Softening temperature ``T > 0``.
    confidence
        Exponent ``>= 0`` of the teacher's top probability in each sample's weight.

    References
    ----------
    Li and Hoiem. Learning without Forgetting. ECCV 2016 (TPAMI 2017).

    Examples
    --------
    >>> import torch
    >>> s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    >>> round(float(distillation_loss(s, t, temperature=1.0)), 4)  # p log(2p) + q log(2q)
    0.3278
    >>> float(distillation_loss(t, t))
    0.0
    >>> c = float(torch.softmax(t, 1).max())  # the teacher's top probability, 0.8808
    >>> round(float(distillation_loss(s, t, temperature=1.0, confidence=2.0)), 4) == round(c**2 * 0.3278, 4)
    True
    """
    temperature = _check_temperature(temperature)
    confidence = _check_confidence(confidence)
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(f"student and teacher logits must have the same shape (batch, classes), got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    log_p = F.log_softmax(teacher.detach().float() / temperature, dim=1)
    log_q = F.log_softmax(student.float() / temperature, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(1)
    if confidence:
        top = F.softmax(teacher.detach().float(), dim=1).max(dim=1).values
        kl = kl * top.pow(confidence)
    return kl.mean() * temperature**2


class Distiller:
    """A frozen teacher snapshot and the weighted distillation term it gives.

    Parameters
    ----------
    model
        The user's model (the student). The teacher is a deep copy of it, made at the first
        :meth:`refresh`, in eval mode, with its forward hooks removed.
    temperature
        Softening temperature ``T > 0``.
    weight
        Weight of the term, ``>= 0``.
    confidence
        Exponent of the teacher's top probability weighting each sample (0: plain LwF; see
        :func:`distillation_loss`).

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(3, 2)
    >>> d = Distiller(model, temperature=2.0, weight=0.5)
    >>> x = torch.randn(4, 3)
    >>> float(d.loss(x, model(x)).detach())  # no teacher yet
    0.0
    >>> d.refresh()  # the teacher is the model now
    >>> float(d.loss(x, model(x)).detach())
    0.0
    >>> with torch.no_grad():
    ...     _ = model.bias.add_(torch.tensor([1.0, -1.0]))
    >>> round(float(d.loss(x, model(x)).detach()), 4)
    0.2392
    """

    def __init__(self, model: nn.Module, *, temperature: float = 2.0, weight: float = 1.0,
                 confidence: float = 0.0) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) \
                or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        self.model = model
        self.temperature = _check_temperature(temperature)
        self.weight = float(weight)
        self.confidence = _check_confidence(confidence)
        self._teacher: nn.Module | None = None

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen snapshot (None before the first :meth:`refresh`)."""
        return self._teacher

    def refresh(self, anchor: Mapping[str, Tensor] | None = None) -> None:
        """Make the teacher the model at ``anchor`` (parameter name -> tensor), else as it is now.

        Parameters absent from ``anchor`` (e.g. frozen ones) take the model's current values.
        """
        named = dict(self.model.named_parameters())
        if anchor is not None:
            unknown = sorted(set(anchor) - set(named))
            shapes = sorted(f"{n}: anchor {tuple(anchor[n].shape)}, model {tuple(named[n].shape)}"
                            for n in set(anchor) & set(named) if anchor[n].shape != named[n].shape)
            if unknown or shapes:
                raise ValueError(f"anchor does not match the model: unknown {unknown}, shape mismatches "
                                 f"{shapes}")
        if self._teacher is None:
            self._teacher = _frozen_copy(self.model)
        with torch.no_grad():
            teacher = dict(self._teacher.named_parameters())
            for name, p in named.items():
                src = anchor[name] if anchor is not None and name in anchor else p
                teacher[name].copy_(src)
            for (_, b), (_, tb) in zip(self.model.named_buffers(), self._teacher.named_buffers(),
                                       strict=True):
                tb.copy_(b)

    def loss(self, x: Tensor, student: Tensor) -> Tensor:
        """``weight * distillation_loss(student, teacher(x))``; zero before the first refresh."""
        if self._teacher is None or self.weight == 0:
            return torch.zeros((), device=student.device)
        with torch.no_grad():
            target = self._teacher(x)
        return self.weight * distillation_loss(student, target, temperature=self.temperature,
                                               confidence=self.confidence)

    def state_dict(self) -> dict[str, object]:
        """The teacher's tensors by name (or None), temperature, weight, confidence, ``"version"``."""
        teacher = None if self._teacher is None else {
            k: v.detach().clone() for k, v in self._teacher.state_dict().items()}
        return {"version": _VERSION, "temperature": self.temperature, "weight": self.weight,
                "confidence": self.confidence, "teacher": teacher}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore :meth:`state_dict` (the teacher's names and shapes must fit the model)."""
        if state.get("version") != _VERSION:
            raise ValueError(f"Distiller state must have version {_VERSION}, got {state.get('version')!r}")
        teacher = state.get("teacher")
        confidence = _check_confidence(state.get("confidence", 0.0))  # absent: saved before it existed
        if teacher is None:
            self._teacher = None
            self.confidence = confidence
            return
        if not isinstance(teacher, Mapping):
            raise TypeError(f"Distiller state entry 'teacher' must be a dict of tensors or None, got "
                            f"{type(teacher).__name__}")
        copy_ = _frozen_copy(self.model)
        mine = copy_.state_dict()
        missing, unexpected = sorted(set(mine) - set(teacher)), sorted(set(teacher) - set(mine))
        shapes = sorted(f"{n}: saved {tuple(teacher[n].shape)}, model {tuple(mine[n].shape)}"
                        for n in set(mine) & set(teacher) if teacher[n].shape != mine[n].shape)
        if missing or unexpected or shapes:
            raise ValueError(f"Distiller teacher does not match the model: missing {missing}, unexpected "
                             f"{unexpected}, shape mismatches {shapes}")
        copy_.load_state_dict(dict(teacher))
        self._teacher = copy_
        self.temperature = _check_temperature(state.get("temperature"))
        self.weight = float(state.get("weight"))  # type: ignore[arg-type]
        self.confidence = confidence


def _frozen_copy(model: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(model)
    for m in teacher.modules():  # the user's hooks (e.g. OnlineMAS's) must not see the teacher
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
