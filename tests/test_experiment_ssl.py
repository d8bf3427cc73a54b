"""Experiments of kind "ssl": probes, labels read by the probes only, a tiny run, resume, LUMP, config."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from run_helpers import reproducible_results
from torch import Tensor

import online_mas as om
from online_mas.cli import main
from online_mas.experiment import (
    ConfigError,
    Interrupted,
    create_run_dir,
    load_config,
    run_experiment,
    run_unit,
    units,
)
from online_mas.experiment import ssl_run as ssl_run_module
from online_mas.experiment.augment import Augment, random_shift
from online_mas.experiment.probes import knn_accuracy, ridge_accuracy
from online_mas.experiment.ssl_learners import LUMP, SSLNet, embedding, ssl_loss
from online_mas.rehearsal import Reservoir
from streams.scenarios import Segment

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ssl-permuted-digits.toml"
LEARNERS = ("finetune", "online-mas", "mas-oracle", "lump", "joint")
TINY = ["stream.n_segments=3", "stream.passes=0.5", "experiment.seeds=[0]", "model.hidden=[32]",
        "ssl.embed_dim=16", "ssl.proj_dim=16", "ssl.pred_dim=8", "ssl.probe_train=200",
        "run.eval_every=8", "run.log_every=4", "learner.online-mas.detector=periodic",
        "learner.online-mas.detector_args={every=10}"]


def tiny(*more: str) -> Any:
    return load_config(CONFIG, [*TINY, *more])


# ------------------------------------------------------------------------------------ probes


def test_knn_probe_on_a_hand_computed_case() -> None:
    # cosine similarity: the angle is what counts; the test points' 3 nearest neighbours are
    # (a) 3 class-0 points, (b) two class-1 points and one class-0 point, (c) a 1-1-1 tie -> class 0
    z_train = torch.tensor([[1.0, 0.0], [2.0, 0.1], [1.0, -0.1], [0.0, 1.0], [0.1, 3.0], [-1.0, 0.0]])
    y_train = torch.tensor([0, 0, 0, 1, 1, 2])
    z_test = torch.tensor([[5.0, 0.0], [0.05, 1.0], [1.0, 0.0]])
    assert knn_accuracy(z_train, y_train, z_test, torch.tensor([0, 1, 0]), k=3) == 1.0
    assert knn_accuracy(z_train, y_train, z_test, torch.tensor([1, 1, 1]), k=3) == pytest.approx(1 / 3)
    assert knn_accuracy(z_train, y_train, z_test, torch.tensor([2, 2, 2]), k=1) == 0.0
    # k larger than the training set: every point votes, majority class 0 everywhere
    assert knn_accuracy(z_train, y_train, z_test, torch.tensor([0, 0, 0]), k=100) == 1.0
    tie = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # a 1-1 tie goes to the lowest class
    assert knn_accuracy(tie, torch.tensor([1, 0]), torch.tensor([[1.0, 1.0]]), torch.tensor([0]), k=2) == 1.0


def test_ridge_probe_against_an_independent_least_squares_solve() -> None:
    g = torch.Generator().manual_seed(0)
    z_train = torch.randn(60, 5, generator=g)
    y_train = torch.randint(0, 3, (60,), generator=g)
    z_test = torch.randn(40, 5, generator=g)
    y_test = torch.randint(0, 3, (40,), generator=g)
    ridge = 0.3
    # independent: numpy lstsq of the stacked system [Z 1; sqrt(ridge n) I 0] w = [Y; 0]
    zn = z_train.double().numpy()
    mean, std = zn.mean(0), zn.std(0)
    a = np.hstack([(zn - mean) / std, np.ones((60, 1))])
    reg = np.hstack([np.sqrt(ridge * 60) * np.eye(5), np.zeros((5, 1))])
    target = np.eye(3)[y_train.numpy()]
    w = np.linalg.lstsq(np.vstack([a, reg]), np.vstack([target, np.zeros((5, 3))]), rcond=None)[0]
    t = np.hstack([(z_test.double().numpy() - mean) / std, np.ones((40, 1))])
    expected = float((np.argmax(t @ w, 1) == y_test.numpy()).mean())
    assert ridge_accuracy(z_train, y_train, z_test, y_test, ridge=ridge) == pytest.approx(expected)
    # hand case: 1-D, two classes split at 2: ridge 0 puts the boundary halfway between the means
    z = torch.tensor([[0.0], [1.0], [3.0], [4.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert ridge_accuracy(z, y, torch.tensor([[1.9], [2.1]]), torch.tensor([0, 1]), ridge=0.0) == 1.0


@pytest.mark.parametrize("call", [knn_accuracy, ridge_accuracy])
def test_probes_refuse_bad_input(call: Any) -> None:
    z, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(TypeError, match="int64 labels"):
        call(z, y.float(), z, y)
    with pytest.raises(TypeError, match="2-D floating"):
        call(z.flatten(), y, z, y)
    with pytest.raises(ValueError, match="one width"):
        call(z, y, torch.zeros(4, 3), y)
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        knn_accuracy(z, y, z, y, k=0)


# ------------------------------------------------------------------------------- augmentations


def test_augment_shift_mask_noise_and_errors() -> None:
    x = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3).repeat(64, 1, 1, 1)
    shifted = random_shift(x, 1, generator=torch.Generator().manual_seed(0))
    # every view is the image translated by (dy, dx) in {-1, 0, 1}^2 with zero fill
    padded = torch.nn.functional.pad(x[:1], [1, 1, 1, 1])
    options = [padded[0, :, i:i + 3, j:j + 3] for i in range(3) for j in range(3)]
    assert all(any(torch.equal(v, o) for o in options) for v in shifted)
    assert len({tuple(v.flatten().tolist()) for v in shifted}) == 9  # all 9 offsets drawn
    masked = Augment(("mask",), mask=0.5)(torch.ones(4000, 1), generator=torch.Generator().manual_seed(1))
    assert set(masked.unique().tolist()) == {0.0, 1.0} and 0.45 < float(masked.mean()) < 0.55
    noisy = Augment(("noise",), noise=0.2)(torch.zeros(4000, 1), generator=torch.Generator().manual_seed(2))
    assert 0.18 < float(noisy.std()) < 0.22
    signal = torch.arange(1.0, 6.0).reshape(1, 1, 5)  # a 1-D signal (B, C, L)
    out = Augment(("shift",), shift=2)(signal.repeat(50, 1, 1), generator=torch.Generator().manual_seed(3))
    assert all(v.nonzero().numel() >= 3 for v in out)  # at most 2 of 5 samples shifted out
    with pytest.raises(ValueError, match="mask must be a number in"):
        Augment(mask=1.0)
    with pytest.raises(TypeError, match="floating tensor"):
        Augment()(torch.zeros(3, 4, dtype=torch.int64))


# ---------------------------------------------------------------------- labels: only the probes


class Poisoned(Tensor):
    """Labels that raise on any use unless a probe is running."""

    allowed = False

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if not cls.allowed:
            raise AssertionError(f"a label was read outside the probes ({func})")
        return super().__torch_function__(func, types, args, kwargs or {})


def test_labels_are_read_only_by_the_probes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fetch, probe = Segment.fetch, ssl_run_module.probe_accuracies
    calls = []

    def poisoned_fetch(self: Segment, pos: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
        x, y = fetch(self, pos, **kwargs)
        return x, y.as_subclass(Poisoned)

    def probing(encoder: Any, train: Any, test: Any, **kwargs: Any) -> tuple[list[float], list[float]]:
        Poisoned.allowed = True
        try:  # plain tensors inside the probe (a subclass makes every op slow)
            calls.append(1)
            train, test = ([(x, y.as_subclass(Tensor)) for x, y in sets] for sets in (train, test))
            return probe(encoder, train, test, **kwargs)
        finally:
            Poisoned.allowed = False

    monkeypatch.setattr(Segment, "fetch", poisoned_fetch)
    monkeypatch.setattr(ssl_run_module, "probe_accuracies", probing)
    config = tiny(f"experiment.learners={json.dumps(list(LEARNERS))}", "run.eval_every=0",
                  "stream.passes=0.25")
    run_dir, config = create_run_dir(config, tmp_path / "run")
    results = run_experiment(config, run_dir, progress=False)
    assert [r["learner"] for r in results] == list(LEARNERS)
    assert len(calls) == len(LEARNERS) * 4  # before training and at the end of each of 3 segments
    for r in results:
        assert len(r["accuracy_matrix"]) == 3 and all(0.0 <= a <= 1.0 for a in r["final_accuracy"])
    # the poison works: a label touched outside a probe raises
    stream_segment = ssl_run_module.SSLRun(config, units(config, run_dir)[0]).stream.segments[0]
    _, labels = stream_segment.fetch(torch.arange(4))
    with pytest.raises(AssertionError, match="outside the probes"):
        _ = labels + 1


def test_the_training_stream_is_unlabeled(tmp_path: Path) -> None:
    config = tiny()
    run = ssl_run_module.SSLRun(config, units(config, tmp_path)[0])
    assert run.stream.labels is False and isinstance(run.stream.batch(0), Tensor)
    with pytest.raises(TypeError, match="unlabeled batches"):
        run.step(0, (run.stream.batch(0), torch.zeros(32)))


# ------------------------------------------------------------------------ a short run, end to end


def test_tiny_ssl_run_through_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    sets = [a for s in [*TINY, f"experiment.learners={json.dumps(list(LEARNERS))}"] for a in ("--set", s)]
    assert main(["run", str(CONFIG), *sets, "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| lump |" in text and "| joint |" in text
    assert load_config(out / "config.toml").experiment.kind == "ssl"
    n_steps = 3 * (1438 // 2 // 32)  # half a pass over each of 3 segments
    for learner in LEARNERS:
        s = json.loads((out / learner / "seed0" / "summary.json").read_text())
        assert s["kind"] == "ssl" and s["probe"] == "knn" and s["n_steps"] == n_steps
        assert s["prequential_accuracy"] is None
        lin = s["linear_probe"]
        assert len(lin["accuracy_matrix"]) == 3 and len(lin["initial_accuracy"]) == 3
        if learner == "joint":  # i.i.d.: only the last row means something
            assert s["forgetting"] is None and lin["forgetting"] is None
        else:
            assert s["forgetting"] is not None and s["min_accuracy"] is not None
            assert s["anytime_accuracy"] is not None and lin["min_accuracy"] is not None
        text = (out / learner / "seed0" / "metrics.jsonl").read_text()
        lines = [json.loads(line) for line in text.splitlines()]
        assert all("accuracy" not in line for line in lines)
        evals = [line for line in lines if "eval" in line]
        assert all(len(line["eval"]) == 3 and len(line["eval_linear"]) == 3 for line in evals)
        assert [line["step"] for line in evals] == s["accuracy_curve"]["steps"]
    oracle = json.loads((out / "mas-oracle" / "seed0" / "summary.json").read_text())
    assert [e["step"] for e in oracle["events"]] == [*oracle["change_points"], n_steps]
    online = json.loads((out / "online-mas" / "seed0" / "summary.json").read_text())
    assert [e["step"] for e in online["events"]] == list(range(10, n_steps + 1, 10))
    assert online["importance"] and all(k.startswith("encoder.") for k, v in online["importance"].items()
                                        if v["max"] > 0)  # only the encoder has importance
    lump = json.loads((out / "lump" / "seed0" / "summary.json").read_text())
    assert lump["stored_samples"] == 200
    # the results table of scripts/self_supervised.py reads these summaries
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    script = importlib.import_module("self_supervised")
    results = [json.loads((out / n / "seed0" / "summary.json").read_text()) for n in LEARNERS]
    text = "\n".join(script.table("tiny", results, 1.0))
    ft, om_ = results[0], results[1]
    cells = " | ".join(f"{100 * a:.1f}" for a in ft["final_accuracy"])
    acc, forgetting = 100 * ft["average_accuracy"], 100 * ft["forgetting"]
    assert f"| finetune | {cells} | {acc:.1f} | {forgetting:.1f} |" in text
    untrained = " | ".join(f"{100 * a:.1f}" for a in ft["initial_accuracy"])
    assert f"| untrained encoder | {untrained} |" in text
    assert (f"online-mas forgetting {100 * om_['forgetting']:.1f} vs finetune "
            f"{100 * ft['forgetting']:.1f} points") in text


def test_resume_after_an_interruption_gives_the_uninterrupted_results(tmp_path: Path) -> None:
    learners = ["online-mas", "lump"]
    config = tiny(f"experiment.learners={json.dumps(learners)}", "run.checkpoint_every=5",
                  "stream.passes=0.25")
    ref_dir, config = create_run_dir(config, tmp_path / "ref")
    run_experiment(config, ref_dir, progress=False)

    class StopAt:
        def __init__(self, n: int) -> None:
            self.n, self.calls = n, 0

        def is_set(self) -> bool:
            self.calls += 1
            return self.calls >= self.n

    cut_dir, config = create_run_dir(config, tmp_path / "cut")
    for unit in units(config, cut_dir):
        with pytest.raises(Interrupted, match="stopped at step 13"):
            run_unit(config, unit, stop=StopAt(13), progress=False)
        state = torch.load(unit.path / "checkpoint.pt", weights_only=True)
        assert state["step"] == 13 and "linear" in state["record"]
        run_unit(config, unit, progress=False)
    mine, ref = reproducible_results(cut_dir, learners), reproducible_results(ref_dir, learners)
    for learner in learners:
        assert mine[learner] == ref[learner], learner


# ------------------------------------------------------------------------ library side, learners


def test_online_mas_with_output_on_the_encoder_gives_the_encoder_importance_only() -> None:
    torch.manual_seed(0)
    net = SSLNet.build(load_config(CONFIG).model, load_config(CONFIG).ssl, (1, 8, 8))
    mas = om.OnlineMAS(net, lam=1.0, config=om.MASConfig(share=1.0), detector=None, output=embedding)
    x = torch.rand(16, 1, 8, 8)
    mas.observe(x)
    mas.consolidate()
    omega = mas.omega
    assert all(float(omega[n].abs().sum()) == 0.0 for n in omega if not n.startswith("encoder."))
    # the encoder's importance is MAS on the embedding: the encoder alone gives the same values
    alone = om.importance(net.encoder, x)
    for name, value in alone.items():
        assert torch.allclose(omega[f"encoder.{name}"], value, rtol=1e-5, atol=1e-9), name


def test_lump_mixes_the_batch_with_the_memory_and_saves_it() -> None:
    torch.manual_seed(0)
    lump = LUMP(Reservoir(8, seed=0), alpha=0.4)
    lump.after_step(torch.zeros(8, 2), 0.0)
    mixed = lump.mix(torch.ones(5, 2))  # memory of zeros: mixed = lam, one lam per sample
    assert mixed.shape == (5, 2) and torch.equal(mixed[:, 0], mixed[:, 1])
    assert bool(((mixed >= 0) & (mixed <= 1)).all()) and len(set(mixed[:, 0].tolist())) == 5
    twin = LUMP(Reservoir(8, seed=0), alpha=0.4)
    twin.load_state_dict(torch.load(_saved(lump.state_dict()), weights_only=True))
    assert torch.equal(twin.memory.x, lump.memory.x) and twin.stored_samples() == 8
    with pytest.raises(ValueError, match="saved by"):
        twin.load_state_dict({**lump.state_dict(), "learner": "finetune"})


def _saved(state: dict[str, object]) -> Any:
    import io
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("objective", ["simsiam", "dae"])
@pytest.mark.parametrize("batch", [2, 64])
def test_objectives_on_images_and_signals(objective: str, batch: int) -> None:
    torch.manual_seed(0)
    for shape in [(1, 8, 8), (1, 40)]:
        cfg = load_config(CONFIG, [f"ssl.objective={objective}"])
        net = SSLNet.build(cfg.model, cfg.ssl, shape)
        loss = ssl_loss(net, torch.rand(batch, *shape), objective, Augment(("shift", "mask", "noise")))
        loss.backward()
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert all(p.grad is not None for p in net.encoder.parameters())
        if objective == "simsiam":
            assert -1.0 <= loss.item() <= 1.0


def test_ssl_config_errors() -> None:
    with pytest.raises(ConfigError, match="learners must be a non-empty list of distinct names from "
                                          r"\('finetune', 'online-mas', 'mas-oracle', 'lump', 'joint'\)"):
        load_config(CONFIG, ['experiment.learners=["ewc"]'])
    with pytest.raises(ConfigError, match="objective must be one of"):
        load_config(CONFIG, ["ssl.objective=byol"])
    with pytest.raises(ConfigError, match="augment must be a list of distinct names"):
        load_config(CONFIG, ['ssl.augment=["blur"]'])
    with pytest.raises(ConfigError, match="learners must be"):  # lump is an ssl learner only
        load_config(None, ['experiment.learners=["lump"]'])
    from online_mas.experiment import dump_toml
    assert "[ssl]" in dump_toml(load_config(CONFIG)) and "[ssl]" not in dump_toml(load_config(None))
