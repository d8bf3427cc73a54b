"""Page-Hinkley test for a change in the mean (Page, Biometrika 1954), river's contract."""

from __future__ import annotations

from online_mas.detectors.base import (
    BaseDetector,
    check_float,
    check_int,
    check_mode,
)


class PageHinkley(BaseDetector):
    r"""Page-Hinkley test for a change in the mean, one- or two-sided.

    With :math:`\bar x_t` the running mean of the values seen since the last reset,

    .. math::

        m^{+}_t = \alpha\, m^{+}_{t-1} + (x_t - \bar x_t - \delta), \qquad
        m^{-}_t = \alpha\, m^{-}_{t-1} + (x_t - \bar x_t + \delta),

    with :math:`m^{\pm}_0 = 0`. An increase is detected when
    :math:`m^{+}_t - \min_{s \le t} m^{+}_s > \lambda`, a decrease when
    :math:`\max_{s \le t} m^{-}_s - m^{-}_t > \lambda` (minimum and maximum include
    :math:`m^{\pm}_0 = 0`), and only once ``min_instances`` values have been seen.

    Parameters
    ----------
    min_instances
        Number of values seen (since the last reset) before a change can be detected, >= 1.
    delta
        Magnitude of changes to tolerate, >= 0, in the units of the signal.
    threshold
        Detection threshold :math:`\lambda` > 0, in the units of the signal.
    alpha
        Fading factor in (0, 1] applied to the cumulative sums :math:`m^{\pm}` (the same place
        river's ``PageHinkley`` applies its ``alpha``); 1 gives the classical test.
    mode
        ``"up"`` detects increases of the mean, ``"down"`` decreases, ``"both"`` either.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(7)
    >>> stream = [rng.gauss(0.0, 1.0) for _ in range(1000)]
    >>> stream += [rng.gauss(2.0, 1.0) for _ in range(1000)]  # the mean rises at index 1000
    >>> ph = PageHinkley(delta=0.5, threshold=15.0)
    >>> for i, x in enumerate(stream):
    ...     ph.update(x)
    ...     if ph.drift_detected:
    ...         print(f"Change detected at index {i}")
    Change detected at index 1010

    References
    ----------
    .. [1] E. S. Page. Continuous inspection schemes. Biometrika 41(1/2):100-115, 1954.
    """

    _HYPERPARAMETERS = ("min_instances", "delta", "threshold", "alpha", "mode")
    _STATE = ("n", "mean", "sum_up", "min_up", "sum_down", "max_down")

    def __init__(
        self,
        *,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1.0 - 0.0001,
        mode: str = "both",
    ) -> None:
        self.min_instances = check_int("min_instances", min_instances, minimum=1)
        self.delta = check_float("delta", delta, minimum=0.0)
        self.threshold = check_float("threshold", threshold, minimum=0.0, strict_minimum=True)
        self.alpha = check_float("alpha", alpha, minimum=0.0, maximum=1.0, strict_minimum=True)
        self.mode = check_mode(mode)
        super().__init__()

    def _reset(self) -> None:
        super()._reset()
        self._n = 0
        self._mean = 0.0
        self._sum_up = 0.0
        self._min_up = 0.0
        self._sum_down = 0.0
        self._max_down = 0.0

    def _update(self, x: float) -> None:
        self._n += 1
        self._mean += (x - self._mean) / self._n
        dev = x - self._mean
        self._sum_up = self.alpha * self._sum_up + dev - self.delta
        self._sum_down = self.alpha * self._sum_down + dev + self.delta
        self._min_up = min(self._min_up, self._sum_up)
        self._max_down = max(self._max_down, self._sum_down)
        if self._n < self.min_instances:
            return
        up = self._sum_up - self._min_up > self.threshold
        down = self._max_down - self._sum_down > self.threshold
        if self.mode == "up":
            self._drift_detected = up
        elif self.mode == "down":
            self._drift_detected = down
        else:
            self._drift_detected = up or down
