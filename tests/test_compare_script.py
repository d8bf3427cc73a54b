"""scripts/compare.py runs end to end with tiny settings and writes what it measured."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_compare_writes_the_table_from_the_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    compare = importlib.import_module("compare")
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [
        "compare.py", "--scenarios", "permuted-digits", "--learners", "finetune", "er", "--seeds", "0",
        "--passes", "0.2", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "compare")])
    threads = torch.get_num_threads()
    try:
        compare.main()
    finally:
        torch.set_num_threads(threads)
    data = json.loads((tmp_path / "compare.json").read_text())
    rows = data["table"]["permuted-digits"]
    runs = {n: json.loads((tmp_path / "runs" / "permuted-digits" / n / "seed0" / "summary.json").read_text())
            for n in ("finetune", "er")}
    for name, row in rows.items():
        assert row["n_runs"] == 1
        assert row["average_accuracy"]["mean"] == runs[name]["average_accuracy"]
        assert row["ms_per_step"]["mean"] == pytest.approx(1000 / runs[name]["timing"]["steps_per_s"])
        assert row["ms_per_step"]["mean"] > 0
    assert rows["er"]["stored_samples"]["mean"] == 200 and rows["finetune"]["stored_samples"]["mean"] == 0
    text = (tmp_path / "compare.md").read_text()
    acc = 100 * runs["er"]["average_accuracy"]
    assert f"| permuted-digits | er | 1 | {acc:.1f} |" in text and "0.2 passes" in text


def test_compare_avalanche_gives_each_segment_in_stream_order() -> None:
    from streams import StreamConfig, build_stream

    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    harness = importlib.import_module("compare_avalanche")  # Avalanche itself is imported lazily
    stream = build_stream(StreamConfig("permuted-digits", n_segments=3, passes=0.3, batch_size=32, seed=0))
    segs = harness.segments(stream)
    bounds = [0, *stream.change_points, len(stream)]
    assert len(segs) == 3
    for (x, y), a, b in zip(segs, bounds[:-1], bounds[1:], strict=True):
        xs, ys = zip(*(stream.batch(i) for i in range(a, b)), strict=True)
        assert torch.equal(x, torch.cat(xs)) and torch.equal(y, torch.cat(ys))
    assert harness.grid("naive", harness.AvalancheConfig()) == (None,)
    assert harness.grid("ewc", harness.AvalancheConfig()) == harness.AvalancheConfig().ewc_lambdas


def test_tensor_batches_naive_trains_exactly_as_avalanches_loader() -> None:
    pytest.importorskip("avalanche")
    from avalanche.benchmarks.scenarios.deprecated.generic_benchmark_creation import (
        create_generic_benchmark_from_tensor_lists,
    )
    from avalanche.training.plugins import EvaluationPlugin, LwFPlugin
    from avalanche.training.supervised import Naive

    from streams import StreamConfig, build_stream

    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    harness = importlib.import_module("compare_avalanche")
    stream = build_stream(StreamConfig("permuted-digits", n_segments=2, passes=0.5, batch_size=32, seed=0))
    train = harness.segments(stream)
    weights = []
    for kind in (Naive, harness.tensor_batches_naive(train)):
        bench = create_generic_benchmark_from_tensor_lists(
            train_tensors=train, test_tensors=list(stream.eval_sets), task_labels=[0, 0])
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(),
                                    torch.nn.Linear(16, 10))
        learner = kind(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                       torch.nn.CrossEntropyLoss(), train_mb_size=32, train_epochs=1,
                       plugins=[LwFPlugin(alpha=1.0, temperature=2.0)],
                       evaluator=EvaluationPlugin(loggers=[]), device="cpu")
        for experience in bench.train_stream:
            learner.train(experience, shuffle=False)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


def test_stream_forgetting_is_the_usual_one_in_order_and_covers_recurring_segments() -> None:
    from online_mas.metrics import forgetting

    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    compare = importlib.import_module("compare")
    g = torch.Generator().manual_seed(0)
    square = torch.rand(4, 4, generator=g).tolist()
    assert compare.stream_forgetting(square, [0, 1, 2, 3]) == pytest.approx(forgetting(square))
    rows = [[0.9, 0.1, 0.0], [0.5, 0.8, 0.1], [0.8, 0.3, 0.2], [0.6, 0.7, 0.9], [0.4, 0.6, 0.5]]
    # order 0 1 0 2 1: the last one trained is segment 1; segments 0 and 2 count
    want = ((0.9 - 0.4) + (0.9 - 0.5)) / 2
    assert compare.stream_forgetting(rows, [0, 1, 0, 2, 1]) == pytest.approx(want)
    assert compare.stream_forgetting(rows[:1], [0]) is None


def test_selection_keeps_the_best_validation_value() -> None:
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    compare = importlib.import_module("compare")
    selection = {"s": {"online-mas": [{"options": {"lam": 0.1}, "acc": [0.5], "mean": 0.5},
                                      {"options": {"lam": 0.3}, "acc": [0.7], "mean": 0.7}],
                       "mas+er": [{"options": {"lam": 0.3}, "acc": [], "mean": None}]}}
    assert compare.chosen_options(selection) == {"s": {"online-mas": {"lam": 0.3}, "mas+er": {"lam": 0.3}}}
    from online_mas.experiment.config import ExperimentConfig

    cfg = compare.CompareConfig()
    tfcl = compare.grid("tfcl", ExperimentConfig(), cfg, 0.01)
    assert {o["eras"] for o in tfcl} == {True, False} and all(o["lam"] == 0.01 for o in tfcl)
    with pytest.raises(ValueError, match="stage 2"):
        compare.grid("mas+lwf", ExperimentConfig(), cfg, None)


def test_headline_shows_the_best_candidate_of_each_row() -> None:
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    harness = importlib.import_module("compare_avalanche")
    ours = {"s": {"mas+er": [0.8, 0.9], "tfcl": [0.95, 0.95], "er": [0.7, 0.7], "online-mas": [0.6, 0.6]}}
    theirs = {"s": {"replay": [0.85, 0.85], "ewc": [0.5, 0.7], "lwf": [0.65, 0.65]}}
    rows = harness.headline(["s"], ours, theirs).splitlines()[2:]
    assert rows[0].endswith("| 95.0 ± 0.0 (tfcl) |") and rows[1].endswith("| 85.0 ± 0.0 |")
    assert rows[2].endswith("| 70.0 ± 0.0 |") and rows[3].endswith("| 60.0 ± 0.0 (online-mas) |")
    assert rows[4].endswith("| 65.0 ± 0.0 (lwf) |")
    assert harness.headline(["t"], ours, theirs).splitlines()[2].endswith("| n/a |")


def test_each_combination_chooses_its_own_weaker_lam(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 3 tries online MAS's chosen lam x 1/9, 1/3, 1 for mas+er, tfcl and mas+lwf, others fixed."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    compare = importlib.import_module("compare")
    monkeypatch.chdir(ROOT)
    ran: list[tuple[str, dict[str, object]]] = []

    def fake_runs(jobs: list, workers: int, progress: bool) -> list[dict[str, float]]:
        out = []
        for config, unit in jobs:  # online-mas is best at 0.09; every combination at its smallest lam
            opts = config.learner
            mine = {"online-mas": opts.online_mas, "mas-oracle": opts.mas_oracle, "lwf": opts.lwf,
                    "mas+er": opts.mas_er, "tfcl": opts.tfcl, "mas+lwf": opts.mas_lwf}[unit.learner]
            ran.append((unit.learner, dataclasses.asdict(mine)))
            assert config.stream.validation == 0.2 and unit.seed in (100, 101)
            lam = getattr(mine, "lam", 0.0)
            acc = 0.5 - abs(lam - 0.09) if unit.learner == "online-mas" else 0.5 - lam
            acc += 0.01 * (unit.learner == "tfcl" and not mine.eras)  # type: ignore[union-attr]
            acc += 0.01 * (unit.learner == "mas+lwf" and mine.weight == 1.0)  # type: ignore[union-attr]
            out.append({"average_accuracy": acc + 0.002 * (unit.seed - 100)})
        return out

    monkeypatch.setattr(compare, "run_units", fake_runs)
    cfg = compare.CompareConfig(scenarios=("split-mnist1d-domain",), out=str(tmp_path))
    selection = compare.select(cfg, fresh=False)["split-mnist1d-domain"]
    chosen = compare.chosen_options({"s": selection})["s"]
    assert chosen["online-mas"] == {"lam": 0.09}  # the config's 0.03 x 3
    assert chosen["mas+er"] == {"lam": 0.01}
    assert chosen["tfcl"] == {"lam": 0.01, "eras": False}
    assert chosen["mas+lwf"] == {"lam": 0.01, "weight": 1.0, "confidence": 0.0}
    lams = {ln: [(r["stage"], r["options"]["lam"]) for r in selection[ln]] for ln in compare.WITH_MAS}
    assert lams["mas+er"] == [(3, 0.01), (3, 0.03), (3, 0.09)]
    assert lams["tfcl"] == [(2, 0.09), (2, 0.09), (3, 0.01), (3, 0.03)]
    assert lams["mas+lwf"] == [(2, 0.09)] * 4 + [(3, 0.01), (3, 0.03)]
    assert all(r["options"]["eras"] is False for r in selection["tfcl"] if r["stage"] == 3)
    for learner in compare.WITH_MAS:  # each option set ran once per selection seed, none twice
        sets = [json.dumps(o, sort_keys=True) for ln, o in ran if ln == learner]
        assert len(sets) == 2 * len(selection[learner]) and all(sets.count(k) == 2 for k in sets)
    table = compare.selection_table({"split-mnist1d-domain": selection})
    assert "| split-mnist1d-domain | mas+er | 3 | lam=0.01 | 49.1 (49.0, 49.2) | yes |" in table


def test_targets_pair_the_seeds() -> None:
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    harness = importlib.import_module("compare_avalanche")
    ours = {"mas+er": {0: 0.70, 1: 0.74, 2: 0.72}, "tfcl": {0: 0.5, 1: 0.5, 2: 0.5},
            "er": {0: 0.69, 1: 0.71, 2: 0.72}, "mas+lwf": {0: 0.6, 1: 0.6}}
    theirs = {"replay": {0: 0.80, 1: 0.70, 2: 0.75}, "lwf": {1: 0.5, 2: 0.7}, "ewc": {0: 0.1, 1: 0.1}}
    parts = harness.targets(ours, theirs)
    # mas+er - er: differences 1, 3, 0 points: mean 1.33, sd 1.53, SE 0.88
    assert parts[1] == "mas+er - our er: +1.3 (paired SE 0.9, 3 seeds)"
    assert parts[0].endswith("(mas+er) - Avalanche replay (200 samples each, given the boundaries): "
                             "-3.0 (paired SE 4.0, 3 seeds)")  # -10, +4, -3: sd 7
    # best of Avalanche's by mean is lwf (0.6); one seed in common with mas+lwf: no paired SE
    assert parts[2] == ("best task-free memory-free of ours (mas+lwf) - best of Avalanche's EWC, MAS, SI, "
                        "LwF (lwf): +0.0")


def test_compare_variants_changes_one_option_of_the_chosen(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    compare = importlib.import_module("compare")
    variants = importlib.import_module("compare_variants")
    monkeypatch.chdir(ROOT)
    chosen = tmp_path / "compare.json"
    chosen.write_text(json.dumps({"select_seeds": [100, 101], "validation": 0.2, "commit": "x",
                                  "chosen": {"split-mnist1d-domain": {"mas+er": {"lam": 0.03}}}}))
    seen: list[tuple[str, int, float, str, bool]] = []

    def fake_runs(jobs: list, workers: int, progress: bool) -> list[dict[str, float]]:
        out = []
        for config, unit in jobs:
            mine = config.learner.mas_er if unit.learner == "mas+er" else config.learner.er
            importance = getattr(mine, "buffer_importance", False)
            seen.append((unit.learner, unit.seed, getattr(mine, "lam", -1.0), mine.buffer, importance))
            assert config.stream.validation == 0.2
            acc = 0.6 + 0.05 * (unit.learner == "mas+er") + 0.02 * (mine.buffer == "class-balanced")
            out.append({"average_accuracy": acc - 0.01 * importance + 0.002 * (unit.seed - 100)})
        return out

    monkeypatch.setattr(compare, "run_units", fake_runs)
    monkeypatch.setattr(sys, "argv", ["compare_variants.py", "--scenarios", "split-mnist1d-domain",
                                      "--chosen", str(chosen), "--out", str(tmp_path / "runs"),
                                      "--results", str(tmp_path / "variants")])
    variants.main()
    assert sorted(seen) == sorted(
        [("er", s, -1.0, b, False) for s in (100, 101) for b in ("reservoir", "class-balanced")]
        + [("mas+er", s, 0.03, b, i) for s in (100, 101)
           for b, i in (("reservoir", False), ("reservoir", True), ("class-balanced", False))])
    text = (tmp_path / "variants.md").read_text()
    row = ("| split-mnist1d-domain | mas+er | lam=0.03,buffer_importance=True | 64.1 (64.0, 64.2) | -1.0 "
           "| +4.0 |")
    assert row in text
    assert "| split-mnist1d-domain | er | buffer=class-balanced | 62.1 (62.0, 62.2) | -3.0 | +2.0 |" in text
