"""A minimal greedy / temperature decoder with the model's KV cache, for measuring toy base
models (rlcot.sampling's Sampler is the rollout engine; this stays small on purpose)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlcot.models.config import ModelConfig
from rlcot.models.transformer import forward, init_cache, positions_from_mask


@functools.partial(jax.jit, static_argnums=(0, 1, 5, 6, 7))
def _decode(cfg: ModelConfig, graphdef: Any, params: Any, prompt_NxP: jax.Array,
            rng: jax.Array, max_new_tokens: int, temperature: float, eos_id: int
            ) -> tuple[jax.Array, jax.Array]:
    N, P = prompt_NxP.shape
    T = max_new_tokens
    valid_NxP = prompt_NxP >= 0
    prompt_NxP = jnp.maximum(prompt_NxP, 0)
    cache = init_cache(cfg, N, P + T)
    logits_NxPxV, cache = forward(graphdef, params, prompt_NxP, positions_from_mask(valid_NxP),
                                  valid_NxP, cache)
    next_pos_N = valid_NxP.sum(axis=1).astype(jnp.int32)

    def pick(logits_NxV, t):
        if temperature == 0.0:
            return jnp.argmax(logits_NxV, axis=-1).astype(jnp.int32)
        key = jax.random.fold_in(rng, t)
        return jax.random.categorical(key, logits_NxV / temperature).astype(jnp.int32)

    tok_N = pick(logits_NxPxV[:, -1], 0)
    out_NxT = jnp.full((N, T), eos_id, jnp.int32).at[:, 0].set(tok_N)
    done_N = tok_N == eos_id
    lengths_N = jnp.ones((N,), jnp.int32)

    def cond(carry):
        t, _, _, _, done_N, _ = carry
        return (t < T) & ~jnp.all(done_N)

    def body(carry):
        t, tok_N, cache, out_NxT, done_N, lengths_N = carry
        logits_Nx1xV, cache = forward(graphdef, params, tok_N[:, None],
                                      (next_pos_N + t - 1)[:, None], None, cache)
        tok_N = jnp.where(done_N, eos_id, pick(logits_Nx1xV[:, 0], t))
        out_NxT = jax.lax.dynamic_update_slice_in_dim(out_NxT, tok_N[:, None], t, axis=1)
        lengths_N = lengths_N + (~done_N).astype(jnp.int32)
        return t + 1, tok_N, cache, out_NxT, done_N | (tok_N == eos_id), lengths_N

    carry = (jnp.ones((), jnp.int32), tok_N, cache, out_NxT, done_N, lengths_N)
    _, _, _, out_NxT, _, lengths_N = jax.lax.while_loop(cond, body, carry)
    return out_NxT, lengths_N


def generate(cfg: ModelConfig, graphdef: Any, params: Any, prompts: Sequence[Sequence[int]], *,
             max_new_tokens: int, eos_id: int, temperature: float = 0.0, seed: int = 0,
             batch_size: int = 256) -> list[list[int]]:
    """Completion ids for each prompt (greedy when temperature == 0), cut after the first eos
    (which is kept). Prompts are left-padded to the longest one."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not prompts:
        return []
    width = max(len(p) for p in prompts)
    if width + max_new_tokens > cfg.max_position:
        raise ValueError(f"prompt ({width}) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"max_position {cfg.max_position}")
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        # Fixed row count per call: one compilation for every chunk.
        padded = np.full((batch_size, width), -1, np.int32)
        for b, p in enumerate(chunk):
            padded[b, width - len(p):] = p
        padded[len(chunk):, -1] = eos_id
        rng = jax.random.fold_in(jax.random.key(seed), start)
        tokens_NxT, lengths_N = _decode(cfg, graphdef, params, jnp.asarray(padded), rng,
                                        max_new_tokens, float(temperature), eos_id)
        tokens_NxT, lengths_N = np.asarray(tokens_NxT), np.asarray(lengths_N)
        out.extend(tokens_NxT[b, :lengths_N[b]].tolist() for b in range(len(chunk)))
    return out
