"""Loss aggregation as a weighted sum with weights fixed over the whole (mini)batch.

Every mode is written as `loss = sum_{b,t} loss_BxT * w_BxT`, where `w_BxT` is computed once
from the mask of the whole minibatch *before* it is split into micro-batches. The loss (and so
the gradient) of the minibatch is then exactly the sum of the micro-batch losses, in every mode:
normalising inside each micro-batch instead (the usual accumulation bug) gives a different
number whenever micro-batches differ in token or sequence counts.

Modes (n = number of rows with at least one valid token, len_b = valid tokens of row b,
T_max = the completion budget, i.e. rollout.max_new_tokens):
  token_mean           w = mask / sum(mask)              (DAPO; all tokens count equally)
  seq_mean_token_mean  w = mask / (len_b * n)            (GRPO paper; each sequence counts equally)
  seq_mean_token_sum   w = mask / n                      (sum over tokens, mean over sequences)
  constant             w = mask / (n * T_max)            (Dr.GRPO; verl's seq-mean-token-sum-norm)
                       w = mask / C with `constant=C`    (any fixed number, e.g. TRL's rows x T_max)

Dr.GRPO's normaliser is tied to the completion budget, never to the padded batch: it does not
change with the prompt bucket, with how many tokens the longest completion happened to have, or
with rows that dynamic sampling (or `mask_truncated`) emptied. Rows without a valid token are not
counted, as in verl's `seq-mean-token-sum-norm` (loss_scale_factor = the response length budget);
TRL's `dr_grpo` divides by all rows x max_completion_length, which is the same number unless a
row is empty (TRL has no masked-out rows). The budget must be given (`max_tokens`); the RL loop
fills it from `rollout.max_new_tokens` (`rlcot.rollout.align_learner`).

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


def constant_weights(mask_BxT: jax.Array, *, constant: float | None = None,
                     max_tokens: int | None = None) -> jax.Array:
    """Dr.GRPO: sum over valid tokens divided by a number that does not depend on lengths.

    max_tokens (the completion budget): `n * max_tokens`, n the rows with a valid token (verl's
    seq-mean-token-sum-norm). constant: that fixed number. Exactly one must be given."""
    m = _as_float(mask_BxT)
    if (constant is None) == (max_tokens is None):
        raise ValueError("aggregation 'constant' (Dr.GRPO) needs exactly one of max_tokens (the "
                         "completion budget, rollout.max_new_tokens) or constant, got "
                         f"max_tokens={max_tokens}, constant={constant}")
    if constant is not None:
        if not constant > 0:
            raise ValueError(f"constant normaliser must be > 0, got {constant}")
        return m / float(constant)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
    if not isinstance(m, jax.core.Tracer) and m.size and max_tokens < float(m.sum(-1).max()):
        raise ValueError(f"max_tokens={max_tokens} is below the longest row's "
                         f"{int(m.sum(-1).max())} valid tokens: it must be the completion budget")
    return m / (_n_seqs(m) * float(max_tokens))


AGGREGATIONS: dict[str, Callable[..., jax.Array]] = {
    "token_mean": token_mean_weights,
    "seq_mean_token_mean": seq_mean_token_mean_weights,
    "seq_mean_token_sum": seq_mean_token_sum_weights,
    "constant": constant_weights,
}


def aggregation_weights(mask_BxT: jax.Array, mode: str, *, constant: float | None = None,
                        max_tokens: int | None = None) -> jax.Array:
    """Per-token weights `w_BxT` for the whole minibatch; see the module docstring."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose from {sorted(AGGREGATIONS)}")
    if mode == "constant":
        return constant_weights(mask_BxT, constant=constant, max_tokens=max_tokens)
    if constant is not None or max_tokens is not None:
        raise ValueError(f"constant={constant} / max_tokens={max_tokens} are only used by mode "
                         f"'constant', not {mode!r}")
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
    """mode: see the module docstring. For 'constant' (Dr.GRPO) give `max_tokens` (the completion
    budget; the RL loop sets it to rollout.max_new_tokens when left None) or a fixed `constant`.
    mask_truncated: completions cut at the length limit give no gradient (DAPO's overlong
    filtering)."""
    mode: str = "token_mean"
    constant: float | None = None
    max_tokens: int | None = None
    mask_truncated: bool = False

    def __post_init__(self):
        if self.mode not in AGGREGATIONS:
            raise ValueError(f"unknown loss aggregation {self.mode!r}; "
                             f"choose from {sorted(AGGREGATIONS)}")
        if self.constant is not None and (self.mode != "constant" or not self.constant > 0):
            raise ValueError(f"constant={self.constant} needs mode 'constant' and a value > 0 "
                             f"(mode is {self.mode!r})")
        if self.max_tokens is not None:
            if self.mode != "constant":
                raise ValueError(f"max_tokens={self.max_tokens} needs mode 'constant' "
                                 f"(mode is {self.mode!r})")
            if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) \
                    or self.max_tokens < 1:
                raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
            if self.constant is not None:
                raise ValueError(f"give max_tokens ({self.max_tokens}) or constant "
                                 f"({self.constant}) for mode 'constant', not both")

    def weights(self, mask_BxT: jax.Array) -> jax.Array:
        return aggregation_weights(mask_BxT, self.mode, constant=self.constant,
                                   max_tokens=self.max_tokens)
