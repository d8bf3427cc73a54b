"""Shared machinery of the detectors: the contract, input checks, skipped values, state dicts."""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

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
    >>> from online_mas.detectors import PageHinkley
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


def check_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(
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


def check_mode(mode: object) -> str:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    return str(mode)


def as_float(x: object) -> float:
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


class BaseDetector:
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
        value = x if type(x) is float else as_float(x)
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
# helpers for any detector


def check_stateful(detector: object) -> None:
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
    >>> from online_mas.detectors import Periodic
    >>> detector_state_dict(Periodic(every=2))["state"]
    {'count': 0}
    >>> from river import drift
    >>> detector_state_dict(drift.ADWIN())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: ADWIN has no state_dict()/load_state_dict(); ...
    """
    check_stateful(detector)
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
    check_stateful(detector)
    detector.load_state_dict(state_dict)  # type: ignore[attr-defined]
