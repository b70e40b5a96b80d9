"""The compiled rollout: shared prefill, then one `lax.while_loop` over decode steps."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlcot.models.config import ModelConfig
from rlcot.models.transformer import positions_from_mask
from rlcot.sampling import decode
from rlcot.sampling.filters import choose
from rlcot.sampling.spec import SamplingSpec
from rlcot.sharding import logical_to_spec


@dataclasses.dataclass(frozen=True)
class LoopStatic:
    """Everything that shapes the compiled loop (hashable, a static jit argument)."""
    cfg: ModelConfig
    spec: SamplingSpec      # spec.compiled(gen_len)
    num_samples: int        # G
    pad_id: int
    shared_prefix: bool     # decode over one prefix cache per prompt + one suffix cache per row
    mesh: Mesh | None
    rules: tuple[tuple[str, Any], ...]  # sharding rules as items (hashable)

    def constrain(self, x: Any, axes: Any) -> Any:
        """Pins x to the sharding of its logical axes (no-op without a mesh)."""
        if self.mesh is None:
            return x
        rules = dict(self.rules)

        def one(a, arr):
            spec = logical_to_spec(a, rules, arr.shape, self.mesh) if a else PartitionSpec()
            return jax.lax.with_sharding_constraint(arr, NamedSharding(self.mesh, spec))
        return jax.tree.map(one, axes, x, is_leaf=is_axes)


def is_axes(x: Any) -> bool:
    """A tuple of logical axis names (a leaf of an axes pytree)."""
    return isinstance(x, tuple) and all(isinstance(n, (str, type(None))) for n in x)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LoopOut:
    tokens_NxT: jax.Array
    logp_NxT: jax.Array
    sample_logp_NxT: jax.Array
    lengths_N: jax.Array
    stopped_N: jax.Array
    steps: jax.Array


def _row_uniforms(row_keys_N: jax.Array, step: jax.Array) -> jax.Array:
    # Keys from (rng, row, step): a row's draws do not depend on the batch around it or on how
    # the batch is sharded.
    return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, step)))(row_keys_N)


def _share_and_extend(cache: decode.DecodeCache, G: int, T: int) -> decode.DecodeCache:
    """Repeats each row G times (prompt-major) and appends T empty slots."""
    def grow(a: jax.Array, slot_axis: int, empty: int) -> jax.Array:
        a = jnp.repeat(a, G, axis=0) if G > 1 else a
        widths = [(0, T if i == slot_axis else 0) for i in range(a.ndim)]
        return jnp.pad(a, widths, constant_values=empty)
    return decode.DecodeCache(tuple(grow(k, 3, 0) for k in cache.k_BxKxHxS),
                              tuple(grow(v, 2, 0) for v in cache.v_BxKxSxH),
                              grow(cache.pos_BxS, 1, -1), cache.index)


def run(static: LoopStatic, sp: decode.SamplingParams, prompt_BxP: jax.Array,
        prompt_len_B: jax.Array, rng: jax.Array, stop_table: jax.Array, limit: jax.Array,
        real_rows: jax.Array) -> LoopOut:
    """Samples G completions for each of B left-padded prompts; rows are prompt-major (b*G + g).

    limit: max new tokens (<= the compiled length T); real_rows: rows past it are batch padding
    and start done. stop_table: [states, V] stop-string automaton (a [1, V] zero table: none).
    """
    cfg, spec, G = static.cfg, static.spec, static.num_samples
    B, P = prompt_BxP.shape
    T = spec.max_new_tokens
    N = B * G
    cache_dtype = jnp.dtype(spec.cache_dtype or cfg.dtype)
    cache_axes = decode.cache_logical_axes(cfg)

    # Prefill once per prompt into a prompt-sized cache (attention over P slots, not P + T).
    # Shared prefix: that cache stays as it is, read by all G rows of the prompt, and each row
    # gets a cache of T slots for its own tokens (B*P + N*T slots). Otherwise each of the G rows
    # gets a copy of it, extended with T empty slots (N*(P + T) slots).
    valid_BxP = jnp.arange(P)[None, :] >= (P - prompt_len_B)[:, None]
    positions_BxP = positions_from_mask(valid_BxP)
    cache = static.constrain(decode.init_cache(cfg, B, P, cache_dtype), cache_axes)
    h_BxPxD, cache = decode.forward(cfg, sp, prompt_BxP, positions_BxP, valid_BxP, cache)
    logits_BxV = decode.logits(cfg, sp, h_BxPxD[:, -1:])[:, 0]
    if static.shared_prefix:
        prefix = cache
        cache = decode.init_cache(cfg, N, T, cache_dtype)
    else:
        prefix = None
        cache = _share_and_extend(cache, G, T)
    logits_BxV = jnp.repeat(logits_BxV, G, axis=0) if G > 1 else logits_BxV
    cache = static.constrain(cache, cache_axes)
    logits_NxV = static.constrain(logits_BxV, ("batch", "vocab"))
    next_pos_N = jnp.repeat(prompt_len_B, G).astype(jnp.int32)

    rows_N = jnp.arange(N, dtype=jnp.int32)
    row_keys_N = jax.vmap(lambda i: jax.random.fold_in(rng, i))(rows_N)
    stop_ids = jnp.asarray(spec.stop_ids or (-1,), jnp.int32)
    match_state = stop_table.shape[0] - 1
    use_strings = stop_table.shape[0] > 1

    def sample(t, logits_NxV, done_N, stopped_N, state_N, bufs):
        u_N = None if spec.greedy else _row_uniforms(row_keys_N, t)
        tok_N, logp_N, slogp_N = choose(logits_NxV, u_N, spec)
        live_N = ~done_N
        tok_N = jnp.where(live_N, tok_N, static.pad_id)
        tokens, logp, slogp, lengths = bufs

        def write(buf_NxT, x_N):
            return jax.lax.dynamic_update_slice_in_dim(buf_NxT, x_N[:, None], t, 1)
        tokens = write(tokens, tok_N)
        logp = write(logp, jnp.where(live_N, logp_N, 0.0))
        slogp = write(slogp, jnp.where(live_N, slogp_N, 0.0))
        lengths = lengths + live_N.astype(jnp.int32)
        hit_N = jnp.any(tok_N[:, None] == stop_ids[None, :], axis=-1)
        if use_strings:
            flat_N = state_N * stop_table.shape[1] + tok_N
            state_N = stop_table.reshape(-1)[flat_N].astype(jnp.int32)
            hit_N = hit_N | (state_N == match_state)
        stopped_N = stopped_N | (live_N & hit_N)
        done_N = done_N | stopped_N | (t + 1 >= limit)
        return tok_N, done_N, stopped_N, state_N, (tokens, logp, slogp, lengths)

    bufs = (static.constrain(jnp.full((N, T), static.pad_id, jnp.int32), ("batch", None)),
            static.constrain(jnp.zeros((N, T), jnp.float32), ("batch", None)),
            static.constrain(jnp.zeros((N, T), jnp.float32), ("batch", None)),
            jnp.zeros((N,), jnp.int32))
    done_N = rows_N >= real_rows
    stopped_N = jnp.zeros((N,), bool)
    state_N = jnp.zeros((N,), jnp.int32)
    t = jnp.zeros((), jnp.int32)
    tok_N, done_N, stopped_N, state_N, bufs = sample(t, logits_NxV, done_N, stopped_N, state_N, bufs)

    def cond(carry):
        t, _, _, done_N, *_ = carry
        return (t < limit) & ~jnp.all(done_N)

    def body(carry):
        t, tok_N, cache, done_N, stopped_N, state_N, bufs = carry
        positions_Nx1 = (next_pos_N + t - 1)[:, None]
        valid_Nx1 = jnp.ones((N, 1), bool)
        h_Nx1xD, cache = decode.forward(cfg, sp, tok_N[:, None], positions_Nx1, valid_Nx1, cache,
                                        prefix)
        cache = static.constrain(cache, cache_axes)
        logits_NxV = static.constrain(decode.logits(cfg, sp, h_Nx1xD)[:, 0], ("batch", "vocab"))
        tok_N, done_N, stopped_N, state_N, bufs = sample(t, logits_NxV, done_N, stopped_N,
                                                         state_N, bufs)
        return t + 1, tok_N, cache, done_N, stopped_N, state_N, bufs

    carry = (t + 1, tok_N, cache, done_N, stopped_N, state_N, bufs)
    t, _, _, _, stopped_N, _, (tokens, logp, slogp, lengths) = jax.lax.while_loop(cond, body, carry)
    return LoopOut(tokens, logp, slogp, lengths, stopped_N, t)
