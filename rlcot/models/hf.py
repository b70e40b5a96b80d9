"""Hugging Face checkpoints: config.json <-> ModelConfig, safetensors <-> sharded parameters."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np
from flax import nnx

from rlcot.models.config import ModelConfig, RopeScaling
from rlcot.models.transformer import abstract_model

log = logging.getLogger(__name__)

_GEMMA3_TEXT_DEFAULTS = dict(
    vocab_size=262_208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
    num_attention_heads=8, num_key_value_heads=4, head_dim=256, rms_norm_eps=1e-6,
    rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, query_pre_attn_scalar=256,
    sliding_window=4096, sliding_window_pattern=6, max_position_embeddings=131_072,
    final_logit_softcapping=None, attn_logit_softcapping=None, hidden_activation="gelu_pytorch_tanh",
    tie_word_embeddings=True,
)
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM", "gemma3": "Gemma3ForCausalLM"}
_HF_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text"}


# ---- config.json --------------------------------------------------------------------------

def _rope_scaling(d: Mapping[str, Any] | None) -> RopeScaling | None:
    if not d:
        return None
    kind = d.get("rope_type", d.get("type", "default"))
    if kind == "default":
        return None
    if kind not in ("linear", "llama3", "yarn"):
        raise NotImplementedError(f"RoPE scaling {kind!r} is not supported (linear, llama3, yarn)")
    kw: dict[str, Any] = dict(kind=kind, factor=float(d["factor"]))
    if kind == "llama3":
        kw.update(low_freq_factor=float(d["low_freq_factor"]),
                  high_freq_factor=float(d["high_freq_factor"]),
                  original_max_position=int(d["original_max_position_embeddings"]))
    if kind == "yarn":
        kw.update(original_max_position=int(d["original_max_position_embeddings"]),
                  beta_fast=float(d.get("beta_fast") or 32.0),
                  beta_slow=float(d.get("beta_slow") or 1.0),
                  attention_factor=d.get("attention_factor"),
                  truncate=bool(d.get("truncate", True)))
    return RopeScaling(**kw)


def _rope_fields(c: Mapping[str, Any], layer_type: str | None) -> tuple[float | None, dict | None]:
    """(theta, scaling dict) from either the old (rope_theta/rope_scaling) or new config style."""
    params = c.get("rope_parameters")
    if params:
        if layer_type is not None and layer_type in params:
            params = params[layer_type]
        return params.get("rope_theta"), params
    return c.get("rope_theta"), c.get("rope_scaling")


def config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """ModelConfig from a Hugging Face config.json dict (Llama, Qwen2, Qwen3, Gemma 3)."""
    model_type = hf.get("model_type")
    if model_type == "gemma3":  # multimodal wrapper: the language model's config is nested
        hf = {**hf.get("text_config", {}), "model_type": "gemma3_text"}
        model_type = "gemma3_text"
    c = dict(hf)
    if model_type == "gemma3_text":
        c = {**_GEMMA3_TEXT_DEFAULTS, **{k: v for k, v in hf.items() if v is not None or
                                        k.endswith("softcapping")}}
    family = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
              "gemma3_text": "gemma3"}.get(model_type)
    if family is None:
        raise NotImplementedError(f"model_type {model_type!r} is not supported; rlcot covers "
                                  "llama, qwen2, qwen3, gemma3/gemma3_text")
    if family == "llama" and (c.get("attention_bias") or c.get("mlp_bias")):
        raise NotImplementedError("Llama checkpoints with attention_bias/mlp_bias are not supported")
    if family == "qwen2" and c.get("use_sliding_window"):
        raise NotImplementedError("Qwen2 use_sliding_window=True is not supported")
    n_heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // n_heads
    act = c.get("hidden_activation") or c.get("hidden_act", "silu")
    if act not in ("silu", "gelu_pytorch_tanh"):
        raise NotImplementedError(f"activation {act!r} is not supported (silu, gelu_pytorch_tanh)")
    kw: dict[str, Any] = dict(
        family=family, vocab_size=c["vocab_size"], d_model=c["hidden_size"],
        n_layers=c["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=c.get("num_key_value_heads") or n_heads, head_dim=head_dim,
        mlp_dim=c["intermediate_size"], norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        activation="silu" if act == "silu" else "gelu_tanh",
        tie_embeddings=bool(c.get("tie_word_embeddings", family != "llama")),
        max_position=int(c.get("max_position_embeddings", 8192)),
        qkv_bias=family == "qwen2", qk_norm=family in ("qwen3", "gemma3"),
        name=c.get("_name_or_path", ""))
    if family == "gemma3":
        theta, scaling = _rope_fields(c, "full_attention")
        local_theta = (_rope_fields(c, "sliding_attention")[0] if c.get("rope_parameters")
                       else c.get("rope_local_base_freq"))
        layer_types = c.get("layer_types")
        if layer_types is None:
            pattern = c.get("sliding_window_pattern") or 6
            layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                           for i in range(kw["n_layers"])]
        kw.update(norm_offset=1.0, sandwich_norms=True, embed_scale=True,
                  query_scale=float(c["query_pre_attn_scalar"]) ** -0.5,
                  sliding_window=int(c["sliding_window"]),
                  layer_types=tuple("local" if t == "sliding_attention" else "global"
                                    for t in layer_types),
                  local_rope_theta=float(local_theta or c.get("rope_local_base_freq", 10_000.0)),
                  final_logit_softcap=c.get("final_logit_softcapping"),
                  attn_logit_softcap=c.get("attn_logit_softcapping"))
    else:
        theta, scaling = _rope_fields(c, None)
    kw.update(rope_theta=float(theta or 10_000.0), rope_scaling=_rope_scaling(scaling))
    kw.update(overrides)
    return ModelConfig(**kw)


def _query_pre_attn_scalar(cfg: ModelConfig) -> int | float:
    scalar = round((cfg.query_scale or cfg.head_dim ** -0.5) ** -2, 6)
    return int(scalar) if scalar == int(scalar) else scalar  # transformers wants an int


def config_to_hf(cfg: ModelConfig, dtype: str = "bfloat16") -> dict[str, Any]:
    """A config.json dict that transformers loads as the matching *ForCausalLM."""
    out: dict[str, Any] = dict(
        architectures=[_ARCHITECTURES[cfg.family]], model_type=_HF_MODEL_TYPE[cfg.family],
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
        max_position_embeddings=cfg.max_position, torch_dtype=dtype,
        hidden_act="silu" if cfg.activation == "silu" else "gelu_pytorch_tanh",
        attention_dropout=0.0)
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        rs: dict[str, Any] = {"rope_type": s.kind, "factor": s.factor}
        if s.kind == "llama3":
            rs.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                      original_max_position_embeddings=s.original_max_position)
        if s.kind == "yarn":
            rs.update(original_max_position_embeddings=s.original_max_position,
                      beta_fast=s.beta_fast, beta_slow=s.beta_slow, truncate=s.truncate)
            if s.attention_factor is not None:
                rs["attention_factor"] = s.attention_factor
        out["rope_scaling"] = rs
    if cfg.family == "llama":
        out.update(attention_bias=False, mlp_bias=False)
    if cfg.family == "gemma3":
        out.update(hidden_activation=out.pop("hidden_act"),
                   query_pre_attn_scalar=_query_pre_attn_scalar(cfg),
                   sliding_window=cfg.sliding_window, rope_local_base_freq=cfg.local_rope_theta,
                   layer_types=["sliding_attention" if t == "local" else "full_attention"
                                for t in (cfg.layer_types or ("global",) * cfg.n_layers)],
                   final_logit_softcapping=cfg.final_logit_softcap,
                   attn_logit_softcapping=cfg.attn_logit_softcap)
    return out


# ---- tensor name mapping ------------------------------------------------------------------
# Each entry: our parameter path -> (HF name, HF->ours transform, ours->HF transform), where the
# transforms see one layer's tensor. {i} is the layer index.

def _tensor_map(cfg: ModelConfig) -> dict[str, tuple[str, Callable, Callable]]:
    d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    ident = (lambda w: w, lambda w: w)
    transpose = (lambda w: w.T, lambda w: w.T)

    def proj(heads):  # [heads*h, d] <-> [d, heads, h]
        return (lambda w: w.reshape(heads, h, d).transpose(2, 0, 1),
                lambda w: w.transpose(1, 2, 0).reshape(heads * h, d))

    def bias(heads):
        return (lambda w: w.reshape(heads, h), lambda w: w.reshape(heads * h))

    gemma = cfg.family == "gemma3"
    layer = "model.layers.{i}."
    m: dict[str, tuple[str, tuple[Callable, Callable]]] = {
        "embed": ("model.embed_tokens.weight", ident),
        "final_norm": ("model.norm.weight", ident),
        "blocks/attn_norm": (layer + "input_layernorm.weight", ident),
        "blocks/q": (layer + "self_attn.q_proj.weight", proj(n)),
        "blocks/k": (layer + "self_attn.k_proj.weight", proj(k)),
        "blocks/v": (layer + "self_attn.v_proj.weight", proj(k)),
        "blocks/o": (layer + "self_attn.o_proj.weight",
                     (lambda w: w.reshape(d, n, h).transpose(1, 2, 0),
                      lambda w: w.transpose(2, 0, 1).reshape(d, n * h))),
        "blocks/mlp_norm": (layer + ("pre_feedforward_layernorm.weight" if gemma
                                     else "post_attention_layernorm.weight"), ident),
        "blocks/gate": (layer + "mlp.gate_proj.weight", transpose),
        "blocks/up": (layer + "mlp.up_proj.weight", transpose),
        "blocks/down": (layer + "mlp.down_proj.weight", transpose),
    }
    if cfg.qkv_bias:
        m["blocks/q_bias"] = (layer + "self_attn.q_proj.bias", bias(n))
        m["blocks/k_bias"] = (layer + "self_attn.k_proj.bias", bias(k))
        m["blocks/v_bias"] = (layer + "self_attn.v_proj.bias", bias(k))
    if cfg.qk_norm:
        m["blocks/q_norm"] = (layer + "self_attn.q_norm.weight", ident)
        m["blocks/k_norm"] = (layer + "self_attn.k_norm.weight", ident)
    if cfg.sandwich_norms:
        m["blocks/post_attn_norm"] = (layer + "post_attention_layernorm.weight", ident)
        m["blocks/post_mlp_norm"] = (layer + "post_feedforward_layernorm.weight", ident)
    if not cfg.tie_embeddings:
        m["lm_head"] = ("lm_head.weight", transpose)
    return {path: (name, fns[0], fns[1]) for path, (name, fns) in m.items()}


def _flat_vars(state: nnx.State) -> dict[str, Any]:
    return {"/".join(str(p) for p in path): v for path, v in nnx.to_flat_state(state)}


class _SafetensorsDir:
    """Lazy reader over a checkpoint directory's safetensors files (single or sharded)."""

    def __init__(self, path: Path):
        from safetensors import safe_open
        index = path / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
        else:
            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"no *.safetensors files in {path}")
            weight_map = {}
            for f in files:
                with safe_open(f, framework="numpy") as sf:
                    weight_map.update({name: f.name for name in sf.keys()})
        self.path, self.weight_map = path, weight_map
        self._open: dict[str, Any] = {}
        self._safe_open = safe_open
        names = set(weight_map)
        # Gemma 3 multimodal checkpoints nest the language model under one of two prefixes.
        self.prefix = ""
        for p in ("", "language_model.", "model.language_model."):
            key = (p + "model.embed_tokens.weight" if p != "model.language_model."
                   else "model.language_model.embed_tokens.weight")
            if key in names:
                self.prefix = p
                break
        else:
            raise KeyError(f"{path}: no embed_tokens weight found; is this a decoder-only LM?")

    def resolve(self, name: str) -> str:
        if self.prefix == "model.language_model.":
            return ("model.language_model." + name[len("model."):] if name.startswith("model.")
                    else name)
        return self.prefix + name

    def get(self, name: str) -> np.ndarray:
        full = self.resolve(name)
        if full not in self.weight_map:
            raise KeyError(f"tensor {full!r} missing from checkpoint {self.path}")
        fname = self.weight_map[full]
        if fname not in self._open:
            self._open[fname] = self._safe_open(self.path / fname, framework="numpy")
        return self._open[fname].get_tensor(full)


def load_hf(path: str | Path, *, mesh: jax.sharding.Mesh | None = None, rules: Any = None,
            **config_overrides: Any) -> tuple[ModelConfig, nnx.GraphDef, nnx.State]:
    """Loads a HF checkpoint directory; each tensor goes straight into its sharding.

    config_overrides (e.g. param_dtype='bfloat16') apply on top of config.json.
    """
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
    cfg = config_from_hf(json.loads((path / "config.json").read_text()), **config_overrides)
    graphdef, params = load_params(cfg, _SafetensorsDir(path).get, mesh=mesh, rules=rules)
    return cfg, graphdef, params


def load_params(cfg: ModelConfig, get_tensor: Callable[[str], np.ndarray], *,
                mesh: jax.sharding.Mesh | None = None, rules: Any = None
                ) -> tuple[nnx.GraphDef, nnx.State]:
    """Model parameters from HF-named host tensors (`get_tensor(name)`), placed in their shardings.

    Every device shard is filled from host memory one parameter at a time, so the whole model
    is never materialised on one host.
    """
    from rlcot.sharding import TRAIN_RULES, make_mesh, state_shardings
    graphdef, abstract = abstract_model(cfg)
    if mesh is None:
        mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    shardings = _flat_vars(state_shardings(abstract, mesh, TRAIN_RULES if rules is None else rules))
    tmap = _tensor_map(cfg)
    missing = set(_flat_vars(abstract)) - set(tmap)
    if missing:
        raise KeyError(f"no HF mapping for parameters {sorted(missing)}")
    loaded = []
    for path_t, var in nnx.to_flat_state(abstract):
        p = "/".join(str(x) for x in path_t)
        name, to_ours, _ = tmap[p]
        shape, dtype = var.get_value().shape, var.get_value().dtype
        if p.startswith("blocks/"):
            host = np.stack([to_ours(get_tensor(name.format(i=i))) for i in range(cfg.n_layers)])
        else:
            host = to_ours(get_tensor(name))
        if host.shape != shape:
            raise ValueError(f"{p} ({name}): checkpoint shape {host.shape} != model shape {shape}")
        host = host.astype(dtype)
        array = jax.make_array_from_callback(shape, shardings[p], lambda idx, h=host: h[idx])
        loaded.append((path_t, var.replace(array)))
        del host
    return graphdef, nnx.from_flat_state(loaded)


def _to_host(x: jax.Array) -> np.ndarray:
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def hf_tensors(cfg: ModelConfig, params: nnx.State) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, host array) pairs, one parameter (all its layers) on the host at a time."""
    tmap = _tensor_map(cfg)
    for p, var in _flat_vars(params).items():
        name, _, to_hf = tmap[p]
        host = _to_host(var.get_value() if isinstance(var, nnx.Variable) else var)
        if p.startswith("blocks/"):
            for i in range(cfg.n_layers):
                yield name.format(i=i), np.ascontiguousarray(to_hf(host[i]))
        else:
            yield name, np.ascontiguousarray(to_hf(host))


def save_hf(path: str | Path, cfg: ModelConfig, params: nnx.State, *, dtype: str = "bfloat16",
            tokenizer_dir: str | Path | None = None, max_shard_bytes: int = 2 << 30) -> Path:
    """Writes config.json + safetensors (sharded with an index when large) that transformers loads.

    Only process 0 writes in a multi-host run; every process must call it (gathers are
    collective). tokenizer_dir: a directory whose tokenizer files are copied beside the weights.
    """
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
    from safetensors.numpy import save_file
    path = Path(path)
    np_dtype = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32,
                "float16": np.float16}[dtype]
    writer = jax.process_index() == 0
    if writer:
        path.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, arr in hf_tensors(cfg, params):
        arr = arr.astype(np_dtype)
        if size and size + arr.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
    if not writer:
        return path
    total = sum(a.nbytes for s in shards for a in s.values())
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for j, shard in enumerate(shards):
            fname = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(path / fname), metadata={"format": "pt"})
            weight_map.update({name: fname for name in shard})
        (path / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (path / "config.json").write_text(json.dumps(config_to_hf(cfg, dtype), indent=2))
    if tokenizer_dir is not None:
        for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                  "special_tokens_map.json", "generation_config.json", "chat_template.jinja"):
            if (Path(tokenizer_dir) / f).exists():
                shutil.copy(Path(tokenizer_dir) / f, path / f)
    log.info("saved %s (%.1f MB in %d file(s))", path, total / 1e6, len(shards))
    return path

