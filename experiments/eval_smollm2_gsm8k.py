"""SmolLM2-135M-Instruct (the offline 4-bit GGUF, dequantised) on GSM8K test, zero-shot chat.

CPU subset (default: the first 100 test questions, greedy, up to 256 new tokens):

    RLCOT_SHARED_DATA=/work/shared/data python -m rlcot.main eval \\
        --config experiments/eval_smollm2_gsm8k.py --workdir /tmp/eval_smollm2

All 1,319 questions, greedy plus 8 samples per question (pass@k, maj@8), on an accelerator:

    python -m rlcot.main eval --config experiments/eval_smollm2_gsm8k.py:full --workdir DIR

Results land in DIR/eval.{md,csv,json} and DIR/eval_records/gsm8k_test.jsonl.

Prompt: the model's ChatML template, the question, then INSTRUCTION (chosen by measurement,
see the comment above it). The grader (rlcot.rewards math_accuracy) reads \\boxed{}, "####"
and "The answer is N", and compares with math-verify.

Measured (2 shared CPU cores, float32, greedy, 256 new tokens, first 100 test questions,
2026-11-24): greedy pass@1 3.0% (3/100), an answer found in 68%, 34% cut at 256 tokens, mean
199 tokens; 873 s of evaluation (23 tokens/s) + 20 s model load, 15 min 16 s wall for the
command. One of the three is credited by math-verify reading "The answer is 10 + 10 = 20" as
20. The same greedy completions came back token for token from a second process with a
different batch size (first 50 questions). Published GSM8K for SmolLM2-135M-Instruct is
~1.4% (5-shot), so a few percent is what this model does. The full variant has not been
run yet (no accelerator was at hand).
"""

from __future__ import annotations

from ml_collections import config_dict

# Measured on the first 50 test questions (greedy, 256 new tokens): this instruction 6.0%
# (3/50), the dataset default BOXED_INSTRUCTION 0.0% (0/50), no instruction 2.0% (1/50). The
# model hardly follows either format (asked for \boxed{} it boxes 1 of 50 answers, asked for
# "####" it writes it 0 times); asked for "####" it more often ends with "The answer is N"
# (an answer is found in 66% of completions vs 44% with \boxed{}), which the grader reads.
INSTRUCTION = ('Solve the problem step by step. At the end, write the final answer as a number '
               'after "####".')


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    variant = arg or "cpu"
    if variant not in ("cpu", "full"):
        raise ValueError(f"unknown variant {variant!r}: use 'cpu' (default) or 'full'")
    c = config_dict.ConfigDict()
    c.seed = 0
    c.model = config_dict.ConfigDict()
    c.model.source = "gguf:smollm2"
    c.model.tokenizer = config_dict.placeholder(str)
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"

    e = c.eval = config_dict.ConfigDict()
    e.datasets = ("gsm8k:test:100",) if variant == "cpu" else ("gsm8k:test",)
    e.subset = "first"
    e.subset_seed = 0
    e.template = "chat"
    e.instruction = INSTRUCTION
    e.system = config_dict.placeholder(str)
    e.shots = 0
    e.max_prompt_tokens = 512
    e.max_new_tokens = 256 if variant == "cpu" else 512
    e.greedy = True
    e.num_samples = 1 if variant == "cpu" else 8
    e.temperature = 0.7
    e.top_p = 0.95
    e.top_k = 0
    # 24 = a sampler row bucket (2^k or 3 * 2^k): no padding rows in the CPU run's full calls.
    e.batch_size = 24 if variant == "cpu" else 256
    e.reward_workers = 0 if variant == "cpu" else 4
    e.data_dir = config_dict.placeholder(str)
    e.source_dir = config_dict.placeholder(str)
    e.use_checkpoint = False
    if variant == "full":
        c.mesh = config_dict.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    return c
