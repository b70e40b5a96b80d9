"""Checks rlcot.memory's plan against XLA's memory analysis on configurations outside the fit.

For each case (real model shapes cut to a few layers, meshes, bfloat16 compute, remat, LoRA, a
critic, micro-batches) compiles the update step and the sampling loop from abstract inputs
(rlcot.aot: nothing is allocated) and prints the planner's bytes per device beside the
compiled programs' peaks. Exits 1 when a ratio leaves [0.8, 1.2].

    python bench/memory_check.py --topology v5e-8      # libtpu's compiler, no TPU needed
    python bench/memory_check.py                        # the local devices (8 fake CPUs:
                                                        # XLA_FLAGS=--xla_force_host_platform_device_count=8)
    python bench/memory_check.py --recipes              # also the full recipes (minutes each)

The CPU cases of the default test run are in tests/test_memory.py; this script is how the TPU
(and GPU) coefficients are checked, where the test machines have no such compiler.
"""

from __future__ import annotations

import argparse
import sys
import time

from rlcot import aot, memory
from rlcot.models.lora import LoraConfig
from rlcot.models.presets import get_config
from rlcot.rl.state import UpdateConfig
from rlcot.rl.value import ValueConfig

BF16 = {"dtype": "bfloat16", "param_dtype": "float32"}


def _cut(cfg, n_layers):
    """A model's first `n_layers` layers (its layer pattern cut to match)."""
    types = cfg.layer_types[:n_layers] if cfg.layer_types else None
    return cfg.replace(n_layers=n_layers, layer_types=types)


def cases(devices: int) -> list[tuple]:
    """(name, model config, learner, mesh (data, fsdp, tensor), sizes) on `devices` devices."""
    remat = UpdateConfig(remat=True)
    half = max(devices // 2, 1)
    out = [
        ("qwen2.5-0.5b x4 layers, bf16, remat, fsdp",
         get_config("qwen2.5-0.5b", n_layers=4, **BF16), remat, (1, devices, 1),
         memory.Sizes(16, 4, 256, 256)),
        ("gemma-3-1b x6 layers, bf16, remat, fsdp x tensor",
         _cut(get_config("gemma-3-1b", **BF16), 6), remat, (1, half, 2),
         memory.Sizes(8, 8, 128, 384)),
        ("llama-3.2-1b x2 layers, f32, micro-batches 2, data x fsdp",
         get_config("llama-3.2-1b", n_layers=2), UpdateConfig(micro_batches=2),
         (2, half // 2 if half > 1 else 1, 1), memory.Sizes(16, 2, 128, 128)),
        ("qwen2.5-0.5b x4 layers, bf16, remat, critic",
         get_config("qwen2.5-0.5b", n_layers=4, **BF16),
         UpdateConfig(remat=True, value=ValueConfig()), (1, devices, 1),
         memory.Sizes(8, 4, 256, 256)),
        ("qwen3-0.6b x4 layers, bf16, remat, LoRA r16",
         get_config("qwen3-0.6b", n_layers=4, **BF16),
         UpdateConfig(remat=True, lora=LoraConfig(enabled=True, rank=16, alpha=32.0)),
         (1, devices, 1), memory.Sizes(16, 4, 256, 256)),
    ]
    return [c for c in out if c[3][0] * c[3][1] * c[3][2] == devices]


def recipes() -> list[tuple]:
    """The documented accelerator recipes (experiments/recipes.py) with their own sizes."""
    from pathlib import Path
    from rlcot import preflight, run_config, sources
    from rlcot.sweep import spec
    exp = spec.load_experiment(Path(__file__).resolve().parents[1] / "experiments/recipes.py")
    out = []
    for variant, topology in (("gemma3_4b_v5e", "v5e-16"), ("qwen2.5_7b_v5p", "v5p-64")):
        rc = run_config.resolve(exp.get_config(variant))
        cfg = preflight.model_config(rc.model.source, rc.model.overrides(), {},
                                     sources.Resolver())
        learner, sizes, _ = preflight.rl_memory_inputs(rc, cfg)
        out.append((f"recipe {variant} on {topology}", cfg, learner,
                    (rc.mesh.data, rc.mesh.fsdp, rc.mesh.tensor), sizes, topology))
    return out


def check(name, cfg, learner, shape, sizes, devices, options) -> list[float]:
    from rlcot.sampling.spec import bucket
    platform = devices[0].platform
    mesh = aot.make_mesh(devices[:shape[0] * shape[1] * shape[2]], *shape)
    plan = memory.plan(cfg, learner, sizes, shape, reference=False, platform=platform)
    t = time.monotonic()
    P = bucket(sizes.prompt_len, 16)
    update = aot.memory_per_device(aot.lower_update(
        cfg, learner, aot.UpdateShapes(sizes.rows, P + sizes.max_new_tokens),
        reference=False, mesh=mesh).compile(options))
    shards = shape[0] * shape[1]
    prompts = -(-bucket(sizes.batch_prompts) // shards) * shards
    sampler = aot.memory_per_device(aot.lower_sampler(
        cfg, aot.SampleShapes(prompts, sizes.num_samples, P, bucket(sizes.max_new_tokens, 16)),
        mesh=mesh).compile(options))
    ratios = [plan.update_program / update["peak"], plan.sampling_program / sampler["peak"]]
    gib = 2 ** 30
    print(f"{name} (mesh {shape}, {time.monotonic() - t:.0f} s)\n"
          f"    update step    planner {plan.update_program / gib:7.3f} GiB  compiled "
          f"{update['peak'] / gib:7.3f} GiB  ratio {ratios[0]:.2f}\n"
          f"    sampling loop  planner {plan.sampling_program / gib:7.3f} GiB  compiled "
          f"{sampler['peak'] / gib:7.3f} GiB  ratio {ratios[1]:.2f}", flush=True)
    return ratios


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topology", default=None, help="a TPU topology such as v5e-8")
    ap.add_argument("--recipes", action="store_true", help="also the full recipes")
    ap.add_argument("--only", default=None, help="cases whose name contains this")
    args = ap.parse_args()
    import jax
    devices = aot.topology_devices(args.topology) if args.topology else jax.devices()
    options = {"xla_backend_optimization_level": 0} if devices[0].platform == "cpu" else None
    print(f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform}), "
          f"jax {jax.__version__}")
    todo = [c + (None,) for c in cases(len(devices))]
    if args.recipes:
        todo += recipes()
    bad = []
    for name, cfg, learner, shape, sizes, topology in todo:
        if args.only and args.only not in name:
            continue
        devs = aot.topology_devices(topology) if topology else devices
        ratios = check(name, cfg, learner, shape, sizes, devs, options)
        if not all(0.8 <= r <= 1.2 for r in ratios):
            bad.append(name)
    print("all within 20%" if not bad else f"outside 20%: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
