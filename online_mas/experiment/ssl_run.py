"""Experiments of kind ``"ssl"``: learn a representation from an unlabeled stream, probe it per segment.

One unit (a learner on one seed's stream) runs in the runner's loop, run directory, checkpoints
and summaries (:class:`SSLRun` extends :data:`~online_mas.experiment.run.UnitRun`); what differs:

- the stream is built with ``labels=False``: training sees inputs only;
- the model is an :class:`~online_mas.experiment.ssl_learners.SSLNet` (the ``[model]`` encoder and
  the heads of ``[ssl] objective``); each step trains the self-supervised loss of the batch (LUMP:
  of the batch mixed with its memory), then the learner's penalty and consolidation as in the
  labeled kind (online MAS's importance and detector signal come from the embedding);
- an evaluation (at each true segment end, at the start, and every ``run.eval_every`` steps)
  embeds every segment's training samples and held-out set and fits two probes per segment
  (:mod:`~online_mas.experiment.probes`): the k-NN accuracy fills the accuracy matrix (so ACC,
  BWT, forgetting and the continual-evaluation metrics of ``summary.json`` are those of the
  k-NN probe) and the linear (ridge) probe's go under ``"linear_probe"``. The probes are the only
  code that reads a label. There is no prequential accuracy (``null``).

``metrics.jsonl`` lines carry ``eval`` (k-NN) and ``eval_linear`` at evaluations and the SSL loss
as ``loss``. A run resumes from its checkpoint as a labeled one does (torch's global generator,
which draws the views, is in it). One process only: not under ``torchrun``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from online_mas.experiment import dist
from online_mas.experiment.config import ExperimentConfig
from online_mas.experiment.device import autocast
from online_mas.experiment.learners import Learner
from online_mas.experiment.probes import knn_accuracy, ridge_accuracy
from online_mas.experiment.record import Record, curve_metrics, matrix_metrics
from online_mas.experiment.run import UnitRun, build_optimizer
from online_mas.experiment.rundir import Unit
from online_mas.experiment.ssl_learners import LUMP, SSLNet, build_ssl_learner, ssl_loss
from streams import Stream, build_stream

__all__ = ["SSLRecord", "SSLRun", "check_ssl", "probe_accuracies", "probe_train_sets"]


class SSLRecord(Record):
    """The k-NN probe's measurements (the :class:`Record` itself) and the linear probe's (``linear``).

    Log lines carry no accuracy (there are no predictions of labels during training).

    Examples
    --------
    >>> r = SSLRecord()
    >>> r.add(loss=-0.5, correct=0, n=32)
    >>> r.line(step=1)
    {'step': 1, 'loss': -0.5}
    >>> r.linear.rows.append([0.5])
    >>> s = SSLRecord()
    >>> s.load_state_dict(r.state_dict())
    >>> s.linear.rows, s.seen
    ([[0.5]], 32)
    """

    def __init__(self) -> None:
        super().__init__()
        self.linear = Record()  # only initial, rows, row_steps and curve are used

    def line(self, *, step: int, **extra: object) -> dict[str, object]:
        out = super().line(step=step, **extra)
        out.pop("accuracy", None)
        out.pop("prequential", None)
        return out

    def state_dict(self) -> dict[str, object]:
        return {**super().state_dict(), "linear": self.linear.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.linear.load_state_dict(state["linear"])


def probe_train_sets(stream: Stream, cap: int | None, *, seed: int) -> list[tuple[Tensor, Tensor]]:
    """Per segment, the training samples and labels the probes fit on (all, or a seeded ``cap``).

    Examples
    --------
    >>> from streams import make_stream
    >>> sets = probe_train_sets(make_stream("permuted-digits", labels=False), 100, seed=0)
    >>> len(sets), tuple(sets[1][0].shape), sets[1][1].dtype
    (5, (100, 1, 8, 8), torch.int64)
    """
    out = []
    for k, seg in enumerate(stream.segments):
        pos = torch.arange(seg.n_train)
        if cap is not None and cap < seg.n_train:
            g = torch.Generator().manual_seed(seed * 1009 + k)
            pos = torch.randperm(seg.n_train, generator=g)[:cap].sort().values
        gen = torch.Generator().manual_seed(seed * 1013 + k)  # a stochastic transform's draws
        out.append(seg.fetch(pos, generator=gen))
    return out


@torch.no_grad()
def probe_accuracies(encoder: nn.Module, train: list[tuple[Tensor, Tensor]],
                     test: list[tuple[Tensor, Tensor]], *, k: int, ridge: float,
                     batch_size: int = 1024) -> tuple[list[float], list[float]]:
    """k-NN and linear-probe accuracy per segment of ``encoder``'s embeddings (eval mode, restored).

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    >>> y = torch.tensor([0, 1, 0, 1])
    >>> probe_accuracies(torch.nn.Identity(), [(x, y)], [(x, y)], k=1, ridge=0.0)
    ([1.0], [1.0])
    """
    was = encoder.training
    encoder.eval()
    device = next((p.device for p in encoder.parameters()), torch.device("cpu"))

    def embed(x: Tensor) -> Tensor:
        return torch.cat([encoder(x[i:i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(x), batch_size)]).flatten(1)

    knn, linear = [], []
    try:
        for (x_tr, y_tr), (x_te, y_te) in zip(train, test, strict=True):
            z_tr, z_te = embed(x_tr), embed(x_te)
            knn.append(knn_accuracy(z_tr, y_tr, z_te, y_te, k=k))
            linear.append(ridge_accuracy(z_tr, y_tr, z_te, y_te, ridge=ridge))
    finally:
        encoder.train(was)
    return knn, linear


class SSLRun(UnitRun):
    """One learner on one seed's unlabeled stream (module docstring)."""

    def __init__(self, config: ExperimentConfig, unit: Unit) -> None:
        if config.experiment.kind != "ssl":
            raise ValueError(f"SSLRun needs experiment.kind = 'ssl', got {config.experiment.kind!r}")
        if dist.ranks()[1] > 1:
            raise ValueError("experiment.kind = 'ssl' runs in one process; start it without torchrun")
        self.augment = config.ssl.augmentation()
        super().__init__(config, unit)
        self.probe_train = probe_train_sets(self.stream, config.ssl.probe_train, seed=unit.seed)
        self._linear: list[float] = []  # the linear probe's accuracies of the last evaluation

    # -- what the kind builds ------------------------------------------------------------------

    def make_stream(self) -> Stream:
        return build_stream(dataclasses.replace(self.config.stream, seed=self.unit.seed, labels=False))

    def make_model(self) -> nn.Module:
        return SSLNet.build(self.config.model, self.config.ssl, self.stream.input_shape)

    def make_learner(self, boundaries: list[int]) -> Learner:
        return build_ssl_learner(self.unit.learner, self.config, self.model,  # type: ignore[arg-type]
                                 boundaries, seed=self.unit.seed)

    def make_record(self) -> Record:
        return SSLRecord()

    # -- the loop -------------------------------------------------------------------------------

    def step(self, i: int, batch: Any) -> dict[str, object]:
        """Train the self-supervised loss on batch ``i`` (inputs only), then the learner's part."""
        if not isinstance(batch, Tensor):
            raise TypeError(f"an ssl run trains on unlabeled batches (a tensor), got {type(batch)!r}")
        x = batch.to(self.device, non_blocking=True)
        self.model.train()
        inputs = self.learner.mix(x) if isinstance(self.learner, LUMP) else x
        with autocast(self.device, self.precision):
            loss = ssl_loss(self.model, inputs, self.config.ssl.objective,  # type: ignore[arg-type]
                            self.augment)
        loss_value = loss.item()
        extra: dict[str, object] = {}
        if math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is None:
                loss.backward()
                self.learner.after_backward()
                self.optimizer.step()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
                self.learner.after_backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            self.record.add(loss=loss_value, correct=0, n=int(x.shape[0]))
        else:  # a corrupted batch (nan/inf): no update, not counted; the learner still sees it
            extra["skipped"] = "non-finite loss"
        event = self.learner.after_step(x, loss_value)
        if event is not None:
            self.record.events.append({"step": i + 1, "batch": i, "reason": event.reason,
                                       "stats": dict(event.stats)})
            extra["event"] = event.reason
        return extra

    def evaluate(self, done: int, at_segment_end: bool) -> dict[str, object]:
        out = super().evaluate(done, at_segment_end)  # the k-NN accuracies, via _evaluate
        linear: Record = self.record.linear  # type: ignore[attr-defined]
        if linear.curve is not None:
            linear.curve.append((done, list(self._linear)))
        if at_segment_end:
            linear.rows.append(list(self._linear))
            linear.row_steps.append(done)
        return {**out, "eval_linear": list(self._linear)}

    def _evaluate(self) -> list[float]:
        with autocast(self.device, self.precision):
            knn, self._linear = probe_accuracies(
                self.model.encoder, self.probe_train, self.eval_sets,  # type: ignore[arg-type]
                k=self.config.ssl.knn_k, ridge=self.config.ssl.ridge)
        return knn

    def _fresh(self) -> int:
        start = super()._fresh()
        self.record.linear.initial = list(self._linear)  # type: ignore[attr-defined]
        return start

    def _batches(self, start: int) -> Iterator[tuple[int, Any]]:
        if self.order is None:
            self.stream.seek(start)
            yield from enumerate(self.stream, start)
            return
        for i in range(start, self.n):  # joint: the same batches in a seeded random order
            x = self.stream.batch(self.order[i])
            self.stream.seek(i + 1)
            yield i, x

    def extend_summary(self, summary: dict[str, Any]) -> None:
        linear: Record = self.record.linear  # type: ignore[attr-defined]
        rows = linear.rows
        square = bool(rows) and len(rows) == len(rows[0]) and all(len(r) == len(rows) for r in rows)
        iid = self.learner.iid
        summary.update({
            "kind": "ssl", "objective": self.config.ssl.objective, "probe": "knn",
            "prequential_accuracy": None,
            "linear_probe": {
                "initial_accuracy": list(linear.initial), "accuracy_matrix": [list(r) for r in rows],
                "final_accuracy": list(rows[-1]) if rows else [],
                **matrix_metrics(rows, linear.initial, iid=iid),
                **curve_metrics(linear.curve, self.stream.change_points, square=square, iid=iid)},
        })


def check_ssl(config: ExperimentConfig, stream: Stream) -> None:
    """Build an ssl experiment's network, optimizer and learners once (the runner's preflight).

    Raises ValueError or TypeError naming the section that cannot be built.
    """
    try:
        net = SSLNet.build(config.model, config.ssl, stream.input_shape)
        with torch.no_grad():
            z = net.eval()(torch.zeros(2, *stream.input_shape))
        if z.shape != (2, config.ssl.embed_dim):
            raise ValueError(f"the encoder must map inputs of shape {stream.input_shape} to "
                             f"{config.ssl.embed_dim} features (ssl.embed_dim), got {tuple(z.shape[1:])}")
        build_optimizer(config.optim, net)
    except (ValueError, TypeError, RuntimeError) as err:
        raise ValueError(f"[model]/[ssl]: {err}") from None
    boundaries = [*stream.change_points, len(stream)]
    for name in config.experiment.learners:
        try:
            build_ssl_learner(name, config, SSLNet.build(config.model, config.ssl, stream.input_shape),
                              boundaries)
        except (ValueError, TypeError, RuntimeError) as err:
            raise ValueError(f"[learner.{name}]: {err}") from None
