"""online-mas: online, label-free Memory Aware Synapses for task-free continual learning.

Aljundi et al., Memory Aware Synapses, ECCV 2018 (arXiv:1711.09601); Aljundi, Kelchtermans,
Tuytelaars, Task-Free Continual Learning, CVPR 2019.
"""

from __future__ import annotations

from online_mas.accumulate import RunningImportance, combine
from online_mas.importance import METHODS, NonFiniteError, OutputFn, importance
from online_mas.online import Event, MASConfig, OnlineMAS
from online_mas.penalty import penalty, penalty_grad_, proximal_

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "Event",
    "MASConfig",
    "NonFiniteError",
    "OnlineMAS",
    "OutputFn",
    "RunningImportance",
    "__version__",
    "combine",
    "importance",
    "penalty",
    "penalty_grad_",
    "proximal_",
]
