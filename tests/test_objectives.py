"""Each E-step equation against numbers computed by hand (atol 1e-6, no rtol)."""

from __future__ import annotations

import math

import torch

from ra3.objectives import estep_reward, group_advantages, kl_k3, policy_gradient_loss, rationale_credit

ATOL = 1e-6


def close(a: torch.Tensor, b) -> bool:
    return torch.allclose(a, torch.as_tensor(b, dtype=a.dtype), atol=ATOL, rtol=0)


def test_estep_reward_by_hand():
    # annotation 1: code ll -10 vs plain -12, 2 rationales, KL 0.5; c = 0.05, beta = 0.1
    # R = -10 + 12 - 0.1 - 0.05 = 1.85; annotation 2: no rationale, same ll as plain: R = 0
    r = estep_reward(torch.tensor([-10.0, -12.0]), torch.tensor([-12.0, -12.0]), torch.tensor([2.0, 0.0]),
                     torch.tensor([0.5, 0.0]), switch_cost=0.05, kl_coef=0.1)
    assert close(r, [1.85, 0.0])


def test_rationale_credit_sums_to_reward():
    gain = torch.tensor([0.0, 0.0, 1.0, 0.5, -0.25, 2.0])  # lines 0-1 precede the first rationale
    governs = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]])
    credit = rationale_credit(gain, governs, switch_cost=0.05)
    assert close(credit, [1.25 - 0.05, 2.0 - 0.05])
    assert math.isclose(credit.sum().item(), gain.sum().item() - 2 * 0.05, abs_tol=ATOL)


def test_group_advantages_by_hand():
    # group [1, 3]: mean 2, population std 1 -> [-1, 1] (eps shrinks it a hair); constant group -> 0
    adv = group_advantages(torch.tensor([[1.0, 3.0], [5.0, 5.0]]), eps=0.0 + 1e-12)
    assert close(adv, [[-1.0, 1.0], [0.0, 0.0]])
    adv = group_advantages(torch.tensor([[0.0, 1.0, 2.0]]), eps=0.0 + 1e-12)
    s = math.sqrt(2 / 3)
    assert close(adv, [[-1 / s, 0.0, 1 / s]])


def test_policy_gradient_loss_clips_by_hand():
    logp_old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    logp = torch.log(torch.tensor([[0.75, 0.25, 0.5]]))  # ratios 1.5, 0.5, 1.0
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third action is padding
    # eps 0.2: min(1.5, 1.2)*1 = 1.2 ; min(0.5, 0.8)*1 = 0.5 ; mean over 2 real actions = 0.85 -> loss -0.85
    loss = policy_gradient_loss(logp, logp_old, adv, mask, clip_eps=0.2)
    assert math.isclose(loss.item(), -0.85, abs_tol=ATOL)
    # negative advantage: min(1.5*-1, 1.2*-1) = -1.5 ; min(0.5*-1, 0.8*-1) = -0.8 -> loss 1.15
    loss = policy_gradient_loss(logp, logp_old, -adv, mask, clip_eps=0.2)
    assert math.isclose(loss.item(), 1.15, abs_tol=ATOL)


def test_policy_gradient_direction():
    logits = torch.zeros(2, requires_grad=True)
    logp = torch.log_softmax(logits, 0)
    loss = policy_gradient_loss(logp, logp.detach(), torch.tensor([1.0, -1.0]), torch.ones(2), 0.2)
    loss.backward()
    assert logits.grad[0] < 0 < logits.grad[1]  # descent raises the advantaged action


def test_kl_k3_by_hand():
    # log q = log 0.5, log p = log 0.25: r = 0.5, k3 = 0.5 - log(0.5) - 1 = 0.193147...
    k = kl_k3(torch.log(torch.tensor([0.5, 0.3])), torch.log(torch.tensor([0.25, 0.3])))
    assert close(k, [0.5 - math.log(0.5) - 1, 0.0])
