"""Change detectors that decide when to consolidate, with river's detector contract.

Every detector here follows the contract of :mod:`river.drift`:

* ``update(x)`` feeds one real number (a loss, a label-free signal, ...);
* the read-only property ``drift_detected`` says whether *that* update detected;
* hyperparameters are public attributes under their own names, changing state lives in
  ``_``-prefixed attributes set by ``_reset()``;
* the update after a detection starts with a reset (:class:`Plateau` is the documented
  exception: it keeps its memory, see there).

Because the contract is the same, river's own detectors (``drift.ADWIN``, ``drift.KSWIN``,
``drift.PageHinkley``, ...) satisfy the :class:`Detector` protocol and plug in unchanged.

On top of river's contract, the detectors of this module

* ignore non-finite values (nan, +-inf): they are counted in the read-only ``n_skipped``, change
  nothing else and never cause a detection (the update still ends a previous detection);
* raise ``TypeError`` for anything that is not a real number (``int``, ``float``, a NumPy real
  scalar or a 0-dim real tensor);
* have ``state_dict()`` / ``load_state_dict()`` made of primitive values with a ``"version"`` key,
  loadable with ``torch.load(..., weights_only=True)``.

References
----------
.. [1] E. S. Page. Continuous inspection schemes. Biometrika 41(1/2):100-115, 1954.
.. [2] D. C. Montgomery. Introduction to Statistical Quality Control, 6th ed., Wiley, 2009,
   section 9.1 (the tabular CUSUM).
.. [3] R. Aljundi, K. Kelchtermans, T. Tuytelaars. Task-Free Continual Learning. CVPR 2019,
   arXiv:1812.03596 (the loss-plateau rule).
.. [4] R. Aljundi et al. Memory Aware Synapses: Learning what (not) to forget. ECCV 2018,
   arXiv:1711.09601.
"""

from __future__ import annotations

from online_mas.detectors.base import Detector, detector_state_dict, load_detector_state
from online_mas.detectors.baselines import NeverFires, Periodic
from online_mas.detectors.combined import Combined
from online_mas.detectors.cusum import CUSUM
from online_mas.detectors.page_hinkley import PageHinkley
from online_mas.detectors.plateau import Plateau
from online_mas.detectors.scaled_cusum import ScaledCUSUM
from online_mas.detectors.windowed import Windowed

__all__ = [
    "CUSUM",
    "Combined",
    "Detector",
    "NeverFires",
    "PageHinkley",
    "Periodic",
    "Plateau",
    "ScaledCUSUM",
    "Windowed",
    "detector_state_dict",
    "load_detector_state",
]
