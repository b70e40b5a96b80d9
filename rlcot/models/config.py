"""Model configuration: one frozen dataclass covers Llama 3, Qwen2.5, Qwen3, Gemma 3 and SmolLM2."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax.numpy as jnp

Family = Literal["llama", "qwen2", "qwen3", "gemma3"]
LayerType = Literal["global", "local"]


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling as used by the supported checkpoints (HF `rope_scaling`)."""
    kind: Literal["linear", "llama3", "yarn"]
    factor: float
    low_freq_factor: float = 1.0          # llama3
    high_freq_factor: float = 4.0         # llama3
    original_max_position: int = 8192     # llama3, yarn
    beta_fast: float = 32.0               # yarn
    beta_slow: float = 1.0                # yarn
    attention_factor: float | None = None  # yarn; None -> 0.1 ln(factor) + 1
    truncate: bool = True                 # yarn

    def __post_init__(self):
        if self.kind not in ("linear", "llama3", "yarn"):
            raise ValueError(f"unknown rope scaling kind {self.kind!r}")
        if self.factor <= 0:
            raise ValueError(f"rope scaling factor must be > 0, got {self.factor}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer. Hashable: used as a static jit argument."""
    family: Family
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_dim: int
    activation: Literal["silu", "gelu_tanh"] = "silu"
    norm_eps: float = 1e-6
    norm_offset: float = 0.0        # Gemma stores RMSNorm scales as w and applies (1 + w)
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    local_rope_theta: float = 10_000.0   # Gemma 3 sliding-window layers
    qkv_bias: bool = False               # Qwen2.5
    qk_norm: bool = False                # Qwen3, Gemma 3
    sandwich_norms: bool = False         # Gemma 3: post-attention and post-MLP norms too
    embed_scale: bool = False            # Gemma: embeddings multiplied by sqrt(d_model)
    tie_embeddings: bool = True
    query_scale: float | None = None     # attention logits scale; None -> head_dim ** -0.5
    sliding_window: int | None = None
    layer_types: tuple[LayerType, ...] | None = None  # None -> all global
    final_logit_softcap: float | None = None
    attn_logit_softcap: float | None = None
    max_position: int = 8192
    dtype: str = "float32"          # activations / compute
    param_dtype: str = "float32"
    name: str = ""

    def __post_init__(self):
        for f in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                  "mlp_dim"):
            if getattr(self, f) < 1:
                raise ValueError(f"ModelConfig.{f} must be >= 1, got {getattr(self, f)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of "
                             f"n_kv_heads={self.n_kv_heads} (grouped-query attention)")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.layer_types is not None:
            if len(self.layer_types) != self.n_layers:
                raise ValueError(f"layer_types has {len(self.layer_types)} entries for "
                                 f"{self.n_layers} layers")
            bad = set(self.layer_types) - {"global", "local"}
            if bad:
                raise ValueError(f"layer_types entries must be 'global' or 'local', got {bad}")
            if "local" in self.layer_types and not self.sliding_window:
                raise ValueError("local layers need sliding_window > 0")
        for f in ("dtype", "param_dtype"):
            if getattr(self, f) not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"ModelConfig.{f} must be float32/bfloat16/float16, "
                                 f"got {getattr(self, f)!r}")

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> Any:
        return jnp.dtype(self.param_dtype)

    @property
    def local_layers(self) -> tuple[bool, ...]:
        if self.layer_types is None:
            return (False,) * self.n_layers
        return tuple(t == "local" for t in self.layer_types)

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count from the shapes alone (matches the model's state)."""
        d, h, n, k, f, L = (self.d_model, self.head_dim, self.n_heads, self.n_kv_heads,
                            self.mlp_dim, self.n_layers)
        attn = d * n * h + 2 * d * k * h + n * h * d
        if self.qkv_bias:
            attn += n * h + 2 * k * h
        if self.qk_norm:
            attn += 2 * h
        norms = d * (4 if self.sandwich_norms else 2)
        per_layer = attn + 3 * d * f + norms
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return L * per_layer + d + (emb if include_embeddings else 0)
