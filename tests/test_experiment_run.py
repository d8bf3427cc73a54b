"""End-to-end runs on a tiny stream: the files of a run directory, metrics, plots, reports, errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from online_mas import checkpoint, metrics
from online_mas.checkpoint import CheckpointError
from online_mas.experiment import (
    ExperimentConfig,
    RunDirError,
    create_run_dir,
    load_config,
    open_run_dir,
    report_runs,
    run_experiment,
)
from online_mas.experiment.record import matrix_metrics

PNG = b"\x89PNG\r\n\x1a\n"
ALL = '["finetune", "online-mas", "mas-oracle", "l2", "ewc", "joint"]'


def tiny(*extra: str) -> ExperimentConfig:
    """3 segments of permuted digits, one pass each: 135 batches of 32."""
    return load_config(None, ["stream.n_segments=3", "stream.passes=1.0", "run.log_every=5",
                              "run.checkpoint_every=50", "run.eval_every=50", "run.progress=false",
                              "model.hidden=[32]", *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExperimentConfig, list[dict[str, Any]]]:
    run_dir, cfg = create_run_dir(tiny(f"experiment.learners={ALL}"),
                                  tmp_path_factory.mktemp("runs") / "tiny")
    return run_dir, cfg, run_experiment(cfg, run_dir)


def unit(run_dir: Path, learner: str, seed: int = 0) -> Path:
    return run_dir / learner / f"seed{seed}"


def test_a_run_writes_every_file(finished: tuple[Path, ExperimentConfig, list[dict[str, Any]]]) -> None:
    run_dir, cfg, _ = finished
    assert open_run_dir(run_dir) == cfg  # config.toml holds the resolved config
    experiment = json.loads((run_dir / "summary.json").read_text())
    assert [r["learner"] for r in experiment["runs"]] == list(cfg.experiment.learners)
    assert "| tiny |" not in (run_dir / "comparison.md").read_text()
    assert "| permuted-digits | online-mas | 1 |" in (run_dir / "comparison.md").read_text()
    for learner in cfg.experiment.learners:
        u = unit(run_dir, learner)
        names = {p.name for p in u.iterdir()}
        assert {"metrics.jsonl", "summary.json", "checkpoint.pt", "plots"} <= names, learner
        state = torch.load(u / "checkpoint.pt", weights_only=True)  # tensors and primitives only
        assert state["step"] == state["n_steps"] == 135
        plots = {"accuracy_matrix.png", "stream_accuracy.png"}
        if learner in ("online-mas", "mas-oracle", "ewc"):
            plots.add("importance.png")
            assert (u / "importance.pt").is_file()
        assert {p.name for p in (u / "plots").iterdir()} == plots, learner


def test_plots_are_valid_png_files(finished: tuple[Path, ExperimentConfig, list[dict[str, Any]]]) -> None:
    import matplotlib.image

    for png in sorted(finished[0].glob("*/seed0/plots/*.png")):
        assert png.read_bytes()[:8] == PNG, png
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, png


def test_metrics_jsonl_has_one_line_per_logged_step(
        finished: tuple[Path, ExperimentConfig, list[dict[str, Any]]]) -> None:
    run_dir, _, _ = finished
    lines = [json.loads(s) for s in (unit(run_dir, "online-mas") / "metrics.jsonl").read_text().splitlines()]
    steps = [ln["step"] for ln in lines]
    assert steps == sorted(set(steps))  # increasing, no duplicates
    assert set(range(5, 136, 5)) <= set(steps) and steps[-1] == 135
    evals = [ln["step"] for ln in lines if "eval" in ln]
    assert evals == [45, 50, 90, 100, 135]  # change points, the end, and every run.eval_every steps
    assert all({"loss", "accuracy", "prequential", "penalty", "snapshots", "time"} <= set(ln) for ln in lines)
    assert [ln["step"] for ln in lines if "event" in ln] == \
        [e["step"] for e in json.loads((unit(run_dir, "online-mas") / "summary.json").read_text())["events"]]


def test_summary_metrics_are_the_library_metrics_of_its_matrix(
        finished: tuple[Path, ExperimentConfig, list[dict[str, Any]]]) -> None:
    _, _, results = finished
    for s in results:
        R = np.array(s["accuracy_matrix"])
        assert R.shape == (3, 3) and s["eval_steps"] == [45, 90, 135]
        assert s["final_accuracy"] == s["accuracy_matrix"][-1]
        if s["learner"] == "joint":  # i.i.d. order: only the final average accuracy is defined
            assert s["backward_transfer"] is None and s["forgetting"] is None
            assert s["average_accuracy"] == pytest.approx(R[-1].mean())
            continue
        assert s["average_accuracy"] == metrics.average_accuracy(R)
        assert s["backward_transfer"] == metrics.backward_transfer(R)
        assert s["forgetting"] == metrics.forgetting(R)
        assert s["forward_transfer"] == metrics.forward_transfer(R, s["initial_accuracy"])
        assert 0.0 < s["prequential_accuracy"] < 1.0


def test_matrix_metrics_against_a_hand_computed_matrix() -> None:
    R = [[0.90, 0.10, 0.20, 0.05],
         [0.70, 0.80, 0.30, 0.10],
         [0.60, 0.50, 0.90, 0.20],
         [0.50, 0.40, 0.60, 1.00]]
    m = matrix_metrics(R, initial=[0.1, 0.1, 0.1, 0.1])
    assert m["average_accuracy"] == pytest.approx((0.5 + 0.4 + 0.6 + 1.0) / 4)
    assert m["backward_transfer"] == pytest.approx(((0.5 - 0.9) + (0.4 - 0.8) + (0.6 - 0.9)) / 3)
    assert m["forward_transfer"] == pytest.approx(((0.1 - 0.1) + (0.3 - 0.1) + (0.2 - 0.1)) / 3)
    assert m["forgetting"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.4) + (0.9 - 0.6)) / 3)
    rect = matrix_metrics([[0.5, 0.1], [0.6, 0.7], [0.9, 0.3]], initial=[0.1, 0.1])  # recurring
    assert rect == {"average_accuracy": pytest.approx(0.6), "backward_transfer": None,
                    "forward_transfer": None, "forgetting": None}


def test_oracle_events_are_at_the_true_boundaries(
        finished: tuple[Path, ExperimentConfig, list[dict[str, Any]]]) -> None:
    by = {s["learner"]: s for s in finished[2]}
    for learner in ("mas-oracle", "l2", "ewc"):
        assert [e["step"] for e in by[learner]["events"]] == [45, 90, 135]
        assert by[learner]["detection"] is None
    assert by["finetune"]["events"] == [] and by["finetune"]["importance"] is None
    assert set(by["mas-oracle"]["importance"]) == {"1.weight", "1.bias", "3.weight", "3.bias"}


def test_detection_scores_on_a_known_schedule(tmp_path: Path) -> None:
    cfg = tiny('experiment.learners=["online-mas"]', 'learner.online-mas.detector="periodic"',
               "learner.online-mas.detector_args={every=47}", "experiment.detect_tolerance=3",
               "run.plots=false")
    run_dir, cfg = create_run_dir(cfg, tmp_path / "run")
    (s,) = run_experiment(cfg, run_dir)
    # fires on observe calls 47 and 94, i.e. on batches 46 and 93: 1 and 3 batches after the changes
    assert [(e["step"], e["batch"]) for e in s["events"]] == [(47, 46), (94, 93)]
    d = s["detection"]
    assert d["matched"] == [[45, 46], [90, 93]] and d["f1"] == 1.0
    assert d["mean_delay"] == 2.0 and d["tolerance"] == 3


def test_report_prints_mean_and_std_over_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny('experiment.learners=["finetune"]', "experiment.seeds=[0, 1]", "run.plots=false")
    run_dir, cfg = create_run_dir(cfg, tmp_path / "run")
    results = run_experiment(cfg, run_dir)
    text = report_runs([run_dir], plots=True)
    accs = [r["average_accuracy"] for r in results]
    mean, std = 100 * sum(accs) / 2, 100 * abs(accs[0] - accs[1]) / math.sqrt(2)
    assert f"| permuted-digits | finetune | 2 | {mean:.1f} ± {std:.1f} |" in text
    assert (unit(run_dir, "finetune", 1) / "plots" / "accuracy_matrix.png").read_bytes()[:8] == PNG


def test_report_of_two_run_dirs_labels_the_rows(
        tmp_path: Path, finished: tuple[Path, ExperimentConfig, list[dict[str, Any]]]) -> None:
    other, cfg = create_run_dir(tiny('experiment.learners=["finetune"]', "run.plots=false",
                                     'experiment.name="again"'), tmp_path / "again")
    run_experiment(cfg, other)
    text = report_runs([finished[0], other], plots=False)
    assert f"| again ({other}) | finetune | 1 |" in text
    assert f"| permuted-digits ({finished[0]}) | joint | 1 |" in text


def test_an_existing_run_dir_is_not_overwritten(tmp_path: Path) -> None:
    run_dir, cfg = create_run_dir(tiny('experiment.learners=["finetune"]', "run.plots=true"),
                                  tmp_path / "run")
    run_experiment(cfg, run_dir)
    with pytest.raises(RunDirError, match=r"already exists; pass --force to replace it, or continue "
                                          r"it with: online-mas run --resume"):
        create_run_dir(tiny(), run_dir)
    assert (run_dir / "finetune" / "seed0" / "summary.json").is_file()
    create_run_dir(tiny(), run_dir, force=True)  # only what the runner wrote: replaced
    assert sorted(p.name for p in run_dir.iterdir()) == [".online-mas-run", ".online-mas.lock",
                                                        "config.toml"]


@pytest.mark.parametrize("where", ["notes.txt", "finetune/seed0/notes.txt", "finetune/old",
                                   "finetune/seed0/plots/mine.pdf"])
def test_force_keeps_a_run_dir_that_holds_files_the_runner_did_not_write(tmp_path: Path,
                                                                       where: str) -> None:
    """Issue 18, item 2: --force removes only what the runner itself wrote."""
    run_dir, cfg = create_run_dir(tiny('experiment.learners=["finetune"]', "run.plots=true"),
                                  tmp_path / "run")
    run_experiment(cfg, run_dir)
    (run_dir / where).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / where).write_text("mine")
    before = sorted(str(f.relative_to(run_dir)) for f in run_dir.rglob("*"))
    with pytest.raises(RunDirError, match=rf"holds files online-mas did not write: '{where}'; "
                                          r"refusing to delete anything, even with --force"):
        create_run_dir(tiny(), run_dir, force=True)
    assert sorted(str(f.relative_to(run_dir)) for f in run_dir.rglob("*")) == before


def test_force_never_deletes_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("precious")
    with pytest.raises(RunDirError, match=r"is not an online-mas run directory .*refusing to delete it, "
                                          r"even with --force"):
        create_run_dir(tiny(), folder, force=True)
    assert (folder / "chapter1.tex").read_text() == "precious"


def test_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="does not exist"):
        open_run_dir(tmp_path / "missing")
    with pytest.raises(RunDirError, match=r"is not an online-mas run directory: it has no config\.toml"):
        open_run_dir(tmp_path)
    with pytest.raises(RunDirError, match=r"has no config\.toml"):
        report_runs([tmp_path])


def test_a_checkpoint_from_another_model_is_refused(tmp_path: Path) -> None:
    kill = 'experiment.learners=["finetune"]', "run.plots=false"
    small, small_cfg = create_run_dir(tiny(*kill, "model.hidden=[8]"), tmp_path / "small")
    big, big_cfg = create_run_dir(tiny(*kill, "model.hidden=[16]"), tmp_path / "big")
    run_experiment(small_cfg, small)
    target = unit(big, "finetune")
    target.mkdir(parents=True)
    shutil.copy(unit(small, "finetune") / "checkpoint.pt", target / "checkpoint.pt")
    shutil.copy(unit(small, "finetune") / "metrics.jsonl", target / "metrics.jsonl")
    with pytest.raises(CheckpointError, match=r"was written with a different config than .*: "
                                              r"model\.hidden: checkpoint \[8\], config\.toml \[16\]"):
        run_experiment(big_cfg, big)
    # the same checkpoint with its config entry edited to match: the weights' shapes still differ
    state = checkpoint.load(target / "checkpoint.pt")
    state["config"]["model"]["hidden"] = [16]  # type: ignore[index]
    checkpoint.save(state, target / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"was written for a different model: missing \[\], "
                                              r"unexpected \[\], shape mismatches \['1.weight: "
                                              r"checkpoint \[8, 64\], model \[16, 64\]'"):
        run_experiment(big_cfg, big)
    assert not (target / "summary.json").exists()


def test_a_truncated_checkpoint_says_how_to_start_over(tmp_path: Path) -> None:
    run_dir, cfg = create_run_dir(tiny('experiment.learners=["finetune"]', "run.plots=false"),
                                  tmp_path / "run")
    target = unit(run_dir, "finetune")
    target.mkdir(parents=True)
    (target / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a whole zip file")
    with pytest.raises(CheckpointError, match=r"not a readable checkpoint .*; delete it to restart this "
                                              r"run \(learner finetune, seed 0\) from scratch"):
        run_experiment(cfg, run_dir)
