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

import math
import numbers
from collections import deque
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "CUSUM",
    "Detector",
    "NeverFires",
    "PageHinkley",
    "Periodic",
    "Plateau",
    "detector_state_dict",
    "load_detector_state",
]

_STATE_VERSION = 1
_MODES = ("up", "down", "both")


@runtime_checkable
class Detector(Protocol):
    """What the library needs from a change detector: river's ``DriftDetector`` contract.

    Any object with an ``update(x)`` method and a boolean ``drift_detected`` attribute or property
    is a detector; ``isinstance(obj, Detector)`` checks for both names (not their signatures).
    river's ``drift.ADWIN``, ``drift.KSWIN`` and ``drift.PageHinkley`` qualify unchanged.

    Examples
    --------
    >>> from river import drift
    >>> isinstance(drift.ADWIN(), Detector), isinstance(PageHinkley(), Detector)
    (True, True)
    >>> isinstance(object(), Detector)
    False
    """

    def update(self, x: float) -> None:
        """Feed one value of the monitored signal."""
        ...

    @property
    def drift_detected(self) -> bool:
        """Whether the last call to ``update`` detected a change."""
        ...


# ----------------------------------------------------------------------------------------------
# validation helpers


def _check_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_float(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
) -> float:
    if minimum is None:
        allowed = "a finite number"
    elif strict_minimum:
        allowed = f"a finite number > {minimum}"
    else:
        allowed = f"a finite number >= {minimum}"
    if maximum is not None:
        allowed += f" and <= {maximum}"
    try:
        ok = (
            isinstance(value, numbers.Real)
            and not isinstance(value, bool)
            and math.isfinite(float(value))
        )
    except OverflowError:  # an int too large for a float
        ok = False
    if ok:
        v = float(value)  # type: ignore[arg-type]
        if minimum is not None and (v <= minimum if strict_minimum else v < minimum):
            ok = False
        if maximum is not None and v > maximum:
            ok = False
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _check_mode(mode: object) -> str:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    return str(mode)


def _as_float(x: object) -> float:
    """Convert a real scalar to float, or raise TypeError."""
    if isinstance(x, numbers.Real):
        try:
            return float(x)
        except OverflowError:  # an int beyond the float range: non-finite, hence skipped
            return math.inf
    if isinstance(x, torch.Tensor) and x.ndim == 0 and not x.is_complex():
        return float(x.item())
    if isinstance(x, np.ndarray) and x.ndim == 0 and x.dtype.kind in "biuf":
        return float(x)
    what = type(x).__name__
    if isinstance(x, torch.Tensor | np.ndarray):
        what += f" of shape {tuple(x.shape)} and dtype {x.dtype}"
    raise TypeError(
        "update() expects a real number (int, float, NumPy real scalar or 0-dim real tensor), "
        f"got {what}"
    )


# ----------------------------------------------------------------------------------------------
# shared machinery


class _BaseDetector:
    """Shared machinery: input checks, skipped values, the detection flag and state dicts.

    Subclasses list their hyperparameters in ``_HYPERPARAMETERS`` and the names of their
    ``_``-prefixed state attributes (without the underscore) in ``_STATE``, implement
    ``_update(x)`` for finite values and extend ``_reset()``.
    """

    _HYPERPARAMETERS: ClassVar[tuple[str, ...]] = ()
    _STATE: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._n_skipped = 0
        self._reset()

    def _reset(self) -> None:
        self._drift_detected = False

    def _after_detection(self) -> None:
        """Called at the start of the update that follows a detection."""
        self._reset()

    def _update(self, x: float) -> None:
        raise NotImplementedError

    @property
    def drift_detected(self) -> bool:
        """Whether the last call to :meth:`update` detected a change (read-only)."""
        return self._drift_detected

    @property
    def n_skipped(self) -> int:
        """How many non-finite values (nan, +-inf) were ignored since construction (read-only).

        Not cleared by the reset that follows a detection.
        """
        return self._n_skipped

    def update(self, x: float) -> None:
        """Feed one value of the monitored signal.

        Parameters
        ----------
        x
            A real number. Non-finite values are ignored and counted in :attr:`n_skipped`.

        Raises
        ------
        TypeError
            If ``x`` is not a real scalar.
        """
        value = _as_float(x)
        if self._drift_detected:
            self._after_detection()
        if not math.isfinite(value):
            self._n_skipped += 1
            return
        self._update(value)

    # -- state -------------------------------------------------------------------------------

    def _hyperparameters(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._HYPERPARAMETERS}

    def _get_state(self) -> dict[str, Any]:
        return {name: getattr(self, "_" + name) for name in self._STATE}

    def _set_state(self, state: dict[str, Any]) -> None:
        for name in self._STATE:
            current = getattr(self, "_" + name)
            value = state[name]
            if type(value) is not type(current):
                raise ValueError(
                    f"state entry {name!r} must be of type {type(current).__name__}, "
                    f"got {type(value).__name__}"
                )
            setattr(self, "_" + name, value)

    def state_dict(self) -> dict[str, Any]:
        """Return the detector's state as primitive values.

        Returns
        -------
        dict
            ``{"version", "detector", "hyperparameters", "state", "drift_detected",
            "n_skipped"}``; only ``int``, ``float``, ``bool``, ``str``, ``None``, lists and dicts,
            so it loads under ``torch.load(..., weights_only=True)``.
        """
        return {
            "version": _STATE_VERSION,
            "detector": type(self).__name__,
            "hyperparameters": self._hyperparameters(),
            "state": self._get_state(),
            "drift_detected": self._drift_detected,
            "n_skipped": self._n_skipped,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict`.

        The detector must have been built with the same class and hyperparameters; continuing
        after loading gives exactly the detections the saved detector would have given.

        Raises
        ------
        ValueError
            If the version, class, hyperparameters or state names differ (the message says which).
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        expected = {
            "version",
            "detector",
            "hyperparameters",
            "state",
            "drift_detected",
            "n_skipped",
        }
        if set(state_dict) != expected:
            raise ValueError(
                f"state_dict keys must be {sorted(expected)}, got {sorted(state_dict)}"
            )
        if state_dict["version"] != _STATE_VERSION:
            raise ValueError(
                f"unsupported state_dict version {state_dict['version']!r}; "
                f"this library reads version {_STATE_VERSION}"
            )
        name = type(self).__name__
        if state_dict["detector"] != name:
            raise ValueError(
                f"state_dict is for a {state_dict['detector']!r}, cannot load it into a {name!r}"
            )
        ours = self._hyperparameters()
        theirs = state_dict["hyperparameters"]
        if set(theirs) != set(ours):
            raise ValueError(
                f"hyperparameter names differ: saved {sorted(theirs)}, expected {sorted(ours)}"
            )
        diff = [
            f"{k}: saved {theirs[k]!r}, this detector {ours[k]!r}"
            for k in ours
            if theirs[k] != ours[k]
        ]
        if diff:
            raise ValueError("hyperparameters differ: " + "; ".join(diff))
        state = state_dict["state"]
        if set(state) != set(self._STATE):
            missing = sorted(set(self._STATE) - set(state))
            unexpected = sorted(set(state) - set(self._STATE))
            raise ValueError(f"state names differ: missing {missing}, unexpected {unexpected}")
        self._set_state(state)
        self._drift_detected = bool(state_dict["drift_detected"])
        self._n_skipped = int(state_dict["n_skipped"])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._hyperparameters().items())
        return f"{type(self).__name__}({args})"


# ----------------------------------------------------------------------------------------------
# Page-Hinkley


class PageHinkley(_BaseDetector):
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
        self.min_instances = _check_int("min_instances", min_instances, minimum=1)
        self.delta = _check_float("delta", delta, minimum=0.0)
        self.threshold = _check_float("threshold", threshold, minimum=0.0, strict_minimum=True)
        self.alpha = _check_float("alpha", alpha, minimum=0.0, maximum=1.0, strict_minimum=True)
        self.mode = _check_mode(mode)
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


# ----------------------------------------------------------------------------------------------
# CUSUM


class CUSUM(_BaseDetector):
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
    4 to 5 suits charts of a few hundred points, the default 8 long training streams (on
    Gaussian noise with warm-ups of 30 to 100 values, ``threshold=5`` raised about 1.6 false
    alarms per thousand values, ``threshold=8`` fewer than 0.2). After a detection the next
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
        self.target = None if target is None else _check_float("target", target)
        self.std = (
            None if std is None else _check_float("std", std, minimum=0.0, strict_minimum=True)
        )
        self.min_instances = _check_int(
            "min_instances", min_instances, minimum=2 if self.std is None else 1
        )
        self.slack = _check_float("slack", slack, minimum=0.0)
        self.threshold = _check_float("threshold", threshold, minimum=0.0, strict_minimum=True)
        self.min_std = _check_float("min_std", min_std, minimum=0.0)
        self.mode = _check_mode(mode)
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


# ----------------------------------------------------------------------------------------------
# Plateau rule of Task-Free Continual Learning


class Plateau(_BaseDetector):
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
        self.window = _check_int("window", window, minimum=1)
        self.mean_threshold = _check_float(
            "mean_threshold", mean_threshold, minimum=0.0, strict_minimum=True
        )
        self.variance_threshold = _check_float(
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


# ----------------------------------------------------------------------------------------------
# baselines


class NeverFires(_BaseDetector):
    """Baseline that never detects: consolidation never happens.

    Examples
    --------
    >>> never = NeverFires()
    >>> for x in [0.0, 100.0, -100.0, float("nan")]:
    ...     never.update(x)
    >>> never.drift_detected, never.n_skipped
    (False, 1)
    """

    def _update(self, x: float) -> None:
        pass


class Periodic(_BaseDetector):
    """Baseline that detects on every ``every``-th finite update: at updates N, 2N, 3N, ...

    Updates are counted from 1; the value fed is irrelevant except that non-finite values are
    skipped like in every detector of this module (they are not counted). Useful to test
    consolidation logic on a known schedule.

    Parameters
    ----------
    every
        The period N >= 1 (``every=1`` detects on every update).

    Examples
    --------
    >>> periodic = Periodic(every=3)
    >>> fired = []
    >>> for i in range(10):
    ...     periodic.update(0.0)
    ...     fired.append(periodic.drift_detected)
    >>> [i + 1 for i, f in enumerate(fired) if f]  # the update numbers, counting from 1
    [3, 6, 9]
    """

    _HYPERPARAMETERS = ("every",)
    _STATE = ("count",)

    def __init__(self, every: int) -> None:
        self.every = _check_int("every", every, minimum=1)
        super().__init__()

    def _reset(self) -> None:
        super()._reset()
        self._count = 0  # finite updates since the last detection

    def _update(self, x: float) -> None:
        self._count += 1
        if self._count == self.every:
            self._drift_detected = True


# ----------------------------------------------------------------------------------------------
# helpers for any detector


def _check_stateful(detector: object) -> None:
    if not (
        callable(getattr(detector, "state_dict", None))
        and callable(getattr(detector, "load_state_dict", None))
    ):
        raise TypeError(
            f"{type(detector).__name__} has no state_dict()/load_state_dict(); its state cannot "
            "be checkpointed. Use a detector from online_mas.detectors, or rebuild this one "
            "after loading (it then restarts from an empty state)."
        )


def detector_state_dict(detector: object) -> dict[str, Any]:
    """Return ``detector.state_dict()``, or raise a clear TypeError if it has none.

    Works for the detectors of this module and any object with ``state_dict()`` /
    ``load_state_dict()``. river's detectors have no such methods and are refused rather than
    pickled (a checkpoint must load with ``weights_only=True``).

    Parameters
    ----------
    detector
        The detector to save.

    Returns
    -------
    dict
        Its state dict.

    Raises
    ------
    TypeError
        If the detector has no ``state_dict`` / ``load_state_dict`` pair.

    Examples
    --------
    >>> detector_state_dict(Periodic(every=2))["state"]
    {'count': 0}
    >>> from river import drift
    >>> detector_state_dict(drift.ADWIN())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: ADWIN has no state_dict()/load_state_dict(); ...
    """
    _check_stateful(detector)
    state: dict[str, Any] = detector.state_dict()  # type: ignore[attr-defined]
    return state


def load_detector_state(detector: object, state_dict: dict[str, Any]) -> None:
    """Load ``state_dict`` into ``detector`` via its ``load_state_dict``, or raise TypeError.

    Parameters
    ----------
    detector
        The detector to restore (same class and hyperparameters as the saved one).
    state_dict
        What :func:`detector_state_dict` returned.

    Raises
    ------
    TypeError
        If the detector has no ``state_dict`` / ``load_state_dict`` pair.
    """
    _check_stateful(detector)
    detector.load_state_dict(state_dict)  # type: ignore[attr-defined]
