"""Run directories: the recorded config (an edited config.toml is refused), the lock, atomic writes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from online_mas.cli import main
from online_mas.experiment import RunDirError, create_run_dir, load_config, open_run_dir, report_runs
from online_mas.experiment.rundir import write_text

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TINY = ["stream.n_segments=2", "stream.passes=1.0", "run.plots=false", "model.hidden=[16]",
        'experiment.learners=["finetune", "online-mas"]', "run.progress=false"]


def finished_run(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *[a for s in TINY for a in ("--set", s)]]) == 0
    return out


def test_resume_refuses_an_edited_config_naming_the_keys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 18, item 4: a changed lr (and anything else but [run]) is refused, with the keys."""
    out = finished_run(tmp_path)
    shutil.rmtree(out / "online-mas")  # as if killed before online-mas's first checkpoint
    toml = out / "config.toml"
    original = toml.read_text(encoding="utf-8")
    assert "lr = 0.05" in original and "hidden = [16]" in original
    toml.write_text(original.replace("lr = 0.05", "lr = 0.1").replace("hidden = [16]", "hidden = [8]"),
                    encoding="utf-8")
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"online-mas: error: {out}/config.toml differs from the config its runs were started with " \
           "(2 keys: model.hidden: recorded [16], config.toml [8]; optim.lr: recorded 0.05, " \
           "config.toml 0.1)" in err
    assert not (out / "online-mas" / "seed0" / "summary.json").exists()  # nothing ran
    with pytest.raises(RunDirError, match=r"optim\.lr: recorded 0\.05, config\.toml 0\.1"):
        report_runs([out], plots=False)
    # [run] may change between sessions (threads, workers, progress)
    toml.write_text(original.replace("workers = 1", "workers = 2"), encoding="utf-8")
    assert open_run_dir(out).run.workers == 2
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0


def _hold_lock(run_dir: Path) -> subprocess.Popen[str]:
    code = ("import sys, time\nfrom online_mas.experiment.rundir import lock_run_dir\n"
            "with lock_run_dir(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    return proc


def test_a_locked_run_directory_fails_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 18, item 5: while one process writes a run directory, a second run or resume fails at once."""
    out = finished_run(tmp_path)
    (out / "online-mas" / "seed0" / "summary.json").unlink()
    metrics = (out / "finetune" / "seed0" / "metrics.jsonl").read_bytes()
    holder = _hold_lock(out)
    try:
        capsys.readouterr()
        start = time.monotonic()
        assert main(["run", "--resume", str(out), "--no-progress"]) == 2
        assert f"run directory {str(out)!r} is in use by another online-mas process (pid " \
               f"{holder.pid})" in capsys.readouterr().err
        with pytest.raises(RunDirError, match="is in use by another online-mas process"):
            create_run_dir(load_config(None, TINY), out, force=True)
        assert time.monotonic() - start < 30
        assert (out / "finetune" / "seed0" / "metrics.jsonl").read_bytes() == metrics
        assert (out / "config.toml").is_file()
    finally:
        holder.kill()
        holder.wait()
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0  # the lock went with the process
    assert (out / "online-mas" / "seed0" / "summary.json").is_file()


def test_the_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    from online_mas.experiment.rundir import lock_run_dir

    with lock_run_dir(tmp_path), lock_run_dir(tmp_path):
        assert (tmp_path / ".online-mas.lock").read_text() == f"{os.getpid()}\n"


def test_concurrent_atomic_writes_of_one_file_do_not_race(tmp_path: Path) -> None:
    """Issue 18, item 5: each writer has its own temporary file (no '.x.tmp: No such file')."""
    target = tmp_path / "summary.json"
    errors: list[BaseException] = []

    def writer(tag: str) -> None:
        try:
            for i in range(150):
                write_text(target, f"{tag} {i}\n")
        except BaseException as err:  # collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_text() in ("a 149\n", "b 149\n")
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@pytest.mark.parametrize("damage", [b'{"learner": "finetune", "se', b"\xff\xfe", b"[1, 2]"])
def test_a_corrupted_summary_is_a_clear_error_for_report_and_resume(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: bytes) -> None:
    """Issue 18, item 8: no JSONDecodeError traceback; the message says how to write it again."""
    out = finished_run(tmp_path)
    summary = out / "finetune" / "seed0" / "summary.json"
    summary.write_bytes(damage)
    capsys.readouterr()
    for argv in (["report", str(out), "--no-plots"], ["run", "--resume", str(out), "--no-progress"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"online-mas: error: {summary} is corrupted (not ")
        assert f"delete it, and online-mas run --resume {out} writes it again" in err
        assert "Traceback" not in err
    summary.unlink()
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert main(["report", str(out), "--no-plots"]) == 0
    assert "| permuted-digits | finetune | 1 |" in capsys.readouterr().out
