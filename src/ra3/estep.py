"""Stage: RA3's E-step. RL discovers rationales that make the expert code more likely (method.md §4).

The latent policy q starts as a copy of the current model; the frozen scorer p is the current model
(the last M-step's). The E-step walks once through the demonstrations in a seeded order. For each batch of
B demonstrations it samples G annotations per demonstration from q, scores each with one teacher-forced
pass of p, keeps the best one as that demonstration's M-step trace (the bootstrap), and, for the first
`rl_fraction` of the demonstrations, takes a policy-gradient step on q with those same rollouts. The
objective E_q[R(z)] (with c and the KL term) is measured on a fixed, seeded set of held-out
demonstrations before the first update, every `eval_every` updates and after the last (`heldout.jsonl`).

The update maximises E_q[R(z)] with R(z) = Σ_t r_t (objectives.line_rewards): every action at boundary t
(the CONTINUE decision, or the decision to write and the rationale's text tokens) is weighted by the
return-to-go G_t = Σ_{t'≥t} r_t' minus a leave-one-out group baseline, scaled by one constant per batch
(objectives.boundary_advantages). CONTINUE decisions and rationale tokens thus share one scale (nats of
ELBO still to come), and a rationale that costs more than the group's alternatives is pushed down.

Departures from the paper (every one a config field where it is a choice):
1. Steps are source lines only (method.md's statement/token-chunk granularities are not built).
2. Rollouts are synchronous; under `accelerate launch` each rank samples and scores its share of every
   batch on its device and q's gradients are averaged over ranks (data parallel, replicas identical); the
   paper's rollouts are asynchronous. The GPU placement is untested here (no GPU was lent to this
   project's CPU sessions); 2 CPU processes (gloo) are tested.
3. The reward subtracts the annotation-free log-likelihood (a per-demonstration constant), and the empty
   annotation joins every group's baseline and the bootstrap's candidates (`include_empty`); it is not
   a sample of q, so it never enters the policy-gradient loss.
4. q is the model at two temperatures (decision and text, `latents`), sampled and scored under the same
   distribution; the KL term is KL(q ‖ p) on the rationale text tokens (the decision's prior is c).
5. RL and the bootstrap share rollouts: the first `rl_fraction` of the demonstrations are annotated by
   the q of the update they train (so the RL costs only its backward passes), the rest by the final q.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState

from ra3 import layout
from ra3.config import Config, ConfigError, option, save_config
from ra3.demonstrations import read_demonstrations
from ra3.estep_metrics import rollout_metrics
from ra3.estep_ranks import average_gradients, process_state, weights_checksum
from ra3.files import atomic_write_text, provenance, write_jsonl
from ra3.latent_policy import action_logprobs, count_actions, sample_annotations
from ra3.latents import Annotation, Encoder, Temperatures, score, split_demo
from ra3.models import load_pretrained
from ra3.objectives import (
    KEEP,
    boundary_advantages,
    importance_log_weight,
    kl_k3,
    line_rewards,
    policy_gradient_loss,
    returns_to_go,
)

logger = logging.getLogger(__name__)


@dataclass
class EStepOptions(Config):
    """The E-step's own settings (shared by `ra3 estep` and `ra3 midtrain --method ra3`)."""

    group_size: int = option(4, "G: annotations sampled per demonstration (the RL group and the bootstrap's "
                             "candidates)", at_least=1)
    rl_fraction: float = option(0.2, "share of the demonstrations whose rollouts also train q (one update per "
                                "demos_per_update of them); the rest are annotated by the final q", at_least=0, at_most=1)
    demos_per_update: int = option(16, "B: demonstrations per policy-gradient update", at_least=1)
    heldout_demos: int = option(32, "fixed, seeded demonstrations never trained on, on which the E-step "
                                "objective is measured (0: none)", at_least=0)
    eval_every: int = option(5, "measure the held-out objective every N updates (and before the first, after "
                             "the last)", at_least=1)
    switch_cost: float = option(0.05, "c: nats charged per rationale (paper: 0.05; ablations 0.01, 0.2)", at_least=0)
    kl_coef: float = option(0.05, "beta: weight of KL(q || p) on rationale text tokens", at_least=0)
    estep_lr: float = option(5e-5, "learning rate of the latent policy q (AdamW); at 1e-4 the held-out objective "
                             "swung by a nat between measurements in the second EM iteration (BENCHMARKS.md)")
    clip_eps: float = option(0.2, "PPO/GRPO ratio clipping")
    ppo_epochs: int = option(1, "gradient steps per batch of rollouts", at_least=1)
    estep_max_grad_norm: float = option(1.0, "gradient clipping norm of q")
    temperature: float = option(0.5, "T of q's rationale text; 0.5 wrote the right idiom more often "
                                "than 0.7 on the embedded default (BENCHMARKS.md)", above=0)
    decision_temperature: float = option(1.0, "T of q's write/CONTINUE decision", above=0)
    rationale_max_tokens: int = option(12, "longest rationale, in tokens", at_least=1)
    include_empty: bool = option(True, "the no-rationale annotation joins each group's baseline and the bootstrap")
    bootstrap: str = option("best", "M-step trace per demonstration: the best of the G samples (and the empty "
                            "annotation) by R(z), one drawn in proportion to its importance weight (BoLT), or "
                            "the first sample", choices=("best", "importance", "sample"))
    max_demos: int = option(0, "use at most this many demonstrations (0 = all)")
    estep_batch_size: int = option(32, "sequences per E-step forward pass (and per backward pass of q's update: "
                                  "the activation memory scales with it, not with the rollouts)", at_least=1)

    def __post_init__(self):
        super().__post_init__()
        if self.group_size < 2 and not self.include_empty:
            raise ConfigError("group_size 1 needs include_empty: the baseline of an annotation is the others'")


@dataclass
class EStepConfig(EStepOptions):
    """E-step: latent discovery by RL over expert demonstrations."""

    model: str = option("", "current model (HF dir): q starts from it, and it scores annotations (frozen)")
    demos: Path = option(Path("runs/world/demos.jsonl"), "demonstrations: JSONL with prompt, completion "
                         "(and optionally plan: [{start, idiom, detail, params}] for boundary metrics)")
    out_dir: Path = option(Path("runs/estep"), "output directory")
    seed: int = option(0, "random seed")


def load_demos(path: Path, max_demos: int = 0) -> list:
    """Demonstrations (`demonstrations.read_demonstrations`) as `latents.Demo`s, split into lines."""
    return [split_demo(str(r.get("task_id", i)), r["prompt"], r["completion"], r.get("plan"))
            for i, r in enumerate(read_demonstrations(path, max_demos))]


@dataclass
class Rollouts:
    """N = B·G scored annotations, grouped by demonstration, with their per-line terms (N, T)."""

    rows: list[int]  # demo index of each annotation
    annotations: list[Annotation]
    seqs: list
    line_gain: torch.Tensor  # log p(a_t | ·, z) − log p(a_t | ·), 0 past a demo's end
    writes: torch.Tensor  # 1 where a rationale is written before line t
    line_kl: torch.Tensor  # k3 KL estimate of the rationale before line t
    text_logp: torch.Tensor  # (N,) Σ log p of the sampled rationale text tokens
    text_logq: torch.Tensor  # (N,) Σ log q of the same tokens
    mask: torch.Tensor  # 1 at a demo's real lines


class EStep:
    """The E-step's state: frozen scorer p, policy q, its optimiser, and the plain likelihoods."""

    def __init__(self, cfg: EStepConfig, demos: list):
        self.cfg = cfg
        state = process_state()
        self.rank, self.world, device = state.process_index, state.num_processes, state.device
        self.scorer, self.tokenizer = load_pretrained(cfg.model, dtype=torch.float32, device=device)
        self.scorer.eval().requires_grad_(False)
        self.policy = copy.deepcopy(self.scorer).requires_grad_(True)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=cfg.estep_lr, weight_decay=0.0)
        self.temps = Temperatures(cfg.decision_temperature, cfg.temperature)
        self.keep = KEEP[cfg.bootstrap]  # the bootstrap's rule, chosen once
        self.enc = Encoder(self.tokenizer, demos)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed + 1000 * self.rank)
        self.compute = {"tokens_forward": 0, "tokens_backward": 0, "tokens_generated": 0}
        steps = max(len(d.lines) for d in self.enc.demos)  # (unit pieces can merge lines into one step)
        self._plain = torch.full((len(demos), steps), float("nan"))  # (D, T)

    def plain_logp(self, rows: list[int]) -> torch.Tensor:
        """log p(a_t | x, a_<t) per line of the annotation-free traces of `rows`, (N, T); each demonstration
        is scored once, when first asked for (a rank scores only the demonstrations it annotates)."""
        todo = sorted({r for r in rows if self._plain[r, 0].isnan()})
        if todo:
            seqs = [self.enc.sequence(r, Annotation()) for r in todo]
            scored = score(self.scorer, self.enc, seqs, self.cfg.estep_batch_size).line_logp
            self._plain[todo] = torch.nn.functional.pad(scored, (0, self._plain.shape[1] - scored.shape[1]))
            self.compute["tokens_forward"] += sum(len(s.ids) for s in seqs)
        return self._plain[rows]

    def rollout(self, demo_ids: list[int], generator: torch.Generator | None = None) -> Rollouts:
        """G annotations of each demonstration from q, scored by p."""
        rows = [d for d in demo_ids for _ in range(self.cfg.group_size)]
        annotations, counts = sample_annotations(self.policy, self.enc, rows, self.temps,
                                                 self.cfg.rationale_max_tokens, generator or self.generator,
                                                 self.cfg.estep_batch_size)
        seqs = [self.enc.sequence(r, a) for r, a in zip(rows, annotations, strict=True)]
        n_lines = torch.tensor([len(self.enc.demos[r].lines) for r in rows])
        n, width = len(rows), int(n_lines.max())
        mask = (torch.arange(width) < n_lines.unsqueeze(1)).float()  # (N, T)
        plain = self.plain_logp(rows)[:, :width]
        line_logp = plain.clone()  # an empty annotation scores as the plain trace
        annotated = [i for i, a in enumerate(annotations) if a.rationales]
        writes, line_kl = torch.zeros(n, width), torch.zeros(n, width)
        text_logp, text_logq = torch.zeros(n), torch.zeros(n)
        if annotated:
            scores = score(self.scorer, self.enc, [seqs[i] for i in annotated], self.cfg.estep_batch_size)
            scored = scores.line_logp  # (A, T_A), T_A <= width: the longest annotated demo
            line_logp[annotated] = torch.nn.functional.pad(scored, (0, width - scored.shape[1]))
            counts["tokens_forward"] += sum(len(seqs[i].ids) for i in annotated)
            for i, ref in zip(annotated, scores.rationale_logp, strict=True):
                for t, r in annotations[i].rationales.items():
                    logq = torch.tensor(r.logq[1:])  # the sampled text tokens (h is the decision)
                    logp = ref[t][:len(logq)]
                    writes[i, t], line_kl[i, t] = 1.0, kl_k3(logq, logp).sum()
                    text_logp[i] += logp.sum()
                    text_logq[i] += logq.sum()
        for k, v in counts.items():
            self.compute[k] += v
        gain = (line_logp - plain) * mask
        return Rollouts(rows, annotations, seqs, gain, writes, line_kl, text_logp, text_logq, mask)

    def line_rewards(self, ro: Rollouts) -> torch.Tensor:
        """r_t per annotation and line, (N, T); R(z) is its row sum."""
        return line_rewards(ro.line_gain, ro.writes, ro.line_kl, self.cfg.switch_cost, self.cfg.kl_coef)

    def update(self, ro: Rollouts) -> dict:
        """One clipped policy-gradient step on q over the rollouts' actions (CONTINUE, write, text tokens)."""
        cfg = self.cfg
        self.policy.train()
        for _ in range(cfg.ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.accumulate_gradient(ro)
            average_gradients(self.policy, self.world)
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.estep_max_grad_norm)
            self.optimizer.step()
            n_tokens = sum(len(s.ids) for s in ro.seqs)
            self.compute["tokens_forward"] += n_tokens
            self.compute["tokens_backward"] += n_tokens
        self.policy.eval()
        metrics = rollout_metrics([self.enc.demos[r] for r in ro.rows], ro.annotations, self.line_rewards(ro).sum(1),
                                  self.plain_logp(ro.rows), ro.line_gain, ro.writes, ro.line_kl, ro.mask)
        return {**metrics, "estep/loss": loss}

    def accumulate_gradient(self, ro: Rollouts) -> float:
        """Add ∇L of the clipped surrogate (objectives.policy_gradient_loss) over all the rollouts' actions to
        q's .grad, and return L. L is a mean over the A actions, so a micro-batch b of `estep_batch_size`
        sequences contributes its own mean times A_b / A: the gradients sum to the one-pass gradient while
        only one micro-batch's (n, T, V) logits and activations are alive (a real model's memory bound)."""
        cfg = self.cfg
        adv_lines = boundary_advantages(returns_to_go(self.line_rewards(ro)), ro.mask, cfg.group_size,
                                        cfg.include_empty)  # (N, T)
        size, n = cfg.estep_batch_size, len(ro.rows)
        total = count_actions(self.enc, ro.rows, ro.seqs, ro.annotations, self.temps)
        loss = 0.0
        for b in range(0, n, size):
            part = slice(b, b + size)
            actions = action_logprobs(self.policy, self.enc, ro.rows[part], ro.seqs[part], ro.annotations[part],
                                      self.temps)
            adv = adv_lines[part].to(actions.logp.device).gather(1, actions.boundary)  # (n, L)
            share = actions.mask.sum() / total
            part_loss = share * policy_gradient_loss(actions.logp, actions.logq_sampled, adv, actions.mask,
                                                     cfg.clip_eps)
            part_loss.backward()
            loss += part_loss.item()
        return loss

    def heldout(self, demo_ids: list[int]) -> dict:
        """The E-step objective on held-out demonstrations (each rank its share, averaged over all). Decisions
        and text (HF generate draws from the global RNG) start from the same seed every time, so two
        measurements share their dice up to the first choice the policies make differently."""
        seed = self.cfg.seed + 7919 + 1000 * self.rank
        generator = torch.Generator(device=self.generator.device).manual_seed(seed)
        with torch.random.fork_rng(devices=[] if generator.device.type == "cpu" else [generator.device]):
            torch.manual_seed(seed)
            mine = demo_ids[self.rank::self.world]
            ro = self.rollout(mine, generator) if mine else None
        sums = torch.zeros(5) if ro is None else torch.stack([
            self.line_rewards(ro).sum(), ro.line_gain.sum(), ro.writes.sum(), ro.line_kl.sum(),
            torch.tensor(float(len(ro.rows)))])
        if self.world > 1:
            torch.distributed.all_reduce(sums)
        keys = ("objective", "code_gain", "rationales_per_program", "kl")
        return {f"estep/heldout_{k}": (v / sums[-1]).item() for k, v in zip(keys, sums, strict=False)}


# --------------------------------------------------------------------------- the bootstrap: one trace per demo

def bootstrap_records(step: EStep, ro: Rollouts, rng: random.Random) -> list[tuple[int, dict]]:
    """Per demonstration of the rollouts, the kept annotation as an M-step trace: (demo index, record)."""
    cfg, g = step.cfg, step.cfg.group_size
    reward = step.line_rewards(ro).sum(1)  # (N,)
    log_w = importance_log_weight(ro.line_gain.sum(1), ro.writes.sum(1), ro.text_logp, ro.text_logq,
                                  cfg.switch_cost)
    out = []
    for b in range(len(ro.rows) // g):
        group = slice(b * g, (b + 1) * g)
        k = step.keep(reward[group], log_w[group], cfg.include_empty, rng)
        ann, r = (Annotation(), 0.0) if k < 0 else (ro.annotations[b * g + k], reward[b * g + k].item())
        d = ro.rows[b * g]
        demo, texts = step.enc.demos[d], ann.texts()
        out.append((d, {"task_id": demo.task_id, "prompt": demo.prompt, "completion": step.enc.render(d, texts),
                        "reward": round(r, 4), "n_rationales": len(texts),
                        "rationales": {str(t): s for t, s in texts.items()}}))
    return out


# --------------------------------------------------------------------------- the stage

def plan_demos(n_demos: int, cfg: EStepOptions, seed: int) -> tuple[list[int], list[int], list[int]]:
    """(held-out, RL, rest): a seeded order of the demonstrations; the held-out ones are measured and never
    trained on (they are annotated by the final q with the rest); the RL ones are the next
    ceil(rl_fraction · D) of them."""
    order = list(range(n_demos))
    random.Random(seed).shuffle(order)
    heldout = order[:min(cfg.heldout_demos, n_demos // 2)]
    n_rl = min(math.ceil(cfg.rl_fraction * n_demos), n_demos - len(heldout))
    rl = order[len(heldout):len(heldout) + n_rl]
    return heldout, rl, sorted(set(order) - set(rl))


def run(cfg: EStepConfig) -> Path:
    """Run the E-step; returns annotations.jsonl (the M-step's traces). A finished run returns at once.

    Under `accelerate launch` every rank annotates its share of each batch and of the rest, the ranks
    average q's gradients (identical replicas), and the main process writes the files."""
    out = Path(cfg.out_dir)
    state = process_state()
    if layout.annotations_file(out).is_file():
        logger.info("%s is finished; skipping", out)
    else:
        _run(cfg, out, state)
    state.wait_for_everyone()
    return layout.annotations_file(out)


def _run(cfg: EStepConfig, out: Path, state: PartialState) -> None:
    from accelerate.utils import gather_object
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    if cfg.demos_per_update < state.num_processes:
        raise ConfigError(f"demos_per_update ({cfg.demos_per_update}) must be >= the number of processes "
                          f"({state.num_processes}): every rank takes a share of each batch")
    torch.manual_seed(cfg.seed + 1000 * state.process_index)
    if state.is_main_process:
        save_config(cfg, layout.config_file(out))
    demos = load_demos(cfg.demos, cfg.max_demos)
    start = time.monotonic()
    step = EStep(cfg, demos)
    heldout, rl, rest = plan_demos(len(demos), cfg, cfg.seed)
    rank, world = state.process_index, state.num_processes
    rng, history, curve, records = random.Random(cfg.seed + 1000 * rank), [], [], []
    batches = [rl[i:i + cfg.demos_per_update] for i in range(0, len(rl), cfg.demos_per_update)]
    if batches and len(batches[-1]) < world:  # every rank needs a share of every batch
        rest = sorted(rest + batches.pop())
    tb = SummaryWriter(str(out / "tb")) if state.is_main_process else None

    def log(metrics: dict, u: int) -> None:
        for key, value in metrics.items():
            if tb is not None and key != "update":
                tb.add_scalar(key, value, u)

    def measure(u: int) -> None:
        if heldout:
            curve.append({"update": u, **step.heldout(heldout)})
            log(curve[-1], u)

    measure(0)
    for u, batch in enumerate(tqdm(batches, desc="E-step RL", unit="update", disable=rank > 0), 1):
        ro = step.rollout(batch[rank::world])
        records += bootstrap_records(step, ro, rng)
        history.append({"update": u, **step.update(ro)})  # the metrics of this rank's share
        log(history[-1], u)
        if u % cfg.eval_every == 0 or u == len(batches):
            measure(u)
    chunk = max(1, 4 * cfg.estep_batch_size // cfg.group_size)
    mine = rest[rank::world]
    for i in tqdm(range(0, len(mine), chunk), desc="E-step bootstrap", unit="batch", disable=rank > 0):
        records += bootstrap_records(step, step.rollout(mine[i:i + chunk]), rng)
    counts = torch.tensor([float(v) for v in step.compute.values()])
    if world > 1:
        torch.distributed.all_reduce(counts)
        records = gather_object(records)
    replicas = gather_object([weights_checksum(step.policy)])
    if tb is not None:
        tb.close()
    if state.is_main_process:
        compute = {**dict(zip(step.compute, (int(c) for c in counts), strict=True)),
                   "wall_s": round(time.monotonic() - start, 2), "demos": len(demos), "processes": world,
                   "replicas_identical": len(set(replicas)) == 1,
                   "updates": len(batches), "rl_demos": len(rl), "rl_fraction_of_demos": round(len(rl) / len(demos), 4),
                   "heldout_demos": len(heldout), **provenance(cfg.seed, demos=cfg.demos)}
        _write_outputs(out, history, curve, compute, [rec for _, rec in sorted(records, key=lambda x: x[0])])


def _write_outputs(out: Path, history: list[dict], curve: list[dict], compute: dict, records: list[dict]) -> None:
    """metrics.jsonl, heldout.jsonl, compute.json, then annotations.jsonl (last: its presence means done)."""
    write_jsonl(layout.estep_metrics_file(out), history)
    write_jsonl(layout.heldout_file(out), curve)
    atomic_write_text(layout.compute_file(out), json.dumps(compute, indent=2) + "\n")
    for rec in sorted(records, key=lambda r: -r["reward"])[:2]:
        logger.info("annotated example %s (reward %+.2f):\n%s%s", rec["task_id"], rec["reward"], rec["prompt"],
                    rec["completion"])
    write_jsonl(layout.annotations_file(out), records)
