"""LoRA adapters on the transformer's projections: settings, initialisation, merging and sizes.

Functional, for every model family: the adapters are a separate `nnx.State`
{projection: {"a": A, "b": B}} beside the base parameters. Train steps run the adapted model as
`Adapted(base, adapters, scale)`, which the decoder applies inside each adapted projection,
x W + scale * (x A) B (rlcot.models.transformer.lora_delta), and differentiate with respect to
the adapters only: the base is an input of the step and never enters the train state, the
optimizer or a checkpoint; the KL reference is the base itself. The sampler and exports take
the merged weights W + scale * A B (`merge`). A [layers, *in, rank] and B [layers, rank, *out]
(in / out: the projection's input and output axes, e.g. q: in (embed,), out (heads, head_dim))
carry the projection's logical axis names, so the training rules shard them like the weight
they adapt (the rank axis is replicated).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

# Adaptable projections of rlcot.models.transformer.Blocks -> number of input (contracted)
# axes after the leading `layers` axis.
PROJECTIONS: Mapping[str, int] = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}
HF_NAMES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate",
            "up_proj": "up", "down_proj": "down"}
INITS = ("kaiming", "gaussian")
CARD_KEY = "lora"  # model.json of a stage that trained adapters: their settings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """enabled: train adapters instead of every weight. rank r and alpha: the update is
    (alpha / r) * A @ B (alpha / sqrt(r) with rslora). targets: projections to adapt, of
    q, k, v, o (attention) and gate, up, down (MLP). init of A: 'kaiming' (uniform in
    +-1/sqrt(fan_in), PEFT's default) or 'gaussian' (normal, std 1/r, PEFT's 'gaussian'); B
    starts at 0 either way, so training starts from the base model exactly."""
    enabled: bool = False
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
    init: str = "kaiming"
    rslora: bool = False

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            raise ValueError(f"lora.enabled must be True or False, got {self.enabled!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora.rank must be an int >= 1, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) \
                or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"lora.alpha must be a number > 0, got {self.alpha!r}")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        object.__setattr__(self, "targets", targets)
        if not targets:
            raise ValueError(f"lora.targets is empty: name projections of {list(PROJECTIONS)}")
        unknown = [t for t in targets if t not in PROJECTIONS]
        if unknown:
            hint = {t: HF_NAMES[t] for t in unknown if t in HF_NAMES}
            raise ValueError(f"lora.targets: unknown projection(s) {unknown}; valid: "
                             f"{list(PROJECTIONS)}" + (f" (rlcot's names for {hint})" if hint
                                                       else ""))
        if len(set(targets)) != len(targets):
            raise ValueError(f"lora.targets names a projection twice: {list(targets)}")
        if self.init not in INITS:
            raise ValueError(f"lora.init must be one of {list(INITS)}, got {self.init!r}")

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def _split_axes(name: str, weight: nnx.Variable) -> tuple[tuple, tuple, tuple]:
    """(shape of the input axes, shape of the output axes, logical axes of the weight)."""
    shape = weight.get_value().shape
    n_in = PROJECTIONS[name]
    axes = getattr(weight, "axes", None) or (None,) * len(shape)
    return shape[1:1 + n_in], shape[1 + n_in:], tuple(axes)


def abstract_adapters(cfg: LoraConfig, base: Any) -> nnx.State:
    """The adapters' structure (ShapeDtypeStructs with axes) for a base state; float32."""
    out = {}
    for name in cfg.targets:
        w = base["blocks"][name]
        in_shape, out_shape, axes = _split_axes(name, w)
        L, n_in = w.get_value().shape[0], len(in_shape)
        out[name] = {
            "a": nnx.Param(jax.ShapeDtypeStruct((L, *in_shape, cfg.rank), jnp.float32),
                           axes=(axes[0], *axes[1:1 + n_in], None)),
            "b": nnx.Param(jax.ShapeDtypeStruct((L, cfg.rank, *out_shape), jnp.float32),
                           axes=(axes[0], None, *axes[1 + n_in:]))}
    return nnx.State(out)


def init_adapters(cfg: LoraConfig, base: Any, seed: int, *, mesh: jax.sharding.Mesh | None = None,
                  rules: Any = None) -> nnx.State:
    """Fresh adapters (A random by `cfg.init`, B = 0), in the training shardings with a mesh."""
    abstract = abstract_adapters(cfg, base)

    def make():
        key = jax.random.key(seed)
        out = {}
        for i, name in enumerate(cfg.targets):
            a, b = abstract[name]["a"], abstract[name]["b"]
            shape_a = a.get_value().shape
            fan_in = math.prod(shape_a[1:-1])
            k = jax.random.fold_in(key, i)
            if cfg.init == "kaiming":
                bound = 1.0 / math.sqrt(fan_in)
                value_a = jax.random.uniform(k, shape_a, jnp.float32, -bound, bound)
            else:
                value_a = jax.random.normal(k, shape_a, jnp.float32) / cfg.rank
            out[name] = {"a": a.replace(value_a),
                         "b": b.replace(jnp.zeros(b.get_value().shape, jnp.float32))}
        return nnx.State(out)

    if mesh is None:
        return jax.jit(make)()
    from rlcot.sharding import TRAIN_RULES, state_shardings
    return jax.jit(make, out_shardings=state_shardings(
        abstract, mesh, TRAIN_RULES if rules is None else rules))()


def delta(a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """scale * A @ B in float32, shaped [layers, *in, *out] like the weight it adds to."""
    L, r = a.shape[0], a.shape[-1]
    a_LxIxR = a.reshape(L, -1, r).astype(jnp.float32)
    b_LxRxO = b.reshape(L, r, -1).astype(jnp.float32)
    d_LxIxO = jnp.einsum("lir,lro->lio", a_LxIxR, b_LxRxO)
    return (scale * d_LxIxO).reshape(a.shape[:-1] + b.shape[2:])


def merge(base: Any, adapters: Any, scale: float) -> Any:
    """The base state with W + scale * A @ B for every adapted projection (pure, jittable;
    differentiable with respect to the adapters). The sum is taken in float32, then cast to
    the weight's dtype."""
    out = jax.tree.map(lambda x: x, base, is_leaf=lambda x: isinstance(x, nnx.Variable))
    for name, ab in adapters.items():
        w = base["blocks"][name]
        value = w.get_value()
        merged = value.astype(jnp.float32) + delta(ab["a"].get_value(), ab["b"].get_value(),
                                                  scale)
        out["blocks"][name] = w.replace(merged.astype(value.dtype))
    return out


class Adapted(NamedTuple):
    """A base state with LoRA adapters, which rlcot.models.transformer.forward and
    rlcot.rl.logprobs.token_logprobs apply inside the projections (x W + scale (x A) B) instead
    of merging them: no weight-sized buffer, and the backward pass forms no weight gradient.
    Train steps build it inside the differentiated function from the adapters alone."""
    base: Any
    adapters: Any
    scale: Any


def make_merge_fn(cfg: LoraConfig, base_like: Any, *, mesh: jax.sharding.Mesh | None = None,
                  rules: Any = None):
    """Jitted `(base, adapters) -> merged`, the merged state in the base's shardings (what the
    sampler and the log-prob function take)."""
    fn = lambda base, adapters: merge(base, adapters, cfg.scale)  # noqa: E731
    if mesh is None:
        return jax.jit(fn)
    from rlcot.sharding import TRAIN_RULES, state_shardings
    sh = state_shardings(base_like, mesh, TRAIN_RULES if rules is None else rules)
    return jax.jit(fn, out_shardings=sh)


def start(cfg: LoraConfig, params: Any, seed: int, stage_dir: str | Path | None,
          mesh: jax.sharding.Mesh | None = None) -> tuple[Any, Any]:
    """(base, trained) for a stage that trains a policy: without LoRA (None, params); with it
    (params, fresh adapters), and the stage's model.json marked as holding adapters.
    stage_dir None: write nothing (processes other than 0 of a multi-process run, which do not
    write the workdir; process 0 writes model.json and marks it)."""
    if not cfg.enabled:
        return None, params
    if stage_dir is not None:
        write_card(stage_dir, cfg)
    adapters = init_adapters(cfg, params, seed, mesh=mesh)
    n, n_base = (sum(math.prod(x.shape) for x in jax.tree.leaves(t)) for t in (adapters, params))
    log.info("LoRA rank %d on %s: %d adapter parameters (%.1f%% of the base's %d)", cfg.rank,
             ",".join(cfg.targets), n, 100 * n / n_base, n_base)
    return params, adapters


def policy_weights(cfg: LoraConfig, base: Any, trained: Any) -> Any:
    """The weights of the policy a stage trains: `trained` itself, or (LoRA) merged into base."""
    return trained if base is None else jax.jit(merge, static_argnums=2)(base, trained, cfg.scale)


# ---- Sizes -------------------------------------------------------------------------------------

def adapter_params(cfg: LoraConfig, model_cfg: Any) -> int:
    """Adapter parameter count for a model config, computed without building anything."""
    from rlcot.models.transformer import abstract_model
    base = abstract_model(model_cfg)[1]
    return sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_adapters(cfg, base)))


def memory_bytes(model_cfg: Any, lora: LoraConfig | None, *, reference: bool = True,
                 moments: int = 2) -> dict[str, int]:
    """Bytes the RL loop keeps between steps, with LoRA (`lora` enabled) or full fine-tuning,
    in total over the devices (FSDP divides every entry by the shard count): weights (the
    policy, or the frozen base), reference (full fine-tuning with a KL term keeps a copy; LoRA's
    reference is the base), trained (LoRA: the float32 adapters), grads (the float32 gradient
    accumulator of what is trained), optimizer (Adam: `moments` float32 moments per trained
    parameter). Not counted: activations, the KV cache, the sampler's copy of the weights (the
    same either way), and LoRA's transient merged weights (one copy of the adapted projections
    while the old-policy log-prob pass or the merge for the sampler runs)."""
    n_base = model_cfg.num_params()
    w = n_base * jnp.dtype(model_cfg.weight_dtype).itemsize
    if lora is None or not lora.enabled:
        out = {"weights": w, "reference": w if reference else 0, "trained": 0,
               "grads": 4 * n_base, "optimizer": 4 * moments * n_base}
    else:
        n = adapter_params(lora, model_cfg)
        out = {"weights": w, "reference": 0, "trained": 4 * n, "grads": 4 * n,
               "optimizer": 4 * moments * n}
    return {**out, "total": sum(out.values())}


# ---- Stage outputs: model.json names the base; checkpoints hold only the adapters ----------------

def write_card(stage_dir: str | Path, cfg: LoraConfig) -> None:
    """Marks a stage's model.json (written by the resolver, with the base's `source`) as
    holding LoRA adapters: loading the stage then loads that base and merges them."""
    path = Path(stage_dir) / "model.json"
    card = json.loads(path.read_text())
    card[CARD_KEY] = dataclasses.asdict(cfg)
    from rlcot.workdir import write_json
    write_json(path, card)


def base_source(stage_dir: Path, source: str) -> str:
    """A LoRA stage's base source as loadable from anywhere: 'stage:NAME' is its sibling."""
    if source.startswith("stage:"):
        return f"workdir:{Path(stage_dir).parent / source.split(':', 1)[1]}"
    return source


def load_adapters(resolver: Any, stage_dir: Path, card: Mapping[str, Any], *,
                  mesh: jax.sharding.Mesh | None = None,
                  dtypes: Mapping[str, Any] | None = None) -> tuple[LoraConfig, Any, nnx.State]:
    """(settings, the base as a LoadedModel, the latest checkpoint's adapters) of a LoRA stage."""
    from rlcot.sources import restore_params
    cfg = LoraConfig(**{k: tuple(v) if isinstance(v, list) else v
                        for k, v in card[CARD_KEY].items()})
    base = resolver.load(base_source(stage_dir, card["source"]), mesh=mesh,
                         overrides=dict(dtypes or {}))
    abstract = abstract_adapters(cfg, base.params)
    if mesh is not None:
        from rlcot.sharding import TRAIN_RULES, state_shardings
        sh = state_shardings(abstract, mesh, TRAIN_RULES)
        abstract = jax.tree.map(
            lambda v, s: v.replace(jax.ShapeDtypeStruct(v.get_value().shape,
                                                        v.get_value().dtype, sharding=s)),
            abstract, sh, is_leaf=lambda x: isinstance(x, nnx.Variable))
    adapters, _ = restore_params(stage_dir, abstract)
    return cfg, base, adapters


def load_adapted(resolver: Any, stage_dir: Path, card: Mapping[str, Any], *,
                 mesh: jax.sharding.Mesh | None = None, dtypes: Mapping[str, Any] | None = None
                 ) -> Any:
    """A LoRA stage's model (rlcot.models.load.LoadedModel): its base loaded by source, its
    latest checkpoint's adapters merged in."""
    cfg, base, adapters = load_adapters(resolver, stage_dir, card, mesh=mesh, dtypes=dtypes)
    merged = make_merge_fn(cfg, base.params, mesh=mesh)(base.params, adapters)
    return dataclasses.replace(base, params=merged)


# ---- PEFT's format ---------------------------------------------------------------------------

PEFT_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
                "down": "mlp.down_proj"}


def peft_tensors(cfg: LoraConfig, adapters: Any) -> dict[str, Any]:
    """PEFT's tensors for the adapters: per layer and projection lora_A.weight [rank, in] and
    lora_B.weight [out, rank], in and out flattened as rlcot.models.hf lays out the weight
    ([out, in] = [heads * head_dim, embed] for q, k, v; [embed, heads * head_dim] for o)."""
    import numpy as np
    out = {}
    for name, ab in adapters.items():
        a, b = (np.asarray(jax.device_get(ab[k].get_value()), np.float32) for k in ("a", "b"))
        for i in range(a.shape[0]):
            module = f"base_model.model.model.layers.{i}.{PEFT_MODULES[name]}"
            out[f"{module}.lora_A.weight"] = np.ascontiguousarray(a[i].reshape(-1, cfg.rank).T)
            out[f"{module}.lora_B.weight"] = np.ascontiguousarray(b[i].reshape(cfg.rank, -1).T)
    return out


def save_peft(path: str | Path, cfg: LoraConfig, adapters: Any, *, base: str | None = None,
              dtype: str = "float32") -> Path:
    """The adapters as a PEFT LoRA directory (adapter_config.json, adapter_model.safetensors)
    for the base model exported by rlcot.models.hf.save_hf; base: its name or path."""
    import ml_dtypes
    import numpy as np
    from safetensors.numpy import save_file
    np_dtype = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32,
                "float16": np.float16}[dtype]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.astype(np_dtype) for k, v in peft_tensors(cfg, adapters).items()}
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.rank,
              "lora_alpha": cfg.alpha, "use_rslora": cfg.rslora, "lora_dropout": 0.0,
              "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
              "target_modules": sorted(PEFT_MODULES[t].split(".")[1] for t in cfg.targets),
              "base_model_name_or_path": base}
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return path
