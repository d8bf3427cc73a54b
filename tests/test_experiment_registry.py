"""The registry of config names: every name validates and builds; old adapt names mean the same."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import online_mas as om
from online_mas.detectors import NeverFires, PageHinkley, Periodic
from online_mas.experiment import load_config
from online_mas.experiment.config import ExperimentConfig, ModelConfig, OptimConfig
from online_mas.experiment.learners import build_learner
from online_mas.experiment.models import build_model
from online_mas.experiment.registry import (
    ADAPT_METHODS,
    DETECTORS,
    LEARNERS,
    MODELS,
    OPTIMIZERS,
    PENALTY_FORMS,
    adapt_detector,
    build_detector,
    parse_method,
)
from online_mas.experiment.run import build_optimizer

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "adapt-digits.toml"


def test_penalty_forms_are_the_library_tuple() -> None:
    from online_mas import adapt
    assert PENALTY_FORMS is adapt.PENALTY_FORMS


@pytest.mark.parametrize("name", LEARNERS)
def test_every_learner_name_builds_that_learner(name: str) -> None:
    learner = build_learner(name, ExperimentConfig(), torch.nn.Linear(4, 2), [3, 6])
    assert learner.name == name and learner.iid == (name == "joint")


@pytest.mark.parametrize("kind", MODELS)
def test_every_model_kind_builds(kind: str) -> None:
    extra = {"factory": "factories:tiny_mlp"} if kind == "factory" else {}
    model = build_model(ModelConfig(kind=kind, **extra), (1, 8, 8), 10)  # type: ignore[arg-type]
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(("name", "cls"), [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)])
def test_every_optimizer_name_builds_that_optimizer(name: str, cls: type) -> None:
    assert set(OPTIMIZERS) == {"sgd", "adam"}
    opt = build_optimizer(OptimConfig(name=name, lr=0.25, weight_decay=0.5), torch.nn.Linear(2, 1))
    assert type(opt) is cls and opt.defaults["lr"] == 0.25 and opt.defaults["weight_decay"] == 0.5


def _same(a: object, b: object) -> bool:
    """The same detector: class, hyperparameters and state (the default wraps another detector)."""
    return type(a) is type(b) and repr(a) == repr(b) and a.state_dict() == b.state_dict()  # type: ignore[attr-defined]


def test_every_detector_name_builds_and_is_valid_in_both_kinds() -> None:
    built = {name: build_detector(name, {"every": 5} if name == "periodic" else {}) for name in DETECTORS}
    assert built["none"] is None and isinstance(built["never"], NeverFires)
    assert _same(built["default"], om.default_detector())
    for name in DETECTORS:
        load_config(None, [f"learner.online-mas.detector={name}"])
        load_config(CONFIG, [f"adapt.detector={name}"])
    with pytest.raises(ValueError, match=r"learner.online-mas.detector must be one of \('default'"):
        build_detector("adwin", where="learner.online-mas")


def test_online_mas_detector_names_build_their_detector() -> None:
    def detector(*overrides: str) -> object:
        cfg = load_config(None, list(overrides))
        return build_learner("online-mas", cfg, torch.nn.Linear(4, 2), [5]).mas.detector
    assert _same(detector(), om.default_detector())
    ph = detector("learner.online-mas.detector=page-hinkley")
    assert isinstance(ph, PageHinkley) and vars(ph) == vars(PageHinkley())  # the library's defaults
    periodic = detector("learner.online-mas.detector=periodic", "learner.online-mas.detector_args={every=7}")
    assert isinstance(periodic, Periodic) and periodic.every == 7
    assert detector("learner.online-mas.detector=none") is None
    with pytest.raises(ValueError, match="'none' takes none"):
        load_config(None, ["learner.online-mas.detector=none", "learner.online-mas.detector_args={every=3}"])


def test_old_adapt_detector_names_keep_their_meaning() -> None:
    # before the registry, [adapt] detector "page-hinkley" built om.default_detector() and "none"
    # passed no detector at all to OnlineMAS; old configs load and build the same things
    assert _same(adapt_detector("page-hinkley", period=9), om.default_detector())
    assert adapt_detector("none", period=9) is None
    periodic = adapt_detector("periodic", period=9)
    assert isinstance(periodic, Periodic) and periodic.every == 9
    assert load_config(CONFIG).adapt.detector == "page-hinkley"
    assert load_config(CONFIG, ["adapt.detector=none"]).adapt.detector == "none"


def test_adapt_stable_samples_is_a_validated_field_and_the_old_key_fails_clearly() -> None:
    assert load_config(CONFIG).adapt.stable_samples == 800  # the old 25 steps at batch 32
    assert load_config(CONFIG, ["adapt.stable_samples=7"]).adapt.stable_samples == 7
    with pytest.raises(ValueError, match="stable_samples must be an int >= 1, got 0"):
        load_config(CONFIG, ["adapt.stable_samples=0"])
    with pytest.raises(ValueError, match=r"adapt\.stable_every is no longer read: .*stable_samples = "
                                         r"stable_every \* the stream's batch_size"):
        load_config(CONFIG, ["adapt.stable_every=25"])


def test_tent_mas_takes_its_settings_from_the_adapt_section(monkeypatch: pytest.MonkeyPatch) -> None:
    from online_mas.experiment import adapt_run
    made: list[om.OnlineMAS] = []
    real = adapt_run.build_mas

    def spy(*args: object, **kwargs: object) -> om.OnlineMAS:
        made.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    monkeypatch.setattr(adapt_run, "build_mas", spy)
    cfg = load_config(CONFIG, ["stream.passes=0.05", "adapt.stable_samples=224", "adapt.mas_share=0.5",
                               "adapt.detector=periodic", "adapt.period=11", "adapt.calibrate_batches=1"])
    source = adapt_run.build_bn_cnn().eval()
    adapt_run.adapt_stream("tent+mas", 0, source, torch.zeros(40, 1, 8, 8), cfg.adapt,
                           dataclasses.replace(cfg.stream))
    (mas,) = made
    assert isinstance(mas.anchor_policy, om.StableAnchor)
    assert (mas.anchor_policy.samples, mas.config.share) == (224, 0.5)
    assert isinstance(mas.detector, Periodic) and mas.detector.every == 11


def test_adapt_method_names() -> None:
    assert [parse_method(m)[0] for m in ADAPT_METHODS] == list(ADAPT_METHODS)
    assert parse_method("tent+mas@0.5") == ("tent+mas", 0.5)
    for bad in ("tent-mas", "tent@0", "tent@x", "tent@nan", 3):
        with pytest.raises(ValueError, match="optionally as name@lr with lr > 0"):
            parse_method(bad)
