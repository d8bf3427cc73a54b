"""Small models of every family the exact estimator must cover, shared by the tests."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import Tensor, nn


def loop_reference(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """The independent computation: one autograd call per sample, in eval mode, |grad| averaged
    (in the parameters' dtype)."""
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    acc = {n: torch.zeros_like(p) for n, p in named}
    for i in range(x.shape[0]):
        out = model(x[i : i + 1])
        grads = torch.autograd.grad(out.pow(2).sum(), [p for _, p in named], allow_unused=True)
        for (n, _), g in zip(named, grads, strict=True):
            if g is not None:
                acc[n] += g.abs()
    return {n: a / x.shape[0] for n, a in acc.items()}


def MLP(d_in: int = 10, hidden: int = 16, d_out: int = 5) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden), nn.Tanh(),
        nn.Linear(hidden, d_out),
    )


class CNN2d(nn.Module):
    """Conv2d (plain, strided+dilated, grouped), BatchNorm2d, GroupNorm, pooling, in-place ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, dilation=2, padding=2, groups=2, bias=False)
        self.gn = nn.GroupNorm(2, 8)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(8 * 2 * 2, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu_(self.bn(self.conv1(x)))
        x = self.pool(torch.relu(self.gn(self.conv2(x))))
        return self.head(x.flatten(1))


class CNN1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 6, 5, stride=2, padding=1)
        self.bn = nn.BatchNorm1d(6)
        self.pool = nn.AdaptiveAvgPool1d(3)
        self.head = nn.Linear(18, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


class EmbeddingBag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 6, padding_idx=0)
        self.head = nn.Linear(6, 3)

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self.emb(idx).mean(1))


class TinyTransformer(nn.Module):
    """Embedding, a transformer encoder block (attention, LayerNorm, MLP) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.pos = nn.Parameter(torch.randn(7, 16) * 0.1)  # a custom parameter: torch.func path
        self.block = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.1,
                                                batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self.block(self.emb(idx) + self.pos).mean(1))


class Shared(nn.Module):
    """One layer called twice and a weight tied between two layers: both need torch.func."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 6)
        self.twice = nn.Linear(6, 6)
        self.out = nn.Linear(6, 6, bias=False)
        self.out.weight = self.inp.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.twice(torch.tanh(self.twice(self.inp(x))))))


def batchnorm_with_stats(model: nn.Module, x: Tensor) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics and affine parameters."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.GroupNorm | nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def families() -> dict[str, tuple[nn.Module, Tensor]]:
    """Each family with a seeded model and batch."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    cnn2, x2 = CNN2d(), torch.randn(6, 3, 8, 8, generator=g)
    cnn1, x1 = CNN1d(), torch.randn(6, 2, 16, generator=g)
    batchnorm_with_stats(cnn2, x2)
    batchnorm_with_stats(cnn1, x1)
    tr = TinyTransformer()
    batchnorm_with_stats(tr, torch.randint(0, 20, (6, 7), generator=g))
    return {
        "mlp": (MLP(), torch.randn(7, 10, generator=g)),
        "cnn2d": (cnn2, x2),
        "cnn1d": (cnn1, x1),
        "embedding": (EmbeddingBag(), torch.randint(0, 12, (6, 5), generator=g)),
        "transformer": (tr, torch.randint(0, 20, (5, 7), generator=g)),
        "shared": (Shared(), torch.randn(5, 6, generator=g)),
    }


def spy_fallback(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The parameter names of each call of the exact pass's torch.func fallback, as they come."""
    exact = sys.modules["online_mas.estimators.exact"]
    calls: list[list[str]] = []
    original = exact.func_sums

    def spy(model, named, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(sorted(named))
        return original(model, named, *args, **kwargs)

    monkeypatch.setattr(exact, "func_sums", spy)
    return calls
