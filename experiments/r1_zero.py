"""R1-Zero: RL with GRPO straight from a base model, the R1-Zero template and rule rewards
(answer accuracy + format), then the held-out table and plots.

Default (the toy world on CPU; two stages: `base` pre-trains a 0.44M-parameter model on
column-addition worked solutions whose main pass always drops carries, 20% of them with
checking steps (the only right ones on carry problems) and 15% partly in a second "language";
cached after the first run and shared by every study with the same settings; `rl` runs GRPO
from it):

    python -m rlcot.main run --config experiments/r1_zero.py --workdir runs/r1_zero

Variants (`--config experiments/r1_zero.py:VARIANT`):

    toy            the default above
    toy_shortcut   the world where each carry is dropped with probability 0.6 (RL can then
                   fix accuracy without taking up checking steps)
    toy_lora       `toy` training LoRA adapters (rank 16 on every projection, lr 1e-3) instead
                   of every weight
    smollm2_smoke  a few RL steps of SmolLM2-135M-Instruct (the offline GGUF) on GSM8K, CPU
    qwen_math_1.5b Qwen2.5-Math-1.5B on MATH train; eval GSM8K test and MATH-500 (accelerator)
    qwen_0.5b      Qwen2.5-0.5B-Instruct on GSM8K train; same evals (accelerator)

Any field can be overridden: `--config.seed=1 --config.train.steps=40
--config.stages.base.train.steps=300`. The run writes runs/r1_zero/{base,rl}/ (config.json,
metrics.jsonl, tensorboard/, eval/stepNNNNNN.md, results.md, summary.json, curves.png,
model.json, checkpoints) and runs/r1_zero/summary.json, and resumes from them when started
again with the same command.

Measured 2026-11-30 on 2 cores of an AMD EPYC (float32; per machine type): seed 0 from an
empty cache 5 min 49 s for the command (base stage 225 s, rl stage 106 s: update 38%,
evaluation 31%, rollout 21%, log-probs 9%); seeds 1 and 2 with the cached base model 1 min
52 s and 2 min 51 s (seed 2 on a busier machine). Held-out, 256 problems:

| held-out (256 problems) | base model | seed 0 | seed 1 | seed 2 |
|---|---:|---:|---:|---:|
| greedy pass@1 (%) | 31.2 | 99.2 | 98.8 | 98.8 |
| sampled pass@1 = avg@8 (%) | 38.1 / 37.6 / 37.2 | 85.0 | 87.9 | 88.3 |
| pass@8 (%) | 84.0 / 85.5 / 84.8 | 99.6 | 99.6 | 99.6 |
| mean response tokens (greedy) | 53.1 | 98.8 | 98.8 | 98.8 |
| mean response tokens (sampled) | 57.4 / 56.5 / 55.8 | 98.1 | 97.7 | 97.8 |
| checking-step rate, greedy (%) | 0.0 | 100.0 | 100.0 | 100.0 |
| second-language word share, greedy (%) | 0.0 | 0.0 | 0.0 | 0.0 |
| format compliance, greedy (%) | 100.0 | 100.0 | 100.0 | 100.0 |
| format compliance, sampled (%) | 88.8 / 87.2 / 87.3 | 97.6 | 98.2 | 97.7 |

Accuracy rises by 67.6-68.0 points, the checking behaviour (never chosen by greedy decoding
before RL) becomes the policy's default, and responses grow from ~53 to ~99 tokens: the three
R1-Zero phenomena. Re-running seed 0 gave the
same metrics.jsonl (every non-timing value) and the same results.md.

`toy_lora` (rank-16 LoRA adapters, alpha 32, on every projection, lr 1e-3; the base frozen),
seed 0, measured 2026-11-30 on the same 2 cores shared with another job:

    python -m rlcot.main run --config experiments/r1_zero.py:toy_lora --workdir runs/r1_zero_lora

rl stage 160 s (full fine-tuning on the same machine that day: 164 s; update 41%, evaluation
32%, rollout 18%, log-probs 8%); greedy pass@1 31.2 -> 98.0% (full fine-tuning, seed 0:
99.2%), avg@8 38.1 -> 87.3% (85.0%), pass@8 84.0 -> 99.6% (99.6%), greedy responses 53 -> 99
tokens, checking rate 0 -> 100%, with 77.8K trained parameters (17.6% of the model) and 2.9
MiB of weights + adapters + gradients + Adam state instead of 6.8 MiB (README, "LoRA").
"""

from __future__ import annotations

from ml_collections import config_dict

from rlcot import run_config, stages
from rlcot.toyworld import base_stage

VARIANTS = ("toy", "toy_shortcut", "toy_lora", "smollm2_smoke", "qwen_math_1.5b", "qwen_0.5b")


def _common() -> config_dict.ConfigDict:
    """Every knob at its default (rlcot.run_config.default_config), then the R1-Zero recipe:
    GRPO advantages, PPO clipping with DAPO's higher upper bound, no KL term, token-mean loss,
    accuracy + format rewards."""
    c = run_config.default_config()
    c.name = "r1_zero"
    c.advantage.estimator = "grpo"
    c.advantage.std_over = "group"
    obj = c.learner.objective
    obj.policy.name = "ppo_clip"
    obj.policy.eps_low, obj.policy.eps_high = 0.2, 0.28
    obj.aggregation.mode = "token_mean"
    obj.kl.placement = "none"
    c.learner.optimizer.max_grad_norm = 1.0
    c.rewards = config_dict.ConfigDict({
        "accuracy": {"reward": "math_accuracy", "weight": 1.0},
        "format": {"reward": "r1_format", "weight": 0.5},
    })
    return c


def toy() -> config_dict.ConfigDict:
    """Two stages: `base` pre-trains the toy model on the world's corpus (cached and shared by
    every study with the same settings), `rl` runs GRPO from it. In this world the main pass
    always forgets carries (flaw_rate 1), so on problems with a carry only solutions with
    checking steps are right: reward can only rise through checking, and longer responses."""
    c = _common()
    c.world.rates.flaw_rate = 1.0
    c.stage_order = ("base", "rl")
    c.stages.base = base_stage()
    c.stages.rl = stages.defaults("rl")
    c.model.source = "stage:base"
    c.data.dataset = "toyworld"
    c.data.batch_prompts = 16
    c.data.template.instruction = ""
    c.rollout.num_samples = 8
    c.rollout.max_new_tokens = 160
    c.learner.optimizer.lr = 1e-4
    c.learner.minibatches = 2
    # The padded update: on this 0.44M-parameter model a step's work is small beside a compile,
    # and packed shapes follow the growing responses (5 compiled shapes in 40 steps). Measured
    # on 2 cores of an AMD EPYC, same machine state: rl stage 92.6 s padded, 107.6 s packed
    # (update 34.9 s vs 42.4 s, though the packed step itself is 0.70 s vs 0.80 s).
    c.learner.packing = "none"
    c.train.steps = 40
    c.train.checkpoint_every = 10
    c.train.eval_every = 10
    c.train.reward_workers = 0
    c.eval = dict(datasets=("toyworld:test:256",), template="r1_zero", instruction="",
                  max_new_tokens=160, greedy=True, num_samples=8, temperature=1.0,
                  batch_size=256, reward_workers=0)
    return c


def toy_shortcut() -> config_dict.ConfigDict:
    """The world where the main pass forgets each incoming carry with probability 0.6: RL can
    raise accuracy by no longer dropping carries, without taking up checking steps."""
    c = toy()
    c.world.rates.flaw_rate = 0.6
    return c


def toy_lora() -> config_dict.ConfigDict:
    """`toy` with LoRA: rank-16 adapters (alpha 32) on every attention and MLP projection are
    trained instead of every weight, at 10x the learning rate (LoRA's usual setting); the base
    model stays frozen."""
    c = toy()
    c.learner.lora.enabled = True
    c.learner.lora.rank = 16
    c.learner.lora.alpha = 32.0
    c.learner.optimizer.lr = 1e-3
    return c


def smollm2_smoke() -> config_dict.ConfigDict:
    c = _common()
    c.model.source = "gguf:smollm2"
    c.model.dtype = c.model.param_dtype = "float32"
    c.data.dataset = "gsm8k"
    c.data.batch_prompts = 2
    c.data.template.name = "chat"
    c.data.template.instruction = _GSM8K_INSTRUCTION
    c.data.max_prompt_tokens = 256
    c.rollout.num_samples = 4
    c.rollout.max_new_tokens = 64
    c.learner.optimizer.lr = 1e-6
    # Logits of 64 positions at a time (49,152-word vocabulary) and recomputed layer
    # activations: keeps the CPU run's memory small.
    c.learner.logprob_chunk = 64
    c.learner.remat = True
    c.train.steps = 2
    c.train.checkpoint_every = 2
    c.train.reward_workers = 0
    c.eval = dict(datasets=("gsm8k:test:8",), template="chat", instruction=_GSM8K_INSTRUCTION,
                  max_new_tokens=64, greedy=True, num_samples=1, batch_size=8,
                  reward_workers=0)
    return c


def _accelerator(model: str, dataset: str) -> config_dict.ConfigDict:
    c = _common()
    c.model.source = model
    c.model.dtype, c.model.param_dtype = "bfloat16", "float32"
    c.data.dataset = dataset
    c.data.batch_prompts = 64
    c.data.max_prompt_tokens = 512
    c.rollout.num_samples = 8
    c.rollout.max_new_tokens = 1024
    c.rollout.dynamic_sampling = True
    c.rollout.stop_strings = ("</answer>",)
    u = c.learner
    u.optimizer.lr = 1e-6
    u.optimizer.schedule = "linear_warmup"
    u.optimizer.warmup_steps = 10
    u.minibatches = 4
    u.micro_batches = 4
    u.remat = True
    c.train.steps = 500
    c.train.checkpoint_every = 25
    c.train.eval_every = 50
    c.train.reward_workers = 8
    c.eval = dict(datasets=("gsm8k:test", "math500:test"), template="r1_zero",
                  max_new_tokens=1024, greedy=True, num_samples=8, temperature=0.6,
                  top_p=0.95, batch_size=512, reward_workers=8)
    return c


_GSM8K_INSTRUCTION = ('Solve the problem step by step. At the end, write the final answer as a '
                      'number after "####".')


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    variant = arg or "toy"
    if variant == "toy":
        return toy()
    if variant == "toy_shortcut":
        return toy_shortcut()
    if variant == "toy_lora":
        return toy_lora()
    if variant == "smollm2_smoke":
        return smollm2_smoke()
    if variant == "qwen_math_1.5b":
        return _accelerator("hf:Qwen/Qwen2.5-Math-1.5B", "math")
    if variant == "qwen_0.5b":
        return _accelerator("hf:Qwen/Qwen2.5-0.5B-Instruct", "gsm8k")
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
