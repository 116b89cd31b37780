"""The equations of RA3's E-step, one pure function each (method.md §3-4).

Notation: a demonstration is a prompt x and code lines a_1..a_T; z_t is the latent before line t
(CONTINUE or a rationale); p is the frozen model of the last M-step, q the latent policy.
The M-step's loss is the standard next-token cross-entropy on rationale + code tokens, computed by TRL's
SFTTrainer (`ntp_trainer`); pass@k lives in passk.py.
"""

from __future__ import annotations

import random

import torch


def estep_reward(code_logp: torch.Tensor, code_logp_plain: torch.Tensor, n_rationales: torch.Tensor,
                 kl: torch.Tensor, switch_cost: float, kl_coef: float) -> torch.Tensor:
    """R(z) = Σ_t log p(a_t | x, a_<t, z_≤t) − log p(a | x) − c·#rationales − β·KL(q‖p)   (method.md §3-4).

    The annotation-free log-likelihood log p(a | x) is a per-demonstration constant: subtracting it
    leaves the policy gradient unchanged and makes R read as "nats bought by the rationales".
    All arguments are per annotation, shape (N,); returns (N,).
    """
    return code_logp - code_logp_plain - switch_cost * n_rationales - kl_coef * kl


def line_rewards(line_gain: torch.Tensor, writes: torch.Tensor, line_kl: torch.Tensor, switch_cost: float,
                 kl_coef: float) -> torch.Tensor:
    """r_t = [log p(a_t | x, a_<t, z_≤t) − log p(a_t | x, a_<t)] − c·w_t − β·KL_t   (method.md §4: "the reward
    per step", with the annotation-free baseline of `estep_reward`).

    w_t = 1 where a rationale is written before line t, KL_t is the KL estimate of that rationale's tokens.
    All arguments and the result are (N, T); Σ_t r_t = R(z) of `estep_reward`.
    """
    return line_gain - switch_cost * writes - kl_coef * line_kl


def returns_to_go(rewards: torch.Tensor) -> torch.Tensor:
    """G_t = Σ_{t' ≥ t} r_{t'}: what the decisions at boundary t and after can still change. (N, T) → (N, T)."""
    return rewards.flip(-1).cumsum(-1).flip(-1)


def boundary_advantages(returns: torch.Tensor, mask: torch.Tensor, group_size: int, include_empty: bool,
                        eps: float = 1e-6) -> torch.Tensor:
    """A_{i,t} = (G_{i,t} − b_{i,t}) / s   (the E-step's policy-gradient weights, method.md §4 *(ours)*).

    Rows come in groups of `group_size` annotations of one demonstration; `returns` and `mask` (real
    boundaries) are (N, T). The baseline b_{i,t} is the mean of G_{j,t} over the *other* annotations j of the
    same demonstration, and the empty annotation's G = 0 when `include_empty`: it does not depend on
    annotation i, so E[∇log q(action) · b] = 0 and the gradient Σ_t ∇log q(actions at t) · (G_t − b_t) is an
    unbiased estimate of ∇ E_q[R(z)] (REINFORCE with reward-to-go: an action at t cannot change r_{<t}).
    s = sqrt(mean over the batch's real boundaries of (G − b)²) is one positive constant per batch, so
    every sign and every ratio between programs survives (no centring across unrelated programs).
    """
    n, t = returns.shape
    grouped = returns.view(n // group_size, group_size, t)  # (B, G, T)
    others = grouped.sum(1, keepdim=True) - grouped  # (B, G, T): Σ_{j ≠ i} G_{j,t}
    baseline = others / (group_size - 1 + include_empty)  # the empty annotation adds a 0 and a count
    centred = (grouped - baseline).view(n, t) * mask  # (N, T)
    scale = (centred.pow(2).sum() / mask.sum().clamp(min=1)).sqrt()
    return centred / (scale + eps)


def importance_log_weight(code_gain: torch.Tensor, n_rationales: torch.Tensor, text_logp: torch.Tensor,
                          text_logq: torch.Tensor, switch_cost: float) -> torch.Tensor:
    """log w(z) = [log p(a | x, z) − log p(a | x)] − c·#rationales + Σ_text [log p(token) − log q(token)]
    (the BoLT latent bootstrap's weight p(a, z | x) / q(z | x), relative to the empty annotation; the
    decisions' prior is the switch cost, method.md §3). All (N,); returns (N,)."""
    return code_gain - switch_cost * n_rationales + text_logp - text_logq


def policy_gradient_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                         mask: torch.Tensor, clip_eps: float) -> torch.Tensor:
    """L = −Σ_i m_i · min(ρ_i A_i, clip(ρ_i, 1−ε, 1+ε) A_i) / Σ_i m_i, with ρ_i = exp(log q_i − log q_old,i)
    (PPO/GRPO clipped surrogate over action log-probs; method.md §4).

    Actions are the rationale tokens and the CONTINUE/rationale decisions; all tensors share one shape,
    e.g. (N, L) with the annotation's advantage broadcast along L, and `mask` marks real actions.
    """
    ratio = torch.exp(logp - logp_old)
    surrogate = torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages)
    return -(surrogate * mask).sum() / mask.sum().clamp(min=1)


def kl_k3(logp_q: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k3(x) = exp(log p_ref − log q) − (log p_ref − log q) − 1, an unbiased, non-negative per-token
    estimate of KL(q ‖ p_ref) for x ~ q (Schulman 2020; the KL term of method.md §3). Elementwise."""
    log_ratio = logp_ref - logp_q
    return torch.exp(log_ratio) - log_ratio - 1


def sampled_elbo(code_logp_plain: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """ELBO(z) = Σ_t log p(a_t | x, a_<t, z_≤t) − c·#rationales − β·KL(q‖p) = log p(a | x) + R(z)   (method.md
    §3: the temporal ELBO's value at one sampled annotation z; its mean over z ~ q estimates the bound).
    `code_logp_plain` is log p(a | x), `reward` R(z) of `estep_reward`; both (N,)."""
    return code_logp_plain + reward


# --------------------------------------------------------------------------- the bootstrap (method.md §5)
# Which of a demonstration's G samples becomes its M-step trace: index g, or -1 for the empty annotation.
# One signature for every rule, so the rule is chosen once, at setup (`KEEP[cfg.bootstrap]`).

def keep_best(reward: torch.Tensor, log_w: torch.Tensor, include_empty: bool, rng: random.Random) -> int:
    """argmax_g R(z_g), or -1 when the empty annotation (R = 0) beats every sample."""
    g = int(reward.argmax())
    return -1 if include_empty and reward[g] < 0 else g


def keep_by_weight(reward: torch.Tensor, log_w: torch.Tensor, include_empty: bool, rng: random.Random) -> int:
    """g drawn with probability w_g / Σ w (the empty annotation: log w = 0), as BoLT resamples its latents."""
    logits = torch.cat([log_w, torch.zeros(1)]) if include_empty else log_w
    g = rng.choices(range(len(logits)), weights=torch.softmax(logits, 0).tolist())[0]
    return -1 if g == len(log_w) else g


def keep_first(reward: torch.Tensor, log_w: torch.Tensor, include_empty: bool, rng: random.Random) -> int:
    """The first sample, whatever it scores: the trace of q itself."""
    return 0


KEEP = {"best": keep_best, "importance": keep_by_weight, "sample": keep_first}
