"""Tiny configs of each model family for the golden-logits tests, and their seeded weights.

The weights are generated from a fixed seed with numpy alone (no torch), in a fixed order, so
the test can recreate them in CI; `make_goldens.py` runs Hugging Face transformers on the same
weights to produce the expected logits.
"""

from __future__ import annotations

import numpy as np

_BASE = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
             max_position_embeddings=256, torch_dtype="float32")

FAMILIES: dict[str, dict] = {
    # Llama 3.x: untied embeddings, llama3 RoPE scaling.
    "llama3": dict(_BASE, model_type="llama", architectures=["LlamaForCausalLM"],
                   hidden_act="silu", tie_word_embeddings=False, rope_theta=500000.0,
                   rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                     high_freq_factor=4.0, original_max_position_embeddings=32),
                   attention_bias=False, mlp_bias=False),
    # SmolLM2: Llama architecture, tied embeddings, 3 KV heads.
    "smollm2": dict(_BASE, model_type="llama", architectures=["LlamaForCausalLM"],
                    num_attention_heads=6, num_key_value_heads=3, head_dim=8, hidden_size=48,
                    hidden_act="silu", tie_word_embeddings=True, rope_theta=100000.0,
                    attention_bias=False, mlp_bias=False),
    # Qwen2.5: q/k/v bias, untied (7B style).
    "qwen2": dict(_BASE, model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                  hidden_act="silu", tie_word_embeddings=False, rope_theta=1000000.0,
                  use_sliding_window=False),
    # Qwen3: q/k RMSNorm, tied, head_dim != hidden/heads, YaRN scaling.
    "qwen3": dict(_BASE, model_type="qwen3", architectures=["Qwen3ForCausalLM"],
                  hidden_act="silu", tie_word_embeddings=True, rope_theta=1000000.0,
                  head_dim=24, attention_bias=False, use_sliding_window=False,
                  rope_scaling=dict(rope_type="yarn", factor=4.0,
                                    original_max_position_embeddings=64)),
    # Gemma 3: GeGLU, q/k norm, sandwich norms, embedding scale, local/global layers with their
    # own RoPE bases (linear scaling on global), query_pre_attn_scalar != head_dim.
    "gemma3": dict(_BASE, model_type="gemma3_text", architectures=["Gemma3ForCausalLM"],
                   hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
                   rope_theta=1000000.0, rope_local_base_freq=10000.0,
                   rope_scaling=dict(rope_type="linear", factor=8.0),
                   query_pre_attn_scalar=24, sliding_window=4,
                   layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                   final_logit_softcapping=None, attn_logit_softcapping=None,
                   pad_token_id=0, bos_token_id=2, eos_token_id=1),
}

SEED = 1234
# Three rows of 12 tokens: left-padded, full, right-padded.
VALID = np.array([[0] * 3 + [1] * 9, [1] * 12, [1] * 7 + [0] * 5], dtype=bool)


def tensor_value(rng: np.random.Generator, name: str, shape: tuple[int, ...],
                 gemma: bool) -> np.ndarray:
    """Norm scales near their identity value, everything else with a std large enough that
    logits are far from uniform."""
    if name.endswith("norm.weight"):
        base = 0.0 if gemma else 1.0
        return (base + 0.2 * rng.standard_normal(shape)).astype(np.float32)
    std = 0.1 if name.endswith("bias") else 0.25 if "embed" in name or "lm_head" in name else 0.15
    return (std * rng.standard_normal(shape)).astype(np.float32)


def make_weights(family: str, specs: list[tuple[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    gemma = family == "gemma3"
    return {name: tensor_value(rng, name, tuple(shape), gemma) for name, shape in specs}


def make_inputs(vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED + 1)
    tokens = rng.integers(3, vocab_size, size=VALID.shape).astype(np.int32)
    tokens = np.where(VALID, tokens, 0).astype(np.int32)
    positions = np.maximum(np.cumsum(VALID, axis=1) - 1, 0) * VALID
    return tokens, VALID, positions.astype(np.int32)
