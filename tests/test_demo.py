"""`ra3 demo` and `ra3 report`: the whole pipeline at a micro size, its report, resuming, the shipped base,
and the real-scale example config (dry run with a tiny model substituted)."""

from __future__ import annotations

import ast
import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from ra3 import demo, layout
from ra3.cli import main
from ra3.config import ConfigError, config_from_dict, parse_config
from ra3.files import DataError, file_sha256, read_records
from ra3.passk import sign_test_p

ROOT = Path(__file__).resolve().parents[1]
MICRO = {
    "seeds": [0], "from_scratch": True,
    "world": {"pretrain_programs": 300, "demos": 24, "rl_tasks": 12, "eval_tasks": 8, "verify_tasks": 4},
    "init_model": {"max_chars": 200000},
    "pretrain": {"max_steps": 2, "batch_size": 4, "max_length": 256, "save_steps": 1},
    "midtrain": {"max_steps": 2, "batch_size": 4, "max_length": 256, "save_steps": 1},
    "ra3": {"iterations": 2, "rl_fraction": 0.25, "demos_per_update": 2, "group_size": 2, "heldout_demos": 2,
            "eval_every": 1, "rationale_max_tokens": 4},
    "rlvr": {"max_steps": 2, "batch_size": 4, "num_generations": 2, "max_eval_tasks": 4, "eval_n": 1,
             "eval_every": 1, "max_completion_length": 32, "save_steps": 1},
    "eval_tasks": 4, "eval_sample_tasks": 2, "eval_samples": 2, "eval_max_tokens": 32,
}
SECTIONS = ["# RA3 vs NTP: demo report", "## Verdict", "## pass@k on held-out tasks", "## RLVR curves",
            "## E-step: ELBO and rationales", "## Compute per stage", "## Annotated example"]


def _table(md: str, header_start: str) -> list[list[str]]:
    """Rows of the Markdown table whose header row starts with `header_start`."""
    lines = md.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(f"| {header_start}"))
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    config = out.parent / "micro.yaml"
    config.write_text(yaml.safe_dump(MICRO))
    assert main(["demo", "--config", str(config), "--out-dir", str(out)]) == 0
    return out


def test_micro_demo_writes_every_report_section(micro_run):
    md = (micro_run / "report.md").read_text()
    positions = [md.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    for png in ("passk.png", "rlvr_curves.png", "estep.png"):
        assert (micro_run / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in md
    html = (micro_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "<table>" in html


def test_report_numbers_come_from_the_run(micro_run):
    md = (micro_run / "report.md").read_text()
    rows = {r[0]: r[1:] for r in _table(md, "model")}
    assert set(rows) == {"base", "NTP", "RA3", "NTP + RLVR", "RA3 + RLVR"}
    for label, where in (("base", "base"), ("NTP", "ntp-s0"), ("RA3", "ra3-s0"), ("RA3 + RLVR", "ra3+rlvr-s0")):
        greedy = json.loads((micro_run / "eval" / where / "world-greedy_metrics.json").read_text())
        sampled = json.loads((micro_run / "eval" / where / "world-sampled_metrics.json").read_text())
        expected = [greedy["pass_at_k"]["pass@1"]["value"], sampled["pass_at_k"]["pass@1"]["value"],
                    sampled["pass_at_k"]["pass@2"]["value"]]
        assert [float(v) for v in rows[label]] == pytest.approx(expected, abs=5e-4)
    with (micro_run / "seed0" / "rlvr-ra3" / "curves.csv").open() as f:
        curve = list(csv.DictReader(f))
    rlvr = {r[0]: r for r in _table(md, "start")}
    assert float(rlvr["from RA3"][1]) == pytest.approx(float(curve[0]["pass@1_greedy"]), abs=5e-4)
    assert float(rlvr["from RA3"][2]) == pytest.approx(float(curve[-1]["pass@1_greedy"]), abs=5e-4)
    compute = {r[0]: r for r in _table(md, "stage")}
    ntp = json.loads((micro_run / "seed0" / "ntp" / "compute.json").read_text())
    assert float(compute["seed0/ntp"][1]) == ntp["wall_s"] and int(compute["seed0/ntp"][2]) == ntp["tokens_forward"]
    verdicts = [{r["task_id"]: r["passed"] for r in read_records(micro_run / "eval" / where / "world-greedy_results.jsonl")}
                for where in ("ra3-s0", "ntp-s0")]
    ra3_only = sum(ok and not verdicts[1][t] for t, ok in verdicts[0].items())
    ntp_only = sum(ok and not verdicts[0][t] for t, ok in verdicts[1].items())
    assert f"tasks only RA3 passes: {ra3_only}, only NTP: {ntp_only}, sign test p = " in md
    estep = json.loads((micro_run / "seed0" / "ra3" / "iter1" / "estep" / "metrics.jsonl").read_text().splitlines()[-1])
    stats = {r[0]: r for r in _table(md, "quantity")}
    assert float(stats["rationales per program"][4]) == pytest.approx(estep["estep/rationales_per_program"], abs=5e-3)


@pytest.mark.parametrize(("a_only", "b_only", "p"), [(0, 0, 1.0), (3, 3, 1.0), (5, 0, 2 / 32),
                                                      (10, 2, 2 * (1 + 12 + 66) / 4096), (2, 10, 2 * 79 / 4096)])
def test_sign_test_by_hand(a_only, b_only, p):
    assert sign_test_p(a_only, b_only) == pytest.approx(p)


def test_bootstrapped_traces_are_the_expert_code_plus_comments(micro_run):
    """With world_test.test_comments_keep_programs_valid_and_passing (comment lines never change what a
    program does), this is what makes the M-step's traces pass their demonstrations' tests."""
    for it in (0, 1):
        demos = {r["task_id"]: r for r in read_records(micro_run / "seed0" / "ra3" / f"iter{it}" / "demos.jsonl")}
        traces = read_records(micro_run / "seed0" / "ra3" / f"iter{it}" / "estep" / "annotations.jsonl")
        assert sorted(t["task_id"] for t in traces) == sorted(demos)
        for t in traces:
            ast.parse(t["prompt"] + t["completion"])
            code = [line for line in t["completion"].splitlines() if not line.lstrip().startswith("#")]
            assert code == demos[t["task_id"]]["completion"].splitlines()
    shards = [read_records(micro_run / "seed0" / "ra3" / f"iter{it}" / "demos.jsonl") for it in (0, 1)]
    assert shards[0] + shards[1] == read_records(micro_run / "world" / "demos.jsonl")  # disjoint, all used once


def test_a_run_without_rlvr_reports_no_empty_figure(micro_run, tmp_path):
    run = shutil.copytree(micro_run, tmp_path / "run")
    study = layout.Study(run)
    for arm in ("ntp", "ra3"):
        layout.curves_file(study.arm_dir(f"{arm}+rlvr", 0)).unlink()
    assert main(["report", "--run-dir", str(run)]) == 0
    md = (run / "report.md").read_text()
    section = md[md.index("## RLVR curves"):md.index("## E-step")]
    assert "no RLVR curves found" in section and "rlvr_curves.png" not in md and "RLVR: steps" not in md


def test_rerun_skips_finished_steps_and_redoes_a_missing_one(micro_run, caplog, capsys):
    greedy = micro_run / "eval" / "ntp-s0" / "world-greedy.jsonl"
    kept = {p: p.stat().st_mtime_ns for p in (micro_run / "seed0" / "ntp" / "model").iterdir()}
    metrics = greedy.with_name("world-greedy_metrics.json")
    metrics.unlink()
    caplog.set_level("INFO", logger="ra3.demo")
    assert main(["demo", "--config", str(micro_run.parent / "micro.yaml"), "--out-dir", str(micro_run)]) == 0
    ran = [r.getMessage() for r in caplog.records if r.name == "ra3.demo" and "skipping" not in r.getMessage()]
    assert len(ran) == 1 and ran[0].endswith("evaluate ntp-s0 world greedy")
    assert metrics.is_file()
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    changed = ["demo", "--config", str(micro_run.parent / "micro.yaml"), "--out-dir", str(micro_run), "--eval-max-tokens", "16"]
    assert main(changed) == 2  # a finished step made with other settings is not silently reused
    assert "finished with other settings" in capsys.readouterr().err


def test_demo_defaults_are_configs_demo_yaml():
    assert parse_config(demo.DemoConfig, ["--config", str(ROOT / "configs" / "demo.yaml")]) == demo.DemoConfig()


def test_bad_demo_configs_are_named():
    with pytest.raises(ConfigError, match="repeats a seed"):
        demo.DemoConfig(seeds=[0, 0])
    with pytest.raises(ConfigError, match="benchmarks: 'humaneval\\+' is not one of"):
        demo.DemoConfig(benchmarks=["humaneval+"])
    with pytest.raises(DataError, match="rl_tasks: file not found: nowhere.jsonl"):
        demo.check_inputs(demo.DemoConfig(rl_tasks="nowhere.jsonl"))


def test_sections_reject_wired_and_unknown_fields():
    with pytest.raises(ConfigError, match=r"midtrain\.model is set by the demo itself"):
        demo.plan(config_from_dict(demo.DemoConfig, {"midtrain": {"model": "x"}}, "test"))
    with pytest.raises(ConfigError, match=r"demo config: rlvr: unknown key 'max_step' \(did you mean 'max_steps'"):
        demo.plan(config_from_dict(demo.DemoConfig, {"rlvr": {"max_step": 3}}, "test"))


def test_shipped_base_matches_its_manifest_and_refuses_another_world(tmp_path):
    manifest = json.loads((demo.SHIPPED_BASE / "MANIFEST.json").read_text())
    assert file_sha256(demo.SHIPPED_BASE / "model.safetensors") == manifest["weights_sha256"]
    (tmp_path / "world").mkdir()
    corpus = {**manifest["corpus_sha256"], "demos": "0" * 64}
    (tmp_path / "world" / "world.json").write_text(json.dumps({"provenance": {"data_sha256": corpus}}))
    with pytest.raises(ConfigError, match="use --from-scratch"):
        demo.ship_base(layout.Study(tmp_path))
    assert not (tmp_path / "base").exists()


def test_smollm2_study_plans_import_corpus_and_greedy_evaluation_only():
    """configs/smollm2.yaml: the corpus and the import are steps of the plan, the arms start from the import
    and train on the corpus, and only greedy pass@1 of the four classic benchmarks follows (no RLVR)."""
    cfg = parse_config(demo.DemoConfig, ["--config", str(ROOT / "configs" / "smollm2.yaml")])
    steps, base = demo.plan(cfg)
    study = layout.Study(cfg.out_dir)
    assert [s.name for s in steps[:2]] == ["corpus", "import-model"] and base == str(layout.model_dir(study.base))
    assert steps[0].cfg.out_dir == study.corpus and steps[1].cfg.out_dir == Path(base)
    trained = [s for s in steps if s.trains]
    assert [s.name for s in trained] == ["ntp s0", "ra3 s0"]
    assert all(s.cfg.model == base and s.cfg.data == layout.corpus_demos(study.corpus) for s in trained)
    evaluated = [s for s in steps if s.stage == ["evaluate"]]
    assert {(s.cfg.benchmark, s.output.name.split("-")[-1]) for s in evaluated} == {
        (b, "greedy_metrics.json") for b in ("humaneval", "humaneval_plus", "mbpp_sanitized", "mbpp_plus")}
    assert len(evaluated) == 4 * 3  # base, NTP, RA3
    generated = [s for s in steps if s.stage == ["generate"]]
    assert all(s.cfg.limit == 0 for s in generated)  # the full benchmarks
    # each model answers a prompt its earlier benchmarks share once (HumanEval+ reuses HumanEval's samples)
    plus = next(s for s in generated if s.cfg.benchmark == "humaneval_plus" and "base" in s.name)
    assert plus.cfg.reuse == [study.samples("base", None, "humaneval", "greedy")]
    with pytest.raises(ConfigError, match="exclude each other"):
        parse_config(demo.DemoConfig, ["--config", str(ROOT / "configs" / "smollm2.yaml"), "--base-model", "x"])


def test_realscale_config_dry_runs_with_a_tiny_model(tiny_model, toy_demos, tmp_path, capsys):
    dataset = tmp_path / "hf-demos"
    dataset.mkdir()
    shutil.copy(toy_demos, dataset / "train.jsonl")
    argv = ["demo", "--config", str(ROOT / "configs" / "realscale.yaml"), "--base-model", str(tiny_model),
            "--demos", f"hf:{dataset}", "--out-dir", str(tmp_path / "run"), "--dry-run", "true",
            "--accelerate-config", str(ROOT / "configs" / "accelerate" / "fsdp.yaml")]
    assert main(argv) == 0
    commands = [c for c in capsys.readouterr().out.splitlines() if not c.startswith("ra3 demo: wrote")]
    train = [c for c in commands if c.startswith("accelerate launch")]
    assert {re.search(r"ra3\.cli (\w+)", c).group(1) for c in train} == {"midtrain", "rlvr"}
    assert len(train) == 3 * 4  # 3 seeds x (NTP, RA3, RLVR x 2)
    assert not any(" world " in c for c in commands)  # real data: no synthetic world
    assert not (tmp_path / "run" / "seed0").exists()  # a dry run trains nothing
    steps = demo.plan(parse_config(demo.DemoConfig, argv[1:]))[0]
    assert len(steps) == len(commands) == len(list((tmp_path / "run" / "configs").glob("*.yaml")))
    for step in steps:  # every step's config reads back as that step's config
        path = tmp_path / "run" / "configs" / f"{step.name.replace(' ', '-')}.yaml"
        assert parse_config(type(step.cfg), ["--config", str(path)]) == step.cfg


def test_hf_dataset_records_and_their_errors(toy_demos, tmp_path):
    dataset = tmp_path / "ds"
    dataset.mkdir()
    shutil.copy(toy_demos, dataset / "train.jsonl")
    records = read_records(f"hf:{dataset}", required=("prompt", "completion"))
    assert records == read_records(toy_demos)
    with pytest.raises(DataError, match="missing field 'plan'"):
        read_records(f"hf:{dataset}", required=("plan",))
    with pytest.raises(DataError, match="cannot load the dataset"):
        read_records(f"hf:{tmp_path / 'nothing-here'}")
