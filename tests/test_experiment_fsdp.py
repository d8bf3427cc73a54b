"""``online-mas run`` under torchrun with ``run.parallel = "fsdp"``: 2 processes, stopped, resumed.

The model is sharded by FSDP2 (``fully_shard`` per block, then the root); each rank trains on half
of every batch and OnlineMAS reduce-scatters its importance to the shards. The run is stopped with
Ctrl-C once online MAS has written its sharded checkpoint (``checkpoint.dcp``), resumed with
``--resume`` under torchrun again, and compared with one process on the whole batches.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from online_mas.experiment import create_run_dir, load_config, run_experiment

ROOT = Path(__file__).resolve().parents[1]
LEARNERS = ("online-mas", "mas-oracle")
SETTINGS = ["stream.n_segments=2", "stream.passes=1.0", "model.hidden=[16]", "run.log_every=5",
            "run.eval_every=0", "run.checkpoint_every=20", "run.plots=false",
            f"experiment.learners={json.dumps(LEARNERS)}", "optim.name='adam'",
            "learner.online-mas.detector='periodic'", "learner.online-mas.detector_args={every=30}",
            "learner.online-mas.lam=1.0", "learner.online-mas.penalty='loss'",
            "learner.online-mas.mas.share=0.2", "learner.mas-oracle.lam=1.0",
            "learner.mas-oracle.penalty='proximal'", "learner.mas-oracle.mas.share=0.2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "online_mas", "run"]


@pytest.mark.slow
def test_fsdp_run_stopped_and_resumed_equals_one_process(tmp_path: Path) -> None:
    run_dir = tmp_path / "fsdp"
    sets = [a for s in [*SETTINGS, "run.parallel='fsdp'"] for a in ("--set", s)]
    proc = subprocess.Popen([*TORCHRUN, "--out", str(run_dir), "--no-progress", *sets], cwd=ROOT, env=ENV,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = run_dir / "online-mas" / "seed0" / "checkpoint.dcp"
    deadline = time.monotonic() + 300
    while not (ckpt / ".metadata").is_file():
        assert proc.poll() is None, f"the run ended before it was stopped: {proc.communicate()}"
        assert time.monotonic() < deadline, "no sharded checkpoint after 300 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # torchrun forwards it: every rank stops at the same step
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, "the run finished before it was stopped"
    assert "Continue with: online-mas run --resume" in err, err[-3000:]
    assert not (run_dir / "online-mas" / "seed0" / "summary.json").exists()
    state_files = sorted(p.name for p in ckpt.iterdir())
    assert ".metadata" in state_files and any(n.endswith(".distcp") for n in state_files)

    resumed = subprocess.run([*TORCHRUN, "--resume", str(run_dir), "--no-progress"], cwd=ROOT, env=ENV,
                             text=True, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    ref_dir, cfg = create_run_dir(load_config(None, [*SETTINGS, "run.progress=false"]), tmp_path / "one")
    reference = {s["learner"]: s for s in run_experiment(cfg, ref_dir)}
    for learner in LEARNERS:
        unit = run_dir / learner / "seed0"
        got = json.loads((unit / "summary.json").read_text())
        ref = reference[learner]
        assert got["n_steps"] == ref["n_steps"] == 90
        assert [e["step"] for e in got["events"]] == [e["step"] for e in ref["events"]]
        assert torch.allclose(torch.tensor(got["accuracy_matrix"]), torch.tensor(ref["accuracy_matrix"]),
                              atol=0.01)
        assert got["mean_loss"] == pytest.approx(ref["mean_loss"], rel=1e-3)
        steps = [json.loads(line)["step"] for line in (unit / "metrics.jsonl").read_text().splitlines()]
        ref_steps = [json.loads(line)["step"]
                     for line in (ref_dir / learner / "seed0" / "metrics.jsonl").read_text().splitlines()]
        assert steps == ref_steps  # each line once, though the run was stopped and resumed
        imp = torch.load(unit / "importance.pt", weights_only=True)
        ref_imp = torch.load(ref_dir / learner / "seed0" / "importance.pt", weights_only=True)
        assert sorted(imp) == sorted(ref_imp)
        for name, value in ref_imp.items():
            if not isinstance(value, torch.Tensor):
                continue
            assert torch.allclose(imp[name], value, rtol=1e-3, atol=1e-6), (learner, name)
    assert [e["step"] for e in reference["online-mas"]["events"]] == [30, 60, 90]
