"""Inputs that are not one tensor: a tuple (``model(*x)``) or a dict (``model(**x)``) of tensors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import online_mas as om


class TinyLM(nn.Module):
    """HuggingFace-like: input_ids and attention_mask as keywords, a dict output."""

    def __init__(self, vocab: int = 20, d: int = 8, n_classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Tensor]:
        h = self.embed(input_ids)
        h = self.norm(h + self.attn(h, h, h, key_padding_mask=~attention_mask, need_weights=False)[0])
        pooled = (h * attention_mask.unsqueeze(-1)).sum(1) / attention_mask.sum(1, keepdim=True)
        return {"logits": self.head(pooled), "hidden": h}


class TwoTowers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 6), nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, left: Tensor, right: Tensor) -> Tensor:
        return self.out(torch.tanh(self.a(left) + self.b(right)))


def _lm_batch(n: int, g: torch.Generator) -> dict[str, Tensor]:
    ids = torch.randint(0, 20, (n, 5), generator=g)
    mask = torch.ones(n, 5, dtype=torch.bool)
    mask[::2, 3:] = False  # every other sample is shorter
    return {"input_ids": ids, "attention_mask": mask}


def logits(m: nn.Module, x: dict[str, Tensor]) -> Tensor:
    return m(**x)["logits"]


def _per_sample_loop(model: nn.Module, x: object, fn) -> dict[str, Tensor]:  # type: ignore[no-untyped-def]
    """The obvious reference: one sample at a time, autograd, |grad| averaged."""
    sums = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    items = x.items() if isinstance(x, dict) else enumerate(x)  # type: ignore[attr-defined]
    n = next(iter(dict(items).values())).shape[0]
    model.eval()
    for i in range(n):
        xi = ({k: t[i : i + 1] for k, t in x.items()} if isinstance(x, dict)  # type: ignore[attr-defined]
              else tuple(t[i : i + 1] for t in x))  # type: ignore[attr-defined]
        model.zero_grad()
        fn(model, xi).pow(2).sum().backward()
        for name, p in model.named_parameters():
            sums[name] += p.grad.abs()  # type: ignore[union-attr]
    return {k: v / n for k, v in sums.items()}


@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("method", ["exact", "vmap", "loop"])
def test_dict_inputs_equal_a_per_sample_loop(n: int, method: str) -> None:
    torch.manual_seed(0)
    model, x = TinyLM(), _lm_batch(n, torch.Generator().manual_seed(1))
    got = om.importance(model, x, method=method, output=logits, chunk_size=3)
    want = _per_sample_loop(model, x, logits)
    for name, t in want.items():
        torch.testing.assert_close(got[name], t, rtol=1e-4, atol=1e-6)


def test_tuple_inputs_equal_a_per_sample_loop_and_take_the_closed_forms() -> None:
    torch.manual_seed(0)
    model = TwoTowers()
    x = (torch.randn(6, 4), torch.randn(6, 3))
    got = om.importance(model, x)
    want = _per_sample_loop(model, x, lambda m, xi: m(*xi))
    for name, t in want.items():
        torch.testing.assert_close(got[name], t, rtol=1e-4, atol=1e-6)
    assert set(om.plan(model, x).values()) == {"linear"}


def test_online_mas_observes_dict_inputs() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    mas = om.OnlineMAS(model, lam=0.1, config=om.MASConfig(share=0.5, subsample=4), output=logits,
                       detector=om.Periodic(every=3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(2)
    for _ in range(6):
        x = _lm_batch(8, g)
        loss = logits(model, x).logsumexp(1).mean() + mas.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mas.observe(x)
    assert [e.step for e in mas.events] == [3, 6]
    assert mas.events[-1].stats["samples"] == 8.0  # estimates at steps 4 and 6, 4 samples each
    assert all(torch.isfinite(t).all() for t in mas.omega.values())


def test_bad_structured_inputs_name_what_is_wrong() -> None:
    model = TwoTowers()
    with pytest.raises(ValueError, match=r"same batch size first, got \(\(5, 4\), \(6, 3\)\)"):
        om.importance(model, (torch.randn(5, 4), torch.randn(6, 3)))
    with pytest.raises(TypeError, match=r"every entry of x must be a tensor, got \['list'\]"):
        om.importance(model, (torch.randn(5, 4), [1.0]))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a HardBuffer keeps tensor inputs"):
        om.OnlineMAS(model, buffer=om.HardBuffer(4)).observe((torch.randn(5, 4), torch.randn(5, 3)))
    with pytest.raises(om.NonFiniteError, match="x contains non-finite"):
        om.importance(model, (torch.randn(5, 4), torch.full((5, 3), float("nan"))))


def test_the_signal_of_a_tuple_input_comes_from_the_users_own_forward() -> None:
    torch.manual_seed(0)
    model = TwoTowers()
    mas = om.OnlineMAS(model, config=om.MASConfig(share=1 / 64), detector=om.Periodic(every=100))
    x = (torch.randn(5, 4), torch.randn(5, 3))
    model.train()
    out = model(*x)  # the training forward; observe must not run another
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    mas.observe(x)
    handle.remove()
    expected = float(om.signals.per_sample("entropy", out.detach()).mean())
    assert calls == [] and mas.last_signal == pytest.approx(expected, rel=1e-6)
