"""Ahead-of-time compilation of the RL update step and the sampling loop from abstract inputs.

Nothing is allocated: parameters, optimizer state and batches are ShapeDtypeStructs carrying
their shardings, so the same code compiles for the local devices (CPU, GPU) or for a TPU
topology described by libtpu without any TPU attached (as MaxText's train_compile does). The
compiled programs' memory analysis gives the bytes per device that XLA itself plans for, the
number rlcot.memory's estimate is tested against.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlcot.models.config import ModelConfig
from rlcot.rl.state import UpdateConfig
from rlcot.sharding import MESH_AXES, SAMPLE_RULES, TRAIN_RULES

log = logging.getLogger(__name__)

# User-facing slice names -> (libtpu topology name, chips per host). A name such as
# 'v5e:4x4' or 'v5p:2x2x2' is passed to libtpu as it is (4 chips per host assumed).
TOPOLOGIES: Mapping[str, tuple[str, tuple[int, int, int]]] = {
    "v4-8": ("v4:2x2x1", (2, 2, 1)), "v4-16": ("v4:2x2x2", (2, 2, 1)),
    "v4-32": ("v4:2x2x4", (2, 2, 1)), "v4-64": ("v4:2x4x4", (2, 2, 1)),
    "v5e-1": ("v5e:1x1", (1, 1, 1)), "v5e-4": ("v5e:2x2", (2, 2, 1)),
    "v5e-8": ("v5e:2x4", (2, 2, 1)), "v5e-16": ("v5e:4x4", (2, 2, 1)),
    "v5e-32": ("v5e:4x8", (2, 2, 1)), "v5e-64": ("v5e:8x8", (2, 2, 1)),
    "v5e-128": ("v5e:8x16", (2, 2, 1)), "v5e-256": ("v5e:16x16", (2, 2, 1)),
    "v5p-8": ("v5p:2x2x1", (2, 2, 1)), "v5p-16": ("v5p:2x2x2", (2, 2, 1)),
    "v5p-32": ("v5p:2x2x4", (2, 2, 1)), "v5p-64": ("v5p:2x4x4", (2, 2, 1)),
    "v5p-128": ("v5p:4x4x4", (2, 2, 1)), "v5p-256": ("v5p:4x4x8", (2, 2, 1)),
    "v6e-1": ("v6e:1x1", (1, 1, 1)), "v6e-4": ("v6e:2x2", (2, 2, 1)),
    "v6e-8": ("v6e:2x4", (2, 2, 1)), "v6e-16": ("v6e:4x4", (2, 2, 1)),
    "v6e-64": ("v6e:8x8", (2, 2, 1)), "v6e-256": ("v6e:16x16", (2, 2, 1)),
}


def topology_devices(name: str) -> list[Any]:
    """Compile-only devices of a TPU slice (e.g. 'v5e-16', 'v5p-64', or libtpu's 'v5e:4x4'),
    described by libtpu without any TPU attached. Needs libtpu installed (pip install
    'jax[tpu]'); raises RuntimeError naming what is missing otherwise."""
    topo, per_host = TOPOLOGIES.get(name, (name, (2, 2, 1)))
    if ":" not in topo:
        raise ValueError(f"unknown TPU topology {name!r}: use one of {sorted(TOPOLOGIES)} or a "
                         f"libtpu name such as 'v5e:4x4' or 'v5p:2x2x2'")
    try:
        import libtpu  # noqa: F401  (jax's TPU topologies come from it)
    except ImportError as e:
        raise RuntimeError(f"--topology {name} needs libtpu (pip install 'jax[tpu]' into a "
                           f"separate environment; see notes on ahead-of-time compilation)") from e
    from jax.experimental import topologies
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topo,
                                        chip_config_name="default",
                                        chips_per_host_bounds=per_host, num_slices=1)
    return list(desc.devices)


def make_mesh(devices: Sequence[Any], data: int = 1, fsdp: int = -1, tensor: int = 1) -> Mesh:
    """A (data, fsdp, tensor) mesh over given devices (compile-only ones too); -1 = the rest."""
    from rlcot.sharding import make_mesh as _make
    return _make(data, fsdp, tensor, devices=list(devices))


def _sds(x: Any, sharding: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs (inside their Variables) carrying the given shardings."""
    def one(v, s):
        if _is_var(v):
            return v.replace(_sds(v.get_value(), s))
        return _sds(v, s)
    return jax.tree.map(one, tree, shardings, is_leaf=_is_var)


@dataclasses.dataclass(frozen=True)
class UpdateShapes:
    """The rollout batch the update step sees: rows = batch_prompts x num_samples, each
    `length` tokens (prompt + completion)."""
    rows: int
    length: int


def abstract_update_inputs(model_cfg: ModelConfig, update_cfg: UpdateConfig,
                           shapes: UpdateShapes, *, reference: bool,
                           mesh: Mesh | None = None) -> dict[str, Any]:
    """graphdef, abstract train state, batch, rng and base (LoRA) for `make_update_step`."""
    from rlcot.models import lora
    from rlcot.models.transformer import abstract_model
    from rlcot.rl.batch import UpdateBatch
    from rlcot.rl.state import init_train_state, train_state_shardings
    from rlcot.rl.value import ValueModel
    graphdef, params = abstract_model(model_cfg)
    critic_graphdef = critic = None
    if update_cfg.value is not None:
        critic_graphdef, critic = nnx.split(nnx.eval_shape(
            lambda: ValueModel(model_cfg, nnx.Rngs(0))))
    base = None
    trained = params
    if update_cfg.lora.enabled:
        base, trained = params, lora.abstract_adapters(update_cfg.lora, params)
        reference = False  # LoRA's reference is the base itself
    state = jax.eval_shape(lambda p, c: init_train_state(update_cfg, p, reference=reference,
                                                         critic_params=c), trained, critic)
    N, L = shapes.rows, shapes.length
    obj = update_cfg.objective
    f32 = lambda: jax.ShapeDtypeStruct((N, L), jnp.float32)  # noqa: E731
    batch = UpdateBatch(
        tokens_NxL=jax.ShapeDtypeStruct((N, L), jnp.int32),
        positions_NxL=jax.ShapeDtypeStruct((N, L), jnp.int32),
        valid_NxL=jax.ShapeDtypeStruct((N, L), jnp.bool_),
        loss_mask_NxL=f32(), adv_NxL=f32(), logp_old_NxL=f32(),
        logp_ref_NxL=f32() if obj.kl.placement != "none" else None,
        logp_sampler_NxL=f32() if obj.tis_cap is not None else None,
        truncated_N=jax.ShapeDtypeStruct((N,), jnp.bool_),
        values_old_NxL=f32() if critic is not None else None,
        returns_NxL=f32() if critic is not None else None)
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    if mesh is not None:
        from rlcot.rl.logprobs import batch_sharding
        from rlcot.sharding import state_shardings
        state = _with_shardings(state, train_state_shardings(state, mesh))
        rows = batch_sharding(mesh)
        batch = jax.tree.map(lambda x: _sds(x, rows), batch)
        rng = _sds(rng, NamedSharding(mesh, PartitionSpec()))
        if base is not None:
            base = _with_shardings(base, state_shardings(base, mesh, TRAIN_RULES))
    return {"graphdef": graphdef, "critic_graphdef": critic_graphdef, "state": state,
            "batch": batch, "rng": rng, "base": base}


def lower_update(model_cfg: ModelConfig, update_cfg: UpdateConfig, shapes: UpdateShapes, *,
                 reference: bool, mesh: Mesh | None = None,
                 compiler_options: dict | None = None) -> Any:
    """The update step, lowered (not compiled) for abstract inputs of these sizes, in the
    padded [N, L] layout: a packed step's shapes come from the rollout's token counts
    (rlcot.rl.packing), which are not known ahead of time; on ragged rollouts packing processes
    fewer token slots than the padded N x L."""
    import dataclasses
    from rlcot.rl import update as rl_update
    update_cfg = dataclasses.replace(update_cfg, packing="none")
    x = abstract_update_inputs(model_cfg, update_cfg, shapes, reference=reference, mesh=mesh)
    fn = rl_update.make_update_step(x["graphdef"], update_cfg, x["state"], mesh=mesh,
                                    critic_graphdef=x["critic_graphdef"],
                                    compiler_options=compiler_options,
                                    base_params=x["base"])
    base = () if x["base"] is None else (x["base"],)
    return fn.jitted.lower(x["state"], x["batch"], x["rng"], None, *base)


@dataclasses.dataclass(frozen=True)
class SampleShapes:
    """One rollout call: prompts (padded to the batch shards), G samples each, prompt and
    completion lengths (the compiled buckets)."""
    prompts: int
    num_samples: int
    prompt_len: int
    gen_len: int


def lower_sampler(model_cfg: ModelConfig, shapes: SampleShapes, *, mesh: Mesh | None = None,
                  cache_dtype: str | None = None, rules: Mapping[str, Any] | None = None,
                  shared_prefix: bool | None = None, compiler_options: dict | None = None
                  ) -> Any:
    """The compiled sampling loop (rlcot.sampling.loop.run), lowered for abstract inputs.
    shared_prefix: the KV layout (None: as the sampler decides, shared when G > 1)."""
    from rlcot.memory import shares_prefix
    from rlcot.models.transformer import abstract_model
    from rlcot.sampling import decode, loop
    from rlcot.sampling.spec import SamplingSpec
    rules = dict(SAMPLE_RULES if rules is None else rules)
    _, params = abstract_model(model_cfg)
    sp = jax.eval_shape(lambda p: decode.to_sampling_params(model_cfg, p), params)
    spec = SamplingSpec(max_new_tokens=shapes.gen_len, cache_dtype=cache_dtype).compiled(
        shapes.gen_len)
    static = loop.LoopStatic(
        model_cfg, spec, shapes.num_samples, pad_id=0,
        shared_prefix=shares_prefix(shapes.num_samples, shared_prefix), mesh=mesh,
        rules=tuple(sorted(rules.items())))
    B, P = shapes.prompts, shapes.prompt_len
    args = [sp, jax.ShapeDtypeStruct((B, P), jnp.int32), jax.ShapeDtypeStruct((B,), jnp.int32),
            jax.ShapeDtypeStruct((2,), jnp.uint32),
            jax.ShapeDtypeStruct((1, model_cfg.vocab_size), jnp.int16),
            jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32)]
    if mesh is not None:
        from rlcot.sharding import named_sharding
        rep = NamedSharding(mesh, PartitionSpec())
        # The sampling layout (rlcot.sampling.decode.to_sampling_params): top-level arrays
        # and one state per layer, each in its SAMPLE_RULES sharding.
        def sliced(v):
            shape, axes = v.get_value().shape[1:], tuple(v.axes[1:])
            return v.replace(jax.ShapeDtypeStruct(shape, v.get_value().dtype, sharding=(
                named_sharding(mesh, axes, rules, shape))), axes=axes or None)
        layer = jax.tree.map(sliced, params["blocks"], is_leaf=_is_var)
        top = {k: _sds(v.get_value(), named_sharding(mesh, v.axes, rules, v.get_value().shape))
               for k, v in params.items() if k != "blocks"}
        sp = decode.SamplingParams(top, (layer,) * model_cfg.n_layers)
        batch = lambda shape, axes: named_sharding(mesh, axes, rules, shape)  # noqa: E731
        args = [sp, _sds(args[1], batch((B, P), ("batch", None))),
                _sds(args[2], batch((B,), ("batch",)))] + [_sds(a, rep) for a in args[3:]]
    return jax.jit(loop.run, static_argnums=0).lower(static, *args)


def memory_per_device(compiled: Any) -> dict[str, int]:
    """XLA's memory analysis of a compiled program, bytes per device: arguments, outputs,
    aliased (donated arguments reused as outputs), temporaries, generated code, and the peak
    the program needs while it runs.

    XLA:CPU and XLA:GPU report one temporary allocation for the whole program, so the peak is
    arguments + outputs - aliased + temporaries. libtpu reports the peak itself
    (`peak_memory_in_bytes`, from its heap simulation) and a `temp_size_in_bytes` that is not
    additive (0 for an update step whose peak is 20x its arguments, measured with libtpu
    0.0.42.1); there `temp` is the peak minus the live arguments and outputs, so that `temp`
    means the same on every backend."""
    m = compiled.memory_analysis()
    if m is None:
        raise RuntimeError("this backend reports no memory analysis for compiled programs")
    out = {"argument": int(m.argument_size_in_bytes), "output": int(m.output_size_in_bytes),
           "alias": int(m.alias_size_in_bytes), "temp": int(m.temp_size_in_bytes),
           "code": int(getattr(m, "generated_code_size_in_bytes", 0))}
    live = out["argument"] + out["output"] - out["alias"]
    if _platform(compiled) == "tpu":
        out["peak"] = int(m.peak_memory_in_bytes)
        out["temp"] = max(out["peak"] - live, 0)
    else:
        out["peak"] = live + out["temp"]
    return out


def _platform(compiled: Any) -> str:
    """The platform of a compiled program's devices ('cpu', 'gpu', 'tpu')."""
    for s in jax.tree.leaves(compiled.input_shardings):
        devices = getattr(s, "device_set", None)
        if devices:
            return next(iter(devices)).platform
    return jax.default_backend()


def mesh_shape(mesh: Mesh | None) -> dict[str, int]:
    """{'data': .., 'fsdp': .., 'tensor': ..} of a mesh (all 1 without one)."""
    if mesh is None:
        return {a: 1 for a in MESH_AXES}
    return {a: int(mesh.shape[a]) for a in MESH_AXES}



# ---- The `compile` command: every RL stage of a study, for the local devices or a topology ----

def compile_stage(st: Any, earlier: Mapping[str, Any], resolver: Any, devices: Sequence[Any],
                  *, shared_prefix: bool | None = None,
                  compiler_options: dict | None = None) -> dict[str, Any]:
    """Lowers and compiles one RL stage's update step and sampling loop for `devices` (their
    mesh from the stage's mesh section), with the planner's estimate beside XLA's memory
    analysis. Returns {'plan', 'update', 'sampler', 'note', 'model'}. compiler_options: e.g.
    {"xla_backend_optimization_level": 0} on CPU compiles about 2x faster with the same
    memory analysis (tests)."""
    from rlcot import memory, preflight
    from rlcot.sampling.spec import bucket
    cfg = st.cfg
    model_cfg = preflight.model_config(cfg.model.source, cfg.model.overrides(), earlier,
                                       resolver)
    if model_cfg is None:
        raise ValueError(f"stage {st.name!r}: the architecture of {cfg.model.source!r} is not "
                         f"known without loading it (use a preset, a local Hugging Face "
                         f"directory or an earlier stage of the study)")
    learner, sizes, note = preflight.rl_memory_inputs(cfg, model_cfg)
    mesh = cfg.mesh.make(list(devices))
    from rlcot.rl.logprobs import row_shards
    learner.check_rows(sizes.rows, row_shards(mesh))
    reference = learner.objective.kl.placement != "none"
    kv = _kv_options(cfg.rollout, shared_prefix)
    plan = memory.plan(model_cfg, learner, sizes, mesh, reference=reference,
                       platform=devices[0].platform, **kv)
    shards = row_shards(mesh, SAMPLE_RULES)
    P, T = bucket(sizes.prompt_len, 16), bucket(sizes.max_new_tokens, 16)
    prompts = -(-bucket(sizes.batch_prompts) // shards) * shards
    update = memory_per_device(lower_update(
        model_cfg, learner, UpdateShapes(sizes.rows, P + sizes.max_new_tokens),
        reference=reference, mesh=mesh).compile(compiler_options))
    sampler = memory_per_device(lower_sampler(
        model_cfg, SampleShapes(prompts, sizes.num_samples, P, T), mesh=mesh,
        **kv).compile(compiler_options))
    return {"plan": plan, "update": update, "sampler": sampler, "note": note,
            "model": model_cfg}


def format_report(name: str, r: Mapping[str, Any], device: str) -> str:
    """The planner's table and the compiled programs' memory per device, side by side."""
    gib = lambda b: f"{b / (1 << 30):.3f} GiB"  # noqa: E731
    p = r["plan"]
    lines = [f"stage {name}: {r['model'].name or r['model'].family} "
             f"({r['model'].num_params() / 1e9:.2f}B parameters) on {device}", p.table()]
    if r["note"]:
        lines.append(f"  ({r['note']})")
    for label, m, est in (("update step", r["update"], p.update_program),
                          ("sampling loop", r["sampler"], p.sampling_program)):
        lines.append(f"compiled {label} per device: arguments {gib(m['argument'])}, outputs "
                     f"{gib(m['output'])} (aliased {gib(m['alias'])}), temporaries "
                     f"{gib(m['temp'])}; peak {gib(m['peak'])}; planner {gib(est)} "
                     f"(x{est / max(m['peak'], 1):.2f})")
    u, smp = r["update"], r["sampler"]
    both = max(u["peak"] + smp["argument"], smp["peak"] + u["argument"])
    lines.append(f"compiled, on each device while training (one program's peak plus the other's "
                 f"resident arguments): {gib(both)}; planner {gib(p.peak)}")
    return "\n".join(lines)


def _kv_options(rollout: Any, shared_prefix: bool | None) -> dict[str, Any]:
    """The stage's KV-cache options (rollout.shared_prefix, rollout.cache_dtype); a given
    shared_prefix (the command's --shared_prefix) overrides the stage's."""
    from rlcot import memory
    kv = memory.rollout_options(rollout)
    if shared_prefix is not None:
        kv["shared_prefix"] = shared_prefix
    return kv


def plan_stage(st: Any, earlier: Mapping[str, Any], resolver: Any, devices: int, *,
               shared_prefix: bool | None = None) -> tuple[Any, str]:
    """The planner's estimate alone for a stage on `devices` devices (its mesh section with
    -1 resolved), compiling nothing: (MemoryPlan, note)."""
    from rlcot import memory, preflight
    cfg = st.cfg
    model_cfg = preflight.model_config(cfg.model.source, cfg.model.overrides(), earlier,
                                       resolver)
    if model_cfg is None:
        raise ValueError(f"stage {st.name!r}: the architecture of {cfg.model.source!r} is not "
                         f"known without loading it")
    learner, sizes, note = preflight.rl_memory_inputs(cfg, model_cfg)
    shape = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        shape[shape.index(-1)] = devices // known
    if math.prod(shape) != devices:
        raise ValueError(f"mesh (data, fsdp, tensor)={tuple(shape)} does not use {devices} "
                         f"devices")
    mesh = memory.MeshShape(*shape)
    budget, source = memory.device_budget([])  # $RLCOT_MEMORY_BUDGET_GIB, if set
    return memory.plan(model_cfg, learner, sizes, mesh, **_kv_options(cfg.rollout, shared_prefix),
                       reference=learner.objective.kl.placement != "none",
                       budget_bytes=budget, budget_source=source), note


def compile_study(config: Any, *, topology: str | None = None, stage: str | None = None,
                  shared_prefix: bool | None = None, plan_devices: int | None = None,
                  compiler_options: dict | None = None, out: Any = print) -> dict[str, Any]:
    """`python -m rlcot.main compile`: every RL stage of the study (or `stage`), compiled for
    the local devices or for the TPU slice `topology`; prints one report per stage.
    plan_devices: print only the planner's table for that many devices (nothing compiled)."""
    from pathlib import Path
    import tempfile
    from rlcot import sources, study
    p = study.plan(config)
    if stage is not None and stage not in p.order:
        raise KeyError(f"--stage {stage!r}: no such stage; stages: {list(p.order)}")
    if plan_devices:
        devices, device = [], f"{plan_devices} devices (planner only)"
    else:
        devices = topology_devices(topology) if topology else jax.devices()
        device = (f"{topology} ({len(devices)} x {devices[0].device_kind})" if topology
                  else f"{len(devices)} local {devices[0].platform} device(s)")
    world = next((getattr(s.cfg, "world", None) for s in p.stages), None)
    resolver = sources.Resolver(study_dir=Path(tempfile.mkdtemp(prefix="rlcot_compile_")),
                                world=world)
    earlier: dict[str, Any] = {}
    reports = {}
    for st in p.stages:
        if st.kind == "rl" and (stage is None or st.name == stage):
            if plan_devices:
                plan, note = plan_stage(st, earlier, resolver, plan_devices,
                                        shared_prefix=shared_prefix)
                reports[st.name] = {"plan": plan, "note": note}
                out(f"stage {st.name} on {device}\n{plan.table()}"
                    + (f"\n  ({note})" if note else ""))
            else:
                reports[st.name] = compile_stage(st, earlier, resolver, devices,
                                                 shared_prefix=shared_prefix,
                                                 compiler_options=compiler_options)
                out(format_report(st.name, reports[st.name], device))
        earlier[st.name] = st
    if not reports:
        raise ValueError(f"no RL stage to compile in {list(p.order)}"
                         + (f" (--stage {stage})" if stage else ""))
    return reports
