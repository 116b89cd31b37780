"""What the E-step logs about its rationales (method.md §8): the sampled ELBO, how many rationales and how
long each holds, and, on the synthetic world whose true plan is known, whether they sit at the plan's step
boundaries and name the step (its idiom, and its detail). Every key is in docs/metrics.md."""

from __future__ import annotations

import re

import torch

from ra3.latents import Annotation, Demo
from ra3.objectives import sampled_elbo


def rollout_metrics(demos: list[Demo], annotations: list[Annotation], reward: torch.Tensor,
                    plain_logp: torch.Tensor, line_gain: torch.Tensor, writes: torch.Tensor,
                    line_kl: torch.Tensor, mask: torch.Tensor) -> dict:
    """The quantities method.md §8 asks to see, averaged over a batch of N annotations (`demos[i]` is the
    demonstration annotation i annotates); `reward` is R(z), (N,); the other tensors are per line, (N, T)."""
    n_rat, n_lines = writes.sum(1), mask.sum(1)
    elbo = sampled_elbo(plain_logp.sum(1), reward)  # plain_logp is 0 past each demo's end
    spans = [span for a, n in zip(annotations, n_lines.tolist(), strict=True)
             for span in governed_lines(sorted(a.rationales), int(n))]
    lengths = [len(r.ids) for a in annotations for r in a.rationales.values()]
    metrics = {"estep/reward": reward.mean().item(), "estep/elbo": elbo.mean().item(),
               "estep/code_gain": line_gain.sum(1).mean().item(),
               "estep/rationales_per_program": n_rat.mean().item(),
               "estep/rationale_rate": (n_rat.sum() / n_lines.sum()).item(),
               "estep/lines_per_rationale": sum(spans) / len(spans) if spans else 0.0,
               "estep/rationale_tokens": sum(lengths) / len(lengths) if lengths else 0.0,
               "estep/kl": line_kl.sum(1).mean().item()}
    return {**metrics, **boundary_metrics(demos, [a.texts() for a in annotations])}


def governed_lines(starts: list[int], n_lines: int) -> list[int]:
    """Temporal extent: lines each rationale governs, from its line up to the next rationale (or the end)."""
    ends = starts[1:] + [n_lines] if starts else []
    return [end - t for t, end in zip(starts, ends, strict=True)]


def names_idiom(text: str, idiom: str) -> bool:
    """Every word of the idiom's name appears in the rationale."""
    return all(w in text.lower() for w in idiom.lower().replace("_", " ").split())


def states_detail(text: str, detail: str, params: tuple[int, ...]) -> bool:
    """The rationale agrees with the step's detail: it contains the detail phrase ("until above 5"); or the
    step has parameters, the rationale states numbers and every one is a parameter ("keep the items above
    3" for k = 3); or the step has none and the rationale states no number ("reverse"). Known blind spots:
    a comparison stated backwards with the right number, and a parameterless variant named wrongly ("odd"
    for "even")."""
    if detail and detail.lower() in text.lower():
        return True
    numbers = {int(n) for n in re.findall(r"-?\d+", text)}
    return numbers <= set(params) and bool(numbers) == bool(params)


def boundary_metrics(demos: list, annotations: list[dict[int, str]]) -> dict:
    """Precision/recall/F1 of rationale positions against the true plan-step starts; of the rationales at a
    true start, how often one names that step's idiom, and how often it names the idiom *and* agrees with
    the step's detail (its constant or comparison)."""
    tp = fp = fn = named = detailed = 0
    for demo, ann in zip(demos, annotations, strict=True):
        if not demo.plan_starts:
            continue
        truth = {s: k for k, s in enumerate(demo.plan_starts)}
        hits = set(ann) & set(truth)
        tp, fp, fn = tp + len(hits), fp + len(set(ann) - hits), fn + len(set(truth) - hits)
        for t in hits:
            k = truth[t]
            if names_idiom(ann[t], demo.plan_names[k]):
                named += 1
                details = demo.plan_details[k] if demo.plan_details else ""
                detailed += states_detail(ann[t], details, demo.plan_params[k] if demo.plan_params else ())
    if tp + fp + fn == 0:
        return {}
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return {"estep/boundary_precision": precision, "estep/boundary_recall": recall,
            "estep/boundary_f1": 2 * precision * recall / max(precision + recall, 1e-9),
            "estep/rationale_names_idiom": named / max(tp, 1),
            "estep/rationale_names_idiom_and_detail": detailed / max(tp, 1)}
