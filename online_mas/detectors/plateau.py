"""The loss-plateau rule of Task-Free Continual Learning (Aljundi et al., CVPR 2019)."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from online_mas.detectors.base import (
    BaseDetector,
    check_float,
    check_int,
)


class Plateau(BaseDetector):
    r"""The loss-plateau rule of Task-Free Continual Learning: fires when it is time to consolidate.

    Here ``drift_detected`` means *consolidate now*: the signal (typically the training loss)
    has settled on a stable, low plateau after a peak. Following Aljundi et al. (CVPR 2019), the
    detector keeps the last ``window`` values and, once the window is full, their mean
    :math:`\mu_w` and population variance :math:`\sigma^2_w` (``ddof=0``):

    1. a *new peak* is flagged when :math:`\mu_w > \mu_p + \sqrt{\sigma^2_p}`, with
       :math:`\mu_p, \sigma^2_p` the window mean and variance at the last detection;
    2. a detection fires when a new peak has been flagged since the last detection and the window
       is on a plateau: :math:`\mu_w < \text{mean\_threshold}` and
       :math:`\sigma^2_w < \text{variance\_threshold}`. It then records
       :math:`\mu_p \leftarrow \mu_w, \sigma^2_p \leftarrow \sigma^2_w` and clears the flag.

    With ``relative=True`` the thresholds are fractions of the *peak level* :math:`P`, the largest
    full-window mean since the last detection (since the start for the first one): the plateau
    test becomes :math:`\mu_w < \text{mean\_threshold}\cdot P` and
    :math:`\sigma^2_w < \text{variance\_threshold}\cdot P^2` ("the signal has dropped to a
    fraction of its peak and its standard deviation is a small fraction of the peak"). Rule 1 is
    scale-free already, so the relative form gives the same detections for a signal multiplied
    by any :math:`c > 0`; use it for signals other than a loss, whose scale is unknown. It assumes
    a non-negative signal (a loss, an entropy, a norm): with :math:`P \le 0` it never fires.
    Suggested relative values: ``mean_threshold=0.5, variance_threshold=0.01``.

    Conventions (read these before wiring it to consolidation):

    * **The first plateau fires.** The start of the stream counts as a peak (the new-peak flag
      starts raised, as in the paper's code), so the first task is consolidated at its first
      plateau; after that, each detection needs a new peak.
    * **Full windows only.** Nothing is flagged or detected before ``window`` finite values have
      been seen (the paper's code already tests partial windows).
    * **No reset after a detection.** Unlike the change detectors, the update after a detection
      only lowers ``drift_detected``; the window, the last plateau's statistics and the peak
      level (restarted at the plateau's mean) are kept, since the rule compares what comes next
      with the last plateau. A long plateau therefore fires once, not every ``window`` updates.
    * The rule is the paper's: on a noisy plateau, the window mean can exceed the last plateau's
      mean plus its (within-window) standard deviation by chance, re-arming the detector; use a
      longer ``window`` to smooth such noise.

    Parameters
    ----------
    window
        Number of recent values in the window, >= 1 (the paper's code uses 5).
    mean_threshold
        The window mean must be below this (absolute, or a fraction of the peak if ``relative``),
        finite and > 0 (the paper's code uses 0.2 for a cross-entropy loss).
    variance_threshold
        The window variance must be below this (absolute, or a fraction of the squared peak if
        ``relative``), finite and > 0 (the paper's code uses 0.1).
    relative
        Whether the thresholds are relative to the peak level (see above).

    Examples
    --------
    A hand-made loss curve: a first task learned (2.0 down to 0.1), a new task arrives at index
    20 (jump to 2.0), learned in turn:

    >>> curve = [2.0, 1.5, 1.0, 0.6, 0.3, 0.15] + [0.1] * 14
    >>> curve += [2.0, 1.8, 1.2, 0.7, 0.4, 0.2] + [0.1] * 14
    >>> plateau = Plateau(window=5, mean_threshold=0.2, variance_threshold=0.1)
    >>> for i, loss in enumerate(curve):
    ...     plateau.update(loss)
    ...     if plateau.drift_detected:
    ...         print(f"Consolidate at index {i}")
    Consolidate at index 8
    Consolidate at index 28

    The relative form on the same curve scaled by 1000 (thresholds are fractions of the peak):

    >>> relative = Plateau(window=5, mean_threshold=0.1, variance_threshold=0.01, relative=True)
    >>> for i, loss in enumerate(curve):
    ...     relative.update(1000.0 * loss)
    ...     if relative.drift_detected:
    ...         print(f"Consolidate at index {i}")
    Consolidate at index 10
    Consolidate at index 29

    References
    ----------
    .. [1] R. Aljundi, K. Kelchtermans, T. Tuytelaars. Task-Free Continual Learning. CVPR 2019,
       arXiv:1812.03596.
    """

    _HYPERPARAMETERS = ("window", "mean_threshold", "variance_threshold", "relative")
    _STATE = ("values", "new_peak", "last_mean", "last_variance", "peak")

    def __init__(
        self,
        *,
        window: int = 5,
        mean_threshold: float = 0.2,
        variance_threshold: float = 0.1,
        relative: bool = False,
    ) -> None:
        self.window = check_int("window", window, minimum=1)
        self.mean_threshold = check_float(
            "mean_threshold", mean_threshold, minimum=0.0, strict_minimum=True
        )
        self.variance_threshold = check_float(
            "variance_threshold", variance_threshold, minimum=0.0, strict_minimum=True
        )
        if not isinstance(relative, bool):
            raise ValueError(f"relative must be True or False, got {relative!r}")
        self.relative = relative
        super().__init__()

    def _reset(self) -> None:
        super()._reset()
        self._values: deque[float] = deque(maxlen=self.window)
        self._new_peak = True  # the start of the stream counts as a peak
        self._last_mean = 0.0  # window statistics at the last detection
        self._last_variance = 0.0
        self._peak = -math.inf  # largest full-window mean since the last detection

    def _after_detection(self) -> None:
        self._drift_detected = False

    @property
    def window_mean(self) -> float:
        """Mean of the current window (nan until the window is full)."""
        if len(self._values) < self.window:
            return math.nan
        return sum(self._values) / self.window

    @property
    def window_variance(self) -> float:
        """Population variance of the current window (nan until the window is full)."""
        mean = self.window_mean
        if math.isnan(mean):
            return math.nan
        return sum((v - mean) ** 2 for v in self._values) / self.window

    def _update(self, x: float) -> None:
        self._values.append(x)
        if len(self._values) < self.window:
            return
        mean = self.window_mean
        variance = self.window_variance
        self._peak = max(self._peak, mean)
        if not self._new_peak and mean > self._last_mean + math.sqrt(self._last_variance):
            self._new_peak = True
        if self.relative:
            plateau = (
                self._peak > 0
                and mean < self.mean_threshold * self._peak
                and variance < self.variance_threshold * self._peak**2
            )
        else:
            plateau = mean < self.mean_threshold and variance < self.variance_threshold
        if self._new_peak and plateau:
            self._drift_detected = True
            self._last_mean = mean
            self._last_variance = variance
            self._new_peak = False
            self._peak = mean

    def _get_state(self) -> dict[str, Any]:
        state = super()._get_state()
        state["values"] = list(self._values)
        return state

    def _set_state(self, state: dict[str, Any]) -> None:
        values = state["values"]
        if (
            not isinstance(values, list)
            or len(values) > self.window
            or not all(isinstance(v, float) for v in values)
        ):
            raise ValueError(
                f"state entry 'values' must be a list of at most {self.window} floats, "
                f"got {values!r}"
            )
        super()._set_state({**state, "values": deque(values, maxlen=self.window)})
