"""Procedural tasks (countdown, basic_arithmetic, chain_sum, ...) scored by reasoning-gym itself."""

from __future__ import annotations

import functools
import json

from rlcot.rewards.base import RewardInput, RewardOutput, map_items
from rlcot.rewards.math_answer import _last_tag
from rlcot.rewards.pool import RewardPool

WORKER_PRELOAD = ("reasoning_gym",)


@functools.lru_cache(maxsize=None)
def _scorer(task: str):
    import reasoning_gym  # lazy: ~1 s to import

    return reasoning_gym.get_score_answer_fn(task)


# The `task` field rlcot's reasoning-gym datasets carry for every generator (the generator's
# own name is in `rg_task`).
GENERIC_TASK = "reasoning_gym"


def task_name(example) -> str:
    """The reasoning-gym generator of an example: `rg_task` (rlcot's datasets), else `task`
    unless it is the generic "reasoning_gym", else metadata's `source_dataset` (reasoning-gym's
    own entries)."""
    name = example.get("rg_task")
    if not name and example.get("task") != GENERIC_TASK:
        name = example.get("task")
    if not name:
        name = rg_metadata(example).get("source_dataset")
    if not name:
        raise KeyError(f"reasoning-gym example has none of 'rg_task', 'task' or "
                       f"metadata.source_dataset: {sorted(example)}")
    return name


def rg_metadata(example) -> dict:
    """The entry's metadata: `metadata` (a dict) or `metadata_json` (rlcot's datasets)."""
    meta = example.get("metadata")
    if meta is None and example.get("metadata_json") is not None:
        meta = json.loads(example["metadata_json"])
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise TypeError(f"reasoning-gym metadata must be a dict, got {type(meta).__name__}")
    return meta


def rg_entry(example) -> dict:
    """The plain entry reasoning-gym's scorers read ('question', 'answer', 'metadata'); an empty
    answer string (rlcot's datasets store None as '') becomes None again."""
    answer = example.get("answer")
    return {"question": example.get("question", ""), "answer": answer if answer != "" else None,
            "metadata": rg_metadata(example)}


def score_item(completion: str, example: dict, task: str, extract: str) -> tuple[float, dict]:
    answer = _last_tag(completion, "answer") if extract == "answer_tag" else completion
    answer = answer.strip() if answer is not None else None
    score = float(_scorer(task)(answer, example))
    return min(max(score, 0.0), 1.0), {"task": task, "answer": None if answer is None else answer[:200]}


def reasoning_gym_score(batch: RewardInput, *, pool: RewardPool | None = None,
                        extract: str = "answer_tag", timeout_s: float = 10.0,
                        fallback: float = 0.0) -> RewardOutput:
    """reasoning-gym's own `score_answer` for the example's task (`task_name`: rg_task, task or
    metadata.source_dataset; metadata from `metadata` or `metadata_json`), on the last `<answer>` block (`extract='answer_tag'`) or the whole
    completion (`'raw'`). Range [0, 1]; some tasks give partial credit (countdown: 0.01 for no
    answer, 0.05 for a wrong one)."""
    if extract not in ("answer_tag", "raw"):
        raise ValueError(f"reasoning_gym_score: extract must be 'answer_tag' or 'raw', got {extract!r}")
    # Plain dicts pickle cheaply to workers.
    items = [(c, rg_entry(ex), task_name(ex), extract)
             for c, ex in zip(batch.completions, batch.examples)]
    return map_items(score_item, items, pool=pool, timeout_s=timeout_s, fallback=fallback)
