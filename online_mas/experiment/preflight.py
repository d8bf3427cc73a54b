"""Check a whole config before anything is written: build what its runs build, then drop it.

The dataclasses of :mod:`~online_mas.experiment.config` check each value on its own. What depends
on the data (a batch bigger than a segment, a segment order naming a segment that does not exist,
unreadable data files), on the combination (detector arguments the detector refuses) or on a
library's limits (a seed torch cannot take) is known only once the stream, the model, the optimizer
and the learners are built. :func:`preflight` builds them once per seed, before the run directory is
created, so a bad value is an error (exit 2) and not a traceback in a half-made run directory. It
also checks that ``run.device`` is on this machine and ``run.precision`` runs there, and that
the model (a ``model.factory`` is imported and called) takes the stream's inputs and gives one
logit per class.
"""

from __future__ import annotations

import dataclasses

import torch

from online_mas.experiment import dist
from online_mas.experiment.config import ExperimentConfig
from online_mas.experiment.configio import ConfigError
from online_mas.experiment.device import check_precision, resolve_device
from online_mas.experiment.learners import build_learner
from online_mas.experiment.models import build_model, check_model
from online_mas.experiment.run import build_optimizer
from streams import build_stream

__all__ = ["preflight"]

_ERRORS = (ValueError, TypeError, OverflowError, RuntimeError, OSError)


def preflight(config: ExperimentConfig) -> None:
    """Build every seed's stream, and the model, optimizer and learners of the first; keep nothing.

    The global RNG states are left as they were.

    Raises
    ------
    ConfigError
        Something cannot be built; the message names the section and the reason.

    Examples
    --------
    >>> from online_mas.experiment import load_config
    >>> preflight(load_config(None, ["stream.batch_size=100000"]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    online_mas.experiment.configio.ConfigError: [stream] (seed 0): batch_size must be at most the ...
    """
    _check_run(config)
    seeds = config.experiment.seeds
    with torch.random.fork_rng(devices=[]):
        for i, seed in enumerate(seeds):
            try:
                torch.Generator().manual_seed(seed)
                stream = build_stream(dataclasses.replace(config.stream, seed=seed))
            except _ERRORS as err:
                raise ConfigError(f"[stream] (seed {seed}): {err}") from None
            if i or config.experiment.kind == "adapt":
                continue
            if config.experiment.kind == "ssl":  # an encoder with the objective's heads
                from online_mas.experiment.ssl_run import check_ssl
                try:
                    check_ssl(config, stream)
                except _ERRORS as err:
                    raise ConfigError(str(err)) from None
                continue
            try:
                model = build_model(config.model, stream.input_shape, stream.n_classes)
                check_model(model, stream.input_shape, stream.n_classes)
            except _ERRORS as err:
                raise ConfigError(f"[model]: {err}") from None
            try:
                build_optimizer(config.optim, model)
            except _ERRORS as err:
                raise ConfigError(f"[optim]: {err}") from None
            boundaries = [*stream.change_points, len(stream)]
            for name in config.experiment.learners:
                try:  # a fresh model each: a learner may hook into it
                    build_learner(name, config, build_model(config.model, stream.input_shape,
                                                            stream.n_classes), boundaries)
                except _ERRORS as err:
                    raise ConfigError(f"[learner.{name}]: {err}") from None


def _check_run(config: ExperimentConfig) -> None:
    run = config.run
    try:
        if config.experiment.kind == "adapt":
            if run.device not in ("auto", "cpu") or run.precision != "32":
                raise ValueError(f"experiment.kind = 'adapt' runs on the CPU in float32: device must "
                                 f"be 'auto' or 'cpu' and precision '32', got {run.device!r} and "
                                 f"{run.precision!r}")
            return
        if run.parallel == "fsdp":
            others = [n for n in config.experiment.learners if n not in dist.FSDP_LEARNERS]
            if others:
                raise ValueError(f"run.parallel = 'fsdp' runs the learners {dist.FSDP_LEARNERS}, whose "
                                 f"state is sharded with the model; got {others}: use 'ddp' for them")
            if run.precision != "32":
                raise ValueError(f"run.parallel = 'fsdp' runs in precision '32', got {run.precision!r}")
        if dist.launched() and run.device.startswith("cuda:"):
            raise ValueError(f"under torchrun each rank takes cuda:LOCAL_RANK: device must be 'auto' "
                             f"or 'cuda', got {run.device!r}")
        check_precision(run.precision, resolve_device(run.device))
    except ValueError as err:
        raise ConfigError(f"[run]: {err}") from None
