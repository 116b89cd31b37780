"""RA3 on a tiny model: annotations are valid Python, the E-step's bookkeeping is exact, and a killed EM
run resumes at its last finished phase and ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import ast
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ra3.estep import EStep, EStepConfig, load_demos
from ra3.estep import run as run_estep
from ra3.estep_metrics import governed_lines, states_detail
from ra3.latent_policy import action_logprobs, decision_logq
from ra3.latents import Annotation, Encoder, Temperatures, score
from ra3.models import causal_logits

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _commenting_program(rng: random.Random, commented: bool) -> tuple[str, str]:
    (op, word), k = rng.choice([("+", "add"), ("*", "times"), ("-", "minus")]), rng.randint(1, 9)
    comment = f"        # {word} {k}\n" if commented else ""
    return (f'def f(xs):\n    """{word} {k} to each item"""\n',
            f"    out = []\n    for x in xs:\n{comment}        out.append(x {op} {k})\n    return out\n")


@pytest.fixture(scope="module")
def commenting_model(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny model pretrained (40 steps) on programs half of which carry a comment naming the operation
    before the line that applies it, and raw demonstrations of the same language."""
    from datasets import Dataset

    from ra3.files import write_jsonl
    from ra3.models import init_tiny_model, save_pretrained, train_tokenizer
    from ra3.ntp_trainer import TrainConfig, train

    root, rng = tmp_path_factory.mktemp("commenting"), random.Random(0)
    texts = ["".join(_commenting_program(rng, i % 2 == 0)) for i in range(400)]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    save_pretrained(init_tiny_model("2m", tokenizer, seed=0), tokenizer, root / "init")
    cfg = TrainConfig(model=str(root / "init"), out_dir=root / "pt", max_steps=40, batch_size=8, max_length=128,
                      lr=3e-3, save_steps=100, logging_steps=10)
    model = train(cfg, Dataset.from_dict({"text": texts}), completion_only=False)
    demos = [dict(zip(("prompt", "completion"), _commenting_program(rng, False), strict=True), task_id=f"d{i}")
             for i in range(32)]
    return model, write_jsonl(root / "demos.jsonl", demos)


def ra3_args(model: Path, data: Path, out: Path) -> list[str]:
    return ["midtrain", "--method", "ra3", "--model", str(model), "--data", str(data), "--out-dir", str(out),
            "--iterations", "2", "--max-steps", "6", "--save-steps", "2", "--batch-size", "4", "--max-length",
            "64", "--rl-fraction", "0.5", "--heldout-demos", "2", "--demos-per-update", "4", "--max-demos", "12",
            "--temperature", "1.0",
            "--switch-cost", "0.0", "--seed", "3"]


def test_rendered_annotations_are_valid_python_and_keep_the_code(tiny_model, toy_demos):
    from ra3.models import load_tokenizer

    demo = load_demos(toy_demos)[0]
    text = demo.prompt + Encoder(load_tokenizer(tiny_model), [demo]).render(0, {0: "make the list", 2: "add  k\tto x"})
    ast.parse(text)
    lines = text.splitlines()
    assert lines[1] == "    # make the list" and lines[4] == "        # add k to x"
    assert [ln for ln in lines if not ln.strip().startswith("#")] == (demo.prompt + "".join(demo.lines)).splitlines()


def test_code_tokens_identical_with_and_without_rationales(tiny_model, toy_demos):
    from ra3.models import load_tokenizer

    demos = load_demos(toy_demos, 3)
    enc = Encoder(load_tokenizer(tiny_model), demos)
    plain, annotated = enc.sequence(1, Annotation()), enc.sequence(1, enc.annotation(1, {1: "loop", 3: "return it"}))
    code = [[i for i, line in zip(s.ids, s.code_line, strict=True) if line == t] for s in (plain, annotated)
            for t in range(len(demos[1].lines))]
    half = len(code) // 2
    assert code[:half] == code[half:]
    assert len(annotated.ids) > len(plain.ids) and set(annotated.rationale_span) == {1, 3}


def test_scores_leave_lines_before_the_first_rationale_unchanged(tiny_model, toy_demos):
    from ra3.models import load_pretrained

    model, tokenizer = load_pretrained(tiny_model, dtype=torch.float32)
    enc = Encoder(tokenizer, load_demos(toy_demos, 2))
    s = score(model, enc, [enc.sequence(0, Annotation()), enc.sequence(0, enc.annotation(0, {2: "add k"}))]).line_logp
    assert torch.allclose(s[0, :2], s[1, :2], atol=1e-5, rtol=0)  # identical context before line 2
    assert not torch.allclose(s[0, 2:], s[1, 2:], atol=1e-5, rtol=0)


def test_governed_lines():
    assert governed_lines([0, 3, 4], 7) == [3, 1, 3]
    assert governed_lines([], 5) == []


def test_estep_outputs_and_accounting(tiny_model, toy_demos, tmp_path):
    cfg = EStepConfig(model=str(tiny_model), demos=toy_demos, out_dir=tmp_path, rl_fraction=0.75, heldout_demos=2,
                      demos_per_update=4, max_demos=8, temperature=1.0, switch_cost=0.0)
    traces = [json.loads(line) for line in run_estep(cfg).read_text().splitlines()]
    assert len(traces) == 8
    for trace in traces:
        ast.parse(trace["prompt"] + trace["completion"])
        assert trace["n_rationales"] == len(trace["rationales"]) == trace["completion"].count("#")
        assert trace["reward"] >= 0  # include_empty: the no-rationale trace (reward 0) is always a candidate
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and {"estep/elbo", "estep/rationale_rate", "estep/kl"} <= set(history[0])
    curve = [json.loads(line) for line in (tmp_path / "heldout.jsonl").read_text().splitlines()]
    assert [c["update"] for c in curve] == [0, 2]  # before the first update and after the last
    documented = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    assert [k for k in {**history[0], **curve[0]} if k != "update" and f"`{k}`" not in documented] == []
    compute = json.loads((tmp_path / "compute.json").read_text())
    assert compute["tokens_forward"] > compute["tokens_backward"] > 0
    assert (compute["updates"], compute["rl_demos"], compute["heldout_demos"]) == (2, 6, 2)
    assert compute["rl_fraction_of_demos"] == 0.75


def test_kill9_resumes_each_phase_to_the_same_weights(tiny_model, toy_demos, tmp_path):
    cli = [sys.executable, "-m", "ra3.cli"]
    full = subprocess.run([*cli, *ra3_args(tiny_model, toy_demos, tmp_path / "full")], env=ENV,
                          capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]
    killed = tmp_path / "killed"
    for marker in ("iter0/estep/annotations.jsonl", "iter0/mstep/checkpoints/checkpoint-2/trainer_state.json",
                   "iter1/estep/annotations.jsonl"):
        proc = subprocess.Popen([*cli, *ra3_args(tiny_model, toy_demos, killed)], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while not (killed / marker).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resumed = subprocess.run([*cli, *ra3_args(tiny_model, toy_demos, killed)], env=ENV,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for name in ("iter0/estep/annotations.jsonl", "iter1/estep/annotations.jsonl"):
        assert (killed / name).read_text() == (tmp_path / "full" / name).read_text()
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "iter1" / "mstep" / "model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(killed / "iter1" / "mstep" / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((killed / "summary.json").read_text())
    assert len(summary["iterations"]) == 2 and summary["iterations"][1]["heldout_last"]["update"] == 2


def test_switch_cost_sets_how_many_rationales_and_rl_raises_the_reward(commenting_model, tmp_path):
    model, demos = commenting_model
    runs = {}
    for cost in (0.0, 5.0):
        cfg = EStepConfig(model=str(model), demos=demos, out_dir=tmp_path / f"c{cost}", rl_fraction=1.0,
                          heldout_demos=0, demos_per_update=8, max_demos=32, switch_cost=cost, temperature=1.0,
                          estep_lr=1e-4)
        traces = [json.loads(line) for line in run_estep(cfg).read_text().splitlines()]
        rewards = [json.loads(line)["estep/reward"] for line in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
        runs[cost] = (sum(t["n_rationales"] for t in traces), rewards)
    assert runs[0.0][0] > 5 * max(runs[5.0][0], 1) - 5 and runs[0.0][0] > runs[5.0][0]
    # at c = 5 every sampled rationale costs more than it can buy: RL learns to stop paying for them
    first, last = runs[5.0][1][0], runs[5.0][1][-1]
    assert first < -0.2 and last > first + 0.2


def _write_probability(step: EStep, demo_ids: list[int], lines: list[int]) -> float:
    """Mean q(write a rationale before line t) of the current policy on the plain traces, over `lines`."""
    seqs = [step.enc.sequence(d, Annotation()) for d in demo_ids]
    ids, mask = step.enc.batch(seqs, step.policy.device)
    with torch.no_grad():
        logits = causal_logits(step.policy, ids, mask)  # (N, T, V)
    probs = [decision_logq(logits[i, s.decision_pos[t]], torch.tensor(step.enc.hash_token(d, t)),
                           step.cfg.decision_temperature).exp().item()
             for i, (d, s) in enumerate(zip(demo_ids, seqs, strict=True)) for t in lines]
    return sum(probs) / len(probs)


def test_rl_raises_the_heldout_objective_and_drops_costly_rationales(commenting_model, tmp_path):
    """Comments before the append line (the operation) can pay; comments before `out = []`, the loop or the
    return cost. Sixteen updates on 24 demonstrations raise the E-step objective on 40 others (8 seeded samples
    each), and the policy writes a costly rationale less often."""
    from ra3.files import read_jsonl, write_jsonl

    model, demos_path = commenting_model
    rng = random.Random(1)
    heldout = [dict(zip(("prompt", "completion"), _commenting_program(rng, False), strict=True), task_id=f"h{i}")
               for i in range(40)]
    demos = write_jsonl(tmp_path / "demos.jsonl", read_jsonl(demos_path)[:24] + heldout)
    cfg = EStepConfig(model=str(model), demos=demos, out_dir=tmp_path, group_size=8, demos_per_update=8,
                      temperature=1.0, switch_cost=0.05, estep_lr=1e-4)
    step = EStep(cfg, load_demos(demos))
    held, costly = list(range(24, 64)), [0, 1, 3]
    before, p_costly = step.heldout(held), _write_probability(step, held, costly)
    for _ in range(16):
        step.update(step.rollout(rng.sample(range(24), 8)))
    after = step.heldout(held)
    assert after["estep/heldout_objective"] > before["estep/heldout_objective"] + 0.05
    assert _write_probability(step, held, costly) < 0.8 * p_costly


def test_the_loss_scores_the_sampled_actions(commenting_model, tmp_path):
    """The log-probs the policy gradient uses are those q had when it sampled each action (decisions at
    one temperature, text at another), so the first update's importance ratio is 1."""
    model, demos_path = commenting_model
    cfg = EStepConfig(model=str(model), demos=demos_path, out_dir=tmp_path, group_size=4, temperature=0.7,
                      decision_temperature=1.5)
    step = EStep(cfg, load_demos(demos_path))
    ro = step.rollout(list(range(8)))
    assert sum(len(a.rationales) for a in ro.annotations) >= 4 and any(a.continue_logq for a in ro.annotations)
    with torch.no_grad():
        actions = action_logprobs(step.policy, step.enc, ro.rows, ro.seqs, ro.annotations, Temperatures(1.5, 0.7))
    real = actions.mask.bool()
    assert torch.allclose(actions.logp[real], actions.logq_sampled[real], atol=1e-4, rtol=0)
    with torch.no_grad():  # at another temperature the same actions have other log-probs
        other = action_logprobs(step.policy, step.enc, ro.rows, ro.seqs, ro.annotations, Temperatures(1.0, 1.0))
    assert not torch.allclose(other.logp[real], actions.logq_sampled[real], atol=1e-2, rtol=0)


def test_micro_batched_update_has_the_one_pass_gradient(commenting_model, tmp_path):
    """q's update runs its backward in micro-batches of `estep_batch_size` sequences (a real model's memory
    bound); each part's mean is weighted by its share of the actions, so loss and gradient equal one pass
    over all the rollouts (here 32 sequences: one pass vs parts of 5, the last one short)."""
    model, demos_path = commenting_model
    steps = {size: EStep(EStepConfig(model=str(model), demos=demos_path, out_dir=tmp_path, group_size=4,
                                     temperature=1.0, estep_batch_size=size), load_demos(demos_path))
             for size in (32, 5)}
    ro = steps[32].rollout(list(range(8)))  # the two policies are the same model: one set of rollouts serves both
    assert sum(len(a.rationales) for a in ro.annotations) >= 4
    losses = {size: step.accumulate_gradient(ro) for size, step in steps.items()}
    grads = {size: torch.cat([p.grad.flatten() for p in step.policy.parameters()]) for size, step in steps.items()}
    assert grads[32].abs().max() > 0 and losses[32] != 0
    assert losses[5] == pytest.approx(losses[32], rel=1e-5, abs=1e-7)
    assert torch.allclose(grads[5], grads[32], rtol=1e-4, atol=1e-6 * grads[32].abs().max().item())


def test_states_detail():
    assert states_detail("take while: until above 5", "until above 5", (5,))
    assert not states_detail("take while: until below 6", "until above 5", (5,))
    assert states_detail("keep only the items above 3", "x > 3", (3,))
    assert not states_detail("filter", "x > 3", (3,))
    assert states_detail("reverse", "back to front", ()) and not states_detail("reverse 3", "back to front", ())


def test_two_processes_annotate_every_demo_once_with_identical_replicas(commenting_model, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): each rank annotates its share, q's gradients are
    averaged, so the two replicas end identical; what equals the 1-process run: every demonstration gets
    exactly one trace of its own code, in the same order, the updates and held-out measurements happen at
    the same points, and the held-out set is the same. (The samples differ: each rank has its own dice.)"""
    model, demos = commenting_model
    config = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "cpu_2proc.yaml"
    args = ["estep", "--model", str(model), "--demos", str(demos), "--rl-fraction", "0.5", "--heldout-demos", "4",
            "--demos-per-update", "4", "--eval-every", "2", "--temperature", "1.0", "--seed", "1"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m", "ra3.cli"]
    outs = {}
    for name, cmd in (("one", [sys.executable, "-m", "ra3.cli"]), ("two", launch)):
        outs[name] = tmp_path / name
        run = subprocess.run([*cmd, *args, "--out-dir", str(outs[name])], env=ENV, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
    traces = {k: [json.loads(line) for line in (v / "annotations.jsonl").read_text().splitlines()]
              for k, v in outs.items()}
    source = [json.loads(line) for line in demos.read_text().splitlines()]
    for rows in traces.values():
        assert [t["task_id"] for t in rows] == [d["task_id"] for d in source]
        assert all([ln for ln in t["completion"].splitlines() if not ln.lstrip().startswith("#")]
                   == d["completion"].splitlines() for t, d in zip(rows, source, strict=True))
    compute = {k: json.loads((v / "compute.json").read_text()) for k, v in outs.items()}
    assert compute["two"]["processes"] == 2 and compute["two"]["replicas_identical"]
    assert all(compute["one"][k] == compute["two"][k] for k in ("updates", "rl_demos", "heldout_demos"))
    curves = {k: [json.loads(line)["update"] for line in (v / "heldout.jsonl").read_text().splitlines()]
              for k, v in outs.items()}
    assert curves["one"] == curves["two"] == [0, 2, 4]


def test_the_experts_own_comments_are_no_decision_points(tiny_model):
    """A code line that is itself a comment (even one reading like the probe `# x`) is kept as code, with no
    rationale decision before it: sampling draws none there and the action layout has none."""
    from ra3.latent_policy import sample_annotations
    from ra3.latents import split_demo
    from ra3.models import load_pretrained

    model, tokenizer = load_pretrained(tiny_model)
    demo = split_demo("c", "def f(xs):\n", "    # x is the running total\n    out = 0\n    # add them\n"
                      "    for x in xs:\n        out += x\n    return out\n")
    enc = Encoder(tokenizer, [demo])
    assert [enc.decides(0, t) for t in range(len(demo.lines))] == [False, True, False, True, True, True]
    assert enc.sequence(0, Annotation()).decision_pos[0] == -1
    with pytest.raises(ValueError, match="expert's comment"):
        enc.rationale(0, 2, "no")
    annotations, _ = sample_annotations(model, enc, [0] * 8, Temperatures(1.0, 1.0), 4, torch.Generator().manual_seed(0))
    assert all(set(a.rationales) | set(a.continue_logq) == {1, 3, 4, 5} for a in annotations)  # each decided once
