"""The experiment runner behind ``online-mas run`` and ``online-mas report``.

- :mod:`~online_mas.experiment.config`: the dataclasses of a config (the defaults are the
  embedded default experiment); :mod:`~online_mas.experiment.configio`: TOML in and out.
- :mod:`~online_mas.experiment.registry`: every name a config may use (learners, models,
  optimizers, penalty forms, detectors, adapt methods) and what it builds.
- :mod:`~online_mas.experiment.models`: MLP, small CNN, or a model factory of your own.
- :mod:`~online_mas.experiment.device`: ``run.device`` and ``run.precision`` (autocast, scaler).
- :mod:`~online_mas.experiment.learners`: fine-tuning, online MAS, MAS at the true boundaries,
  L2, online EWC, joint training.
- :mod:`~online_mas.experiment.loop`: the run loop of both kinds (step, evaluate, log, progress).
- :mod:`~online_mas.experiment.run`: one learner on one seed: its steps, checkpoints, resume.
- :mod:`~online_mas.experiment.adapt_run`: experiments of kind ``"adapt"``.
- :mod:`~online_mas.experiment.ssl_run`: experiments of kind ``"ssl"`` (self-supervised, unlabeled),
  with :mod:`~online_mas.experiment.ssl_learners`, :mod:`~online_mas.experiment.augment` and
  :mod:`~online_mas.experiment.probes`.
- :mod:`~online_mas.experiment.launch`: many runs, in sequence or in worker processes; Ctrl-C.
- :mod:`~online_mas.experiment.dist`: ``online-mas run`` under ``torchrun`` (data parallel, rank 0
  writes).
- :mod:`~online_mas.experiment.rundir`: the layout of a run directory, overwrite protection.
- :mod:`~online_mas.experiment.record`, :mod:`~online_mas.experiment.plots`,
  :mod:`~online_mas.experiment.report`: measurements, PNG plots, comparison tables.
"""

from __future__ import annotations

from online_mas.experiment.config import ExperimentConfig
from online_mas.experiment.configio import ConfigError, dump_toml, load_config
from online_mas.experiment.launch import run_experiment, run_units
from online_mas.experiment.registry import LEARNERS
from online_mas.experiment.report import comparison_table, final_accuracy_table, report_runs
from online_mas.experiment.run import Interrupted, run_unit
from online_mas.experiment.rundir import RunDirError, Unit, create_run_dir, open_run_dir, units

__all__ = [
    "LEARNERS",
    "ConfigError",
    "ExperimentConfig",
    "Interrupted",
    "RunDirError",
    "Unit",
    "comparison_table",
    "create_run_dir",
    "dump_toml",
    "final_accuracy_table",
    "load_config",
    "open_run_dir",
    "report_runs",
    "run_experiment",
    "run_unit",
    "run_units",
    "units",
]
