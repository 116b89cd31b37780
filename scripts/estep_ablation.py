"""RA3 against NTP with the ablations that say why it wins or loses (BENCHMARKS.md, "RA3 ablations").

    python scripts/estep_ablation.py run --out runs/ablation --seeds 0,1,2 --arms ntp,null,oracle,resample,ra3
    python scripts/estep_ablation.py table runs/ablation
    python scripts/estep_ablation.py packing runs/ablation     # how often packing splits an example

Every arm starts from the shipped base on the embedded-default world and trains with the demo's budget
(`demo.MIDTRAIN`, `demo.RA3`): the same demonstrations, M-step steps, batch and optimiser. Arms:
- ntp: the baseline (one schedule over all demonstrations).
- null: the RA3 pipeline with rationales switched off (every trace is the raw code): what the pipeline alone
  does (two shards, a learning-rate restart per M-step).
- oracle: the true plan at every step boundary (`# <idiom>: <detail>`), same M-step: what correct
  rationales can buy at this scale.
- resample: no RL; G samples of the model per demonstration, one kept with probability ∝ its importance
  weight (the BoLT latent bootstrap, `estep.bootstrap = importance`).
- ra3: the E-step as the demo runs it.
Evaluation as the demo's: greedy pass@1 on 300 held-out tasks, pass@1/pass@4 at T = 0.8 on 80 × 4.
A finished step is skipped, so a rerun resumes. The layout is `ra3 demo`'s, so `--out` may be a demo's run
directory: its NTP and RA3 arms are then the demo's own (same configs), and only the others are trained.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

from ra3 import demo, em, layout, ntp, world
from ra3.demonstrations import read_demonstrations
from ra3.files import atomic_write_text, write_jsonl
from ra3.latents import split_demo
from ra3.rationales import insert_rationales

ARMS = {"ntp": {}, "null": {}, "oracle": {}, "resample": {"rl_fraction": 0.0, "bootstrap": "importance"}, "ra3": {}}


def fixed_annotations(texts_of: Callable[[dict], dict[int, str]]) -> em.Annotator:
    """An E-step that writes given rationales ({line: text} per demonstration record) and learns nothing."""
    def annotate(cfg: em.RA3Config, model: str, demos: Path, estep_out: Path, iteration: int) -> Path:
        records = []
        for r in read_demonstrations(demos, also=("task_id", "plan")):
            d, texts = split_demo(r["task_id"], r["prompt"], r["completion"], r["plan"]), texts_of(r)
            records.append({"task_id": d.task_id, "prompt": d.prompt, "completion": insert_rationales(d.lines, texts),
                            "reward": 0.0, "n_rationales": len(texts),
                            "rationales": {str(t): s for t, s in texts.items()}})
        atomic_write_text(layout.compute_file(estep_out), json.dumps({"tokens_forward": 0, "wall_s": 0.0}) + "\n")
        return write_jsonl(layout.annotations_file(estep_out), records)
    return annotate


ANNOTATORS = {"null": fixed_annotations(lambda r: {}),  # the raw code: the pipeline without rationales
              "oracle": fixed_annotations(lambda r: {p["start"]: f"{p['idiom']}: {p['detail']}" for p in r["plan"]})}


def run_arm(study: layout.Study, arm: str, seed: int, cfg: demo.DemoConfig, data: dict[str, str],
            base: str) -> None:
    d = study.seed_dir(seed) / arm  # beside the demo's ntp/ and ra3/: the ablation's arms are its own names
    if arm == "ntp":
        mid = demo.section(ntp.NTPConfig, cfg.midtrain, "midtrain", model=base, data=Path(data["demos"]),
                           out_dir=d, seed=seed)
        model = ntp.run(mid)
    else:
        mid = demo.section(em.RA3Config, {**cfg.midtrain, **cfg.ra3, **ARMS[arm]}, "ra3", model=base,
                           data=Path(data["demos"]), out_dir=d, seed=seed)
        model = (layout.em_final_model(d, mid.iterations) if layout.em_summary(d).is_file()
                 else em.run(mid, ANNOTATORS.get(arm, em.rl_annotations)))
    for step in demo.eval_steps(cfg, study, arm, str(model), seed, data):
        if not step.output.exists():
            step.module.run(step.cfg)


def run(out: Path, seeds: list[int], arms: list[str]) -> None:
    cfg, study = demo.DemoConfig(out_dir=out), layout.Study(out)
    if not layout.compute_file(study.world).is_file():
        world.run(world.WorldConfig(out_dir=study.world))
    demo.ship_base(study)
    data = {"demos": str(layout.world_file(study.world, "demos")), "world": str(study.world)}
    for seed in seeds:
        for arm in arms:
            run_arm(study, arm, seed, cfg, data, str(layout.model_dir(study.base)))


def _pass(out: Path, arm: str, seed: int, mode: str, k: str) -> float | None:
    path = layout.metrics_file(layout.Study(out).samples(arm, seed, "world", mode))
    return json.loads(path.read_text())["pass_at_k"][k]["value"] if path.is_file() else None


def _fmt(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f} (n={len(values)})"


def table(out: Path) -> None:
    seeds = sorted(int(p.name[4:]) for p in out.glob("seed*"))
    print("| arm | pass@1 greedy (300) | pass@1 T=0.8 (80×4) | pass@4 T=0.8 | per seed (greedy) |")
    print("|---|---|---|---|---|")
    for arm in ARMS:
        greedy = [_pass(out, arm, s, "greedy", "pass@1") for s in seeds]
        cols = [greedy, [_pass(out, arm, s, "sampled", "pass@1") for s in seeds],
                [_pass(out, arm, s, "sampled", "pass@4") for s in seeds]]
        per_seed = " / ".join("-" if v is None else f"{v:.3f}" for v in greedy)
        print(f"| {arm} | " + " | ".join(_fmt(c) for c in cols) + f" | {per_seed} |")
    keys = ("heldout_objective", "heldout_rationales_per_program")
    print("\n| arm | seed | iteration | held-out objective first → last (nats) | held-out rationales/program | "
          "kept traces with a rationale | kept rationales/program | names idiom | + detail (last update) | "
          "E-step s | M-step s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for arm in ARMS:
        for s in seeds:
            path = layout.em_summary(layout.Study(out).seed_dir(s) / arm)
            if arm == "ntp" or not path.is_file():
                continue
            for it, summ in enumerate(json.loads(path.read_text())["iterations"]):
                first, last = summ["heldout_first"], summ["heldout_last"]
                span = [f"{first.get('estep/' + k, float('nan')):+.2f} → {last.get('estep/' + k, float('nan')):+.2f}"
                        for k in keys]
                named = summ["estep_last"].get("estep/rationale_names_idiom", float("nan"))
                detail = summ["estep_last"].get("estep/rationale_names_idiom_and_detail", float("nan"))
                print(f"| {arm} | {s} | {it} | {span[0]} | {span[1]} | {summ['traces_with_rationales']:.2f} | "
                      f"{summ['trace_rationales_per_program']:.2f} | {named:.2f} | {detail:.2f} | "
                      f"{summ['estep_compute'].get('wall_s', 0):.0f} | {summ['mstep_compute']['wall_s']:.0f} |")
    for s in seeds:
        path = layout.compute_file(layout.Study(out).arm_dir("ntp", s))
        if path.is_file():
            print(f"\nNTP seed {s}: {json.loads(path.read_text())['wall_s']:.0f} s")


def packing(out: Path, row: int = 512) -> None:
    """Share of examples whose prompt and completion do not sit in one packed row, for NTP's demonstrations
    and RA3's traces of seed 0: TRL's `wrapped` packing concatenates the tokenised examples in order and
    cuts rows of `row` tokens (this counts the same cut, with the base's tokenizer)."""
    from ra3.models import encode, load_tokenizer

    study = layout.Study(out)
    tok = load_tokenizer(layout.model_dir(study.base))
    shards = layout.em_estep_files(study.arm_dir("ra3", 0), layout.annotations_file)
    for name, paths in (("NTP demonstrations", [layout.world_file(study.world, "demos")]),
                        ("RA3 traces (seed 0)", shards)):
        pos = crossing = n = total = 0
        for r in (rec for p in paths for rec in read_demonstrations(p)):
            length = len(encode(tok, r["prompt"])) + len(encode(tok, r["completion"], False)) + 1  # + EOS
            crossing += pos // row != (pos + length - 1) // row
            pos, n, total = pos + length, n + 1, total + length
        print(f"{name}: {n} examples, {total / n:.1f} tokens each, {crossing / n:.3f} cross a {row}-token row")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, default=Path("runs/ablation"))
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--arms", default=",".join(ARMS))
    for name in ("table", "packing"):
        sub.add_parser(name).add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        arms = args.arms.split(",")
        unknown = sorted(set(arms) - set(ARMS))
        if unknown:
            parser.error(f"unknown arm {unknown[0]!r} (one of {', '.join(ARMS)})")
        run(args.out, [int(s) for s in args.seeds.split(",")], arms)
    else:
        {"table": table, "packing": packing}[args.command](args.out)


if __name__ == "__main__":
    main()
