"""GRPO recipes for real models on accelerators, sized with the memory planner: R1-Zero-style
RL (GRPO advantages, DAPO's clip-higher, no KL term, accuracy + format rewards) on MATH train,
evaluated on GSM8K test and MATH-500.

Variants (`--config experiments/recipes.py:VARIANT`):

    qwen2.5_7b_v5p    Qwen2.5-7B on a v5p-64 slice (32 chips): mesh fsdp=8 x tensor=4
    gemma3_4b_v5e     Gemma-3-4B on a v5e-16 slice (16 chips, 16 GiB each): fsdp=8 x tensor=2,
                      16 prompts x 8 samples, 384 + 768 tokens
    qwen2.5_1.5b_gpu  Qwen2.5-1.5B on one GPU (80 GiB)
    tiny              the same settings on the tiny preset, small enough for CPU (tests)

Check a recipe's memory before spending accelerator time (nothing is allocated):

    python -m rlcot.main compile --config experiments/recipes.py:gemma3_4b_v5e --plan_devices 16
    python -m rlcot.main compile --config experiments/recipes.py:gemma3_4b_v5e --topology v5e-16

The first prints the planner's table (rlcot.memory) for 16 devices; the second compiles the
update step and the sampling loop for the slice (needs libtpu in a virtualenv of its own: the
README's `compile` section) and prints XLA's memory per chip beside the planner's.
Run a recipe on a pod with tpu_setup.sh (every worker), or on one GPU host with
`python -m rlcot.main run --config experiments/recipes.py:qwen2.5_1.5b_gpu --workdir runs/q15`.

Per chip (2026-11-30, jax 0.10.2 + libtpu 0.0.42.1 compile-only devices on a 2-core CPU
machine, about 80 s per recipe: `python bench/memory_check.py --recipes`; f32 weights and Adam
moments, bf16 compute and KV cache, remat, one shared prompt block per prompt):

| recipe | chips | planner peak | update step: planner / compiled | sampling loop: planner / compiled |
|---|---:|---:|---:|---:|
| Qwen2.5-7B, v5p-64 (95 GiB) | 32 | 14.1 GiB | 7.03 / 6.84 GiB | 11.14 / 11.34 GiB |
| Gemma-3-4B, v5e-16 (16 GiB) | 16 | 14.2 GiB | 6.99 / 6.25 GiB | 9.59 / 11.69 GiB |
| Qwen2.5-1.5B, 1 GPU (80 GiB) | 1 | 41.8 GiB | not compiled | not compiled |

Gemma-3-4B fits a 16 GiB v5e chip with little margin (its sampling loop compiles to 11.7 GiB
of the 15.75 usable). The README's memory section says how far to trust the planner on TPU.
"""

from __future__ import annotations

from pathlib import Path

from ml_collections import config_dict

from rlcot.sweep import spec

VARIANTS = ("qwen2.5_7b_v5p", "gemma3_4b_v5e", "qwen2.5_1.5b_gpu", "tiny")

def _common(model: str) -> config_dict.ConfigDict:
    """R1-Zero's accelerator recipe (experiments/r1_zero.py beside this file: 64 prompts x 8
    samples per step, prompts up to 512 tokens, 1024 new tokens, 4 minibatches, remat, bf16
    compute with float32 weights and Adam moments) on MATH, without dynamic sampling (refused
    across processes: its extra rounds would move groups between hosts), logits 256 positions
    at a time."""
    c = _r1_zero()._accelerator(model, "math")
    c.name = "recipes"
    c.rollout.dynamic_sampling = False
    c.learner.logprob_chunk = 256
    return c


def _r1_zero():
    """experiments/r1_zero.py beside this file."""
    return spec.load_experiment(Path(__file__).with_name("r1_zero.py"))


def qwen7b_v5p() -> config_dict.ConfigDict:
    """Qwen2.5-7B on v5p-64 (32 chips): the train state FSDP-sharded over 8 and
    tensor-parallel over 4, so that the sampler's unsharded-over-FSDP copy of the weights is
    a quarter of the model per chip."""
    c = _common("hf:Qwen/Qwen2.5-7B")
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 8, 4
    c.learner.micro_batches = 4  # 128 rows per minibatch -> 32 rows per micro-batch
    return c


def gemma4b_v5e() -> config_dict.ConfigDict:
    """Gemma-3-4B on v5e-16 (16 chips x 16 GiB). Its KV cache is large (34 layers x 4 KV
    heads x 256 dims: 136 KiB per token), so this recipe takes 16 prompts x 8 samples per
    step, prompts up to 384 tokens and 768 new ones, batch-sharded 8 ways; tensor=2 halves
    the sampler's weights (the 262k-word embedding included)."""
    c = _common("hf:google/gemma-3-4b-it")
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 8, 2
    c.data.batch_prompts = 16
    c.data.max_prompt_tokens = 384
    c.rollout.max_new_tokens = 768
    c.eval.max_new_tokens = 768
    c.learner.micro_batches = 4
    return c


def qwen1_5b_gpu() -> config_dict.ConfigDict:
    """Qwen2.5-1.5B on one 80 GiB GPU."""
    c = _common("hf:Qwen/Qwen2.5-1.5B")
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    c.learner.micro_batches = 8
    return c


def tiny() -> config_dict.ConfigDict:
    """The recipe's settings on the tiny preset at CPU sizes (what the tests compile)."""
    c = _common("preset:tiny")
    c.model.dtype = c.model.param_dtype = "float32"
    c.model.tokenizer = "toyworld"
    c.data.dataset = "toyworld"
    c.data.template.instruction = ""
    c.data.batch_prompts = 4
    c.data.max_prompt_tokens = 32
    c.rollout.num_samples = 4
    c.rollout.max_new_tokens = 32
    c.learner.minibatches = 1
    c.learner.micro_batches = 2
    c.learner.logprob_chunk = 64
    c.train.reward_workers = 0
    c.eval = dict(datasets=("toyworld:test:8",), template="r1_zero", instruction="",
                  max_new_tokens=32, greedy=True, num_samples=1, batch_size=8,
                  reward_workers=0)
    return c


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    variant = arg or "tiny"
    makers = {"qwen2.5_7b_v5p": qwen7b_v5p, "gemma3_4b_v5e": gemma4b_v5e,
              "qwen2.5_1.5b_gpu": qwen1_5b_gpu, "tiny": tiny}
    if variant not in makers:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    return makers[variant]()
