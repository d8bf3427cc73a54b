"""Replay and distillation learners of the runner: their loss terms by hand, schedules, state."""

from __future__ import annotations

import copy
import io
import tomllib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from online_mas import HardReplay, Reservoir, distillation_loss
from online_mas.experiment import ExperimentConfig, load_config
from online_mas.experiment.configio import config_from_dict, dump_toml
from online_mas.experiment.distill_learners import Distillation
from online_mas.experiment.learners import build_learner
from online_mas.experiment.replay_learners import Rehearsal

NEW = ["er", "der", "lwf", "tfcl", "mas+er", "mas+lwf"]
PERIODIC = [f'learner.{n}.detector="periodic"' for n in ("tfcl", "mas+er", "mas+lwf")] + [
    f"learner.{n}.detector_args={{every=4}}" for n in ("tfcl", "mas+er", "mas+lwf")] + [
    f"learner.{n}.mas.share=0.5" for n in ("tfcl", "mas+er", "mas+lwf")] + [
    "learner.er.size=10", "learner.der.size=10", "learner.tfcl.size=10", "learner.mas+er.size=10",
    "learner.er.batch=4", "learner.der.batch=4", "learner.tfcl.batch=4", "learner.mas+er.batch=4"]


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def step(model: nn.Module, learner: object, x: torch.Tensor, y: torch.Tensor,
         opt: torch.optim.Optimizer) -> object:
    """One step as the runner takes it (online_mas.experiment.run)."""
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    extra = learner.extra_loss(x, y, logits)  # type: ignore[attr-defined]
    (loss if extra is None else loss + extra).backward()
    learner.after_backward()  # type: ignore[attr-defined]
    opt.step()
    return learner.after_step(x, loss.item())  # type: ignore[attr-defined]


def data(n: int = 12, seed: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def test_er_term_is_the_weighted_cross_entropy_of_the_replay_batch() -> None:
    model = tiny()
    er = Rehearsal("er", model, Reservoir(8, seed=1), batch=4, weight=0.5)
    batches = data(3)
    er.extra_loss(*batches[0], model(batches[0][0]))
    er.after_step(batches[0][0], 0.0)
    assert len(er.memory) == 8 and torch.equal(er.memory.y, batches[0][1])
    twin = copy.deepcopy(er.memory)
    x, y = batches[1]
    got = er.extra_loss(x, y, model(x))
    replay = twin.sample(4)
    assert replay is not None
    assert got is not None and torch.allclose(got, 0.5 * F.cross_entropy(model(replay.x), replay.y))


def test_der_term_is_alpha_mse_to_stored_logits_plus_beta_ce() -> None:
    model = tiny()
    der = Rehearsal("der", model, Reservoir(8, seed=1), batch=3, weight=0.0, der=(0.3, 0.7))
    x0, y0 = data(1)[0]
    stored = model(x0).detach()
    der.extra_loss(x0, y0, model(x0))
    der.after_step(x0, 0.0)
    assert der.memory.logits is not None and torch.equal(der.memory.logits, stored)
    with torch.no_grad():
        model[2].bias.add_(1.0)  # the model moved since the logits were stored
    twin = copy.deepcopy(der.memory)
    first, second = twin.sample(3), twin.sample(3)
    assert first is not None and second is not None and first.logits is not None
    expected = 0.3 * F.mse_loss(model(first.x), first.logits) + 0.7 * F.cross_entropy(model(second.x),
                                                                                       second.y)
    got = der.extra_loss(x0, y0, model(x0))
    assert got is not None and torch.allclose(got, expected)


def test_lwf_refreshes_its_teacher_at_the_true_boundaries() -> None:
    model = tiny()
    lwf = build_learner("lwf", ExperimentConfig(), model, [3, 6])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert isinstance(lwf, Distillation)
    events = [step(model, lwf, x, y, opt) for x, y in data(6)]
    assert [e.step for e in events if e is not None] == [3, 6]  # type: ignore[attr-defined]
    x = data(1, seed=5)[0][0]
    teacher = lwf.distiller.teacher
    assert teacher is not None and torch.equal(teacher(x), model(x).detach())  # refreshed at step 6
    x1, y1 = data(1, seed=6)[0]
    step(model, lwf, x1, y1, opt)
    got = lwf.extra_loss(x, None, model(x))  # type: ignore[arg-type]
    assert got is not None and torch.allclose(got, distillation_loss(model(x), teacher(x), temperature=2.0))


def test_mas_lwf_teacher_is_theta_star_after_each_detector_event() -> None:
    model = tiny()
    learner = build_learner("mas+lwf", load_config(None, PERIODIC), model, [])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert isinstance(learner, Distillation) and learner.mas is not None
    events = [step(model, learner, x, y, opt) for x, y in data(9)]
    assert [e.step for e in events if e is not None] == [4, 8]  # type: ignore[attr-defined]
    teacher = learner.distiller.teacher
    assert teacher is not None
    params = dict(teacher.named_parameters())
    assert all(torch.equal(params[n], a) for n, a in learner.mas.mas.anchors.items())
    assert not all(torch.equal(params[n], p) for n, p in model.named_parameters())


def test_tfcl_replays_the_hard_buffer_and_estimates_importance_on_it() -> None:
    cfg = load_config(None, PERIODIC)
    counts = {}
    for name in ("tfcl", "mas+er"):
        model = tiny()
        learner = build_learner(name, cfg, model, [])
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        assert isinstance(learner, Rehearsal) and learner.mas is not None
        for x, y in data(3):
            step(model, learner, x, y, opt)
        counts[name] = learner.mas.mas.running.count
        memory = learner.memory
    assert cfg.learner.tfcl.buffer == "hard" and cfg.learner.tfcl.buffer_importance
    # step 2 estimates its batch (8 samples); tfcl first adds the memory, which holds batch 1 (8)
    assert counts == {"tfcl": 16, "mas+er": 8}
    assert isinstance(build_learner("tfcl", cfg, tiny(), []).memory, HardReplay)  # type: ignore[attr-defined]
    assert isinstance(memory, Reservoir) and not isinstance(memory, HardReplay)


@pytest.mark.parametrize("name", NEW)
def test_state_round_trip_gives_the_same_next_steps(name: str) -> None:
    cfg = load_config(None, PERIODIC)
    batches = data()

    def fresh() -> tuple[nn.Module, object, torch.optim.Optimizer]:
        model = tiny()
        return model, build_learner(name, cfg, model, [3, 7, 12], seed=4), torch.optim.SGD(
            model.parameters(), lr=0.1, momentum=0.9)

    model, learner, opt = fresh()
    for x, y in batches[:6]:
        step(model, learner, x, y, opt)
    buf = io.BytesIO()
    torch.save((model.state_dict(), opt.state_dict(), learner.state_dict()), buf)  # type: ignore[attr-defined]
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    for x, y in batches[6:]:
        step(model, learner, x, y, opt)
    model2, learner2, opt2 = fresh()
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    learner2.load_state_dict(saved[2])  # type: ignore[attr-defined]
    for x, y in batches[6:]:
        step(model2, learner2, x, y, opt2)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert learner.stored_samples() == learner2.stored_samples() == (  # type: ignore[attr-defined]
        0 if "lwf" in name else 10)


def test_config_round_trips_through_toml_with_quoted_keys() -> None:
    cfg = load_config(None, ["learner.mas+er.size=50", "learner.tfcl.buffer_importance=false",
                             "learner.mas+lwf.temperature=3.0"])
    text = dump_toml(cfg)
    assert '[learner."mas+er"]' in text
    again = config_from_dict(tomllib.loads(text))
    assert again == cfg and again.learner.mas_er.size == 50 and again.learner.mas_lwf.temperature == 3.0


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="batch must be an int >= 1, got 0"):
        load_config(None, ["learner.er.batch=0"])
    with pytest.raises(ValueError, match="buffer must be one of"):
        load_config(None, ['learner.tfcl.buffer="fifo"'])
    with pytest.raises(ValueError, match=r"weight must be a finite number >= 0, got -1\.0"):
        load_config(None, ["learner.mas+lwf.weight=-1.0"])


def test_the_runner_reports_stored_samples_for_the_new_learners_only(tmp_path: Path) -> None:
    import json

    from online_mas.cli import main

    out = tmp_path / "run"
    assert main(["run", "--set", "stream.n_segments=2", "--set", "stream.passes=1.0", "--set",
                 "run.plots=false", "--set", 'experiment.learners=["finetune", "er", "mas+lwf"]',
                 "--set", "learner.er.size=50", "--no-progress", "--out", str(out)]) == 0
    summaries = {n: json.loads((out / n / "seed0" / "summary.json").read_text())
                 for n in ("finetune", "er", "mas+lwf")}
    assert "stored_samples" not in summaries["finetune"]
    assert summaries["er"]["stored_samples"] == 50 and summaries["mas+lwf"]["stored_samples"] == 0
    assert summaries["mas+lwf"]["detection"] is not None  # task-free: its detections are scored
    lines = (out / "er" / "seed0" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["stored"] == 50.0
