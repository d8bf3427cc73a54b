"""scripts/gradient_property.py end to end with tiny settings: its tables come from its runs."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.filterwarnings("ignore:consolidation at step")
def test_tables_are_the_measured_accuracies(tmp_path: Path) -> None:
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    script = importlib.import_module("gradient_property")
    threads = torch.get_num_threads()
    try:
        out = str(tmp_path / "gp")
        data = script.main(["--seeds", "0", "--passes", "0.3", "--methods", "exact", "jacobian",
                            "--method-lams", "0.01", "--shapes", "quadratic", "l1", "huber",
                            "--shape-lams", "0.01", "1000", "--results", out])
    finally:
        torch.set_num_threads(threads)
    assert json.loads(Path(out + ".json").read_text())["penalties"].keys() == data["penalties"].keys()
    md = Path(out + ".md").read_text()
    for name, e in data["penalties"].items():
        shape = name.split("/")[1]
        accs = [e["acc"][k] for k in ("0.01", "1000.0")]
        assert all(0.0 <= a <= 100.0 for a in accs)
        assert f"| {shape} | {accs[0]:.1f} | {accs[1]:.1f} | {max(accs):.1f} |" in md
    for name, e in data["estimators"].items():
        assert f"| {name.split('/')[0]} | {e['acc']['0.01']:.1f} |" in md
    # the quadratic's explicit step lr * 2 lam Omega is far past 2 at lam 1000: it cannot beat L1
    high = {name: e["acc"]["1000.0"] for name, e in data["penalties"].items()}
    assert high["exact/quadratic"] <= high["exact/l1"], high
