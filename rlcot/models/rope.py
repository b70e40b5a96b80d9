"""Rotary position embeddings with the frequency scalings of Llama 3, Gemma 3 and YaRN."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from rlcot.models.config import RopeScaling


def inv_frequencies(head_dim: int, theta: float,
                    scaling: RopeScaling | None = None) -> tuple[np.ndarray, float]:
    """Inverse frequencies [head_dim/2] (float32) and the cos/sin attention factor.

    Computed in numpy at trace time, in the same float32 order of operations as Hugging Face
    transformers' modeling_rope_utils so both agree to the last bit.
    """
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (1.0 / (np.float32(theta) ** exponent)).astype(np.float32)
    if scaling is None:
        return inv_freq, 1.0
    if scaling.kind == "linear":
        return (inv_freq / np.float32(scaling.factor)).astype(np.float32), 1.0
    if scaling.kind == "llama3":
        factor, lo, hi = scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor
        old_len = scaling.original_max_position
        low_wavelen, high_wavelen = old_len / lo, old_len / hi
        wavelen = (2 * math.pi / inv_freq).astype(np.float32)
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq).astype(np.float32)
        smooth = ((old_len / wavelen - lo) / (hi - lo)).astype(np.float32)
        smoothed = ((1 - smooth) * scaled / factor + smooth * scaled).astype(np.float32)
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    # YaRN: blend interpolated and extrapolated frequencies over a ramp of dimensions.
    factor = scaling.factor
    attn = scaling.attention_factor
    if attn is None:
        attn = 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0

    def correction_dim(rotations: float) -> float:
        return (head_dim * math.log(scaling.original_max_position / (rotations * 2 * math.pi))
                / (2 * math.log(theta)))

    low, high = correction_dim(scaling.beta_fast), correction_dim(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation_weight = (1 - ramp).astype(np.float32)
    pos_freqs = (np.float32(theta) ** exponent).astype(np.float32)
    inv_extra = (1.0 / pos_freqs).astype(np.float32)
    inv_inter = (1.0 / (np.float32(factor) * pos_freqs)).astype(np.float32)
    inv_freq = (inv_inter * (1 - extrapolation_weight) + inv_extra * extrapolation_weight)
    return inv_freq.astype(np.float32), float(attn)


def rope_tables(positions_BxT: jnp.ndarray, head_dim: int, theta: float,
                scaling: RopeScaling | None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos and sin tables [B, T, head_dim] (float32) for rotate-half RoPE."""
    inv_freq, attn_factor = inv_frequencies(head_dim, theta, scaling)
    freqs_BxTxH2 = positions_BxT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    emb_BxTxH = jnp.concatenate([freqs_BxTxH2, freqs_BxTxH2], axis=-1)
    return jnp.cos(emb_BxTxH) * attn_factor, jnp.sin(emb_BxTxH) * attn_factor


def apply_rope(x_BxTxNxH: jnp.ndarray, cos_BxTxH: jnp.ndarray,
               sin_BxTxH: jnp.ndarray) -> jnp.ndarray:
    half = x_BxTxNxH.shape[-1] // 2
    x1, x2 = x_BxTxNxH[..., :half], x_BxTxNxH[..., half:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    cos = cos_BxTxH[:, :, None, :].astype(x_BxTxNxH.dtype)
    sin = sin_BxTxH[:, :, None, :].astype(x_BxTxNxH.dtype)
    return x_BxTxNxH * cos + rotated * sin
