"""Logit filters (top-k, top-p, min-p) and the per-row token draw, as small pure functions.

Filters take float32 logits [N, V] and return them with the removed tokens at -inf. Ties at a
filter's threshold are kept (all tokens whose logit equals the k-th largest survive top-k), so a
filter never removes one of two equally likely tokens and keeps the other.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlcot.sampling.spec import SamplingSpec

_NEG_INF = -jnp.inf


def top_k_filter(logits_NxV: jax.Array, k: int) -> jax.Array:
    """Keeps the k most likely tokens of each row."""
    if k <= 0 or k >= logits_NxV.shape[-1]:
        return logits_NxV
    kth_Nx1 = jax.lax.top_k(logits_NxV, k)[0][:, -1:]
    return jnp.where(logits_NxV >= kth_Nx1, logits_NxV, _NEG_INF)


def top_p_filter(logits_NxV: jax.Array, p: float, top_k: int = 0) -> jax.Array:
    """Keeps the most likely tokens of each row until their mass reaches p (nucleus sampling).

    A token is kept when the mass of the tokens more likely than it is below p, so the kept
    set is the smallest prefix of the sorted distribution with mass >= p. With top_k > 0 the
    logits are assumed already top-k filtered and only the k largest are sorted (cheaper than a
    full sort over the vocabulary).
    """
    if p >= 1.0:
        return logits_NxV
    V = logits_NxV.shape[-1]
    if 0 < top_k < V:
        sorted_NxK = jax.lax.top_k(logits_NxV, top_k)[0]
    else:
        sorted_NxK = -jnp.sort(-logits_NxV, axis=-1)
    probs_NxK = jax.nn.softmax(sorted_NxK, axis=-1)
    mass_before_NxK = jnp.cumsum(probs_NxK, axis=-1) - probs_NxK
    n_keep_N = jnp.maximum(jnp.sum(mass_before_NxK < p, axis=-1), 1)
    threshold_Nx1 = jnp.take_along_axis(sorted_NxK, n_keep_N[:, None] - 1, axis=-1)
    return jnp.where(logits_NxV >= threshold_Nx1, logits_NxV, _NEG_INF)


def min_p_filter(logits_NxV: jax.Array, min_p: float) -> jax.Array:
    """Keeps tokens with probability >= min_p times the row's most likely token's."""
    if min_p <= 0.0:
        return logits_NxV
    max_Nx1 = jnp.max(logits_NxV, axis=-1, keepdims=True)
    # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
    return jnp.where(logits_NxV >= max_Nx1 + jnp.log(min_p), logits_NxV, _NEG_INF)


def sampling_logits(logits_NxV: jax.Array, spec: SamplingSpec) -> jax.Array:
    """The logits of the distribution tokens are drawn from: tempered, then filtered."""
    z_NxV = logits_NxV.astype(jnp.float32) / spec.temperature
    z_NxV = top_k_filter(z_NxV, spec.top_k)
    z_NxV = top_p_filter(z_NxV, spec.top_p, spec.top_k)
    return min_p_filter(z_NxV, spec.min_p)


def draw(z_NxV: jax.Array, u_N: jax.Array) -> jax.Array:
    """Inverse-CDF draw from softmax(z) with one uniform in [0, 1) per row.

    One random number per row instead of V Gumbel draws: on CPU the Gumbel noise for a 50k
    vocabulary costs more than the rest of the sampling step.
    """
    probs_NxV = jax.nn.softmax(z_NxV, axis=-1)
    cdf_NxV = jnp.cumsum(probs_NxV, axis=-1)
    # First token whose cdf exceeds u * total: it has positive probability by construction.
    idx_N = jnp.sum(cdf_NxV <= (u_N * cdf_NxV[:, -1])[:, None], axis=-1)
    idx_N = jnp.minimum(idx_N, z_NxV.shape[-1] - 1)
    chosen_ok_N = jnp.take_along_axis(probs_NxV, idx_N[:, None], axis=-1)[:, 0] > 0
    return jnp.where(chosen_ok_N, idx_N, jnp.argmax(z_NxV, axis=-1)).astype(jnp.int32)


def choose(logits_NxV: jax.Array, u_N: jax.Array | None, spec: SamplingSpec
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One token per row: (token, log-prob under the model at temperature 1 with no filter,
    log-prob under the distribution actually sampled from; 0 for greedy)."""
    logits_NxV = logits_NxV.astype(jnp.float32)
    if spec.greedy:
        tok_N = jnp.argmax(logits_NxV, axis=-1).astype(jnp.int32)
        sample_logp_N = jnp.zeros(tok_N.shape, jnp.float32)
    else:
        z_NxV = sampling_logits(logits_NxV, spec)
        tok_N = draw(z_NxV, u_N)
        z_tok_N = jnp.take_along_axis(z_NxV, tok_N[:, None], axis=-1)[:, 0]
        sample_logp_N = z_tok_N - jax.nn.logsumexp(z_NxV, axis=-1)
    logit_tok_N = jnp.take_along_axis(logits_NxV, tok_N[:, None], axis=-1)[:, 0]
    logp_N = logit_tok_N - jax.nn.logsumexp(logits_NxV, axis=-1)
    return tok_N, logp_N, sample_logp_N


FILTERS = {"top_k": top_k_filter, "top_p": top_p_filter, "min_p": min_p_filter}
