"""scripts/detect_digits.py and scripts/omega_growth.py run end to end with tiny settings.

Targets are not checked here (they live in the scripts' full runs): these tests check that every
figure written comes from the runs (the JSON matches the run directories' summaries and the
markdown table), and that the target verdict is computed from the numbers.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def _load(name: str):  # type: ignore[no-untyped-def]
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module(name)


@pytest.fixture(autouse=True)
def _setup(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.chdir(ROOT)  # the scripts read configs/ relative to the repository root
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _summaries(run_dir: Path, learner: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / learner).glob("seed*/summary.json"))]


def test_detect_digits_writes_measured_detection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _load("detect_digits")
    report = script.main(["--scenarios", "abrupt", "gradual-short", "--seeds", "0", "--segments",
                          "3", "--passes", "2", "--short-window", "256", "--workers", "1",
                          "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "detect")])
    printed = capsys.readouterr().out
    assert json.loads((tmp_path / "detect.json").read_text()) == json.loads(json.dumps(report))
    md = (tmp_path / "detect.md").read_text()
    assert md.strip() in printed
    assert report["runs_computed"] == 6
    for scenario in ("abrupt", "gradual-short"):
        data = report["scenarios"][scenario]
        assert len(data["stream"]["change_points"]) == 2
        learners = data["learners"]
        assert set(learners) == {"finetune", "online-mas", "mas-oracle"}
        online = _summaries(tmp_path / "runs" / scenario, "online-mas")[0]
        om = learners["online-mas"]
        for key in ("precision", "recall", "f1", "false_alarms_per_10k"):
            assert om[key]["mean"] == online["detection"][key]
        assert om["acc"]["mean"] == online["average_accuracy"]
        assert 0.0 < om["acc"]["mean"] <= 1.0
        assert om["per_seed"][0]["fired"] == [e["batch"] for e in online["events"]
                                             if e["reason"] == "detector"]
        assert "f1" not in learners["finetune"] and learners["mas-oracle"]["snapshots"]["mean"] == 3
        assert f"| {scenario}" in md
    assert report["scenarios"]["gradual-short"]["stream"]["window_samples"] == 256
    t = report["scenarios"]["abrupt"]["targets"]
    acc = {k: v["acc"]["mean"] for k, v in report["scenarios"]["abrupt"]["learners"].items()}
    assert math.isclose(t["acc_gap_points"], 100 * (acc["online-mas"] - acc["mas-oracle"]))
    assert t["f1_met"] == (t["f1"] >= 0.9)
    assert t["acc_not_below_met"] == (t["acc_gap_points"] >= -2.0)
    assert t["all_met"] == (t["f1_met"] and t["delay_met"] and t["acc_gap_met"])
    assert ("All three: met." if t["all_met"] else "All three: NOT met.") in md


def test_omega_growth_records_omega_after_each_segment(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    script = _load("omega_growth")
    report = script.main(["--rules", "sum", "max", "--normalize", "none", "max", "--seeds", "0",
                          "--segments", "3", "--passes", "3", "--workers", "1",
                          "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "omega")])
    printed = capsys.readouterr().out
    assert json.loads((tmp_path / "omega.json").read_text()) == json.loads(json.dumps(report))
    assert (tmp_path / "omega.md").read_text().strip() in printed
    assert report["marks"] == [1, 3] and report["runs_computed"] == 5
    variants = report["variants"]
    assert set(variants) == {"finetune", "sum-none", "sum-max", "max-none", "max-max"}
    for name in ("sum-none", "sum-max", "max-none", "max-max"):
        v = variants[name]
        run = _summaries(tmp_path / "runs" / name, "mas-oracle")[0]
        events = [e for e in run["events"] if e["reason"] == "boundary"]
        assert v["curve"]["omega_mean"] == [e["stats"]["omega_mean"] for e in events]
        assert v["curve"]["omega_max"] == [e["stats"]["omega_max"] for e in events]
        assert all(m > 0 and math.isfinite(m) for m in v["curve"]["omega_max"])
        assert math.isclose(v["growth"]["omega_max"], v["curve"]["omega_max"][-1]
                            / v["curve"]["omega_max"][0])
        assert v["final_acc"] == run["average_accuracy"]
    # the sum rule only adds non-negative importance; max-normalized max is at most 1
    assert variants["sum-none"]["growth"]["omega_mean"] >= 1.0
    assert variants["max-max"]["curve"]["omega_max"][-1] == pytest.approx(1.0)


def test_detection_writes_the_measured_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _load("detection")
    report = script.main(["--streams", "permuted", "stationary", "--batches", "128", "--acc-batches", "128",
                          "--stationary-samples", "4000", "--no-lams", "--no-signal-choice",
                          "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "detection")])
    printed = capsys.readouterr().out
    assert json.loads((tmp_path / "detection.json").read_text()) == json.loads(json.dumps(report))
    md = (tmp_path / "detection.md").read_text()
    assert md.strip() in printed
    runs = report["runs"]
    assert {(r["stream"], r["learner"]) for r in runs} == {
        ("permuted", "online-mas"), ("permuted", "mas-oracle"), ("permuted", "finetune"),
        ("stationary", "online-mas")}
    for r in runs:
        stream = script._stream(r["stream"], 128, 0, script.DetectionConfig(stationary_samples=4000))
        assert r["n_samples"] == len(stream) * 128  # every batch of the stream, the first included
        assert 0.0 <= r["acc"] <= 1.0 and not r["diverged"]
        if r["learner"] == "online-mas":
            again = script._scores(r["fired"], r["changes"], r["order"], r["n_samples"])
            assert {k: r[k] for k in again} == again
    permuted = next(r for r in runs if r["stream"] == "permuted" and r["learner"] == "online-mas")
    assert len(permuted["changes"]) == 4 and all(f % 128 == 127 for f in permuted["fired"])
    row = next(line for line in md.splitlines() if line.startswith("| permuted | 128 "))
    assert f"| {permuted['f1']:.2f} |" in row
    still = md.split("Stationary streams")[1]  # the stationary table, with the joint statistic's peak
    still_run = next(r for r in runs if r["stream"] == "stationary")
    peak = still_run["joint_peak"]
    assert peak >= 0.0 and (peak >= 8.0) == ("joint" in still_run["fired_by"])  # 8: it fires there
    lines = still.splitlines()
    assert any(line.startswith("| 128 | ") and line.endswith(f"| {peak:.1f} |") for line in lines)


def test_shift_large_inputs_script_scores_its_own_detections(tmp_path: Path) -> None:
    """scripts/shift_large_inputs.py on one seed at batch 32: the table's counts are those of the
    JSON rows, and on 784-value inputs (Fourier features of the projections) the default detector
    finds the two new segments and the two returns."""
    script = _load("shift_large_inputs")
    res = script.main(["--seeds", "0", "--batches", "32", "--stationary-samples", "4000",
                       "--results", str(tmp_path / "large")])
    rows = json.loads((tmp_path / "large.json").read_text())
    assert rows == json.loads(json.dumps(res["rows"]))
    abcab = next(r for r in rows if r["stream"] == "digits28 A B C A B")
    assert abcab["found"] == [True, True, True, True] and abcab["kinds"] == ["new", "new", "return", "return"]
    still = next(r for r in rows if r["stream"] == "digits28 stationary")
    lines = (tmp_path / "large.md").read_text().splitlines()
    line = next(t for t in lines if t.startswith("| digits28 stationary"))
    assert line.endswith(f"| {still['false_alarms']} ({1e5 * still['false_alarms'] / 4000:.2f}) |")
