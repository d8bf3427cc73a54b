"""Every name a TOML config may use, and what it builds.

:mod:`~online_mas.experiment.config` validates against these names; the learners and the adapt
kind build from them. The runner's :class:`~online_mas.OnlineMAS` objects are made here only, from
a :class:`~online_mas.experiment.mas_section.MASSection` (:func:`build_mas`, :func:`adapt_mas_config`).

Detector names are shared by ``[learner.online-mas]`` and ``[adapt]``: ``"default"`` is
:func:`~online_mas.default_detector`, ``"never"`` a detector that never fires (its signal is still
computed), ``"none"`` no detector at all. In ``[adapt]``, which has no ``detector_args``,
``"page-hinkley"`` has always meant the default detector and still does
(:data:`ADAPT_DETECTOR_ALIASES`), now a :class:`~online_mas.detectors.Windowed`
:class:`~online_mas.detectors.ScaledCUSUM`; ``"scaled-cusum"`` is that CUSUM fed one value per call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

import torch
from torch import nn

from online_mas.adapt import PARAMS as ADAPT_PARAMS
from online_mas.adapt import PENALTY_FORMS
from online_mas.detectors import CUSUM, NeverFires, PageHinkley, Periodic, Plateau, ScaledCUSUM
from online_mas.estimators import OutputFn
from online_mas.experiment.mas_section import MASSection
from online_mas.online import OnlineMAS, default_detector
from online_mas.rehearsal import ClassBalanced, HardReplay, Reservoir

__all__ = [
    "ADAPT_DETECTOR_ALIASES",
    "ADAPT_METHODS",
    "ADAPT_PARAMS",
    "DETECTING",
    "DETECTORS",
    "KINDS",
    "LEARNERS",
    "MEMORIES",
    "MODELS",
    "OPTIMIZERS",
    "PENALTY_FORMS",
    "SSL_LEARNERS",
    "SSL_OBJECTIVES",
    "adapt_detector",
    "adapt_mas_config",
    "build_detector",
    "build_mas",
    "parse_method",
]

KINDS = ("continual", "adapt", "ssl")  # [experiment] kind
LEARNERS = ("finetune", "online-mas", "mas-oracle", "l2", "ewc", "joint",  # built by learners.py
            "er", "der", "lwf", "tfcl", "mas+er", "mas+lwf")
DETECTING = ("online-mas", "tfcl", "mas+er", "mas+lwf")  # task-free: their detections are scored
SSL_LEARNERS = ("finetune", "online-mas", "mas-oracle", "lump", "joint")  # kind "ssl": ssl_learners.py
SSL_OBJECTIVES = ("simsiam", "dae")  # [ssl] objective
MODELS = ("mlp", "cnn", "factory")  # [model] kind, built by models.py
ADAPT_METHODS = ("source", "bn-stats", "tent", "tent+reset", "filter", "tent+mas", "tent+mas-nofilter")


def _sgd(params: Iterable[nn.Parameter], *, lr: float, momentum: float,
         weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _adam(params: Iterable[nn.Parameter], *, lr: float, momentum: float,
          weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)  # no momentum term


def _no_detector() -> None:
    return None


OPTIMIZERS: Mapping[str, Callable[..., torch.optim.Optimizer]] = MappingProxyType(
    {"sgd": _sgd, "adam": _adam})
"""``[optim] name`` -> ``f(params, *, lr, momentum, weight_decay)``."""

DETECTORS: Mapping[str, Callable[..., object]] = MappingProxyType({
    "default": default_detector, "page-hinkley": PageHinkley, "cusum": CUSUM, "plateau": Plateau,
    "periodic": Periodic, "never": NeverFires, "scaled-cusum": ScaledCUSUM, "none": _no_detector})
"""Detector name -> constructor of its keyword arguments (``"none"`` builds ``None``)."""

MEMORIES: Mapping[str, type[Reservoir]] = MappingProxyType({
    "reservoir": Reservoir, "class-balanced": ClassBalanced, "hard": HardReplay})
"""``buffer`` of the replay learners -> the rehearsal memory (:mod:`online_mas.rehearsal`)."""

ADAPT_DETECTOR_ALIASES: Mapping[str, str] = MappingProxyType({"page-hinkley": "default"})
"""``[adapt] detector`` names that mean another entry of :data:`DETECTORS`."""


def build_detector(name: str, args: Mapping[str, object] | None = None, *,
                   where: str = "") -> object:
    """The detector ``name`` of :data:`DETECTORS`, built with the keyword arguments ``args``.

    Parameters
    ----------
    name
        A key of :data:`DETECTORS`.
    args
        Its hyperparameters; ``"default"`` and ``"none"`` take none.
    where
        The config section named in the error messages, e.g. ``"learner.online-mas"``.

    Examples
    --------
    >>> build_detector("periodic", {"every": 3}).every, build_detector("none") is None
    (3, True)
    >>> build_detector("cusum", {"period": 3})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: detector_args {'period': 3} do not fit detector 'cusum': ...
    """
    prefix = f"{where}." if where else ""
    if name not in DETECTORS:
        raise ValueError(f"{prefix}detector must be one of {tuple(DETECTORS)}, got {name!r}")
    args = dict(args or {})
    try:
        return DETECTORS[name](**args)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{prefix}detector_args {args!r} do not fit detector {name!r}: {err}") from None


def adapt_detector(name: str, *, period: int) -> object:
    """The detector of ``[adapt]``: ``name`` through :data:`ADAPT_DETECTOR_ALIASES`.

    ``[adapt]`` has no ``detector_args``: ``"periodic"`` fires every ``period`` steps, the other
    detectors take their defaults.

    Examples
    --------
    >>> type(adapt_detector("page-hinkley", period=5)).__name__, adapt_detector("none", period=5)
    ('Combined', None)
    >>> repr(adapt_detector("page-hinkley", period=5)) == repr(default_detector())
    True
    """
    name = ADAPT_DETECTOR_ALIASES.get(name, name)
    return build_detector(name, {"every": period} if name == "periodic" else {},
                          where="adapt")


def adapt_mas_config(*, share: float, stable_samples: int) -> MASSection:
    """The MAS settings of the adapt kind's ``tent+mas``: importance on ``share`` of the adapted
    samples, a ``"stable"`` anchor moving every ``stable_samples`` samples.

    Examples
    --------
    >>> c = adapt_mas_config(share=0.25, stable_samples=800)
    >>> c.anchor, c.share, c.stable_samples
    ('stable', 0.25, 800)
    """
    return MASSection(anchor="stable", stable_samples=stable_samples, share=share)


def build_mas(model: nn.Module, lam: float, config: MASSection, *, detector: object = None,
              boundaries: list[int] | None = None, output: OutputFn | None = None) -> OnlineMAS:
    """The runner's one way to make an :class:`~online_mas.OnlineMAS`.

    Parameters
    ----------
    model, lam
        As for :class:`~online_mas.OnlineMAS`.
    config
        The ``[learner.<name>.mas]`` table, built into OnlineMAS's config and policy objects.
    detector
        A built detector (:func:`build_detector`), or ``None``.
    boundaries
        Oracle mode: consolidate at these steps (then ``detector`` must be ``None``).
    output
        As for :class:`~online_mas.OnlineMAS`: the tensor whose norm MAS uses (default: the
        model's output); the ``"ssl"`` kind passes the encoder's embedding.

    Examples
    --------
    >>> mas = build_mas(nn.Linear(2, 1), 0.5, MASSection(), boundaries=[3])
    >>> sorted(mas.boundaries), mas.detector
    ([3], None)
    """
    if boundaries is not None:
        detector = None
    return OnlineMAS(model, lam, config=config.config(), detector=detector, boundaries=boundaries,
                     output=output, **config.policies())  # type: ignore[arg-type]


def parse_method(spec: object) -> tuple[str, float | None]:
    """Split an ``[adapt]`` method ``"name"`` or ``"name@lr"`` into its name and learning rate.

    Examples
    --------
    >>> parse_method("tent@0.05"), parse_method("source")
    (('tent', 0.05), ('source', None))
    >>> parse_method("tent@-1")
    Traceback (most recent call last):
    ...
    ValueError: an adapt method is one of ('source', 'bn-stats', 'tent', 'tent+reset', 'filter', \
'tent+mas', 'tent+mas-nofilter'), optionally as name@lr with lr > 0, got 'tent@-1'
    """
    bad = ValueError(f"an adapt method is one of {ADAPT_METHODS}, optionally as name@lr with lr > 0, "
                     f"got {spec!r}")
    if not isinstance(spec, str):
        raise bad
    name, at, text = spec.partition("@")
    if name not in ADAPT_METHODS:
        raise bad
    if not at:
        return name, None
    try:
        lr = float(text)
    except ValueError:
        raise bad from None
    if not math.isfinite(lr) or lr <= 0:
        raise bad
    return name, lr
