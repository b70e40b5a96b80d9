"""Loss aggregation as a weighted sum with weights fixed over the whole (mini)batch.

Every mode is written as `loss = sum_{b,t} loss_BxT * w_BxT`, where `w_BxT` is computed once
from the mask of the whole minibatch *before* it is split into micro-batches. The loss (and so
the gradient) of the minibatch is then exactly the sum of the micro-batch losses, in every mode:
normalising inside each micro-batch instead (the usual accumulation bug) gives a different
number whenever micro-batches differ in token or sequence counts.

Modes (n = number of sequences with at least one valid token, len_b = valid tokens of row b):
  token_mean           w = mask / sum(mask)              (DAPO; all tokens count equally)
  seq_mean_token_mean  w = mask / (len_b * n)            (GRPO paper; each sequence counts equally)
  seq_mean_token_sum   w = mask / n                      (sum over tokens, mean over sequences)
  constant             w = mask / C, C = rows * T unless given (Dr.GRPO: G * max_tokens per group)

Sequence-level losses (GSPO, Kimi) put their per-sequence value on every valid token; with
seq_mean_token_mean that gives exactly the mean over sequences of the paper's objective.
Micro-batches must split the batch by rows (never inside a sequence).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp


def _as_float(mask_BxT: jax.Array) -> jax.Array:
    if mask_BxT.ndim != 2:
        raise ValueError(f"mask must be [B, T], got shape {mask_BxT.shape}")
    return mask_BxT.astype(jnp.float32) if not jnp.issubdtype(mask_BxT.dtype, jnp.floating) \
        else mask_BxT


def _n_seqs(m_BxT: jax.Array) -> jax.Array:
    return jnp.maximum((m_BxT.sum(-1) > 0).sum(), 1).astype(m_BxT.dtype)


def token_mean_weights(mask_BxT: jax.Array) -> jax.Array:
    m = _as_float(mask_BxT)
    return m / jnp.maximum(m.sum(), 1)


def seq_mean_token_mean_weights(mask_BxT: jax.Array) -> jax.Array:
    m = _as_float(mask_BxT)
    len_Bx1 = m.sum(-1, keepdims=True)
    return m / jnp.maximum(len_Bx1, 1) / _n_seqs(m)


def seq_mean_token_sum_weights(mask_BxT: jax.Array) -> jax.Array:
    m = _as_float(mask_BxT)
    return m / _n_seqs(m)


def constant_weights(mask_BxT: jax.Array, *, constant: float | None = None) -> jax.Array:
    """Dr.GRPO: sum over valid tokens divided by a constant that does not depend on the mask.
    Default `rows * T` of the minibatch: `G * max_tokens` per group, averaged over prompts."""
    m = _as_float(mask_BxT)
    c = float(m.shape[0] * m.shape[1]) if constant is None else float(constant)
    if not c > 0:
        raise ValueError(f"constant normaliser must be > 0, got {c}")
    return m / c


AGGREGATIONS: dict[str, Callable[..., jax.Array]] = {
    "token_mean": token_mean_weights,
    "seq_mean_token_mean": seq_mean_token_mean_weights,
    "seq_mean_token_sum": seq_mean_token_sum_weights,
    "constant": constant_weights,
}


def aggregation_weights(mask_BxT: jax.Array, mode: str, *,
                        constant: float | None = None) -> jax.Array:
    """Per-token weights `w_BxT` for the whole minibatch; see the module docstring."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose from {sorted(AGGREGATIONS)}")
    if mode == "constant":
        return constant_weights(mask_BxT, constant=constant)
    if constant is not None:
        raise ValueError(f"constant={constant} is only used by mode 'constant', not {mode!r}")
    return AGGREGATIONS[mode](mask_BxT)


def aggregate(loss_BxT: jax.Array, w_BxT: jax.Array) -> jax.Array:
    """`sum(loss * w)`; tokens with weight 0 contribute exactly 0 even if their loss is not
    finite (padding positions may hold garbage log-probs)."""
    if loss_BxT.shape != w_BxT.shape:
        raise ValueError(f"loss shape {loss_BxT.shape} != weights shape {w_BxT.shape}")
    return jnp.sum(jnp.where(w_BxT != 0, loss_BxT * w_BxT, 0.0))


def mask_truncated(mask_BxT: jax.Array, truncated_B: jax.Array) -> jax.Array:
    """Zero the loss mask of completions cut off at the length limit (no EOS), so they give no
    gradient instead of a misleading zero-reward one. Apply before computing weights."""
    if truncated_B.shape != mask_BxT.shape[:1]:
        raise ValueError(f"truncated shape {truncated_B.shape} != rows {mask_BxT.shape[:1]}")
    return jnp.where(truncated_B[:, None].astype(bool), jnp.zeros_like(mask_BxT), mask_BxT)


@dataclasses.dataclass(frozen=True)
class AggregationConfig:
    mode: str = "token_mean"
    constant: float | None = None
    mask_truncated: bool = False

    def __post_init__(self):
        if self.mode not in AGGREGATIONS:
            raise ValueError(f"unknown loss aggregation {self.mode!r}; "
                             f"choose from {sorted(AGGREGATIONS)}")
        if self.constant is not None and (self.mode != "constant" or not self.constant > 0):
            raise ValueError(f"constant={self.constant} needs mode 'constant' and a value > 0 "
                             f"(mode is {self.mode!r})")

    def weights(self, mask_BxT: jax.Array) -> jax.Array:
        return aggregation_weights(mask_BxT, self.mode, constant=self.constant)
