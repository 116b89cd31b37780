"""`ra3 evaluate` end to end through the CLI: results in input order, pass@k, and errors naming file:line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ra3.benchmarks import default_data_dir, load_benchmark
from ra3.cli import main
from ra3.files import read_jsonl, write_jsonl


@pytest.fixture(scope="module")
def humaneval():
    return {p.task_id: p for p in load_benchmark("humaneval")}


def _samples(humaneval, tmp_path: Path) -> Path:
    right = [{"task_id": t, "completion": humaneval[t].metadata["canonical_solution"]} for t in ("HumanEval/0",
                                                                                               "HumanEval/2")]
    wrong = [{"task_id": "HumanEval/0", "completion": "    return None\n", "completion_id": 7},
             {"task_id": "HumanEval/2", "completion": "    while True:\n        pass\n"}]
    return write_jsonl(tmp_path / "samples.jsonl", [right[0], wrong[0], right[1], wrong[1]])


def test_evaluate_writes_results_in_order_and_pass_at_k(humaneval, tmp_path, capsys):
    samples = _samples(humaneval, tmp_path)
    code = main(["evaluate", "--benchmark", "humaneval", "--samples", str(samples), "--k", "1,2,3",
                 "--timeout", "1.5", "--workers", "2"])
    assert code == 0
    results = read_jsonl(tmp_path / "samples_results.jsonl")
    assert [(r["task_id"], r["passed"], r["status"]) for r in results] == [
        ("HumanEval/0", True, "pass"), ("HumanEval/0", False, "fail"), ("HumanEval/2", True, "pass"),
        ("HumanEval/2", False, "timeout")]
    assert results[0]["result"] == "passed" and results[3]["result"] == "timed out"
    assert results[1]["completion_id"] == 7  # the sample's own fields are kept
    metrics = json.loads((tmp_path / "samples_metrics.json").read_text())
    assert metrics["pass_at_k"]["pass@1"]["value"] == pytest.approx(0.5)
    assert metrics["pass_at_k"]["pass@2"]["value"] == pytest.approx(1.0)
    assert metrics["pass_at_k"]["pass@3"] == {"value": None, "tasks": 2,
                                              "tasks_with_fewer_than_k": ["HumanEval/0", "HumanEval/2"]}
    assert (metrics["samples"], metrics["tasks_evaluated"], metrics["tasks_in_benchmark"]) == (4, 2, 164)
    assert metrics["status_counts"] == {"pass": 2, "fail": 1, "timeout": 1}
    assert metrics["judges"] == {"judge-process/script-proxy": 4}  # HumanEval's check() runs in the judge
    assert {r["judge"] for r in results} == {"judge-process/script-proxy"}
    assert metrics["config"]["timeout"] == 1.5 and len(metrics["samples_sha256"]) == 64
    out = capsys.readouterr().out
    assert "pass@1 = 0.5000 (2 tasks)" in out and "pass@3 = n/a (2 of 2 tasks" in out


def test_evaluate_takes_evalplus_solutions_and_a_data_path(tmp_path, monkeypatch):
    """`solution` samples (whole programs) on a one-task HumanEval+ file given by --data-path."""
    with gzip.open(default_data_dir() / "evalplus" / "HumanEvalPlus-v0.1.10.jsonl.gz", "rt") as f:
        record = json.loads(next(f))
    data = tmp_path / "he1.jsonl.gz"
    data.write_bytes(gzip.compress((json.dumps(record) + "\n").encode(), mtime=0))
    good = record["prompt"] + record["canonical_solution"]
    samples = write_jsonl(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "solution": good},
                                                 {"task_id": "HumanEval/0", "solution": good.replace("<", "<=")}])
    monkeypatch.setenv("RA3_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["evaluate", "--benchmark", "humaneval_plus", "--samples", str(samples), "--data-path", str(data),
                 "--k", "1"]) == 0
    assert len(list((tmp_path / "cache").glob("humanevalplus-ground-truth-*"))) == 1
    assert [r["passed"] for r in read_jsonl(tmp_path / "s_results.jsonl")] == [True, False]


@pytest.mark.parametrize(("line", "message"), [
    ('{"task_id": "HumanEval/999", "completion": ""}', "s.jsonl:3: task_id: 'HumanEval/999' is not a task of humaneval"),
    ('{"task_id": "HumanEval/1"}', "s.jsonl:3: completion: expected a string"),
    ('{"completion": "x"}', "s.jsonl:3: missing field 'task_id'"),
    ('{"task_id": "HumanEval/1", "completion": ', "s.jsonl:3: not valid JSON"),
])
def test_bad_samples_are_errors_naming_file_line_and_field(tmp_path, capsys, line, message):
    # line 2 is blank: the error must name the file's line 3, not the third record
    (tmp_path / "s.jsonl").write_text('{"task_id": "HumanEval/0", "completion": ""}\n\n' + line + "\n")
    assert main(["evaluate", "--samples", str(tmp_path / "s.jsonl")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s_results.jsonl").exists()


def test_config_errors(tmp_path, capsys):
    assert main(["evaluate", "--benchmark", "humaneval"]) == 2
    assert "samples: required" in capsys.readouterr().err
    assert main(["evaluate", "--benchmark", "humanevl", "--samples", "x.jsonl"]) == 2
    assert "is not one of" in capsys.readouterr().err
    assert main(["evaluate", "--samples", "x.jsonl", "--k", "0"]) == 2
    assert "k must be >= 1, got [0]" in capsys.readouterr().err
