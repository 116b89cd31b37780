"""Each E-step equation against numbers computed by hand (atol 1e-6, no rtol)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from ra3.objectives import (
    boundary_advantages,
    estep_reward,
    importance_log_weight,
    keep_best,
    keep_by_weight,
    keep_first,
    kl_k3,
    line_rewards,
    policy_gradient_loss,
    returns_to_go,
    sampled_elbo,
)

ATOL = 1e-6


def close(a: torch.Tensor, b) -> bool:
    return torch.allclose(a, torch.as_tensor(b, dtype=a.dtype), atol=ATOL, rtol=0)


def test_estep_reward_by_hand():
    # annotation 1: code ll -10 vs plain -12, 2 rationales, KL 0.5; c = 0.05, beta = 0.1
    # R = -10 + 12 - 0.1 - 0.05 = 1.85; annotation 2: no rationale, same ll as plain: R = 0
    r = estep_reward(torch.tensor([-10.0, -12.0]), torch.tensor([-12.0, -12.0]), torch.tensor([2.0, 0.0]),
                     torch.tensor([0.5, 0.0]), switch_cost=0.05, kl_coef=0.1)
    assert close(r, [1.85, 0.0])


def test_line_rewards_sum_to_the_reward():
    # lines: gains 0, 1.0, -0.5; a rationale before line 1 (KL 0.2); c = 0.05, beta = 0.5
    r = line_rewards(torch.tensor([[0.0, 1.0, -0.5]]), torch.tensor([[0.0, 1.0, 0.0]]),
                     torch.tensor([[0.0, 0.2, 0.0]]), switch_cost=0.05, kl_coef=0.5)
    assert close(r, [[0.0, 1.0 - 0.05 - 0.1, -0.5]])
    total = estep_reward(torch.tensor([-9.5]), torch.tensor([-10.0]), torch.tensor([1.0]), torch.tensor([0.2]),
                         switch_cost=0.05, kl_coef=0.5)
    assert math.isclose(r.sum().item(), total.item(), abs_tol=ATOL)


def test_returns_to_go_by_hand():
    assert close(returns_to_go(torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 3.0]])), [[-0.5, -1.5, 0.5], [3.0, 3.0, 3.0]])


def test_boundary_advantages_leave_one_out_with_the_empty_annotation():
    # one demo, G = 2, two lines: returns [[2, 1], [-1, 0]]; with the empty annotation (0) the baseline of
    # annotation 0 is (-1 + 0) / 2 at line 0 and (0 + 0) / 2 at line 1; of annotation 1, (2 + 0) / 2 and (1 + 0) / 2
    returns = torch.tensor([[2.0, 1.0], [-1.0, 0.0]])
    centred = torch.tensor([[2.5, 1.0], [-2.0, -0.5]])
    scale = math.sqrt((2.5**2 + 1.0 + 4.0 + 0.25) / 4)
    adv = boundary_advantages(returns, torch.ones(2, 2), group_size=2, include_empty=True, eps=0.0)
    assert close(adv, centred / scale)
    # without the empty annotation the baseline is the other sample alone: [[3, 1], [-3, -1]]
    adv = boundary_advantages(returns, torch.ones(2, 2), group_size=2, include_empty=False, eps=0.0)
    assert close(adv, torch.tensor([[3.0, 1.0], [-3.0, -1.0]]) / math.sqrt(5.0))


def test_boundary_advantages_compare_within_a_demonstration_only():
    # two demos, G = 2 each, one real line: demo A's samples both cost (-3, -1), demo B's both pay (+1, +5).
    # Each is compared with the other sample of its own demo and the empty annotation (0), never with the
    # other demo: A: -3 - (-1 + 0)/2 = -2.5, -1 - (-3 + 0)/2 = 0.5; B: 1 - (5 + 0)/2 = -1.5, 5 - (1 + 0)/2 = 4.5.
    # Padding (mask 0) gets 0 and does not enter the batch scale.
    returns = torch.tensor([[-3.0, 9.0], [-1.0, 9.0], [1.0, 0.0], [5.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    adv = boundary_advantages(returns, mask, group_size=2, include_empty=True, eps=0.0)
    scale = math.sqrt((2.5**2 + 0.5**2 + 1.5**2 + 4.5**2) / 4)
    assert close(adv, torch.tensor([[-2.5, 0.0], [0.5, 0.0], [-1.5, 0.0], [4.5, 0.0]]) / scale)


def test_importance_log_weight_by_hand():
    # gain 1.5, 2 rationales, text log p -3.0 vs log q -2.5: 1.5 - 0.1 - 0.5 = 0.9
    w = importance_log_weight(torch.tensor([1.5]), torch.tensor([2.0]), torch.tensor([-3.0]), torch.tensor([-2.5]),
                              switch_cost=0.05)
    assert close(w, [0.9])


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


def test_sampled_elbo_adds_the_plain_likelihood_to_the_reward():
    # log p(a|x) = -12; R(z) = -10 - (-12) - 0.05·2 - 0.1·1 = 1.8  →  ELBO = -10.2 = Σ log p(a|z) − c·2 − β·KL
    reward = estep_reward(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([2.0]), torch.tensor([1.0]),
                          0.05, 0.1)
    assert sampled_elbo(torch.tensor([-12.0]), reward).item() == pytest.approx(-10.2)


def test_bootstrap_rules():
    rng = random.Random(0)
    reward, log_w = torch.tensor([-0.3, 0.7, 0.2]), torch.tensor([0.0, 0.0, 0.0])
    assert keep_best(reward, log_w, True, rng) == 1
    assert keep_best(torch.tensor([-0.3, -0.1]), log_w[:2], True, rng) == -1  # the empty annotation wins
    assert keep_best(torch.tensor([-0.3, -0.1]), log_w[:2], False, rng) == 1
    assert keep_first(reward, log_w, True, rng) == 0
    # w ∝ exp(log w): one sample 50 nats above the rest is drawn every time; with all equal and the empty
    # annotation (log w = 0) among 4 candidates, each is drawn about a quarter of the time
    assert {keep_by_weight(reward, torch.tensor([0.0, 50.0, 0.0]), True, rng) for _ in range(50)} == {1}
    draws = [keep_by_weight(reward, log_w, True, rng) for _ in range(4000)]
    assert all(abs(draws.count(g) / 4000 - 0.25) < 0.03 for g in (-1, 0, 1, 2))
