"""Baselines with a known schedule: never fire, or fire every N updates."""

from __future__ import annotations

from online_mas.detectors.base import (
    BaseDetector,
    check_int,
)


class NeverFires(BaseDetector):
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


class Periodic(BaseDetector):
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
        self.every = check_int("every", every, minimum=1)
        super().__init__()

    def _reset(self) -> None:
        super()._reset()
        self._count = 0  # finite updates since the last detection

    def _update(self, x: float) -> None:
        self._count += 1
        if self._count == self.every:
            self._drift_detected = True
