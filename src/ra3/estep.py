"""Stage: RA3's E-step. RL discovers rationales that make the expert code more likely (method.md §4).

The latent policy q starts as a copy of the current model; the frozen scorer p is the current model
(the last M-step's). Each update samples G annotations for each of B demonstrations from q, scores each
with one teacher-forced pass of p, and takes a clipped group-relative policy-gradient step on q over the
CONTINUE decisions and rationale tokens. A final bootstrap pass annotates every demonstration and keeps
the best-scoring annotation (or a sample) as the M-step's trace.

Departures from the paper (every one a config field where it is a choice):
1. Steps are source lines only (method.md's statement/token-chunk granularities are not built).
2. Rollouts are synchronous and run in one process on its device (the main process's GPU under
   `accelerate launch`, else the CPU); the paper's are asynchronous and distributed. The GPU placement
   is untested here (no GPU was lent to this project's CPU sessions).
3. The reward subtracts the annotation-free log-likelihood (a per-demonstration constant), and the empty
   annotation joins every group's baseline and the bootstrap's candidates (`include_empty`); it is not
   a sample of q, so it never enters the policy-gradient loss.
4. `credit=local` credits each rationale with the gain of the lines it governs minus c
   (`objectives.rationale_credit`), normalised over the batch's rationales; CONTINUE decisions keep
   the group advantage.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState

from ra3.config import ConfigError, option, save_config
from ra3.files import DataError, atomic_write_text, provenance, read_records, write_jsonl
from ra3.latents import Encoder, action_logprobs, render, sample_annotations, score, split_demo
from ra3.models import load_pretrained
from ra3.objectives import estep_reward, group_advantages, kl_k3, policy_gradient_loss, rationale_credit

logger = logging.getLogger(__name__)


@dataclass
class EStepOptions:
    """The E-step's own settings (shared by `ra3 estep` and `ra3 midtrain --method ra3`)."""

    group_size: int = option(4, "G: annotations sampled per demonstration (GRPO group)")
    updates: int = option(16, "policy-gradient updates of q")
    demos_per_update: int = option(8, "B: demonstrations per update")
    switch_cost: float = option(0.05, "c: nats charged per rationale (paper: 0.05; ablations 0.01, 0.2)")
    kl_coef: float = option(0.05, "beta: weight of KL(q || p) on rationale tokens")
    estep_lr: float = option(1e-4, "learning rate of the latent policy q (AdamW)")
    clip_eps: float = option(0.2, "PPO/GRPO ratio clipping")
    ppo_epochs: int = option(1, "gradient steps per batch of rollouts")
    estep_max_grad_norm: float = option(1.0, "gradient clipping norm of q")
    temperature: float = option(0.5, "sampling temperature of rationale text (0 = greedy); 0.5 wrote the right "
                                "idiom more often than 0.7 on the embedded default (BENCHMARKS.md)")
    rationale_max_tokens: int = option(12, "longest rationale, in tokens")
    include_empty: bool = option(True, "the no-rationale annotation joins each group's baseline and the bootstrap")
    credit: str = option("local", "advantage of rationale tokens: per-rationale local credit (gain on the lines "
                         "it governs minus c), or the group-normalised total reward (with total, RL on the "
                         "embedded default learnt to stop writing rationales; BENCHMARKS.md)",
                         choices=("total", "local"))
    bootstrap: str = option("best", "M-step trace per demonstration: best of the samples, or one sample of q",
                            choices=("best", "sample"))
    bootstrap_samples: int = option(4, "annotations sampled per demonstration in the bootstrap pass")
    max_demos: int = option(0, "use at most this many demonstrations (0 = all)")
    estep_batch_size: int = option(32, "sequences per E-step forward pass")

    def __post_init__(self):
        for name in ("group_size", "demos_per_update", "ppo_epochs", "bootstrap_samples", "rationale_max_tokens",
                     "estep_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.updates < 0 or self.switch_cost < 0 or self.kl_coef < 0:
            raise ConfigError("updates, switch_cost and kl_coef must be >= 0")


@dataclass
class EStepConfig(EStepOptions):
    """E-step: latent discovery by RL over expert demonstrations."""

    model: str = option("", "current model (HF dir): q starts from it, and it scores annotations (frozen)")
    demos: Path = option(Path("runs/world/demos.jsonl"), "demonstrations: JSONL with prompt, completion "
                         "(and optionally plan: [{start, idiom}] for boundary metrics)")
    out_dir: Path = option(Path("runs/estep"), "output directory")
    seed: int = option(0, "random seed")


def load_demos(path: Path, max_demos: int = 0) -> list:
    """Demonstrations as `latents.Demo`s (errors name file and line)."""
    records = read_records(path, required=("prompt", "completion"))
    if not records:
        raise DataError(f"{path}: no demonstrations")
    records = records[:max_demos] if max_demos else records
    return [split_demo(str(r.get("task_id", i)), r["prompt"], r["completion"], r.get("plan"))
            for i, r in enumerate(records)]


@dataclass
class _Rollouts:
    rows: list[int]  # demo index of each annotation
    annotations: list[dict[int, str]]
    seqs: list
    line_logp: torch.Tensor  # (N, T) frozen-model code log-likelihood per line
    rationale_logp_ref: list[dict[int, torch.Tensor]]  # frozen-model log-probs of each rationale's tokens


class EStep:
    """The E-step's state: frozen scorer p, policy q, its optimiser, and the plain likelihoods."""

    def __init__(self, cfg: EStepConfig, demos: list):
        self.cfg = cfg
        device = PartialState().device  # this process's accelerator (cuda:<local rank>), or the CPU
        self.scorer, self.tokenizer = load_pretrained(cfg.model, dtype=torch.float32, device=device)
        self.scorer.eval().requires_grad_(False)
        self.policy = copy.deepcopy(self.scorer).requires_grad_(True)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=cfg.estep_lr, weight_decay=0.0)
        self.enc = Encoder(self.tokenizer, demos)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.compute = {"tokens_forward": 0, "tokens_backward": 0, "tokens_generated": 0}
        plain = [self.enc.sequence(i, {}) for i in range(len(demos))]
        self.plain_logp = score(self.scorer, self.enc, plain, cfg.estep_batch_size).line_logp  # (D, T)
        self.compute["tokens_forward"] += sum(len(s.ids) for s in plain)

    def rollout(self, demo_ids: list[int], group: int) -> _Rollouts:
        rows = [d for d in demo_ids for _ in range(group)]
        annotations, counts = sample_annotations(self.policy, self.enc, rows, self.cfg.temperature,
                                                 self.cfg.rationale_max_tokens, self.generator,
                                                 self.cfg.estep_batch_size)
        seqs = [self.enc.sequence(r, a) for r, a in zip(rows, annotations, strict=True)]
        scores = score(self.scorer, self.enc, seqs, self.cfg.estep_batch_size)
        counts["tokens_forward"] += sum(len(s.ids) for s in seqs)
        for k, v in counts.items():
            self.compute[k] += v
        return _Rollouts(rows, annotations, seqs, scores.line_logp, scores.rationale_logp)

    def rewards(self, ro: _Rollouts, kl: torch.Tensor) -> torch.Tensor:
        """R(z) per annotation, (N,)."""
        n_rat = torch.tensor([float(len(a)) for a in ro.annotations])
        plain = self.plain_logp[ro.rows]
        return estep_reward(ro.line_logp.sum(1), plain.sum(1), n_rat, kl, self.cfg.switch_cost, self.cfg.kl_coef)

    def update(self, demo_ids: list[int]) -> dict:
        """One RL step: sample B×G annotations, score them, clipped policy gradient on q."""
        cfg = self.cfg
        ro = self.rollout(demo_ids, cfg.group_size)
        self.policy.train()
        for epoch in range(cfg.ppo_epochs):
            actions = action_logprobs(self.policy, self.enc, ro.rows, ro.seqs)
            if epoch == 0:
                old = actions.logp.detach()
                kl = self._kl(actions, ro)
                reward = self.rewards(ro, kl)
                adv = self._advantages(reward, ro, actions)
            loss = policy_gradient_loss(actions.logp, old, adv, actions.mask, cfg.clip_eps)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.estep_max_grad_norm)
            self.optimizer.step()
            n_tokens = sum(len(s.ids) for s in ro.seqs)
            self.compute["tokens_forward"] += n_tokens
            self.compute["tokens_backward"] += n_tokens
        return {**rollout_metrics(self, ro, reward, kl), "estep/loss": loss.item()}

    def _kl(self, actions, ro: _Rollouts) -> torch.Tensor:
        """Σ over rationale tokens of k3(log q, log p), per annotation (N,)."""
        kl = torch.zeros(len(ro.rows))
        for i, ref in enumerate(ro.rationale_logp_ref):
            for t, logp_ref in ref.items():
                logp_q = actions.logp[i][actions.owner[i] == t].detach().cpu()
                kl[i] += kl_k3(logp_q, logp_ref).sum()
        return kl

    def _advantages(self, reward: torch.Tensor, ro: _Rollouts, actions) -> torch.Tensor:
        """Per-action advantages (N, L): the group advantage, or local credit on rationale tokens."""
        g = self.cfg.group_size
        grouped = reward.view(-1, g)  # (B, G)
        if self.cfg.include_empty:
            grouped = torch.cat([grouped, torch.zeros(len(grouped), 1)], 1)  # the empty annotation: R = 0
        adv = group_advantages(grouped)[:, :g].reshape(-1, 1).expand_as(actions.logp).clone()  # (N, L)
        if self.cfg.credit == "local":
            credit = local_credits(self, ro)
            values = torch.tensor([c for row in credit for c in row.values()]) if credit else torch.zeros(0)
            mean, std = (values.mean(), values.std(unbiased=False) + 1e-4) if len(values) > 1 else (0.0, 1.0)
            for i, row in enumerate(credit):
                for t, c in row.items():
                    adv[i][actions.owner[i] == t] = (c - mean) / std
        return adv.to(actions.logp.device)


def local_credits(step: EStep, ro: _Rollouts) -> list[dict[int, float]]:
    """Per annotation: {line t of a rationale: its credit} (objectives.rationale_credit)."""
    out = []
    for i, ann in enumerate(ro.annotations):
        starts = sorted(ann)
        n_lines = len(step.enc.demos[ro.rows[i]].lines)
        if not starts:
            out.append({})
            continue
        gain = ro.line_logp[i, :n_lines] - step.plain_logp[ro.rows[i], :n_lines]
        governs = torch.zeros(len(starts), n_lines)
        for k, (t, span) in enumerate(zip(starts, governed_lines(starts, n_lines), strict=True)):
            governs[k, t: t + span] = 1
        credit = rationale_credit(gain, governs, step.cfg.switch_cost)
        out.append({t: credit[k].item() for k, t in enumerate(starts)})
    return out


def rollout_metrics(step: EStep, ro: _Rollouts, reward: torch.Tensor, kl: torch.Tensor) -> dict:
    """The quantities method.md §8 asks to see, averaged over the batch's annotations."""
    cfg = step.cfg
    n_rat = torch.tensor([float(len(a)) for a in ro.annotations])
    n_lines = torch.tensor([float(len(step.enc.demos[r].lines)) for r in ro.rows])
    elbo = ro.line_logp.sum(1) - cfg.switch_cost * n_rat - cfg.kl_coef * kl
    spans = [span for a, n in zip(ro.annotations, n_lines.tolist(), strict=True)
             for span in governed_lines(sorted(a), int(n))]
    lengths = [b - a for s in ro.seqs for a, b in s.rationale_span.values()]
    metrics = {"estep/reward": reward.mean().item(), "estep/elbo": elbo.mean().item(),
               "estep/elbo_gain": (elbo - step.plain_logp[ro.rows].sum(1)).mean().item(),
               "estep/rationales_per_program": n_rat.mean().item(),
               "estep/rationale_rate": (n_rat.sum() / n_lines.sum()).item(),
               "estep/lines_per_rationale": sum(spans) / len(spans) if spans else 0.0,
               "estep/rationale_tokens": sum(lengths) / len(lengths) if lengths else 0.0,
               "estep/kl": kl.mean().item()}
    return {**metrics, **boundary_metrics([step.enc.demos[r] for r in ro.rows], ro.annotations)}


def governed_lines(starts: list[int], n_lines: int) -> list[int]:
    """Temporal extent: lines each rationale governs, from its line up to the next rationale (or the end)."""
    ends = starts[1:] + [n_lines] if starts else []
    return [end - t for t, end in zip(starts, ends, strict=True)]


def boundary_metrics(demos: list, annotations: list[dict[int, str]]) -> dict:
    """Precision/recall/F1 of rationale positions against the true plan-step starts, and how often a
    rationale at a true start names that step's idiom (all of the idiom name's words appear in it)."""
    tp = fp = fn = named = 0
    for demo, ann in zip(demos, annotations, strict=True):
        if not demo.plan_starts:
            continue
        truth = dict(zip(demo.plan_starts, demo.plan_names, strict=True))
        hits = set(ann) & set(truth)
        tp, fp, fn = tp + len(hits), fp + len(set(ann) - hits), fn + len(set(truth) - hits)
        named += sum(all(w in ann[t].lower() for w in truth[t].lower().replace("_", " ").split()) for t in hits)
    if tp + fp + fn == 0:
        return {}
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return {"estep/boundary_precision": precision, "estep/boundary_recall": recall,
            "estep/boundary_f1": 2 * precision * recall / max(precision + recall, 1e-9),
            "estep/rationale_names_idiom": named / max(tp, 1)}


def bootstrap(step: EStep, demo_ids: list[int]) -> list[dict]:
    """The M-step's traces: per demonstration, the best of `bootstrap_samples` annotations from q (the
    empty one a candidate too when include_empty), or the first sample (bootstrap=sample)."""
    from tqdm import tqdm

    cfg, records = step.cfg, []
    for start in tqdm(range(0, len(demo_ids), cfg.estep_batch_size), desc="E-step bootstrap", unit="batch"):
        chunk = demo_ids[start:start + cfg.estep_batch_size]
        ro = step.rollout(chunk, cfg.bootstrap_samples)
        reward = step.rewards(ro, torch.zeros(len(ro.rows))).view(len(chunk), cfg.bootstrap_samples)
        for i, d in enumerate(chunk):
            g = int(reward[i].argmax()) if cfg.bootstrap == "best" else 0
            ann, r = ro.annotations[i * cfg.bootstrap_samples + g], reward[i, g].item()
            if cfg.include_empty and cfg.bootstrap == "best" and r < 0:
                ann, r = {}, 0.0
            demo = step.enc.demos[d]
            records.append({"task_id": demo.task_id, "prompt": demo.prompt, "completion": render(demo, ann),
                            "reward": round(r, 4), "n_rationales": len(ann),
                            "rationales": {str(t): text for t, text in sorted(ann.items())}})
    return records


def run(cfg: EStepConfig) -> Path:
    """Run the E-step; returns annotations.jsonl (the M-step's traces). A finished run returns at once.

    Under `accelerate launch` (RA3's M-step is distributed) the main process runs the E-step on its
    device and the other processes wait for its traces (departure 2)."""
    out = Path(cfg.out_dir)
    state = PartialState()
    if (out / "annotations.jsonl").is_file():
        logger.info("%s is finished; skipping", out)
    elif state.is_main_process:
        _run_main(cfg, out)
    state.wait_for_everyone()
    return out / "annotations.jsonl"


def _run_main(cfg: EStepConfig, out: Path) -> Path:
    torch.manual_seed(cfg.seed)
    save_config(cfg, out / "config.yaml")
    demos = load_demos(cfg.demos, cfg.max_demos)
    start = time.monotonic()
    step = EStep(cfg, demos)
    rng, history = random.Random(cfg.seed), []
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    with SummaryWriter(str(out / "tb")) as tb:
        for u in tqdm(range(cfg.updates), desc="E-step updates", unit="update"):
            metrics = step.update(rng.sample(range(len(demos)), min(cfg.demos_per_update, len(demos))))
            history.append({"update": u, **metrics})
            for key, value in metrics.items():
                tb.add_scalar(key, value, u)
        step.policy.eval()
        records = bootstrap(step, list(range(len(demos))))
    write_jsonl(out / "metrics.jsonl", history)
    compute = {**step.compute, "wall_s": round(time.monotonic() - start, 2), "demos": len(demos),
               **provenance(cfg.seed, demos=cfg.demos)}
    atomic_write_text(out / "compute.json", json.dumps(compute, indent=2) + "\n")
    for rec in sorted(records, key=lambda r: -r["reward"])[:2]:
        logger.info("annotated example %s (reward %+.2f):\n%s%s", rec["task_id"], rec["reward"], rec["prompt"],
                    rec["completion"])
    return write_jsonl(out / "annotations.jsonl", records)
