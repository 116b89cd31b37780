"""RLVR: the verifier's reward (passing, failing, partial, and hacks that must earn 0), the stop-rule cut of
sampled tokens, MBPP task sets that never hold test ids, GRPO steps on a tiny model that change its
weights and write curves, kill -9 + resume, and the filter that keeps tasks with a GRPO gradient."""

from __future__ import annotations

import ast
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ra3 import sandbox
from ra3.benchmarks import Problem, load_mbpp_sanitized, save_problems
from ra3.benchmarks.problem import data_file
from ra3.benchmarks.rl_tasks import code_prefix_problem, load_task_set
from ra3.cli import main
from ra3.config import ConfigError
from ra3.files import DataError, read_jsonl, write_jsonl
from ra3.ntp_trainer import TrainConfig, last_complete_checkpoint, train
from ra3.rewards import VerifierReward, verdict_reward
from ra3.rlvr import RLVRConfig, filter_tasks
from ra3.rlvr_trainer import stop_length, stop_rule_trainer_class
from ra3.sandbox import FunctionalTest, ScriptTest, Verdict

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
PROMPT = 'def add_one(xs):\n    """Add one to every element of xs."""\n'
ADD_ONE = Problem("toy/add_one", PROMPT, "add_one", FunctionalTest([[[1, 2]], [[0]]], [[2, 3], [1]]), 5.0,
                  program_prefix=PROMPT)
ASSERTS = Problem("toy/asserts", PROMPT, "add_one", ScriptTest("assert add_one([1, 2]) == [2, 3]\n"), 5.0,
                  program_prefix=PROMPT)
HACKS = {
    "sys.exit(0)": "    import sys\n    sys.exit(0)\n",
    "os._exit(0)": "    import os\n    os._exit(0)\n",
    'print("passed")': '    print("passed")\n    return xs\n',
    "top-level exit": "    return xs\nimport sys\nsys.exit(0)\n",
    "top-level os._exit": "    return xs\nimport os\nos._exit(0)\n",
    "lying __eq__": "    class L(list):\n        def __eq__(self, other):\n            return True\n    return L(xs)\n",
    "rebound builtins": "    return xs\nimport builtins\nbuiltins.all = builtins.isinstance = lambda *a: True\n",
}


def rewards(problem: Problem, completions: list[str], partial_credit: bool = False) -> list[float]:
    reward = VerifierReward({problem.task_id: problem}, partial_credit=partial_credit, workers=2)
    return reward([problem.prompt] * len(completions), completions, [problem.task_id] * len(completions))


def test_reward_is_the_verdict():
    passing, failing = "    return [x + 1 for x in xs]\n", "    return xs\n"
    rationale = "    # add one to each element\n    out = [x + 1 for x in xs]\n    # done\n    return out\n"
    half = "    return [2, 3]\n"  # right on the first case only
    assert rewards(ADD_ONE, [passing, failing, rationale, half]) == [1.0, 0.0, 1.0, 0.0]
    assert rewards(ADD_ONE, [passing, failing, half], partial_credit=True) == [1.0, 0.0, 0.5]
    assert rewards(ASSERTS, [passing, failing]) == [1.0, 0.0]


@pytest.mark.parametrize("problem", [ADD_ONE, ASSERTS], ids=["functional", "asserts"])
@pytest.mark.parametrize("partial_credit", [False, True])
def test_reward_hacking_cannot_pay(problem, partial_credit):
    assert rewards(problem, list(HACKS.values()), partial_credit) == [0.0] * len(HACKS)


def test_the_reward_uses_the_out_of_process_judge_and_namespaces():
    reward = VerifierReward({p.task_id: p for p in (ADD_ONE, ASSERTS)}, workers=2)
    reward([PROMPT] * 2, ["    return xs\n"] * 2, [ADD_ONE.task_id, ASSERTS.task_id])
    assert reward.judges == {"judge-process/functional": 1, "judge-process/script-proxy": 1}
    if sandbox._bwrap_works():
        assert reward.isolations == {"bwrap": 2}


def test_verdict_reward_by_hand():
    def verdict(status, run, passed):
        return Verdict(status, run, passed, "", "", (), 0.0)

    assert verdict_reward(verdict("pass", 4, 4), 4) == 1.0
    assert verdict_reward(verdict("fail", 3, 2), 4) == 0.0
    assert verdict_reward(verdict("fail", 3, 2), 4, partial_credit=True) == 0.5
    assert verdict_reward(verdict("error", 1, 0), 4, partial_credit=True) == 0.0
    # every case counted but no authenticated end: partial credit stays below a pass
    assert verdict_reward(verdict("fail", 2, 2), 2, partial_credit=True) == 0.5


def test_stop_length_cuts_the_sampled_tokens(tiny_model):
    from ra3.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)

    def decode(ids):
        return tokenizer.decode(ids, skip_special_tokens=True)

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    body = "    out = []\n    for x in xs:\n        out.append(x)\n    return out\n"
    assert decode(ids(body)[:stop_length(decode, ids(body))]) == body
    cut = ids(body + "def f1(xs):\n    return xs\n")
    assert decode(cut[:stop_length(decode, cut)]) == body
    immediate = ids("\nprint(1)\n")
    assert stop_length(decode, immediate) == 1  # TRL needs a non-empty completion


def test_mbpp_task_sets_never_hold_evaluation_tasks(tmp_path):
    plus = [r["task_id"] for r in read_jsonl(data_file("mbpp_plus"))]
    sanitized = [p.task_id for p in load_mbpp_sanitized(split="all")]
    evaluation = set(plus) | set(sanitized) | {f"Mbpp/{i}" for i in range(11, 511)}
    train, valid = load_task_set("mbpp-train"), load_task_set("mbpp-validation")
    assert len(train) == 254 and {int(p.task_id.split("/")[1]) for p in train} <= set(range(601, 975))
    assert len(valid) == 47 and {int(p.task_id.split("/")[1]) for p in valid} <= set(range(511, 601))
    assert not {p.task_id for p in train + valid} & evaluation
    for task_id in ("Mbpp/11", "Mbpp/602"):  # a test id; a train id that MBPP+ evaluates
        leaked = tmp_path / "leaked.jsonl"
        save_problems(leaked, [replace(ASSERTS, task_id=task_id, metadata={"source": "mbpp"})])
        with pytest.raises(DataError, match="evaluation only"):
            load_task_set(str(leaked))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::SyntaxWarning")  # MBPP's "\d" escapes
def test_mbpp_template_runs_the_reference_body():
    """The prompt is a code prefix; the reference solution's body, as a completion, passes."""
    problems, bodies = [], []
    for p in load_task_set("mbpp-validation"):
        assert p.program_prefix == p.prompt and p.prompt.endswith('    """\n')
        tree = ast.parse(p.metadata["canonical_solution"])
        functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        if len(functions) == 1 and len(problems) < 12:  # no helper functions: the body is the whole solution
            problems.append(p)
            bodies.append(textwrap.indent(ast.unparse(ast.Module(functions[0].body, [])), "    ") + "\n")
    reward = VerifierReward({p.task_id: p for p in problems}, workers=2)
    assert reward([], bodies, [p.task_id for p in problems]) == [1.0] * len(problems)
    assert code_prefix_problem(Problem("Mbpp/1", '"""\nx\n"""\n', "f", ASSERTS.tests, 1.0,
                                       metadata={"canonical_solution": "def f(:\n"})) is None


def test_config_rejects_a_batch_that_splits_a_group():
    with pytest.raises(ConfigError, match="multiple of num_generations"):
        RLVRConfig(batch_size=6, num_generations=4)


# ----------------------------------------------------------------------------------- GRPO on a tiny model

def coin_problem(i: int, split: str) -> Problem:
    """`f(xs)` must return xs: the warm model writes `return xs` or `return []` about half the time each."""
    prompt = f"def f{i}(xs):\n"
    return Problem(f"{split}/{i}", prompt, f"f{i}", ScriptTest(f"assert f{i}([1]) == [1]\n"), 5.0,
                   program_prefix=prompt)


@pytest.fixture(scope="session")
def coin_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model after 20 NTP steps on `return xs` / `return []` bodies: a policy whose reward varies."""
    from datasets import Dataset

    rng = random.Random(0)
    bodies = [rng.choice(["    return xs\n", "    return []\n"]) for _ in range(64)]
    data = Dataset.from_dict({"prompt": [f"def f{i % 5}(xs):\n" for i in range(64)], "completion": bodies})
    cfg = TrainConfig(model=str(tiny_model), out_dir=tmp_path_factory.mktemp("coin"), max_steps=20,
                      batch_size=8, max_length=32, lr=3e-3, warmup_ratio=0.0, save_steps=1000, logging_steps=10)
    return train(cfg, data, completion_only=True)


@pytest.fixture(scope="session")
def coin_tasks(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tasks")
    rl, held_out = folder / "rl.jsonl", folder / "eval.jsonl"
    save_problems(rl, [coin_problem(i, "rl") for i in range(8)])
    save_problems(held_out, [coin_problem(i, "eval") for i in range(8, 11)])
    return rl, held_out


def test_the_trl_surface_the_stop_rule_trainer_overrides():
    """The stop-rule trainer overrides two private GRPOTrainer methods; a TRL release that renames them or
    changes their arguments must fail here, not silently skip the cut."""
    import inspect

    from trl import GRPOTrainer

    trainer = stop_rule_trainer_class()
    generate = inspect.signature(GRPOTrainer._generate_single_turn)
    assert list(generate.parameters)[:2] == ["self", "prompt_ids"]
    assert list(inspect.signature(GRPOTrainer._log_metric).parameters)[:3] == ["self", "name", "value"]
    assert trainer._generate_single_turn is not GRPOTrainer._generate_single_turn


def rlvr_args(model: Path, tasks: tuple[Path, Path], out: Path, steps: int = 4) -> list[str]:
    return ["rlvr", "--model", str(model), "--tasks", str(tasks[0]), "--eval-tasks", str(tasks[1]),
            "--out-dir", str(out), "--max-steps", str(steps), "--num-generations", "4", "--batch-size", "8",
            "--lr", "1e-4", "--max-completion-length", "12", "--eval-every", "2", "--eval-n", "2",
            "--save-steps", "2", "--workers", "2", "--seed", "1"]


def curve_steps(out: Path) -> list[int]:
    lines = (out / "curves.csv").read_text().splitlines()
    assert lines[0].startswith("step,pass@1_greedy,pass@1_sampled,train_reward")
    return [int(line.split(",")[0]) for line in lines[1:]]


def test_grpo_steps_change_the_weights_and_write_curves(coin_model, coin_tasks, tmp_path):
    out = tmp_path / "rlvr"
    assert main(rlvr_args(coin_model, coin_tasks, out)) == 0
    before = AutoModelForCausalLM.from_pretrained(coin_model).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert curve_steps(out) == [0, 2, 4]
    rows = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
    # the one estimator over 3 tasks: greedy pass@1 in thirds, sampled (2 samples each) in sixths
    assert all((3 * r["pass@1_greedy"]).is_integer() and (6 * r["pass@1_sampled"]).is_integer() for r in rows)
    # the coin policy passes half its samples; 4 steps of the verifier's reward make `return xs` its mode
    assert rows[0]["pass@1_greedy"] == 0.0 and rows[-1]["pass@1_greedy"] == 1.0
    assert rows[-1]["eval_tasks"] == 3 and rows[-1]["eval_samples"] == 3 * 3
    compute = json.loads((out / "compute.json").read_text())
    assert compute["optimizer_steps"] == 4 and compute["programs_run"] == 4 * 8
    assert all(compute["step_time_s"][k] > 0 for k in ("generation", "reward", "update"))
    history = json.loads((last_complete_checkpoint(out / "checkpoints") / "trainer_state.json").read_text())
    logged = set().union(*(h.keys() for h in history["log_history"]))
    assert {"rewards/verifier/mean", "rlvr/pass_rate", "rlvr/stop_rule_rate", "rlvr/time_reward_s",
            "rlvr/eval_pass@1_greedy"} <= logged
    assert list((out / "tb").iterdir())


def test_kill9_then_resume_completes_every_curve_row(coin_model, coin_tasks, tmp_path):
    out = tmp_path / "killed"
    cli = [sys.executable, "-m", "ra3.cli", *rlvr_args(coin_model, coin_tasks, out, steps=6)]
    proc = subprocess.Popen(cli, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while (last_complete_checkpoint(out / "checkpoints") is None and proc.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists(), "killed too late: the run had finished"
    resumed = subprocess.run(cli, env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((out / "compute.json").read_text())["resumed_from"]
    assert curve_steps(out) == [0, 2, 4, 6]


def test_task_filter_keeps_the_tasks_with_a_gradient(coin_model, tmp_path):
    """Tasks whose group rewards are all equal (no GRPO gradient) are dropped: here, impossible tests; the
    coin tasks, which the policy passes sometimes, stay. A rerun reads the filter's file instead of sampling."""
    coins = [coin_problem(i, "rl") for i in range(6)]
    never = [replace(coin_problem(i, "rl"), task_id=f"rl/never{i}", tests=ScriptTest(f"assert f{i}([1]) == 'no'\n"))
             for i in range(2)]
    cfg = RLVRConfig(model=str(coin_model), out_dir=tmp_path, filter_samples=8, num_generations=4, batch_size=8,
                     max_completion_length=12, workers=2, seed=1)
    kept = [p.task_id for p in filter_tasks([*coins, *never], cfg)]
    rows = read_jsonl(tmp_path / "task_filter.jsonl")
    assert [r["task_id"] for r in rows] == [p.task_id for p in [*coins, *never]]
    assert [r["passes"] for r in rows[-2:]] == [0, 0] and all(r["samples"] == 8 for r in rows)
    assert kept == [r["task_id"] for r in rows if 0 < r["passes"] < 8] and len(kept) >= 2

    rows[[r["task_id"] for r in rows].index(kept[0])]["kept"] = False  # a rerun trusts the file
    write_jsonl(tmp_path / "task_filter.jsonl", rows)
    assert [p.task_id for p in filter_tasks([*coins, *never], cfg)] == kept[1:]
    with pytest.raises(DataError, match="solves only 0 of 2 tasks sometimes"):
        filter_tasks(never, replace(cfg, out_dir=tmp_path / "hard"))
