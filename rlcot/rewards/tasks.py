"""Procedural tasks (countdown, basic_arithmetic, chain_sum, ...) scored by reasoning-gym itself."""

from __future__ import annotations

import functools

from rlcot.rewards.base import RewardInput, RewardOutput, map_items
from rlcot.rewards.math_answer import _last_tag
from rlcot.rewards.pool import RewardPool

WORKER_PRELOAD = ("reasoning_gym",)


@functools.lru_cache(maxsize=None)
def _scorer(task: str):
    import reasoning_gym  # lazy: ~1 s to import

    return reasoning_gym.get_score_answer_fn(task)


def task_name(example) -> str:
    name = example.get("task") or (example.get("metadata") or {}).get("source_dataset")
    if not name:
        raise KeyError(f"reasoning-gym example has neither 'task' nor metadata.source_dataset: "
                       f"{sorted(example)}")
    return name


def score_item(completion: str, example: dict, task: str, extract: str) -> tuple[float, dict]:
    answer = _last_tag(completion, "answer") if extract == "answer_tag" else completion
    answer = answer.strip() if answer is not None else None
    score = float(_scorer(task)(answer, example))
    return min(max(score, 0.0), 1.0), {"task": task, "answer": None if answer is None else answer[:200]}


def reasoning_gym_score(batch: RewardInput, *, pool: RewardPool | None = None,
                        extract: str = "answer_tag", timeout_s: float = 10.0,
                        fallback: float = 0.0) -> RewardOutput:
    """reasoning-gym's own `score_answer` for the example's task (example['task'] or
    metadata.source_dataset), on the last `<answer>` block (`extract='answer_tag'`) or the whole
    completion (`'raw'`). Range [0, 1]; some tasks give partial credit (countdown: 0.01 for no
    answer, 0.05 for a wrong one)."""
    if extract not in ("answer_tag", "raw"):
        raise ValueError(f"reasoning_gym_score: extract must be 'answer_tag' or 'raw', got {extract!r}")
    items = []
    for c, ex in zip(batch.completions, batch.examples):
        # Plain dicts pickle cheaply to workers; reasoning-gym reads 'answer' and 'metadata'.
        items.append((c, {k: ex[k] for k in ("question", "answer", "metadata") if k in ex},
                      task_name(ex), extract))
    return map_items(score_item, items, pool=pool, timeout_s=timeout_s, fallback=fallback)
