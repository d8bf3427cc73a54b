"""CUSUM on a value standardised by its own robust noise scale (no threshold in signal units)."""

from __future__ import annotations

import math
import statistics

from online_mas.detectors.base import BaseDetector, check_float, check_int, check_mode


class ScaledCUSUM(BaseDetector):
    r"""Tabular CUSUM on :math:`z_t = (x_t - \mu_{t-1}) / \sigma_{t-1}`, self-calibrated online.

    The first ``warmup`` values set the level :math:`\mu` (their median) and the scale
    :math:`\sigma` (1.4826 times their median absolute deviation); no detection is possible
    before. Then, with :math:`r_t = x_t - \mu_{t-1}`, :math:`a = 1 - 2^{-1/h_{1/2}}` and
    :math:`c` = ``clip``,

    .. math::

        z_t = \mathrm{clip}(r_t / \sigma_{t-1}, -c, c), \quad
        S^{+}_t = \max(0, S^{+}_{t-1} + z_t - k), \quad
        S^{-}_t = \max(0, S^{-}_{t-1} - z_t - k),

        \mu_t = \mu_{t-1} + a\, \sigma_{t-1} z_t, \quad
        \sigma^2_t = \sigma^2_{t-1} + a\,(\min(r_t^2, c^2 \sigma^2_{t-1}) - \sigma^2_{t-1}).

    An increase is detected when :math:`S^{+}_t >` ``threshold``, a decrease when
    :math:`S^{-}_t >` ``threshold``. The level and the variance are winsorised at :math:`c`
    standard deviations, so an outlier moves neither much, and one value can add at most
    :math:`c - k` to a sum: a detection needs several values in a row. The threshold is in
    standard deviations of the input, so the same setting serves any signal and scale.

    Parameters
    ----------
    warmup
        Values (since the last reset) that set the level and scale, >= 2.
    slack
        :math:`k`, the shift (in standard deviations) the sums ignore, >= 0.
    threshold
        Detection threshold on :math:`S^{\pm}`, in standard deviations, > 0.
    clip
        :math:`c` > 0: largest standardised step, and the winsorisation point.
    half_life
        :math:`h_{1/2}` > 0: half-life (in values) of the running level and variance.
    mode
        ``"up"``, ``"down"`` or ``"both"``.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(7)
    >>> stream = [rng.gauss(0.0, 1.0) for _ in range(1000)]
    >>> stream += [rng.gauss(3.0, 1.0) for _ in range(100)]  # the mean rises at index 1000
    >>> cusum = ScaledCUSUM(mode="up")
    >>> [i for i, x in enumerate(stream) if (cusum.update(x), cusum.drift_detected)[1]]
    [1002]
    >>> scaled = ScaledCUSUM(mode="up")  # the same stream in other units: the same detection
    >>> [i for i, x in enumerate(stream) if (scaled.update(1e-3 * x + 5), scaled.drift_detected)[1]]
    [1002]

    References
    ----------
    .. [1] E. S. Page. Continuous inspection schemes. Biometrika 41(1/2):100-115, 1954.
    .. [2] D. C. Montgomery. Introduction to Statistical Quality Control, 6th ed., 2009, 9.1.
    """

    _HYPERPARAMETERS = ("warmup", "slack", "threshold", "clip", "half_life", "mode")
    _STATE = ("n", "warm", "mean", "var", "sum_up", "sum_down", "run_up", "run_down")

    def __init__(
        self,
        *,
        warmup: int = 16,
        slack: float = 0.5,
        threshold: float = 8.0,
        clip: float = 4.0,
        half_life: float = 16.0,
        mode: str = "up",
    ) -> None:
        self.warmup = check_int("warmup", warmup, minimum=2)
        self.slack = check_float("slack", slack, minimum=0.0)
        self.threshold = check_float("threshold", threshold, minimum=0.0, strict_minimum=True)
        self.clip = check_float("clip", clip, minimum=0.0, strict_minimum=True)
        self.half_life = check_float("half_life", half_life, minimum=0.0, strict_minimum=True)
        self.mode = check_mode(mode)
        self._rate = 1.0 - 0.5 ** (1.0 / self.half_life)
        super().__init__()

    def _reset(self) -> None:
        super()._reset()
        self._n = 0
        self._warm: list[float] = []
        self._mean = 0.0
        self._var = 0.0
        self._sum_up = 0.0
        self._sum_down = 0.0
        self._run_up = 0  # values since S+ was last 0 (0: it is 0)
        self._run_down = 0

    @property
    def run_length(self) -> int:
        """Values since the watched sum last was 0 (0: it is 0 now), read-only: the current run
        began that many values ago, Page's estimate of where a change it detects began
        (``"both"``: the longer run)."""
        if self.mode == "up":
            return self._run_up
        if self.mode == "down":
            return self._run_down
        return max(self._run_up, self._run_down)

    @property
    def statistic(self) -> float:
        """The watched sum now, in standard deviations (``"both"``: the larger), read-only: what
        is compared with ``threshold`` (0 during the warm-up)."""
        if self.mode == "up":
            return self._sum_up
        if self.mode == "down":
            return self._sum_down
        return max(self._sum_up, self._sum_down)

    def load_state_dict(self, state_dict: dict[str, object]) -> None:
        """Restore :meth:`state_dict`; a state saved before the run lengths were kept gets runs of
        one value where its sums are open (their starts are unknown)."""
        state = state_dict.get("state") if isinstance(state_dict, dict) else None
        if isinstance(state, dict) and "run_up" not in state and "sum_up" in state:
            state = {**state, "run_up": int(state["sum_up"] > 0.0), "run_down": int(state["sum_down"] > 0.0)}
            state_dict = {**state_dict, "state": state}
        super().load_state_dict(state_dict)

    def _update(self, x: float) -> None:
        self._n += 1
        if self._n <= self.warmup:
            self._warm.append(x)
            if self._n == self.warmup:
                self._mean = statistics.median(self._warm)
                mad = statistics.median(abs(v - self._mean) for v in self._warm)
                self._var = (1.4826 * mad) ** 2
                self._warm = []
            return
        r = x - self._mean
        c = self.clip
        if self._var > 0.0:
            sd = math.sqrt(self._var)
            z = max(-c, min(c, r / sd))
            self._mean += self._rate * sd * z
            self._var += self._rate * (min(r * r, c * c * self._var) - self._var)
        else:  # a constant warm-up: any change is a full step, and sets the scale
            z = 0.0 if r == 0.0 else math.copysign(c, r)
            self._var = self._rate * r * r
        self._sum_up = max(0.0, self._sum_up + z - self.slack)
        self._sum_down = max(0.0, self._sum_down - z - self.slack)
        self._run_up = self._run_up + 1 if self._sum_up > 0.0 else 0
        self._run_down = self._run_down + 1 if self._sum_down > 0.0 else 0
        up = self._sum_up > self.threshold
        down = self._sum_down > self.threshold
        if self.mode == "up":
            self._drift_detected = up
        elif self.mode == "down":
            self._drift_detected = down
        else:
            self._drift_detected = up or down
