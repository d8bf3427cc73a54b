"""The benchmark scripts run end to end with tiny settings and report real measurements.

Performance targets live in the benchmarks, not here: these tests check that every figure a
script prints and writes comes from a measurement (positive, finite, consistent with the rest of
the report and with the JSON file), never that it meets a target.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

import online_mas as om

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):  # type: ignore[no-untyped-def]
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module(name)


@pytest.fixture(autouse=True)
def _restore_threads():  # type: ignore[no-untyped-def]
    """The scripts set torch's thread count; give the rest of the session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _positive(v: object) -> bool:
    return isinstance(v, float | int) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _check_timings(timings: dict, baseline: str) -> None:
    assert timings[baseline]["ratio"] == 1.0
    for name, r in timings.items():
        assert _positive(r["ms"]) and _positive(r["ratio"]), name
        assert r["ratio_q1"] <= r["ratio"] <= r["ratio_q3"], name
        assert r["calls"] >= 1 and r["rounds"] >= 1, name


def test_bench_importance_reports_measured_ratios(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _load("bench_importance")
    report = script.main(["--rounds", "2", "--block-ms", "1", "--batch", "8", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert json.loads((tmp_path / "bench_importance.json").read_text()) == json.loads(json.dumps(report))
    assert report["environment"]["threads"] == 1
    for model in ("mlp", "cnn"):
        res = report["results"][model]
        timings = res["timings"]
        assert set(timings) == {"train_step", "exact", "vmap", "loop", "batch"}
        _check_timings(timings, "train_step")
        assert isinstance(res["exact_meets_target"], bool)
        assert _positive(res["vmap_over_exact"])
        row = next(line for line in printed.splitlines() if line.startswith(f"| {model} |"))
        assert f"{timings['exact']['ratio']:.2f}x" in row  # the table prints the measured figures


def test_bench_reports_every_part(tmp_path: Path) -> None:
    script = _load("bench")
    report = script.main([
        "--parts", "timing,state,transient,lam,profile,detector,stream", "--models", "mlp", "--batch", "16",
        "--shares", "1,2", "--subsamples", "4", "--shared-shares", "1", "--rounds", "2",
        "--block-ms", "1",
        "--consolidations", "5", "--transient-batches", "8,32", "--transient-chunks", "2,8",
        "--lams", "1,10000", "--sweep-passes", "0.3", "--profile-steps", "3",
        "--stream-samples", "3000", "--detector-lags", "0,256",
        "--detector-results", str(tmp_path / "detector_feed.md"), "--out", str(tmp_path),
    ])
    assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(report))

    timings = report["timing"]["mlp"]["timings"]
    _check_timings(timings, "train_step")
    assert timings["online grad share=1/2"]["steps_per_call"] == 2  # batch 16: the whole batch every 2nd
    assert {"online loss share=1/1", "online grad share=1/1 subsample=4", "online grad share=1/1 shared",
            "online grad share=1/64 no detector", "penalty grad form",
            "consolidate (+ refill)"} <= set(timings)
    assert timings["online grad share=1/64 no detector"]["steps_per_call"] == 64
    verdicts = report["timing_verdicts"]
    assert verdicts["penalty grad form"]["ratio"] == timings["penalty grad form"]["ratio"]

    feed = report["detector"]
    _check_timings(feed["timings"], "train_step")
    default_lag = om.default_detector().lag
    assert feed["default_lag"] == default_lag
    ratio = feed["timings"][f"default, lag {default_lag} (the default)"]["ratio"]
    assert feed["verdict"].startswith(f"{ratio:.3f}x of a training step at the default lag "
                                      f"{default_lag}, target 0.02x: ")
    assert {"default, lag 0", "entropy channel alone, lag 0"} <= set(feed["timings"])
    names = list(feed["timings"])  # the breakdown of the default lag follows its row
    at = names.index(f"default, lag {default_lag} (the default)")
    assert names[at + 1] == "  of which: keeping the batch (no evaluation)"
    assert feed["timings"][names[at + 2]]["steps_per_call"] == default_lag // 32
    larger = feed["timings_larger"]["mlp"]  # the --models given: the MNIST-sized MLP
    _check_timings(larger, "train_step")
    printed = (tmp_path / "detector_feed.md").read_text()
    assert f"{larger[f'default, lag {default_lag}']['ratio']:.3f}x" in printed
    delays = feed["delays"]["rows"]
    assert delays["0"]["added_max"] == 0 and delays["256"]["same_indices"]
    assert 0 <= delays["256"]["added_mean"] <= delays["256"]["added_max"] < 256 + 32
    assert f"{ratio:.3f}x" in (tmp_path / "detector_feed.md").read_text()

    state = report["state"]
    assert state["param_bytes"] == 4 * (784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10)
    for label in ("default", "anchor=current"):
        after, mid = state[label]["after_consolidation"], state[label]["mid_segment"]
        assert after["bytes"]["omega"] == after["bytes"]["anchor"] == state["param_bytes"]
        assert "running" not in after["bytes"] and mid["bytes"]["running"] == state["param_bytes"]
        assert after["total_bytes"] == sum(after["bytes"].values())
        assert state[label]["segments"] == 5
    mid = state["anchor=current"]["mid_segment"]
    # the default detector's state: the input shift's reference statistics (six float64 vectors
    # of the 784 inputs and 64 projections at most) and its copies of up to `lag` samples
    pending = mid["bytes"]["trigger"]
    lag, reference = om.default_detector().lag, 6 * 8 * (784 + 64) + 10_000
    assert 0 < pending <= lag * (784 + 10) * 4 + reference
    assert 3.0 <= mid["param_sized_buffers"] - pending / state["param_bytes"] < 3.05
    assert state["default"]["mid_segment"]["bytes"]["stable"] == state["param_bytes"]  # one slow copy

    rows = report["transient"]["rows"]
    assert len(rows) == 2 * 2 * 2
    for r in rows:
        assert _positive(r["importance_peak_mb"]) and _positive(r["train_step_peak_mb"])
    for model in ("cnn", "seq"):  # a smaller chunk never needs more memory
        peak = {(r["batch"], r["chunk_size"]): r["importance_peak_mb"] for r in rows if r["model"] == model}
        assert peak[(32, 2)] <= peak[(32, 8)]

    lam = report["lam"]
    assert {(r["form"], r["lam"]) for r in lam["rows"]} == {
        (f, v) for f in ("explicit", "proximal") for v in (0.0, 1.0, 10000.0)}
    for r in lam["rows"]:
        assert 0.0 <= r["seg1_acc"] <= 1.0 and isinstance(r["diverged"], bool)
    assert not next(r for r in lam["rows"] if r["form"] == "proximal" and r["lam"] == 1e4)["diverged"]

    shares = report["profile"]["phase_over_train_step"]
    assert all(v >= 0 for v in shares.values()) and _positive(shares["observe"])
    assert set(report["profile"]["observe_median_us"]) == {"estimate", "detector only"}
    assert all(_positive(v) for v in report["profile"]["importance_pieces_over_train_step"].values())
    # multiply-adds per sample of the MLP 784-256-256-10, counted by hand: forward F, weight
    # gradients F, input gradients of the last two layers I; a plain step is F + F + I, the
    # separate importance pass the same again, the shared one all but the forward; the default
    # detector's input shift adds its 64 random projections of the 784 inputs and 256 random
    # Fourier features of those projections, P
    f, i, p = 784 * 256 + 256 * 256 + 256 * 10, 256 * 256 + 256 * 10, 784 * 64 + 64 * 256
    flops = report["profile"]["flops"]["mlp"]
    # (the projections over whole lags of the deferred detector, per step; its window recursion
    # adds a few small matmuls)
    assert flops["online share=1"] == pytest.approx((2 * (2 * f + i) + p) / (2 * f + i), rel=1e-3)
    assert flops["online share=1 shared"] == pytest.approx((3 * f + 2 * i + p) / (2 * f + i), rel=1e-3)
    assert flops["train_step_mflop"] == pytest.approx(2 * 16 * (2 * f + i) / 1e6, rel=1e-3)

    stream = report["stream"]
    assert stream["samples"] >= 3000 - 64 and _positive(stream["samples_per_s"])
    assert _positive(stream["rss_start_mb"]) and _positive(stream["rss_end_mb"])
    assert set(report["tables"]) == {"timing", "state", "transient", "lam", "profile", "detector", "stream"}


def test_bench_importance_runs_the_issue_16_models_and_writes_the_results_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _load("bench_importance")
    md = tmp_path / "importance.md"
    report = script.main(["--models", "gpt,gru", "--methods", "exact", "--rounds", "1", "--block-ms", "1",
                          "--batch", "2", "--out", str(tmp_path), "--results", str(md)])
    printed = capsys.readouterr().out
    for model in ("gpt", "gru"):
        _check_timings(report["results"][model]["timings"], "train_step")
    assert report["results"]["gpt"]["torch_func_params"] == []  # every projection an nn.Linear
    assert report["results"]["gru"]["torch_func_params"] == []  # the recurrent rule (issue 16)
    assert report["table"] in printed and report["table"] in md.read_text()  # the script's own output
    for model in ("gpt", "gru"):
        peaks = report["results"][model]["peak_bytes"]
        assert set(peaks) == {"train_step", "exact"} and all(v > 0 for v in peaks.values())
    if not torch.cuda.is_available():
        assert script.devices("auto") == ("cpu",) and "cuda" not in report


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_importance_prints_the_cuda_ratios(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _load("bench_importance")
    report = script.main(["--models", "mlp", "--methods", "exact", "--rounds", "1", "--block-ms", "1",
                          "--batch", "4", "--devices", "cpu,cuda", "--out", str(tmp_path)])
    cuda = report["cuda"]
    _check_timings(cuda["results"]["mlp"]["timings"], "train_step")
    assert cuda["results"]["mlp"]["device"] == "cuda" and cuda["table"] in capsys.readouterr().out


def test_bench_river_writes_its_table(tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "river.md"
    subprocess.run([sys.executable, "scripts/bench_river.py", "--segment", "60", "--probe", "20",
                    "--seeds", "0", "--results", str(out), "--out", str(tmp_path / "runs")],
                   check=True, capture_output=True,
                   cwd=Path(__file__).resolve().parents[1], timeout=300)
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "learner" not in line]
    assert len(rows) == 3 * 4  # three streams, four learners
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert 0.0 <= float(cells[2]) <= 100.0 and 0.0 <= float(cells[3]) <= 100.0 and float(cells[4]) > 0


def test_detection_scores_and_sea_visibility_by_hand() -> None:
    """scripts/detection.py's learning rates (linear in the batch, capped) and its table of what a
    change leaves in the training errors, against hand-computed counts."""
    det = _load("detection")
    assert [det.lr_for(b) for b in (1, 4, 8, 32, 128)] == [0.005, 0.02, 0.04, 0.05, 0.05]
    errors = [0] * 40 + [1, 0, 0, 0] * 10  # rate 0 before sample 40, then 1 in 4
    errors[25] = errors[30] = 1  # 2 errors in the 20 samples before it: rate 0.1
    (row,) = det._visibility(errors, [40], before=20, after=8)
    assert row["rate_before"] == pytest.approx(0.1) and row["errors_after"] == 2
    assert row["excess"] == pytest.approx(2 - 0.8)
    assert row["z"] == pytest.approx(1.2 / math.sqrt(0.8 * 0.9))
    assert det._visibility(errors[:45], [40], before=20, after=8) == []  # diverged before its end
    s = det._scores([105, 300], [100], [0, 1], 400)  # a detection 5 after the change, one alarm
    assert (s["precision"], s["recall"], s["false_alarms"], s["mean_delay"]) == (0.5, 1.0, 1, 5)


def test_detection_pairs_acc_by_seed() -> None:
    """The paired ACC table: differences taken seed by seed, mean +- standard error, by hand."""
    det = _load("detection")
    accs = {"online-mas": [0.50, 0.60, 0.70], "mas-oracle": [0.55, 0.58, 0.80],
            "mas-oracle-late": [0.50, 0.60, 0.75]}
    runs = [{"stream": "permuted", "batch": 1, "seed": k, "learner": learner, "acc": v}
            for learner, vs in accs.items() for k, v in enumerate(vs)]
    runs.append({"stream": "permuted", "batch": 1, "seed": 3, "learner": "online-mas", "acc": 0.9})
    _, table = det._paired(runs)  # seed 3 has no oracle: left out
    row = table.splitlines()[2].split(" | ")
    d = [-5.0, 2.0, -10.0]  # task-free - oracle, in points
    sd = math.sqrt(sum((v - sum(d) / 3) ** 2 for v in d) / 2)
    assert row[2] == "3" and row[3] == "60.0" and row[4] == "64.3"
    assert row[5] == f"{sum(d) / 3:+.1f} +- {sd / math.sqrt(3):.1f} (SD {sd:.1f})"
    assert row[6].startswith("-2.7 +- ")  # late - oracle: -5, +2, -5
    assert det._paired(runs[:2] + runs[3:5]) == []  # fewer than 3 paired seeds: no table
