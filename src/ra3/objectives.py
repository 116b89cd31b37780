"""The equations of RA3's E-step, one pure function each (method.md §3-4).

Notation: a demonstration is a prompt x and code lines a_1..a_T; z_t is the latent before line t
(CONTINUE or a rationale); p is the frozen model of the last M-step, q the latent policy.
The M-step's loss is the standard next-token cross-entropy on rationale + code tokens, computed by TRL's
SFTTrainer (sft.py); pass@k lives in passk.py.
"""

from __future__ import annotations

import torch


def estep_reward(code_logp: torch.Tensor, code_logp_plain: torch.Tensor, n_rationales: torch.Tensor,
                 kl: torch.Tensor, switch_cost: float, kl_coef: float) -> torch.Tensor:
    """R(z) = Σ_t log p(a_t | x, a_<t, z_≤t) − log p(a | x) − c·#rationales − β·KL(q‖p)   (method.md §3-4).

    The annotation-free log-likelihood log p(a | x) is a per-demonstration constant: subtracting it
    leaves the policy gradient unchanged and makes R read as "nats bought by the rationales".
    All arguments are per annotation, shape (N,); returns (N,).
    """
    return code_logp - code_logp_plain - switch_cost * n_rationales - kl_coef * kl


def rationale_credit(line_gain: torch.Tensor, governs: torch.Tensor, switch_cost: float) -> torch.Tensor:
    """credit_k = Σ_{t governed by k} [log p(a_t | ·, z) − log p(a_t | ·)] − c   (method.md §4, *(ours)*).

    A rationale governs the lines from its position up to the next rationale. `line_gain` is (T,), the
    per-line log-likelihood gain of one annotation; `governs` is (K, T) with governs[k, t] = 1 when
    rationale k governs line t. Returns (K,). Σ_k credit_k equals the reward without its KL term, because
    lines before the first rationale see an identical context and gain exactly 0.
    """
    return governs.to(line_gain.dtype) @ line_gain - switch_cost


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """A_{i,g} = (R_{i,g} − mean_g R_{i,·}) / (std_g R_{i,·} + eps)   (GRPO; method.md §4).

    `rewards` is (B, G): G annotations of each of B demonstrations. Returns (B, G). A group whose
    annotations all score the same gets advantage 0 (nothing to learn from it).
    """
    mean = rewards.mean(dim=1, keepdim=True)  # (B, 1)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)  # (B, 1)
    return (rewards - mean) / (std + eps)


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
