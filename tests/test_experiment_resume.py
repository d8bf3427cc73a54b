"""Kill ``online-mas run`` (SIGKILL, SIGINT) in a subprocess, resume, and get the same results.

The reference is an uninterrupted run of the same config. Everything must be equal except
wall-clock numbers: the ``"timing"`` entry of ``summary.json`` and the ``"time"`` field of
``metrics.jsonl`` lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from run_helpers import reproducible_results

from online_mas.experiment import create_run_dir, load_config, open_run_dir, report_runs, run_experiment

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
LEARNERS = ("finetune", "online-mas", "ewc")
SETTINGS = ["stream.n_segments=3", "stream.passes=2.0", f"experiment.learners={json.dumps(LEARNERS)}",
            "run.checkpoint_every=20", "run.log_every=5", "run.plots=false", "model.hidden=[32]"]


def command(*args: str) -> list[str]:
    sets = [a for s in SETTINGS for a in ("--set", s)]
    return [sys.executable, "-m", "online_mas", "run", *args, *sets, "--no-progress"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir, cfg = create_run_dir(load_config(None, SETTINGS), tmp_path_factory.mktemp("ref") / "run")
    run_experiment(cfg, run_dir, progress=False)
    return run_dir


def start_and_stop_mid_run(run_dir: Path, signum: int) -> subprocess.CompletedProcess[str]:
    """Start a run, send ``signum`` once the second learner has written a checkpoint."""
    proc = subprocess.Popen(command("--out", str(run_dir)), cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = run_dir / "online-mas" / "seed0" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists():
        assert proc.poll() is None, f"the run ended before it was stopped: {proc.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.005)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def results(run_dir: Path) -> dict[str, Any]:
    return reproducible_results(run_dir, LEARNERS)


def test_sigkill_then_resume_gives_the_uninterrupted_results(tmp_path: Path, reference: Path) -> None:
    run_dir = tmp_path / "killed"
    done = start_and_stop_mid_run(run_dir, signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    state = torch.load(run_dir / "online-mas" / "seed0" / "checkpoint.pt", weights_only=True)
    assert 0 < state["step"] < state["n_steps"]  # really killed in the middle of a learner
    assert (run_dir / "finetune" / "seed0" / "summary.json").is_file()
    assert not (run_dir / "online-mas" / "seed0" / "summary.json").exists()
    assert not (run_dir / "ewc").exists()

    resumed = subprocess.run([sys.executable, "-m", "online_mas", "run", "--resume", str(run_dir),
                              "--no-progress"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "| online-mas |" in resumed.stdout
    mine, ref = results(run_dir), results(reference)
    for learner in LEARNERS:
        assert mine[learner]["summary"] == ref[learner]["summary"], learner
        assert mine[learner]["metrics"] == ref[learner]["metrics"], learner  # no line twice


def test_ctrl_c_writes_a_checkpoint_and_exits_130(tmp_path: Path, reference: Path) -> None:
    run_dir = tmp_path / "interrupted"
    done = start_and_stop_mid_run(run_dir, signal.SIGINT)
    assert done.returncode == 130, done.stderr
    assert f"Continue with: online-mas run --resume {run_dir}" in done.stderr
    assert "Traceback" not in done.stderr
    state = torch.load(run_dir / "online-mas" / "seed0" / "checkpoint.pt", weights_only=True)
    assert 20 <= state["step"] < state["n_steps"]
    assert not (run_dir / "online-mas" / "seed0" / "summary.json").exists()
    text = report_runs([run_dir], plots=False)
    assert "| permuted-digits | finetune | 1 |" in text
    assert f"- {run_dir}: online-mas seed 0: interrupted (resume it)" in text
    assert f"- {run_dir}: ewc seed 0: not run" in text

    run_experiment(open_run_dir(run_dir), run_dir, progress=False)
    assert results(run_dir) == results(reference)


def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path: Path) -> None:
    """Issue 18, item 13: 128 + SIGTERM, as the command's docstring and the README say."""
    run_dir = tmp_path / "terminated"
    done = start_and_stop_mid_run(run_dir, signal.SIGTERM)
    assert done.returncode == 143, done.stderr
    assert f"Continue with: online-mas run --resume {run_dir}" in done.stderr
    state = torch.load(run_dir / "online-mas" / "seed0" / "checkpoint.pt", weights_only=True)
    assert 20 <= state["step"] < state["n_steps"]
