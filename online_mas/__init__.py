"""online-mas: online, label-free Memory Aware Synapses for task-free continual learning.

Aljundi et al., Memory Aware Synapses, ECCV 2018 (arXiv:1711.09601); Aljundi, Kelchtermans,
Tuytelaars, Task-Free Continual Learning, CVPR 2019.
"""

from __future__ import annotations

from online_mas import adapt, checkpoint, consolidate, distributed, estimators, metrics, sharded, signals
from online_mas.accumulate import RunningImportance
from online_mas.adapt import (
    AdaptConfig,
    Adapter,
    AdaptStep,
    collapse_stats,
    configure_model,
    entropy,
    entropy_loss,
    norm_parameters,
    norm_statistics,
)
from online_mas.bounded import (
    PENALTY_SHAPES,
    huber_grad_,
    huber_loss,
    huber_proximal_,
    l1_grad_,
    l1_loss,
    l1_proximal_,
)
from online_mas.buffer import HardBuffer
from online_mas.consolidate import CurrentAnchor, StableAnchor, combine
from online_mas.detectors import (
    CUSUM,
    Combined,
    Detector,
    NeverFires,
    PageHinkley,
    Periodic,
    Plateau,
    ScaledCUSUM,
    Windowed,
    detector_state_dict,
    load_detector_state,
)
from online_mas.distill import Distiller, distillation_loss
from online_mas.estimators import (
    METHODS,
    BatchImportance,
    NonFiniteError,
    OutputFn,
    estimate,
    importance,
    plan,
)
from online_mas.metrics import (
    AnytimeAccuracy,
    DetectionScores,
    accuracy_matrix_summary,
    anytime_accuracy,
    average_accuracy,
    backward_transfer,
    detection_scores,
    forgetting,
    forward_transfer,
    min_accuracy,
    recovery_steps,
    wc_accuracy,
)
from online_mas.online import DEFAULT, Event, MASConfig, OnlineMAS, default_detector
from online_mas.penalty import PENALTY_FORMS, penalty_grad_, penalty_loss, proximal_
from online_mas.reduce import Reducer
from online_mas.rehearsal import ClassBalanced, HardReplay, Replay, Reservoir
from online_mas.sharded_checkpoint import load_sharded, save_sharded
from online_mas.signals import SIGNALS, FeatureShift, InputShift

__version__ = "0.1.0"

__all__ = [
    "CUSUM",
    "DEFAULT",
    "METHODS",
    "PENALTY_FORMS",
    "PENALTY_SHAPES",
    "SIGNALS",
    "AdaptConfig",
    "AdaptStep",
    "Adapter",
    "AnytimeAccuracy",
    "BatchImportance",
    "ClassBalanced",
    "Combined",
    "CurrentAnchor",
    "DetectionScores",
    "Detector",
    "Distiller",
    "Event",
    "FeatureShift",
    "HardBuffer",
    "HardReplay",
    "InputShift",
    "MASConfig",
    "NeverFires",
    "NonFiniteError",
    "OnlineMAS",
    "OutputFn",
    "PageHinkley",
    "Periodic",
    "Plateau",
    "Reducer",
    "Replay",
    "Reservoir",
    "RunningImportance",
    "ScaledCUSUM",
    "StableAnchor",
    "Windowed",
    "__version__",
    "accuracy_matrix_summary",
    "adapt",
    "anytime_accuracy",
    "average_accuracy",
    "backward_transfer",
    "checkpoint",
    "collapse_stats",
    "combine",
    "configure_model",
    "consolidate",
    "default_detector",
    "detection_scores",
    "detector_state_dict",
    "distillation_loss",
    "distributed",
    "entropy",
    "entropy_loss",
    "estimate",
    "estimators",
    "forgetting",
    "forward_transfer",
    "huber_grad_",
    "huber_loss",
    "huber_proximal_",
    "importance",
    "l1_grad_",
    "l1_loss",
    "l1_proximal_",
    "load_detector_state",
    "load_sharded",
    "metrics",
    "min_accuracy",
    "norm_parameters",
    "norm_statistics",
    "penalty_grad_",
    "penalty_loss",
    "plan",
    "proximal_",
    "recovery_steps",
    "save_sharded",
    "sharded",
    "signals",
    "wc_accuracy",
]
