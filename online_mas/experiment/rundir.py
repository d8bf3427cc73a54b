"""Run directories: where an experiment's files go, and the guard against overwriting them.

Layout of a run directory::

    RUN_DIR/
      config.toml               the resolved config (rerun it with ``online-mas run config.toml``)
      summary.json              every run's results and the mean/std per learner
      comparison.md             the comparison table
      <learner>/seed<k>/
        metrics.jsonl           one line per logged step (every run.log_every steps, and at each
                                evaluation and consolidation): step, segment (the true one, for
                                plots), loss and accuracy (prequential: predicted before the
                                update, mean since the previous line), prequential (cumulative),
                                penalty, signal (online MAS's detector input), snapshots, event,
                                eval (held-out accuracy per segment), time (elapsed seconds)
        checkpoint.pt           model, optimizer, learner (OnlineMAS + detector), stream cursor,
                                RNG states and the measurements so far; written atomically
        importance.pt           the final importance per parameter (learners that have one)
        summary.json            accuracy matrix and metrics, prequential accuracy, events,
                                detection scores, importance statistics, timing
        plots/*.png             accuracy_matrix, stream_accuracy, importance

A run directory is recognised by its ``config.toml``. Creating one where a non-empty folder
exists is an error unless ``force`` is given, and even then only a run directory is replaced.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from online_mas.experiment.config import ExperimentConfig
from online_mas.experiment.configio import ConfigError, dump_toml, load_config

__all__ = ["RunDirError", "Unit", "continue_or_create", "create_run_dir", "open_run_dir", "units",
           "write_text"]


class RunDirError(ValueError):
    """A run directory is missing, is not a run, or exists where a new run would overwrite it."""


@dataclass(frozen=True)
class Unit:
    """One run of an experiment: a learner on the stream of one seed, in its own folder."""

    learner: str  # one of LEARNERS
    seed: int  # the stream's and the model's seed
    path: Path  # RUN_DIR/<learner>/seed<seed>


def units(config: ExperimentConfig, run_dir: str | Path) -> list[Unit]:
    """The runs of an experiment, learner-major (every seed of the first learner first).

    Examples
    --------
    >>> [f"{u.learner}/{u.path.name}" for u in units(ExperimentConfig(), "runs/x")]
    ['finetune/seed0', 'online-mas/seed0', 'mas-oracle/seed0']
    """
    root = Path(run_dir)
    return [Unit(name, seed, root / name / f"seed{seed}")
            for name in config.experiment.learners for seed in config.experiment.seeds]


# --------------------------------------------------------------------------- run directories


def create_run_dir(config: ExperimentConfig, out: str | Path | None = None, *,
                   force: bool = False) -> tuple[Path, ExperimentConfig]:
    """Create the run directory and write the resolved ``config.toml`` into it.

    The directory is ``out``, else ``config.run.out_dir``, else ``runs/<name>-<date>-<time>``.
    An existing non-empty directory is an error unless ``force`` is set, and even then only a
    run directory (one with a ``config.toml``) is deleted and replaced.

    Returns
    -------
    (Path, ExperimentConfig)
        The directory and the config with ``run.out_dir`` resolved to it.
    """
    if out is None or str(out) == "":
        out = config.run.out_dir or f"runs/{config.experiment.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{str(path)!r} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if not force:
            raise RunDirError(f"run directory {str(path)!r} already exists; pass --force to replace "
                              f"it, or continue it with: online-mas run --resume {path}")
        if not (path / "config.toml").is_file():
            raise RunDirError(f"{str(path)!r} is not empty and is not an online-mas run directory "
                              "(no config.toml): refusing to delete it, even with --force")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, out_dir=str(path)))
    header = f"online-mas run config (resolved); rerun: online-mas run {path}/config.toml --out NEW_DIR"
    if config.experiment.kind == "continual":  # adapt runs write no checkpoints
        header += f"; continue: online-mas run --resume {path}"
    write_text(path / "config.toml", dump_toml(config, header=header))
    return path, config


def open_run_dir(run_dir: str | Path) -> ExperimentConfig:
    """The config of an existing run directory, for ``--resume`` and ``report``.

    Raises
    ------
    RunDirError
        The directory does not exist or has no ``config.toml``.
    ConfigError
        Its ``config.toml`` is not a valid config.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"run directory {str(path)!r} does not exist")
    if not (path / "config.toml").is_file():
        raise RunDirError(f"{str(path)!r} is not an online-mas run directory: it has no config.toml")
    try:
        return load_config(path / "config.toml")
    except ConfigError as err:
        raise ConfigError(f"{path}/config.toml is not a valid run config: {err}") from None


def continue_or_create(config: ExperimentConfig, run_dir: str | Path, *,
                       fresh: bool = False) -> tuple[Path, ExperimentConfig]:
    """The run directory of a script's experiment: continue it if it holds this config, else create it.

    Runs already finished in a continued directory are kept (the scripts skip them); ``fresh``
    replaces the directory. A directory holding another config (``run`` settings aside) is an error.
    """
    path = Path(run_dir)
    if path.is_dir() and not fresh and (path / "config.toml").is_file():
        previous = open_run_dir(path)
        if previous != dataclasses.replace(config, run=previous.run):
            raise RunDirError(f"{path} holds runs of another config; pass --fresh to replace it")
        return path, previous
    return create_run_dir(config, path, force=fresh)


# --------------------------------------------------------------------------- experiment


def write_text(path: Path, text: str) -> None:
    """Write a small text file atomically (temporary file, flush, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
