"""The decoder-only transformer (Flax NNX), its KV cache, and the pure functions used under jit.

Layers are stacked (every per-layer parameter has a leading `layers` axis) and applied with
`lax.scan`, so compile time does not grow with depth. Attention masks come from token
positions, which makes left- and right-padded batches, prefill and incremental decode one code
path: a key is visible to a query when it is valid, not after it, and (on Gemma 3's local layers)
within the sliding window.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rlcot.models.config import ModelConfig
from rlcot.models.rope import apply_rope, rope_tables
from rlcot.sharding import constrain

# The residual stream's logical axes: rows over the batch axes, d_model whole (not FSDP's
# `embed` axis: see rlcot.sharding.constrain).
ACT_EMBED = ("batch", "length", None)
_NEG_INF = -0.7 * float(jnp.finfo(jnp.float32).max)


def _param(rngs: nnx.Rngs | None, shape: tuple[int, ...], axes: tuple[str, ...], dtype: Any,
           init: str | float) -> nnx.Param:
    """A parameter with logical axis names. init: 'ones', 'zeros' or a normal std."""
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        value = (float(init) * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, axes=axes)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Fixed-size KV cache. Slot s of row b holds the token at position pos_BxS[b, s] (-1: empty)."""
    k_LxBxSxKxH: jax.Array
    v_LxBxSxKxH: jax.Array
    pos_BxS: jax.Array
    index: jax.Array  # int32 scalar: the next slot to write (shared by all rows)

    @property
    def length(self) -> int:
        return self.pos_BxS.shape[1]


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype: Any = None) -> KVCache:
    dtype = cfg.compute_dtype if dtype is None else dtype
    shape = (cfg.n_layers, batch, length, cfg.n_kv_heads, cfg.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                   jnp.full((batch, length), -1, jnp.int32), jnp.zeros((), jnp.int32))


def cache_bytes(cfg: ModelConfig, batch: int, length: int, dtype: Any = None) -> int:
    """Bytes the KV cache needs, computed before anything is compiled or allocated."""
    itemsize = jnp.dtype(cfg.compute_dtype if dtype is None else dtype).itemsize
    kv = 2 * cfg.n_layers * batch * length * cfg.n_kv_heads * cfg.head_dim * itemsize
    return kv + batch * length * 4


def cache_axes() -> KVCache:
    """Logical axis names of the cache's arrays (for sharding rules)."""
    kv = ("layers", "batch", "cache_length", "kv_heads", "head_dim")
    return KVCache(kv, kv, ("batch", "cache_length"), ())  # type: ignore[arg-type]


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, offset: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    if offset:  # Gemma: (x * (1 + w)) in float32, then cast
        return (normed * (offset + scale.astype(jnp.float32))).astype(x.dtype)
    # Llama: cast, then scale; the product stays in the compute dtype (float32 weights would
    # otherwise promote bfloat16 activations, and the layer scan needs its carry's dtype).
    return (scale * normed.astype(x.dtype)).astype(x.dtype)


class Blocks(nnx.Module):
    """All decoder layers, each parameter stacked over a leading `layers` axis."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        L, d, n, k, h, f = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads,
                            cfg.head_dim, cfg.mlp_dim)
        pdt = cfg.weight_dtype
        std, out_std = d ** -0.5, (n * h) ** -0.5 / math.sqrt(2 * L)
        norm_init = "zeros" if cfg.norm_offset else "ones"
        self.attn_norm = _param(rngs, (L, d), ("layers", "norm"), pdt, norm_init)
        self.q = _param(rngs, (L, d, n, h), ("layers", "embed", "heads", "head_dim"), pdt, std)
        self.k = _param(rngs, (L, d, k, h), ("layers", "embed", "kv_heads", "head_dim"), pdt, std)
        self.v = _param(rngs, (L, d, k, h), ("layers", "embed", "kv_heads", "head_dim"), pdt, std)
        self.o = _param(rngs, (L, n, h, d), ("layers", "heads", "head_dim", "embed"), pdt, out_std)
        if cfg.qkv_bias:
            self.q_bias = _param(rngs, (L, n, h), ("layers", "heads", "head_dim"), pdt, "zeros")
            self.k_bias = _param(rngs, (L, k, h), ("layers", "kv_heads", "head_dim"), pdt, "zeros")
            self.v_bias = _param(rngs, (L, k, h), ("layers", "kv_heads", "head_dim"), pdt, "zeros")
        if cfg.qk_norm:
            self.q_norm = _param(rngs, (L, h), ("layers", "head_dim"), pdt, norm_init)
            self.k_norm = _param(rngs, (L, h), ("layers", "head_dim"), pdt, norm_init)
        if cfg.sandwich_norms:
            self.post_attn_norm = _param(rngs, (L, d), ("layers", "norm"), pdt, norm_init)
            self.post_mlp_norm = _param(rngs, (L, d), ("layers", "norm"), pdt, norm_init)
        self.mlp_norm = _param(rngs, (L, d), ("layers", "norm"), pdt, norm_init)
        self.gate = _param(rngs, (L, d, f), ("layers", "embed", "mlp"), pdt, std)
        self.up = _param(rngs, (L, d, f), ("layers", "embed", "mlp"), pdt, std)
        self.down = _param(rngs, (L, f, d), ("layers", "mlp", "embed"), pdt,
                           f ** -0.5 / math.sqrt(2 * L))

    def layer(self, cfg: ModelConfig, x_BxTxD: jax.Array, cos_BxTxH: jax.Array,
              sin_BxTxH: jax.Array, mask_BxTxS: jax.Array, kv: tuple[jax.Array, jax.Array] | None,
              write_index: jax.Array | None, lora: Any = None
              ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """One decoder layer; called inside the layer scan, where every parameter is one layer's.

        kv: this layer's cache (k, v) [B, S, K, H], or None to attend within x itself.
        lora: (this layer's LoRA adapters, scale) or None (see `lora_delta`).
        Returns the new hidden states and the keys/values attended over (the updated cache).
        """
        q_BxTxNxH, k_BxTxKxH, v_BxTxKxH = self.qkv(cfg, x_BxTxD, cos_BxTxH, sin_BxTxH, lora)
        if kv is None:
            k_BxSxKxH, v_BxSxKxH = k_BxTxKxH, v_BxTxKxH
        else:
            k_BxSxKxH = jax.lax.dynamic_update_slice_in_dim(
                kv[0], k_BxTxKxH.astype(kv[0].dtype), write_index, axis=1)
            v_BxSxKxH = jax.lax.dynamic_update_slice_in_dim(
                kv[1], v_BxTxKxH.astype(kv[1].dtype), write_index, axis=1)
        attn_BxTxNxH = self.attend(cfg, q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_BxTxS)
        return self.out(cfg, x_BxTxD, attn_BxTxNxH, lora), (k_BxSxKxH, v_BxSxKxH)

    def qkv(self, cfg: ModelConfig, x_BxTxD: jax.Array, cos_BxTxH: jax.Array,
            sin_BxTxH: jax.Array, lora: Any = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Queries, keys and values of the T new tokens (normed, biased, RoPE applied)."""
        dt = cfg.compute_dtype
        eps, off = cfg.norm_eps, cfg.norm_offset
        h_BxTxD = rms_norm(x_BxTxD, self.attn_norm[...], eps, off)
        q_BxTxNxH = jnp.einsum("btd,dnh->btnh", h_BxTxD, self.q[...].astype(dt))
        k_BxTxKxH = jnp.einsum("btd,dkh->btkh", h_BxTxD, self.k[...].astype(dt))
        v_BxTxKxH = jnp.einsum("btd,dkh->btkh", h_BxTxD, self.v[...].astype(dt))
        if lora is not None:
            q_BxTxNxH += lora_delta(lora, "q", h_BxTxD, q_BxTxNxH.shape)
            k_BxTxKxH += lora_delta(lora, "k", h_BxTxD, k_BxTxKxH.shape)
            v_BxTxKxH += lora_delta(lora, "v", h_BxTxD, v_BxTxKxH.shape)
        if cfg.qkv_bias:
            q_BxTxNxH += self.q_bias[...].astype(dt)
            k_BxTxKxH += self.k_bias[...].astype(dt)
            v_BxTxKxH += self.v_bias[...].astype(dt)
        if cfg.qk_norm:
            q_BxTxNxH = rms_norm(q_BxTxNxH, self.q_norm[...], eps, off)
            k_BxTxKxH = rms_norm(k_BxTxKxH, self.k_norm[...], eps, off)
        q_BxTxNxH = apply_rope(q_BxTxNxH, cos_BxTxH, sin_BxTxH)
        k_BxTxKxH = apply_rope(k_BxTxKxH, cos_BxTxH, sin_BxTxH)
        return q_BxTxNxH, k_BxTxKxH, v_BxTxKxH

    def attend(self, cfg: ModelConfig, q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array,
               v_BxSxKxH: jax.Array, mask_BxTxS: jax.Array) -> jax.Array:
        """Grouped-query attention of the T queries over S keys: [B, T, N, H]."""
        B, T, N, H = q_BxTxNxH.shape
        K = cfg.n_kv_heads
        q_BxTxKxGxH = q_BxTxNxH.reshape(B, T, K, N // K, H)
        scores_BxKxGxTxS = jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH,
                                      k_BxSxKxH.astype(q_BxTxNxH.dtype),
                                      preferred_element_type=jnp.float32)
        probs_BxKxGxTxS = attention_probs(cfg, scores_BxKxGxTxS, mask_BxTxS)
        out_BxTxKxGxH = jnp.einsum("bkgts,bskh->btkgh", probs_BxKxGxTxS.astype(v_BxSxKxH.dtype),
                                   v_BxSxKxH)
        return out_BxTxKxGxH.reshape(B, T, N, H).astype(q_BxTxNxH.dtype)

    def out(self, cfg: ModelConfig, x_BxTxD: jax.Array, attn_BxTxNxH: jax.Array,
            lora: Any = None) -> jax.Array:
        """Output projection, residual and MLP block: the layer's new hidden states."""
        dt = cfg.compute_dtype
        eps, off = cfg.norm_eps, cfg.norm_offset
        # One flattened (heads x head_dim) contraction: einsum "btnh,nhd" may order the two
        # contracted dims (h, n) and then relayout the whole weight at every call.
        B, T, N, H = attn_BxTxNxH.shape
        o_NHxD = self.o[...].astype(attn_BxTxNxH.dtype).reshape(N * H, -1)
        attn_BxTxD = jnp.einsum("btk,kd->btd", attn_BxTxNxH.reshape(B, T, N * H), o_NHxD)
        if lora is not None:
            attn_BxTxD += lora_delta(lora, "o", attn_BxTxNxH.reshape(B, T, N * H),
                                     attn_BxTxD.shape)
        if cfg.sandwich_norms:
            attn_BxTxD = rms_norm(attn_BxTxD, self.post_attn_norm[...], eps, off)
        x_BxTxD = x_BxTxD + attn_BxTxD
        h_BxTxD = rms_norm(x_BxTxD, self.mlp_norm[...], eps, off)
        gate_BxTxF = jnp.einsum("btd,df->btf", h_BxTxD, self.gate[...].astype(dt))
        up_BxTxF = jnp.einsum("btd,df->btf", h_BxTxD, self.up[...].astype(dt))
        if lora is not None:
            gate_BxTxF += lora_delta(lora, "gate", h_BxTxD, gate_BxTxF.shape)
            up_BxTxF += lora_delta(lora, "up", h_BxTxD, up_BxTxF.shape)
        if cfg.activation == "silu":
            act_BxTxF = jax.nn.silu(gate_BxTxF)
        else:
            act_BxTxF = jax.nn.gelu(gate_BxTxF, approximate=True)
        hidden_BxTxF = constrain(act_BxTxF * up_BxTxF, ("batch", "length", "mlp"))
        mlp_BxTxD = jnp.einsum("btf,fd->btd", hidden_BxTxF, self.down[...].astype(dt))
        if lora is not None:
            mlp_BxTxD += lora_delta(lora, "down", hidden_BxTxF, mlp_BxTxD.shape)
        if cfg.sandwich_norms:
            mlp_BxTxD = rms_norm(mlp_BxTxD, self.post_mlp_norm[...], eps, off)
        return x_BxTxD + mlp_BxTxD


def lora_delta(lora: Any, name: str, x_BxTxI: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """LoRA's addition to projection `name` of inputs x (input axes flattened to I):
    scale * (x A) B, shaped `shape`; 0 when the projection has no adapter. lora: (one layer's
    adapters {name: {"a": [*in, r], "b": [r, *out]}}, scale), see rlcot.models.lora. A B is
    never formed: two thin products, whose gradient is the adapters' alone."""
    adapters, scale = lora
    if name not in adapters:
        return jnp.zeros((), x_BxTxI.dtype)
    a, b = adapters[name]["a"][...], adapters[name]["b"][...]
    r = a.shape[-1]
    xa_BxTxR = jnp.einsum("bti,ir->btr", x_BxTxI, a.reshape(-1, r).astype(x_BxTxI.dtype))
    out_BxTxO = jnp.einsum("btr,ro->bto", xa_BxTxR, b.reshape(r, -1).astype(x_BxTxI.dtype))
    return (scale * out_BxTxO).astype(x_BxTxI.dtype).reshape(shape)


def attention_probs(cfg: ModelConfig, scores_BxKxGxTxS: jax.Array,
                    mask_BxTxS: jax.Array) -> jax.Array:
    """Float32 attention weights from raw q.k scores: scale, soft-cap, mask, softmax over S."""
    head_dim = cfg.head_dim
    scale = cfg.query_scale if cfg.query_scale is not None else head_dim ** -0.5
    logits_BxKxGxTxS = scores_BxKxGxTxS.astype(jnp.float32) * scale
    if cfg.attn_logit_softcap:
        logits_BxKxGxTxS = jnp.tanh(logits_BxKxGxTxS / cfg.attn_logit_softcap)
        logits_BxKxGxTxS *= cfg.attn_logit_softcap
    logits_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], logits_BxKxGxTxS, _NEG_INF)
    return jax.nn.softmax(logits_BxKxGxTxS, axis=-1)


class LayerInputs(NamedTuple):
    """What a layer needs besides its hidden states: attention mask and RoPE tables."""
    mask_BxTxS: jax.Array
    cos_BxTxH: jax.Array
    sin_BxTxH: jax.Array


def layer_inputs(cfg: ModelConfig, positions_BxT: jax.Array, k_pos_BxS: jax.Array,
                 segment_ids_BxT: jax.Array | None = None
                 ) -> tuple[LayerInputs, LayerInputs | None]:
    """(global, local) layer inputs for queries at positions_BxT over keys at k_pos_BxS.

    A key is visible when its slot is filled (position >= 0) and not after the query; local
    (sliding-window) layers also need it within the window. local is None without such layers.
    segment_ids_BxT (packed rows, no cache: keys are the queries): a key is visible only
    within its query's segment, whose positions restart at 0.
    """
    q_pos_BxT = positions_BxT.astype(jnp.int32)
    visible_BxTxS = ((k_pos_BxS[:, None, :] >= 0)
                     & (k_pos_BxS[:, None, :] <= q_pos_BxT[:, :, None]))
    if segment_ids_BxT is not None:
        visible_BxTxS &= segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
    cos, sin = rope_tables(q_pos_BxT, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    global_inputs = LayerInputs(visible_BxTxS, cos, sin)
    if not any(cfg.local_layers):
        return global_inputs, None
    window_BxTxS = (q_pos_BxT[:, :, None] - k_pos_BxS[:, None, :]) < cfg.sliding_window
    cos, sin = rope_tables(q_pos_BxT, cfg.head_dim, cfg.local_rope_theta, None)
    return global_inputs, LayerInputs(visible_BxTxS & window_BxTxS, cos, sin)


def embed_tokens(cfg: ModelConfig, embed_VxD: jax.Array, tokens_BxT: jax.Array) -> jax.Array:
    x_BxTxD = jnp.take(embed_VxD, tokens_BxT, axis=0).astype(cfg.compute_dtype)
    if cfg.embed_scale:  # Gemma rounds sqrt(d) to the parameter dtype first
        scale = jnp.asarray(math.sqrt(cfg.d_model), cfg.weight_dtype).astype(cfg.compute_dtype)
        x_BxTxD = x_BxTxD * scale
    return constrain(x_BxTxD, ACT_EMBED)


def unembed(cfg: ModelConfig, h_BxTxD: jax.Array, embed_VxD: jax.Array,
            lm_head_DxV: jax.Array | None = None) -> jax.Array:
    """Float32 logits from final hidden states (tied embedding or separate head, soft-capped)."""
    if cfg.tie_embeddings:
        logits_BxTxV = jnp.einsum("btd,vd->btv", h_BxTxD, embed_VxD.astype(h_BxTxD.dtype),
                                  preferred_element_type=jnp.float32)
    else:
        logits_BxTxV = jnp.einsum("btd,dv->btv", h_BxTxD, lm_head_DxV.astype(h_BxTxD.dtype),
                                  preferred_element_type=jnp.float32)
    logits_BxTxV = constrain(logits_BxTxV, ("batch", "length", "vocab"))
    if cfg.final_logit_softcap:
        logits_BxTxV = jnp.tanh(logits_BxTxV / cfg.final_logit_softcap) * cfg.final_logit_softcap
    return logits_BxTxV


class Transformer(nnx.Module):
    """Decoder-only LM. `__call__` returns float32 logits and the updated cache (or None)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt = cfg.weight_dtype
        self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), pdt, 0.02)
        self.blocks = Blocks(cfg, rngs)
        self.final_norm = _param(rngs, (cfg.d_model,), ("norm",), pdt,
                                 "zeros" if cfg.norm_offset else "ones")
        if not cfg.tie_embeddings:
            self.lm_head = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), pdt,
                                  cfg.d_model ** -0.5)

    def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array,
                 valid_BxT: jax.Array | None = None, cache: KVCache | None = None,
                 remat: bool = False, segment_ids_BxT: jax.Array | None = None,
                 lora: Any = None) -> tuple[jax.Array, KVCache | None]:
        h_BxTxD, cache = self.hidden(tokens_BxT, positions_BxT, valid_BxT, cache, remat,
                                     segment_ids_BxT, lora)
        return self.logits(h_BxTxD), cache

    def logits(self, h_BxTxD: jax.Array) -> jax.Array:
        """Float32 logits from final hidden states (e.g. a chunk of them)."""
        lm_head = None if self.cfg.tie_embeddings else self.lm_head[...]
        return unembed(self.cfg, h_BxTxD, self.embed[...], lm_head)

    def hidden(self, tokens_BxT: jax.Array, positions_BxT: jax.Array,
               valid_BxT: jax.Array | None = None, cache: KVCache | None = None,
               remat: bool = False, segment_ids_BxT: jax.Array | None = None,
               lora: Any = None) -> tuple[jax.Array, KVCache | None]:
        """Final-norm hidden states [B, T, D]; with a cache, writes the T tokens at cache.index.
        segment_ids_BxT: packed sequences (attention stays within a segment; no cache).
        lora: (LoRA adapters stacked over layers, scale), applied inside the projections."""
        cfg = self.cfg
        if segment_ids_BxT is not None and cache is not None:
            raise ValueError("packed segments (segment_ids_BxT) are for full-sequence passes, "
                             "not with a KV cache")
        if valid_BxT is None:
            valid_BxT = jnp.ones(tokens_BxT.shape, bool)
        positions_BxT = positions_BxT.astype(jnp.int32)
        x_BxTxD = embed_tokens(cfg, self.embed[...], tokens_BxT)
        new_pos_BxT = jnp.where(valid_BxT, positions_BxT, -1)
        if cache is None:
            k_pos_BxS = new_pos_BxT
        else:
            k_pos_BxS = jax.lax.dynamic_update_slice_in_dim(cache.pos_BxS, new_pos_BxT,
                                                            cache.index, axis=1)
        global_in, local_in = layer_inputs(cfg, positions_BxT, k_pos_BxS, segment_ids_BxT)
        local_L = jnp.asarray(cfg.local_layers)

        graphdef, block_state = nnx.split(self.blocks)

        def body(carry, xs):
            x_BxTxD, kv_all = carry
            layer_state, is_local, i, adapters = xs
            block = nnx.merge(graphdef, layer_state)
            if local_in is not None:
                mask, cos, sin = (jnp.where(is_local, a, b) for a, b in zip(local_in, global_in))
            else:
                mask, cos, sin = global_in
            kv = None if kv_all is None else (kv_all[0][i], kv_all[1][i])
            index = None if cache is None else cache.index
            layer_lora = None if adapters is None else (adapters, lora[1])
            x_BxTxD, (k_BxSxKxH, v_BxSxKxH) = block.layer(cfg, x_BxTxD, cos, sin, mask, kv, index,
                                                          layer_lora)
            x_BxTxD = constrain(x_BxTxD, ACT_EMBED)
            if kv_all is not None:
                kv_all = (jax.lax.dynamic_update_index_in_dim(kv_all[0], k_BxSxKxH, i, 0),
                          jax.lax.dynamic_update_index_in_dim(kv_all[1], v_BxSxKxH, i, 0))
            return (x_BxTxD, kv_all), None

        if remat:
            body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
        kv_all = None if cache is None else (cache.k_LxBxSxKxH, cache.v_LxBxSxKxH)
        layer_ids = jnp.arange(cfg.n_layers, dtype=jnp.int32)
        (x_BxTxD, kv_all), _ = jax.lax.scan(
            body, (x_BxTxD, kv_all),
            (block_state, local_L, layer_ids, None if lora is None else lora[0]))
        h_BxTxD = rms_norm(x_BxTxD, self.final_norm[...], cfg.norm_eps, cfg.norm_offset)
        if cache is not None:
            cache = KVCache(kv_all[0], kv_all[1], k_pos_BxS,
                            cache.index + jnp.asarray(tokens_BxT.shape[1], jnp.int32))
        return h_BxTxD, cache


# ---- Pure functions over (graphdef, params) for use under jit -------------------------------

def split(model: Transformer) -> tuple[nnx.GraphDef, nnx.State]:
    return nnx.split(model)


def merge(graphdef: nnx.GraphDef, params: nnx.State) -> Transformer:
    return nnx.merge(graphdef, params)


def abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """graphdef and a state of ShapeDtypeStructs: the model's structure without allocating it."""
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))


def init_params(cfg: ModelConfig, seed: int = 0, mesh: jax.sharding.Mesh | None = None,
                rules: Any = None) -> tuple[nnx.GraphDef, nnx.State]:
    """Randomly initialised parameters, created directly in their shardings when a mesh is given."""
    graphdef, abstract = abstract_model(cfg)
    make = lambda: nnx.split(Transformer(cfg, nnx.Rngs(seed)))[1]  # noqa: E731
    if mesh is None:
        return graphdef, jax.jit(make)()
    from rlcot.sharding import TRAIN_RULES, state_shardings
    shardings = state_shardings(abstract, mesh, TRAIN_RULES if rules is None else rules)
    return graphdef, jax.jit(make, out_shardings=shardings)()


def forward(graphdef: nnx.GraphDef, params: nnx.State, tokens_BxT: jax.Array,
            positions_BxT: jax.Array, valid_BxT: jax.Array | None = None,
            cache: KVCache | None = None, remat: bool = False,
            segment_ids_BxT: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
    """Float32 logits [B, T, V] (and the updated cache). segment_ids_BxT: several sequences
    packed in a row, each with positions from 0 (attention stays within a segment). params may
    be a rlcot.models.lora.Adapted (a base with LoRA adapters, applied in the projections)."""
    params, lora = split_adapted(params)
    return merge(graphdef, params)(tokens_BxT, positions_BxT, valid_BxT, cache, remat,
                                   segment_ids_BxT, lora)


def split_adapted(params: Any) -> tuple[Any, Any]:
    """(base parameters, (adapters, scale) or None) of parameters that may carry LoRA adapters
    (rlcot.models.lora.Adapted: anything with `base`, `adapters` and `scale`)."""
    if hasattr(params, "adapters") and hasattr(params, "base"):
        return params.base, (params.adapters, params.scale)
    return params, None


def positions_from_mask(valid_BxT: jax.Array) -> jax.Array:
    """Positions 0..n-1 over each row's valid tokens (left or right padding); 0 on padding."""
    valid = valid_BxT.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0) * valid


def count_params(params: Any) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
