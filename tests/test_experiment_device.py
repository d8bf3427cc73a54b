"""``run.device`` and ``run.precision``: checked up front, applied to the model, the data and the state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from online_mas import checkpoint
from online_mas.checkpoint import CheckpointError
from online_mas.experiment import (
    Interrupted,
    create_run_dir,
    load_config,
    open_run_dir,
    run_experiment,
    run_unit,
    units,
)
from online_mas.experiment.config import RunConfig
from online_mas.experiment.device import (
    autocast,
    available_devices,
    check_precision,
    grad_scaler,
    resolve_device,
)

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
TINY = ["stream.n_segments=2", "stream.passes=1.0", "run.plots=false", "run.progress=false",
        "model.hidden=[16]", 'experiment.learners=["online-mas", "mas-oracle", "ewc"]',
        "learner.online-mas.mas.share=0.25", "learner.mas-oracle.mas.share=0.25"]


@pytest.mark.parametrize(("fields", "message"), [
    ({"device": "gpu"}, r"device must be one of \('auto', 'cpu', 'cuda', 'cuda:N', 'mps'\), got 'gpu'"),
    ({"device": "cuda:-1"}, r"got 'cuda:-1'"),
    ({"device": "cuda:01"}, r"got 'cuda:01'"),
    ({"device": "CPU"}, r"got 'CPU'"),
    ({"precision": "16"}, r"precision must be one of \('32', 'bf16-mixed', '16-mixed'\), got '16'"),
    ({"precision": 32}, r"precision must be one of .*, got 32"),
])
def test_device_and_precision_are_spelled_right(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunConfig(**fields)  # type: ignore[arg-type]


def test_defaults_are_auto_and_32_and_auto_is_cuda_only_when_there_is_one() -> None:
    run = RunConfig()
    assert (run.device, run.precision) == ("auto", "32")
    want = torch.device("cuda", torch.cuda.current_device()) if CUDA else torch.device("cpu")
    assert resolve_device("auto") == want
    assert resolve_device("cpu") == torch.device("cpu")
    assert available_devices()[0] == "cpu"


@pytest.mark.skipif(CUDA, reason="CUDA is there")
def test_a_missing_device_names_what_is_there() -> None:
    with pytest.raises(ValueError, match=r"^device 'cuda' is not available on this machine; "
                                         r"available: cpu(, mps)? \(or 'auto'\)$"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="precision '16-mixed' needs a CUDA device, got device cpu"):
        check_precision("16-mixed", resolve_device("auto"))


def test_autocast_and_scaler_follow_the_precision() -> None:
    cpu = torch.device("cpu")
    a = torch.ones(2, 2)
    with autocast(cpu, "32"):
        assert (a @ a).dtype == torch.float32
    with autocast(cpu, "bf16-mixed"):
        assert (a @ a).dtype == torch.bfloat16
    assert grad_scaler(cpu, "bf16-mixed") is None and grad_scaler(cpu, "32") is None


def _results(run_dir: Path, learners: tuple[str, ...] = ("online-mas", "mas-oracle", "ewc")) -> dict:
    out = {}
    for learner in learners:
        summary = json.loads((run_dir / learner / "seed0" / "summary.json").read_text())
        summary.pop("timing")
        out[learner] = summary
    return out


def _run(tmp_path: Path, name: str, *settings: str) -> Path:
    run_dir, cfg = create_run_dir(load_config(None, [*TINY, *settings]), tmp_path / name)
    run_experiment(cfg, run_dir, progress=False)
    return run_dir


def test_bf16_mixed_trains_in_bfloat16_and_resumes_exactly(tmp_path: Path) -> None:
    fp32 = _results(_run(tmp_path, "fp32", "run.device=cpu"))
    bf16_dir = _run(tmp_path, "bf16", "run.precision=bf16-mixed")
    bf16 = _results(bf16_dir)
    assert json.loads((bf16_dir / "ewc" / "seed0" / "summary.json").read_text())["timing"]["device"] == "cpu"
    for learner in fp32:  # the forward ran in bfloat16: other numbers, the same run otherwise
        a, b = fp32[learner], bf16[learner]
        assert a["mean_loss"] != b["mean_loss"]
        assert abs(a["mean_loss"] - b["mean_loss"]) < 0.05 * a["mean_loss"]
        assert a["n_steps"] == b["n_steps"] and b["n_skipped"] == 0
        assert abs(a["prequential_accuracy"] - b["prequential_accuracy"]) < 0.05
    # parameters, anchors and importance stay float32
    imp = checkpoint.load(bf16_dir / "mas-oracle" / "seed0" / "importance.pt")
    assert {v.dtype for v in imp.values() if isinstance(v, torch.Tensor)} == {torch.float32}
    # stopped after 12 steps, then resumed from that checkpoint: the uninterrupted run's results
    cut_dir, cfg = create_run_dir(load_config(None, [*TINY, "run.precision=bf16-mixed"]),
                                  tmp_path / "cut")

    class StopAt:
        calls = 0

        def is_set(self) -> bool:
            self.calls += 1
            return self.calls >= 12

    with pytest.raises(Interrupted):
        run_unit(cfg, units(cfg, cut_dir)[0], stop=StopAt(), progress=False)
    state = checkpoint.load(cut_dir / "online-mas" / "seed0" / "checkpoint.pt")
    assert state["step"] == 12 and state["config"]["run"] == {"precision": "bf16-mixed"}  # type: ignore[index]
    run_experiment(open_run_dir(cut_dir), cut_dir, progress=False)
    assert _results(cut_dir) == bf16


def test_a_checkpoint_written_in_another_precision_is_refused(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, "run", 'experiment.learners=["ewc"]', "run.checkpoint_every=5")
    (run_dir / "ewc" / "seed0" / "summary.json").unlink()
    text = (run_dir / "config.toml").read_text()
    (run_dir / "config.toml").write_text(text.replace('precision = "32"', 'precision = "bf16-mixed"'))
    with pytest.raises(CheckpointError, match=r"run\.precision: checkpoint '32', config\.toml 'bf16-mixed'"):
        run_experiment(open_run_dir(run_dir), run_dir, progress=False)


@needs_cuda
@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed"])
def test_a_cuda_run_keeps_everything_on_the_gpu(tmp_path: Path, precision: str) -> None:
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("no bfloat16 on this GPU")
    run_dir = _run(tmp_path, "run", "run.device=cuda", f"run.precision={precision}")
    for learner, summary in _results(run_dir).items():
        assert summary["n_skipped"] == 0 and summary["final_accuracy"], learner
    timing = json.loads((run_dir / "ewc" / "seed0" / "summary.json").read_text())["timing"]
    assert timing["device"] == f"cuda:{torch.cuda.current_device()}"


@needs_cuda
def test_a_cpu_checkpoint_resumes_on_the_gpu(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, "run", "run.device=cpu", "run.checkpoint_every=5")
    cpu = _results(run_dir)
    for learner in cpu:
        (run_dir / learner / "seed0" / "summary.json").unlink()
        ckpt = run_dir / learner / "seed0" / "checkpoint.pt"
        assert checkpoint.load(ckpt)["step"] == 90
    text = (run_dir / "config.toml").read_text()
    (run_dir / "config.toml").write_text(text.replace('device = "cpu"', 'device = "cuda"'))
    run_experiment(open_run_dir(run_dir), run_dir, progress=False)
    assert _results(run_dir) == cpu  # the final checkpoint: nothing left to train, same results


def test_under_torchrun_a_fixed_cuda_index_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from online_mas.experiment import ConfigError
    from online_mas.experiment.preflight import preflight

    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets; preflight runs on rank 0 only
    with pytest.raises(ConfigError, match=r"^\[run\]: under torchrun each rank takes cuda:LOCAL_RANK: "
                                          r"device must be 'auto' or 'cuda', got 'cuda:0'$"):
        preflight(load_config(None, [*TINY, "run.device=cuda:0"]))
