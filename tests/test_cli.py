"""The ``online-mas`` command: what it prints, and its errors (exit code 2, nothing overwritten)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from online_mas.cli import main
from online_mas.experiment import create_run_dir, load_config

TINY = ["--set", "stream.n_segments=2", "--set", "stream.passes=1.0", "--set", "run.plots=false",
        "--set", "model.hidden=[16]", "--no-progress"]


def test_run_prints_the_accuracy_on_every_segment_per_learner(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    summaries = {lr: json.loads((out / lr / "seed0" / "summary.json").read_text())
                 for lr in ("finetune", "online-mas", "mas-oracle")}
    assert "| learner | identity | permutation 1 | mean |" in text
    for learner, s in summaries.items():  # the default experiment's three learners
        a, b = (100 * v for v in s["final_accuracy"])
        assert f"| {learner} | {a:.1f} | {b:.1f} | {(a + b) / 2:.1f} |" in text
    assert "| experiment | learner | seeds | ACC % |" in text
    assert f"results in {out}/" in text


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    main(["run", "--out", str(out), *TINY, "--set", 'experiment.learners=["finetune"]'])
    capsys.readouterr()
    assert main(["report", str(out), "--no-plots"]) == 0
    assert "| permuted-digits | finetune | 1 |" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "nope.toml"], "config file 'nope.toml' does not exist"),
    (["run", "--set", "optim.lrr=1"], "unknown key 'optim.lrr'; allowed in [optim]"),
    (["run", "--set", "lr=1"], "--set expects section.key=value, got 'lr=1'"),
    (["run", "--resume", "{tmp}", "--set", "optim.lr=1"], "--resume takes the config from RUN_DIR"),
    (["run", "--resume", "{tmp}"], "is not an online-mas run directory: it has no config.toml"),
    (["report", "{tmp}/none"], "does not exist"),
])
def test_bad_input_exits_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          argv: list[str], message: str) -> None:
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("online-mas: error: ") and message in err


def test_malformed_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim\nlr = 0.1\n")
    assert main(["run", str(bad)]) == 2
    assert "is not valid TOML" in capsys.readouterr().err


def test_an_existing_run_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = create_run_dir(load_config(None, []), tmp_path / "run")
    before = (out / "config.toml").read_text()
    assert main(["run", "--out", str(out), *TINY]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (out / "config.toml").read_text() == before


def test_force_refuses_a_folder_that_merely_holds_a_config_toml(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 18, item 2: only the runner's marker proves a run directory."""
    folder = tmp_path / "p"
    (folder / "chapters").mkdir(parents=True)
    (folder / "config.toml").write_text('title="x"\n')
    (folder / "thesis.tex").write_text("d\n")
    (folder / "chapters" / "one.tex").write_text("precious\n")
    before = sorted(str(f.relative_to(folder)) for f in folder.rglob("*"))
    for force in ([], ["--force"]):
        assert main(["run", "--out", str(folder), *TINY, *force]) == 2
        err = capsys.readouterr().err
        assert "is not an online-mas run directory (no .online-mas-run marker): refusing to delete " \
               "it, even with --force" in err
    assert sorted(str(f.relative_to(folder)) for f in folder.rglob("*")) == before  # no lock file
    assert (folder / "chapters" / "one.tex").read_text() == "precious\n"


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "{run,report}" in capsys.readouterr().out


def test_an_emoji_run_directory_resumes_and_reports(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 18, item 3: the stored config.toml is real TOML, so --resume and report read it."""
    out = tmp_path / "my run ü 😀"
    assert main(["run", "--out", str(out), *TINY, "--set", 'experiment.learners=["finetune"]']) == 0
    text = (out / "config.toml").read_text(encoding="utf-8")
    assert f'out_dir = "{out}"' in text and "\\ud83d" not in text
    capsys.readouterr()
    assert main(["report", str(out), "--no-plots"]) == 0
    assert "| permuted-digits | finetune | 1 |" in capsys.readouterr().out
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0


@pytest.mark.parametrize(("setting", "message"), [
    ("stream.batch_size=0", "[stream] (seed 0): batch_size must be an int >= 1, got 0"),
    ("stream.batch_size=-5", "[stream] (seed 0): batch_size must be an int >= 1, got -5"),
    ("stream.batch_size=100000", "[stream] (seed 0): batch_size must be at most the smallest "
                                 "segment's training data (1438 samples), got 100000"),
    ("stream.passes=0", "passes must be a finite number > 0, got 0.0"),
    ("stream.passes=nan", "passes must be a finite number > 0, got nan"),
    ("stream.passes=inf", "passes must be a finite number > 0, got inf"),
    ("stream.order=[0,0,0,9]", "order must list segment ids in [0, 2), got [0, 0, 0, 9]"),
    ("experiment.seeds=[18446744073709551616]", "seeds must be a non-empty list of distinct ints in "
                                                "[0, 2**63), got (18446744073709551616,)"),
    ("learner.online-mas.detector_args={threshold=-1}",
     "[learner.online-mas]: learner.online-mas.detector_args {'threshold': -1} do not fit detector "
     "'page-hinkley': threshold must be a finite number > 0.0, got -1"),
])
def test_every_value_is_checked_before_the_run_directory_exists(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str, message: str) -> None:
    """Issue 18, item 8: a clear error, exit 2, and no directory to --force away."""
    out = tmp_path / "run"
    argv = ["run", "--out", str(out), *TINY, "--set", setting]
    if "detector_args" in setting:
        argv += ["--set", "learner.online-mas.detector=page-hinkley"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("online-mas: error: ") and message in err and "Traceback" not in err
    assert not out.exists()


def test_garbage_data_files_exit_2_naming_the_file_and_leave_no_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 18, item 8: a garbage CIFAR file is named (no raw UnpicklingError), before any writing."""
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"\x80\x02garbage")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="verify=False"):
        code = main(["run", "--out", str(out), *TINY, "--set", "stream.name=permuted-cifar10",
                     "--set", f"stream.root={tmp_path / 'data'}", "--set", "stream.verify=false"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"online-mas: error: [stream] (seed 0): {folder / 'data_batch_1'} is not a "
                          "pickle of numpy arrays and plain containers")
    assert not out.exists()


@pytest.mark.parametrize(("settings", "message"), [
    (["run.device=cuda:99"], "[run]: device 'cuda:99' is not available on this machine; available: cpu"),
    (["run.device=gpu"], "device must be one of ('auto', 'cpu', 'cuda', 'cuda:N', 'mps'), got 'gpu'"),
    (["run.precision=fp16"], "precision must be one of ('32', 'bf16-mixed', '16-mixed'), got 'fp16'"),
    (["model.kind=factory", "model.factory=no_such_pkg.models:net"],
     "[model]: factory 'no_such_pkg.models:net': cannot import module 'no_such_pkg.models' "
     "(ModuleNotFoundError: No module named 'no_such_pkg'); it must be installed or on PYTHONPATH"),
    (["model.kind=factory", "model.factory=torchvision.models:resnet18"],
     "[model]: the model does not take the stream's inputs of shape (1, 8, 8) (batch first): "
     "RuntimeError: Given groups=1, weight of size [64, 3, 7, 7], expected input[2, 1, 8, 8] to have "
     "3 channels, but got 1 channels instead"),
    (["model.kind=factory", "model.factory=factories:broken"],
     "[model]: factory 'factories:broken' called with kwargs {} failed: KeyError: 'no such layer'"),
    (["experiment.kind=adapt", "stream.name=corrupted-digits", "run.device=cpu", "run.precision=bf16-mixed"],
     "[run]: experiment.kind = 'adapt' runs on the CPU in float32: device must be 'auto' or 'cpu' and "
     "precision '32', got 'cpu' and 'bf16-mixed'"),
])
def test_a_bad_device_or_model_factory_exits_2_with_one_line_and_no_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: list[str], message: str) -> None:
    """Issue 17, point 6: checked before the run directory exists; one clear line."""
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *TINY, *[a for s in settings for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("online-mas: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is there")
def test_16_mixed_without_cuda_exits_2_before_the_run_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *TINY, "--set", "run.precision=16-mixed"]) == 2
    assert capsys.readouterr().err == ("online-mas: error: [run]: precision '16-mixed' needs a CUDA "
                                       "device, got device cpu; use 'bf16-mixed' or '32'\n")
    assert not out.exists()
