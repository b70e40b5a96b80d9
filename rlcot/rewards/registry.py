"""Reward registry (name -> function) and the weighted combination of a reward spec."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import inspect
import logging
import sys
import time
from typing import Any, Mapping

import numpy as np

from rlcot.rewards import code_exec, judge, language, length, math_answer, models, tasks
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
    "reward_model": models.reward_model,
}

# Parameters the combiner supplies itself: never written in a spec.
_INJECTED = ("pool", "generate", "correct", "scorer", "models")

# Rewards that say whether the answer is right (what DAPO's dynamic sampling filters on).
ACCURACY_REWARDS = ("math_accuracy", "reasoning_gym", "code_tests")

# The reward meant for each dataset task (the `task` field of rlcot's datasets).
TASK_REWARDS: dict[str, str] = {
    "gsm8k": "math_accuracy", "math": "math_accuracy", "aime24": "math_accuracy",
    "amc23": "math_accuracy", "humaneval": "code_tests", "reasoning_gym": "reasoning_gym",
}

# A term whose items fail (raise; not time out) on more than this share of a batch stops the run.
DEFAULT_MAX_ERROR_FRAC = 0.5

log = logging.getLogger(__name__)


class RewardFailure(RuntimeError):
    """A reward failed on too many items of a batch: its zeros would be noise, not signal."""


def reward_for_task(task: str) -> str:
    """The reward name meant for a dataset task (`example["task"]`)."""
    if task not in TASK_REWARDS:
        raise KeyError(f"no reward registered for task {task!r}; known: {sorted(TASK_REWARDS)}")
    return TASK_REWARDS[task]


@dataclasses.dataclass(frozen=True)
class RewardTerm:
    """One weighted component. `accuracy` (rewards that take `correct`): the label of another
    term, or a reward name, whose values >= `correct_threshold` mark an item correct.
    max_error_frac: the run stops (RewardFailure) when more than this share of a batch's items
    raise in the reward (timeouts are the completion's doing and do not count); 1.0 never
    stops. Errors below it are logged (once per term) and the items get the fallback value."""

    label: str
    reward: str
    weight: float
    params: Mapping[str, Any]
    accuracy: str | None = None
    correct_threshold: float = 1.0
    max_error_frac: float = DEFAULT_MAX_ERROR_FRAC

    def __post_init__(self):
        if self.reward not in REWARDS:
            raise ValueError(f"reward term {self.label!r}: unknown reward {self.reward!r}; "
                             f"known: {sorted(REWARDS)}")
        if not np.isfinite(self.weight):
            raise ValueError(f"reward term {self.label!r}: weight must be finite, got {self.weight}")
        if not 0.0 <= self.max_error_frac <= 1.0:
            raise ValueError(f"reward term {self.label!r}: max_error_frac must be in [0, 1], "
                             f"got {self.max_error_frac}")
        sig = inspect.signature(REWARDS[self.reward]).parameters
        bad = sorted(k for k in self.params if k not in sig or k in _INJECTED)
        if bad:
            allowed = sorted(k for k in sig if k != "batch" and k not in _INJECTED)
            raise ValueError(f"reward term {self.label!r} ({self.reward}): unknown parameters "
                             f"{bad}; allowed: {allowed}")
        if ("correct" in sig) != (self.accuracy is not None):
            raise ValueError(f"reward term {self.label!r}: 'accuracy' must be given exactly for "
                             f"rewards that need correctness (kimi_length, cosine_length)")
        required = sorted(k for k, p in sig.items() if k != "batch" and k not in _INJECTED
                          and p.default is inspect.Parameter.empty and k not in self.params)
        if required:
            raise ValueError(f"reward term {self.label!r} ({self.reward}): missing parameters "
                             f"{required}")
        if self.reward == "combination":
            if not isinstance(self.params["terms"], Mapping):
                raise ValueError(f"reward term {self.label!r} (combination): 'terms' must be a "
                                 f"reward spec (label -> weight or term)")
            parse_reward_spec(self.params["terms"])


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
            max_err = float(params.pop("max_error_frac", DEFAULT_MAX_ERROR_FRAC))
            terms.append(RewardTerm(label, reward, weight, params, accuracy, threshold, max_err))
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


def accuracy_label(terms: tuple[RewardTerm, ...]) -> str | None:
    """The label of the spec's accuracy term: its only term with an accuracy reward
    (ACCURACY_REWARDS); None when it has none or several."""
    found = [t.label for t in terms if t.reward in ACCURACY_REWARDS]
    return found[0] if len(found) == 1 else None


def filter_label(terms: tuple[RewardTerm, ...], name: str) -> str:
    """The component dynamic sampling filters groups on: 'accuracy' (the spec's accuracy term),
    'total' (the combined reward) or a term label. Raises with the choices otherwise."""
    labels = [t.label for t in terms]
    if name == "accuracy":
        found = accuracy_label(terms)
        if found is None:
            raise ValueError(
                f"dynamic sampling filters on accuracy, but the reward spec {labels} has "
                f"{'no' if not any(t.reward in ACCURACY_REWARDS for t in terms) else 'several'} "
                f"accuracy terms ({', '.join(ACCURACY_REWARDS)}): set "
                f"rollout.dynamic_sampling_filter to one of {labels} or 'total'")
        return found
    if name != "total" and name not in labels:
        raise ValueError(f"rollout.dynamic_sampling_filter {name!r} is not 'accuracy', 'total' "
                         f"or a reward term label {labels}")
    return name


@dataclasses.dataclass(frozen=True)
class CombinedRewards:
    total: np.ndarray  # float32 [N]: sum of weight * component values
    components: dict[str, RewardOutput]  # by label
    metrics: dict[str, float]  # reward/<label>/mean, .../n_timeouts, ..., reward/total/mean
    accuracy_label: str | None = None  # the accuracy term's label (see `accuracy_label`)

    def filter_values(self, name: str) -> np.ndarray:
        """Values dynamic sampling compares within a group: the total ('total'), the accuracy
        term ('accuracy') or a term by label."""
        if name == "total":
            return self.total
        label = self.accuracy_label if name == "accuracy" else name
        if label is None:
            raise ValueError(f"these rewards have no single accuracy term "
                             f"(labels {sorted(self.components)}): name one, or 'total'")
        if label not in self.components:
            raise KeyError(f"no reward term {label!r}; labels: {sorted(self.components)}")
        return np.asarray(self.components[label].values, np.float32)


class RewardCombiner:
    """Scores a batch with every term of a spec. `submit` scores in a background thread so the
    loop can overlap scoring batch t with generating batch t+1; `pool` runs per-item work.

    With pool=None, per-item rewards run inline: under `__call__` on the main thread they keep
    their SIGALRM time limit, but under `submit` (a background thread) they have none, so
    training should always pass a RewardPool. An ai_judge term calls `judge_generate` from the
    scoring thread: with `submit`, that callable must be safe to call off the main thread.
    """

    def __init__(self, spec: Mapping[str, Any], *, pool: RewardPool | None = None,
                 judge_generate: judge.Generate | None = None,
                 models: Mapping[str, Any] | None = None):
        self.terms = parse_reward_spec(spec)
        self.accuracy_label = accuracy_label(self.terms)
        self._warned: set[str] = set()
        self.pool = pool
        self.judge_generate = judge_generate
        self.models = models  # model source -> scorer / judge (rlcot.rewards.models.load_models)
        for t in self.terms:
            if ("generate" in inspect.signature(REWARDS[t.reward]).parameters
                    and judge_generate is None and not t.params.get("model")):
                raise ValueError(f"reward term {t.label!r} ({t.reward}) needs judge_generate "
                                 f"or a judge model ('model': a model source)")
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
            kwargs["generate"] = (self._model(params["model"]) if params.get("model")
                                  else self.judge_generate)
        if "scorer" in sig:
            kwargs["scorer"] = self._model(params["model"])
        if "models" in sig:
            kwargs["models"] = self.models
        if correct is not None:
            kwargs["correct"] = correct
        return REWARDS[name](batch, **kwargs)

    def _model(self, source: str) -> Any:
        if self.models is None or source not in self.models:
            raise ValueError(f"reward model or judge {source!r} is not loaded: build the "
                             f"combiner with models=rlcot.rewards.models.load_models(spec, ...)")
        return self.models[source]

    def __call__(self, batch: RewardInput) -> CombinedRewards:
        components: dict[str, RewardOutput] = {}
        metrics: dict[str, float] = {}
        # Terms that need correctness go last, reusing their accuracy term's values.
        for t in sorted(self.terms, key=lambda t: t.accuracy is not None):
            t0 = time.monotonic()
            correct = None
            if t.accuracy is not None:
                if t.accuracy in components:
                    acc = components[t.accuracy]
                else:
                    acc = self._call(t.accuracy, batch, {})
                    self._check_errors(t.accuracy, t.accuracy, acc, len(batch),
                                       DEFAULT_MAX_ERROR_FRAC)
                correct = acc.values >= t.correct_threshold
            out = self._call(t.reward, batch, t.params, correct)
            self._check_errors(t.label, t.reward, out, len(batch), t.max_error_frac)
            components[t.label] = out
            metrics[f"reward/{t.label}/mean"] = float(out.values.mean()) if len(batch) else 0.0
            metrics[f"reward/{t.label}/time_s"] = time.monotonic() - t0
            for k, v in out.metrics.items():
                metrics[f"reward/{t.label}/{k}"] = float(v)
        total = np.zeros(len(batch), np.float32)
        for t in self.terms:
            total += np.float32(t.weight) * components[t.label].values
        metrics["reward/total/mean"] = float(total.mean()) if len(batch) else 0.0
        return CombinedRewards(total, {t.label: components[t.label] for t in self.terms}, metrics,
                               accuracy_label=self.accuracy_label)

    def _check_errors(self, label: str, reward: str, out: RewardOutput, n: int,
                      max_frac: float) -> None:
        """Loud failure instead of silent zeros: raise past `max_frac` of the batch, else log
        the first error of each term once."""
        n_err = int(out.metrics.get("n_errors", 0))
        if not n_err:
            return
        first = next((d.get("message", "") for d in out.details if d.get("status") == "error"),
                     "")
        what = (f"reward term {label!r} ({reward}) failed on {n_err} of {n} items; first "
                f"error:\n{first}")
        if n_err > max_frac * n:
            raise RewardFailure(f"{what}\n(more than max_error_frac={max_frac} of the batch: its "
                                f"fallback values would silently replace the reward)")
        if label not in self._warned:
            self._warned.add(label)
            log.warning("%s (items get the fallback value; logged once per term)", what)

    def submit(self, batch: RewardInput) -> concurrent.futures.Future[CombinedRewards]:
        return self._executor.submit(self, batch)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def combination(batch: RewardInput, *, terms: Mapping[str, Any], pool: RewardPool | None = None,
                models: Mapping[str, Any] | None = None) -> RewardOutput:
    """The weighted sum of a nested reward spec `terms`, as one term: e.g. the true preference
    of a study, logged at weight 0 beside the learned reward being optimised. Metrics: the
    nested terms' own (reward/LABEL/INNER/mean, ...). Range: the weighted sum of the nested
    terms' ranges."""
    inner = RewardCombiner(terms, pool=pool, models=models)
    try:
        out = inner(batch)
    finally:
        inner.close()
    metrics = {k[len("reward/"):]: v for k, v in out.metrics.items()
               if not k.endswith("/time_s") and k != "reward/total/mean"}
    return RewardOutput(out.total, [{} for _ in range(len(batch))], metrics)


REWARDS["combination"] = combination


# ---- what the rewards read from examples (checked against datasets before compute) ------

def reward_needs(rewards: Mapping[str, Any]) -> list[tuple[str, str, tuple[tuple[str, ...], ...]]]:
    """(label, reward, alternatives) per reward term that reads example fields: each example
    must have every field of at least one alternative."""
    out = []
    for t in parse_reward_spec(rewards):
        alts = _fields_read(t.reward, t.params)
        if not alts and t.accuracy in REWARDS:  # correctness judged by a reward of its own
            alts = _fields_read(t.accuracy, {})
        if alts:
            out.append((t.label, t.reward, alts))
    return out


def _fields_read(reward: str, params: Mapping[str, Any]) -> tuple[tuple[str, ...], ...]:
    if reward == "math_accuracy":
        return ((params.get("answer_key", "answer"),),)
    if reward == "code_tests":
        return (("tests",), ("test", "entry_point"))
    return ()


def required_fields(rewards: Mapping[str, Any]) -> tuple[str, ...]:
    """Fields every row must have, non-empty, for the rewards to judge it (a row with an empty
    gold answer can never be scored right): the data pipeline skips rows without them."""
    return tuple(dict.fromkeys(alts[0][0] for _, _, alts in reward_needs(rewards)
                               if len(alts) == 1 and len(alts[0]) == 1))
