"""The update step's batch, and what the loop computes between rollout and update.

Layout: N rows (prompt-major, row b * G + g is sample g of prompt b) of one sequence each,
prompt + completion, length L, as `sampling.outputs.TrainerBatch`. Every per-token array is
aligned with the tokens: entry t belongs to token t (its log-prob given tokens < t, its
advantage, its value V(state before t)); see rl.logprobs. `loss_mask_NxL` marks the completion
tokens, i.e. the actions. Optional fields are None when unused.

Between rollout and update the loop calls, in order: the old-policy (and reference, and value)
forward passes (rl.logprobs.make_logprob_fn, rl.value.make_value_fn), `reward_kl` when the KL
sits in the reward, `compute_advantages`, then `make_update_batch` (the last three as one
compiled program: `make_prepare_fn`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rlcot.rl.advantages import AdvantageConfig
from rlcot.rl.kl import KLConfig, kl_in_sequence_rewards, kl_in_token_rewards


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class UpdateBatch:
    """Everything the update step reads; all [N, L] (truncated_N: [N])."""
    tokens_NxL: jax.Array
    positions_NxL: jax.Array
    valid_NxL: jax.Array
    loss_mask_NxL: jax.Array
    adv_NxL: jax.Array
    logp_old_NxL: jax.Array
    logp_ref_NxL: jax.Array | None = None       # KL in the loss, or KL metrics / adaptive coef
    logp_sampler_NxL: jax.Array | None = None   # TIS: the behaviour policy's log-probs
    truncated_N: jax.Array | None = None        # masked out when aggregation.mask_truncated
    values_old_NxL: jax.Array | None = None     # value model: clipped value loss
    returns_NxL: jax.Array | None = None        # value model: regression targets

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tokens_NxL.shape)


def make_update_batch(trainer_batch, adv_NxL: jax.Array, logp_old_NxL: jax.Array, *,
                      logp_ref_NxL: jax.Array | None = None, use_sampler_logp: bool = False,
                      truncated_N: jax.Array | None = None,
                      values_old_NxL: jax.Array | None = None,
                      returns_NxL: jax.Array | None = None) -> UpdateBatch:
    """UpdateBatch from a `sampling.outputs.TrainerBatch` and what the loop computed.
    use_sampler_logp: carry the sampler's behaviour log-probs (`sample_logp_NxL`) for TIS."""
    tb = trainer_batch
    shape = tuple(tb.tokens_NxL.shape)
    for name, x in (("adv", adv_NxL), ("logp_old", logp_old_NxL), ("logp_ref", logp_ref_NxL),
                    ("values_old", values_old_NxL), ("returns", returns_NxL)):
        if x is not None and tuple(x.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, tokens have {shape}")
    return UpdateBatch(
        tokens_NxL=tb.tokens_NxL, positions_NxL=tb.positions_NxL, valid_NxL=tb.valid_NxL,
        loss_mask_NxL=tb.completion_mask_NxL.astype(jnp.float32), adv_NxL=adv_NxL,
        logp_old_NxL=logp_old_NxL, logp_ref_NxL=logp_ref_NxL,
        logp_sampler_NxL=tb.sample_logp_NxL if use_sampler_logp else None,
        truncated_N=truncated_N, values_old_NxL=values_old_NxL, returns_NxL=returns_NxL)


def reward_kl(kl: KLConfig, logp_old_NxL: jax.Array, logp_ref_NxL: jax.Array,
              mask_NxL: jax.Array) -> jax.Array:
    """Per-token KL estimate of the sampling policy to the reference (0 off the mask), for
    the KL-in-reward placement; pass it to `compute_advantages` with the current coefficient
    (the train state's `kl_coef`)."""
    return kl.estimate(logp_old_NxL, logp_ref_NxL) * mask_NxL.astype(jnp.float32)


def compute_advantages(adv: AdvantageConfig, score_N: jax.Array, mask_NxL: jax.Array, *,
                       group_size: int, values_NxL: jax.Array | None = None,
                       kl_NxL: jax.Array | None = None, kl_coef: jax.Array | float = 0.0,
                       row_valid_N: jax.Array | None = None
                       ) -> tuple[jax.Array, jax.Array | None]:
    """(adv_NxL, returns_NxL or None) from sequence scores.

    Outcome estimators (GRPO, RLOO, ...): the KL (if given) is subtracted from each sequence's
    score, `score - coef * sum_t kl`; the estimator runs over groups of `group_size` rows and
    each row's advantage is put on its completion tokens. Token estimators (GAE, token
    REINFORCE++): the score is placed on each row's last completion token and `-coef * kl_t`
    on every completion token; GAE needs `values_NxL` (rl.value) and gives returns for the
    value loss. row_valid_N: rows that take part (e.g. not padding added by dynamic sampling).
    """
    N, L = mask_NxL.shape
    if score_N.shape != (N,):
        raise ValueError(f"scores have shape {score_N.shape}, expected ({N},) for mask {mask_NxL.shape}")
    m = mask_NxL.astype(jnp.float32)
    if row_valid_N is not None:
        m = m * row_valid_N.astype(jnp.float32)[:, None]
    kl_NxL = jnp.zeros_like(m) if kl_NxL is None else kl_NxL
    score_N = score_N.astype(jnp.float32)
    if not adv.token_level:
        if N % group_size:
            raise ValueError(f"{N} rows do not split into groups of {group_size}")
        seq_N = kl_in_sequence_rewards(score_N, kl_NxL, m, kl_coef)
        valid_BxG = None if row_valid_N is None else row_valid_N.reshape(-1, group_size)
        extra = {"lengths_BxG": m.sum(-1).reshape(-1, group_size)} if adv.needs_lengths else {}
        adv_BxG = adv.fn(seq_N.reshape(-1, group_size), mask_BxG=valid_BxG, **extra,
                         **adv.knobs())
        return adv_BxG.reshape(N)[:, None] * m, None
    rewards_NxL = kl_in_token_rewards(score_N, kl_NxL, m, kl_coef)
    if adv.estimator == "gae":
        if values_NxL is None:
            raise ValueError("GAE needs values_NxL from the value model")
        return adv.fn(rewards_NxL, values_NxL * m, m, **adv.knobs())
    return adv.fn(rewards_NxL, m, **adv.knobs())


def make_prepare_fn(adv: AdvantageConfig, kl: KLConfig, *, group_size: int,
                    use_sampler_logp: bool):
    """One compiled program from a rollout's rows and the forward passes' outputs to the
    UpdateBatch: `reward_kl` (when the KL sits in the reward), `compute_advantages` and
    `make_update_batch`, in that order, as the loop calls them. Returns
    prepare(trainer_batch, score_N, row_valid_N, truncated_N, logp_old_NxL, logp_ref_NxL,
    values_NxL, kl_coef) -> UpdateBatch (None for what is unused). One program instead of a
    few dozen eager ones on arrays sharded over the mesh (see rlcot.distributed.settle)."""

    def prepare(tb, score_N, row_valid_N, truncated_N, logp_old_NxL, logp_ref_NxL, values_NxL,
                kl_coef):
        kl_NxL = (reward_kl(kl, logp_old_NxL, logp_ref_NxL, tb.completion_mask_NxL)
                  if kl.placement == "reward" else None)
        adv_NxL, returns_NxL = compute_advantages(
            adv, score_N, tb.completion_mask_NxL, group_size=group_size, values_NxL=values_NxL,
            kl_NxL=kl_NxL, kl_coef=kl_coef, row_valid_N=row_valid_N)
        return make_update_batch(tb, adv_NxL, logp_old_NxL, logp_ref_NxL=logp_ref_NxL,
                                 use_sampler_logp=use_sampler_logp, truncated_N=truncated_N,
                                 values_old_NxL=values_NxL, returns_NxL=returns_NxL)

    return jax.jit(prepare)
