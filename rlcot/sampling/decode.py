"""The sampling-time model: per-layer parameter buffers, a decode-shaped KV cache, one forward.

Training stacks every layer's parameters on a leading axis and scans over it. Decoding that way
makes XLA copy each layer's weight slice and cache slice out of (and the cache back into) the
stacked buffers at every step, which on CPU costs more than the matmuls. The sampling layout
keeps one buffer per layer instead (the layers are unrolled; compile time grows with depth but
stays seconds) and a cache with one buffer per layer, keys stored transposed [B, K, H, S] so
that both attention contractions read the cache in place. The layer math itself is the
model's own (Blocks.qkv / Blocks.out), so the two paths cannot drift apart.

The G samples of a prompt share its cache: decoding reads the prompt's prefill cache [B, .., P]
(read-only, one per prompt) and each row's own cache [B*G, .., T] of the tokens it generated,
instead of G copies of the prompt in B*G rows of P + T slots (`forward(..., prefix=)`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from rlcot.models.config import ModelConfig
from rlcot.models.transformer import (Blocks, abstract_model, attention_probs, cache_bytes,
                                      embed_tokens, layer_inputs, rms_norm, unembed)
from rlcot.sharding import SAMPLE_RULES, named_sharding


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SamplingParams:
    """Model parameters in the sampling layout: top-level arrays and one state per layer."""
    top: dict[str, jax.Array]        # embed, final_norm (and lm_head when untied)
    layers: tuple[nnx.State, ...]    # each layer's Blocks parameters, without the layer axis


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeCache:
    """Per-layer KV buffers. Slot s of row b holds the token at position pos_BxS[b, s] (-1: empty)."""
    k_BxKxHxS: tuple[jax.Array, ...]  # one per layer; keys transposed for q.k without a relayout
    v_BxKxSxH: tuple[jax.Array, ...]  # one per layer
    pos_BxS: jax.Array
    index: jax.Array  # int32 scalar: next slot to write (shared by all rows)


@functools.lru_cache(maxsize=None)
def block_graphdef(cfg: ModelConfig) -> nnx.GraphDef:
    return nnx.split(nnx.eval_shape(lambda: Blocks(cfg, nnx.Rngs(0))))[0]


def _layer_slice(v: nnx.Variable, i: int) -> nnx.Variable:
    return v.replace(v.get_value()[i], axes=tuple(getattr(v, "axes", ()) or ())[1:] or None)


def _layer_sharding(v: nnx.Variable, mesh: jax.sharding.Mesh, rules: Mapping[str, Any]):
    shape = v.get_value().shape[1:]
    axes = getattr(v, "axes", None)
    axes = tuple(axes[1:]) if axes else (None,) * len(shape)
    return named_sharding(mesh, axes, rules, shape)


def to_sampling_params(cfg: ModelConfig, params: nnx.State, mesh: jax.sharding.Mesh | None = None,
                       rules: Mapping[str, Any] | None = None) -> SamplingParams:
    """Reshards model parameters (any layout, e.g. FSDP training) into the sampling layout.

    With a mesh, every buffer lands directly in its sampling sharding (SAMPLE_RULES by default:
    no FSDP on parameters, heads over `tensor`), so the layers are never gathered on one device.
    Compiled once per (config, mesh, rules): calling it after every training step is cheap.
    """
    if "blocks" not in params:
        raise KeyError(f"expected a Transformer state with 'blocks', got keys {list(params.keys())}")
    rules = SAMPLE_RULES if rules is None else rules
    convert = _converter(cfg, mesh, tuple(sorted(rules.items())) if mesh is not None else ())
    return convert(params["blocks"], {k: v for k, v in params.items() if k != "blocks"})


@functools.lru_cache(maxsize=None)
def _converter(cfg: ModelConfig, mesh: jax.sharding.Mesh | None, rules_items: tuple):
    def convert(blocks, top_vars):
        layers = tuple(jax.tree.map(lambda v: _layer_slice(v, i), blocks, is_leaf=_is_var)
                       for i in range(cfg.n_layers))
        return SamplingParams({k: v.get_value() for k, v in top_vars.items()}, layers)

    if mesh is None:
        return jax.jit(convert)
    rules = dict(rules_items)
    abstract = abstract_model(cfg)[1]
    layer_sh = jax.tree.map(lambda v: _layer_sharding(v, mesh, rules), abstract["blocks"],
                            is_leaf=_is_var)
    top_sh = {k: named_sharding(mesh, v.axes, rules, v.get_value().shape)
              for k, v in abstract.items() if k != "blocks"}
    return jax.jit(convert, out_shardings=SamplingParams(top_sh, (layer_sh,) * cfg.n_layers))


def cache_shapes(cfg: ModelConfig, rows: int, length: int, dtype: Any) -> DecodeCache:
    """The cache's arrays as ShapeDtypeStructs (for sizes and shardings before allocating)."""
    L, K, H = cfg.n_layers, cfg.n_kv_heads, cfg.head_dim
    k = jax.ShapeDtypeStruct((rows, K, H, length), dtype)
    v = jax.ShapeDtypeStruct((rows, K, length, H), dtype)
    return DecodeCache((k,) * L, (v,) * L, jax.ShapeDtypeStruct((rows, length), jnp.int32),
                       jax.ShapeDtypeStruct((), jnp.int32))


def decode_cache_bytes(cfg: ModelConfig, rows: int, length: int, dtype: Any) -> int:
    return cache_bytes(cfg, rows, length, dtype)  # same contents as the model's KVCache


def cache_logical_axes(cfg: ModelConfig) -> DecodeCache:
    L = cfg.n_layers
    return DecodeCache((("batch", "kv_heads", "head_dim", "cache_length"),) * L,
                       (("batch", "kv_heads", "cache_length", "head_dim"),) * L,
                       ("batch", "cache_length"), ())


def init_cache(cfg: ModelConfig, rows: int, length: int, dtype: Any) -> DecodeCache:
    shapes = cache_shapes(cfg, rows, length, dtype)
    k = tuple(jnp.zeros(s.shape, s.dtype) for s in shapes.k_BxKxHxS)
    v = tuple(jnp.zeros(s.shape, s.dtype) for s in shapes.v_BxKxSxH)
    return DecodeCache(k, v, jnp.full((rows, length), -1, jnp.int32), jnp.zeros((), jnp.int32))


def _attend(cfg: ModelConfig, q_BxTxNxH: jax.Array, k_BxKxHxS: jax.Array, v_BxKxSxH: jax.Array,
            mask_BxTxS: jax.Array) -> jax.Array:
    """Grouped-query attention over the transposed-key cache: [B, T, N, H] (cf. Blocks.attend).

    Written with dot_general so the operand order is fixed: with einsum, XLA may compute the
    transposed product and then relayout the output projection's weights at every step.
    """
    B, T, N, H = q_BxTxNxH.shape
    K = cfg.n_kv_heads
    G = N // K
    S = k_BxKxHxS.shape[-1]
    batch = ((0, 1), (0, 1))
    q_BxKxGTxH = q_BxTxNxH.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, H)
    scores_BxKxGTxS = jax.lax.dot_general(q_BxKxGTxH, k_BxKxHxS.astype(q_BxTxNxH.dtype),
                                          (((3,), (2,)), batch),
                                          preferred_element_type=jnp.float32)
    probs_BxKxGxTxS = attention_probs(cfg, scores_BxKxGTxS.reshape(B, K, G, T, S), mask_BxTxS)
    out_BxKxGTxH = jax.lax.dot_general(
        probs_BxKxGxTxS.reshape(B, K, G * T, S).astype(v_BxKxSxH.dtype), v_BxKxSxH,
        (((3,), (2,)), batch))
    out_BxTxNxH = out_BxKxGTxH.reshape(B, K, G, T, H).transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)
    return out_BxTxNxH.astype(q_BxTxNxH.dtype)


def _attend_shared(cfg: ModelConfig, q_NxQxKRxH: jax.Array, pre_k_BxKxHxP: jax.Array,
                   pre_v_BxKxPxH: jax.Array, k_NxKxHxS: jax.Array, v_NxKxSxH: jax.Array,
                   mask_NxQxPS: jax.Array) -> jax.Array:
    """Attention of rows that share prompts: [N, Q, K*R, H] (R query heads per KV head).

    Row n = b*G + g attends to prompt b's P prefix slots and to its own S slots. The prefix
    block is contracted with the queries of all G rows of a prompt grouped together, so each
    prompt's prefix is read once per step instead of once per row. The two blocks' scores are
    concatenated before `attention_probs`, so scaling, soft-capping, masking and the softmax
    are the model's own, over all P + S keys at once.
    """
    N, Q, KR, H = q_NxQxKRxH.shape
    B, K, _, P = pre_k_BxKxHxP.shape
    G, R, S = N // B, KR // K, k_NxKxHxS.shape[-1]
    dt = q_NxQxKRxH.dtype
    batch = ((0, 1), (0, 1))
    # Prefix block: per (prompt, KV head), the R x G x Q queries of the prompt's rows.
    q_BxKxRGQxH = (q_NxQxKRxH.reshape(B, G, Q, K, R, H).transpose(0, 3, 4, 1, 2, 5)
                   .reshape(B, K, R * G * Q, H))
    pre_BxKxRGQxP = jax.lax.dot_general(q_BxKxRGQxH, pre_k_BxKxHxP.astype(dt),
                                        (((3,), (2,)), batch), preferred_element_type=jnp.float32)
    # Suffix block: per (row, KV head), the row's R x Q queries.
    q_NxKxRQxH = q_NxQxKRxH.reshape(N, Q, K, R, H).transpose(0, 2, 3, 1, 4).reshape(N, K, R * Q, H)
    suf_NxKxRQxS = jax.lax.dot_general(q_NxKxRQxH, k_NxKxHxS.astype(dt), (((3,), (2,)), batch),
                                       preferred_element_type=jnp.float32)
    suf_BxKxRxGQxS = (suf_NxKxRQxS.reshape(B, G, K, R, Q, S).transpose(0, 2, 3, 1, 4, 5)
                      .reshape(B, K, R, G * Q, S))
    scores_BxKxRxGQxPS = jnp.concatenate([pre_BxKxRGQxP.reshape(B, K, R, G * Q, P),
                                          suf_BxKxRxGQxS], axis=-1)
    probs_BxKxRxGQxPS = attention_probs(cfg, scores_BxKxRxGQxPS,
                                        mask_NxQxPS.reshape(B, G * Q, P + S))
    pre_out_BxKxRGQxH = jax.lax.dot_general(
        probs_BxKxRxGQxPS[..., :P].reshape(B, K, R * G * Q, P).astype(pre_v_BxKxPxH.dtype),
        pre_v_BxKxPxH, (((3,), (2,)), batch))
    suf_probs_NxKxRQxS = (probs_BxKxRxGQxPS[..., P:].reshape(B, K, R, G, Q, S)
                          .transpose(0, 3, 1, 2, 4, 5).reshape(N, K, R * Q, S))
    suf_out_NxKxRQxH = jax.lax.dot_general(suf_probs_NxKxRQxS.astype(v_NxKxSxH.dtype), v_NxKxSxH,
                                           (((3,), (2,)), batch))
    out_NxQxKRxH = (pre_out_BxKxRGQxH.reshape(B, K, R, G, Q, H).transpose(0, 3, 4, 1, 2, 5)
                    .reshape(N, Q, KR, H)
                    + suf_out_NxKxRQxH.reshape(N, K, R, Q, H).transpose(0, 3, 1, 2, 4)
                    .reshape(N, Q, KR, H))
    return out_NxQxKRxH.astype(dt)


def forward(cfg: ModelConfig, sp: SamplingParams, tokens_BxT: jax.Array, positions_BxT: jax.Array,
            valid_BxT: jax.Array, cache: DecodeCache, prefix: DecodeCache | None = None
            ) -> tuple[jax.Array, DecodeCache]:
    """Final-norm hidden states [B, T, D] of T new tokens, written into the cache at its index.

    prefix: a read-only cache of B / G prompts (G = cache rows per prompt, prompt-major); row
    b*G + g then attends to prompt b's prefix slots before its own cache slots, exactly as if
    they were one row of P + S slots (see `_attend_shared`).
    """
    graphdef = block_graphdef(cfg)
    positions_BxT = positions_BxT.astype(jnp.int32)
    x_BxTxD = embed_tokens(cfg, sp.top["embed"], tokens_BxT)
    new_pos_BxT = jnp.where(valid_BxT, positions_BxT, -1)
    k_pos_BxS = jax.lax.dynamic_update_slice_in_dim(cache.pos_BxS, new_pos_BxT, cache.index, 1)
    if prefix is None:
        global_in, local_in = layer_inputs(cfg, positions_BxT, k_pos_BxS)
    else:
        # Masks over [prefix slots | own slots] from the same position bookkeeping.
        rows, prompts = tokens_BxT.shape[0], prefix.pos_BxS.shape[0]
        if rows % prompts:
            raise ValueError(f"{rows} cache rows do not split into {prompts} prompts' samples")
        pre_pos_BxP = jnp.repeat(prefix.pos_BxS, rows // prompts, axis=0)
        global_in, local_in = layer_inputs(cfg, positions_BxT,
                                           jnp.concatenate([pre_pos_BxP, k_pos_BxS], axis=1))
    ks, vs = [], []
    for i in range(cfg.n_layers):
        block = nnx.merge(graphdef, sp.layers[i])
        mask, cos, sin = local_in if cfg.local_layers[i] else global_in
        q_BxTxNxH, k_BxTxKxH, v_BxTxKxH = block.qkv(cfg, x_BxTxD, cos, sin)
        k_cache = cache.k_BxKxHxS[i]
        v_cache = cache.v_BxKxSxH[i]
        k_cache = jax.lax.dynamic_update_slice_in_dim(
            k_cache, k_BxTxKxH.transpose(0, 2, 3, 1).astype(k_cache.dtype), cache.index, 3)
        v_cache = jax.lax.dynamic_update_slice_in_dim(
            v_cache, v_BxTxKxH.transpose(0, 2, 1, 3).astype(v_cache.dtype), cache.index, 2)
        if prefix is None:
            attn_BxTxNxH = _attend(cfg, q_BxTxNxH, k_cache, v_cache, mask)
        else:
            attn_BxTxNxH = _attend_shared(cfg, q_BxTxNxH, prefix.k_BxKxHxS[i],
                                          prefix.v_BxKxSxH[i], k_cache, v_cache, mask)
        x_BxTxD = block.out(cfg, x_BxTxD, attn_BxTxNxH)
        ks.append(k_cache)
        vs.append(v_cache)
    h_BxTxD = rms_norm(x_BxTxD, sp.top["final_norm"], cfg.norm_eps, cfg.norm_offset)
    index = cache.index + jnp.asarray(tokens_BxT.shape[1], jnp.int32)
    return h_BxTxD, DecodeCache(tuple(ks), tuple(vs), k_pos_BxS, index)


def logits(cfg: ModelConfig, sp: SamplingParams, h_BxTxD: jax.Array) -> jax.Array:
    return unembed(cfg, h_BxTxD, sp.top["embed"], sp.top.get("lm_head"))
