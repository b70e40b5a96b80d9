"""The batch signature every reward shares: RewardInput in, RewardOutput (float32 [N]) out."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rlcot.rewards.pool import ItemFn, RewardPool


@dataclasses.dataclass(frozen=True)
class RewardInput:
    """One batch of N completions with their prompts and source examples.

    `examples[i]` is the dataset example of item i ('answer', 'task', 'tests', 'entry_point',
    'metadata', ...). Items with the same `group_ids` value are samples of one prompt.
    `sequences` (optional): the sampled token rows (rlcot.sampling.TrainerBatch: tokens_NxL,
    positions_NxL, valid_NxL), for rewards that run a model on tokens (reward_model).
    """

    prompts: Sequence[str]
    completions: Sequence[str]
    examples: Sequence[Mapping[str, Any]]
    completion_lengths: np.ndarray | None = None  # int32 [N], in tokens
    group_ids: np.ndarray | None = None  # int32 [N]
    truncated: np.ndarray | None = None  # bool [N]
    sequences: Any = None

    def __post_init__(self):
        n = len(self.completions)
        if len(self.prompts) != n or len(self.examples) != n:
            raise ValueError(f"RewardInput: {len(self.prompts)} prompts, {n} completions and "
                             f"{len(self.examples)} examples; all must be equal")
        for name, dtype in (("completion_lengths", np.int32), ("group_ids", np.int32),
                            ("truncated", np.bool_)):
            arr = getattr(self, name)
            if arr is None:
                continue
            arr = np.asarray(arr)
            if arr.shape != (n,):
                raise ValueError(f"RewardInput.{name} has shape {arr.shape}, expected ({n},)")
            if dtype is not np.bool_ and not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"RewardInput.{name} must be integer, got {arr.dtype}")
            object.__setattr__(self, name, arr.astype(dtype))
        if self.completion_lengths is not None and (self.completion_lengths < 0).any():
            raise ValueError(f"negative completion_lengths: {self.completion_lengths}")

    def __len__(self) -> int:
        return len(self.completions)

    def require(self, field: str, reward: str) -> np.ndarray:
        value = getattr(self, field)
        if value is None:
            raise ValueError(f"reward {reward!r} needs RewardInput.{field}, which is None")
        return value


@dataclasses.dataclass(frozen=True)
class RewardOutput:
    values: np.ndarray  # float32 [N]
    details: list[dict]  # per item, for logging
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)  # e.g. n_timeouts

    def __post_init__(self):
        values = np.asarray(self.values, np.float32)
        if values.ndim != 1 or len(self.details) != values.shape[0]:
            raise ValueError(f"RewardOutput: values shape {values.shape} and "
                             f"{len(self.details)} details do not match")
        if not np.isfinite(values).all():
            raise ValueError(f"RewardOutput has non-finite values at {np.flatnonzero(~np.isfinite(values))}")
        object.__setattr__(self, "values", values)


RewardFn = Callable[..., RewardOutput]  # fn(batch: RewardInput, **params) -> RewardOutput

_INLINE = RewardPool(0)


def map_items(fn: ItemFn, items: Sequence[tuple], *, pool: RewardPool | None, timeout_s: float,
              fallback: float) -> RewardOutput:
    """Runs an item function over the batch on `pool` (inline when None)."""
    res = (pool or _INLINE).map(fn, items, timeout_s=timeout_s, fallback=fallback)
    return RewardOutput(res.values, res.details, {"n_timeouts": float(res.n_timeouts),
                                                  "n_errors": float(res.n_errors),
                                                  "elapsed_s": res.elapsed_s})


def from_values(values: Sequence[float] | np.ndarray, details: list[dict] | None = None,
                **metrics: float) -> RewardOutput:
    values = np.asarray(values, np.float32)
    return RewardOutput(values, details if details is not None else [{} for _ in values], metrics)
