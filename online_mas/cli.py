"""The ``online-mas`` command: argument parsing only; the work is in :mod:`online_mas.experiment`.

::

    online-mas run [CONFIG.toml] [--set section.key=value ...] [--out DIR] [--force]
    online-mas run --resume RUN_DIR
    online-mas report RUN_DIR [RUN_DIR ...] [--out DIR] [--no-plots]

Under ``torchrun --nproc-per-node N -m online_mas run ...`` the N processes train each run
together (data parallel) and rank 0 writes the one run directory; see
:mod:`online_mas.experiment.dist`.

Exit codes: 0 done; 1 the system failed (a full disk, an unwritable folder: the last good
checkpoint is kept, resume once it is fixed); 2 bad input (config, run directory, checkpoint);
130 stopped by Ctrl-C (143 by SIGTERM) after writing a checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from online_mas.experiment import ExperimentConfig

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="online-mas",
        description="Online, label-free Memory Aware Synapses: run and compare continual-learning "
                    "experiments.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,report}")
    run = sub.add_parser(
        "run", help="run an experiment (the default one if no CONFIG is given)",
        description="Run an experiment from a TOML config; without CONFIG, the embedded default "
                    "experiment (permuted digits: fine-tuning, online MAS, MAS at the true "
                    "boundaries). Results go to a run directory.")
    run.add_argument("config", nargs="?", metavar="CONFIG.toml",
                     help="TOML config; only what differs from the default experiment")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override one config value, e.g. --set learner.online-mas.lam=3e-3 "
                          "(repeatable; the value is TOML, or a plain string)")
    run.add_argument("--out", metavar="DIR",
                     help="run directory (default: run.out_dir, else runs/<name>-<date>-<time>)")
    run.add_argument("--force", action="store_true",
                     help="replace an existing run directory")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue the runs of RUN_DIR from their checkpoints")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    report = sub.add_parser(
        "report", help="redraw the plots of run directories, compare them and print a table",
        description="Redraw the PNG plots of every complete run in each RUN_DIR, draw the "
                    "comparison figures across learners and seeds (comparison-accuracy.png, "
                    "comparison-matrix.png, comparison-acc.png, comparison-importance.png, each "
                    "also as SVG) and print one comparison table (mean ± std over seeds).")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--out", metavar="DIR",
                        help="folder of the comparison figures (default: the first RUN_DIR)")
    report.add_argument("--no-plots", action="store_true", help="do not draw any plot")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``online-mas``; returns the exit code."""
    args = _parser().parse_args(argv)
    from online_mas.checkpoint import CheckpointError
    from online_mas.experiment import ConfigError, Interrupted, RunDirError, dist

    try:
        if args.command == "run":
            dist.init()  # joins torchrun's process group; nothing in a plain process
            return _run(args)
        return _report(args)
    except (ConfigError, RunDirError, CheckpointError) as err:
        if dist.is_main():  # under torchrun every rank raises the same error
            print(f"online-mas: error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        if dist.is_main():
            print(f"online-mas: stopped; checkpoints written. Continue with: online-mas run --resume "
                  f"{getattr(args, 'run_dir', '') or 'RUN_DIR'}", file=sys.stderr)
        return 128 + int(err.signum)
    except KeyboardInterrupt:
        print("online-mas: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # checkpoints are atomic: the last good one is still there
        run_dir = getattr(args, "run_dir", None)
        hint = (f"; the last good checkpoints are kept. Continue with: online-mas run --resume {run_dir}"
                if run_dir else "")
        print(f"online-mas: error: {err}{hint}", file=sys.stderr)
        return 1
    finally:
        dist.shutdown()


def _run(args: argparse.Namespace) -> int:
    from online_mas.experiment import (
        ConfigError,
        RunDirError,
        create_run_dir,
        dist,
        load_config,
        open_run_dir,
    )
    from online_mas.experiment.preflight import preflight
    from online_mas.experiment.rundir import lock_run_dir

    if args.resume and (args.config or args.overrides or args.out or args.force):
        raise ConfigError("--resume takes the config from RUN_DIR/config.toml: drop CONFIG, "
                          "--set, --out and --force")
    # Under torchrun rank 0 alone reads the config and creates (or opens) the run directory, once
    # (one timestamp), and sends both, or its error, to the other ranks.
    setup: tuple[object, str, str | None] = (None, "", None)
    if dist.is_main():
        try:
            if args.resume:
                config, run_dir = open_run_dir(args.resume), args.resume
                if config.experiment.kind == "adapt":
                    raise ConfigError(f"{run_dir} is an experiment of kind 'adapt', which writes no "
                                      "checkpoints and cannot be resumed; rerun it with: online-mas "
                                      f"run {run_dir}/config.toml --out NEW_DIR")
                preflight(config)  # the data files may have changed since
            else:
                config = load_config(args.config, args.overrides)
                preflight(config)  # every value checked before the run directory exists
                run_dir, config = create_run_dir(config, args.out, force=args.force)
            setup = (config, str(run_dir), None)
        except (ConfigError, RunDirError) as err:
            if dist.ranks()[1] == 1:
                raise
            setup = (None, "", str(err))
    got, run_dir, error = dist.broadcast(setup)
    if error is not None:
        raise ConfigError(error)
    config = got  # type: ignore[assignment]
    args.run_dir = run_dir
    # rank 0 holds the run directory's lock until the end: a second run of it fails fast
    with lock_run_dir(run_dir) if dist.is_main() else contextlib.nullcontext():
        return _run_locked(config, run_dir, args)


def _run_locked(config: ExperimentConfig, run_dir: str, args: argparse.Namespace) -> int:
    from online_mas.experiment import (
        ConfigError,
        comparison_table,
        dist,
        final_accuracy_table,
        run_experiment,
    )

    if config.experiment.kind == "adapt":
        if dist.ranks()[1] > 1:
            raise ConfigError("experiment.kind = 'adapt' runs in one process; start it without "
                              "torchrun")
        return _run_adapt(config, run_dir, args)
    if not dist.is_main():
        run_experiment(config, run_dir, progress=False)
        return 0
    world_size = dist.ranks()[1]
    print(f"run directory: {run_dir}" + (f" ({world_size} processes)" if world_size > 1 else ""),
          flush=True)
    start = time.perf_counter()
    results = run_experiment(config, run_dir, progress=False if args.no_progress else None)
    seconds = time.perf_counter() - start
    probe = " of the k-NN probe on the encoder" if config.experiment.kind == "ssl" else ""
    print(f"\n{config.experiment.name}: final accuracy{probe} on each segment, % (mean over "
          f"{len(config.experiment.seeds)} seed(s))\n")
    print(final_accuracy_table(results))
    print("\ncomparison (mean ± std over seeds)\n")
    print(comparison_table([(config.experiment.name, results)]))
    print(f"\nfinished in {seconds:.1f} s; results in {run_dir}/ (summary.json, comparison.md, "
          f"<learner>/seed<k>/)")
    return 0


def _run_adapt(config: object, run_dir: str, args: argparse.Namespace) -> int:
    from online_mas.experiment import ExperimentConfig
    from online_mas.experiment.adapt_run import run_adapt

    if not isinstance(config, ExperimentConfig):
        raise TypeError(f"an adapt run needs an ExperimentConfig, got {type(config)!r}")
    print(f"run directory: {run_dir}", flush=True)
    summary = run_adapt(config, run_dir, progress=False if args.no_progress else None)
    print(f"\n{config.experiment.name}: test-time adaptation, accuracy in % (per-occurrence "
          f"columns: online accuracy, mean over {len(config.experiment.seeds)} seed(s); the "
          "others mean ± std)\n")
    print(summary["table"])
    print(f"\nfinished in {summary['seconds']:.1f} s; results in {run_dir}/ (summary.json, "
          "metrics.jsonl, table.md)")
    return 0


def _report(args: argparse.Namespace) -> int:
    from online_mas.experiment import report_runs

    print(report_runs(args.run_dirs, plots=not args.no_plots, out=args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
