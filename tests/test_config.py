"""The config convention: dataclass defaults < YAML file < CLI flags; every mistake is a one-line error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from ra3.cli import main
from ra3.config import Config, ConfigError, build_parser, option, parse_config, save_config


@dataclass
class ToyConfig(Config):
    """A stage config for the tests."""

    out_dir: Path = option(Path("runs/toy"), "where to write")
    lr: float = option(3e-4, "learning rate", above=0)
    steps: int = option(10, "optimiser steps", at_least=1)
    bf16: bool = option(False, "train in bfloat16")
    k: list[int] = option([1, 10], "pass@k values", at_least=1)
    method: str = option("ntp", "mid-training method", choices=("ntp", "ra3"))
    seed: int | None = option(None, "random seed", at_least=0)
    share: float = option(0.5, "a fraction", at_least=0, below=1)


def test_defaults_yaml_and_flags_layer(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("lr: 0.01\nsteps: 5\nk: [1, 5]\n")
    cfg = parse_config(ToyConfig, ["--config", str(yaml_file), "--steps", "7", "--bf16", "true"])
    assert (cfg.lr, cfg.steps, cfg.bf16, cfg.k, cfg.method, cfg.seed) == (0.01, 7, True, [1, 5], "ntp", None)
    assert parse_config(ToyConfig, ["--k", "1,2,4", "--seed", "3"]).k == [1, 2, 4]


def test_saved_config_reads_back(tmp_path):
    cfg = parse_config(ToyConfig, ["--method", "ra3", "--out-dir", str(tmp_path)])
    path = save_config(cfg, tmp_path / "config.yaml")
    assert parse_config(ToyConfig, ["--config", str(path)]) == cfg


def test_misspelt_yaml_key_names_file_and_fix(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*unknown key 'lrr'.*did you mean 'lr'"):
        parse_config(ToyConfig, ["--config", str(yaml_file)])


def test_misspelt_flag():
    with pytest.raises(ConfigError, match=r"unknown flag 'stpes'.*did you mean 'steps'"):
        parse_config(ToyConfig, ["--stpes", "3"])


@pytest.mark.parametrize("argv, pattern", [
    (["--steps", "many"], r"steps: expected int, got 'many'"),
    (["--steps", "2.5"], r"steps: expected int"),
    (["--bf16", "maybe"], r"bf16: expected true/false"),
    (["--method", "sft"], r"method='sft' is not one of \['ntp', 'ra3'\]"),
    (["--steps", "0"], r"^command line: steps must be >= 1, got 0$"),
    (["--lr", "0"], r"lr must be > 0, got 0.0"),
    (["--k", "1,0"], r"k must be >= 1, got \[1, 0\]"),
    (["--seed", "-1"], r"seed must be >= 0, got -1"),
    (["--share", "1"], r"share must be >= 0 and < 1, got 1.0"),
])
def test_bad_values_are_one_line_errors(argv, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        parse_config(ToyConfig, argv)
    assert "\n" not in str(err.value)


def test_bounds_hold_however_the_config_is_built():
    """Bounds are checked on construction (stages build each other's configs directly), an unset optional
    field passes them, and --help states them."""
    with pytest.raises(ConfigError, match="steps must be >= 1, got 0"):
        ToyConfig(steps=0)
    assert ToyConfig(seed=None, share=0.0).share == 0.0
    assert "(>= 0 and < 1)" in build_parser(ToyConfig, "toy").format_help()
    with pytest.raises(TypeError, match="unknown bound 'minimum'"):
        option(1, "x", minimum=0)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        parse_config(ToyConfig, ["--config", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        parse_config(ToyConfig, ["--config", str(bad)])


def test_cli_reports_errors_without_traceback(capsys):
    assert main(["evaluate", "--benchmrk", "humaneval"]) == 2
    err = capsys.readouterr().err
    assert "unknown flag 'benchmrk'" in err and "Traceback" not in err
    assert main(["no-such-stage"]) == 2


def test_midtrain_help_names_the_method_and_its_fields(capsys):
    for method, own_field, other in (("ra3", "--iterations", "ntp"), ("ntp", "--data", "ra3")):
        with pytest.raises(SystemExit) as exit_:
            main(["midtrain", "--method", method, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert exit_.value.code == 0 and f"ra3 midtrain --method {method}" in out and own_field in out
        assert f"ra3 midtrain --method {other} --help" in out
    with pytest.raises(SystemExit):
        main(["midtrain", "--help"])  # no method: NTP's, the default
    assert "--iterations" not in capsys.readouterr().out
