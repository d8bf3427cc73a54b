"""Check a whole config before anything is written: build what its runs build, then drop it.

The dataclasses of :mod:`~online_mas.experiment.config` check each value on its own. What depends
on the data (a batch bigger than a segment, a segment order naming a segment that does not exist,
unreadable data files), on the combination (detector arguments the detector refuses) or on a
library's limits (a seed torch cannot take) is known only once the stream, the model, the optimizer
and the learners are built. :func:`preflight` builds them once per seed, before the run directory is
created, so a bad value is an error (exit 2) and not a traceback in a half-made run directory.
"""

from __future__ import annotations

import dataclasses

import torch

from online_mas.experiment.config import ExperimentConfig
from online_mas.experiment.configio import ConfigError
from online_mas.experiment.learners import build_learner
from online_mas.experiment.models import build_model
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
    seeds = config.experiment.seeds
    with torch.random.fork_rng(devices=[]):
        for i, seed in enumerate(seeds):
            try:
                torch.Generator().manual_seed(seed)
                stream = build_stream(dataclasses.replace(config.stream, seed=seed))
            except _ERRORS as err:
                raise ConfigError(f"[stream] (seed {seed}): {err}") from None
            if i or config.experiment.kind != "continual":
                continue
            try:
                model = build_model(config.model, stream.input_shape, stream.n_classes)
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
