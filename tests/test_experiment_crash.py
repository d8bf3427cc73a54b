"""Faults injected into ``online-mas run``: SIGKILL at seeded random steps, a full disk during a
checkpoint write, and damaged or foreign checkpoints on ``--resume``.

The reference is an uninterrupted run of the same config. Every run that survives a fault must
end with the reference's results, everything but wall-clock numbers (the ``"timing"`` entry of
``summary.json`` and the ``"time"`` field of ``metrics.jsonl``), with no metrics line twice.

The default run kills two runs (one of them twice); ``-m slow`` kills ten more.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from run_helpers import reproducible_results

from online_mas import checkpoint
from online_mas.checkpoint import CheckpointError
from online_mas.cli import main
from online_mas.experiment import create_run_dir, load_config, open_run_dir, run_experiment

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
LEARNERS = ("online-mas", "finetune")
N = 270  # batches per learner: 3 segments of permuted digits, two passes, batches of 32
TOTAL = N * len(LEARNERS)
EVERY = 7  # checkpoint_every
SETTINGS = ["stream.n_segments=3", "stream.passes=2.0", f"experiment.learners={json.dumps(LEARNERS)}",
            f"run.checkpoint_every={EVERY}", "run.log_every=1", "run.eval_every=50", "run.plots=false",
            "run.progress=false", "model.hidden=[32]"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run_dir, cfg = create_run_dir(load_config(None, SETTINGS), tmp_path_factory.mktemp("ref") / "run")
    run_experiment(cfg, run_dir)
    ref = results(run_dir)
    assert len(ref["online-mas"]["summary"]["events"]) >= 1  # online MAS consolidates in this run
    return ref


def results(run_dir: Path) -> dict[str, Any]:
    return reproducible_results(run_dir, LEARNERS)


def progress(run_dir: Path) -> int:
    """Steps done over all learners: a finished learner counts N, a running one its metrics lines."""
    done = 0
    for learner in LEARNERS:
        u = run_dir / learner / "seed0"
        if (u / "summary.json").is_file():
            done += N
            continue
        with contextlib.suppress(FileNotFoundError):
            done += (u / "metrics.jsonl").read_bytes().count(b"\n")  # log_every=1: a line a step
        break
    return done


def run_and_kill(args: list[str], run_dir: Path, target: int, log: Path) -> int | None:
    """Start ``online-mas run ARGS``; SIGKILL it once ``target`` steps are done.

    Returns the steps done when it was killed, or None if it finished first.
    """
    cmd = [sys.executable, "-m", "online_mas", "run", *args, "--no-progress"]
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 300
            while proc.poll() is None:
                assert time.monotonic() < deadline, "the run did not reach its target in 300 s"
                if progress(run_dir) >= target:
                    proc.send_signal(signal.SIGKILL)
                    assert proc.wait(timeout=60) == -signal.SIGKILL
                    return progress(run_dir)
                time.sleep(0.002)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, log.read_text()
    return None


def check_checkpoints(run_dir: Path, stats: dict[str, int]) -> None:
    """Every checkpoint left by a kill loads; stray temporary files are counted."""
    for learner in LEARNERS:
        u = run_dir / learner / "seed0"
        if (u / "checkpoint.pt").is_file():
            state = checkpoint.load(u / "checkpoint.pt")  # never a half-written file
            assert state["step"] == N or state["step"] % EVERY == 0  # type: ignore[operator]
            stats["checkpoints_loaded"] += 1
        stats["stray_tmp_files"] += len(list(u.glob(".checkpoint.pt.*.tmp"))) if u.is_dir() else 0


def crash_trial(run_dir: Path, seed: int, kills: int, stats: dict[str, int]) -> dict[str, Any]:
    """Kill a run ``kills`` times at seeded random steps (the resumed run too), then finish it."""
    rng = random.Random(seed)
    args = ["--out", str(run_dir), *[a for s in SETTINGS for a in ("--set", s)]]
    lowest = 1
    for k in range(kills):
        if lowest > TOTAL - 3:
            break
        target = rng.randint(lowest, TOTAL - 3)
        at = run_and_kill(args, run_dir, target, run_dir.parent / f"stderr{k}.txt")
        if at is None:  # finished before the kill (the last steps are fast): nothing injected
            stats["finished_before_kill"] += 1
            break
        stats["kills"] += 1
        check_checkpoints(run_dir, stats)
        lowest = at + 1  # the resumed run replays from its checkpoint; kill it past this point
        args = ["--resume", str(run_dir)]
    run_experiment(open_run_dir(run_dir), run_dir)
    stats["runs_completed"] += 1
    assert not list(run_dir.glob("*/seed0/.checkpoint.pt.*.tmp"))  # a cut-short write is cleaned up
    return results(run_dir)


def new_stats() -> dict[str, int]:
    return dict.fromkeys(("kills", "finished_before_kill", "checkpoints_loaded", "stray_tmp_files",
                          "runs_completed", "runs_equal"), 0)


# one kill is slow: the two-kill run covers it
@pytest.mark.parametrize(("seed", "kills"), [pytest.param(0, 1, marks=pytest.mark.slow), (1, 2)])
def test_sigkill_at_random_steps_then_resume_gives_the_reference(
        tmp_path: Path, reference: dict[str, Any], seed: int, kills: int) -> None:
    stats = new_stats()
    assert crash_trial(tmp_path / "run", seed, kills, stats) == reference
    assert stats["kills"] >= 1, stats
    print(f"crash trial seed {seed}: {stats}")


@pytest.mark.slow
def test_ten_sigkilled_runs_resume_to_the_reference(tmp_path: Path, reference: dict[str, Any]) -> None:
    stats = new_stats()
    differ = []
    for seed in range(100, 110):
        kills = random.Random(seed).choice((1, 2, 3))
        got = crash_trial(tmp_path / f"run{seed}", seed, kills, stats)
        if got == reference:
            stats["runs_equal"] += 1
        else:
            differ.append(seed)
    print(f"10 crash trials: {stats}")
    assert not differ, (differ, stats)
    assert stats["kills"] >= 10, stats


# --------------------------------------------------------------------------- a full disk


@pytest.mark.parametrize("fails", ["fsync", "replace"])
def test_a_checkpoint_write_that_fails_keeps_the_previous_one_and_resume_continues(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        reference: dict[str, Any], fails: str) -> None:
    """The second checkpoint of online-mas fails part-way (ENOSPC); the first survives."""
    run_dir = tmp_path / "run"
    ckpt = run_dir / "online-mas" / "seed0" / "checkpoint.pt"
    calls = {"n": 0}
    real_fsync, real_replace = os.fsync, os.replace

    def full_disk() -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    def fsync(fd: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".checkpoint.pt."):
            full_disk()
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        if Path(dst).name == "checkpoint.pt":
            full_disk()
        real_replace(src, dst)

    monkeypatch.setattr(os, fails, fsync if fails == "fsync" else replace)
    assert main(["run", "--out", str(run_dir), *[a for s in SETTINGS for a in ("--set", s)]]) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert (f"online-mas: error: [Errno 28] No space left on device; the last good checkpoints are "
            f"kept. Continue with: online-mas run --resume {run_dir}") in err
    assert "Traceback" not in err
    assert calls["n"] == 2
    state = checkpoint.load(ckpt)  # the first checkpoint, intact
    assert state["step"] == EVERY
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["checkpoint.pt", "metrics.jsonl"]
    assert not (run_dir / "finetune").exists()

    run_experiment(open_run_dir(run_dir), run_dir)
    assert results(run_dir) == reference


# --------------------------------------------------------------------------- damaged checkpoints


def interrupted_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run dir whose online-mas unit stopped after its checkpoint at step 2 * EVERY."""
    run_dir, cfg = create_run_dir(load_config(None, [*SETTINGS, 'experiment.learners=["online-mas"]']),
                                  tmp_path / "run")

    class StopAt:  # asked once after every step
        calls = 0

        def is_set(self) -> bool:
            self.calls += 1
            return self.calls >= 2 * EVERY

    from online_mas.experiment.run import Interrupted, run_unit
    from online_mas.experiment.rundir import units

    with pytest.raises(Interrupted):
        run_unit(cfg, units(cfg, run_dir)[0], stop=StopAt(), progress=False)
    return run_dir, run_dir / "online-mas" / "seed0" / "checkpoint.pt"


def test_a_half_written_temporary_checkpoint_is_ignored(tmp_path: Path) -> None:
    """What a kill during a checkpoint write leaves: the last checkpoint and a partial temp file."""
    run_dir, ckpt = interrupted_run(tmp_path)
    data = ckpt.read_bytes()
    half = ckpt.parent / ".checkpoint.pt.x1y2z3.tmp"
    half.write_bytes(data[: len(data) // 3])
    summary = run_experiment(open_run_dir(run_dir), run_dir)[0]
    assert not half.exists()
    clean_dir, clean_cfg = create_run_dir(open_run_dir(run_dir), tmp_path / "clean")
    clean = run_experiment(clean_cfg, clean_dir)[0]
    summary.pop("timing")
    clean.pop("timing")
    assert summary == clean


def test_resume_on_a_truncated_checkpoint_names_it_and_touches_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, ckpt = interrupted_run(tmp_path)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    metrics = (ckpt.parent / "metrics.jsonl").read_bytes()
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"online-mas: error: '{ckpt}' is not a readable checkpoint (truncated or corrupted?)" in err
    assert "delete it to restart this run (learner online-mas, seed 0) from scratch" in err
    assert "Traceback" not in err
    assert ckpt.read_bytes() == data[: len(data) // 2]  # nothing deleted or rewritten
    assert (ckpt.parent / "metrics.jsonl").read_bytes() == metrics
    assert not (ckpt.parent / "summary.json").exists()
    ckpt.unlink()  # as the message says: the run starts over and finishes
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 0
    assert checkpoint.load(ckpt)["step"] == N


def test_resume_on_a_bit_flipped_checkpoint_names_it_and_touches_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 18, item 1: the high byte of one stored weight XORed; resume must not accept it."""
    run_dir, ckpt = interrupted_run(tmp_path)
    weight = torch.load(ckpt, weights_only=True)["model"]["1.weight"]
    data = bytearray(ckpt.read_bytes())
    at = bytes(data).find(weight.contiguous().numpy().tobytes())
    assert at >= 0
    data[at + 3] ^= 0x40
    ckpt.write_bytes(bytes(data))
    metrics = (ckpt.parent / "metrics.jsonl").read_bytes()
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"online-mas: error: '{ckpt}' is corrupted: its contents do not match the SHA-256" in err
    assert "delete it to restart this run (learner online-mas, seed 0) from scratch" in err
    assert ckpt.read_bytes() == bytes(data)  # kept for inspection, nothing rewritten
    assert (ckpt.parent / "metrics.jsonl").read_bytes() == metrics
    assert not (ckpt.parent / "summary.json").exists()


@pytest.mark.parametrize(("edit", "message"), [
    ({"kind": "something-else"}, r"is not a run checkpoint of this online-mas \(kind 'something-else', "
                                 r"version 1\)"),
    ({"version": 2}, r"is not a run checkpoint of this online-mas \(kind 'online-mas-run', version 2\)"),
    ({"learner": "ewc"}, r"belongs to learner 'ewc' seed 0, not to 'online-mas' seed 0"),
    ({"seed": 3}, r"belongs to learner 'online-mas' seed 3, not to 'online-mas' seed 0"),
])
def test_a_checkpoint_of_another_version_or_run_names_the_mismatch(
        tmp_path: Path, edit: dict[str, object], message: str) -> None:
    run_dir, ckpt = interrupted_run(tmp_path)
    state = checkpoint.load(ckpt)
    checkpoint.save({**state, **edit}, ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(CheckpointError, match=message):
        run_experiment(open_run_dir(run_dir), run_dir)
    assert ckpt.read_bytes() == before
    assert checkpoint.load(ckpt)["step"] == 2 * EVERY  # still there and loadable


# --------------------------------------------------------------------------- poisoned batches


def test_one_percent_poisoned_batches_keep_the_snapshot_count_in_the_runner(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A nan in 1% of the stream's batches: skipped, logged, and nothing learned is lost."""
    import streams.stream

    settings = ["stream.n_segments=3", "stream.passes=3.0", "run.plots=false", "run.progress=false",
                "model.hidden=[32]", "run.checkpoint_every=0", "run.log_every=1"]
    n = 405
    poison = set(torch.randperm(n, generator=torch.Generator().manual_seed(1))[: n // 100].tolist())
    clean_batch = streams.stream.Stream.batch

    def poisoned(self: streams.stream.Stream, step: int) -> Any:
        x, y = clean_batch(self, step)
        if step in poison:
            x = x.clone()
            x.view(-1)[0] = float("nan")
        return x, y

    clean_dir, cfg = create_run_dir(load_config(None, [*settings, 'experiment.learners=["online-mas"]']),
                                    tmp_path / "clean")
    clean = run_experiment(cfg, clean_dir)[0]
    monkeypatch.setattr(streams.stream.Stream, "batch", poisoned)
    learners = ("online-mas", "finetune")
    bad_cfg = load_config(None, [*settings, f"experiment.learners={json.dumps(learners)}"])
    bad_dir, cfg = create_run_dir(bad_cfg, tmp_path / "poisoned")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # OnlineMAS warns once that it skipped x
        bad = run_experiment(cfg, bad_dir)
    assert clean["n_steps"] == n and len(poison) == 4
    assert clean["n_snapshots"] >= 2
    assert abs(bad[0]["n_snapshots"] - clean["n_snapshots"]) <= 1, (bad[0], clean)
    assert abs(bad[0]["average_accuracy"] - clean["average_accuracy"]) < 0.05
    for learner, summary in zip(learners, bad, strict=True):
        u = bad_dir / learner / "seed0"
        lines = [json.loads(s) for s in (u / "metrics.jsonl").read_text().splitlines()]
        assert sorted(line["step"] - 1 for line in lines if "skipped" in line) == sorted(poison)
        state = checkpoint.load(u / "checkpoint.pt")
        for name, t in state["model"].items():  # type: ignore[attr-defined]
            assert bool(torch.isfinite(t).all()), (learner, name)
        assert summary["average_accuracy"] > 0.5, learner  # chance is 0.1
        losses = [line["loss"] for line in lines if "loss" in line]  # one line per step
        assert len(losses) == n - len(poison)
        assert summary["mean_loss"] == pytest.approx(sum(losses) / len(losses)), learner
        assert summary["n_skipped"] == len(poison), learner  # counted in the summary, not only warned
    assert clean["n_skipped"] == 0
