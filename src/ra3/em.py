"""Stage `ra3 midtrain --method ra3`: the EM loop of RA3 (method.md §4-5).

Each iteration: E-step (`estep.run`: RL on the latent policy, then bootstrap one annotated trace per
demonstration) → M-step (`ntp.run` on those traces, loss on rationale and code tokens). The M-step is the
very stage the NTP baseline runs, on annotated instead of raw code, so the arms differ only in data.

Equal compute with NTP: `max_steps` is the total number of M-step optimiser steps over all iterations,
split evenly, with the same batch, sequence length and optimiser as the baseline; the E-step's cost is
extra and is reported beside it (tokens forward/backward/generated, wall time) in `summary.json`.

Departures from the paper:
1. Each M-step continues from the previous iteration's model (the paper's EM schedule at scale is not
   specified in more detail); the learning-rate schedule restarts each iteration.
2. With `shard_demos` (default) iteration i annotates and trains on its own disjoint shard of the
   demonstrations, so over all iterations RA3 sees the same demonstrations as NTP, each once, and the
   bootstrap (most of the E-step's cost) runs once per demonstration instead of once per iteration.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from ra3 import estep, layout, ntp
from ra3.config import ConfigError, option, save_config
from ra3.demonstrations import read_demonstrations
from ra3.files import DataError, atomic_write_text, read_jsonl, write_jsonl

logger = logging.getLogger(__name__)

@dataclass
class RA3Config(estep.EStepOptions, ntp.NTPConfig):
    """RA3 mid-training: EM over demonstrations (E-step RL + bootstrap, M-step NTP on annotated traces).

    The M-step's fields are NTP's (`max_steps` counts M-step steps over all iterations); the E-step's are
    `estep.EStepOptions` (its learning rate, clipping and batch carry an `estep_` prefix)."""

    iterations: int = option(2, "EM iterations (method.md: 2-3)", at_least=1)
    shard_demos: bool = option(True, "iteration i annotates and trains on its own disjoint 1/iterations "
                               "of the demonstrations (false: every iteration annotates all of them)")

    def __post_init__(self):
        super().__post_init__()  # EStepOptions', then NTPConfig's (the MRO)
        if self.max_steps < self.iterations:
            raise ConfigError(f"need iterations <= max_steps, got {self.iterations} and {self.max_steps}")


def _estep_config(cfg: RA3Config, model: str, demos: Path, out_dir: Path, iteration: int) -> estep.EStepConfig:
    options = {f.name: getattr(cfg, f.name) for f in fields(estep.EStepOptions)}
    return estep.EStepConfig(**options, model=model, demos=demos, out_dir=out_dir, seed=cfg.seed + iteration)


def _demo_shards(cfg: RA3Config, out: Path) -> list[Path]:
    """Per iteration, the demonstrations it annotates: disjoint contiguous shards, or all of them."""
    if not cfg.shard_demos or cfg.iterations == 1:
        return [cfg.data] * cfg.iterations
    records = read_demonstrations(cfg.data)
    if len(records) < cfg.iterations:
        raise DataError(f"{cfg.data}: {len(records)} demonstrations cannot fill {cfg.iterations} shards")
    bounds = [len(records) * i // cfg.iterations for i in range(cfg.iterations + 1)]
    # written on every run (same data, same shards), so a shard always matches the data it came from
    return [write_jsonl(layout.em_shard(out, i), records[bounds[i]:bounds[i + 1]])
            for i in range(cfg.iterations)]


def _mstep_config(cfg: RA3Config, model: str, traces: Path, out_dir: Path, steps: int) -> ntp.NTPConfig:
    values = {f.name: getattr(cfg, f.name) for f in fields(ntp.NTPConfig)}
    values.update(model=model, data=traces, out_dir=out_dir, max_steps=steps)
    return ntp.NTPConfig(**values)


def _read_if_written(path: Path) -> list[dict]:
    return read_jsonl(path) if path.is_file() else []


def _iteration_summary(out: Path, it: int) -> dict:
    """What the report needs of one iteration: E-step metrics first/last (training batches and held-out),
    trace statistics, compute. An annotator without RL (an ablation) writes no metrics: those stay empty."""
    estep_out = layout.estep_dir(out, it)
    history = _read_if_written(layout.estep_metrics_file(estep_out))
    curve = _read_if_written(layout.heldout_file(estep_out))
    traces = read_jsonl(layout.annotations_file(estep_out))
    summary = {"estep_first": history[0] if history else {}, "estep_last": history[-1] if history else {},
               "heldout_first": curve[0] if curve else {}, "heldout_last": curve[-1] if curve else {},
               "traces_with_rationales": sum(t["n_rationales"] > 0 for t in traces) / len(traces),
               "trace_rationales_per_program": sum(t["n_rationales"] for t in traces) / len(traces),
               "trace_mean_reward": sum(t["reward"] for t in traces) / len(traces)}
    for phase, phase_dir in (("estep", estep_out), ("mstep", layout.mstep_dir(out, it))):
        summary[f"{phase}_compute"] = json.loads(layout.compute_file(phase_dir).read_text())
    return summary


# (cfg, current model, this iteration's demonstrations, the E-step's directory, iteration) -> the traces
# JSONL (`layout.annotations_file` of that directory), with a compute.json beside it
Annotator = Callable[[RA3Config, str, Path, Path, int], Path]


def rl_annotations(cfg: RA3Config, model: str, demos: Path, estep_out: Path, iteration: int) -> Path:
    """RA3's own E-step (`estep.run`): RL on the latent policy and the bootstrap."""
    return estep.run(_estep_config(cfg, model, demos, estep_out, iteration))


def run(cfg: RA3Config, annotate: Annotator = rl_annotations) -> Path:
    """Run the EM loop; returns the final model directory. Finished phases are skipped on a rerun.
    `annotate` is the E-step (ablations swap in another source of traces, e.g. the true plan)."""
    out = Path(cfg.out_dir)
    save_config(cfg, layout.config_file(out))
    steps = [cfg.max_steps // cfg.iterations + (i < cfg.max_steps % cfg.iterations) for i in range(cfg.iterations)]
    model, summaries, shards = cfg.model, [], _demo_shards(cfg, out)
    for it in range(cfg.iterations):
        logger.info("RA3 iteration %d/%d: E-step", it + 1, cfg.iterations)
        traces = annotate(cfg, model, shards[it], layout.estep_dir(out, it), it)
        logger.info("RA3 iteration %d/%d: M-step (%d steps)", it + 1, cfg.iterations, steps[it])
        model = str(ntp.run(_mstep_config(cfg, model, traces, layout.mstep_dir(out, it), steps[it])))
        summaries.append(_iteration_summary(out, it))
    compute = {phase: {key: sum(s[f"{phase}_compute"].get(key, 0) for s in summaries)
                       for key in ("tokens_forward", "tokens_backward", "tokens_generated", "wall_s")}
               for phase in ("estep", "mstep")}
    summary = {"final_model": model, "iterations": summaries, "compute": compute}
    atomic_write_text(layout.em_summary(out), json.dumps(summary, indent=2) + "\n")
    return Path(model)
