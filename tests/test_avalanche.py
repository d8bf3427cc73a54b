"""online_mas.avalanche.OnlineMASPlugin in Avalanche's Naive strategy, on tiny permuted-digits streams."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("avalanche")

from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.online import split_online_stream
from avalanche.benchmarks.utils.classification_dataset import (
    _make_taskaware_tensor_classification_dataset as tensor_dataset,
)
from avalanche.core import SupervisedPlugin
from avalanche.models import MTSimpleMLP
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from sklearn.datasets import load_digits
from torch import Tensor, nn

import online_mas as om
from online_mas.avalanche import OnlineMASPlugin


def _benchmark(n: int = 100, experiences: int = 3):  # type: ignore[no-untyped-def]
    """``experiences`` permutations of the first ``n`` digits (the first unpermuted)."""
    d = load_digits()
    x, y = torch.tensor(d.data[:n], dtype=torch.float32) / 16, torch.tensor(d.target[:n])
    g = torch.Generator().manual_seed(0)
    perms = [torch.arange(64)] + [torch.randperm(64, generator=g) for _ in range(experiences - 1)]
    return benchmark_from_datasets(train=[tensor_dataset(x[:, p], y) for p in perms])


def _strategy(*plugins: SupervisedPlugin, model: nn.Module | None = None) -> Naive:
    torch.manual_seed(0)
    model = model if model is not None else nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "No loggers specified"
        evaluator = EvaluationPlugin(loggers=[])
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=10,
                 evaluator=evaluator, plugins=list(plugins))


def _train(strategy: Naive, stream: object) -> None:
    for exp in stream:  # type: ignore[attr-defined]
        strategy.train(exp, eval_streams=[])


class _Gradients(SupervisedPlugin):
    """After OnlineMASPlugin: the task loss's gradient before backward, the total after it."""

    def __init__(self, mas_plugin: OnlineMASPlugin) -> None:
        super().__init__()
        self.mas_plugin = mas_plugin
        self.steps: list[tuple[float, float, float, list[Tensor], list[Tensor], list[Tensor]]] = []

    def before_backward(self, strategy, **kwargs):  # type: ignore[no-untyped-def]
        params = [p for p in strategy.model.parameters()]
        task = strategy.criterion()
        grads = torch.autograd.grad(task, params, retain_graph=True)
        mas = self.mas_plugin.mas
        lam, omega, anchors = mas.lam, list(mas.omega.values()), list(mas.anchors.values())
        triples = list(zip(params, omega, anchors, strict=True))
        value = lam * sum(float((o * (p.detach() - a) ** 2).sum()) for p, o, a in triples)
        pen = [2 * lam * o * (p.detach() - a) for p, o, a in triples]
        self.steps.append((float(task.detach()), float(strategy.loss.detach()), value, list(grads), pen, []))

    def after_backward(self, strategy, **kwargs):  # type: ignore[no-untyped-def]
        self.steps[-1][5].extend(p.grad.clone() for p in strategy.model.parameters())


@pytest.mark.parametrize("form", ["loss", "grad"])
def test_the_penalty_enters_the_loss_and_its_gradient_shows(form: str) -> None:
    plugin = OnlineMASPlugin(lam=5.0, config=om.MASConfig(share=1.0), boundaries="experience", penalty=form)
    probe = _Gradients(plugin)
    _train(_strategy(plugin, probe), _benchmark().train_stream)
    assert [e.step for e in plugin.events] == [10, 20, 30]
    first, later = probe.steps[:10], probe.steps[10:]
    for task, total, value, g_task, pen, g_total in first:  # before any consolidation: no penalty
        assert total == task and value == 0
        assert all(p.abs().sum() == 0 for p in pen)
        assert all(torch.allclose(a, b) for a, b in zip(g_task, g_total, strict=True))
    for task, total, value, g_task, pen, g_total in later:
        assert total == pytest.approx(task + value if form == "loss" else task, rel=1e-6)
        for gt, gp, g in zip(g_task, pen, g_total, strict=True):
            assert torch.allclose(g, gt + gp, atol=1e-6)
    assert [v > 0 for _, _, v, *_ in later] == [i % 10 != 0 for i in range(20)]  # 0 only at the anchor
    assert sum(float(p.abs().sum()) for step in later for p in step[4]) > 1e-3  # a gradient that shows


def test_observe_sees_every_minibatch_once() -> None:
    plugin = OnlineMASPlugin(config=om.MASConfig(share=1.0), detector=None)
    _train(_strategy(plugin), split_online_stream(_benchmark().train_stream, experience_size=20, seed=0))
    mas = plugin.mas
    assert mas is not None
    assert mas.step == 30  # 300 samples, minibatches of 10
    assert mas.running.count == 300  # every sample's importance, nothing consolidated
    assert mas.events == []


def test_the_detector_consolidates_on_an_online_stream() -> None:
    plugin = OnlineMASPlugin(config=om.MASConfig(share=1.0), detector=om.Periodic(every=7))
    _train(_strategy(plugin), split_online_stream(_benchmark().train_stream, experience_size=20, seed=0))
    assert [(e.step, e.reason) for e in plugin.events] == [(7, "detector"), (14, "detector"),
                                                           (21, "detector"), (28, "detector")]
    assert plugin.mas is not None and plugin.mas.segments == 4
    assert plugin.mas.penalty().item() > 0


@pytest.mark.parametrize("n", [100, 90])  # 20 divides 100, not 90: Avalanche flags the last sub-experience
def test_boundaries_experience_on_an_online_stream_counts_the_original_experiences(n: int) -> None:
    plugin = OnlineMASPlugin(config=om.MASConfig(share=1.0), boundaries="experience")
    stream = split_online_stream(_benchmark(n).train_stream, experience_size=20, access_task_boundaries=True,
                                 seed=0)
    _train(_strategy(plugin), stream)
    per_exp = -(-20 // 10) * (n // 20) + -(-(n % 20) // 10)  # minibatches of one original experience
    steps = [e.step for e in plugin.events]
    if n % 20:  # the last is flagged is_last_subexp: consolidated at its end, the last one included
        assert steps == [per_exp, 2 * per_exp, 3 * per_exp]
    else:  # never flagged: consolidated when the next experience starts
        assert steps == [per_exp, 2 * per_exp]
    assert {e.reason for e in plugin.events} == {"boundary"}


def test_boundaries_experience_needs_the_boundaries_of_an_online_stream() -> None:
    plugin = OnlineMASPlugin(boundaries="experience")
    stream = split_online_stream(_benchmark().train_stream, experience_size=20, seed=0)
    with pytest.raises(ValueError, match="access_task_boundaries=True"):
        _train(_strategy(plugin), stream)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"lam": -1.0}, ValueError, "lam must be a finite number >= 0, got -1.0"),
    ({"lam": float("nan")}, ValueError, "lam must be a finite number >= 0, got nan"),
    ({"penalty": "proximal"}, ValueError, r"penalty must be one of .*, got 'proximal'"),
    ({"boundaries": "epoch"}, ValueError, r"boundaries must be one of .*, got 'epoch'"),
    ({"boundaries": "experience", "detector": om.Periodic(every=2)}, ValueError,
     "either boundaries='experience' or detector="),
    ({"config": {"every": 1}}, TypeError, "config must be a MASConfig or None, got <class 'dict'>"),
    ({"detector": object()}, TypeError, "detector must have update"),
    ({"rule": "median"}, ValueError, r"rule must be one of .*, got 'median'"),
    ({"signal": "colour"}, ValueError, "colour"),
])
def test_a_wrong_argument_raises_naming_it(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        OnlineMASPlugin(**kwargs)  # type: ignore[arg-type]


def test_a_multitask_model_or_a_second_model_is_refused() -> None:
    with pytest.raises(TypeError, match=r"MultiTaskModule \(MTSimpleMLP\)"):
        _train(_strategy(OnlineMASPlugin(), model=MTSimpleMLP(input_size=64)), _benchmark().train_stream)
    plugin = OnlineMASPlugin(config=om.MASConfig(share=1.0))
    exp = next(iter(_benchmark().train_stream))
    _strategy(plugin).train(exp, eval_streams=[])
    with pytest.raises(ValueError, match="another model"):
        _strategy(plugin).train(exp, eval_streams=[])


def test_batch_importance_on_the_same_minibatches_is_avalanches_mas_importance() -> None:
    from avalanche.training.plugins import MASPlugin

    theirs = MASPlugin(lambda_reg=1.0)
    s = _strategy(theirs)
    bm = _benchmark()
    exp = next(iter(bm.train_stream))
    s.train(exp, eval_streams=[])
    x = torch.stack([exp.dataset[i][0] for i in range(len(exp.dataset))])
    batches = torch.split(x, 10)  # MASPlugin's loader: in order, train_mb_size
    ours = om.importance(s.model, x, method="exact")
    for name, data in theirs.importance.items():  # type: ignore[union-attr]
        batch = sum(om.importance(s.model, b, method="batch")[name] for b in batches) / len(batches)
        assert torch.allclose(batch, data.data, rtol=1e-5, atol=1e-7)
        assert bool((ours[name] >= data.data - 1e-6).all())  # per-sample |grad| >= |batch grad|
