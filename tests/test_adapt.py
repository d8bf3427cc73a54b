"""Test-time adaptation: the entropy objective and filter, collapse and reset, no labels, state."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import Tensor, nn

import online_mas as om
from online_mas.adapt import (
    AdaptConfig,
    Adapter,
    collapse_stats,
    configure_model,
    entropy,
    entropy_loss,
    norm_parameters,
    norm_statistics,
)
from streams import Stream, make_stream

torch.set_num_threads(1)

EVERY_STEP = om.MASConfig(share=1.0)  # estimate importance on every observe() call


def _bn_model(seed: int = 0, d_in: int = 4, c: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, c))


def _x(n: int = 16, d: int = 4, seed: int = 1, shift: float = 0.0) -> Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) + shift


def _hand_entropy(p: list[float]) -> float:
    return -sum(q * math.log(q) for q in p if q > 0)


class Fixed(nn.Module):
    """Returns given logits (plus a trainable offset), whatever the input: hand-made situations."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.offset = nn.Parameter(torch.zeros(logits.shape[1]))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits[: x.shape[0]] + self.offset


# ------------------------------------------------------------------------- the objective


def test_entropy_against_hand_computation() -> None:
    logits = torch.tensor([[math.log(2.0), 0.0], [0.0, 0.0], [math.log(3.0), 0.0]])
    expected = [_hand_entropy([2 / 3, 1 / 3]), math.log(2.0), _hand_entropy([3 / 4, 1 / 4])]
    assert torch.allclose(entropy(logits), torch.tensor(expected), atol=1e-6)
    uniform = torch.zeros(5, 10)
    assert torch.allclose(entropy(uniform), torch.full((5,), math.log(10.0)), atol=1e-6)


def test_filter_skips_exactly_the_samples_above_the_threshold() -> None:
    # entropies: ln 3 (uniform), about 0.037 (confident), H(2/3, 1/6, 1/6), about 0.0004
    logits = torch.tensor([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [math.log(4.0), 0.0, 0.0],
                           [0.0, 0.0, 9.0]], requires_grad=True)
    ents = [math.log(3.0), _hand_entropy([math.exp(6) / (math.exp(6) + 2), 1 / (math.exp(6) + 2),
                                          1 / (math.exp(6) + 2)]),
            _hand_entropy([2 / 3, 1 / 6, 1 / 6]),
            _hand_entropy([1 / (math.exp(9) + 2), 1 / (math.exp(9) + 2),
                           math.exp(9) / (math.exp(9) + 2)])]
    threshold = 0.4 * math.log(3.0)  # 0.439: keeps samples 1 and 3, skips 0 (1.10) and 2 (0.87)
    loss, kept = entropy_loss(logits, threshold=threshold)
    assert kept.tolist() == [e < threshold for e in ents] == [False, True, False, True]
    assert loss.item() == pytest.approx((ents[1] + ents[3]) / 2, rel=1e-5)
    loss.backward()
    assert logits.grad is not None
    assert logits.grad[0].abs().sum() == 0 and logits.grad[2].abs().sum() == 0  # skipped rows
    assert logits.grad[1].abs().sum() > 0
    everything, all_kept = entropy_loss(logits.detach())
    assert all_kept.all() and everything.item() == pytest.approx(sum(ents) / 4, rel=1e-5)


def test_no_confident_sample_gives_zero_loss_and_no_update() -> None:
    loss, kept = entropy_loss(torch.zeros(4, 3, requires_grad=True), threshold=0.1)
    assert not kept.any() and loss.item() == 0.0 and loss.requires_grad
    model = Fixed(torch.zeros(4, 3))  # uniform predictions: entropy ln 3 > 0.4 ln 3
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    adapter = Adapter(model, opt, config=AdaptConfig(e_max=0.4, reset=False))
    before = model.offset.detach().clone()
    step = adapter.step(torch.zeros(4, 1))
    assert (step.n_used, step.updated) == (0, False)
    assert torch.equal(model.offset.detach(), before)


def test_adapter_uses_only_the_kept_samples() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [math.log(4.0), 0.0, 0.0],
                           [0.0, 0.0, 9.0]])
    a, b = Fixed(logits), Fixed(logits[[1, 3]])
    adapt_a = Adapter(a, torch.optim.SGD(a.parameters(), lr=0.5), config=AdaptConfig(reset=False))
    adapt_b = Adapter(b, torch.optim.SGD(b.parameters(), lr=0.5),
                      config=AdaptConfig(e_max=None, reset=False))
    sa, sb = adapt_a.step(torch.zeros(4, 1)), adapt_b.step(torch.zeros(2, 1))
    assert (sa.n_used, sb.n_used) == (2, 2) and sa.loss == pytest.approx(sb.loss)
    assert torch.allclose(a.offset, b.offset) and a.offset.abs().sum() > 0


def test_collapse_stats() -> None:
    collapsed = torch.tensor([[12.0, 0.0, 0.0]] * 9 + [[0.0, 12.0, 0.0]])
    ent, share = collapse_stats(collapsed)
    assert share == 0.9 and ent == pytest.approx(
        _hand_entropy([1 / (1 + 2 * math.exp(-12))] + [math.exp(-12) / (1 + 2 * math.exp(-12))] * 2)
        / math.log(3), rel=1e-2)  # float32 softmax of a 12-logit gap
    confident_but_balanced = torch.eye(3).repeat(3, 1) * 12.0
    assert collapse_stats(confident_but_balanced)[1] == pytest.approx(1 / 3)


# ------------------------------------------------------------------------- collapse and reset


def _force_collapse(model: nn.Module) -> None:
    """Every input predicts class 0 with near-zero entropy."""
    with torch.no_grad():
        model[3].weight.zero_()
        model[3].bias.copy_(torch.tensor([30.0, 0.0, 0.0]))


def test_reset_restores_the_mas_anchor_exactly_after_patience_collapsed_batches() -> None:
    model = _bn_model()
    opt = torch.optim.SGD(configure_model(model, "all"), lr=0.1, momentum=0.9)
    mas = om.OnlineMAS(model, lam=1.0, detector=None)
    cfg = AdaptConfig(e_max=None, collapse_patience=2, observe=False)
    adapter = Adapter(model, opt, mas=mas, config=cfg)
    adapter.calibrate([_x(seed=s) for s in range(3)])
    anchor = {n: t.clone() for n, t in mas.anchors.items()}
    adapter.step(_x(seed=5, shift=1.0))  # an ordinary step moves the parameters
    _force_collapse(model)
    first = adapter.step(_x(seed=6))
    assert first.collapsed and not first.reset and first.updated
    assert opt.state  # momentum buffers exist
    second = adapter.step(_x(seed=7))
    assert second.collapsed and second.reset and not second.updated
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), anchor[n]), n
    assert not opt.state and adapter.resets == [3]
    after = adapter.step(_x(seed=8))  # back at the anchor: not collapsed any more
    assert not after.collapsed and not after.reset


def test_reset_without_mas_goes_back_to_the_parameters_at_construction() -> None:
    model = _bn_model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(configure_model(model, "norm"), lr=0.1)
    adapter = Adapter(model, opt, config=AdaptConfig(collapse_patience=1))
    _force_collapse(model)  # the head is not adapted (norm only): the reset cannot undo this ...
    step = adapter.step(_x())
    assert step.reset and adapter.resets == [1]
    for n, p in model.named_parameters():  # ... but every adapted parameter is back
        if n.startswith("1."):
            assert torch.equal(p.detach(), start[n])


def test_collapse_needs_one_dominant_class_and_reset_can_be_off() -> None:
    balanced = Fixed(torch.eye(3).repeat(4, 1) * 30.0)  # near-zero entropy, classes balanced
    adapter = Adapter(balanced, torch.optim.SGD(balanced.parameters(), lr=0.1),
                      config=AdaptConfig(collapse_patience=1))
    assert not adapter.step(torch.zeros(12, 1)).collapsed
    dominant = Fixed(torch.tensor([[30.0, 0.0, 0.0]] * 12))
    off = Adapter(dominant, torch.optim.SGD(dominant.parameters(), lr=0.1),
                  config=AdaptConfig(collapse_patience=1, reset=False))
    steps = [off.step(torch.zeros(12, 1)) for _ in range(3)]
    assert all(s.collapsed and not s.reset for s in steps) and off.resets == []


# ------------------------------------------------------------------------- labels are never read


def test_unlabeled_stream_end_to_end_with_online_mas_and_no_ground_truth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = make_stream("corrupted-digits", labels=False, passes=0.25, n_segments=3, seed=0)

    def forbidden(self: Stream) -> None:
        raise AssertionError("the adaptation loop read the stream's ground truth")

    monkeypatch.setattr(Stream, "truth", property(forbidden))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 64, 10))
    opt = torch.optim.SGD(configure_model(model, "norm"), lr=0.05)
    mas = om.OnlineMAS(model, lam=1.0, detector=om.Periodic(every=10))
    adapter = Adapter(model, opt, mas=mas, config=AdaptConfig(e_max=None))
    source = [stream.batch(i) for i in range(3)]
    assert all(isinstance(b, Tensor) for b in source)  # unlabeled: inputs only
    adapter.calibrate(source)  # type: ignore[arg-type]
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    steps = [adapter.step(x) for x in stream]  # type: ignore[arg-type]
    assert len(steps) == len(stream) == adapter.step_count
    assert all(s.predictions.shape == (32,) for s in steps)
    # calibration estimates importance without feeding the detector: observe 10, 20, 30 consolidate
    assert [s.step for s in steps if s.event is not None] == [10, 20, 30]
    assert [e.reason for e in mas.events] == ["source", "detector", "detector", "detector"]
    assert any(not torch.equal(p.detach(), start[n]) for n, p in model.named_parameters())
    with pytest.raises(AssertionError, match="ground truth"):
        _ = stream.truth


def test_labels_cannot_be_passed_in() -> None:
    model = _bn_model()
    mas = om.OnlineMAS(model, detector=None)
    adapter = Adapter(model, torch.optim.SGD(model.parameters(), lr=0.1), mas=mas)
    x, y = _x(), torch.zeros(16, dtype=torch.int64)
    with pytest.raises(TypeError, match="no labels"):
        adapter.step((x, y))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no labels"):
        adapter.calibrate([(x, y)])  # type: ignore[list-item]


# ------------------------------------------------------------------------- forward mode, parameters


def test_batch_statistics_leave_running_statistics_and_flags_alone() -> None:
    model = _bn_model()
    model.train()
    bn = model[1]
    mean, var, tracked = bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)
    opt = torch.optim.SGD(configure_model(model, "norm"), lr=0.1)
    adapter = Adapter(model, opt, config=AdaptConfig(norm="batch"))
    x = _x(shift=3.0)
    adapter.step(x)
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert int(bn.num_batches_tracked) == tracked and model.training and bn.training
    h = model[0](x)
    expected = model[3](torch.relu(nn.functional.batch_norm(h, None, None, bn.weight, bn.bias,
                                                            training=True)))
    assert torch.allclose(adapter.predict(x), expected, atol=1e-5)
    running = Adapter(model, opt, config=AdaptConfig(norm="running"))
    model.eval()
    assert torch.allclose(running.predict(x), model(x))


def test_configure_model_selects_normalisation_affine_parameters() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4),
                          nn.Flatten(), nn.LayerNorm(4 * 36), nn.Linear(4 * 36, 2))
    names = [n for n, _ in norm_parameters(model)]
    assert names == ["1.weight", "1.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    chosen = configure_model(model, "norm")
    assert [p.requires_grad for p in model.parameters()] == [False] * 2 + [True] * 6 + [False] * 2
    assert len(chosen) == 6
    assert len(configure_model(model, "all")) == 10 and all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="no parameters to adapt with params='norm'"):
        configure_model(nn.Linear(2, 2), "norm")


# ------------------------------------------------------------------------- penalty forms, state


def test_penalty_as_loss_and_as_gradient_give_the_same_step() -> None:
    results = []
    for form in ("loss", "grad"):
        model = _bn_model()
        opt = torch.optim.SGD(configure_model(model, "all"), lr=0.05)
        mas = om.OnlineMAS(model, lam=0.3, detector=None, config=EVERY_STEP)
        adapter = Adapter(model, opt, mas=mas, config=AdaptConfig(e_max=None, penalty=form,
                                                                  observe=False))
        adapter.calibrate([_x(seed=2)])
        for s in range(3):
            step = adapter.step(_x(seed=10 + s, shift=2.0))
        assert step.penalty > 0
        results.append([p.detach().clone() for p in model.parameters()])
        assert all(p.grad is None for p in model.parameters())  # nothing left in .grad
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_proximal_penalty_with_huge_lam_keeps_the_anchor() -> None:
    model = _bn_model()
    opt = torch.optim.SGD(configure_model(model, "norm"), lr=0.1)
    mas = om.OnlineMAS(model, lam=1e9, detector=None, config=EVERY_STEP)
    adapter = Adapter(model, opt, mas=mas, config=AdaptConfig(e_max=None, observe=False))
    adapter.calibrate([_x(seed=2)])
    for s in range(5):
        adapter.step(_x(seed=s, shift=2.0))
    params = dict(model.named_parameters())
    assert sorted(mas.anchors) == ["1.bias", "1.weight"]
    for n, a in mas.anchors.items():
        assert torch.allclose(params[n].detach(), a, atol=1e-5), n


def test_state_round_trip_gives_identical_next_steps() -> None:
    def build() -> tuple[nn.Module, torch.optim.Optimizer, Adapter]:
        model = _bn_model()
        opt = torch.optim.SGD(configure_model(model, "norm"), lr=0.1, momentum=0.9)
        return model, opt, Adapter(model, opt, config=AdaptConfig(collapse_patience=2))

    model_a, opt_a, a = build()
    for s in range(4):
        a.step(_x(seed=s, shift=1.0))
    buf = io.BytesIO()
    torch.save({"adapter": a.state_dict(), "model": model_a.state_dict(),
                "opt": opt_a.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model_b, opt_b, b = build()
    b.load_state_dict(saved["adapter"])
    model_b.load_state_dict(saved["model"])
    opt_b.load_state_dict(saved["opt"])
    assert b.step_count == 4
    for s in range(4, 7):
        sa, sb = a.step(_x(seed=s, shift=1.0)), b.step(_x(seed=s, shift=1.0))
        assert sa.step == sb.step and sa.loss == sb.loss
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match="version 7 is not supported"):
        b.load_state_dict({"version": 7})


# ------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(("field", "value", "message"), [
    ("norm", "train", "norm must be one of"),
    ("e_max", -0.1, "e_max must be a finite number > 0 .* got -0.1"),
    ("e_max", float("nan"), "e_max must be a finite number > 0 .* got nan"),
    ("penalty", "l2", "penalty must be one of .* got 'l2'"),
    ("collapse_entropy", 1.5, r"collapse_entropy must be a number in \[0, 1\] .* got 1.5"),
    ("collapse_share", 0.0, r"collapse_share must be a number in \(0, 1\], got 0.0"),
    ("collapse_patience", 0, "collapse_patience must be an int >= 1, got 0"),
    ("collapse_patience", True, "collapse_patience must be an int >= 1, got True"),
])
def test_bad_config_values_raise_naming_the_value(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaptConfig(**{field: value})  # type: ignore[arg-type]


def test_bad_arguments() -> None:
    model = _bn_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="reset must be a bool, got 'yes'"):
        AdaptConfig(reset="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"optimizer must be a torch\.optim\.Optimizer"):
        Adapter(model, "sgd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same model"):
        Adapter(model, opt, mas=om.OnlineMAS(_bn_model(1)))
    with pytest.raises(ValueError, match="not the model's"):
        Adapter(model, torch.optim.SGD(_bn_model(2).parameters(), lr=0.1))
    with pytest.raises(ValueError, match="calibrate\\(\\) needs an OnlineMAS"):
        Adapter(model, opt).calibrate([_x()])
    with pytest.raises(ValueError, match="threshold must be a finite number of nats > 0 or None, got 0"):
        entropy_loss(torch.zeros(2, 3), threshold=0)
    with pytest.raises(ValueError, match=r"logits of shape \(N, C\), got \(2, 3, 1\)"):
        entropy(torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match="norm must be one of"), norm_statistics(model, "train"):
        pass
