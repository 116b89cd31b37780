"""Stage `ra3 report`: report.md, report.html and PNG plots from a demo run directory.

Every number is read from the files the stages wrote (`*_metrics.json`, `curves.csv`, E-step
`metrics.jsonl` and `annotations.jsonl`, `compute.json`, `timings.json`), so rerunning the report on the
same directory gives the same report, and every figure in it can be traced to a file. The report is
built once as a list of blocks and rendered twice (Markdown and HTML), so the two cannot disagree.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from ra3 import layout
from ra3.config import Config, option
from ra3.files import DataError, atomic_write_text, read_jsonl
from ra3.passk import sign_test_p
from ra3.report_render import to_html, to_markdown

ARMS = ("base", "ntp", "ra3", "ntp+rlvr", "ra3+rlvr")
LABELS = {"base": "base", "ntp": "NTP", "ra3": "RA3", "ntp+rlvr": "NTP + RLVR", "ra3+rlvr": "RA3 + RLVR"}
HELDOUT_STATS = (("estep/heldout_objective", "held-out E-step objective R(z) (nats)"),
                 ("estep/heldout_rationales_per_program", "held-out rationales per program"))
RATIONALE_STATS = (("estep/reward", "E-step objective R(z) of the batch (nats)"),
                   ("estep/code_gain", "code gain before c and KL (nats)"),
                   ("estep/rationales_per_program", "rationales per program"),
                   ("estep/lines_per_rationale", "lines governed per rationale"),
                   ("estep/rationale_tokens", "tokens per rationale"),
                   ("estep/boundary_precision", "boundary precision"), ("estep/boundary_recall", "boundary recall"),
                   ("estep/boundary_f1", "boundary F1"), ("estep/rationale_names_idiom", "names the idiom"),
                   ("estep/rationale_names_idiom_and_detail", "names the idiom and its detail"))


@dataclass
class ReportConfig(Config):
    """Which demo run to report on."""

    run_dir: Path = option(Path("runs/demo"), "a `ra3 demo` output directory")


# --------------------------------------------------------------------------- small statistics

def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], digits: int = 3, expected: int | None = None) -> str:
    """`mean ± std` of per-seed values (a single value as is), with `(n of N seeds)` when some are missing;
    `-` when there are none or a value is not a number."""
    if not values or any(math.isnan(v) for v in values):
        return "-"
    m, s = mean_std(values)
    text = f"{m:.{digits}f}" if len(values) == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"
    return text + (f" ({len(values)} of {expected} seeds)" if expected and len(values) < expected else "")


def steps_to_threshold(steps: list[int], values: list[float], threshold: float) -> int | None:
    """First evaluated step whose value reaches `threshold` (None if never)."""
    return next((s for s, v in zip(steps, values, strict=True) if v >= threshold), None)


# --------------------------------------------------------------------------- reading the run

class Run:
    """The files of one demo run (`layout.Study`), read on demand."""

    def __init__(self, root: Path):
        self.root, self.study = root, layout.Study(root)
        self.config = yaml.safe_load(self.study.config.read_text())
        self.seeds, self.benchmarks = self.config["seeds"], self.config["benchmarks"]
        self._curves: dict[str, list[list[dict]]] = {}  # arm -> per-seed curves, read once

    def metrics_file(self, arm: str, seed: int, bench: str, mode: str) -> Path:
        """`evaluate`'s metrics of one model (the base model has no training seed)."""
        return layout.metrics_file(self.study.samples(arm, None if arm == "base" else seed, bench, mode))

    def first_metrics(self, bench: str, mode: str) -> dict | None:
        """The first `*_metrics.json` of this benchmark and mode over the arms and seeds (None: none yet)."""
        for arm in ARMS:
            for seed in self.seeds:
                path = self.metrics_file(arm, seed, bench, mode)
                if path.is_file():
                    return json.loads(path.read_text())
        return None

    def reported(self, arm: str, bench: str, mode: str, key: str) -> list[float]:
        """Per-seed values of one pass@k entry (the base model: one value)."""
        seeds = [self.seeds[0]] if arm == "base" else self.seeds
        files = [self.metrics_file(arm, s, bench, mode) for s in seeds]
        return [json.loads(f.read_text())["pass_at_k"][key]["value"] for f in files if f.is_file()]

    def discordant(self, a: str, b: str, bench: str, mode: str) -> tuple[int, int] | None:
        """Over seeds, the (task, seed) pairs that only `a` passes and that only `b` passes, from the
        single-sample verdicts (greedy); None when a results file is missing."""
        a_only = b_only = 0
        for seed in self.seeds:
            files = [layout.results_file(self.study.samples(arm, seed, bench, mode)) for arm in (a, b)]
            if not all(f.is_file() for f in files):
                return None
            passed = [{r["task_id"]: r["passed"] for r in read_jsonl(f)} for f in files]
            a_only += sum(ok and not passed[1].get(t, False) for t, ok in passed[0].items())
            b_only += sum(ok and not passed[0].get(t, False) for t, ok in passed[1].items())
        return a_only, b_only

    def curve_band(self, arm: str, key: str = "pass@1_greedy") -> dict[float, list[float]]:
        """step -> the per-seed values of `key` at that step (seeds matched by step, not by row)."""
        band: dict[float, list[float]] = {}
        for curve in self.curves(arm):
            for row in curve:
                if key in row:
                    band.setdefault(row["step"], []).append(row[key])
        return dict(sorted(band.items()))

    def curves(self, arm: str) -> list[list[dict]]:
        """Per seed, the RLVR curve rows (step, pass@1_greedy, ...) with numbers parsed."""
        if arm in self._curves:
            return self._curves[arm]
        out = self._curves[arm] = []
        for s in self.seeds:
            path = layout.curves_file(self.study.arm_dir(f"{arm}+rlvr", s))
            if path.is_file():
                with path.open() as f:
                    out.append([{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)])
        return out

    def heldout_curves(self, seed: int) -> list[list[dict]]:
        """Per EM iteration, the E-step objective on its held-out demonstrations, by update."""
        return [read_jsonl(p) for p in layout.em_estep_files(self.study.arm_dir("ra3", seed), layout.heldout_file)]

    def ra3_summary(self, seed: int) -> dict:
        path = layout.em_summary(self.study.arm_dir("ra3", seed))
        return json.loads(path.read_text()) if path.is_file() else {}

    def compute(self) -> list[tuple[str, dict]]:
        """(stage, compute.json) of every stage that wrote one, in a stable order."""
        stages, samples = self.study.compute_files()
        return ([(str(f.relative_to(self.root).parent), json.loads(f.read_text())) for f in stages]
                + [(str(f.relative_to(self.root)), json.loads(f.read_text())) for f in samples])


# --------------------------------------------------------------------------- plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_passk(run: Run, rows: list[tuple[str, str, str, str]], path: Path) -> Path:
    """Grouped bars: one group per pass@k column, one bar per arm (mean, whiskers = seed std)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(ARMS)
    for a, arm in enumerate(ARMS):
        stats = [mean_std(v) if (v := run.reported(arm, b, m, k)) else (0.0, 0.0) for _, b, m, k in rows]
        ax.bar([i + a * width for i in range(len(rows))], [s[0] for s in stats], width,
               yerr=[s[1] for s in stats], label=LABELS[arm], capsize=2)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], [r[0] for r in rows], fontsize=8)
    ax.set_ylabel("held-out pass rate")
    ax.legend(fontsize=7, ncol=3)
    return _save(plt, fig, path)


def plot_rlvr(run: Run, path: Path) -> Path:
    """Held-out greedy pass@1 vs RLVR step from NTP and from RA3: seed mean, band = ± seed std."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for arm in ("ntp", "ra3"):
        band = run.curve_band(arm)
        if not band:
            continue
        steps = list(band)
        means = [mean_std(v)[0] for v in band.values()]
        stds = [mean_std(v)[1] for v in band.values()]
        ax.plot(steps, means, marker="o", label=f"from {LABELS[arm]} ({len(run.curves(arm))} seeds)")
        ax.fill_between(steps, [m - s for m, s in zip(means, stds, strict=True)],
                        [m + s for m, s in zip(means, stds, strict=True)], alpha=0.2)
    ax.set_xlabel("RLVR step")
    ax.set_ylabel("held-out pass@1 (greedy)")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_estep(run: Run, path: Path) -> Path:
    """The E-step objective and rationales per program on held-out demonstrations over updates, one line per
    seed and EM iteration."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    keys = ("estep/heldout_objective", "estep/heldout_rationales_per_program")
    for seed in run.seeds:
        for it, curve in enumerate(run.heldout_curves(seed)):
            for ax, key in zip(axes, keys, strict=True):
                ax.plot([r["update"] for r in curve], [r[key] for r in curve], marker=".", label=f"s{seed} it{it}")
    for ax, title in zip(axes, ("held-out E-step objective R(z) (nats)", "held-out rationales per program"),
                         strict=True):
        ax.set_xlabel("E-step update (per EM iteration)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    return _save(plt, fig, path)


def passk_rows(run: Run) -> list[tuple[str, str, str, str]]:
    """(column title, benchmark, mode, pass@k key) of the table, from the first metrics file found per
    benchmark and mode."""
    rows = []
    for bench in run.benchmarks:
        for mode in ("greedy", "sampled"):
            metrics = run.first_metrics(bench, mode)
            how = "greedy" if mode == "greedy" else f"T={run.config['eval_temperature']}"
            rows += [(f"{bench} {key} {how}", bench, mode, key) for key in (metrics or {}).get("pass_at_k", {})]
    return rows


def section_passk(run: Run, out: Path) -> list:
    rows = passk_rows(run)
    table = [[LABELS[arm], *[fmt(run.reported(arm, b, m, k), expected=1 if arm == "base" else len(run.seeds))
                             for _, b, m, k in rows]] for arm in ARMS]
    sizes = "; ".join(f"{b} {m}: {mt['tasks_evaluated']} tasks × {mt['samples'] // max(mt['tasks_evaluated'], 1)} "
                      f"sample(s)" for b in run.benchmarks for m in ("greedy", "sampled")
                      if (mt := run.first_metrics(b, m)))
    return [("h2", "pass@k on held-out tasks"),
            ("p", f"Mean ± std over seeds {run.seeds} (the base model is one checkpoint). {sizes}."),
            ("table", ["model", *[r[0] for r in rows]], table),
            ("img", plot_passk(run, rows, out / "passk.png"), "pass@k per model")]


def steps_text(steps: list[int | None]) -> str:
    """Per-seed steps to threshold, `never` where a seed did not reach it."""
    return ", ".join("never" if s is None else str(int(s)) for s in steps)


def verdict(run: Run, convergence: tuple | None) -> list:
    """RA3 vs NTP per pass@k column: the difference of seed means against the seed spread."""
    lines = []
    for title, bench, mode, key in passk_rows(run):
        for pair in (("ra3", "ntp"), ("ra3+rlvr", "ntp+rlvr")):
            a, b = run.reported(pair[0], bench, mode, key), run.reported(pair[1], bench, mode, key)
            if not a or not b:
                continue
            diff, spread = mean_std(a)[0] - mean_std(b)[0], max(mean_std(a)[1], mean_std(b)[1])
            if len(a) < 2:
                call = "one seed: no spread to judge the difference by"
            else:
                word = "beats" if diff > spread else ("loses to" if -diff > spread else "is within the seed spread of")
                call = f"seed std {spread:.3f}: {LABELS[pair[0]]} {word} {LABELS[pair[1]]}"
            pairs = run.discordant(*pair, bench, mode) if mode == "greedy" else None
            if pairs:
                call += (f"; tasks only {LABELS[pair[0]]} passes: {pairs[0]}, only {LABELS[pair[1]]}: {pairs[1]}, "
                         f"sign test p = {sign_test_p(*pairs):.2f}")
            lines.append(f"{title}: {LABELS[pair[0]]} − {LABELS[pair[1]]} = {diff:+.3f} ({call})")
    if convergence:
        threshold, reached = convergence
        lines.append(f"RLVR: steps to reach {threshold:.3f} held-out greedy pass@1 (the peak of NTP + RLVR's mean "
                     f"curve) per seed: from RA3 {steps_text(reached['ra3'])}; from NTP {steps_text(reached['ntp'])}")
    return [("h2", "Verdict"), ("list", lines or ["no evaluations found"])]


def rlvr_convergence(run: Run) -> tuple[float, dict[str, list[int | None]]] | None:
    """The threshold (the peak of NTP + RLVR's seed-mean held-out greedy pass@1 curve) and, per start, the
    step at which each seed's curve first reaches it; None without curves from both starts."""
    curves = {arm: run.curves(arm) for arm in ("ntp", "ra3")}
    if not all(curves.values()):
        return None
    threshold = max(mean_std(values)[0] for values in run.curve_band("ntp").values())
    return threshold, {arm: [steps_to_threshold([r["step"] for r in c], [r["pass@1_greedy"] for r in c], threshold)
                             for c in cs] for arm, cs in curves.items()}


def section_rlvr(run: Run, out: Path, convergence: tuple | None) -> list:
    if not any(run.curves(arm) for arm in ("ntp", "ra3")):  # (e.g. run_rlvr: false): no empty figure
        return [("h2", "RLVR curves"), ("p", "no RLVR curves found")]
    blocks = [("h2", "RLVR curves"), ("img", plot_rlvr(run, out / "rlvr_curves.png"), "RLVR curves")]
    if convergence is None:
        return [*blocks, ("p", "RLVR curves from one start only: no steps-to-threshold comparison")]
    threshold, reached = convergence
    table = []
    for arm, steps in reached.items():
        cs = run.curves(arm)
        split = {p: [r[f"time_{p}_s"] for c in cs for r in c if f"time_{p}_s" in r]
                 for p in ("generation", "reward", "update")}
        table.append([f"from {LABELS[arm]}", fmt([c[0]["pass@1_greedy"] for c in cs]),
                      fmt([c[-1]["pass@1_greedy"] for c in cs]), fmt([max(r["pass@1_greedy"] for r in c) for c in cs]),
                      steps_text(steps),
                      " / ".join(f"{statistics.fmean(v):.2f}" if v else "-" for v in split.values())])
    return [*blocks, ("p", f"Held-out greedy pass@1 every {run.config['rlvr'].get('eval_every', 'N')} steps "
                           f"(mean ± std over seeds); threshold = the peak of NTP + RLVR's seed-mean curve ({threshold:.3f})."),
            ("table", ["start", "step 0", "final", "best", "steps to threshold (per seed)",
                       "s/step gen / reward / update"], table)]


def section_estep(run: Run, out: Path) -> list:
    summaries = [v for v in (run.ra3_summary(s) for s in run.seeds) if v.get("iterations")]
    n_iter = max((len(v["iterations"]) for v in summaries), default=0)

    def cell(it: int, value) -> str:
        """mean ± std over seeds of value(iteration summary) for EM iteration `it`."""
        return fmt([value(v["iterations"][it]) for v in summaries if len(v["iterations"]) > it], 2)

    def row(label: str, start, end) -> list[str]:
        return [label, *[c for it in range(n_iter) for c in (start(it), end(it))]]

    rows = [row(label, lambda it, k=key: cell(it, lambda s: s["heldout_first"].get(k, math.nan)),
                lambda it, k=key: cell(it, lambda s: s["heldout_last"].get(k, math.nan)))
            for key, label in HELDOUT_STATS]
    rows += [row(label, lambda it, k=key: cell(it, lambda s: s["estep_first"].get(k, math.nan)),
                 lambda it, k=key: cell(it, lambda s: s["estep_last"].get(k, math.nan)))
             for key, label in RATIONALE_STATS]
    rows += [row("share of the demonstrations whose rollouts trained q", lambda it: "-",
                 lambda it: cell(it, lambda s: s["estep_compute"].get("rl_fraction_of_demos", math.nan))),
             row("traces keeping a rationale (M-step data)", lambda it: "-",
                 lambda it: cell(it, lambda s: s["traces_with_rationales"]))]
    header = ["quantity", *[f"iter {it} {end}" for it in range(n_iter) for end in ("start", "end")]]
    return [("h2", "E-step: ELBO and rationales"),
            ("img", plot_estep(run, out / "estep.png"), "held-out E-step objective over updates"),
            ("p", "Per EM iteration, before the first and after the last update on the held-out demonstrations "
                  "(`heldout.jsonl`), then the first and last update's training batch (mean ± std over seeds); "
                  "'names the idiom': a rationale at a true idiom boundary contains the idiom's name; '... and its "
                  "detail': and agrees with the step's constant or comparison."),
            ("table", header, rows)]


def compute_row(stage: str, c: dict) -> list[str]:
    """stage, wall s, tokens forward/backward/generated, from one compute.json (the shipped base: its manifest)."""
    if "shipped" in c:
        return [stage, "shipped", str(c["pretraining_tokens"]), str(c["pretraining_tokens"]), "-"]
    return [stage, str(c.get("wall_s", "-")), str(c.get("tokens_forward", "-")), str(c.get("tokens_backward", "-")),
            str(c.get("tokens_generated", c.get("completion_tokens", "-")))]


def section_compute(run: Run) -> list:
    timings_path = run.root / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    rows = [compute_row(stage, c) for stage, c in run.compute()]
    return [("h2", "Compute per stage"),
            ("p", f"Demo wall time {sum(timings.values()):.0f} s over {len(timings)} steps run "
                  f"(steps skipped on a resume are not counted). RA3's M-step has NTP's steps, batch and "
                  f"optimiser; its E-step is extra and appears as `seed*/ra3/iter*/estep`."),
            ("table", ["stage", "wall s", "tokens forward", "tokens backward", "tokens generated"], rows)]


def section_example(run: Run) -> list:
    for seed in run.seeds:
        for path in reversed(layout.em_estep_files(run.study.arm_dir("ra3", seed), layout.annotations_file)):
            kept = [r for r in read_jsonl(path) if r["n_rationales"] > 0]
            if kept:
                best = max(kept, key=lambda r: r["reward"])
                return [("h2", "Annotated example"),
                        ("p", f"{path.relative_to(run.root)}, task {best['task_id']}: {best['n_rationales']} "
                              f"rationale(s), reward {best['reward']:+.2f} nats over no rationales."),
                        ("code", best["prompt"] + best["completion"])]
    return [("h2", "Annotated example"), ("p", "No bootstrapped trace kept a rationale in this run.")]


def build(run: Run, out: Path) -> list:
    env_path = run.study.environment
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    header = [("h1", "RA3 vs NTP: demo report"),
              ("p", f"Run {run.root} · seeds {run.seeds} · benchmarks {run.benchmarks} · started "
                    f"{env.get('started', '?')} · git {env.get('git_sha') or 'unknown'} · {env.get('platform', '?')}, "
                    f"{env.get('cpu_count', '?')} CPUs, GPU: {env.get('gpu') or 'none'}")]
    convergence = rlvr_convergence(run)
    return (header + verdict(run, convergence) + section_passk(run, out) + section_rlvr(run, out, convergence)
            + section_estep(run, out) + section_compute(run) + section_example(run))


def run(cfg: ReportConfig) -> Path:
    """Write report.md, report.html and the PNGs into the run directory; returns report.md."""
    root = Path(cfg.run_dir)
    study = layout.Study(root)
    if not study.config.is_file():
        raise DataError(f"{root}: not a demo run directory (no {study.config.name})")
    blocks = build(Run(root), root)
    atomic_write_text(study.report("html"), to_html(blocks))
    return atomic_write_text(study.report("md"), to_markdown(blocks, root))
