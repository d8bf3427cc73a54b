"""What an experiment is: frozen dataclasses, one per section of the TOML file.

The defaults *are* the embedded default experiment (the README's main job): a small MLP on
scikit-learn's digits with 5 pixel permutations (10 passes each, batch 32), trained with
fine-tuning, task-free online MAS and MAS at the true boundaries, seed 0. A config file states
only what differs from it; :mod:`online_mas.experiment.configio` reads, validates and writes it.

A TOML file has the sections ``[experiment]``, ``[stream]``, ``[model]``, ``[optim]``, ``[run]``
and one table per learner under ``[learner.<name>]``, e.g. ``[learner.online-mas]``. An experiment
of kind ``"adapt"`` (unlabeled test-time adaptation) reads ``[experiment]`` (name, seeds),
``[stream]`` (a ``corrupted-digits`` stream), ``[adapt]`` and ``[run]`` (threads, progress) only.
One of kind ``"ssl"`` (self-supervised, the labels withheld) reads every section but ``[adapt]``,
and ``[ssl]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from online_mas.bounded import PENALTY_SHAPES, check_delta
from online_mas.experiment.augment import Augment
from online_mas.experiment.device import PRECISIONS, check_device_spec
from online_mas.experiment.dist import PARALLEL
from online_mas.experiment.mas_section import MASSection
from online_mas.experiment.registry import (
    ADAPT_METHODS,
    ADAPT_PARAMS,
    DETECTORS,
    KINDS,
    LEARNERS,
    MEMORIES,
    MODELS,
    OPTIMIZERS,
    PENALTY_FORMS,
    SSL_LEARNERS,
    SSL_OBJECTIVES,
    parse_method,
)
from streams import StreamConfig

__all__ = [
    "AdaptSection",
    "DERLearnerConfig",
    "EWCConfig",
    "ExperimentConfig",
    "ExperimentSection",
    "L2Config",
    "LearnersConfig",
    "LwFLearnerConfig",
    "MASLearnerConfig",
    "MASLwFLearnerConfig",
    "MASReplayLearnerConfig",
    "ModelConfig",
    "OnlineMASLearnerConfig",
    "OptimConfig",
    "ReplayLearnerConfig",
    "RunConfig",
    "SSLSection",
    "default_stream",
]


def _choice(name: str, value: object, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _lam(lam: object) -> None:
    if not _finite(lam) or lam < 0:  # type: ignore[operator]
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")


def _shape(shape: object, delta: object) -> None:
    _choice("shape", shape, PENALTY_SHAPES)
    if shape == "huber":
        if delta is None:
            raise ValueError("shape = 'huber' needs delta, a finite number > 0 (the threshold on "
                             "|theta - theta*|)")
        check_delta(delta)
    elif delta is not None:
        raise ValueError(f"delta applies to shape = 'huber' only, got delta = {delta!r} with shape = "
                         f"{shape!r}")


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _bad_int(v: object) -> bool:
    return not isinstance(v, int) or isinstance(v, bool)


@dataclass(frozen=True)
class ExperimentSection:
    """``[experiment]``: what is compared, and how often.

    Examples
    --------
    >>> ExperimentSection(learners=("finetune", "sgd"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: learners must be a non-empty list of distinct names from (...), got ('finetune', 'sgd')
    """

    kind: str = "continual"  # "continual" (labeled), "adapt" (test-time adaptation), "ssl" (unlabeled)
    name: str = "permuted-digits"  # names the run directory and the comparison tables
    learners: tuple[str, ...] = ("finetune", "online-mas", "mas-oracle")  # continual: learners compared
    seeds: tuple[int, ...] = (0,)  # one run per seed; seeds the stream and the model's init
    detect_tolerance: int | None = None  # detection window in batches; None: half the shortest segment

    def __post_init__(self) -> None:
        _choice("kind", self.kind, KINDS)
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ValueError(f"name must be a non-empty string without '/', got {self.name!r}")
        allowed = SSL_LEARNERS if self.kind == "ssl" else LEARNERS
        if not self.learners or any(n not in allowed for n in self.learners) \
                or len(set(self.learners)) != len(self.learners):
            raise ValueError(f"learners must be a non-empty list of distinct names from {allowed}, "
                             f"got {self.learners!r}")
        if not self.seeds or any(_bad_int(s) or not 0 <= s < 2**63 for s in self.seeds) \
                or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct ints in [0, 2**63), got "
                             f"{self.seeds!r}")
        if self.detect_tolerance is not None and (_bad_int(self.detect_tolerance)
                                                  or self.detect_tolerance < 0):
            raise ValueError(f"detect_tolerance must be an int >= 0 or absent, got "
                             f"{self.detect_tolerance!r}")


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: the network every learner trains (built from the seed, so all start equal).

    ``kind = "factory"`` builds your own module: ``factory = "package.module:callable"`` is
    imported, which runs that module's code, and called with ``kwargs``, e.g.
    ``factory = "torchvision.models:resnet18"``, ``kwargs = {num_classes = 10}``. The module must
    be installed or on ``PYTHONPATH``; it must take the stream's inputs (batch first) and return
    one logit per class. ``hidden`` and ``channels`` do not apply to it.

    Examples
    --------
    >>> ModelConfig(kind="factory", factory="torchvision.models:resnet18").kwargs
    {}
    >>> ModelConfig(kind="resnet")
    Traceback (most recent call last):
    ...
    ValueError: kind must be one of ('mlp', 'cnn', 'factory'), got 'resnet'
    """

    kind: str = "mlp"  # "mlp" (flattens its input), "cnn" (conv blocks, then dense) or "factory"
    hidden: tuple[int, ...] = (100, 100)  # widths of the hidden dense layers (ReLU between)
    channels: tuple[int, ...] = (16, 32)  # cnn: channels of the blocks 3x3 conv, ReLU, 2x2 max-pool
    factory: str | None = None  # kind "factory": "package.module:callable" returning an nn.Module
    kwargs: dict[str, bool | int | float | str] | None = None  # kind "factory": its keyword arguments

    def __post_init__(self) -> None:
        _choice("kind", self.kind, MODELS)
        for name in ("hidden", "channels"):
            widths = getattr(self, name)
            if any(_bad_int(w) or w < 1 for w in widths):
                raise ValueError(f"{name} must be a list of ints >= 1, got {widths!r}")
        if self.kind == "cnn" and not self.channels:
            raise ValueError("a cnn needs at least one conv block: channels must not be empty")
        if self.kind != "factory":
            if self.factory is not None or self.kwargs is not None:
                raise ValueError(f"factory and kwargs need kind = 'factory', got kind {self.kind!r}")
            return
        if not _dotted_pair(self.factory):
            raise ValueError(f"kind 'factory' needs factory = 'package.module:callable' (e.g. "
                             f"'torchvision.models:resnet18'), got {self.factory!r}")
        if self.kwargs is None:
            object.__setattr__(self, "kwargs", {})
        elif not isinstance(self.kwargs, dict) or any(not isinstance(k, str) for k in self.kwargs):
            raise TypeError(f"kwargs must be a table of keyword arguments, got {self.kwargs!r}")


def _dotted_pair(spec: object) -> bool:
    """``"a.b:c.d"``: dotted identifiers on both sides of one colon."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        return False
    return all(part.isidentifier() for side in spec.split(":") for part in side.split("."))


@dataclass(frozen=True)
class OptimConfig:
    """``[optim]``: the optimizer of the task loss (the same for every learner).

    Examples
    --------
    >>> OptimConfig(lr=0)
    Traceback (most recent call last):
    ...
    ValueError: lr must be a finite number > 0, got 0
    """

    name: str = "sgd"  # "sgd" or "adam"
    lr: float = 0.05  # learning rate; also the step size of the proximal penalty form
    momentum: float = 0.9  # sgd momentum, in [0, 1)
    weight_decay: float = 0.0  # L2 weight decay of the optimizer, >= 0

    def __post_init__(self) -> None:
        _choice("name", self.name, OPTIMIZERS)
        if not _finite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not _finite(self.momentum) or not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1), got {self.momentum!r}")
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")


@dataclass(frozen=True)
class MASLearnerConfig:
    """``[learner.mas-oracle]``: MAS consolidated at the true boundaries (not task-free)."""

    lam: float = 1e-3  # penalty strength (raw MAS importance is large: ~1e-3 on digits)
    penalty: str = "grad"  # "grad" (added to .grad), "loss" (same gradient, via autograd), "proximal"
    shape: str = "quadratic"  # of d = theta - theta*: "quadratic" (MAS), "l1", "huber" (online_mas.bounded)
    delta: float | None = None  # shape "huber": threshold on |d| where the quadratic turns linear
    mas: MASSection = field(default_factory=MASSection)  # importance estimator, averaging, consolidation

    def __post_init__(self) -> None:
        _lam(self.lam)
        _choice("penalty", self.penalty, PENALTY_FORMS)
        _shape(self.shape, self.delta)


@dataclass(frozen=True)
class OnlineMASLearnerConfig:
    """``[learner.online-mas]``: task-free online MAS; a detector decides when to consolidate.

    Examples
    --------
    >>> OnlineMASLearnerConfig(detector="adwin")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: detector must be one of ('default', 'page-hinkley', ...), got 'adwin'
    """

    lam: float = 1e-3  # penalty strength
    penalty: str = "grad"  # "grad", "loss" or "proximal", as for mas-oracle
    shape: str = "quadratic"  # "quadratic", "l1" or "huber", as for mas-oracle
    delta: float | None = None  # shape "huber": its threshold
    detector: str = "default"  # registry.DETECTORS; "default" is om.default_detector() (entropy)
    detector_args: dict[str, float | int | str] = field(default_factory=dict)  # detector kwargs
    mas: MASSection = field(default_factory=MASSection)  # estimator, signal, anchor ("stable")

    def __post_init__(self) -> None:
        _lam(self.lam)
        _choice("penalty", self.penalty, PENALTY_FORMS)
        _shape(self.shape, self.delta)
        _choice("detector", self.detector, DETECTORS)
        if self.detector in ("default", "none") and self.detector_args:
            raise ValueError("detector_args need a named detector (e.g. detector = 'page-hinkley'); "
                             f"{self.detector!r} takes none, got {self.detector_args!r}")


@dataclass(frozen=True)
class L2Config:
    """``[learner.l2]``: uniform importance (all ones), anchored at the true boundaries."""

    lam: float = 1e-2  # penalty strength
    penalty: str = "grad"  # "grad", "loss" or "proximal"

    def __post_init__(self) -> None:
        _lam(self.lam)
        _choice("penalty", self.penalty, PENALTY_FORMS)


@dataclass(frozen=True)
class EWCConfig:
    """``[learner.ewc]``: online EWC (Schwarz et al., 2018) at the true boundaries; uses labels.

    Examples
    --------
    >>> EWCConfig(gamma=1.5)
    Traceback (most recent call last):
    ...
    ValueError: gamma must be a number in [0, 1], got 1.5
    """

    lam: float = 10.0  # penalty strength
    penalty: str = "grad"  # "grad", "loss" or "proximal"
    gamma: float = 1.0  # decay of the old Fisher at each boundary: F <- gamma F + F_segment

    def __post_init__(self) -> None:
        _lam(self.lam)
        _choice("penalty", self.penalty, PENALTY_FORMS)
        if not _finite(self.gamma) or not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma must be a number in [0, 1], got {self.gamma!r}")


def _memory(size: object, batch: object, weight: object, buffer: object | None = None) -> None:
    if _bad_int(size) or size < 1:  # type: ignore[operator]
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    if _bad_int(batch) or batch < 1:  # type: ignore[operator]
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    if not _finite(weight) or weight < 0:  # type: ignore[operator]
        raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
    if buffer is not None:
        _choice("buffer", buffer, MEMORIES)


def _distill(temperature: object, weight: object, confidence: object) -> None:
    if not _finite(temperature) or temperature <= 0:  # type: ignore[operator]
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not _finite(weight) or weight < 0:  # type: ignore[operator]
        raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
    if not _finite(confidence) or confidence < 0:  # type: ignore[operator]
        raise ValueError(f"confidence must be a finite number >= 0, got {confidence!r}")


@dataclass(frozen=True)
class ReplayLearnerConfig:
    """``[learner.er]``: experience replay from a memory of labeled samples (task-free).

    Examples
    --------
    >>> ReplayLearnerConfig(size=0)
    Traceback (most recent call last):
    ...
    ValueError: size must be an int >= 1, got 0
    """

    size: int = 200  # memory budget in stored samples
    buffer: str = "reservoir"  # "reservoir", "class-balanced" or "hard" (highest loss, CVPR 2019)
    batch: int = 32  # replayed samples per step, besides the stream's batch
    weight: float = 1.0  # weight of the replayed samples' mean loss

    def __post_init__(self) -> None:
        _memory(self.size, self.batch, self.weight, self.buffer)


@dataclass(frozen=True)
class DERLearnerConfig:
    """``[learner.der]``: DER++ (Buzzega et al., 2020): replayed logits and labels, reservoir memory.

    Examples
    --------
    >>> DERLearnerConfig(alpha=-1.0)
    Traceback (most recent call last):
    ...
    ValueError: alpha must be a finite number >= 0, got -1.0
    """

    size: int = 200  # memory budget in stored samples (with their logits)
    batch: int = 32  # samples of each of the two replay batches per step
    alpha: float = 0.1  # weight of the squared error to the stored logits
    beta: float = 0.5  # weight of the cross-entropy on the stored labels

    def __post_init__(self) -> None:
        _memory(self.size, self.batch, 1.0)
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not _finite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class LwFLearnerConfig:
    """``[learner.lwf]``: distillation from the model at the last **true** boundary (not task-free).

    Examples
    --------
    >>> LwFLearnerConfig(temperature=0.0)
    Traceback (most recent call last):
    ...
    ValueError: temperature must be a finite number > 0, got 0.0
    """

    temperature: float = 2.0  # softening temperature of both outputs
    weight: float = 1.0  # weight of the distillation term
    confidence: float = 0.0  # weight each sample by the teacher's top probability ** this (0: plain LwF)

    def __post_init__(self) -> None:
        _distill(self.temperature, self.weight, self.confidence)


@dataclass(frozen=True)
class MASReplayLearnerConfig(OnlineMASLearnerConfig):
    """``[learner.mas+er]``, ``[learner.tfcl]``: task-free online MAS plus replay from a memory.

    ``tfcl`` (Aljundi, Kelchtermans, Tuytelaars, CVPR 2019) defaults to the hard buffer, replayed
    in the loss and also estimated for importance (``buffer_importance``).

    Examples
    --------
    >>> MASReplayLearnerConfig(buffer="fifo")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: buffer must be one of ('reservoir', 'class-balanced', 'hard'), got 'fifo'
    """

    size: int = 200  # memory budget in stored samples
    buffer: str = "reservoir"  # "reservoir", "class-balanced" or "hard"
    batch: int = 32  # replayed samples per step, besides the stream's batch
    weight: float = 1.0  # weight of the replayed samples' mean loss
    buffer_importance: bool = False  # also estimate the memory's importance (label-free) with the stream's
    eras: bool = True  # hard buffer: a new era at each consolidation, the slots shared among eras

    def __post_init__(self) -> None:
        super().__post_init__()
        _memory(self.size, self.batch, self.weight, self.buffer)
        for name in ("buffer_importance", "eras"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class MASLwFLearnerConfig(OnlineMASLearnerConfig):
    """``[learner.mas+lwf]``: task-free online MAS plus distillation from its anchor ``theta*``.

    The teacher is refreshed at each consolidation the detector triggers.
    """

    temperature: float = 2.0  # softening temperature of both outputs
    weight: float = 1.0  # weight of the distillation term
    confidence: float = 0.0  # weight each sample by the teacher's top probability ** this (0: plain LwF)

    def __post_init__(self) -> None:
        super().__post_init__()
        _distill(self.temperature, self.weight, self.confidence)


def _tfcl() -> MASReplayLearnerConfig:
    return MASReplayLearnerConfig(buffer="hard", buffer_importance=True)


@dataclass(frozen=True)
class LearnersConfig:
    """``[learner.<name>]``: the options of each learner (fine-tuning and joint have none)."""

    online_mas: OnlineMASLearnerConfig = field(default_factory=OnlineMASLearnerConfig,
                                               metadata={"key": "online-mas"})  # task-free MAS
    mas_oracle: MASLearnerConfig = field(default_factory=MASLearnerConfig,
                                         metadata={"key": "mas-oracle"})  # MAS at true boundaries
    l2: L2Config = L2Config()  # uniform importance at true boundaries
    ewc: EWCConfig = EWCConfig()  # online EWC at true boundaries
    er: ReplayLearnerConfig = ReplayLearnerConfig()  # experience replay, task-free
    der: DERLearnerConfig = DERLearnerConfig()  # DER++, task-free
    lwf: LwFLearnerConfig = LwFLearnerConfig()  # distillation at true boundaries
    tfcl: MASReplayLearnerConfig = field(default_factory=_tfcl)  # online MAS + hard buffer in the loss
    mas_er: MASReplayLearnerConfig = field(default_factory=MASReplayLearnerConfig,
                                           metadata={"key": "mas+er"})  # online MAS + reservoir replay
    mas_lwf: MASLwFLearnerConfig = field(default_factory=MASLwFLearnerConfig,
                                         metadata={"key": "mas+lwf"})  # online MAS + distillation


@dataclass(frozen=True)
class RunConfig:
    """``[run]``: how a run is executed and recorded.

    Only ``device`` (rounding) and ``precision`` change the results; the device is checked
    against the machine before the run directory exists (see ``experiment.device``).

    Examples
    --------
    >>> RunConfig(threads=0)
    Traceback (most recent call last):
    ...
    ValueError: threads must be an int >= 1, got 0
    """

    out_dir: str = ""  # run directory; "" means runs/<experiment.name>-<date>-<time>
    threads: int = 1  # torch.set_num_threads per process (small batches run faster on one)
    workers: int = 1  # (learner, seed) runs executed in parallel processes
    log_every: int = 10  # steps between lines of metrics.jsonl
    eval_every: int = 100  # also evaluate every segment every N steps, for plots (0: only at changes)
    checkpoint_every: int = 500  # steps between checkpoints (0: only the final one)
    progress: bool = True  # show a tqdm bar per run (one bar over runs when workers > 1)
    plots: bool = True  # draw the PNG plots at the end of each run
    device: str = "auto"  # "auto" (CUDA if present, else CPU), "cpu", "cuda", "cuda:N" or "mps"
    precision: str = "32"  # "32", "bf16-mixed" or "16-mixed" (CUDA): autocast of the forward
    parallel: str = "ddp"  # under torchrun: "ddp" (a whole replica per rank) or "fsdp" (FSDP2, sharded)

    def __post_init__(self) -> None:
        check_device_spec(self.device)
        _choice("precision", self.precision, PRECISIONS)
        _choice("parallel", self.parallel, PARALLEL)
        for name in ("threads", "workers", "log_every"):
            value = getattr(self, name)
            if _bad_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if _bad_int(value) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")


@dataclass(frozen=True)
class AdaptSection:
    """``[adapt]``: test-time adaptation (``experiment.kind = "adapt"``), see ``online_mas.adapt``.

    Per seed a BatchNorm CNN is trained on the clean train split, then every method adapts a copy
    of it on the unlabeled stream. Methods (``"name@lr"`` overrides ``lr``): ``source`` (no
    update, running statistics), ``bn-stats`` (no update, batch statistics), ``tent``,
    ``tent+reset`` (reset on collapse), ``filter`` (confident samples only), ``tent+mas``
    (confident samples, MAS penalty at the source model, reset), ``tent+mas-nofilter``.

    Examples
    --------
    >>> AdaptSection(methods=("tent@0.05",)).methods
    ('tent@0.05',)
    >>> AdaptSection(methods=("tent-mas",))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: methods must be a non-empty list of distinct names from ...got ('tent-mas',)
    """

    methods: tuple[str, ...] = ("source", "bn-stats", "tent", "tent+mas")  # compared, same source model
    params: str = "all"  # adapted parameters: "all" or "norm" (BatchNorm affine only, Tent)
    lr: float = 1e-2  # SGD learning rate of the adaptation (unless a method says name@lr)
    momentum: float = 0.9  # SGD momentum of the adaptation, in [0, 1)
    e_max: float = 0.4  # filter, tent+mas: keep samples with entropy < e_max * ln(C)
    lam: float = 1.0  # tent+mas: MAS penalty strength
    penalty: str = "proximal"  # tent+mas: "proximal", "loss" or "grad" (AdaptConfig.penalty)
    mas_share: float = 0.25  # tent+mas: fraction of the adapted samples whose importance is estimated
    stable_samples: int = 800  # tent+mas: samples between updates of the slow anchor copy (StableAnchor)
    detector: str = "page-hinkley"  # tent+mas: registry.DETECTORS; "page-hinkley" means "default"
    period: int = 500  # detector = "periodic": steps between consolidations
    reset: bool = True  # tent+mas: reset to the anchor on collapse
    calibrate_batches: int = 20  # tent+mas: unlabeled clean batches for the first Omega
    train_epochs: int = 40  # source model: passes over the clean train split
    train_lr: float = 3e-3  # source model: Adam learning rate

    def __post_init__(self) -> None:
        if not self.methods or len(set(self.methods)) != len(self.methods) \
                or any(not _method_ok(m) for m in self.methods):
            raise ValueError(f"methods must be a non-empty list of distinct names from "
                             f"{ADAPT_METHODS}, optionally as name@lr with lr > 0, got {self.methods!r}")
        _choice("params", self.params, ADAPT_PARAMS)
        _choice("penalty", self.penalty, PENALTY_FORMS)
        _choice("detector", self.detector, DETECTORS)
        _lam(self.lam)
        for name in ("lr", "e_max", "train_lr"):
            if not _finite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        if not _finite(self.momentum) or not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1), got {self.momentum!r}")
        if not _finite(self.mas_share) or not 0 < self.mas_share <= 1:
            raise ValueError(f"mas_share must be a number in (0, 1], got {self.mas_share!r}")
        for name in ("stable_samples", "period", "calibrate_batches", "train_epochs"):
            if _bad_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.reset, bool):
            raise ValueError(f"reset must be a boolean, got {self.reset!r}")


@dataclass(frozen=True)
class SSLSection:
    """``[ssl]``: self-supervised learning on the unlabeled stream (``experiment.kind = "ssl"``).

    The encoder is ``[model]`` with a last linear layer of ``embed_dim`` outputs; the objective
    trains it with heads of its own (``experiment.ssl_learners``). At every evaluation a k-NN and
    a linear (ridge) probe are fitted per segment on its training samples and labels and scored on
    its held-out set (``experiment.probes``); nothing else reads a label.

    Examples
    --------
    >>> SSLSection(objective="byol")
    Traceback (most recent call last):
    ...
    ValueError: objective must be one of ('simsiam', 'dae'), got 'byol'
    >>> SSLSection(augment=("shift", "noise")).augmentation().names
    ('shift', 'noise')
    """

    objective: str = "simsiam"  # "simsiam" (two views) or "dae" (denoising autoencoder)
    augment: tuple[str, ...] = ("mask", "noise")  # views: of "shift", "mask", "noise" (in that order)
    noise: float = 0.1  # "noise": standard deviation of the added Gaussian noise
    mask: float = 0.2  # "mask": probability that an input element is zeroed
    shift: int = 1  # "shift": largest translation per spatial axis, in pixels (samples)
    embed_dim: int = 64  # width of the embedding (the encoder's last layer), what probes read
    proj_dim: int = 64  # width of the projector (simsiam) and of the decoder's hidden layer
    pred_dim: int = 32  # hidden width of the simsiam predictor
    knn_k: int = 10  # neighbours of the k-NN probe (cosine similarity, majority vote)
    ridge: float = 1e-2  # ridge strength of the linear probe (per sample, on standardised features)
    probe_train: int | None = None  # probes fit on at most this many training samples per segment
    lump_size: int = 200  # lump: reservoir memory of unlabeled inputs, in samples
    lump_alpha: float = 0.4  # lump: mixup weight lam ~ Beta(alpha, alpha)

    def __post_init__(self) -> None:
        _choice("objective", self.objective, SSL_OBJECTIVES)
        self.augmentation()  # checks augment, noise, mask, shift
        for name in ("embed_dim", "proj_dim", "pred_dim", "knn_k", "lump_size"):
            if _bad_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.probe_train is not None and (_bad_int(self.probe_train) or self.probe_train < 1):
            raise ValueError(f"probe_train must be an int >= 1 or absent, got {self.probe_train!r}")
        if not _finite(self.ridge) or self.ridge < 0:
            raise ValueError(f"ridge must be a finite number >= 0, got {self.ridge!r}")
        if not _finite(self.lump_alpha) or self.lump_alpha <= 0:
            raise ValueError(f"lump_alpha must be a finite number > 0, got {self.lump_alpha!r}")

    def augmentation(self) -> Augment:
        """The views' :class:`~online_mas.experiment.augment.Augment`."""
        return Augment(tuple(self.augment), noise=self.noise, mask=self.mask, shift=self.shift)


def _method_ok(spec: object) -> bool:
    try:
        parse_method(spec)
    except ValueError:
        return False
    return True


def default_stream() -> StreamConfig:
    """The default ``[stream]``: permuted digits, 5 segments, 10 passes each, batch 32.

    Examples
    --------
    >>> s = default_stream()
    >>> s.name, s.n_segments, s.passes, s.batch_size
    ('permuted-digits', 5, 10.0, 32)
    """
    return StreamConfig("permuted-digits", n_segments=5, passes=10.0, batch_size=32)


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment; ``ExperimentConfig()`` is the embedded default experiment.

    ``[stream]`` takes the fields of :class:`streams.StreamConfig` except ``seed`` (one stream per
    entry of ``experiment.seeds``), ``labels`` (the task loss needs them; only the learners that
    use labels read them for anything else) and ``flatten`` (the model flattens).

    Examples
    --------
    >>> cfg = ExperimentConfig()
    >>> cfg.experiment.learners, cfg.stream.name, cfg.model.hidden, cfg.learner.online_mas.lam
    (('finetune', 'online-mas', 'mas-oracle'), 'permuted-digits', (100, 100), 0.001)
    """

    experiment: ExperimentSection = ExperimentSection()  # learners, seeds, name
    stream: StreamConfig = field(default_factory=default_stream)  # the data stream
    model: ModelConfig = ModelConfig()  # the network
    optim: OptimConfig = OptimConfig()  # the optimizer
    learner: LearnersConfig = field(default_factory=LearnersConfig)  # per-learner options
    run: RunConfig = RunConfig()  # execution and recording
    adapt: AdaptSection = AdaptSection()  # kind "adapt": methods and their settings
    ssl: SSLSection = SSLSection()  # kind "ssl": objective, augmentations, probes, LUMP

    def __post_init__(self) -> None:
        if self.experiment.kind == "adapt" and self.stream.name != "corrupted-digits":
            raise ValueError(f"experiment.kind = 'adapt' needs stream.name = 'corrupted-digits' (the "
                             f"source model trains on clean digits), got {self.stream.name!r}")
        if self.stream.seed != 0 or not self.stream.labels or self.stream.flatten:
            raise ValueError("stream.seed, stream.labels and stream.flatten are set by the runner "
                             "(seeds come from experiment.seeds); leave them out of [stream]")
