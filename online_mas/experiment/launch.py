"""Running many units: one after the other or in worker processes; Ctrl-C stops them cleanly.

SIGINT and SIGTERM set a flag that the running unit checks after every step: it writes a checkpoint
and raises :class:`~online_mas.experiment.run.Interrupted`. Workers (``run.workers > 1``) are
spawned processes with one torch thread each; they ignore SIGINT themselves and learn about it
from the parent through a shared event. They die with the parent: on Linux the kernel kills them
when it dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), elsewhere a thread of theirs watches the
parent's pid; their last checkpoints are kept, and ``--resume`` continues from them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from online_mas.experiment import dist
from online_mas.experiment.config import ExperimentConfig
from online_mas.experiment.report import write_experiment_summary
from online_mas.experiment.run import Interrupted, run_unit
from online_mas.experiment.rundir import Unit, lock_run_dir, units

__all__ = ["run_experiment", "run_units"]


def run_experiment(config: ExperimentConfig, run_dir: str | Path, *,
                   progress: bool | None = None) -> list[dict[str, Any]]:
    """Run (or continue) every (learner, seed) of ``config`` in ``run_dir``; write the summaries.

    See :func:`run_units` for interruption and parallel workers (``config.run.workers``).

    Returns
    -------
    list of dict
        The ``summary.json`` of every unit, in the order of :func:`units`.
    """
    show = config.run.progress if progress is None else progress
    jobs = [(config, unit) for unit in units(config, run_dir)]
    workers = config.run.workers
    if dist.ranks()[1] > 1:  # under torchrun the ranks share each run: no process pool on top
        if workers > 1 and dist.is_main():
            print(f"online-mas: run.workers={workers} ignored under torchrun: the "
                  f"{dist.ranks()[1]} processes train each run together, one run after the other",
                  file=sys.stderr, flush=True)
        workers = 1
    # rank 0 writes the directory, and holds its lock meanwhile; a second process fails fast
    with lock_run_dir(run_dir) if dist.is_main() else contextlib.nullcontext():
        results = run_units(jobs, workers=workers, progress=show and dist.is_main())
        if dist.is_main():
            write_experiment_summary(run_dir, config, results)
    return results


def run_units(jobs: Sequence[tuple[ExperimentConfig, Unit]], *, workers: int = 1,
              progress: bool = True) -> list[dict[str, Any]]:
    """Run (or continue) units, one after the other or in ``workers`` spawned processes.

    SIGINT and SIGTERM make each running unit write a checkpoint and stop; :class:`Interrupted`
    is then raised (the CLI exits with 128 + the signal number). A second SIGINT stops at once,
    without a checkpoint. With several workers, a worker also stops (with a checkpoint) if its
    parent process dies.

    Returns
    -------
    list of dict
        The summary of every unit, in the order of ``jobs``.
    """
    stop = threading.Event()
    got: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():  # a second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        got.append(signum)
        stop.set()

    with _signals(handler):
        if workers > 1 and len(jobs) > 1:
            results = _run_parallel(jobs, workers, stop, got, progress)
        else:
            results = []
            for config, unit in jobs:
                if dist.broadcast(stop.is_set()):  # under torchrun: rank 0's flag, on every rank
                    break
                try:
                    results.append(run_unit(config, unit, stop=stop, progress=progress))
                except Interrupted as err:  # the unit knows it stopped, not which signal asked
                    raise Interrupted(str(err), got[0] if got else err.signum) from None
        if got:
            raise Interrupted("stopped", got[0])
    return results


@contextlib.contextmanager
def _signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _run_parallel(jobs: Sequence[tuple[ExperimentConfig, Unit]], workers: int,
                  stop: threading.Event, got: list[int], show: bool) -> list[dict[str, Any]]:
    ctx = get_context("spawn")
    shared = ctx.Event()
    results: dict[int, dict[str, Any]] = {}
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(shared, os.getpid())) as pool:
        futures = {pool.submit(_worker_unit, config, unit): i for i, (config, unit) in enumerate(jobs)}
        bar = tqdm(total=len(jobs), desc="runs", unit="run", disable=not show, dynamic_ncols=True)
        pending = set(futures)
        while pending:
            if stop.is_set() and not shared.is_set():
                shared.set()
                for f in pending:
                    f.cancel()
            done = [f for f in pending if f.done()]
            if not done:
                time.sleep(0.05)
                continue
            for f in done:
                pending.discard(f)
                if f.cancelled():
                    continue
                with contextlib.suppress(Interrupted):
                    results[futures[f]] = f.result()
                unit = jobs[futures[f]][1]
                bar.update(1)
                bar.set_postfix_str(f"last: {unit.learner} seed {unit.seed}")
        bar.close()
    if len(results) < len(jobs):  # a worker stopped (its parent died, or it was told to)
        raise Interrupted("stopped", got[0] if got else signal.SIGINT)
    return [results[i] for i in range(len(jobs))]


_WORKER_STOP: Any = None


class _WorkerStop:
    def __init__(self, event: Any, parent: int) -> None:
        self.event, self.parent = event, parent

    def is_set(self) -> bool:
        return bool(self.event.is_set()) or os.getppid() != self.parent


def _init_worker(event: Any, parent: int) -> None:
    global _WORKER_STOP
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides, and tells through event
    _die_with(parent)
    _WORKER_STOP = _WorkerStop(event, parent)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(parent: int) -> None:
    """End this worker when ``parent`` dies (an orphan would block on the pool's queue forever)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

    def watch() -> None:  # elsewhere, and should prctl have failed
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent:  # the parent died before the kernel was told
        os._exit(1)
    threading.Thread(target=watch, name="online-mas-parent-watch", daemon=True).start()


def _worker_unit(config: ExperimentConfig, unit: Unit) -> dict[str, Any]:
    if _WORKER_STOP is not None and _WORKER_STOP.is_set():  # queued before the stop: do not start
        raise Interrupted(f"{unit.learner} seed {unit.seed} not started")
    return run_unit(config, unit, stop=_WORKER_STOP, progress=False)


# --------------------------------------------------------------------------- one unit
