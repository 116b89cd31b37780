"""NTP training on a tiny model: loss falls, output reloads, kill -9 + resume equals an uninterrupted
run, and a 2-process `accelerate launch` gives ranks different data and identical weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ra3.cli import main
from ra3.ntp_trainer import last_complete_checkpoint, remove_incomplete_checkpoints

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}


def ntp_args(model: Path, data: Path, out: Path, steps: int = 8, save_steps: int = 4) -> list[str]:
    return ["midtrain", "--method", "ntp", "--model", str(model), "--data", str(data), "--out-dir", str(out),
            "--max-steps", str(steps), "--batch-size", "4", "--max-length", "64", "--save-steps",
            str(save_steps), "--logging-steps", "1", "--lr", "3e-3", "--seed", "1"]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(model_dir).state_dict()


def test_ntp_loss_falls_and_model_reloads(tiny_model, toy_demos, tmp_path):
    assert main(ntp_args(tiny_model, toy_demos, tmp_path / "ntp", steps=12, save_steps=6)) == 0
    state = json.loads((last_complete_checkpoint(tmp_path / "ntp" / "checkpoints") / "trainer_state.json")
                       .read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == 12 and losses[-1] < 0.7 * losses[0]
    compute = json.loads((tmp_path / "ntp" / "compute.json").read_text())
    assert compute["optimizer_steps"] == 12 and compute["tokens_forward"] > 12 * 4 * 32
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ntp" / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "ntp" / "model")
    ids = tokenizer("def f1(xs):\n", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == len(tokenizer)
    changed = any(not torch.equal(a, b) for a, b in zip(weights(tiny_model).values(),
                                                         model.state_dict().values(), strict=True))
    assert changed
    assert list((tmp_path / "ntp" / "tb").iterdir())  # TensorBoard event files


def test_incomplete_checkpoint_is_removed(tmp_path):
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-8").mkdir()
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text('{"global_st')
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert (tmp_path / "checkpoint-8").exists()  # a query never deletes: a run may be writing it
    remove_incomplete_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4"]


def test_kill9_then_resume_equals_uninterrupted(tiny_model, toy_demos, tmp_path):
    cli = [sys.executable, "-m", "ra3.cli"]
    full = subprocess.run([*cli, *ntp_args(tiny_model, toy_demos, tmp_path / "full", steps=12)], env=ENV,
                          capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]
    args = ntp_args(tiny_model, toy_demos, tmp_path / "killed", steps=12)
    proc = subprocess.Popen([*cli, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 300
    while last_complete_checkpoint(ckpts) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model").exists(), "killed too late: the run had finished"
    resumed = subprocess.run([*cli, *args], env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((tmp_path / "killed" / "compute.json").read_text())["resumed_from"]
    a, b = weights(tmp_path / "full" / "model"), weights(tmp_path / "killed" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_accelerate_launch(tiny_model, toy_demos, tmp_path):
    # `--cpu` would pick accelerate's single-process launcher; `--multi_gpu` with no visible GPU runs
    # torchrun with the gloo backend on CPU.
    config = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "cpu_2proc.yaml"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m", "ra3.cli"]
    run = subprocess.run([*launch, *ntp_args(tiny_model, toy_demos, tmp_path / "ddp", steps=4)], env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ddp" / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["data_sha256"] != ranks[1]["data_sha256"]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert (tmp_path / "ddp" / "model" / "config.json").is_file()


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    root = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    kinds = {p.stem: load_config_from_file(str(p)).distributed_type.value for p in sorted(root.glob("*.yaml"))}
    assert kinds == {"cpu_2proc": "MULTI_GPU", "deepspeed_zero2": "DEEPSPEED", "fsdp": "FSDP"}
