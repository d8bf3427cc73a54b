"""Config files: validation messages, overrides, and the TOML round trip."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from online_mas.experiment import ConfigError, ExperimentConfig, dump_toml, load_config
from online_mas.experiment.configio import config_from_dict, parse_override

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_config_is_the_default_experiment() -> None:
    cfg = load_config()
    assert cfg == ExperimentConfig()
    assert cfg.experiment.learners == ("finetune", "online-mas", "mas-oracle")
    assert (cfg.stream.name, cfg.stream.n_segments, cfg.stream.passes) == ("permuted-digits", 5, 10.0)
    assert cfg.run.threads == 1


def test_configs_folder_default_is_the_embedded_default() -> None:
    assert load_config(ROOT / "configs" / "default.toml") == ExperimentConfig()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_example_configs_load_and_round_trip(path: Path) -> None:
    cfg = load_config(path)
    assert config_from_dict(tomllib.loads(dump_toml(cfg))) == cfg


def test_a_file_changes_only_what_it_states(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[stream]\nname = "rotated-digits"\n[optim]\nlr = 0.1\n'))
    assert cfg.stream.name == "rotated-digits"
    assert cfg.stream.passes == 10.0  # still the default experiment's, not StreamConfig's 1.0
    assert cfg.optim.lr == 0.1 and cfg.optim.momentum == 0.9


def test_unknown_key_lists_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.lrr'; allowed in \[optim\]: "
                                          r"name, lr, momentum, weight_decay$"):
        load_config(write(tmp_path, "[optim]\nlrr = 0.1\n"))


def test_unknown_section_lists_the_sections(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'trainer'; allowed in the top level: "
                                          r"experiment, stream, model, optim, learner, run, adapt, ssl$"):
        load_config(write(tmp_path, "[trainer]\nepochs = 3\n"))


def test_unknown_learner_table_lists_the_learner_tables(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'learner\.si'; allowed in \[learner\]: "
                                          r"online-mas, mas-oracle, l2, ewc, er, der, lwf, tfcl, mas\+er, "
                                          r"mas\+lwf$"):
        load_config(write(tmp_path, "[learner.si]\nlam = 1.0\n"))


def test_unknown_mas_option_names_the_nested_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'learner\.online-mas\.mas\.anchors'; "
                                          r"allowed in \[learner\.online-mas\.mas\]: method, average"):
        load_config(write(tmp_path, '[learner.online-mas.mas]\nanchors = "stable"\n'))


@pytest.mark.parametrize(("text", "message"), [
    ('[optim]\nlr = "fast"\n', r"optim\.lr must be a number, got 'fast' \(str\)"),
    ("[run]\nthreads = true\n", r"run\.threads must be an int, got True \(bool\)"),
    ("[run]\nthreads = 1.5\n", r"run\.threads must be an int, got 1\.5 \(float\)"),
    ("[run]\nprogress = 1\n", r"run\.progress must be a boolean \(true/false\), got 1 \(int\)"),
    ('[experiment]\nseeds = [0, "1"]\n', r"experiment\.seeds\[1\] must be an int, got '1' \(str\)"),
    ("[model]\nhidden = 100\n", r"model\.hidden must be a list of ints, got 100 \(int\)"),
    ("[stream]\nn_segments = 2.0\n", r"stream\.n_segments must be an int, got 2\.0 \(float\)"),
    ("optim = 3\n", r"optim must be a table \(section\), got 3"),
])
def test_wrong_types_say_what_is_expected(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(("text", "message"), [
    ("[optim]\nlr = -1\n", r"\[optim\]: lr must be a finite number > 0, got -1\.0"),
    ('[model]\nkind = "resnet"\n',
     r"\[model\]: kind must be one of \('mlp', 'cnn', 'factory'\), got 'resnet'"),
    ('[experiment]\nlearners = ["finetune", "finetune"]\n', r"\[experiment\]: learners must be"),
    ('[stream]\nname = "permuted-cifar"\n', r"\[stream\]: unknown stream 'permuted-cifar'; allowed:"),
    ('[learner.ewc]\ngamma = 2\n', r"\[learner\.ewc\]: gamma must be a number in \[0, 1\], got 2\.0"),
    ('[learner.online-mas]\npenalty = "implicit"\n',
     r"penalty must be one of \('loss', 'grad', 'proximal'\), got 'implicit'"),
])
def test_bad_values_name_the_section_and_the_allowed_values(tmp_path: Path, text: str,
                                                            message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_stream_seed_is_reserved(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"stream\.seed cannot be set: the stream's seed comes "
                                          r"from experiment\.seeds"):
        load_config(write(tmp_path, "[stream]\nseed = 3\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file '.*nope\.toml' does not exist"):
        load_config(tmp_path / "nope.toml")


def test_malformed_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is not valid TOML: .*line 2"):
        load_config(write(tmp_path, "[optim]\nlr = = 0.1\n"))


def test_overrides_apply_after_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[optim]\nlr = 0.1\n")
    cfg = load_config(path, ["optim.lr=0.2", "stream.name=rotated-digits",
                             "learner.online-mas.mas.anchor=current", 'experiment.learners=["joint"]',
                             "model.hidden=[32]"])
    assert cfg.optim.lr == 0.2
    assert cfg.stream.name == "rotated-digits"
    assert cfg.learner.online_mas.mas.anchor == "current"
    assert cfg.experiment.learners == ("joint",)
    assert cfg.model.hidden == (32,)


def test_override_syntax_errors() -> None:
    with pytest.raises(ConfigError, match=r"--set expects section\.key=value, got 'lr=0\.1'"):
        parse_override("lr=0.1")
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.lr\.x'|optim\.lr must be a number"):
        load_config(None, ["optim.lr.x=1"])


def test_detector_args_replace_and_keep_ints() -> None:
    cfg = load_config(None, ['learner.online-mas.detector="page-hinkley"',
                             "learner.online-mas.detector_args={min_instances=10, threshold=2}"])
    args = cfg.learner.online_mas.detector_args
    assert args == {"min_instances": 10, "threshold": 2}
    assert type(args["min_instances"]) is int


def test_resolved_config_round_trips_every_field() -> None:
    cfg = load_config(None, ["optim.lr=0.0123456789", "experiment.seeds=[3, 1]",
                             "stream.order=[1, 0, 2, 3, 4]", "learner.online-mas.mas.subsample=8",
                             "experiment.detect_tolerance=7"])
    assert config_from_dict(tomllib.loads(dump_toml(cfg))) == cfg


@pytest.mark.parametrize("text", ["my run ü 😀", 'a "quoted" \\ back\\slash', "tab\there", "bell\x07 del\x7f",
                                  "new\nline", "\u2028sep"])
def test_strings_are_written_as_real_toml(text: str) -> None:
    """Issue 18, item 3: no JSON surrogate escapes (\\ud83d), every character read back as written."""
    cfg = load_config(None, [])
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=text))
    written = dump_toml(cfg, header=f"rerun: online-mas run {text}/config.toml")
    assert "\\ud83d" not in written
    assert config_from_dict(tomllib.loads(written)) == cfg
    if "😀" in text:
        assert f'out_dir = "{text}"' in written  # UTF-8 as it is


def test_a_lone_surrogate_is_refused_with_a_config_error() -> None:
    cfg = load_config(None, [])
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir="bad\udce9byte"))
    with pytest.raises(ConfigError, match="lone surrogate U\\+DCE9"):
        dump_toml(cfg)
