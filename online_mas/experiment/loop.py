"""The one run loop of both kinds: iterate a stream, step, evaluate, log, with a progress bar.

What a step does (train a learner on a labeled batch, adapt on an unlabeled one) is the step
object's business (:class:`Step`); the loop only decides when: on every batch ``step``; at the
steps in ``eval_at`` (segment ends) and every ``eval_every`` steps ``evaluate``, merged into the
step's log extras; ``log`` when the extras are not empty, every ``log_every`` steps and at the
last step; ``end_step`` last (checkpoints, stopping).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, Protocol

from tqdm import tqdm

__all__ = ["Step", "run_loop"]


class Step(Protocol):
    """What :func:`run_loop` calls for each batch ``i`` (0-based; ``done = i + 1``)."""

    def step(self, i: int, batch: Any) -> dict[str, object]:
        """Process batch ``i``; return log extras (non-empty extras force a log line)."""

    def evaluate(self, done: int, at_segment_end: bool) -> dict[str, object]:
        """Evaluate after ``done`` steps; return more log extras."""

    def log(self, i: int, extras: dict[str, object]) -> dict[str, object]:
        """Write the log line of batch ``i``; return the progress bar's postfix (may be empty)."""

    def end_step(self, done: int) -> None:
        """Last call of each step (e.g. checkpoint, or raise to stop)."""


def run_loop(step: Step, batches: Iterable[tuple[int, Any]], *, total: int, start: int = 0,
             log_every: int, eval_at: Collection[int] = (), eval_every: int = 0,
             progress: bool = False, desc: str = "", leave: bool = True) -> None:
    """Run ``step`` over ``batches`` (``(i, batch)`` pairs, ``i`` from ``start`` to ``total - 1``).

    Parameters
    ----------
    step
        The per-kind step object (:class:`Step`).
    batches
        The stream, enumerated from ``start``.
    total
        Number of steps of the whole stream (the last one is always logged).
    start
        Steps already done (a resumed run).
    log_every
        Steps between scheduled log lines.
    eval_at
        Step counts after which to evaluate (``at_segment_end=True``).
    eval_every
        Also evaluate every N steps (0: never).
    progress, desc, leave
        The tqdm bar: shown or not, its label, kept when done.

    Examples
    --------
    >>> class Count:
    ...     def step(self, i, batch): return {"big": True} if batch > 2 else {}
    ...     def evaluate(self, done, at_end): return {"eval": done}
    ...     def log(self, i, extras): print(i + 1, extras); return {}
    ...     def end_step(self, done): pass
    >>> run_loop(Count(), enumerate([1, 3, 1, 1, 1]), total=5, log_every=2, eval_at={4})
    2 {'big': True}
    4 {'eval': 4}
    5 {}
    """
    bar = tqdm(total=total, initial=start, desc=desc, unit="batch", disable=not progress,
               dynamic_ncols=True, leave=leave, mininterval=0.5)
    try:
        for i, batch in batches:
            done = i + 1
            extras = step.step(i, batch)
            at_end = done in eval_at
            if at_end or (eval_every and done % eval_every == 0):
                extras.update(step.evaluate(done, at_end))
            if extras or done % log_every == 0 or done == total:
                postfix = step.log(i, extras)
                if progress and postfix:
                    bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            step.end_step(done)
    finally:
        bar.close()
