"""``[model]`` kinds of the runner: the factory kind (your own module), validated before a run."""

from __future__ import annotations

import pickle
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from online_mas.experiment import ConfigError, create_run_dir, load_config, run_experiment
from online_mas.experiment.config import ModelConfig
from online_mas.experiment.models import build_model, check_model, load_factory, model_signature
from online_mas.experiment.preflight import preflight

TINY = ["stream.n_segments=2", "stream.passes=1.0", "run.plots=false", "run.progress=false"]


def test_a_factory_builds_the_module_it_names_with_its_kwargs() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="factory", factory="factories:tiny_mlp",
                                    kwargs={"width": 7}), (1, 8, 8), 10)
    assert model_signature(model) == {"1.weight": [7, 64], "1.bias": [7], "3.weight": [10, 7],
                                      "3.bias": [10]}
    assert load_factory("torchvision.models:resnet18").__name__ == "resnet18"


@pytest.mark.parametrize(("fields", "error", "message"), [
    ({"kind": "factory"}, ValueError, r"kind 'factory' needs factory = 'package.module:callable' "
                                      r"\(e.g. 'torchvision.models:resnet18'\), got None"),
    ({"kind": "factory", "factory": "torchvision.models.resnet18"}, ValueError,
     r"got 'torchvision.models.resnet18'"),
    ({"kind": "factory", "factory": "a b:c"}, ValueError, r"got 'a b:c'"),
    ({"kind": "mlp", "factory": "factories:tiny_mlp"}, ValueError,
     r"factory and kwargs need kind = 'factory', got kind 'mlp'"),
    ({"kind": "cnn", "kwargs": {"width": 3}}, ValueError, r"need kind = 'factory', got kind 'cnn'"),
])
def test_factory_fields_are_checked_on_entry(fields: dict[str, object], error: type[Exception],
                                             message: str) -> None:
    with pytest.raises(error, match=message):
        ModelConfig(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("factory", "kwargs", "message"), [
    ("no_such_module_xyz:f", {}, "[model]: factory 'no_such_module_xyz:f': cannot import module "
     "'no_such_module_xyz' (ModuleNotFoundError: No module named 'no_such_module_xyz'); it must be "
     "installed or on PYTHONPATH"),
    ("factories:nope", {}, "[model]: factory 'factories:nope': module 'factories' has no attribute 'nope'"),
    ("factories:NOT_CALLABLE", {}, "[model]: factory 'factories:NOT_CALLABLE' must be callable, got a int"),
    ("factories:not_a_module", {}, "[model]: factory 'factories:not_a_module' must return a "
     "torch.nn.Module, got a list"),
    ("factories:broken", {"a": 1}, "[model]: factory 'factories:broken' called with kwargs {'a': 1} "
     "failed: KeyError: 'no such layer'"),
    ("factories:tiny_mlp", {"depth": 2}, "[model]: factory 'factories:tiny_mlp' called with kwargs "
     "{'depth': 2} failed: TypeError: tiny_mlp() got an unexpected keyword argument 'depth'"),
    ("factories:tiny_mlp", {"in_features": 10}, "[model]: the model does not take the stream's inputs "
     "of shape (1, 8, 8) (batch first): RuntimeError: mat1 and mat2 shapes cannot be multiplied "
     "(2x64 and 10x16)"),
    ("factories:tiny_mlp", {"n_classes": 3}, "[model]: the model must return one logit per class, "
     "shape (batch, 10), got (2, 3)"),
])
def test_preflight_imports_calls_and_runs_the_factory(factory: str, kwargs: dict[str, object],
                                                      message: str) -> None:
    cfg = load_config(None, [*TINY, "model.kind=factory", f"model.factory={factory}",
                             f"model.kwargs={_toml(kwargs)}"])
    with pytest.raises(ConfigError) as info:
        preflight(cfg)
    assert str(info.value) == message


def test_check_model_restores_the_training_mode() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5))
    check_model(model, (3,), 2)
    assert model.training


def test_a_factory_config_is_written_and_read_back(tmp_path: Path) -> None:
    cfg = load_config(None, [*TINY, "model.kind=factory", "model.factory=factories:tiny_mlp",
                             "model.kwargs={width = 8}", 'experiment.learners=["online-mas"]'])
    run_dir, cfg = create_run_dir(cfg, tmp_path / "run")
    text = (run_dir / "config.toml").read_text()
    assert 'factory = "factories:tiny_mlp"' in text and "kwargs = {width = 8}" in text
    assert load_config(run_dir / "config.toml") == cfg
    default = create_run_dir(load_config(None, TINY), tmp_path / "default")[0] / "config.toml"
    assert tomllib.loads(default.read_text())["model"] == {"kind": "mlp", "hidden": [100, 100],
                                                           "channels": [16, 32]}  # as before
    summary = run_experiment(cfg, run_dir, progress=False)[0]
    assert summary["importance"]["1.weight"]["numel"] == 8 * 64


def _tiny_cifar10(root: Path) -> Path:
    """CIFAR-10's pickled batches, 6 training images per batch file, in the real format."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        batch = {"data": rng.integers(0, 256, size=(6, 3072), dtype=np.uint8),
                 "labels": [(i + j) % 10 for j in range(6)]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    (folder / "test_batch").write_bytes(pickle.dumps(
        {"data": rng.integers(0, 256, size=(20, 3072), dtype=np.uint8),
         "labels": [j % 10 for j in range(20)]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return root


def test_torchvision_resnet18_trains_on_a_tiny_cifar_stream(tmp_path: Path) -> None:
    root = _tiny_cifar10(tmp_path / "data")
    cfg = load_config(None, [*TINY, "stream.name=permuted-cifar10", f"stream.root={root}",
                             "stream.verify=false", "stream.batch_size=6", "model.kind=factory",
                             "model.factory=torchvision.models:resnet18", "model.kwargs={num_classes = 10}",
                             'experiment.learners=["mas-oracle"]', "learner.mas-oracle.mas.share=0.5",
                             "learner.mas-oracle.penalty=proximal", "optim.lr=0.01"])
    with pytest.warns(UserWarning, match="verify=False"):
        preflight(cfg)
        run_dir, cfg = create_run_dir(cfg, tmp_path / "run")
        (summary,) = run_experiment(cfg, run_dir, progress=False)
    # 30 training images per segment, batches of 6: 5 steps each, a consolidation at each end
    assert (summary["n_steps"], summary["n_skipped"]) == (10, 0)
    assert [e["step"] for e in summary["events"]] == [5, 10]
    assert len(summary["accuracy_matrix"]) == 2 and len(summary["accuracy_matrix"][0]) == 2
    imp = summary["importance"]
    assert imp["conv1.weight"]["numel"] == 64 * 3 * 7 * 7 and imp["fc.weight"]["numel"] == 10 * 512
    assert imp["fc.weight"]["max"] > 0 and imp["conv1.weight"]["max"] > 0  # estimated on the resnet


def _toml(kwargs: dict[str, object]) -> str:
    return "{" + ", ".join(f"{k} = {v}" for k, v in kwargs.items()) + "}"
