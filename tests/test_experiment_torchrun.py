"""``online-mas run`` launched by torchrun with 2 processes: one run directory, the 1-process results.

The launch is ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m online_mas run``
on the loopback interface (gloo, CPU). Each rank trains on half of every batch; DDP averages the
gradients and OnlineMAS all-reduces its importance, so the results equal those of one process on
the whole batch up to float rounding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from online_mas.experiment import create_run_dir, load_config, run_experiment

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["stream.n_segments=2", "stream.passes=1.0", "model.hidden=[16]", "run.log_every=5",
            "run.eval_every=0", "run.checkpoint_every=40", "run.plots=false",
            # online MAS consolidates every 30 steps: importance reduced across ranks, snapshots taken
            "learner.online-mas.detector='periodic'", "learner.online-mas.detector_args={every=30}"]
LEARNERS = ("finetune", "online-mas", "mas-oracle")


def test_torchrun_two_processes_write_one_run_dir_with_the_single_process_results(
        tmp_path: Path) -> None:
    out = tmp_path / "runs"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    sets = [arg for s in [*SETTINGS, "run.workers=2"] for arg in ("--set", s)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "online_mas", "run", "--out", str(out / "tr"), "--no-progress", *sets]
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, text=True, capture_output=True, timeout=50)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"torchrun did not finish in 50 s: {err.stdout!r} {err.stderr!r}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run directory:") == 1  # rank 0 alone prints
    assert "(2 processes)" in proc.stdout
    assert proc.stderr.count("run.workers=2 ignored under torchrun") == 1

    assert [p.name for p in out.iterdir()] == ["tr"]  # exactly one run directory
    run_dir = out / "tr"
    experiment = json.loads((run_dir / "summary.json").read_text())
    assert [r["learner"] for r in experiment["runs"]] == list(LEARNERS)

    ref_dir, cfg = create_run_dir(load_config(None, [*SETTINGS, "run.progress=false"]),
                                  tmp_path / "one-process")
    reference = {s["learner"]: s for s in run_experiment(cfg, ref_dir)}
    for learner in LEARNERS:
        unit = run_dir / learner / "seed0"
        got = json.loads((unit / "summary.json").read_text())
        ref = reference[learner]
        assert got["n_steps"] == ref["n_steps"] == 90
        assert [e["step"] for e in got["events"]] == [e["step"] for e in ref["events"]]
        assert torch.allclose(torch.tensor(got["accuracy_matrix"]), torch.tensor(ref["accuracy_matrix"]),
                              atol=0.01)
        assert got["prequential_accuracy"] == pytest.approx(ref["prequential_accuracy"], abs=1e-3)
        assert got["mean_loss"] == pytest.approx(ref["mean_loss"], rel=1e-4)
        # one metrics.jsonl, each line written once (by rank 0), the same steps as one process
        steps = [json.loads(line)["step"] for line in (unit / "metrics.jsonl").read_text().splitlines()]
        ref_steps = [json.loads(line)["step"]
                     for line in (ref_dir / learner / "seed0" / "metrics.jsonl").read_text().splitlines()]
        assert steps == ref_steps
    snapshots = [e["step"] for e in reference["online-mas"]["events"]]
    assert snapshots == [30, 60, 90]
    for learner in ("online-mas", "mas-oracle"):  # importance all-reduced over both halves of each batch
        got = torch.load(run_dir / learner / "seed0" / "importance.pt", weights_only=True)
        ref = torch.load(ref_dir / learner / "seed0" / "importance.pt", weights_only=True)
        for name, value in ref.items():
            if isinstance(value, torch.Tensor):
                assert torch.allclose(got[name], value, rtol=1e-4, atol=1e-8), (learner, name)
