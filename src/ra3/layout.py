"""Where ra3 writes things: the one owner of every file and directory name that two modules must agree on.

Stages hand each other files, so a name one stage writes and another reads is a contract. Each such name
lives here once; writers and readers ask for it instead of keeping their own copy of the string.

    <stage out_dir>/   model/ (HF model dir)  compute.json (cost; written last, so it marks the stage done)
                       config.yaml (the resolved config)  checkpoints/
    <world dir>/       pretrain.jsonl  demos.jsonl  rl_tasks.jsonl  eval_tasks.jsonl  world.json
    <corpus dir>/      demos.jsonl  corpus.json
    <EM out_dir>/      iter<i>/demos.jsonl (the iteration's shard)  iter<i>/estep/  iter<i>/mstep/  summary.json
    <E-step out_dir>/  annotations.jsonl (the M-step's traces)  metrics.jsonl  heldout.jsonl
    <RLVR out_dir>/    curves.csv  curves.jsonl  task_filter.jsonl
    <samples>.jsonl    <samples>.config.yaml  <samples>.compute.json (generate)
                       <samples>_results.jsonl  <samples>_metrics.json (evaluate)
    <study dir>/       the demo's layout of all of these: `Study`
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

COMPUTE = "compute.json"

# --------------------------------------------------------------------------- any stage's output directory

def model_dir(out_dir: Path) -> Path:
    """The HF model directory a training stage publishes."""
    return Path(out_dir) / "model"


def compute_file(out_dir: Path) -> Path:
    """The stage's cost record; written last, so its presence means the stage finished."""
    return Path(out_dir) / COMPUTE


def config_file(out_dir: Path) -> Path:
    """The resolved config saved beside a stage's artifacts (`--config` reads it back)."""
    return Path(out_dir) / "config.yaml"


def checkpoints_dir(out_dir: Path) -> Path:
    """Trainer checkpoints (`checkpoint-N/`), resumed from after a kill."""
    return Path(out_dir) / "checkpoints"


# --------------------------------------------------------------------------- the world

WORLD_FILES = {"pretrain": "pretrain.jsonl", "demos": "demos.jsonl", "rl": "rl_tasks.jsonl",
               "eval": "eval_tasks.jsonl"}


def world_file(world_dir: Path, part: str) -> Path:
    """One of the world's data files (`part`: a key of WORLD_FILES)."""
    return Path(world_dir) / WORLD_FILES[part]


def world_record(world_dir: Path) -> Path:
    """world.json: the world's config, statistics and the hashes of its files."""
    return Path(world_dir) / "world.json"


def corpus_demos(corpus_dir: Path) -> Path:
    """The demonstrations `ra3 corpus` builds from source trees."""
    return Path(corpus_dir) / "demos.jsonl"


def corpus_record(corpus_dir: Path) -> Path:
    """corpus.json: every count of the build; written last, so its presence means the corpus is built."""
    return Path(corpus_dir) / "corpus.json"


# --------------------------------------------------------------------------- RA3: the EM loop and the E-step

def em_iteration_dir(out_dir: Path, iteration: int) -> Path:
    return Path(out_dir) / f"iter{iteration}"


def em_shard(out_dir: Path, iteration: int) -> Path:
    """The demonstrations iteration `iteration` annotates and trains on."""
    return em_iteration_dir(out_dir, iteration) / "demos.jsonl"


def estep_dir(out_dir: Path, iteration: int) -> Path:
    return em_iteration_dir(out_dir, iteration) / "estep"


def mstep_dir(out_dir: Path, iteration: int) -> Path:
    return em_iteration_dir(out_dir, iteration) / "mstep"


def em_final_model(out_dir: Path, iterations: int) -> Path:
    """Where the last iteration's M-step writes the RA3 model."""
    return model_dir(mstep_dir(out_dir, iterations - 1))


def em_summary(out_dir: Path) -> Path:
    """summary.json: per-iteration E-step and trace statistics, compute; written when the loop ends."""
    return Path(out_dir) / "summary.json"


def em_estep_files(out_dir: Path, file_of: Callable[[Path], Path]) -> list[Path]:
    """Every iteration's E-step file that exists, in iteration order; `file_of` names it from the E-step's
    directory (`heldout_file`, `annotations_file`, ...)."""
    iterations = sorted(Path(out_dir).glob("iter*"), key=lambda p: int(p.name.removeprefix("iter")))
    return [path for path in (file_of(it / "estep") for it in iterations) if path.is_file()]


def annotations_file(estep_out: Path) -> Path:
    """The bootstrapped traces (one annotated demonstration per line): the M-step's data."""
    return Path(estep_out) / "annotations.jsonl"


def estep_metrics_file(estep_out: Path) -> Path:
    """One row of training-batch metrics per policy-gradient update."""
    return Path(estep_out) / "metrics.jsonl"


def heldout_file(estep_out: Path) -> Path:
    """The E-step objective on held-out demonstrations, by update."""
    return Path(estep_out) / "heldout.jsonl"


# --------------------------------------------------------------------------- RLVR

def curves_file(rlvr_out: Path, suffix: str = "csv") -> Path:
    """The RLVR curves (one row per evaluation), as `curves.csv` or `curves.jsonl`."""
    return Path(rlvr_out) / f"curves.{suffix}"


def task_filter_file(rlvr_out: Path) -> Path:
    return Path(rlvr_out) / "task_filter.jsonl"


# --------------------------------------------------------------------------- samples and their verdicts

def _stem(samples: Path) -> str:
    return Path(samples).name.removesuffix(".jsonl")


def samples_sidecar(samples: Path, suffix: str) -> Path:
    """A file `generate` writes beside a samples file: `<samples>.config.yaml`, `<samples>.compute.json`."""
    return Path(samples).with_name(f"{_stem(samples)}.{suffix}")


def results_file(samples: Path) -> Path:
    """`evaluate`'s per-sample verdicts."""
    return Path(samples).with_name(f"{_stem(samples)}_results.jsonl")


def metrics_file(samples: Path) -> Path:
    """`evaluate`'s pass@k; written last, so its presence means the evaluation finished."""
    return Path(samples).with_name(f"{_stem(samples)}_metrics.json")


# --------------------------------------------------------------------------- a study (`ra3 demo`)

class Study:
    """The directory of a `ra3 demo` run: the demo writes it, the report and scripts read it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.world, self.init, self.base = self.root / "world", self.root / "init", self.root / "base"
        self.corpus = self.root / "corpus"
        self.config, self.environment = config_file(self.root), self.root / "environment.json"
        self.timings, self.configs = self.root / "timings.json", self.root / "configs"

    def step_config(self, step_name: str) -> Path:
        """The resolved config of one step of the plan, runnable alone with `--config`."""
        return self.configs / f"{step_name.replace(' ', '-')}.yaml"

    def seed_dir(self, seed: int) -> Path:
        return self.root / f"seed{seed}"

    def arm_dir(self, arm: str, seed: int) -> Path:
        """The stage directory that trains `arm`: `ntp`, `ra3` (the EM loop), or `rlvr-<start>` for the arm
        `<start>+rlvr`."""
        start, _, rl = arm.partition("+")
        return self.seed_dir(seed) / (f"rlvr-{start}" if rl else start)

    def eval_dir(self, arm: str, seed: int | None) -> Path:
        """Samples and verdicts of one model: the base (`seed` None) or an arm trained with `seed`."""
        return self.root / "eval" / (arm if seed is None else f"{arm}-s{seed}")

    def samples(self, arm: str, seed: int | None, benchmark: str, mode: str) -> Path:
        return self.eval_dir(arm, seed) / f"{benchmark}-{mode}.jsonl"

    def compute_files(self) -> tuple[list[Path], list[Path]]:
        """Every stage's compute record (copies inside checkpoints left out), and every samples file's."""
        stages = sorted(self.root.glob(f"**/{COMPUTE}"))
        samples = sorted(self.root.glob(f"eval/**/{samples_sidecar(Path('*.jsonl'), COMPUTE).name}"))
        return [f for f in stages if "checkpoint" not in str(f)], [f for f in samples if "checkpoint" not in str(f)]

    def report(self, suffix: str) -> Path:
        return self.root / f"report.{suffix}"
