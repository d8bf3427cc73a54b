"""Exact label-free importance against a plain per-sample loop, on every model family."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from models import MLP, families, loop_reference, spy_fallback
from torch import nn

import online_mas as om
from online_mas.estimators import importance_sums

exact = sys.modules["online_mas.estimators.exact"]
FAMILIES = families()
FAST_ONLY = {"mlp", "cnn2d", "cnn1d", "embedding"}



def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), (k, (a[k] - b[k]).abs().max())


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method", ["exact", "vmap", "loop"])
def test_exact_methods_equal_per_sample_loop(family: str, method: str) -> None:
    model, x = FAMILIES[family]
    reference = loop_reference(model, x)
    _assert_close(om.importance(model, x, method=method), reference)


@pytest.mark.parametrize("family", sorted(FAST_ONLY))
def test_fast_paths_cover_standard_layers(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_fallback(monkeypatch)
    model, x = FAMILIES[family]
    om.importance(model, x)
    assert calls == []


def test_uncovered_parameters_take_the_torch_func_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_fallback(monkeypatch)
    model, x = FAMILIES["shared"]
    om.importance(model, x)  # a layer called twice and a tied weight
    assert calls == [["inp.bias", "inp.weight", "twice.bias", "twice.weight"]]
    calls.clear()
    model, x = FAMILIES["transformer"]
    om.importance(model, x)
    assert calls == [["pos"]]  # a custom parameter; the attention projections have their rule


def test_chunk_size_does_not_change_the_result() -> None:
    model, x = FAMILIES["cnn2d"]
    _assert_close(om.importance(model, x, chunk_size=1), om.importance(model, x, chunk_size=64))
    model, x = FAMILIES["transformer"]
    _assert_close(om.importance(model, x, chunk_size=2), om.importance(model, x))


def test_batch_method_is_abs_of_mean_gradient_and_underestimates() -> None:
    model, x = FAMILIES["mlp"]
    model.eval()
    params = list(model.parameters())
    grads = torch.autograd.grad(model(x).pow(2).sum(1).mean(), params)
    batch = om.importance(model, x, method="batch")
    exact = om.importance(model, x)
    for (n, _), g in zip(model.named_parameters(), grads, strict=True):
        assert torch.allclose(batch[n], g.abs(), rtol=1e-5, atol=1e-7)
        assert bool((batch[n] <= exact[n] + 1e-6).all())
    assert any(bool((batch[n] < exact[n] - 1e-4).any()) for n in exact)


def test_local_equals_direct_layerwise_computation() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.LayerNorm(4), nn.Linear(4, 3))
    x = torch.randn(6, 5)
    local = om.importance(model, x, method="local")
    # Direct: record each layer's input, then per sample |d ||layer(a_n)||^2 / d theta|.
    a0 = x
    a2 = torch.relu(model[0](x)).detach()
    a3 = model[2](a2).detach()
    expected: dict[str, torch.Tensor] = {}
    for idx, a in ((0, a0), (2, a2), (3, a3)):
        layer = model[idx]
        for pname, p in layer.named_parameters():
            total = torch.zeros_like(p)
            for i in range(x.shape[0]):
                (g,) = torch.autograd.grad(layer(a[i : i + 1]).pow(2).sum(), [p])
                total += g.abs()
            expected[f"{idx}.{pname}"] = total / x.shape[0]
    _assert_close(local, expected)
    # For a Linear layer it is twice the mean Hebbian product |post| |pre|^T.
    z = model[0](x).detach()
    hebb = 2 * (z.abs().unsqueeze(2) * x.abs().unsqueeze(1)).mean(0)
    assert torch.allclose(local["0.weight"], hebb, rtol=1e-5)


def test_local_handles_every_family() -> None:
    for model, x in FAMILIES.values():
        local = om.importance(model, x, method="local")
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        assert set(local) == names
        assert all(bool(torch.isfinite(v).all()) and bool((v >= 0).all()) for v in local.values())


def test_output_selects_the_tensor_whose_norm_is_used() -> None:
    torch.manual_seed(0)
    model = MLP()
    x = torch.randn(5, 10)
    feats = lambda m, inp: m[:3](inp)  # noqa: E731
    omega = om.importance(model, x, output=feats)
    assert float(omega["4.weight"].abs().sum()) == 0.0  # the head does not touch the features
    _assert_close(omega, om.importance(model, x, output=feats, method="loop"))


def test_tuple_output_needs_an_output_function() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.lin(x), x

    model = Two()
    with pytest.raises(TypeError, match="output=lambda"):
        om.importance(model, torch.randn(4, 3))
    omega = om.importance(model, torch.randn(4, 3), output=lambda m, x: m(x)[0])
    assert set(omega) == {"lin.weight", "lin.bias"}


def test_no_grad_left_training_flags_restored_and_frozen_skipped() -> None:
    model, x = FAMILIES["cnn2d"]
    model.train()
    model.bn.eval()
    model.head.bias.requires_grad_(False)
    try:
        for method in om.METHODS:
            omega = om.importance(model, x, method=method)
            assert "head.bias" not in omega
            assert all(p.grad is None for p in model.parameters())
            assert model.training and not model.bn.training and model.conv1.training
    finally:
        model.head.bias.requires_grad_(True)


def test_works_under_no_grad_and_returns_float32_for_float64_models() -> None:
    torch.manual_seed(0)
    model = MLP().double()
    x = torch.randn(4, 10, dtype=torch.float64)
    with torch.no_grad():
        omega = om.importance(model, x)
    assert all(v.dtype == torch.float32 for v in omega.values())
    ref = loop_reference(model, x)
    _assert_close(omega, {k: v.float() for k, v in ref.items()})


@pytest.mark.parametrize(
    ("kwargs", "x", "error", "match"),
    [
        ({"method": "hessian"}, torch.randn(3, 10), ValueError, "method must be one of"),
        ({}, torch.randn(0, 10), ValueError, "non-empty batch"),
        ({}, [[0.0] * 10], TypeError, "must be a torch.Tensor"),
        ({}, torch.zeros(3, 10, dtype=torch.bool), TypeError, "floating point or integer"),
        ({}, torch.full((3, 10), float("nan")), ValueError, "non-finite"),
        ({"chunk_size": 0}, torch.randn(3, 10), ValueError, "chunk_size must be"),
        ({"output": lambda m, x: m(x).sum()}, torch.randn(3, 10), ValueError, "batch dimension"),
    ],
)
def test_bad_input(kwargs: dict, x: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        om.importance(MLP(), x, **kwargs)  # type: ignore[arg-type]


def test_non_finite_output_is_reported() -> None:
    model = MLP()
    with torch.no_grad():
        model[4].bias[0] = float("inf")
    with pytest.raises(om.NonFiniteError, match="output contains non-finite"):
        om.importance(model, torch.ones(3, 10))
    with torch.no_grad():
        model[4].bias[0] = 0.0
        model[0].weight[0, 0] = float("inf")  # saturates: the output is finite, gradients are not
    with pytest.raises(om.NonFiniteError, match="importance is not finite"):
        om.importance(model, torch.ones(3, 10))


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
        nn.Conv2d(4, 6, 3, stride=3, padding=2, groups=2, bias=False),
        nn.Conv2d(4, 4, 1, groups=4),  # depthwise 1x1
        nn.Conv2d(2, 3, 5, padding=0),  # kernel nearly as large as the input
        nn.Conv1d(2, 4, 3, stride=2, padding=3, dilation=2, groups=2),
    ],
    ids=["rect-stride-dilation", "grouped-stride3", "depthwise", "large-kernel", "conv1d-grouped"],
)
def test_conv_fast_path_geometries_equal_per_sample_loop(conv: nn.Module) -> None:
    torch.manual_seed(0)
    shape = (5, conv.in_channels, 7) if isinstance(conv, nn.Conv1d) else (5, conv.in_channels, 7, 6)
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten())
    x = torch.randn(*shape)
    reference = loop_reference(model, x)
    for chunk in (2, 64):
        _assert_close(om.importance(model, x, chunk_size=chunk), reference)


CONV_GEOMETRIES = {
    "same-2d": (nn.Conv2d(3, 4, 3, padding="same"), (3, 7, 6)),
    "same-even-dilated": (nn.Conv2d(3, 4, (2, 4), padding="same", dilation=(1, 2)), (3, 7, 6)),
    "same-1d-even": (nn.Conv1d(2, 4, 4, padding="same"), (2, 9)),
    "valid": (nn.Conv2d(3, 4, 3, padding="valid"), (3, 7, 6)),
    "reflect-grouped-stride": (nn.Conv2d(4, 6, 3, padding=2, padding_mode="reflect", groups=2, stride=2),
                               (4, 7, 6)),
    "replicate-dilated": (nn.Conv2d(3, 4, 3, padding=1, padding_mode="replicate", dilation=2), (3, 7, 6)),
    "circular-1d": (nn.Conv1d(3, 4, 3, padding=2, padding_mode="circular"), (3, 7)),
    "circular-same": (nn.Conv2d(3, 4, 3, padding="same", padding_mode="circular"), (3, 7, 6)),
    "conv3d": (nn.Conv3d(2, 4, (2, 3, 2), stride=(1, 2, 1), padding=(1, 0, 1), dilation=(2, 1, 1)),
               (2, 5, 6, 4)),
    "conv3d-reflect-same-grouped": (nn.Conv3d(2, 4, 3, padding="same", padding_mode="reflect", groups=2),
                                    (2, 4, 5, 4)),
    "transposed-1d": (nn.ConvTranspose1d(2, 4, 3, stride=2, padding=1, output_padding=1), (2, 6)),
    "transposed-2d-grouped": (nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0),
                                                 dilation=(1, 2), groups=2), (4, 5, 4)),
    "transposed-3d": (nn.ConvTranspose3d(2, 3, 2, stride=2, bias=False), (2, 3, 2, 3)),
    "one-channel-im2col": (nn.Conv2d(1, 8, 3, padding=1, stride=(1, 2)), (1, 7, 6)),  # im2col, bias beside
    "grouped-padded-inside": (nn.Conv2d(4, 6, 3, padding=(1, 2), dilation=(1, 2), groups=2), (4, 7, 6)),
    "rank-1": (nn.Conv2d(3, 5, 4), (3, 4, 4)),  # one output position
    "rank-1-grouped-padded": (nn.Conv2d(4, 6, 3, groups=2, padding=1, stride=3), (4, 3, 3)),
    "rank-1-1d-depthwise": (nn.Conv1d(4, 4, 5, groups=4), (4, 5)),
}


@pytest.mark.parametrize("form", ["chosen", "offsets", "im2col"])
@pytest.mark.parametrize("name", sorted(CONV_GEOMETRIES))
def test_conv_padding_modes_3d_transposed_and_rank_1_equal_per_sample_loop(
    name: str, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conv_module = sys.modules["online_mas.estimators.conv"]
    if form != "chosen":  # each exact form on every geometry (rank 1 takes its own form)
        monkeypatch.setattr(conv_module, "GROUPED_CHANNELS", 0)  # chosen: samples as groups
        monkeypatch.setattr(conv_module, "im2col", lambda *args: form == "im2col")
    layer, shape = CONV_GEOMETRIES[name]
    assert om.plan(layer)["weight"] == "conv"
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        model = nn.Sequential(copy.deepcopy(layer), nn.Tanh(), nn.Flatten()).to(dtype)
        for batch in (1, 5):
            x = torch.randn(batch, *shape, dtype=dtype)
            reference = {k: v.float() for k, v in loop_reference(model, x).items()}
            for chunk in (2, 64):
                _assert_close(om.importance(model, x, chunk_size=chunk), reference)


class Channels(nn.Module):
    """Puts the channels last for a norm over the last dimension, then back."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, -1)).transpose(1, -1)


def _instance(cls: type[nn.Module], track: bool) -> nn.Module:
    return cls(4, affine=True, track_running_stats=track, momentum=0.5)


NORM_LAYERS = {  # each before a conv, so the output gradient differs per position
    "rmsnorm": (lambda: Channels(nn.RMSNorm(4)), (4, 6)),
    "rmsnorm-eps-2d": (lambda: nn.RMSNorm((4, 6), eps=1e-3), (4, 6)),
    "instance1d": (lambda: _instance(nn.InstanceNorm1d, False), (4, 6)),
    "instance1d-running": (lambda: _instance(nn.InstanceNorm1d, True), (4, 6)),
    "instance2d": (lambda: _instance(nn.InstanceNorm2d, False), (4, 5, 3)),
    "instance2d-running": (lambda: _instance(nn.InstanceNorm2d, True), (4, 5, 3)),
    "instance3d": (lambda: _instance(nn.InstanceNorm3d, False), (4, 3, 2, 3)),
    "batchnorm3d": (lambda: nn.BatchNorm3d(4), (4, 3, 2, 3)),
    "prelu-one": (lambda: nn.PReLU(), (4, 5, 3)),
    "prelu-channels": (lambda: nn.PReLU(4, init=0.1), (4, 6)),
}


@pytest.mark.parametrize("name", sorted(NORM_LAYERS))
def test_rmsnorm_instance_norm_and_prelu_equal_per_sample_loop(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, shape = NORM_LAYERS[name]
    conv = {2: nn.Conv1d, 3: nn.Conv2d, 4: nn.Conv3d}[len(shape)]
    calls: list[list[str]] = []
    monkeypatch.setattr(exact, "func_sums", lambda model, named, *a, **k: calls.append(sorted(named)))
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        model = nn.Sequential(conv(4, 4, 3, padding=1), make(), conv(4, 3, 2), nn.Tanh(), nn.Flatten())
        model = model.to(dtype).train()
        with torch.no_grad():  # running statistics and affine parameters away from their defaults
            for _ in range(3):
                model(torch.randn(8, *shape, dtype=dtype) * 2 + 1)
            for pname, p in model[1].named_parameters():
                p.uniform_(0.5, 1.5) if pname.endswith("weight") else p.uniform_(-0.5, 0.5)
        assert {om.plan(model)[f"1.{k}"] for k, _ in model[1].named_parameters()} != {"torch.func"}
        for batch in (1, 5):
            x = torch.randn(batch, *shape, dtype=dtype) * 2 + 1
            reference = {k: v.float() for k, v in loop_reference(model, x).items()}
            model.train()  # the estimator runs it in eval mode (running statistics) and restores it
            for chunk in (2, 64):
                _assert_close(om.importance(model, x, chunk_size=chunk), reference)
            assert model.training
    assert calls == []  # every parameter in closed form


def test_importance_is_sums_over_batch_size_for_every_method() -> None:
    model, x = FAMILIES["cnn2d"]
    for method in om.METHODS:
        sums, n, _ = importance_sums(model, x, method=method)
        mean = om.importance(model, x, method=method)
        _assert_close(mean, {k: v / n for k, v in sums.items()})


def test_a_module_overriding_train_is_switched_by_eval_and_restored() -> None:
    class Sticky(nn.Linear):
        """Stays in training mode unless eval() is called through train()."""

        calls = 0

        def train(self, mode: bool = True) -> Sticky:
            Sticky.calls += 1
            return super().train(mode)

    model = nn.Sequential(Sticky(3, 2))
    model.train()
    Sticky.calls = 0
    om.importance(model, torch.randn(4, 3))
    assert Sticky.calls == 1 and model.training and model[0].training


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_chunked_exact_equals_one_pass_for_every_family(family: str) -> None:
    model, x = FAMILIES[family]
    whole = om.importance(model, x, chunk_size=x.shape[0])
    for chunk in (1, 2, 3):  # uneven last chunk
        _assert_close(om.importance(model, x, chunk_size=chunk), whole)
    _, _, out = importance_sums(model, x, chunk_size=2)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(out, model(x), rtol=1e-5, atol=1e-6)  # the output of every chunk


def test_a_layer_covered_in_some_chunks_only_falls_back_to_torch_func(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Sometimes(nn.Module):
        """Calls its layer a second time (with no effect on the output) on odd-sized batches, so
        the layer is not covered by the fast path in those chunks."""

        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.head = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.lin(x)
            if x.shape[0] % 2:
                h = h + 0.0 * self.lin(x)
            return self.head(torch.tanh(h))

    calls = spy_fallback(monkeypatch)
    torch.manual_seed(0)
    model = Sometimes()
    x = torch.randn(5, 3)  # chunks of 2, 2 and 1: the last one calls lin twice
    _assert_close(om.importance(model, x, chunk_size=2), loop_reference(model, x))
    assert calls == [["lin.bias", "lin.weight"]]


def test_factored_sums_multiply_out_to_the_sums_and_are_checked_before_they_are_returned() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.LayerNorm(8), nn.Linear(8, 3))
    x = torch.randn(9, 6)
    named = dict(model.named_parameters())
    cands = exact.fast_candidates(model, named)
    with exact.recording(cands) as calls:
        out = model(x)
    pairs = exact.output_grads(exact.covered(calls, 9), out)
    expected = importance_sums(model, x)[0]
    sums: dict[str, torch.Tensor] = {}
    factors = exact.factored_sums(cands, pairs, sums, chunk=4)
    assert sorted(factors) == ["0.weight", "3.weight"]  # the Linear weights; biases and norm summed
    assert set(sums) == set(named) - set(factors)
    for n in named:
        got = factors[n][0].t() @ factors[n][1] if n in factors else sums[n]
        torch.testing.assert_close(got, expected[n])
    batch = om.estimate(model, x, factors=True)  # one chunk: the same split through the public call
    assert sorted(batch.factors) == ["0.weight", "3.weight"]
    for n, t in batch.materialize().items():
        torch.testing.assert_close(t, expected[n])
    assert om.estimate(model, x, factors=True, chunk_size=4).factors == {}  # several chunks: no factors
    # products that could overflow are never factored: every sum is formed and checked
    huge = [(m, a * 1e30, gr * 1e10) for m, a, gr in pairs]
    with pytest.raises(om.NonFiniteError, match="importance is not finite"):
        exact.factored_sums(cands, huge, {})
    last = pairs[-1]  # a nan in the last layer's input only: its bias sum stays finite
    nan_last = [*pairs[:-1], (last[0], torch.full_like(last[1], float("nan")), last[2])]
    with pytest.raises(om.NonFiniteError, match=r"importance is not finite for \['3.weight'\]"):
        exact.factored_sums(cands, nan_last, {})


def test_plan_names_the_rule_of_every_parameter_and_sees_layers_called_twice() -> None:
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.weight

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.conv, self.act = nn.Linear(4, 4), nn.Conv1d(1, 2, 3, padding="same"), Scale()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.lin(self.lin(x))  # called twice: the rule does not apply
            return self.act(self.conv(h.unsqueeze(1))).flatten(1)

    model = Twice()
    static = om.plan(model)
    assert static == {"lin.weight": "linear", "lin.bias": "linear", "conv.weight": "conv",
                      "conv.bias": "conv", "act.weight": "torch.func"}  # a custom module: no rule
    assert om.plan(model, torch.randn(3, 4))["lin.weight"] == "torch.func"


@pytest.mark.parametrize("family", ["cnn2d", "cnn1d", "transformer", "mlp"])
def test_per_sample_products_formed_in_small_blocks_give_the_same_sums(
    family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = FAMILIES[family]
    want = om.importance(model, x)
    common = sys.modules["online_mas.estimators.common"]
    monkeypatch.setattr(common, "BLOCK_BYTES", 1)  # one sample per block, every layer
    got = om.importance(model, x)
    _assert_close(got, want)
    _assert_close(got, loop_reference(model, x))


@pytest.mark.parametrize("block_bytes", [1, 3 * 4 * 5 * 4, 2**20])  # one sample, some, all at once
@pytest.mark.parametrize(("n", "groups"), [(1, 1), (7, 1), (5, 3)])
def test_abs_bmm_sum_in_blocks_equals_the_absolute_per_sample_products(
    n: int, groups: int, block_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = sys.modules["online_mas.estimators.common"]
    monkeypatch.setattr(common, "BLOCK_BYTES", block_bytes)
    g = torch.Generator().manual_seed(n)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(n * groups, 4, 6, generator=g, dtype=dtype)
        y = torch.randn(n * groups, 6, 5, generator=g, dtype=dtype)
        want = torch.stack([(x[i] @ y[i]).abs() for i in range(n * groups)]).view(n, groups, 4, 5).sum(0)
        got = common.abs_bmm_sum(x, y, groups)
        assert got.shape == (groups, 4, 5) and got.dtype == dtype
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_chunk_size_from_the_memory_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    budget = sys.modules["online_mas.estimators.budget"]
    torch.manual_seed(0)
    lin, x = nn.Linear(10, 5), torch.randn(7, 10)
    named = dict(lin.named_parameters())
    # one sample: its input, saved for the weight gradient (40 bytes), and its output (20 bytes);
    # torch.func adds one float32 gradient of every parameter (55 * 4 bytes)
    assert budget.sample_bytes(lin, x, om.estimators.common.call_model, named, "exact") == 60
    assert budget.sample_bytes(lin, x, om.estimators.common.call_model, named, "vmap") == 280
    chunks: list[int] = []
    original = exact.exact_sums

    def spy(model, named, x, fn, chunk, **kwargs):  # type: ignore[no-untyped-def]
        chunks.append(chunk)
        return original(model, named, x, fn, chunk, **kwargs)

    monkeypatch.setattr(sys.modules["online_mas.estimators"], "exact_sums", spy)
    model, xs = FAMILIES["mlp"]
    one = budget.sample_bytes(model, xs, om.estimators.common.call_model, dict(model.named_parameters()),
                              "exact")
    want = om.importance(model, xs)
    for memory_budget in (1, 3 * one + 1, None):
        _assert_close(om.importance(model, xs, memory_budget=memory_budget), want)
    assert chunks == [xs.shape[0], 1, 3, xs.shape[0]]  # the default budget holds the whole batch
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="memory_budget must be an int >= 1"):
            om.importance(model, xs, memory_budget=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="memory_budget must be an int >= 1"):
            om.MASConfig(memory_budget=bad)  # type: ignore[arg-type]


def test_plan_with_costs_counts_each_rule_and_names_its_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 6, 4), nn.Tanh())
    model.extra = nn.Parameter(torch.ones(4))  # no rule: torch.func
    x = torch.randn(5, 2, 8)
    costs = om.plan(model, x, costs=True)
    assert isinstance(costs["0.weight"], om.estimators.Cost)
    conv, lin = costs["0.weight"], costs["2.weight"]
    assert conv == costs["0.bias"] and conv.rule == "conv" and conv.layer == "0"
    # 5 samples x 18 weights: a product over 6 output positions, then abs and sum
    assert conv.flops == 2 * 5 * 18 * 6 + 2 * 5 * 18
    assert lin.flops == 2 * 5 * 4 * 18 + 2 * 5 * (4 + 18) and lin.memory == 4 * (4 * 18 + 5 * (4 + 18))
    assert costs["extra"] == ("torch.func", "", None, 5 * 4 * 4)  # one chunk of per-sample gradients
    assert {n: c.rule for n, c in costs.items()} == om.plan(model, x)
    with pytest.raises(ValueError, match="needs an example batch"):
        om.plan(model, costs=True)


def test_outputs_changed_in_place_need_no_copy_and_no_second_forward() -> None:
    # the exact pass takes the gradient at each layer's autograd edge, the layer's own output,
    # whatever ReLU(inplace=True) does to that tensor afterwards: exact, one forward, no copies
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 3), nn.ReLU(inplace=True),
                          nn.Linear(3, 2))
    x = torch.randn(5, 4)
    forwards = []
    model.register_forward_hook(lambda *args: forwards.append(1))
    reference = loop_reference(model, x)
    forwards.clear()
    for _ in range(2):
        got = om.importance(model, x, chunk_size=5)  # no budget probe
        _assert_close(got, reference)
        assert len(forwards) == 1
        forwards.clear()
    assert om.plan(model, x) == {n: "linear" for n in reference}
    assert not any(m in exact._INPLACE for m in model)


@pytest.mark.parametrize("case", ["linear over a sequence", "instance norm", "add_ on the output"])
def test_a_view_output_changed_in_place_keeps_its_importance(case: str) -> None:
    # a Linear over a (batch, tokens, features) input and InstanceNorm return views: an in-place op
    # after them gives the view a new grad_fn, so the layer is recorded as its output tensor, not as
    # an autograd edge that would leave the graph and read a zero gradient
    torch.manual_seed(0)
    if case == "instance norm":
        model: nn.Module = nn.Sequential(nn.Conv2d(2, 4, 3), nn.InstanceNorm2d(4, affine=True),
                                         nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(64, 3))
        x = torch.randn(5, 2, 6, 6)
    else:
        class AddInPlace(nn.Module):
            def forward(self, h: torch.Tensor) -> torch.Tensor:
                return h.add_(1.0)

        after = nn.ReLU(inplace=True) if case == "linear over a sequence" else AddInPlace()
        model = nn.Sequential(nn.Linear(6, 16), after, nn.Linear(16, 3))
        x = torch.randn(8, 4, 6)
    reference = loop_reference(model, x)
    got = om.importance(model, x)
    _assert_close(got, reference)
    assert all(float(v.sum()) > 0 for n, v in got.items() if n.endswith("weight"))


@pytest.mark.parametrize("method", ["exact", "vmap", "jacobian", "fisher", "local"])
def test_a_module_used_twice_keeps_its_parameters(method: str) -> None:
    # torch.func.functional_call (torch 2.14) leaves plain tensors in place of the Parameters of a
    # module instance that appears twice; they would drop out of the user's optimizer
    torch.manual_seed(0)
    shared = nn.Linear(5, 5)
    model = nn.Sequential(shared, nn.Tanh(), shared, nn.Linear(5, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    params = list(model.parameters())
    om.importance(model, torch.randn(8, 5), method=method)
    om.importance(model, torch.randn(8, 5), method=method)  # a second pass still runs
    assert list(model.parameters()) == params and all(isinstance(p, nn.Parameter) for p in params)
    assert opt.param_groups[0]["params"][0] is model[0].weight


def test_half_precision_inputs_that_sum_past_their_range_are_finite() -> None:
    from online_mas.estimators.common import finite

    big = torch.full((4, 8192), 10.0, dtype=torch.float16)  # the sum, 327680, is past float16's range
    assert finite(big) and finite(big.bfloat16())
    assert not finite(torch.tensor([1.0, float("nan")], dtype=torch.float16))
    model = nn.Linear(8192, 4).half()
    assert set(om.importance(model, big)) == {"weight", "bias"}  # not refused as non-finite


class _TiedHead(nn.Module):
    """An output head that reads the embedding's weight through F.linear (a tied head)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.mid = nn.Linear(6, 6)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(torch.tanh(self.mid(self.emb(t))), self.emb.weight)


class _AlsoFunctional(nn.Module):
    """A layer's weight read again through F.linear outside its call."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)) + nn.functional.linear(x, self.a.weight))


@pytest.mark.parametrize("case", ["tied head", "also functional"])
def test_a_parameter_also_used_outside_its_layer_goes_to_torch_func(case: str) -> None:
    # a rule sees its own call's share of a parameter only: one read elsewhere sends it to torch.func
    torch.manual_seed(0)
    model, x = ((_TiedHead(), torch.randint(0, 10, (5, 4))) if case == "tied head"
                else (_AlsoFunctional(), torch.randn(6, 4)))
    reference = loop_reference(model, x)
    _assert_close(om.importance(model, x), reference)
    plan = om.plan(model, x)
    outside = "emb.weight" if case == "tied head" else "a.weight"
    assert plan[outside] == "torch.func" and sum(r == "torch.func" for r in plan.values()) == 1
    mas = om.OnlineMAS(model, lam=1.0, detector=None, config=om.MASConfig(share=1.0, shared_forward=True))
    model(x)
    mas.observe(x)
    _assert_close({n: mas.running.value()[n] for n in reference}, reference)


def test_a_copy_made_during_a_pass_computes_with_its_own_weights() -> None:
    # a user's hook deep-copies the model while the pass has its layers' forwards patched: the
    # copy must run its own class forward, with its own weights
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x = torch.randn(4, 5)
    copies: list[nn.Module] = []
    handle = model[1].register_forward_hook(lambda m, i, o: copies.append(copy.deepcopy(model)))
    om.importance(model, x)
    handle.remove()
    assert "forward" not in model[0].__dict__ and copies
    for cp in copies:  # one per forward of the pass
        cp[1]._forward_hooks.clear()
        cp[0].weight.data.zero_()
        cp[0].bias.data.zero_()
        assert torch.allclose(cp(x), cp[2](torch.zeros(4, 7)))  # the copy's zeroed first layer
        _assert_close(om.importance(cp, x), loop_reference(cp, x))
