"""Reward registry (name -> function) and the weighted combination of a reward spec."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import inspect
import sys
import time
from typing import Any, Mapping

import numpy as np

from rlcot.rewards import code_exec, judge, language, length, math_answer, tasks
from rlcot.rewards import format as format_rewards
from rlcot.rewards.base import RewardFn, RewardInput, RewardOutput
from rlcot.rewards.pool import RewardPool

REWARDS: dict[str, RewardFn] = {
    "math_accuracy": math_answer.math_accuracy,
    "r1_format": format_rewards.r1_format,
    "r1_tag_count": format_rewards.r1_tag_count,
    "reasoning_gym": tasks.reasoning_gym_score,
    "code_tests": code_exec.code_tests,
    "language_consistency": language.language_consistency,
    "kimi_length": length.kimi_length,
    "dapo_overlong": length.dapo_overlong,
    "cosine_length": length.cosine_length,
    "repetition_penalty": length.repetition_penalty,
    "ai_judge": judge.ai_judge,
}

# Parameters the combiner supplies itself: never written in a spec.
_INJECTED = ("pool", "generate", "correct")


@dataclasses.dataclass(frozen=True)
class RewardTerm:
    """One weighted component. `accuracy` (rewards that take `correct`): the label of another
    term, or a reward name, whose values >= `correct_threshold` mark an item correct."""

    label: str
    reward: str
    weight: float
    params: Mapping[str, Any]
    accuracy: str | None = None
    correct_threshold: float = 1.0

    def __post_init__(self):
        if self.reward not in REWARDS:
            raise ValueError(f"reward term {self.label!r}: unknown reward {self.reward!r}; "
                             f"known: {sorted(REWARDS)}")
        if not np.isfinite(self.weight):
            raise ValueError(f"reward term {self.label!r}: weight must be finite, got {self.weight}")
        sig = inspect.signature(REWARDS[self.reward]).parameters
        bad = sorted(k for k in self.params if k not in sig or k in _INJECTED)
        if bad:
            allowed = sorted(k for k in sig if k != "batch" and k not in _INJECTED)
            raise ValueError(f"reward term {self.label!r} ({self.reward}): unknown parameters "
                             f"{bad}; allowed: {allowed}")
        if ("correct" in sig) != (self.accuracy is not None):
            raise ValueError(f"reward term {self.label!r}: 'accuracy' must be given exactly for "
                             f"rewards that need correctness (kimi_length, cosine_length)")


def parse_reward_spec(spec: Mapping[str, float | Mapping[str, Any]]) -> tuple[RewardTerm, ...]:
    """{"math_accuracy": 1.0, "fmt": {"reward": "r1_format", "weight": 0.5, "mode": "soft"},
    "len": {"reward": "kimi_length", "weight": 0.1, "accuracy": "math_accuracy"}}: a label maps
    to a weight, or to a dict of weight, reward name (default: the label) and parameters."""
    if not spec:
        raise ValueError("reward spec is empty")
    terms = []
    for label, entry in spec.items():
        if isinstance(entry, Mapping):
            params = dict(entry)
            reward = params.pop("reward", label)
            weight = float(params.pop("weight", 1.0))
            accuracy = params.pop("accuracy", None)
            threshold = float(params.pop("correct_threshold", 1.0))
            terms.append(RewardTerm(label, reward, weight, params, accuracy, threshold))
        else:
            terms.append(RewardTerm(label, label, float(entry), {}))
    labels = {t.label for t in terms}
    for t in terms:
        if t.accuracy is not None and t.accuracy not in labels and t.accuracy not in REWARDS:
            raise ValueError(f"reward term {t.label!r}: accuracy {t.accuracy!r} is neither a "
                             f"label of this spec {sorted(labels)} nor a reward name")
        if t.accuracy is not None and t.accuracy in labels:
            dep = next(u for u in terms if u.label == t.accuracy)
            if dep.accuracy is not None:
                raise ValueError(f"reward term {t.label!r}: its accuracy term {dep.label!r} "
                                 f"needs correctness itself")
    return tuple(terms)


@dataclasses.dataclass(frozen=True)
class CombinedRewards:
    total: np.ndarray  # float32 [N]: sum of weight * component values
    components: dict[str, RewardOutput]  # by label
    metrics: dict[str, float]  # reward/<label>/mean, .../n_timeouts, ..., reward/total/mean


class RewardCombiner:
    """Scores a batch with every term of a spec. `submit` scores in a background thread so the
    loop can overlap scoring batch t with generating batch t+1; `pool` runs per-item work.

    With pool=None, per-item rewards run inline: under `__call__` on the main thread they keep
    their SIGALRM time limit, but under `submit` (a background thread) they have none, so
    training should always pass a RewardPool. An ai_judge term calls `judge_generate` from the
    scoring thread: with `submit`, that callable must be safe to call off the main thread.
    """

    def __init__(self, spec: Mapping[str, Any], *, pool: RewardPool | None = None,
                 judge_generate: judge.Generate | None = None):
        self.terms = parse_reward_spec(spec)
        self.pool = pool
        self.judge_generate = judge_generate
        for t in self.terms:
            if "generate" in inspect.signature(REWARDS[t.reward]).parameters and judge_generate is None:
                raise ValueError(f"reward term {t.label!r} ({t.reward}) needs judge_generate")
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rewards")

    def worker_preload(self) -> tuple[str, ...]:
        """Modules worth importing in pool workers before the first item (RewardPool(preload=))."""
        mods = []
        for t in self.terms:
            if "pool" not in inspect.signature(REWARDS[t.reward]).parameters:
                continue
            module = REWARDS[t.reward].__module__
            mods += [module, *getattr(sys.modules[module], "WORKER_PRELOAD", ())]
        return tuple(dict.fromkeys(mods))

    def _call(self, name: str, batch: RewardInput, params: Mapping[str, Any],
              correct: np.ndarray | None = None) -> RewardOutput:
        kwargs = dict(params)
        sig = inspect.signature(REWARDS[name]).parameters
        if "pool" in sig:
            kwargs["pool"] = self.pool
        if "generate" in sig:
            kwargs["generate"] = self.judge_generate
        if correct is not None:
            kwargs["correct"] = correct
        return REWARDS[name](batch, **kwargs)

    def __call__(self, batch: RewardInput) -> CombinedRewards:
        components: dict[str, RewardOutput] = {}
        metrics: dict[str, float] = {}
        # Terms that need correctness go last, reusing their accuracy term's values.
        for t in sorted(self.terms, key=lambda t: t.accuracy is not None):
            t0 = time.monotonic()
            correct = None
            if t.accuracy is not None:
                acc = (components[t.accuracy] if t.accuracy in components
                       else self._call(t.accuracy, batch, {}))
                correct = acc.values >= t.correct_threshold
            out = self._call(t.reward, batch, t.params, correct)
            components[t.label] = out
            metrics[f"reward/{t.label}/mean"] = float(out.values.mean()) if len(batch) else 0.0
            metrics[f"reward/{t.label}/time_s"] = time.monotonic() - t0
            for k, v in out.metrics.items():
                metrics[f"reward/{t.label}/{k}"] = float(v)
        total = np.zeros(len(batch), np.float32)
        for t in self.terms:
            total += np.float32(t.weight) * components[t.label].values
        metrics["reward/total/mean"] = float(total.mean()) if len(batch) else 0.0
        return CombinedRewards(total, {t.label: components[t.label] for t in self.terms}, metrics)

    def submit(self, batch: RewardInput) -> concurrent.futures.Future[CombinedRewards]:
        return self._executor.submit(self, batch)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
