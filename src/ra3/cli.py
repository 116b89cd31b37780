"""`ra3 <stage> [--config f.yaml] [--field value ...]`: build the stage's config dataclass, call its run()."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ra3.config import ConfigError, parse_config
from ra3.files import DataError

# stage name -> (module, config class, one-line description). Modules are imported lazily so that
# `ra3 evaluate` never pays for importing torch.
# In pipeline order (docs/architecture.md keeps the same order; a test checks it).
STAGES: dict[str, tuple[str, str, str]] = {
    "world": ("ra3.world", "WorldConfig", "build the synthetic code world (corpus, demos, RL and held-out tasks)"),
    "corpus": ("ra3.corpus", "CorpusConfig", "demonstrations from Python source trees and MBPP, decontaminated"),
    "init-model": ("ra3.init_model", "InitModelConfig", "train a tokenizer and initialise a tiny Llama"),
    "import-model": ("ra3.import_model", "ImportModelConfig", "a GGUF model (e.g. SmolLM2) as an HF model directory"),
    "pretrain": ("ra3.pretrain", "PretrainConfig", "scratch pretraining on a text corpus"),
    "midtrain": ("", "", "mid-training on demonstrations: --method ntp (baseline) or ra3"),
    "estep": ("ra3.estep", "EStepConfig", "one RA3 E-step alone: RL latent discovery + bootstrap traces"),
    "rlvr": ("ra3.rlvr", "RLVRConfig", "RLVR: GRPO with the sandboxed verifier's verdict as the reward"),
    "generate": ("ra3.generate", "GenerateConfig", "sample n completions per benchmark task -> samples JSONL"),
    "evaluate": ("ra3.evaluate", "EvaluateConfig", "run samples against a benchmark's tests; pass@k"),
    "report": ("ra3.report", "ReportConfig", "report.md/report.html with plots from a demo run directory"),
    "demo": ("ra3.demo", "DemoConfig", "the whole study in one command (embedded default), with a report"),
}
# `ra3 midtrain --method M`: each method is its own stage with its own config.
METHODS: dict[str, tuple[str, str]] = {"ntp": ("ra3.ntp", "NTPConfig"), "ra3": ("ra3.em", "RA3Config")}


def _midtrain(argv: list[str]) -> tuple[str, str, str, list[str]]:
    """The method's module, config and help title from `--method M` (default ntp); the other arguments."""
    picker = argparse.ArgumentParser(add_help=False)
    picker.add_argument("--method", default="ntp")
    known, rest = picker.parse_known_args(argv)
    if known.method not in METHODS:
        raise ConfigError(f"--method {known.method!r} is not one of {sorted(METHODS)}")
    others = " ".join(f"`ra3 midtrain --method {m} --help`" for m in METHODS if m != known.method)
    title = f"ra3 midtrain --method {known.method}", f"Fields of this method below; see also {others}."
    return *METHODS[known.method], *title, rest


def _usage() -> str:
    width = max(map(len, STAGES))
    rows = "\n".join(f"  {name:<{width}}  {desc}" for name, (_, _, desc) in STAGES.items())
    return f"usage: ra3 <stage> [--config FILE.yaml] [--field value ...]\n\nstages:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ra3` console script; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"ra3: unknown stage '{stage}'\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    module_name, config_name, _ = STAGES[stage]
    prog, description = f"ra3 {stage}", ""
    try:
        if stage == "midtrain":
            module_name, config_name, prog, description, rest = _midtrain(rest)
        module = importlib.import_module(module_name)
        config_class = getattr(module, config_name)
        if description:
            description = f"{(config_class.__doc__ or '').strip()}\n\n{description}"
        cfg = parse_config(config_class, rest, prog=prog, description=description)
        out = module.run(cfg)
    except (ConfigError, DataError) as e:
        print(f"ra3 {stage}: error: {e}", file=sys.stderr)
        return 2
    if out is not None:
        print(f"ra3 {stage}: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
