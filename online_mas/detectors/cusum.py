"""Tabular CUSUM for a shift of the mean (Montgomery, section 9.1), river's contract."""

from __future__ import annotations

import math

from online_mas.detectors.base import (
    BaseDetector,
    check_float,
    check_int,
    check_mode,
)


class CUSUM(BaseDetector):
    r"""Tabular CUSUM for a shift of the mean away from a target, one- or two-sided.

    The first ``min_instances`` values after construction or a reset are a warm-up and are
    not monitored. Unless given, the target mean :math:`\mu_0` is their mean and the scale
    :math:`\sigma` their sample standard deviation (``ddof=1``), floored at ``min_std``. Then

    .. math::

        S^{+}_t = \max(0,\; S^{+}_{t-1} + x_t - \mu_0 - k\sigma), \qquad
        S^{-}_t = \max(0,\; S^{-}_{t-1} + \mu_0 - x_t - k\sigma),

    from :math:`S^{\pm} = 0`, and an increase is detected when :math:`S^{+}_t > h\sigma`, a
    decrease when :math:`S^{-}_t > h\sigma`. The slack :math:`k` and threshold :math:`h` are thus
    in units of :math:`\sigma`: ``slack=0.5`` tunes the chart to a shift of one standard
    deviation. A larger ``threshold`` gives fewer false alarms and longer delays; the textbook
    4 to 5 suits charts of a few hundred points, the default 8 long training streams (the
    false-alarm rates are measured in ``tests/test_detectors.py``). After a detection the next
    update resets the detector, which warms up again on the new regime (re-estimating what was
    not given).

    Parameters
    ----------
    min_instances
        Length of the warm-up, >= 2 when ``std`` is estimated, >= 1 otherwise.
    slack
        :math:`k` >= 0, in units of :math:`\sigma`.
    threshold
        :math:`h` > 0, in units of :math:`\sigma` (default 8, see above).
    target
        Known in-control mean :math:`\mu_0`; ``None`` estimates it from the warm-up.
    std
        Known in-control standard deviation :math:`\sigma` > 0; ``None`` estimates it.
    min_std
        Floor >= 0 for the estimated :math:`\sigma`, in the units of the signal. With the default
        0, a constant warm-up gives :math:`\sigma = 0` and any later deviation is detected.
    mode
        ``"up"`` detects increases, ``"down"`` decreases, ``"both"`` either.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(7)
    >>> stream = [rng.gauss(0.0, 1.0) for _ in range(1000)]
    >>> stream += [rng.gauss(2.0, 1.0) for _ in range(1000)]  # the mean rises at index 1000
    >>> cusum = CUSUM(min_instances=100, slack=0.5, threshold=8.0)
    >>> for i, x in enumerate(stream):
    ...     cusum.update(x)
    ...     if cusum.drift_detected:
    ...         print(f"Change detected at index {i}")
    Change detected at index 1006

    References
    ----------
    .. [1] E. S. Page. Continuous inspection schemes. Biometrika 41(1/2):100-115, 1954.
    .. [2] D. C. Montgomery. Introduction to Statistical Quality Control, 6th ed., Wiley, 2009,
       section 9.1.
    """

    _HYPERPARAMETERS = (
        "min_instances",
        "slack",
        "threshold",
        "target",
        "std",
        "min_std",
        "mode",
    )
    _STATE = ("n", "mean", "m2", "mu", "sigma", "s_up", "s_down")

    def __init__(
        self,
        *,
        min_instances: int = 30,
        slack: float = 0.5,
        threshold: float = 8.0,
        target: float | None = None,
        std: float | None = None,
        min_std: float = 0.0,
        mode: str = "both",
    ) -> None:
        self.target = None if target is None else check_float("target", target)
        self.std = (
            None if std is None else check_float("std", std, minimum=0.0, strict_minimum=True)
        )
        self.min_instances = check_int(
            "min_instances", min_instances, minimum=2 if self.std is None else 1
        )
        self.slack = check_float("slack", slack, minimum=0.0)
        self.threshold = check_float("threshold", threshold, minimum=0.0, strict_minimum=True)
        self.min_std = check_float("min_std", min_std, minimum=0.0)
        self.mode = check_mode(mode)
        super().__init__()

    def _reset(self) -> None:
        super()._reset()
        self._n = 0  # warm-up values seen
        self._mean = 0.0  # Welford's running mean and sum of squares of the warm-up
        self._m2 = 0.0
        self._mu = 0.0  # the target and scale in use once the warm-up is over
        self._sigma = 0.0
        self._s_up = 0.0
        self._s_down = 0.0

    def _update(self, x: float) -> None:
        if self._n < self.min_instances:
            self._n += 1
            d = x - self._mean
            self._mean += d / self._n
            self._m2 += d * (x - self._mean)
            if self._n == self.min_instances:
                self._mu = self._mean if self.target is None else self.target
                if self.std is None:
                    self._sigma = max(math.sqrt(self._m2 / (self._n - 1)), self.min_std)
                else:
                    self._sigma = self.std
            return
        k = self.slack * self._sigma
        h = self.threshold * self._sigma
        self._s_up = max(0.0, self._s_up + x - self._mu - k)
        self._s_down = max(0.0, self._s_down + self._mu - x - k)
        up = self._s_up > h
        down = self._s_down > h
        if self.mode == "up":
            self._drift_detected = up
        elif self.mode == "down":
            self._drift_detected = down
        else:
            self._drift_detected = up or down
