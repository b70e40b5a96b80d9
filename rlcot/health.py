"""Loud warnings for the silent failures of RL runs: most completions truncated, no reward
signal (every reward of the batch, or of every group, equal), the KL to the reference
exploding, the policy's entropy collapsing.

`health_warnings` is a pure function of one step's metrics row (and the run's first training
row, for the entropy it started from); `HealthLog` logs each condition at most once per
`every` steps and returns `health/NAME` (1.0 when the condition holds at that step, else 0.0)
for the metrics row, so metrics.jsonl counts every occurrence.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

log = logging.getLogger(__name__)

CONDITIONS = ("truncated", "equal_rewards", "kl_exploding", "entropy_collapse")
TRUNCATED_FRAC = 0.5       # more than half of the completions hit rollout.max_new_tokens
KL_MAX = 1.0               # nats per token, to the reference (kl_ref_mean) or within one update
ENTROPY_DROP = 0.1         # entropy below this share of the first training step's
ENTROPY_MIN = 1e-3         # or below this many nats per token
WARN_EVERY = 20            # steps between two warnings of the same condition


def health_warnings(row: Mapping[str, Any], first: Mapping[str, Any] | None = None
                    ) -> list[str]:
    """Messages of the conditions that hold for one step's metrics `row`, each starting with
    its name from CONDITIONS and a colon. first: the run's first training row (the entropy it
    started from); None: row is the first."""
    def num(r: Mapping[str, Any] | None, key: str) -> float | None:
        v = None if r is None else r.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    out = []
    trunc = num(row, "rollout/truncated_frac")
    if trunc is not None and trunc > TRUNCATED_FRAC:
        out.append(f"truncated: {100 * trunc:.0f}% of the completions hit the length limit "
                   f"(rollout.max_new_tokens), so their rewards judge unfinished answers; raise "
                   f"the limit, or shape it (dapo_overlong, aggregation 'mask_truncated')")
    std, groups = num(row, "rollout/score_std"), num(row, "rollout/groups_equal_frac")
    if std is not None and std == 0.0:
        out.append(f"equal_rewards: every reward of the batch is "
                   f"{num(row, 'rollout/score_mean')}: no advantage, no gradient (the task is "
                   f"too hard or too easy for the policy, or a reward is broken)")
    elif groups is not None and groups >= 1.0:
        out.append("equal_rewards: in every group all samples scored the same: group-relative "
                   "advantages (grpo, dr_grpo, rloo, kimi) are all 0, no gradient")
    for key, what in (("kl_ref_mean", "to the reference"),
                      ("approx_kl_mean", "between the policy before and after one update")):
        kl = num(row, key)
        if kl is not None and (not math.isfinite(kl) or kl > KL_MAX):
            out.append(f"kl_exploding: {key} = {kl:.3g} nats per token {what} (above "
                       f"{KL_MAX}): lower the learning rate, raise the KL coefficient or clip "
                       f"tighter")
            break
    ent, ent0 = num(row, "entropy_mean"), num(first, "entropy_mean")
    if ent is not None and (ent < ENTROPY_MIN or (ent0 is not None and ent < ENTROPY_DROP * ent0)):
        since = f", from {ent0:.3g} at the first step" if ent0 is not None else ""
        out.append(f"entropy_collapse: entropy_mean = {ent:.3g} nats per token{since}: the "
                   f"policy has stopped exploring (raise eps_high (clip-higher), add an entropy "
                   f"bonus, or sample at a higher temperature)")
    return out


class HealthLog:
    """Warns about each condition at most once per `every` steps; the run's first training row
    comes from `rows` (metrics.jsonl so far, on resume) or the first row it sees."""

    def __init__(self, rows: list[Mapping[str, Any]] = (), every: int = WARN_EVERY):
        self.every = every
        self.first = next((r for r in rows if "entropy_mean" in r), None)
        self._last: dict[str, int] = {}

    def __call__(self, step: int, row: Mapping[str, Any]) -> dict[str, float]:
        if self.first is None and "entropy_mean" in row:
            self.first = dict(row)
        fired = {m.split(":", 1)[0]: m for m in health_warnings(row, self.first)}
        for name, msg in fired.items():
            last = self._last.get(name)
            if last is None or step - last >= self.every:
                self._last[name] = step
                log.warning("step %d: %s (warned at most every %d steps; counted as health/%s "
                            "in metrics.jsonl)", step, msg, self.every, name)
        return {f"health/{c}": float(c in fired) for c in CONDITIONS}
