"""TRL's GRPOTrainer with `ra3 generate`'s stop rules, and the rollout statistics it keeps (RLVR's trainer).

TRL ends a rollout only at EOS or `max_completion_length`; `ra3 generate` also stops where the function
body ends (`sampling.stop_rule`). The subclass cuts the *sampled tokens* there, so the reward is computed on
the program `ra3 evaluate` would run and the policy gradient acts on exactly its tokens (cutting only the
text would reinforce whatever the model wrote after the body). HF rollouts still run to EOS before the cut;
vLLM ones stop early on the rule's stop strings.

It overrides two private methods of TRL's GRPOTrainer, `_generate_single_turn` and `_log_metric`; the TRL
range in pyproject.toml is the one this was tested with, and `tests/test_rlvr.py` checks that surface.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ra3.sampling import StopRule, stop_completion, stop_rule


@dataclass
class RolloutStats:
    """Running totals the trainer keeps while it samples, and metrics waiting for its next log. One object,
    given to the trainer and to whoever reads it (`rlvr_eval.StepClock`, `rlvr_eval.RLVRCallback`)."""

    generation_s: float = 0.0
    tokens_generated: int = 0
    pending_logs: dict[str, float] = field(default_factory=dict)


def stop_length(decode: Callable[[Sequence[int]], str], ids: Sequence[int],
                stop: StopRule = stop_completion) -> int:
    """How many of the sampled `ids` to keep: the longest prefix whose text fits in `stop(text)`, at least 1
    (TRL needs a non-empty completion). Binary search over prefixes: decoded length grows with k."""
    text = decode(ids)
    target = len(stop(text))
    if target == len(text):
        return len(ids)
    lo, hi = 0, len(ids)  # invariant: len(decode(ids[:lo])) <= target < len(decode(ids[:hi]))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if len(decode(ids[:mid])) <= target:
            lo = mid
        else:
            hi = mid
    return max(lo, 1)


def stop_rule_trainer_class():
    """GRPOTrainer whose rollouts end where `ra3 generate` stops, timing its sampling into `stats`.
    (Built on demand: importing TRL costs seconds that `ra3 rlvr --help` should not pay.)"""
    from trl import GRPOTrainer

    class StopRuleGRPOTrainer(GRPOTrainer):
        def __init__(self, *args, stats: RolloutStats, **kwargs):
            self.stats = stats
            super().__init__(*args, **kwargs)

        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            start = time.perf_counter()
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            self.stats.generation_s += time.perf_counter() - start
            self.stats.tokens_generated += sum(map(len, completion_ids))
            decode = functools.partial(self.processing_class.decode, skip_special_tokens=True,
                                       clean_up_tokenization_spaces=False)
            # one prompt row per completion: TRL has already repeated each prompt num_generations times
            keep = [stop_length(decode, ids, stop_rule(decode(prompt)))
                    for prompt, ids in zip(prompt_ids, completion_ids, strict=True)]
            cut = sum(k < len(ids) for k, ids in zip(keep, completion_ids, strict=True))
            self._log_metric("rlvr/stop_rule_rate", cut / len(keep))
            completion_ids = [ids[:k] for ids, k in zip(completion_ids, keep, strict=True)]
            if logprobs is not None:  # vLLM's sampling log-probs, one per kept token
                logprobs = [lp[:k] for lp, k in zip(logprobs, keep, strict=True)]
            return completion_ids, logprobs

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            logs.update(self.stats.pending_logs)
            self.stats.pending_logs.clear()
            super().log(logs, start_time)

    return StopRuleGRPOTrainer
