"""scripts/gradient_property.py: its pairwise metrics against hand values and scipy, its Jacobian
decomposition against the library's estimators, and its tables against its own runs."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import scipy.stats
import torch
from torch import nn

import online_mas as om

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def gp() -> ModuleType:
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module("gradient_property")


def test_spearman_is_scipys_without_the_entries_zero_in_both(gp: ModuleType) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(50, generator=g, dtype=torch.float64), torch.rand(50, generator=g, dtype=torch.float64)
    assert gp.spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-12)
    # ranks 1..4 reversed in b: -1; the two shared zeros (a dead input) are left out, not a tie
    a = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.0, 4.0, 3.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    assert gp.spearman(a, b) == pytest.approx(-1.0)
    assert scipy.stats.spearmanr(a, b).statistic > -1.0  # with the shared zeros it would not be -1
    # a zero in one only stays in: ranks (1, 2, 3) against (2, 1, 3): 1 - 6 * 2 / (3 * 8) = 0.5
    assert gp.spearman(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 0.0, 2.0])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="vectors of one length"):
        gp.spearman(torch.zeros(3), torch.zeros(4))


def test_top_overlap_counts_the_shared_largest_entries(gp: ModuleType) -> None:
    a = torch.arange(10.0)  # top 2: indices 9, 8; top 5: 9..5
    b = torch.tensor([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 10.0])  # top 2: 9, 0; top 5: 9, 0..3
    assert gp.top_overlap(a, b, 0.2) == pytest.approx(1 / 2)
    assert gp.top_overlap(a, b, 0.5) == pytest.approx(1 / 5)
    assert gp.top_overlap(a, b, 0.01) == 1.0  # k = ceil(0.1) = 1: index 9 in both
    assert gp.top_overlap(a, a, 0.3) == 1.0
    with pytest.raises(ValueError, match=r"share must be in \(0, 1\]"):
        gp.top_overlap(a, b, 0.0)


def test_layer_means_pool_a_modules_weight_and_bias(gp: ModuleType) -> None:
    imp = {"0.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "0.bias": torch.tensor([5.0, 15.0]),
           "head.weight": torch.tensor([[2.0]])}
    assert gp.layer_means(imp) == {"0": pytest.approx(30.0 / 6), "head": pytest.approx(2.0)}


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_decompose_matches_the_librarys_exact_and_jacobian(gp: ModuleType, family: str) -> None:
    torch.manual_seed(0)
    if family == "mlp":
        model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
        batches = [torch.randn(7, 5), torch.randn(1, 5)]  # a batch of 1 too
    else:
        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
        batches = [torch.randn(5, 1, 4, 4), torch.randn(1, 1, 4, 4)]
    d = gp.decompose(model, batches, chunk=4)
    x = torch.cat(batches)
    for method in ("exact", "jacobian"):
        ref = om.importance(model, x, method=method)
        for k, v in ref.items():
            assert torch.allclose(d["means"][method][k].float(), v, rtol=1e-4, atol=1e-7), (method, k)
    for k in ref:  # |2 sum_k f_k g_k| <= 2 sum_k |f_k| |g_k|
        assert bool((d["means"]["exact"][k] <= d["means"]["nocancel"][k] + 1e-12).all())
    assert len(d["agree"]) == len(d["kept"]) == len(d["dominance"]) == x.shape[0]
    assert all(0.0 <= c <= 1.0 + 1e-9 for c in d["kept"])
    assert all(1 / 3 - 1e-9 <= s <= 1.0 + 1e-9 for s in d["dominance"])


def test_one_output_has_no_cancellation_and_ranks_like_the_jacobian(gp: ModuleType) -> None:
    """K = 1: exact_n = 2 |f_n| |g_n|, the Jacobian term scaled per sample: kept 1, agreement 1."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 1))
    d = gp.decompose(model, [torch.randn(6, 4)])
    assert d["kept"] == pytest.approx([1.0] * 6)
    assert d["agree"] == pytest.approx([1.0] * 6)


@pytest.mark.filterwarnings("ignore:consolidation at step")
def test_tables_are_the_measured_runs(gp: ModuleType, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    out = str(tmp_path / "gp")
    try:
        data = gp.main(["--part", "sweep", "--streams", "permuted-digits", "--seeds", "0",
                        "--tune-seeds", "100", "--lams", "0.01", "1000", "--estimators", "exact",
                        "--forms", "quadratic/grad", "--passes", "1.5", "--out", str(tmp_path / "runs"),
                        "--results", out])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads(Path(out + ".json").read_text())
    assert saved["sweep"].keys() == data["sweep"].keys() == {"permuted-digits"}
    md = Path(out + ".md").read_text()
    rows = data["sweep"]["permuted-digits"]["rows"]
    assert [(r["learner"], r["form"]) for r in rows] == [
        ("online-mas", "proximal"), ("mas-oracle", "proximal"), ("online-mas", "grad"),
        ("mas-oracle", "grad"), ("finetune", "-")]
    for r in rows:
        if r["learner"] == "finetune":
            continue
        assert r["lam"] == max((0.01, 1000.0), key=lambda lam, r=r: r["tune"][f"{lam:g}"])
        summary = json.loads((tmp_path / "runs" / "permuted-digits" /
                              f"{r['learner']}-exact-quadratic-{r['form']}-lam{r['lam']:g}" / "seed0" /
                              "summary.json").read_text())
        assert r["acc"] == pytest.approx(100 * summary["average_accuracy"])
        row = f"| {r['learner']} | exact | quadratic {r['form']} | {r['lam']:g} | {r['acc']:.1f} ± 0.0 |"
        assert row in md
