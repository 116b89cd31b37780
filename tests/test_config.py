"""The config convention: dataclass defaults < YAML file < CLI flags; every mistake is a one-line error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from ra3.cli import main
from ra3.config import ConfigError, option, parse_config, save_config


@dataclass
class ToyConfig:
    """A stage config for the tests."""

    out_dir: Path = option(Path("runs/toy"), "where to write")
    lr: float = option(3e-4, "learning rate")
    steps: int = option(10, "optimiser steps")
    bf16: bool = option(False, "train in bfloat16")
    k: list[int] = option([1, 10], "pass@k values")
    method: str = option("ntp", "mid-training method", choices=("ntp", "ra3"))
    seed: int | None = option(None, "random seed")

    def __post_init__(self):
        if self.steps <= 0:
            raise ConfigError(f"steps must be positive, got {self.steps}")


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
    (["--steps", "0"], r"steps must be positive"),
])
def test_bad_values_are_one_line_errors(argv, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        parse_config(ToyConfig, argv)
    assert "\n" not in str(err.value)


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
