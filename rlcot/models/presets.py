"""Named model configurations: tiny CPU configs and the published checkpoints' architectures."""

from __future__ import annotations

from rlcot.models.config import ModelConfig, RopeScaling

_LLAMA3_SCALING_32 = RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)
_LLAMA3_SCALING_8 = RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)


def _gemma3_layers(n: int) -> tuple[str, ...]:
    return tuple("global" if (i + 1) % 6 == 0 else "local" for i in range(n))


def _qwen2(**kw) -> ModelConfig:
    return ModelConfig(family="qwen2", qkv_bias=True, rope_theta=1e6, max_position=32768,
                       head_dim=kw["d_model"] // kw["n_heads"], **kw)


def _qwen3(**kw) -> ModelConfig:
    return ModelConfig(family="qwen3", qk_norm=True, rope_theta=1e6, max_position=40960,
                       head_dim=128, vocab_size=151936, **kw)


def _llama(**kw) -> ModelConfig:
    kw.setdefault("head_dim", kw["d_model"] // kw["n_heads"])
    kw.setdefault("norm_eps", 1e-5)
    return ModelConfig(family="llama", **kw)


def _gemma3(**kw) -> ModelConfig:
    return ModelConfig(family="gemma3", qk_norm=True, sandwich_norms=True, embed_scale=True,
                       norm_offset=1.0, activation="gelu_tanh", head_dim=256,
                       query_scale=256 ** -0.5, local_rope_theta=10_000.0, rope_theta=1e6,
                       layer_types=_gemma3_layers(kw["n_layers"]), **kw)


PRESETS: dict[str, ModelConfig] = {
    # Tiny configs for CPU tests and toy studies (vocab set by the task's tokenizer).
    "tiny": _llama(vocab_size=256, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2,
                   mlp_dim=384, rope_theta=10_000.0, max_position=2048, norm_eps=1e-6),
    "tiny-gemma3": _gemma3(vocab_size=256, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2,
                           mlp_dim=384, sliding_window=16, max_position=2048).replace(
                               head_dim=32, query_scale=32 ** -0.5,
                               layer_types=("local", "global")),
    # Qwen2.5 (q/k/v bias).
    "qwen2.5-0.5b": _qwen2(vocab_size=151936, d_model=896, n_layers=24, n_heads=14,
                           n_kv_heads=2, mlp_dim=4864),
    "qwen2.5-1.5b": _qwen2(vocab_size=151936, d_model=1536, n_layers=28, n_heads=12,
                           n_kv_heads=2, mlp_dim=8960),
    "qwen2.5-7b": _qwen2(vocab_size=152064, d_model=3584, n_layers=28, n_heads=28,
                         n_kv_heads=4, mlp_dim=18944, tie_embeddings=False),
    "qwen2.5-math-1.5b": _qwen2(vocab_size=151936, d_model=1536, n_layers=28, n_heads=12,
                                n_kv_heads=2, mlp_dim=8960).replace(rope_theta=10_000.0,
                                                                    max_position=4096),
    "qwen2.5-math-7b": _qwen2(vocab_size=152064, d_model=3584, n_layers=28, n_heads=28,
                              n_kv_heads=4, mlp_dim=18944, tie_embeddings=False).replace(
                                  rope_theta=10_000.0, max_position=4096),
    # Qwen3 (q/k RMSNorm, head_dim 128).
    "qwen3-0.6b": _qwen3(d_model=1024, n_layers=28, n_heads=16, n_kv_heads=8, mlp_dim=3072),
    "qwen3-1.7b": _qwen3(d_model=2048, n_layers=28, n_heads=16, n_kv_heads=8, mlp_dim=6144),
    "qwen3-4b": _qwen3(d_model=2560, n_layers=36, n_heads=32, n_kv_heads=8, mlp_dim=9728),
    "qwen3-8b": _qwen3(d_model=4096, n_layers=36, n_heads=32, n_kv_heads=8, mlp_dim=12288,
                       tie_embeddings=False),
    # Llama 3.x (llama3 RoPE scaling).
    "llama-3.2-1b": _llama(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32,
                           n_kv_heads=8, mlp_dim=8192, rope_theta=500_000.0,
                           rope_scaling=_LLAMA3_SCALING_32, max_position=131072),
    "llama-3.2-3b": _llama(vocab_size=128256, d_model=3072, n_layers=28, n_heads=24,
                           n_kv_heads=8, mlp_dim=8192, rope_theta=500_000.0,
                           rope_scaling=_LLAMA3_SCALING_32, max_position=131072),
    "llama-3.1-8b": _llama(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32,
                           n_kv_heads=8, mlp_dim=14336, rope_theta=500_000.0,
                           rope_scaling=_LLAMA3_SCALING_8, max_position=131072,
                           tie_embeddings=False),
    # Gemma 3 (text decoder; 5 local layers per global one).
    "gemma-3-1b": _gemma3(vocab_size=262144, d_model=1152, n_layers=26, n_heads=4,
                          n_kv_heads=1, mlp_dim=6912, sliding_window=512, max_position=32768),
    "gemma-3-4b": _gemma3(vocab_size=262208, d_model=2560, n_layers=34, n_heads=8,
                          n_kv_heads=4, mlp_dim=10240, sliding_window=1024,
                          max_position=131072, rope_scaling=RopeScaling("linear", 8.0)),
    # SmolLM2 (Llama architecture, tied).
    "smollm2-135m": _llama(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                           mlp_dim=1536, rope_theta=100_000.0),
    "smollm2-360m": _llama(vocab_size=49152, d_model=960, n_layers=32, n_heads=15,
                           n_kv_heads=5, mlp_dim=2560, rope_theta=100_000.0),
    "smollm2-1.7b": _llama(vocab_size=49152, d_model=2048, n_layers=24, n_heads=32,
                           n_kv_heads=32, mlp_dim=8192, rope_theta=130_000.0),
}


def get_config(name: str, **overrides) -> ModelConfig:
    """A named config with field overrides, e.g. get_config('qwen2.5-0.5b', dtype='bfloat16')."""
    key = name.lower()
    if key not in PRESETS:
        raise KeyError(f"unknown model config {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[key].replace(name=key, **overrides)
