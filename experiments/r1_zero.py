"""R1-Zero: RL with GRPO straight from a base model, the R1-Zero template and rule rewards
(answer accuracy + format), then the held-out table and plots.

Default (the toy world on CPU: a 0.44M-parameter base model pre-trained on column-addition
worked solutions, many with dropped carries, some with checking steps or in a second
"language"; cached after the first run):

    python -m rlcot.main run --config experiments/r1_zero.py --workdir runs/r1_zero

Variants (`--config experiments/r1_zero.py:VARIANT`):

    toy            the default above
    toy_checks     the same, but the base model's main pass always drops carries (flaw_rate 1)
    smollm2_smoke  a few RL steps of SmolLM2-135M-Instruct (the offline GGUF) on GSM8K, CPU
    qwen_math_1.5b Qwen2.5-Math-1.5B on MATH train; eval GSM8K test and MATH-500 (accelerator)
    qwen_0.5b      Qwen2.5-0.5B-Instruct on GSM8K train; same evals (accelerator)

Any field can be overridden: `--config.seed=1 --config.train.steps=40`. The run writes
config.json, metrics.jsonl, tensorboard/, eval/stepNNNNNN.md, summary.json, curves.png and
checkpoints under --workdir, and resumes from it when started again with the same command.

Measured (2 CPU cores, float32, 2026-11-24; base-model pre-training 286 s once, then cached;
RL 40 steps + 5 evaluations: 201 s / 214 s / 211 s of loop wall time, 3 min 49 s to 4 min 12 s
per command; update 41%, evaluation 29%, rollout 19%, log-probs 10% of the loop's time).
The three seeds share the base model (the world and pre-training seeds are config.world's);
config.seed drives RL sampling, data order and the sampled evaluation:

| held-out (256 problems) | base model | seed 0 | seed 1 | seed 2 |
|---|---:|---:|---:|---:|
| greedy pass@1 (%) | 31.2 | 99.6 | 99.2 | 99.6 |
| sampled pass@1 = avg@8 (%) | 43.5 / 41.4 / 43.1 | 88.5 | 86.3 | 86.3 |
| pass@8 (%) | 93.4 / 91.8 / 91.4 | 100.0 | 100.0 | 100.0 |
| mean response tokens (greedy) | 53.1 | 55.3 | 55.3 | 55.3 |
| mean response tokens (sampled) | 57.9 / 57.0 / 56.4 | 55.9 | 56.2 | 55.4 |
| checking-step rate, greedy (%) | 0.0 | 0.0 | 0.0 | 0.0 |
| second-language word share, greedy (%) | 0.0 | 0.0 | 0.0 | 0.0 |
| format compliance, greedy (%) | 100.0 | 100.0 | 100.0 | 100.0 |
| format compliance, sampled (%) | 88.4 / 86.6 / 86.6 | 99.3 | 99.2 | 98.6 |

Greedy accuracy rises by 68.0, 68.0 and 68.4 points. Re-running seed 0 gave the same
metrics.jsonl, every non-timing value equal, and the same results.md. What RL found here is
the cheapest fix: stop dropping carries in the main pass. It did not take up the checking
steps (their greedy rate stays 0) and responses did not grow; the `toy_checks` variant
removes that shortcut.

`toy_checks` (the base model's main pass always forgets carries, so on problems with a carry
only solutions with checking steps are right; seed 0, measured the same day: 10 min 7 s for
the command including the new base model's 293 s of pre-training, 276 s of RL loop):

| held-out (256 problems) | base model | after 40 RL steps |
|---|---:|---:|
| greedy pass@1 (%) | 31.2 | 99.2 |
| sampled pass@1 = avg@8 (%) | 37.9 | 87.2 |
| pass@8 (%) | 83.2 | 100.0 |
| mean response tokens (greedy) | 53.1 | 98.8 |
| mean response tokens (sampled) | 57.6 | 98.0 |
| checking-step rate, greedy (%) | 0.0 | 100.0 |
| format compliance, greedy / sampled (%) | 100.0 / 88.5 | 100.0 / 97.8 |

Here the R1-Zero phenomena show: the checking behaviour, present in 20% of the corpus and
never chosen by greedy decoding before RL, becomes the policy's default, and responses grow
from ~55 to ~99 tokens during training (plots: docs/r1_zero_toy_seed0.png,
docs/r1_zero_toy_checks.png). The second-language share stays at 0 in both variants (no
reward touches it).
"""

from __future__ import annotations

from ml_collections import config_dict

from rlcot import run_config, stages
from rlcot.toyworld import base_stage

VARIANTS = ("toy", "toy_shortcut", "smollm2_smoke", "qwen_math_1.5b", "qwen_0.5b")


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
    if variant == "smollm2_smoke":
        return smollm2_smoke()
    if variant == "qwen_math_1.5b":
        return _accelerator("hf:Qwen/Qwen2.5-Math-1.5B", "math")
    if variant == "qwen_0.5b":
        return _accelerator("hf:Qwen/Qwen2.5-0.5B-Instruct", "gsm8k")
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
