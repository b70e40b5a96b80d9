"""The toy base model: a tiny transformer pre-trained on the world's corpus with rlcot.sft,
reproducible (same configs -> same parameters bitwise on one machine) and cached on disk."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rlcot import sft
from rlcot.models.config import ModelConfig
from rlcot.models.presets import get_config
from rlcot.models.transformer import abstract_model, init_params
from rlcot.tokenizer.spm import SentencePieceTokenizer
from rlcot.toyworld import cache
from rlcot.toyworld.corpus import WorldConfig, build_corpus, user_defined_symbols
from rlcot.toyworld.tokenizer import cached_tokenizer, load_tokenizer

log = logging.getLogger(__name__)

# Documents the tokenizer is trained on (every piece of the world occurs in far fewer).
TOKENIZER_DOCS = 5_000
# Code whose changes change what a cached base model holds.
_SOURCES = ("toyworld/tasks.py", "toyworld/solutions.py", "toyworld/corpus.py",
            "toyworld/pretrain.py", "toyworld/tokenizer.py", "sft.py")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Model size and training of the base model. The model is the `preset` config with the
    given fields overridden and the tokenizer's vocabulary. remat recomputes activations in
    the backward pass, which on CPU is also faster for models this small. Each batch's
    `short_rows` shortest documents and its other documents are padded separately (to
    multiples of length_multiple) and go through one update together: with checked
    solutions ~1.7x longer than the others, this cuts the padded tokens by ~28%. sort_group
    > 1 sorts groups of that many batches by length (less padding still, but batches of one
    behaviour, which stalls learning: measured)."""

    preset: str = "tiny"
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 32
    mlp_dim: int = 384
    max_position: int = 512
    steps: int = 600
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    end_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    remat: bool = True
    length_multiple: int = 16
    short_rows: int = 48
    sort_group: int = 1
    seed: int = 0

    def __post_init__(self):
        for f in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "mlp_dim",
                  "max_position", "steps", "batch_size", "length_multiple", "sort_group"):
            if getattr(self, f) < 1:
                raise ValueError(f"PretrainConfig.{f} must be >= 1, got {getattr(self, f)}")
        if not 0 <= self.short_rows < self.batch_size:
            raise ValueError(f"short_rows must be in [0, batch_size={self.batch_size}), "
                             f"got {self.short_rows}")

    def model_config(self, vocab_size: int) -> ModelConfig:
        return get_config(self.preset, vocab_size=vocab_size, n_layers=self.n_layers,
                          d_model=self.d_model, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                          head_dim=self.head_dim, mlp_dim=self.mlp_dim,
                          max_position=self.max_position)

    def sft_config(self) -> sft.SFTConfig:
        return sft.SFTConfig(learning_rate=self.learning_rate, total_steps=self.steps,
                             warmup_steps=min(self.warmup_steps, self.steps),
                             end_lr_ratio=self.end_lr_ratio, weight_decay=self.weight_decay,
                             max_grad_norm=self.max_grad_norm, remat=self.remat)


@dataclasses.dataclass
class BaseModel:
    """A pre-trained toy model with its tokenizer. info: configs, cache key, training time,
    loss curve, tokens per sequence; `cached` says whether it came from disk."""
    cfg: ModelConfig
    graphdef: Any
    params: Any
    tokenizer: SentencePieceTokenizer
    info: dict[str, Any]
    cached: bool


def cache_key(world: WorldConfig, pretrain: PretrainConfig) -> str:
    package = Path(__file__).parents[1]
    return cache.content_key(world.to_dict(), dataclasses.asdict(pretrain),
                             cache.source_digest([package / f for f in _SOURCES]))


def batches(lengths: np.ndarray, batch_size: int, steps: int, seed: int,
            group: int = 1) -> list[np.ndarray]:
    """`steps` batches of document indices: each epoch a seeded permutation, cut into groups of
    `group` batches sorted by length (group 1: plain shuffled batches), whose batches are
    then shuffled."""
    n = len(lengths)
    if n < batch_size:
        raise ValueError(f"corpus of {n} documents is smaller than batch_size={batch_size}")
    rng = np.random.default_rng([seed, 7])
    out: list[np.ndarray] = []
    while len(out) < steps:
        perm = rng.permutation(n)
        perm = perm[:n // batch_size * batch_size]
        epoch = []
        for start in range(0, len(perm), batch_size * group):
            chunk = perm[start:start + batch_size * group]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            epoch += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
        out += [epoch[i] for i in rng.permutation(len(epoch))]
    return out[:steps]


@functools.lru_cache(maxsize=4)
def _optimizer_and_step(cfg: sft.SFTConfig):
    """One jitted step per SFT config, so a second training in a process does not recompile."""
    optimizer = sft.make_optimizer(cfg)
    return optimizer, sft.make_train_step(optimizer, cfg.micro_batches, cfg.remat)


def pretrain(world: WorldConfig, pretrain_cfg: PretrainConfig,
             tokenizer: SentencePieceTokenizer, log_every: int = 50) -> tuple[Any, Any, dict]:
    """Trains the base model from scratch: (graphdef, params, info)."""
    t_start = time.perf_counter()
    docs = build_corpus(world)
    prompts = tokenizer.encode_batch([d.prompt for d in docs])
    completions = tokenizer.encode_batch([d.completion for d in docs])
    lengths = np.array([len(p) + len(c) + 1 for p, c in zip(prompts, completions)])
    cfg = pretrain_cfg.model_config(tokenizer.vocab_size)
    if lengths.max() > cfg.max_position:
        raise ValueError(f"the longest document has {lengths.max()} tokens, more than "
                         f"max_position={cfg.max_position}")
    graphdef, params = init_params(cfg, pretrain_cfg.seed)
    optimizer, step = _optimizer_and_step(pretrain_cfg.sft_config())
    opt_state = optimizer.init(params)
    m = pretrain_cfg.length_multiple

    def collate(idx):
        width = -(-int(lengths[idx].max()) // m) * m
        return sft.collate([(prompts[j], completions[j]) for j in idx], pad_id=tokenizer.pad_id,
                           eos_id=tokenizer.eos_id, length=width)

    t_train, cpu_train = time.perf_counter(), time.process_time()
    curve, recent = [], []
    for i, idx in enumerate(batches(lengths, pretrain_cfg.batch_size, pretrain_cfg.steps,
                                    pretrain_cfg.seed, pretrain_cfg.sort_group)):
        k = pretrain_cfg.short_rows
        batch = (collate(idx[:k]), collate(idx[k:])) if k else collate(idx)
        params, opt_state, metrics = step(graphdef, params, opt_state, batch)
        recent.append(metrics["loss"])
        if (i + 1) % log_every == 0 or i + 1 == pretrain_cfg.steps:
            loss = float(np.mean(jax.device_get(recent)))
            curve.append((i + 1, loss))
            recent = []
            log.info("toy base model: step %d/%d loss %.4f (%.0fs)", i + 1, pretrain_cfg.steps,
                     loss, time.perf_counter() - t_train)
    jax.block_until_ready(params)
    info = {
        "world": world.to_dict(), "pretrain": dataclasses.asdict(pretrain_cfg),
        "model": dataclasses.asdict(cfg), "vocab_size": tokenizer.vocab_size,
        "loss_curve": curve, "final_loss": curve[-1][1],
        "train_s": time.perf_counter() - t_train, "total_s": time.perf_counter() - t_start,
        # CPU seconds of this process: wall time on a busy machine overstates the cost.
        "train_cpu_s": time.process_time() - cpu_train,
        "corpus_docs": len(docs), "tokens_per_sequence_mean": float(lengths.mean()),
        "tokens_per_sequence_max": int(lengths.max()),
        "completion_tokens_mean": float(np.mean([len(c) + 1 for c in completions])),
        "prompt_tokens_mean": float(np.mean([len(p) for p in prompts])),
        "documents_seen": pretrain_cfg.steps * pretrain_cfg.batch_size,
        "jax": jax.__version__, "backend": jax.default_backend(),
    }
    return graphdef, params, info


def load_base_model(world: WorldConfig = WorldConfig(),
                    pretrain_cfg: PretrainConfig = PretrainConfig(),
                    cache_dir: str | os.PathLike | None = None, force: bool = False) -> BaseModel:
    """The world's base model: from the cache when present (unless force), else trained
    and written there. The tokenizer is stored beside the parameters."""
    key = cache_key(world, pretrain_cfg)
    root = cache.cache_dir(cache_dir) / f"base-{key}"
    files = {"params": root / "params.npz", "tokenizer": root / "tokenizer.model",
             "info": root / "info.json"}
    if not force and all(p.is_file() for p in files.values()):
        tok = load_tokenizer(files["tokenizer"])
        cfg = pretrain_cfg.model_config(tok.vocab_size)
        graphdef, abstract = abstract_model(cfg)
        params = cache.load_params(files["params"], abstract)
        info = json.loads(files["info"].read_text())
        return BaseModel(cfg, graphdef, params, tok, info, cached=True)
    t0 = time.perf_counter()
    docs = build_corpus(world, min(world.corpus_size, TOKENIZER_DOCS))
    tok = cached_tokenizer([d.prompt + d.completion for d in docs], world.vocab_size,
                           user_defined_symbols(), cache_dir)
    tokenizer_s = time.perf_counter() - t0
    graphdef, params, info = pretrain(world, pretrain_cfg, tok)
    info.update(cache_key=key, tokenizer_s=tokenizer_s)
    # Parameters and tokenizer first, info last: info.json marks a complete entry.
    cache.save_params(files["params"], params)
    cache.write_atomic(files["tokenizer"], tok.model_proto)
    cache.write_atomic(files["info"], json.dumps(info, indent=1).encode())
    return BaseModel(pretrain_cfg.model_config(tok.vocab_size), graphdef, params, tok, info,
                     cached=False)
