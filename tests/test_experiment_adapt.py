"""Experiments of kind "adapt": the [adapt] section and a tiny run through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from online_mas.cli import main
from online_mas.experiment import ConfigError, load_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "adapt-digits.toml"
TINY = ["--set", "stream.passes=0.2", "--set", "adapt.train_epochs=1", "--set",
        'adapt.methods=["source", "tent", "tent+mas"]', "--no-progress"]


def test_tiny_adapt_run_writes_config_summary_metrics_and_prints_the_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", str(CONFIG), *TINY, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert load_config(out / "config.toml").experiment.kind == "adapt"
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["source", "tent", "tent+mas"]
    for spec, entry in summary["methods"].items():
        (r,) = entry["seeds"]
        assert r["method"] == spec and len(r["occurrences"]) == 7  # 0..5, then clean again
        assert {"clean_source", "clean_end", "resets", "consolidations"} <= set(r)
        assert 0 <= entry["mean"]["clean_end"] <= 100
        assert f"| {spec} | " in text
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ends = [line for line in lines if "end_of_occurrence" in line]
    assert len(ends) == 3 * 7 and {"method", "seed", "t", "occurrence"} <= set(ends[0])
    assert "| method | clean | noise 1 |" in text
    # no checkpoints: --resume says so; report points to the table
    assert main(["run", "--resume", str(out)]) == 2
    assert "cannot be resumed" in capsys.readouterr().err
    assert main(["report", str(out), "--no-plots"]) == 2
    assert "table.md" in capsys.readouterr().err


def test_unknown_adapt_key_lists_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'adapt.lrr'; allowed in \[adapt\]: "
                                          r"methods, params, lr, momentum, e_max, lam"):
        load_config(CONFIG, ["adapt.lrr=0.1"])


@pytest.mark.parametrize(("override", "message"), [
    ('adapt.methods=["tent-mas"]', "methods must be a non-empty list of distinct names"),
    ('adapt.methods=["tent@-1"]', "optionally as name@lr with lr > 0"),
    ("adapt.params=bias", "params must be one of"),
    ("adapt.penalty=l1", "penalty must be one of"),
    ("adapt.lr=0", "lr must be a finite number > 0"),
    ("adapt.reset=1", "adapt.reset must be a boolean"),
    ("stream.name=rotated-digits", "needs stream.name = 'corrupted-digits'"),
])
def test_invalid_adapt_values_are_config_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, [override])


def test_continual_configs_do_not_write_an_adapt_section() -> None:
    from online_mas.experiment import dump_toml
    assert "[adapt]" not in dump_toml(load_config(None))
    text = dump_toml(load_config(CONFIG))
    assert "[adapt]" in text and "[model]" not in text and "[learner" not in text
