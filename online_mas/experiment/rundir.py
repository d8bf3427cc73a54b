"""Run directories: where an experiment's files go, and the guard against overwriting them.

Layout of a run directory::

    RUN_DIR/
      .online-mas-run           marker (JSON): proves a run directory, records its config
      .online-mas.lock          flock-ed by the process that writes the directory
      config.toml               the resolved config (rerun it with ``online-mas run config.toml``)
      summary.json              every run's results and the mean/std per learner
      comparison.md             the comparison table
      comparison-*.png, .svg    the comparison figures of ``online-mas report``
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

A run directory is recognised by its marker ``.online-mas-run`` (JSON), written first when the
directory is created; it also records the config the runs compute with (all but ``[run]``), so a
``config.toml`` edited afterwards is refused on ``--resume`` and ``report``, naming the changed keys.
Creating a run where a non-empty folder exists is an error unless ``force`` is given, and even then
only a folder with the marker that holds nothing but the files listed above is emptied; anything
else is refused and nothing is deleted.

While a process writes a run directory it holds an exclusive ``fcntl.flock`` on
``RUN_DIR/.online-mas.lock`` (:func:`lock_run_dir`); a second ``run`` or ``--resume`` of the same
directory fails at once with :class:`RunDirError`. The lock goes with the process, however it ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from online_mas.experiment.config import ExperimentConfig
from online_mas.experiment.configio import ConfigError, config_diff, config_to_dict, dump_toml, load_config
from online_mas.experiment.registry import LEARNERS, SSL_LEARNERS

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK", "MARKER", "RunDirError", "Unit", "continue_or_create", "create_run_dir",
           "lock_run_dir", "open_run_dir", "read_summary", "units", "write_text"]

#: The file that proves a folder is a run directory and records the config its runs compute with.
MARKER = ".online-mas-run"
#: The file a writing process holds an exclusive flock on.
LOCK = ".online-mas.lock"
_MARKER_FORMAT = "online-mas-run-dir"
_MARKER_VERSION = 1

#: What the runner writes: top-level files, learner folders, unit folders, plot files.
_TOP_FILES = frozenset({MARKER, LOCK, "config.toml", "summary.json", "comparison.md", "table.md",
                        "metrics.jsonl", *(f"comparison-{name}.{ext}"
                                           for name in ("accuracy", "matrix", "acc", "importance")
                                           for ext in ("png", "svg"))})
_UNIT_FILES = frozenset({"metrics.jsonl", "checkpoint.pt", "importance.pt", "summary.json"})
_TMP = re.compile(r"^\..+\.tmp$")  # an atomic write cut short


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
    """Create the run directory: its marker, then the resolved ``config.toml``.

    The directory is ``out``, else ``config.run.out_dir``, else ``runs/<name>-<date>-<time>``.
    An existing non-empty directory is an error unless ``force`` is set, and even then it is
    emptied only if it is a run directory (it has the marker) holding nothing but what the runner
    writes; otherwise nothing is deleted. The directory is locked while this runs.

    Returns
    -------
    (Path, ExperimentConfig)
        The directory and the config with ``run.out_dir`` resolved to it.
    """
    if out is None or str(out) == "":
        out = config.run.out_dir or f"runs/{config.experiment.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(out)
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, out_dir=str(path)))
    header = f"online-mas run config (resolved); rerun: online-mas run {path}/config.toml --out NEW_DIR"
    if config.experiment.kind == "continual":  # adapt runs write no checkpoints
        header += f"; continue: online-mas run --resume {path}"
    text = dump_toml(config, header=header)  # a config that cannot be written fails before any change
    _check_replaceable(path, force)  # before the lock file is made: a foreign folder is not touched
    path.mkdir(parents=True, exist_ok=True)
    with lock_run_dir(path):
        _check_replaceable(path, force)  # again, now that no other process can write it
        for entry in path.iterdir():
            if entry.name in (LOCK, MARKER):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        record = {"format": _MARKER_FORMAT, "version": _MARKER_VERSION, "config": _recorded(config)}
        write_text(path / MARKER, json.dumps(record, indent=1) + "\n")
        write_text(path / "config.toml", text)
    return path, config


def _check_replaceable(path: Path, force: bool) -> None:
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{str(path)!r} exists and is not a directory")
    if not path.is_dir() or not [e for e in path.iterdir() if e.name != LOCK]:
        return
    if not (path / MARKER).is_file():
        raise RunDirError(f"{str(path)!r} is not empty and is not an online-mas run directory (no "
                          f"{MARKER} marker): refusing to delete it, even with --force; choose "
                          "another --out")
    if not force:
        raise RunDirError(f"run directory {str(path)!r} already exists; pass --force to replace "
                          f"it, or continue it with: online-mas run --resume {path}")
    foreign = _foreign(path)
    if foreign:
        shown = ", ".join(repr(str(f.relative_to(path))) for f in foreign[:10])
        more = f" and {len(foreign) - 10} more" if len(foreign) > 10 else ""
        raise RunDirError(f"run directory {str(path)!r} holds files online-mas did not write: "
                          f"{shown}{more}; refusing to delete anything, even with --force (move "
                          "them out, or choose another --out)")


def _foreign(path: Path) -> list[Path]:
    """Entries of a run directory that the runner does not write (checked three levels deep)."""
    out: list[Path] = []

    def ok_file(e: Path, names: frozenset[str]) -> bool:
        return not e.is_symlink() and e.is_file() and (e.name in names or bool(_TMP.match(e.name)))

    for top in sorted(path.iterdir()):
        if ok_file(top, _TOP_FILES):
            continue
        if top.is_symlink() or not top.is_dir() or top.name not in (*LEARNERS, *SSL_LEARNERS):
            out.append(top)
            continue
        for seed in sorted(top.iterdir()):
            if seed.is_symlink() or not seed.is_dir() or not re.fullmatch(r"seed\d+", seed.name):
                out.append(seed)
                continue
            for e in sorted(seed.iterdir()):
                if ok_file(e, _UNIT_FILES):
                    continue
                if e.name == "plots" and e.is_dir() and not e.is_symlink():
                    out += [f for f in sorted(e.iterdir())
                            if f.is_symlink() or not f.is_file() or f.suffix != ".png"]
                    continue
                out.append(e)
    return out


def _recorded(config: ExperimentConfig) -> dict[str, Any]:
    """What a run directory records of its config: all but ``[run]``, which may change."""
    data = config_to_dict(config)
    data.pop("run", None)
    return data


@contextlib.contextmanager
def lock_run_dir(run_dir: str | Path) -> Iterator[Path]:
    """Hold the exclusive lock of a run directory (re-entrant within a process).

    Raises
    ------
    RunDirError
        Another process holds it: a ``run`` or ``--resume`` of this directory is under way.
    """
    path = Path(run_dir)
    key = os.path.realpath(path)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        other = os.read(fd, 64).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise RunDirError(f"run directory {str(path)!r} is in use by another online-mas process (pid "
                          f"{other}): wait until it ends, or stop it first") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = [fd, 1]
    try:
        yield path
    finally:
        del _HELD[key]
        os.close(fd)  # releases the flock


_HELD: dict[str, list[int]] = {}  # real path -> [fd of the lock file, depth]


def open_run_dir(run_dir: str | Path) -> ExperimentConfig:
    """The config of an existing run directory, for ``--resume`` and ``report``.

    Raises
    ------
    RunDirError
        The directory does not exist, has no ``config.toml`` or no marker, or its ``config.toml``
        differs from the config recorded when it was created (the message names the keys).
    ConfigError
        Its ``config.toml`` is not a valid config.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"run directory {str(path)!r} does not exist")
    if not (path / "config.toml").is_file():
        raise RunDirError(f"{str(path)!r} is not an online-mas run directory: it has no config.toml")
    try:
        config = load_config(path / "config.toml")
    except ConfigError as err:
        raise ConfigError(f"{path}/config.toml is not a valid run config: {err}") from None
    marker = path / MARKER
    if not marker.is_file():
        raise RunDirError(f"{str(path)!r} is not an online-mas run directory: it has no {MARKER} "
                          "marker (written when online-mas run creates one)")
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise RunDirError(f"{marker} is corrupted (not JSON: {err})") from None
    if not isinstance(record, dict) or record.get("format") != _MARKER_FORMAT \
            or record.get("version") != _MARKER_VERSION or not isinstance(record.get("config"), dict):
        raise RunDirError(f"{marker} is not a run directory marker of this online-mas (format "
                          f"{_MARKER_FORMAT!r}, version {_MARKER_VERSION})")
    diff = config_diff(record["config"], _recorded(config), labels=("recorded", "config.toml"))
    if diff:
        raise RunDirError(f"{path}/config.toml differs from the config its runs were started with "
                          f"({len(diff)} key{'s' if len(diff) > 1 else ''}: " + "; ".join(diff)
                          + "). Undo the edit, or start a new run with: online-mas run "
                          f"{path}/config.toml --out NEW_DIR")
    return config


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


def read_summary(path: Path) -> dict[str, Any]:
    """A run's ``summary.json``; a damaged one is a :class:`RunDirError` that says how to redo it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        problem: str = f"not valid JSON: {err}"
    else:
        if isinstance(data, dict) and isinstance(data.get("learner", data.get("kind")), str):
            return data
        problem = f"not a run summary: a JSON {type(data).__name__}"
    raise RunDirError(f"{path} is corrupted ({problem}); delete it, and online-mas run --resume "
                      f"{path.parent.parent.parent} writes it again from the run's final checkpoint")


def write_text(path: Path, text: str) -> None:
    """Write a small text file atomically (a temporary file of its own, flush, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
