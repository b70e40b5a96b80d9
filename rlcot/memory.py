"""Memory planner: bytes per device of an RL run, by component, before anything compiles.

For a model config, a mesh shape, the learner's settings and the batch and length sizes, `plan`
returns what each component takes on one device, sharded by the same logical-axis rules as the
run (rlcot.sharding TRAIN_RULES for the train state, SAMPLE_RULES for the sampler):

    params       the policy's weights (LoRA: the frozen base), training layout
    trained      LoRA's float32 adapters (0 without LoRA)
    optimizer    Adam's moments of what is trained
    reference    the frozen KL reference (full fine-tuning with a KL term)
    critic       the value model's weights and its optimizer state
    sampler      the sampler's copy of the weights (sampling layout: no FSDP)
    batch        the update step's [N, L] arrays
    grads        the float32 gradient accumulator (and the critic's)
    activations  what the backward pass keeps (per micro-batch; `remat` keeps one hidden
                 state per layer instead) plus one layer's and one logits chunk's workspace
    kv_cache     the rollout's cache: one prompt block per prompt plus per-sample completion
                 blocks (`shared_prefix=True`, the sampler's layout when G > 1) or every
                 sample's copy of its prompt plus its completion (`shared_prefix=False`)
    sampling_work  prefill scores and MLP activations, decode logits, the output buffers

Between steps the state and the sampler's weights stay; the update step's transients and the
rollout's come one after the other, so the peak is the state plus the larger of the two.
Everything is computed from shapes (`jax.eval_shape` of the optimizer's init, no arrays). The
activation terms count the tensors the layer's backward pass reads (attention scores and
probabilities in float32, the MLP's gate/up/product, the projections' inputs); their
coefficients are fitted per compiler (XLA:CPU, libtpu's TPU compiler: they plan buffers
differently) to the memory it plans for the update step (bench/memory_fit.py), and the
estimate is checked against `compiled.memory_analysis()` of the real update step and sampling
loop on configurations outside the fit: on CPU by the tests (tests/test_memory.py), on a TPU
topology without TPUs by bench/memory_check.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from rlcot.models.config import ModelConfig
from rlcot.rl.state import UpdateConfig
from rlcot.sharding import MESH_AXES, SAMPLE_RULES, TRAIN_RULES, logical_to_spec

_GiB = 1 << 30
BUDGET_ENV = "RLCOT_MEMORY_BUDGET_GIB"

# Activation coefficients, in tensors of each unit shape per micro-batch, fitted by
# bench/memory_fit.py to the memory XLA plans for the update step, one set per compiler
# (XLA:CPU and libtpu plan buffers differently: TPU keeps far less with remat). Units:
# `scores` [b, heads, T, T] float32, `mlp` [b, T, mlp_dim], `embed` [b, T, d_model], `qkv`
# [b, T, heads + 2 kv_heads, head_dim] in the compute dtype, `logits` [b, chunk, vocab] float32.
# saved: kept per decoder layer for the backward pass (no remat); remat_saved: the same with
# remat (the layer scan's carry); work / remat_work: the working set on top of them (one
# layer's forward and backward, the logits chunk); grads: float32 copies of what is trained.


@dataclasses.dataclass(frozen=True)
class Coefficients:
    """One compiler's fitted activation coefficients (see above) and where they came from."""
    saved: Mapping[str, float]
    work: Mapping[str, float]
    remat_saved: Mapping[str, float]
    remat_work: Mapping[str, float]
    grads: float
    remat_grads: float
    fitted: str


COEFFICIENTS: dict[str, Coefficients] = {
    "cpu": Coefficients(
        saved={"scores": 3.15, "mlp": 3.15, "embed": 7.62, "qkv": 1.78, "sandwich": 14.10,
               "local": 0.16},
        work={"mlp": 10.64, "logits": 3.05, "local": 1.70},
        remat_saved={"embed": 0.74, "sandwich": 0.04},
        remat_work={"scores": 2.68, "mlp": 7.87, "embed": 7.78, "qkv": 1.36, "logits": 2.69,
                    "sandwich": 2.76, "local": 0.41},
        grads=2.51, remat_grads=1.32,
        fitted="2026-11-30, jax 0.10.2, XLA:CPU, 15 configs per mode (11 Llama-shaped, "
               "4 Gemma-3-shaped); every fitted point within 3.3% of its compiled temporaries"),
    "cpu/bfloat16": Coefficients(
        saved={"scores": 3.14, "mlp": 3.19, "embed": 7.49, "qkv": 1.87, "sandwich": 14.28,
               "local": 0.07},
        work={"mlp": 9.94, "logits": 3.13, "local": 1.85},
        remat_saved={"embed": 0.73},
        remat_work={"scores": 2.56, "mlp": 5.30, "embed": 7.79, "qkv": 1.45, "logits": 2.98,
                    "sandwich": 4.52, "local": 0.33},
        grads=3.22, remat_grads=1.35,
        fitted="2026-11-30, jax 0.10.2, XLA:CPU, the cpu grid in bfloat16 compute (float32 "
               "weights); every fitted point within 4.1% of its compiled temporaries"),
    "tpu": Coefficients(
        saved={"scores": 3.85, "mlp": 4.93, "embed": 2.89, "sandwich": 6.82, "local": 3.37},
        work={"logits": 1.26},
        remat_saved={},
        remat_work={"mlp": 1.30, "embed": 3.36, "logits": 0.75, "local": 0.78},
        grads=0.00, remat_grads=0.89,
        fitted="2026-11-30, jax 0.10.2 with libtpu 0.0.42.1 (compile-only v5e), 20 configs "
               "per mode with 128-aligned dimensions (16 Llama-, 4 Gemma-3-shaped; half in "
               "bfloat16 compute); fitted points within 19% (no remat) and 28% (remat) of "
               "the compiled temporaries: libtpu's peak is not linear in the sizes"),
    "tpu/bfloat16": Coefficients(
        saved={"scores": 2.27, "mlp": 6.14, "embed": 5.60, "sandwich": 11.22, "local": 2.65},
        work={"logits": 0.78},
        remat_saved={"sandwich": 0.73},
        remat_work={"mlp": 0.68, "qkv": 0.23, "logits": 0.89, "local": 0.10},
        grads=1.07, remat_grads=1.14,
        fitted="2026-11-30, jax 0.10.2 with libtpu 0.0.42.1 (compile-only v5e), bfloat16 "
               "compute: the 13 aligned configs of the tpu grid and 9 real models' shapes "
               "(Qwen2.5-0.5B, Llama-3.2-1B, Gemma-3-1B cut to 2 layers, 2-8 rows x "
               "256-1024 tokens); the real shapes within 16% (no remat) and 15% (remat) of "
               "the compiled temporaries, the small aligned ones within 16% and 25%"),
}


def coefficients(platform: str, dtype: str = "float32") -> Coefficients:
    """The fitted set for `platform` and the compute `dtype` ('cpu/bfloat16' where one compiler
    plans a dtype's buffers apart: XLA:CPU keeps some of a bfloat16 model's in bfloat16 and
    computes the rest in float32). GPUs (not measured yet) use TPU's, the other compiler with
    native bfloat16 buffers."""
    base = platform if platform in COEFFICIENTS else "tpu"
    return COEFFICIENTS.get(f"{base}/{dtype}", COEFFICIENTS[base])


@dataclasses.dataclass(frozen=True)
class MeshShape:
    """A mesh's axis sizes without devices (what the logical rules need to size shards)."""
    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    @property
    def shape(self) -> dict[str, int]:
        return {a: getattr(self, a) for a in MESH_AXES}

    @property
    def size(self) -> int:
        return self.data * self.fsdp * self.tensor

    @classmethod
    def of(cls, mesh: Any) -> "MeshShape":
        """From a jax Mesh, a mapping, a (data, fsdp, tensor) tuple or None (one device)."""
        if mesh is None:
            return cls()
        if isinstance(mesh, cls):
            return mesh
        if isinstance(mesh, (tuple, list)):
            return cls(*map(int, mesh))
        shape = mesh.shape if hasattr(mesh, "shape") else mesh
        return cls(**{a: int(shape.get(a, 1)) for a in MESH_AXES})


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The sizes of one RL step. batch_prompts B and num_samples G: N = B x G rows of
    prompt_len + max_new_tokens tokens in the update step; the rollout prefills B prompts and
    decodes N rows."""
    batch_prompts: int
    num_samples: int
    prompt_len: int
    max_new_tokens: int

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Sizes.{f.name} must be an int >= 1, got {v!r}")

    @property
    def rows(self) -> int:
        return self.batch_prompts * self.num_samples

    @property
    def length(self) -> int:
        return self.prompt_len + self.max_new_tokens


def compute_itemsize(dtype: Any, platform: str = "tpu") -> int:
    """Bytes per element of the activations computed in `dtype` on `platform`: XLA:CPU
    computes bfloat16 and float16 in float32 (the update step's temporaries in bfloat16 are
    float32-sized without remat: measured), accelerators natively. Stored arrays (the KV
    cache) keep their dtype's size everywhere."""
    size = jnp.dtype(dtype).itemsize
    return max(size, 4) if platform == "cpu" else size


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _shards(axes: Any, shape: tuple[int, ...], rules: Mapping[str, Any], mesh: MeshShape) -> int:
    if not axes or not shape:
        return 1
    spec = logical_to_spec(tuple(axes), rules, shape, mesh)
    used = [a for p in spec if p is not None for a in ((p,) if isinstance(p, str) else p)]
    return math.prod(mesh.shape[a] for a in used)


def tree_bytes(tree: Any, mesh: MeshShape, rules: Mapping[str, Any]) -> int:
    """Bytes per device of a (possibly abstract) NNX state whose Variables carry `axes`; plain
    arrays (optimizer scalars, counts) are replicated."""
    total = 0
    for leaf in jax.tree.leaves(tree, is_leaf=_is_var):
        value = leaf.get_value() if _is_var(leaf) else leaf
        shape = tuple(getattr(value, "shape", ()))
        nbytes = math.prod(shape) * jnp.dtype(value.dtype).itemsize
        axes = getattr(leaf, "axes", None) if _is_var(leaf) else None
        total += nbytes // _shards(axes, shape, rules, mesh)
    return total


def _axis_shard(n: int, name: str, rules: Mapping[str, Any], mesh: MeshShape) -> int:
    """n divided by its mesh axes under the rules (replicated when they do not divide it)."""
    return n // _shards((name,), (n,), rules, mesh)


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device by component, the two transient phases and the peak."""
    components: dict[str, int]
    update_components: tuple[str, ...]
    sampling_components: tuple[str, ...]
    resident_components: tuple[str, ...]
    notes: dict[str, str]
    mesh: MeshShape
    budget_bytes: int | None = None
    budget_source: str = "no budget"

    @property
    def resident(self) -> int:
        return sum(self.components[k] for k in self.resident_components)

    @property
    def update_peak(self) -> int:
        """The update step's peak: the train state plus its transients (the sampler's weights
        and LoRA's base are arguments too, counted where they live)."""
        return self.resident + sum(self.components[k] for k in self.update_components)

    @property
    def sampling_peak(self) -> int:
        return self.resident + sum(self.components[k] for k in self.sampling_components)

    @property
    def peak(self) -> int:
        return max(self.update_peak, self.sampling_peak)

    @property
    def update_program(self) -> int:
        """What the compiled update step alone needs (its memory analysis' peak): the train
        state, the batch and the step's temporaries (not the sampler's weights)."""
        keep = [k for k in self.resident_components if k != "sampler"]
        return sum(self.components[k] for k in keep + list(self.update_components))

    @property
    def sampling_program(self) -> int:
        """What the compiled sampling loop alone needs: its weights, the cache and workspace."""
        return self.components["sampler"] + sum(self.components[k]
                                                for k in self.sampling_components)

    @property
    def fits(self) -> bool:
        return self.budget_bytes is None or self.peak <= self.budget_bytes

    def table(self) -> str:
        """A printable table: one line per component (GiB per device), phases and peak."""
        m = self.mesh
        lines = [f"memory per device (mesh data={m.data} fsdp={m.fsdp} tensor={m.tensor}, "
                 f"{m.size} devices):"]
        width = max(len(k) for k in self.components)
        for k, v in self.components.items():
            where = ("resident" if k in self.resident_components else
                     "update" if k in self.update_components else "rollout")
            note = f"  {self.notes[k]}" if k in self.notes else ""
            lines.append(f"  {k:<{width}} {v / _GiB:9.3f} GiB  {where}{note}")
        lines.append(f"  {'update peak':<{width}} {self.update_peak / _GiB:9.3f} GiB")
        lines.append(f"  {'rollout peak':<{width}} {self.sampling_peak / _GiB:9.3f} GiB")
        budget = ("no budget" if self.budget_bytes is None else
                  f"budget {self.budget_bytes / _GiB:.3f} GiB ({self.budget_source})")
        lines.append(f"  {'peak':<{width}} {self.peak / _GiB:9.3f} GiB  {budget}")
        return "\n".join(lines)


def activation_bytes(cfg: ModelConfig, rows: int, length: int, *, remat: bool,
                     logprob_chunk: int, mesh: MeshShape, rules: Mapping[str, Any] = TRAIN_RULES,
                     value_head: bool = False, platform: str = "tpu") -> int:
    """Activation bytes per device of one micro-batch of `rows` rows (all devices) x `length`
    tokens through the policy's forward and backward pass (see the module docstring)."""
    unit = activation_units(cfg, rows, length, logprob_chunk=logprob_chunk, mesh=mesh,
                            rules=rules, platform=platform)
    if value_head:
        unit["logits"] = 0
    co = coefficients(platform, cfg.dtype)
    saved, work = (co.remat_saved, co.remat_work) if remat else (co.saved, co.work)
    return int(cfg.n_layers * sum(c * unit[u] for u, c in saved.items())
               + sum(c * unit[u] for u, c in work.items()))


def activation_units(cfg: ModelConfig, rows: int, length: int, *, logprob_chunk: int,
                     mesh: Any = None, rules: Mapping[str, Any] = TRAIN_RULES,
                     platform: str = "tpu") -> dict[str, int]:
    """The unit tensors' bytes of `activation_bytes` (what bench/memory_fit.py fits against).

    Every unit is per device: rows over the batch axes (the decoder pins its activations
    there, rlcot.sharding.constrain), heads, MLP units and vocabulary over the tensor axis.
    `sandwich` (Gemma 3's post-attention and post-MLP norms) and `local` (sliding-window
    layers' own mask and RoPE tables) are 0 for models without them."""
    m = MeshShape.of(mesh)
    full = m.size * 1024  # a row count every batch axis divides: the mesh's batch shards
    b = max(1, -(-rows // _shards(("batch",), (full,), rules, m)))
    act = compute_itemsize(cfg.dtype, platform)
    n = _axis_shard(cfg.n_heads, "heads", rules, m)
    k = _axis_shard(cfg.n_kv_heads, "kv_heads", rules, m)
    f = _axis_shard(cfg.mlp_dim, "mlp", rules, m)
    v = _axis_shard(cfg.vocab_size, "vocab", rules, m)
    T = length
    chunk = min(logprob_chunk, max(T - 1, 1))
    embed = b * T * cfg.d_model * act
    scores = b * n * T * T * 4
    return {"scores": scores, "mlp": b * T * f * act, "embed": embed,
            "qkv": b * T * (n + 2 * k) * cfg.head_dim * act, "logits": b * chunk * v * 4,
            "sandwich": embed if cfg.sandwich_norms else 0,
            "local": scores if any(cfg.local_layers) else 0}


def _abstract_state(cfg: ModelConfig, learner: UpdateConfig, reference: bool) -> tuple:
    from rlcot.models import lora
    from rlcot.models.transformer import abstract_model
    from rlcot.rl.optim import make_optimizer
    from rlcot.rl.value import ValueModel
    _, params = abstract_model(cfg)
    trained = lora.abstract_adapters(learner.lora, params) if learner.lora.enabled else params
    opt = jax.eval_shape(make_optimizer(learner.optimizer).init, trained)
    critic = critic_opt = None
    if learner.value is not None:
        critic = nnx.split(nnx.eval_shape(lambda: ValueModel(cfg, nnx.Rngs(0))))[1]
        critic_opt = jax.eval_shape(make_optimizer(learner.value.optimizer).init, critic)
    return params, trained, opt, critic, critic_opt


def _opt_bytes(opt: Any, like: Any, mesh: MeshShape, rules: Mapping[str, Any]) -> int:
    """Optimizer state: Adam's moments are shaped (and sharded) as the parameters; the
    remaining leaves are scalars."""
    moments = sum(1 for x in jax.tree.leaves(opt) if getattr(x, "ndim", 0) > 0)
    n_params = len(jax.tree.leaves(like, is_leaf=_is_var))
    per_copy = tree_bytes(like, mesh, rules)
    item = {jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(opt) if getattr(x, "ndim", 0)}
    like_item = {jnp.dtype((x.get_value() if _is_var(x) else x).dtype).itemsize
                 for x in jax.tree.leaves(like, is_leaf=_is_var)}
    scale = (max(item) / max(like_item)) if item and like_item else 1.0
    scalars = sum(jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(opt)
                  if getattr(x, "ndim", 0) == 0)
    return int(per_copy * (moments // max(n_params, 1)) * scale) + scalars


def _f32_bytes(tree: Any, mesh: MeshShape, rules: Mapping[str, Any]) -> int:
    """Bytes per device of a float32 copy of a state (gradients are accumulated in float32)."""
    def f32(v):
        value = v.get_value() if _is_var(v) else v
        sds = jax.ShapeDtypeStruct(value.shape, jnp.float32)
        return v.replace(sds) if _is_var(v) else sds
    return tree_bytes(jax.tree.map(f32, tree, is_leaf=_is_var), mesh, rules)


def plan(cfg: ModelConfig, learner: UpdateConfig, sizes: Sizes, mesh: Any = None, *,
         reference: bool | None = None, cache_dtype: str | None = None,
         shared_prefix: bool | None = None, budget_bytes: int | None = None,
         budget_source: str = "configured budget", platform: str = "tpu",
         train_rules: Mapping[str, Any] = TRAIN_RULES,
         sample_rules: Mapping[str, Any] = SAMPLE_RULES) -> MemoryPlan:
    """Bytes per device of every component of an RL run (see the module docstring).

    reference: keep a KL reference copy (default: when the objective has a KL term and the
    learner is not LoRA, as the loop does). cache_dtype: the KV cache's dtype (default the
    model's compute dtype). shared_prefix: the rollout keeps one prompt block per prompt
    instead of one per sample (default: as the sampler decides, shared when G > 1). platform: where it runs ('tpu', 'gpu' or 'cpu', see
    `compute_itemsize`)."""
    m = MeshShape.of(mesh)
    lora_on = learner.lora.enabled
    if reference is None:
        reference = learner.objective.kl.placement != "none"
    reference = reference and not lora_on
    params, trained, opt, critic, critic_opt = _abstract_state(cfg, learner, reference)
    c: dict[str, int] = {}
    notes: dict[str, str] = {}
    c["params"] = tree_bytes(params, m, train_rules)
    c["trained"] = tree_bytes(trained, m, train_rules) if lora_on else 0
    c["optimizer"] = _opt_bytes(opt, trained, m, train_rules)
    c["reference"] = c["params"] if reference else 0
    c["critic"] = 0
    if critic is not None:
        c["critic"] = tree_bytes(critic, m, train_rules) + _opt_bytes(critic_opt, critic, m,
                                                                      train_rules)
    c["sampler"] = tree_bytes(params, m, sample_rules)
    notes["sampler"] = "(weights in the sampling layout: not FSDP-sharded)"

    # ---- The update step's transients ----
    N, L = sizes.rows, sizes.length
    row_shards = _shards(("batch",), (N,), train_rules, m)
    per_row_arrays = 5 * 4 + 1  # tokens, positions (int32), mask, adv, logp_old (f32), valid
    per_row_arrays += 4 * ((learner.objective.kl.placement != "none")  # logp_ref
                           + (learner.objective.tis_cap is not None))  # logp_sampler
    per_row_arrays += 8 if critic is not None else 0  # values_old, returns
    c["batch"] = N * L * per_row_arrays // row_shards
    trained_f32 = _f32_bytes(trained, m, train_rules)
    critic_f32 = 0 if critic is None else _f32_bytes(critic, m, train_rules)
    # The float32 accumulator and (partly overlapping) one micro-batch's gradient.
    co = coefficients(platform, cfg.dtype)
    c["grads"] = int((co.remat_grads if learner.remat else co.grads)
                     * (trained_f32 + critic_f32))
    micro_rows = N // learner.minibatches // learner.micro_batches
    c["activations"] = activation_bytes(cfg, micro_rows, L, remat=learner.remat,
                                        logprob_chunk=learner.logprob_chunk, mesh=m,
                                        rules=train_rules, platform=platform)
    if critic is not None:
        c["activations"] += activation_bytes(cfg, micro_rows, L, remat=learner.remat,
                                             logprob_chunk=learner.logprob_chunk, mesh=m,
                                             rules=train_rules, value_head=True,
                                             platform=platform)
    notes["activations"] = (f"({micro_rows} rows x {L} tokens per micro-batch, "
                            f"remat {'on' if learner.remat else 'off'})")

    # Under FSDP the step gathers each weight whole (over the fsdp axis) and makes its
    # gradient whole before the reduce-scatter; the largest one (the embedding) sets the size:
    # its gathered float32 copy and, trained, part of its gradient (0.8 of a float32 copy:
    # an empirical coefficient, chosen over five libtpu programs of bench/memory_check.py
    # whose ratios it puts within 0.80-1.20, at both edges; without it they read 0.59-0.84).
    c["fsdp_gather"] = 0
    if m.fsdp > 1:
        whole = {**train_rules, "embed": None}
        largest = max(
            math.prod(v.get_value().shape) * 4
            // _shards(v.axes, tuple(v.get_value().shape), whole, m)
            for v in jax.tree.leaves(params, is_leaf=_is_var) if _is_var(v))
        c["fsdp_gather"] = int(largest * (1 if lora_on else 1.8))
        notes["fsdp_gather"] = "(the largest weight gathered whole, and its gradients)"

    # ---- The rollout's transients ----
    c["kv_cache"], c["sampling_work"] = rollout_bytes(cfg, sizes, m, cache_dtype=cache_dtype,
                                                      shared_prefix=shared_prefix,
                                                      rules=sample_rules, platform=platform)
    weight_size = jnp.dtype(cfg.weight_dtype).itemsize
    compute_size = jnp.dtype(cfg.compute_dtype).itemsize
    if platform != "cpu" and compute_size < weight_size and cfg.tie_embeddings:
        # A tied embedding's compute-dtype copy for the logits, cast once outside the decode
        # loop (a loop-invariant XLA hoists; an untied head's cast fuses into its matmul).
        # Measured with libtpu: without it the sampling loops of tied models (Qwen2.5-0.5B,
        # Qwen3-0.6B, Gemma-3) read 0.68-0.77 of the compiled peak; untied Qwen2.5-7B 0.98.
        shards = _shards(("vocab", "embed"), (cfg.vocab_size, cfg.d_model), sample_rules, m)
        c["sampling_work"] += cfg.vocab_size * cfg.d_model * compute_size // shards
    layout = ("one shared prompt block" if shares_prefix(sizes.num_samples, shared_prefix)
              else "prompt copied per sample")
    notes["kv_cache"] = f"({sizes.batch_prompts} prompts x {sizes.num_samples} samples, {layout})"
    return MemoryPlan(
        c, update_components=("batch", "grads", "activations", "fsdp_gather"),
        sampling_components=("kv_cache", "sampling_work"),
        resident_components=("params", "trained", "optimizer", "reference", "critic",
                             "sampler"),
        notes=notes, mesh=m, budget_bytes=budget_bytes,
        budget_source=budget_source if budget_bytes is not None else "no budget")


def rollout_options(rollout: Any) -> dict[str, Any]:
    """The plan's KV-cache options from an RL stage's rollout section."""
    return {"shared_prefix": rollout.shared_prefix, "cache_dtype": rollout.cache_dtype}


def shares_prefix(num_samples: int, shared_prefix: bool | None) -> bool:
    """The sampler's KV layout for G samples per prompt (as rlcot.sampling.Sampler decides)."""
    return num_samples > 1 if shared_prefix is None else bool(shared_prefix)


def rollout_bytes(cfg: ModelConfig, sizes: Sizes, mesh: Any = None, *,
                  cache_dtype: str | None = None, shared_prefix: bool | None = None,
                  rules: Mapping[str, Any] = SAMPLE_RULES, platform: str = "tpu"
                  ) -> tuple[int, int]:
    """(KV cache, sampling workspace) bytes per device of one rollout call.

    shared_prefix=False: the prompts are prefilled into a [B, P] cache, then every row gets a
    copy extended with T slots: [N, P + T] (plus the prefill cache while it is copied).
    shared_prefix=True: one [B, P] prompt block kept for all G samples and [N, T] suffix
    blocks. None: as the sampler decides (rlcot.sampling.Sampler.shares_prefix: shared
    whenever G > 1).

    The cache is counted whole over the tensor axis: the compiled loop does not keep it split
    by KV heads (with tensor=2 its temporaries were larger than on one device, measured on
    XLA:CPU with jax 0.10.2), so tensor parallelism shards the sampler's weights, not its
    cache."""
    from rlcot.sampling.spec import bucket
    m = MeshShape.of(mesh)
    G = sizes.num_samples
    # As the sampler sizes a call: prompts padded to a bucket and to the batch shards, prompt
    # and completion lengths to their buckets (rlcot.sampling.Sampler.plan).
    shards = _shards(("batch",), (m.size * 1024,), rules, m)
    B = -(-bucket(sizes.batch_prompts) // shards) * shards
    P, T = bucket(sizes.prompt_len, 16), bucket(sizes.max_new_tokens, 16)
    N = B * G
    # The cache is a stored array: its own dtype's size on every backend (XLA:CPU widens
    # bfloat16 only in the temporaries it computes with).
    dt = jnp.dtype(cache_dtype or cfg.dtype).itemsize
    k = cfg.n_kv_heads
    per_slot = 2 * cfg.n_layers * k * cfg.head_dim * dt + 4  # keys, values, position
    shards_b = _shards(("batch",), (B,), rules, m)
    shards_n = _shards(("batch",), (N,), rules, m)
    prefix = B * P * per_slot // shards_b
    if shares_prefix(G, shared_prefix):
        cache = prefix + N * T * per_slot // shards_n
    else:
        cache = prefix + N * (P + T) * per_slot // shards_n
    act = compute_itemsize(cfg.dtype, platform)
    n = _axis_shard(cfg.n_heads, "heads", rules, m)
    f = _axis_shard(cfg.mlp_dim, "mlp", rules, m)
    v = _axis_shard(cfg.vocab_size, "vocab", rules, m)
    b = max(1, B // shards_b)
    rows = max(1, N // shards_n)
    prefill = b * P * (2 * n * P * 4 + 3 * f * act + 4 * cfg.d_model * act)
    decode = rows * v * 4 * 4 + rows * (f + 4 * cfg.d_model) * act
    outputs = rows * T * 12
    return int(cache), int(max(prefill, decode) + outputs)


# ---- Budget, check and the knobs that would make a run fit ------------------------------------

def device_budget(devices: Any = None) -> tuple[int | None, str]:
    """Bytes one device may use: $RLCOT_MEMORY_BUDGET_GIB if set, else the accelerator's
    memory_stats()['bytes_limit'], else None (CPU: no budget unless one is set)."""
    env = os.environ.get(BUDGET_ENV)
    if env:
        return int(float(env) * _GiB), f"${BUDGET_ENV}={env}"
    devices = list(jax.devices() if devices is None else devices)
    if not devices or devices[0].platform == "cpu":
        return None, "no budget (CPU)"
    try:
        stats = devices[0].memory_stats()
    except Exception:  # noqa: BLE001  (compile-only and some backends have no stats)
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]), (f"{devices[0].device_kind} bytes_limit "
                                           f"{int(stats['bytes_limit']) / _GiB:.2f} GiB")
    return None, "no memory statistics for this device"


class DoesNotFitError(ValueError):
    """A run whose planned bytes per device exceed the budget."""


def knobs(cfg: ModelConfig, learner: UpdateConfig, sizes: Sizes, mesh: Any, budget: int,
          **plan_kw) -> list[str]:
    """Single-setting changes that would bring the peak under `budget`, each with its peak."""
    m = MeshShape.of(mesh)
    base = plan(cfg, learner, sizes, m, **plan_kw)
    out = []

    def trial(label: str, **kw) -> None:
        try:
            p = plan(kw.pop("cfg", cfg), kw.pop("learner", learner), kw.pop("sizes", sizes),
                     kw.pop("mesh", m), **{**plan_kw, **kw})
        except ValueError:
            return
        if p.peak < base.peak:
            mark = "fits" if p.peak <= budget else "not enough alone"
            out.append(f"{label}: peak {p.peak / _GiB:.2f} GiB ({mark})")

    rows = sizes.rows
    row_shards = _shards(("batch",), (m.size * 1024,), TRAIN_RULES, m)
    for k in (2, 4, 8, 16, 32):
        if rows % (learner.minibatches * learner.micro_batches * k * row_shards) == 0:
            trial(f"learner.micro_batches={learner.micro_batches * k}",
                  learner=dataclasses.replace(learner, micro_batches=learner.micro_batches * k))
            break
    if not learner.remat:
        trial("learner.remat=True", learner=dataclasses.replace(learner, remat=True))
    if learner.logprob_chunk > 128:
        trial("learner.logprob_chunk=128",
              learner=dataclasses.replace(learner, logprob_chunk=128))
    if m.data > 1:
        trial(f"mesh.data=1, mesh.fsdp={m.data * m.fsdp} (shard the state over every device)",
              mesh=MeshShape(1, m.data * m.fsdp, m.tensor))
    for t in (2, 4, 8):
        if m.fsdp % t == 0 and m.fsdp // t >= 1 and m.tensor == 1:
            trial(f"mesh.tensor={t}, mesh.fsdp={m.fsdp // t} (shards the sampler's weights)",
                  mesh=MeshShape(m.data, m.fsdp // t, t))
            break
    if sizes.batch_prompts > 1:
        trial(f"data.batch_prompts={sizes.batch_prompts // 2}",
              sizes=dataclasses.replace(sizes, batch_prompts=sizes.batch_prompts // 2))
    if sizes.max_new_tokens > 64:
        trial(f"rollout.max_new_tokens={sizes.max_new_tokens // 2}",
              sizes=dataclasses.replace(sizes, max_new_tokens=sizes.max_new_tokens // 2))
    if jnp.dtype(plan_kw.get("cache_dtype") or cfg.dtype).itemsize > 2:
        trial("a bfloat16 KV cache (rollout.cache_dtype='bfloat16')", cache_dtype="bfloat16")
    if not shares_prefix(sizes.num_samples, plan_kw.get("shared_prefix")):
        trial("one shared prompt block per prompt (rollout.shared_prefix=True)",
              shared_prefix=True)
    if cfg.dtype == "float32":
        trial("model.dtype='bfloat16' (bfloat16 compute, float32 weights)",
              cfg=cfg.replace(dtype="bfloat16"))
    if not learner.lora.enabled:
        from rlcot.models.lora import LoraConfig
        trial("learner.lora.enabled=True (rank 16 adapters)",
              learner=dataclasses.replace(learner, lora=LoraConfig(enabled=True, rank=16,
                                                                   alpha=32.0)))
    return out


def check(cfg: ModelConfig, learner: UpdateConfig, sizes: Sizes, mesh: Any = None, *,
          budget_bytes: int | None = None, budget_source: str = "configured budget",
          **plan_kw) -> MemoryPlan:
    """The plan; raises DoesNotFitError (a ValueError) listing the components and the knobs
    that would make it fit when its peak exceeds the budget (None: no check)."""
    p = plan(cfg, learner, sizes, mesh, budget_bytes=budget_bytes, budget_source=budget_source,
             **plan_kw)
    if p.fits:
        return p
    fixes = knobs(cfg, learner, sizes, mesh, budget_bytes, **plan_kw)
    raise DoesNotFitError(
        f"this run needs {p.peak / _GiB:.2f} GiB per device, more than the budget of "
        f"{budget_bytes / _GiB:.2f} GiB ({budget_source}):\n{p.table()}\n"
        f"settings that lower the peak:\n  " + ("\n  ".join(fixes) if fixes else
                                                "none found: use more devices or a smaller model"))


def sizes_from_run(rc: Any, prompt_len: int) -> Sizes:
    """Sizes of a resolved RL stage config (rlcot.run_config.RunConfig), with its longest
    prompt (data.max_prompt_tokens when set)."""
    return Sizes(rc.data.batch_prompts, rc.rollout.num_samples, prompt_len,
                 rc.rollout.max_new_tokens)
