"""One unit (a learner on one seed's stream): its steps, its checkpoints, and resume.

The loop is :func:`online_mas.experiment.loop.run_loop`. On every batch: predict it (prequential
accuracy), train on it (task loss, then the learner's
penalty and consolidation), log every ``run.log_every`` steps, evaluate on every segment's
held-out set at each true change point and at the end, and checkpoint every
``run.checkpoint_every`` steps. A batch whose loss is not finite (a corrupted batch) is neither
trained on nor counted; the learner still sees it and its ``metrics.jsonl`` line says
``"skipped"``. The files are described in :mod:`online_mas.experiment.rundir`.

A run is complete when its ``summary.json`` exists. ``resume`` skips complete runs, continues a
run from its checkpoint and starts runs that have none. Every batch is a pure function of the
stream's seed and the step, and the checkpoint holds every other piece of state, so on CPU a
resumed run reproduces the uninterrupted one exactly (everything but the ``"timing"`` entry and
the ``"time"`` field of ``metrics.jsonl``). ``metrics.jsonl`` is cut back to its length at the
checkpoint before continuing, so no line is written twice. A checkpoint records the config it was
written with (all but ``[run]``, which may change between sessions: threads, workers, progress)
and the names and shapes of the model's tensors; resuming with anything else is refused with a
message naming the differences.

Under ``torchrun`` every rank runs this loop on its slice of each batch and only rank 0 writes;
see :mod:`online_mas.experiment.dist`.

The model, the optimizer, the learner's state and each batch live on ``run.device``; the forward
and the task loss run in ``run.precision`` (:mod:`online_mas.experiment.device`). A checkpoint
loads on another device; one written in another precision is refused, as another config is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from online_mas import checkpoint
from online_mas.experiment import dist
from online_mas.experiment.config import ExperimentConfig, OptimConfig
from online_mas.experiment.configio import config_diff, config_to_dict
from online_mas.experiment.device import autocast, grad_scaler, resolve_device
from online_mas.experiment.learners import Learner, build_learner
from online_mas.experiment.loop import run_loop
from online_mas.experiment.models import build_model, model_signature
from online_mas.experiment.plots import draw_unit_plots
from online_mas.experiment.record import Record, layer_types, summarize
from online_mas.experiment.registry import DETECTING, OPTIMIZERS
from online_mas.experiment.rundir import RunDirError, Unit, read_summary, write_text
from online_mas.sharded import any_sharded, full
from online_mas.sharded_checkpoint import load_sharded, save_sharded
from streams import Stream, build_stream

__all__ = ["Interrupted", "UnitRun", "build_optimizer", "evaluate", "run_unit"]

_CKPT_KIND = "online-mas-run"
_CKPT_VERSION = 1


class Interrupted(Exception):
    """The run stopped on SIGINT/SIGTERM after writing a checkpoint; resume it later."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum


class _Stop(Protocol):
    def is_set(self) -> bool: ...


def build_optimizer(config: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer ``[optim]`` describes, over the model's trainable parameters.

    Examples
    --------
    >>> build_optimizer(OptimConfig(name="adam", lr=1e-3), torch.nn.Linear(2, 1)).defaults["lr"]
    0.001
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS[config.name](params, lr=config.lr, momentum=config.momentum,
                                   weight_decay=config.weight_decay)


@torch.no_grad()
def evaluate(model: nn.Module, sets: Sequence[tuple[Tensor, Tensor]], *,
             batch_size: int = 1024, chunks: Sequence[int] | None = None) -> list[float]:
    """Accuracy of ``model`` (in eval mode) on each ``(x, y)`` held-out set; the mode is restored.

    Each chunk of ``batch_size`` samples is moved to the device of the model's parameters.
    ``chunks``: at least this many forwards per set (empty chunks after the end), so the ranks of
    a sharded model, whose forwards are collectives, make the same number.

    Examples
    --------
    >>> model = torch.nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.eye(2)); _ = model.bias.zero_()
    >>> evaluate(model, [(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))])
    [0.5]
    """
    was = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = []
    for k, (x, y) in enumerate(sets):
        correct = 0
        least = chunks[k] * batch_size if chunks is not None else 0
        for i in range(0, max(len(y), least), batch_size):
            pred = model(x[i:i + batch_size].to(device, non_blocking=True)).argmax(1)
            correct += int((pred.cpu() == y[i:i + batch_size]).sum())
        out.append(correct / max(1, len(y)))
    model.train(was)
    return out


def run_unit(config: ExperimentConfig, unit: Unit, *, stop: _Stop | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run one learner on one seed's stream in ``unit.path``, from its checkpoint if it has one.

    Returns the run's summary (read from ``summary.json`` if the run is already complete).

    Raises
    ------
    Interrupted
        ``stop.is_set()`` became true; a checkpoint was written first.
    checkpoint.CheckpointError
        The checkpoint does not belong to this run (other config, model, learner or seed); the
        message names what differs.
    """
    summary_path = unit.path / "summary.json"
    complete, error = None, None
    if dist.is_main() and summary_path.is_file():
        try:
            complete = read_summary(summary_path)
        except RunDirError as err:
            error = str(err)
    complete, error = dist.broadcast((complete, error))  # rank 0's files decide, on every rank
    if error is not None:
        raise RunDirError(error)
    if complete is not None:
        return dict(complete)
    if dist.is_main():
        unit.path.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.run.threads)
    try:
        if config.experiment.kind == "ssl":  # self-supervised, unlabeled (UnitRun's subclass)
            from online_mas.experiment.ssl_run import SSLRun
            return SSLRun(config, unit).run(stop, progress)
        return _Run(config, unit).run(stop, progress)
    finally:
        torch.set_num_threads(threads)


class _Run:
    """The state of one unit while it runs (built fresh, then restored from a checkpoint)."""

    def __init__(self, config: ExperimentConfig, unit: Unit) -> None:
        self.config, self.unit = config, unit
        self.stream: Stream = self.make_stream()
        self.n = len(self.stream)
        self.device = resolve_device(config.run.device)
        self.precision = config.run.precision
        torch.manual_seed(unit.seed)
        self.model = self.make_model().to(self.device)
        # under torchrun: DistributedDataParallel, or the model sharded in place (run.parallel="fsdp")
        self.net = dist.wrap(self.model, config.run.parallel)
        self.sharded = any_sharded(list(self.model.parameters()))
        self.main = dist.is_main()  # the process that writes files
        self.distributed = dist.ranks()[1] > 1
        self._any_stop = False  # under torchrun: some rank was asked to stop (agreed every step)
        self._stop: _Stop | None = None
        self._progress = False
        self._log_file: Any = None  # metrics.jsonl while the loop runs (None on ranks > 0)
        self._t0 = self._elapsed0 = 0.0
        self.optimizer = build_optimizer(config.optim, self.model)
        self.scaler = grad_scaler(self.device, self.precision)  # "16-mixed" on CUDA only
        boundaries = [*self.stream.change_points, self.n]
        self.learner: Learner = self.make_learner(boundaries)
        self.record = self.make_record()
        self.eval_sets = list(self.stream.eval_sets)
        self.eval_at = frozenset(boundaries)  # steps done when a matrix row is evaluated
        self.segments = self.stream.truth.segments().tolist()
        self.order: list[int] | None = None
        if self.learner.iid:
            g = torch.Generator().manual_seed(unit.seed)
            self.order = torch.randperm(self.n, generator=g).tolist()
        # a sharded model: a torch.distributed.checkpoint directory, each rank writing its shards
        self.ckpt = unit.path / ("checkpoint.dcp" if self.sharded else "checkpoint.pt")
        self.metrics = unit.path / "metrics.jsonl"

    # -- what the kind builds (experiment.ssl_run.SSLRun builds its own) ---------------------

    def make_stream(self) -> Stream:
        """This seed's stream (labeled: the task loss reads ``y``)."""
        return build_stream(dataclasses.replace(self.config.stream, seed=self.unit.seed))

    def make_model(self) -> nn.Module:
        """The ``[model]`` network, on the CPU (the global generator was seeded)."""
        return build_model(self.config.model, self.stream.input_shape, self.stream.n_classes)

    def make_learner(self, boundaries: list[int]) -> Learner:
        """The unit's learner on ``self.model``."""
        return build_learner(self.unit.learner, self.config, self.model, boundaries,
                             seed=self.unit.seed)

    def make_record(self) -> Record:
        """What the run measures (checkpointed)."""
        return Record()

    def extend_summary(self, summary: dict[str, Any]) -> None:
        """Add the kind's own entries to the unit's ``summary.json`` (nothing here)."""

    # -- the loop (online_mas.experiment.loop.run_loop calls step, evaluate, log, end_step) ----

    def run(self, stop: _Stop | None, progress: bool) -> dict[str, Any]:
        if self.main:
            for tmp in self.unit.path.glob(f".{self.ckpt.name}.*.tmp"):  # a write cut short by a kill
                tmp.unlink(missing_ok=True)
        found = (self.ckpt / ".metadata").is_file() if self.sharded else self.main and self.ckpt.is_file()
        resume = found if self.sharded else dist.broadcast(found)
        start = self._restore() if resume else self._fresh()
        self._stop = stop
        self._progress = progress and self.main
        self._t0, self._elapsed0 = time.perf_counter(), self.record.elapsed
        opened = self.metrics.open("a", encoding="utf-8") if self.main else contextlib.nullcontext()
        with opened as log:
            self._log_file = log
            run_loop(self, self._batches(start), total=self.n, start=start,
                     log_every=self.config.run.log_every, eval_at=self.eval_at,
                     eval_every=self.config.run.eval_every, progress=self._progress,
                     desc=f"{self.unit.learner} seed {self.unit.seed}")
            self._tick()
            self._save(self.n, log)
        return self._finish()

    def step(self, i: int, batch: tuple[Tensor, Tensor]) -> dict[str, object]:
        """Predict batch ``i`` (this rank's slice), train on it; the log extras.

        A batch whose loss is not finite (nan/inf in the data) is not trained on and not counted;
        the learner still sees it. Under torchrun the ranks agree: one bad slice skips the step.
        """
        x, y = dist.shard(*batch)  # this rank's slice of the global batch
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        done = i + 1
        self.model.train()
        with autocast(self.device, self.precision):
            logits = self.net(x)
            loss = F.cross_entropy(logits, y)
        loss_value = loss.item()
        correct, n = int((logits.argmax(1) == y).sum()), int(y.numel())
        finite = math.isfinite(loss_value)
        if self.distributed:  # the global batch's numbers, bad slices, and whether a rank must stop
            asked = float(self._stop is not None and self._stop.is_set())
            loss_sum, correct_sum, n_sum, bad, stops = dist.reduce_sums(
                [loss_value * n if finite else 0.0, correct, n, float(not finite), asked])
            self._any_stop = stops > 0
            finite = bad == 0
        extra: dict[str, object] = {}
        if finite:
            self.optimizer.zero_grad(set_to_none=True)
            extra_loss = self.learner.extra_loss(x, y, logits)  # replay, distillation: else None
            total = loss if extra_loss is None else loss + extra_loss
            if self.scaler is None:
                total.backward()
                self.learner.after_backward()
                self.optimizer.step()
            else:  # the learner adds its penalty to the unscaled task gradient
                self.scaler.scale(total).backward()
                self.scaler.unscale_(self.optimizer)
                self.learner.after_backward()
                self.scaler.step(self.optimizer)  # skipped if the scaled gradient overflowed
                self.scaler.update()
            if self.distributed:
                self.record.add(loss=loss_sum / max(1.0, n_sum), correct=round(correct_sum),
                                n=round(n_sum))
            else:
                self.record.add(loss=loss_value, correct=correct, n=n)
        else:  # a corrupted batch (nan/inf): no update, not counted; the learner still sees it
            extra["skipped"] = "non-finite loss"
        event = self.learner.after_step(x, loss_value)
        if event is not None:
            self.record.events.append({"step": done, "batch": i, "reason": event.reason,
                                       "stats": dict(event.stats)})
            extra["event"] = event.reason
        return extra

    def evaluate(self, done: int, at_segment_end: bool) -> dict[str, object]:
        accs = self._evaluate()
        if self.record.curve is not None:
            self.record.curve.append((done, accs))
        if at_segment_end:  # a row of the accuracy matrix
            self.record.rows.append(accs)
            self.record.row_steps.append(done)
        return {"eval": accs}

    def log(self, i: int, extras: dict[str, object]) -> dict[str, object]:
        self._tick()
        line = self._log(self._log_file, i, extras)
        if not self._progress:
            return {}
        return {"snapshots": len(self.record.events), "acc": f"{line.get('accuracy', math.nan):.2f}",
                "smp_s": f"{self.record.seen / max(1e-9, self.record.elapsed):.0f}"}

    def end_step(self, done: int) -> None:
        self._tick()
        if done == self.n:
            return
        stopping = self._any_stop if self.distributed else self._stop is not None and self._stop.is_set()
        if stopping:
            self._save(done, self._log_file)
            raise Interrupted(f"{self.unit.learner} seed {self.unit.seed} stopped at step "
                              f"{done} of {self.n}; checkpoint {self.ckpt}")
        every = self.config.run.checkpoint_every
        if every and done % every == 0:
            self._save(done, self._log_file)

    def _tick(self) -> None:
        self.record.elapsed = self._elapsed0 + time.perf_counter() - self._t0

    def _log(self, log: Any, i: int, extra: dict[str, object]) -> dict[str, object]:
        segment = self.segments[self.order[i] if self.order is not None else i]
        line = self.record.line(step=i + 1, segment=segment, **self.learner.log_values(),
                                snapshots=len(self.record.events), **extra,
                                time=round(self.record.elapsed, 3))
        if log is not None:
            log.write(json.dumps(line) + "\n")
        return line

    def _evaluate(self) -> list[float]:
        """Held-out accuracy per segment; under torchrun each rank counts its slice of each set."""
        if dist.ranks()[1] == 1:
            with autocast(self.device, self.precision):
                return evaluate(self.model, self.eval_sets)
        shards = [dist.shard(x, y) for x, y in self.eval_sets]
        # a sharded model's forward is a collective: as many on every rank (rank 0's slice is longest)
        longest = [-(-len(y) // dist.ranks()[1]) for _, y in self.eval_sets]
        chunks = [-(-n // 1024) for n in longest]
        with autocast(self.device, self.precision):
            accs = evaluate(self.model, shards, chunks=chunks if self.sharded else None)  # type: ignore[arg-type]
        sizes = [float(len(y)) for _, y in shards]
        sums = dist.reduce_sums([a * s for a, s in zip(accs, sizes, strict=True)] + sizes)
        k = len(sizes)
        return [round(c) / max(1.0, t) for c, t in zip(sums[:k], sums[k:], strict=True)]

    def _batches(self, start: int) -> Iterator[tuple[int, tuple[Tensor, Tensor]]]:
        if self.order is None:
            self.stream.seek(start)
            for i, batch in enumerate(self.stream, start):
                yield i, batch  # type: ignore[misc]
            return
        for i in range(start, self.n):
            x, y = self.stream.batch(self.order[i])
            self.stream.seek(i + 1)
            yield i, (x, y)

    def _finish(self) -> dict[str, Any]:
        imp = self.learner.importance()
        if imp is not None and self.sharded:  # gathered on every rank (a collective)
            imp = {k: full(v) for k, v in imp.items()}
        if imp is not None and self.main:
            checkpoint.save({k: v.detach().cpu() for k, v in imp.items()},
                            self.unit.path / "importance.pt")
        detect = self.unit.learner in DETECTING
        summary = summarize(self.record, learner=self.unit.learner, seed=self.unit.seed,
                            iid=self.learner.iid, stream=self.config.stream.name, n_steps=self.n,
                            batch_size=self.stream.batch_size,
                            change_points=self.stream.change_points,
                            order=self.stream.truth.order,
                            segment_names=self.stream.truth.segment_names, importance=imp, detect=detect,
                            tolerance=self.config.experiment.detect_tolerance,
                            stored_samples=self.learner.stored_samples(), device=str(self.device),
                            layer_types=layer_types(self.model),
                            signal=self._signal_name() if detect else None)
        self.extend_summary(summary)
        if not self.main:
            return summary
        if self.config.run.plots:
            draw_unit_plots(self.unit.path, summary)
        write_text(self.unit.path / "summary.json", json.dumps(summary, indent=1) + "\n")
        return summary

    def _signal_name(self) -> str | None:
        """The signal the learner's detector watches (``[learner.<name>.mas] signal``), if any."""
        options = getattr(self.config.learner, self.unit.learner.replace("-", "_").replace("+", "_"),
                          None)
        signal = getattr(getattr(options, "mas", None), "signal", None)
        return signal if isinstance(signal, str) else None

    # -- checkpoints -----------------------------------------------------------------------

    def _fresh(self) -> int:
        self.record.initial = self._evaluate()
        if self.main:
            write_text(self.metrics, "")
        return 0

    def _identity(self) -> dict[str, Any]:
        cfg = config_to_dict(self.config)
        run = cfg.pop("run", {})  # how it runs does not change what it computes, but for precision
        cfg["run"] = {"precision": run.get("precision", "32")}
        return cfg

    def _save(self, done: int, log: Any) -> None:
        learner_state = self.learner.state_dict()  # on every rank: may all-reduce (sync_every > 1)
        if self.sharded:
            self._save_sharded(done, log, learner_state)
            return
        if not self.main:
            return
        log.flush()
        os.fsync(log.fileno())
        checkpoint.save({
            "kind": _CKPT_KIND, "version": _CKPT_VERSION, "learner": self.unit.learner,
            "seed": self.unit.seed, "step": done, "n_steps": self.n, "config": self._identity(),
            "model_signature": model_signature(self.model), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "learner_state": learner_state,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "stream": self.stream.state_dict(), "rng": _rng_state(self.device),
            "record": self.record.state_dict(), "metrics_bytes": log.tell(),
        }, self.ckpt)

    def _save_sharded(self, done: int, log: Any, learner_state: dict[str, object]) -> None:
        """Every rank writes its shards of the model, optimizer and learner state (DCP); the rest
        is rank 0's (:func:`~online_mas.save_sharded`)."""
        from torch.distributed.checkpoint import state_dict as dcp_state

        if self.main:
            log.flush()
            os.fsync(log.fileno())
        save_sharded({
            "kind": _CKPT_KIND, "version": _CKPT_VERSION, "learner": self.unit.learner,
            "seed": self.unit.seed, "step": done, "n_steps": self.n, "config": self._identity(),
            "model_signature": model_signature(self.model),
            "model": dcp_state.get_model_state_dict(self.model),
            "optimizer": dcp_state.get_optimizer_state_dict(self.model, self.optimizer),
            "learner_state": learner_state, "scaler": None, "stream": self.stream.state_dict(),
            "rng": _rng_state(self.device), "record": self.record.state_dict(),
            "metrics_bytes": log.tell() if self.main else 0,
        }, self.ckpt)

    def _read(self) -> tuple[dict[str, object] | None, str | None]:
        """The checkpoint: read by rank 0 and sent to the others, or (sharded) by every rank."""
        state: dict[str, object] | None = None
        error: str | None = None
        if self.sharded:
            try:
                state = load_sharded(self.ckpt, self.model)
            except (OSError, ValueError, RuntimeError) as err:
                error = (f"{self.ckpt} could not be read: {err}; delete it to restart this run "
                         f"(learner {self.unit.learner}, seed {self.unit.seed}) from scratch")
            return state, error
        if self.main:  # rank 0 reads the checkpoint and sends it to the other ranks
            try:
                state = checkpoint.load(self.ckpt)
            except checkpoint.CheckpointError as err:
                error = (f"{err}; delete it to restart this run (learner {self.unit.learner}, seed "
                         f"{self.unit.seed}) from scratch")
        return dist.broadcast((state, error))

    def _restore(self) -> int:
        where = str(self.ckpt)
        state, error = self._read()
        if error is not None or state is None:
            raise checkpoint.CheckpointError(error or f"{where} could not be read")
        if state.get("kind") != _CKPT_KIND or state.get("version") != _CKPT_VERSION:
            raise checkpoint.CheckpointError(f"{where} is not a run checkpoint of this online-mas "
                                             f"(kind {state.get('kind')!r}, version "
                                             f"{state.get('version')!r})")
        if (state.get("learner"), state.get("seed")) != (self.unit.learner, self.unit.seed):
            raise checkpoint.CheckpointError(
                f"{where} belongs to learner {state.get('learner')!r} seed {state.get('seed')!r}, "
                f"not to {self.unit.learner!r} seed {self.unit.seed}")
        recorded = state.get("config")
        if isinstance(recorded, dict) and "run" not in recorded:  # written before run.precision existed
            recorded = {**recorded, "run": {"precision": "32"}}
        diff = config_diff(recorded, self._identity(), labels=("checkpoint", "config.toml"))
        if diff:
            raise checkpoint.CheckpointError(
                f"{where} was written with a different config than {self.unit.path.parent.parent}"
                f"/config.toml: " + "; ".join(diff))
        saved_sig = state.get("model_signature")
        mine = model_signature(self.model)
        if saved_sig != mine:
            saved = saved_sig if isinstance(saved_sig, dict) else {}
            shapes = [f"{k}: checkpoint {saved[k]}, model {mine[k]}" for k in mine
                      if k in saved and saved[k] != mine[k]]
            raise checkpoint.CheckpointError(
                f"{where} was written for a different model: missing {sorted(set(mine) - set(saved))}, "
                f"unexpected {sorted(set(saved) - set(mine))}, shape mismatches {shapes}")
        try:
            if self.sharded:
                from torch.distributed.checkpoint import state_dict as dcp_state

                dcp_state.set_model_state_dict(self.model, state["model"])  # type: ignore[arg-type]
                dcp_state.set_optimizer_state_dict(self.model, self.optimizer,
                                                   state["optimizer"])  # type: ignore[arg-type]
            else:
                self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
                self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
            self.learner.load_state_dict(state["learner_state"])  # type: ignore[arg-type]
            self.stream.load_state_dict(state["stream"])  # type: ignore[arg-type]
            self.record.load_state_dict(state["record"])  # type: ignore[arg-type]
            scaler = state.get("scaler")
            if self.scaler is not None and isinstance(scaler, dict):
                self.scaler.load_state_dict(scaler)
        except (ValueError, TypeError, KeyError, RuntimeError) as err:
            raise checkpoint.CheckpointError(f"{where} does not fit this run: {err}") from None
        _set_rng_state(state["rng"], self.device)  # type: ignore[arg-type]
        size = int(state["metrics_bytes"])  # type: ignore[call-overload]
        if not self.main:
            return int(state["step"])  # type: ignore[call-overload]
        if not self.metrics.is_file() or self.metrics.stat().st_size < size:
            raise checkpoint.CheckpointError(f"{self.metrics} is shorter than when {where} was "
                                             "written; the run directory was changed")
        with self.metrics.open("r+b") as fh:
            fh.truncate(size)  # drop the lines logged after the checkpoint
        return int(state["step"])  # type: ignore[call-overload]


#: The state of one unit while it runs, for the kinds that extend it (``experiment.ssl_run``).
UnitRun = _Run


def _rng_state(device: torch.device) -> dict[str, object]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, object] = {
        "torch": torch.get_rng_state(), "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}}
    if device.type == "cuda":  # dropout on the GPU draws from the device's generator
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and isinstance(state.get("cuda"), torch.Tensor):
        torch.cuda.set_rng_state(state["cuda"], device)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
