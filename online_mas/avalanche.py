"""An Avalanche plugin with task-free online MAS inside (the optional extra ``online-mas[avalanche]``).

:class:`OnlineMASPlugin` brings :class:`~online_mas.OnlineMAS` into any Avalanche 0.6 strategy, also
on online streams (``split_online_stream``): the penalty joins each minibatch's loss (or its
gradient), and every update is followed by ``observe(strategy.mb_x)``, so the importance is
estimated from the training inputs alone and the detector decides when to consolidate. No
experience boundaries are needed; ``boundaries="experience"`` consolidates at the end of each
experience instead, as Avalanche's own ``MASPlugin`` does.
"""

from __future__ import annotations

from typing import Any

from avalanche.benchmarks.scenarios.online import OnlineCLExperience
from avalanche.core import SupervisedPlugin
from avalanche.models import MultiTaskModule

from online_mas.checks import check_choice
from online_mas.consolidate import ConsolidationRule, Consolidator
from online_mas.online import DEFAULT, Event, MASConfig, OnlineMAS
from online_mas.penalty import check_lam
from online_mas.trigger import Trigger

__all__ = ["BOUNDARIES", "PENALTIES", "OnlineMASPlugin"]

PENALTIES = ("loss", "grad")  # mas.penalty() added to strategy.loss; mas.penalty_grad_() after backward
BOUNDARIES = (None, "experience")  # None: the detector decides; "experience": at each experience's end


class OnlineMASPlugin(SupervisedPlugin):
    """Task-free online MAS in an Avalanche strategy.

    Parameters
    ----------
    lam
        Penalty strength of ``lam * sum_k Omega_k (theta_k - theta*_k)^2``, a finite number >= 0.
    config
        :class:`~online_mas.MASConfig` of the importance estimate.
    detector
        River's contract (``update``, ``drift_detected``); default
        :func:`~online_mas.default_detector`; None: no consolidation but ``boundaries``.
    signal
        What the detector watches (:data:`~online_mas.SIGNALS`; ``"loss"``: the minibatch loss).
    rule
        How a segment's importance joins ``omega``: ``"sum"`` (the paper), ``"mean"``, ``"max"``,
        ``"ema"`` (Avalanche's, ``alpha=0.5``) or a rule object.
    boundaries
        None: task-free. ``"experience"``: consolidate after each experience; an online
        sub-experience needs ``split_online_stream(..., access_task_boundaries=True)`` and counts
        its original experience.
    penalty
        ``"loss"``: add ``mas.penalty()`` to ``strategy.loss`` before backward; ``"grad"``: add its
        gradient to ``.grad`` after backward (no autograd graph).

    Examples
    --------
    >>> plugin = OnlineMASPlugin(lam=10.0)
    >>> plugin.mas is None  # built on the strategy's model when training starts
    True
    >>> OnlineMASPlugin(penalty="proximal")
    Traceback (most recent call last):
    ...
    ValueError: penalty must be one of ('loss', 'grad'), got 'proximal'

    References
    ----------
    Aljundi, Babiloni, Elhoseiny, Rohrbach, Tuytelaars. Memory Aware Synapses. ECCV 2018
    (arXiv:1711.09601). Aljundi, Kelchtermans, Tuytelaars. Task-Free Continual Learning. CVPR 2019.
    """

    def __init__(
        self,
        lam: float = 1.0,
        *,
        config: MASConfig | None = None,
        detector: object | None = DEFAULT,
        signal: object = "entropy",
        rule: str | ConsolidationRule = "sum",
        boundaries: str | None = None,
        penalty: str = "loss",
    ) -> None:
        super().__init__()
        check_lam(lam)
        check_choice("penalty", penalty, PENALTIES)
        check_choice("boundaries", boundaries, BOUNDARIES)
        if config is not None and not isinstance(config, MASConfig):
            raise TypeError(f"config must be a MASConfig or None, got {type(config)!r}")
        if boundaries is not None:
            if detector is not DEFAULT and detector is not None:
                raise ValueError(f"pass either boundaries={boundaries!r} or detector=, not both")
            detector = None
        Trigger(None if detector is DEFAULT else detector, signal)  # TypeError/ValueError on entry
        Consolidator(rule)
        self.lam = lam
        self.config = config
        self.detector = detector
        self.signal = signal
        self.rule = rule
        self.boundaries = boundaries
        self.penalty = penalty
        self.mas: OnlineMAS | None = None  # built on the strategy's model by before_training
        self._origin: object = None  # the experience being trained on (boundaries="experience")
        self._last_step = 0  # mas.step at the last consolidation

    @property
    def events(self) -> list[Event]:
        """The consolidations so far (``mas.events``)."""
        return self.mas.events if self.mas is not None else []

    # ------------------------------------------------------------------ Avalanche's hooks

    def before_training(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        model = strategy.model
        if isinstance(model, MultiTaskModule):
            raise TypeError("OnlineMASPlugin estimates importance with model(x): a MultiTaskModule "
                            f"({type(model).__name__}) needs task labels, which it does not take")
        if self.mas is None:
            self.mas = OnlineMAS(model, self.lam, config=self.config, detector=self.detector,
                                 signal=self.signal, rule=self.rule)
        elif self.mas.model is not model:
            raise ValueError(f"this OnlineMASPlugin follows a {type(self.mas.model).__name__} already; "
                             f"the strategy now trains another model ({type(model).__name__}): use a new "
                             "plugin for it")

    def before_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if self.boundaries != "experience":
            return
        origin = _origin(strategy.experience)
        if self._origin is not None and origin is not self._origin:
            self._boundary()  # the last sub-experience of the one before was not flagged as such
        self._origin = origin

    def before_backward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if self.penalty == "loss":
            strategy.loss = strategy.loss + self._mas.penalty().to(strategy.loss.device)

    def after_backward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if self.penalty == "grad":
            self._mas.penalty_grad_()

    def after_update(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        mas = self._mas
        loss = strategy.loss.detach() if mas.trigger.by_loss else None
        if mas.observe(strategy.mb_x, loss=loss) is not None:
            self._last_step = mas.step

    def after_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        exp = strategy.experience
        if self.boundaries == "experience" and (not isinstance(exp, OnlineCLExperience)
                                                or exp.is_last_subexp):
            self._boundary()

    # ------------------------------------------------------------------ internals

    @property
    def _mas(self) -> OnlineMAS:
        if self.mas is None:
            raise RuntimeError("OnlineMASPlugin is used outside strategy.train(): before_training builds it")
        return self.mas

    def _boundary(self) -> None:
        """Consolidate at a known boundary if anything was observed since the last one."""
        mas = self._mas
        if mas.step > self._last_step:
            mas.consolidate(reason="boundary")
            self._last_step = mas.step


def _origin(exp: Any) -> object:
    """The experience a boundary is counted on: an online sub-experience's original one."""
    if not isinstance(exp, OnlineCLExperience):
        return exp
    if not exp.access_task_boundaries:
        raise ValueError(
            "boundaries='experience' on an online stream needs the original experiences' boundaries: "
            "split_online_stream(..., access_task_boundaries=True), or boundaries=None (task-free)")
    return exp.origin_experience
