"""The memory planner (rlcot.memory): its components follow the sharding rules, the KV cache
layouts differ by the prompt copies, a run that does not fit fails with the knobs that would
make it fit, and its estimate is within 20% of XLA's memory analysis of the compiled update
step and sampling loop on configurations outside the ones its coefficients were fitted to
(bench/memory_fit.py fits on one CPU device, tiny-shaped Llama and Gemma 3 configs without
micro-batches, critic or LoRA)."""

import dataclasses

import jax
import pytest

from rlcot import aot, memory
from rlcot.models.lora import LoraConfig
from rlcot.models.presets import get_config
from rlcot.rl.state import UpdateConfig
from rlcot.rl.value import ValueConfig

TINY = get_config("tiny")
GEMMA = get_config("tiny-gemma3")
TINY_BF16 = get_config("tiny", dtype="bfloat16")
# XLA:CPU's backend optimisation level changes code generation, not buffer assignment: the
# same memory analysis, about 2x faster compiles.
FAST = {"xla_backend_optimization_level": 0}
SIZES = memory.Sizes(batch_prompts=4, num_samples=4, prompt_len=32, max_new_tokens=96)


def _mesh(shape):
    if shape is None:
        return None
    return aot.make_mesh(jax.devices()[:shape[0] * shape[1] * shape[2]], *shape)


def test_parameters_shard_by_the_training_rules_and_the_sampler_by_its_own():
    one = memory.plan(TINY, UpdateConfig(), SIZES, (1, 1, 1))
    fsdp = memory.plan(TINY, UpdateConfig(), SIZES, (1, 4, 1))
    tensor = memory.plan(TINY, UpdateConfig(), SIZES, (1, 1, 2))
    n = TINY.num_params()
    # float32: 4 bytes a parameter on one device; every weight has an fsdp-sharded `embed`
    # dim except the norm scales (d_model each: 2 per layer + the final one).
    assert one.components["params"] == 4 * n
    norms = 4 * TINY.d_model * (2 * TINY.n_layers + 1)
    assert fsdp.components["params"] == (4 * n - norms) // 4 + norms
    # The sampler's layout has no FSDP: the same bytes as on one device; tensor halves all
    # but the norms.
    assert fsdp.components["sampler"] == 4 * n
    assert tensor.components["sampler"] == (4 * n - norms) // 2 + norms
    # Adam: two float32 moments of every parameter (plus its step count).
    assert one.components["optimizer"] - 2 * 4 * n in range(0, 64)


def test_the_shared_prefix_layout_keeps_one_prompt_block_per_prompt():
    B, G, P, T = 4, 8, 64, 32
    sizes = memory.Sizes(B, G, P, T)
    copied, _ = memory.rollout_bytes(TINY, sizes, shared_prefix=False)
    shared, _ = memory.rollout_bytes(TINY, sizes, shared_prefix=True)
    # Per token slot: keys and values of every layer (float32) and the slot's position.
    slot = 2 * TINY.n_layers * TINY.n_kv_heads * TINY.head_dim * 4 + 4
    assert copied == B * P * slot + B * G * (P + T) * slot  # prefill cache + G copies
    assert shared == B * P * slot + B * G * T * slot
    half, _ = memory.rollout_bytes(TINY, sizes, cache_dtype="bfloat16", shared_prefix=False)
    assert half < copied and half > copied // 2  # positions stay int32


def test_a_run_that_does_not_fit_names_its_components_and_the_knobs():
    learner = UpdateConfig()
    p = memory.plan(TINY, learner, SIZES)
    budget = int(p.peak * 0.6)
    with pytest.raises(memory.DoesNotFitError) as e:
        memory.check(TINY, learner, SIZES, budget_bytes=budget, budget_source="test budget")
    msg = str(e.value)
    for part in ("more than the budget", "test budget", "activations", "kv_cache", "optimizer",
                 "learner.remat=True", "learner.micro_batches=2", "(fits)"):
        assert part in msg, (part, msg)
    # The knob it says fits does fit.
    fixed = memory.plan(TINY, dataclasses.replace(learner, remat=True), SIZES)
    assert ("learner.remat=True: peak" in msg) and (fixed.peak <= budget) == (
        f"learner.remat=True: peak {fixed.peak / 2**30:.2f} GiB (fits)" in msg)
    memory.check(TINY, learner, SIZES, budget_bytes=p.peak)  # exactly enough: no error


def test_the_budget_comes_from_the_environment_on_cpu(monkeypatch):
    monkeypatch.delenv(memory.BUDGET_ENV, raising=False)
    assert memory.device_budget() == (None, "no budget (CPU)")
    monkeypatch.setenv(memory.BUDGET_ENV, "1.5")
    assert memory.device_budget()[0] == int(1.5 * 2**30)


UPDATE_CASES = {
    # name: (model, learner, mesh (data, fsdp, tensor)); each compile takes 15-40 s on 2
    # cores, so the default run takes two and the rest are marked slow.
    "critic": (TINY, UpdateConfig(value=ValueConfig()), None),
    "lora_data2_fsdp2": (TINY, UpdateConfig(lora=LoraConfig(enabled=True, rank=8)),
                         (2, 2, 1)),
    "gemma3_remat": (GEMMA, UpdateConfig(remat=True), None),
    "micro_batches_fsdp4": (TINY, UpdateConfig(micro_batches=2, minibatches=2), (1, 4, 1)),
    "fsdp2_tensor2_remat": (TINY, UpdateConfig(remat=True), (1, 2, 2)),
    # XLA:CPU keeps part of a bfloat16 model's remat buffers in bfloat16: its own fitted set
    # (memory.COEFFICIENTS['cpu/bfloat16']); with the float32 set this read 1.25.
    "bf16_fsdp2_remat": (TINY_BF16, UpdateConfig(remat=True), (1, 2, 1)),
}
SLOW = ("gemma3_remat", "micro_batches_fsdp4", "fsdp2_tensor2_remat", "critic")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in UPDATE_CASES])
def test_update_step_estimate_is_within_20_percent_of_the_compiled_step(name):
    cfg, learner, shape = UPDATE_CASES[name]
    sizes = memory.Sizes(8, 4, 32, 96)
    plan = memory.plan(cfg, learner, sizes, shape, reference=False, platform="cpu")
    compiled = aot.lower_update(cfg, learner, aot.UpdateShapes(sizes.rows, sizes.length),
                                reference=False, mesh=_mesh(shape)).compile(FAST)
    measured = aot.memory_per_device(compiled)
    ratio = plan.update_program / measured["peak"]
    assert 0.8 <= ratio <= 1.2, (name, ratio, measured, plan.components)


@pytest.mark.parametrize("cfg,shape", [(TINY, None), (TINY, (1, 4, 1)), (TINY, (1, 1, 2)),
                                       (TINY_BF16, (1, 2, 1))],
                         ids=["one", "fsdp4", "tensor2", "bf16_fsdp2"])
def test_sampling_loop_estimate_is_within_20_percent_of_the_compiled_loop(cfg, shape):
    # bf16: the cache is stored in bfloat16 on CPU too (counted at 4 bytes it read 1.42).
    sizes = memory.Sizes(8, 8, 64, 128)
    plan = memory.plan(cfg, UpdateConfig(), sizes, shape, platform="cpu")
    compiled = aot.lower_sampler(cfg, aot.SampleShapes(8, 8, 64, 128),
                                 mesh=_mesh(shape)).compile(FAST)
    measured = aot.memory_per_device(compiled)
    ratio = plan.sampling_program / measured["peak"]
    assert 0.8 <= ratio <= 1.2, (shape, ratio, measured, plan.components)


def test_each_compiler_has_its_own_coefficients():
    """XLA:CPU and libtpu plan the update step's buffers differently (TPU keeps far less
    with remat), so the planner uses the set fitted to the compiler the run compiles with;
    GPUs, not measured, use TPU's."""
    cpu, tpu = memory.coefficients("cpu"), memory.coefficients("tpu")
    assert cpu is memory.COEFFICIENTS["cpu"] and tpu is memory.COEFFICIENTS["tpu"]
    assert cpu != tpu and memory.coefficients("gpu") is tpu
    assert memory.coefficients("cpu", "bfloat16") is memory.COEFFICIENTS["cpu/bfloat16"]
    assert memory.coefficients("tpu", "float16") is tpu  # no set of its own: the platform's
    sizes = memory.Sizes(8, 4, 256, 256)
    cfg = get_config("tiny", d_model=512, head_dim=128, mlp_dim=1536, dtype="bfloat16")
    on = {p: memory.plan(cfg, UpdateConfig(remat=True), sizes, platform=p)
          for p in ("cpu", "tpu")}
    assert on["cpu"].components["activations"] != on["tpu"].components["activations"]


def test_the_peak_of_a_tpu_program_is_the_one_libtpu_reports():
    """libtpu's memory analysis gives the peak of its heap simulation; its temp_size is not
    additive (0 for an update step whose peak was 20x its arguments, libtpu 0.0.42.1), so
    the arguments + outputs - aliased + temporaries rule of XLA:CPU does not apply there.
    The numbers are libtpu's for the tiny update step (16 rows x 128 tokens, v5e)."""
    import types

    def compiled(platform):
        analysis = types.SimpleNamespace(
            argument_size_in_bytes=5166592, output_size_in_bytes=5138432,
            alias_size_in_bytes=5123072, temp_size_in_bytes=0,
            generated_code_size_in_bytes=5130752, peak_memory_in_bytes=117418496)
        device = types.SimpleNamespace(platform=platform)
        sharding = types.SimpleNamespace(device_set={0: device}.values())
        return types.SimpleNamespace(memory_analysis=lambda: analysis,
                                     input_shardings=([sharding], {}))

    tpu = aot.memory_per_device(compiled("tpu"))
    assert tpu["peak"] == 117418496
    assert tpu["temp"] == 117418496 - (5166592 + 5138432 - 5123072)
    cpu = aot.memory_per_device(compiled("cpu"))
    assert cpu["peak"] == 5166592 + 5138432 - 5123072 + 0 and cpu["temp"] == 0
