"""Kimi k1.5's long2short comparison on the toy world: a long-CoT model (SFT on long chains of
thought, then RL) answers right but long; four methods make it shorter. Which keeps the
accuracy at what length?

One study per seed (argument `FILE` or `FILE:tiny`), its stages in order:

    base        the toy base model (r1_zero's world where checking is needed; cached)
    long        long-CoT SFT from base: 2,000 solutions of `toyworld_long` (each step's check
                written 1, 2 or 3 times, probabilities 0.2 / 0.3 / 0.5: redundant re-checking,
                where one check suffices), 200 steps of 32, lr 1e-3
    long_rl     RL from long (accuracy + format, r1_zero's GRPO recipe, 20 steps): the LONG
                MODEL every method starts from
    length_rl_01, length_rl_03, length_rl_1
                (1) length-penalty RL from long_rl: the same RL plus Kimi's length reward
                (`kimi_length`, per group, range [-0.5, 0.5]) at weight 0.1, 0.3 or 1, 20 steps
    rs_data     (2) shortest rejection sampling: 8 samples on 256 train prompts from long_rl,
                the shortest correct one per prompt
    rs_sft      ... and SFT of long_rl on them (40 steps of 32, lr 3e-4)
    pairs       (3) DPO pairs from long_rl's samples: the shortest correct one against an
                incorrect one, else against the longest correct one
    dpo         ... and DPO of long_rl on them (sigmoid loss, beta 0.1, lr 2e-5, 2 epochs)
    short       a short-CoT model: SFT of long_rl on 300 solutions checked once per step
                (`toyworld_checked`, the R1 study's cold start), 60 steps of 32, lr 3e-4
    merge       (4) the average of long_rl's and short's parameters (weights 0.5 / 0.5)
    merge_eval  held-out evaluation of the merged model

Every model-making stage (and merge_eval) ends with the same held-out evaluation (256 test
problems, greedy and 8 samples at temperature 1, 224 new tokens at most); the table's rows are
those stages (views of one study run per seed).

Commands (2 CPU cores):

    python -m rlcot.main sweep --config experiments/kimi_long2short.py --root runs/kimi --parallel 2
    python -m rlcot.main table --config experiments/kimi_long2short.py --root runs/kimi
    python -m rlcot.main plot  --config experiments/kimi_long2short.py --root runs/kimi

One seed alone: `python -m rlcot.main run --config experiments/kimi_long2short.py --workdir
DIR --config.seed=1`; one stage of it: `--stage NAME`.

Measured 2026-11-30 on 2 cores of an AMD EPYC (per machine type), 3 seeds, from the `table`
command (the sweep above; seed 0 ran alone beside 2 other jobs in 14 min 50 s, seeds 1 and 2
together beside the 2 processes of another sweep in 24 min each: upper bounds):

| arm | greedy pass@1 (%) | avg@8 (%) | tokens, greedy | tokens, sampled | tokens per correct, greedy | tokens per correct, sampled | checking, greedy (%) | format, sampled (%) | seeds | not finished |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|
| long SFT | 94.7 ± 2.2 | 84.4 ± 0.9 | 186.3 ± 1.3 | 156.9 ± 1.5 | 197.1 ± 6.0 | 186.0 ± 3.6 | 100.0 ± 0.0 | 99.1 ± 0.2 | 3/3 |  |
| long model | 97.7 ± 0.8 | 81.5 ± 0.2 | 158.4 ± 9.9 | 150.5 ± 7.2 | 162.1 ± 9.4 | 184.6 ± 8.5 | 100.0 ± 0.0 | 98.8 ± 0.1 | 3/3 |  |
| length-penalty RL, w=0.1 | 91.8 ± 1.8 | 75.5 ± 2.1 | 95.0 ± 2.1 | 94.4 ± 2.6 | 103.5 ± 0.6 | 125.1 ± 2.4 | 100.0 ± 0.0 | 99.1 ± 0.0 | 3/3 |  |
| length-penalty RL, w=0.3 | 95.3 ± 0.8 | 77.3 ± 1.9 | 96.2 ± 2.1 | 94.3 ± 2.8 | 100.9 ± 1.5 | 121.9 ± 0.7 | 100.0 ± 0.0 | 99.3 ± 0.1 | 3/3 |  |
| length-penalty RL, w=1 | 65.8 ± 11.3 | 52.9 ± 7.1 | 75.6 ± 6.0 | 74.2 ± 4.7 | 118.3 ± 10.0 | 142.8 ± 10.4 | 85.7 ± 12.2 | 99.0 ± 0.3 | 3/3 |  |
| shortest rejection + SFT | 96.4 ± 1.0 | 82.0 ± 0.8 | 132.1 ± 6.4 | 131.8 ± 5.5 | 137.0 ± 5.6 | 161.0 ± 8.0 | 100.0 ± 0.0 | 99.1 ± 0.1 | 3/3 |  |
| DPO | 95.1 ± 2.0 | 79.5 ± 0.7 | 117.2 ± 3.2 | 119.6 ± 4.3 | 123.3 ± 3.8 | 150.3 ± 4.8 | 100.0 ± 0.0 | 99.0 ± 0.1 | 3/3 |  |
| merge | 97.3 ± 1.1 | 88.5 ± 0.9 | 98.9 ± 0.0 | 103.1 ± 1.1 | 101.7 ± 1.2 | 116.5 ± 2.4 | 100.0 ± 0.0 | 99.5 ± 0.0 | 3/3 |  |
| short model | 99.0 ± 1.0 | 91.1 ± 0.7 | 98.9 ± 0.0 | 98.9 ± 0.1 | 99.9 ± 1.1 | 108.6 ± 0.9 | 100.0 ± 0.0 | 99.6 ± 0.1 | 3/3 |  |

Mean ± standard error over seeds [0, 1, 2] (final values); ⚠ marks a cell over fewer seeds than declared (n=finished/declared).

Welch's t-test against long model (two-sided p):

| arm | greedy pass@1 (%) | avg@8 (%) | tokens, greedy | tokens, sampled | tokens per correct, greedy | tokens per correct, sampled | checking, greedy (%) | format, sampled (%) |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
| long SFT | 0.308 | 0.082 | 0.103 | 0.467 | 0.043 | 0.890 | — | 0.326 |
| length-penalty RL, w=0.1 | 0.064 | 0.105 | 0.020 | 0.009 | 0.024 | 0.014 | — | 0.037 |
| length-penalty RL, w=0.3 | 0.111 | 0.157 | 0.020 | 0.008 | 0.020 | 0.017 | — | 0.068 |
| length-penalty RL, w=1 | 0.105 | 0.057 | 0.004 | 0.002 | 0.033 | 0.037 | 0.362 | 0.777 |
| shortest rejection + SFT | 0.376 | 0.599 | 0.100 | 0.112 | 0.097 | 0.113 | — | 0.108 |
| DPO | 0.319 | 0.094 | 0.042 | 0.030 | 0.039 | 0.036 | — | 0.418 |
| merge | 0.794 | 0.014 | 0.026 | 0.020 | 0.022 | 0.010 | — | 0.008 |
| short model | 0.383 | 0.003 | 0.026 | 0.019 | 0.021 | 0.011 | — | 0.001 |

Per seed, against its own long model: length-penalty RL at w=0.3 cut greedy tokens by 43%,
41% and 34% and lost 0.8, 3.5 and 2.7 points of greedy accuracy (mean 2.4): the target (>= 20%
shorter at <= 2 points lost) is met on tokens and not on accuracy (met in 1 seed of 3). The
weight matters: w=0.1 gives the same length at a larger loss (5.9 points), w=1 collapses
(65.8% ± 11.3: in two seeds the policy skips the check of some columns, 68-71 greedy tokens
against 99 for one check on each, the short way to a high length reward). Rejection sampling + SFT keeps accuracy (96.4%) at 17% fewer tokens, DPO 95.1%
at 26% fewer. Merging is the best long2short method here: 97.3% (p=0.79 against the long
model) at 38% fewer tokens, with the highest sampled accuracy of the methods (88.5%). The
short model itself is better still (99.0%, 98.9 tokens): in this world one check per step is
exactly what a step needs, so SFT on the world's one-check solutions is SFT on ideal short
CoT, which a real short model is not; the merge inherits it. The long model is verbose by
construction (its data re-check every step 2.3 times on average) and RL alone shortened it
(186 -> 158 greedy tokens) without a length reward. Frontier: docs/kimi_long2short_frontier.png
(curves and bars beside it).

What was tried first (seed 0; every later choice was made on seed 0, so seeds 1 and 2 are the
held-out check): long SFT on 600 solutions for 80 steps gave a weak long model (84.4% greedy,
56.7% sampled; RL: 80.5%); length-penalty RL at weight 1 from it lost the checking steps
(30.5%, 54 tokens); DPO at lr 1e-4 for 3 epochs collapsed (9.4%: the chosen responses' log-
probs fell by 49 nats with the rejected ones, the known DPO displacement); and merging with
a short model fine-tuned from the base model at lr 1e-3 gave 19.5% (two models too far apart in
weight space to average). Hence 2,000 solutions and 200 steps for the long SFT, three length
weights, DPO at lr 2e-5 for 2 epochs, and the short model fine-tuned from the long one at lr
3e-4.

`tiny` (the test suite's variant): a 2,000-document corpus, a few steps per stage, 16 eval
problems; a smoke test, not a result. `qwen` (accelerator; not run here, no accelerator was
available): DeepSeek-R1-Distill-Qwen-1.5B as the long-CoT model on MATH train (no long SFT
stage: the distilled model is one), RL with r1_zero's accelerator recipe, the same four
methods, the short model an SFT of the long one on MATH's reference solutions (so the two
share a tokenizer, which merging needs), evaluation on MATH-500 and GSM8K test.
"""

from __future__ import annotations

from pathlib import Path

from ml_collections import config_dict

from rlcot import stages
from rlcot.sweep import spec

SEEDS = (0, 1, 2)
EVAL = "toyworld:test"
MAX_TOKENS = 224  # the longest long solution (3 checks on each of 3 columns) is 218 tokens
ACCURACY = {"reward": "math_accuracy", "weight": 1.0}
FORMAT = {"reward": "r1_format", "weight": 0.5}
LENGTH = {"reward": "kimi_length", "accuracy": "accuracy"}
# Weights of Kimi's length reward (range [-0.5, 0.5]) beside accuracy (1) and format (0.5):
# one length-penalty RL stage each, all from the long model (the frontier they trace).
LENGTH_WEIGHTS = (0.1, 0.3, 1.0)


def _length_stage(weight: float) -> str:
    return f"length_rl_{weight:g}".replace(".", "")


# (table row, stage) in the table's order; the long model is the baseline.
ROWS = (("long SFT", "long"), ("long model", "long_rl"),
        *((f"length-penalty RL, w={w:g}", _length_stage(w)) for w in LENGTH_WEIGHTS),
        ("shortest rejection + SFT", "rs_sft"), ("DPO", "dpo"), ("merge", "merge_eval"),
        ("short model", "short"))
BASELINE = "long model"
QWEN_LONG = "hf:deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"


def _r1_zero():
    """experiments/r1_zero.py beside this file."""
    return spec.load_experiment(Path(__file__).with_name("r1_zero.py"))


def _sft(source: str, dataset: str, limit: int | None, steps: int, lr: float,
         eval_cfg: dict) -> config_dict.ConfigDict:
    return stages.defaults(
        "sft", model={"source": source},
        data={"dataset": dataset, "split": "train", "limit": limit,
              "template": {"name": "r1_zero", "instruction": ""}},
        optimizer={"learning_rate": lr, "warmup_steps": 5, "end_lr_ratio": 0.1,
                   "weight_decay": 0.0, "max_grad_norm": 1.0, "remat": True},
        train={"steps": steps, "batch_size": 32, "checkpoint_every": steps, "log_every": 10},
        eval=eval_cfg)


def _generate(source: str, select: str, prompts: int) -> config_dict.ConfigDict:
    """8 samples per prompt from the long model, scored by accuracy (generate's default
    correct_by), the rows `select` picks."""
    return stages.defaults("generate", model={"source": source}, select=select,
                           prompts=prompts, rewards={"accuracy": ACCURACY})


def toy() -> config_dict.ConfigDict:
    c = _r1_zero().toy()  # r1_zero's world, base stage, GRPO recipe and evaluation
    c.name = "kimi_long2short"
    c.rollout.max_new_tokens = MAX_TOKENS
    c.eval.max_new_tokens = MAX_TOKENS
    c.train.steps = 20
    c.train.checkpoint_every = 10
    c.train.eval_every = 10
    ev = c.eval.to_dict()
    del c.stages["rl"]  # r1_zero's rl stage: here long_rl and length_rl
    c.stage_order = ("base", "long", "long_rl", *map(_length_stage, LENGTH_WEIGHTS), "rs_data",
                     "rs_sft", "pairs", "dpo", "short", "merge", "merge_eval")
    c.stages.long = _sft("stage:base", "toyworld_long", 2000, 200, 1e-3, ev)
    c.stages.long_rl = stages.defaults("rl", model={"source": "stage:long"})
    for w in LENGTH_WEIGHTS:
        c.stages[_length_stage(w)] = stages.defaults(
            "rl", model={"source": "stage:long_rl"},
            rewards={"accuracy": ACCURACY, "format": FORMAT, "length": {**LENGTH, "weight": w}})
    c.stages.rs_data = _generate("stage:long_rl", "shortest_correct", 256)
    c.stages.rs_sft = _sft("stage:long_rl", "stage:rs_data", None, 40, 3e-4, ev)
    c.stages.pairs = _generate("stage:long_rl", "pairs", 256)
    c.stages.dpo = stages.defaults(
        "dpo", model={"source": "stage:long_rl"}, data={"dataset": "stage:pairs"},
        loss={"name": "sigmoid", "beta": 0.1},
        optimizer={"learning_rate": 2e-5, "warmup_steps": 5, "end_lr_ratio": 0.1,
                   "weight_decay": 0.0, "max_grad_norm": 1.0},
        train={"epochs": 2, "batch_size": 16, "checkpoint_every": 20, "log_every": 5},
        eval=ev)
    c.stages.short = _sft("stage:long_rl", "toyworld_checked", 300, 60, 3e-4, ev)
    c.stages.merge = stages.defaults("merge", models=("stage:long_rl", "stage:short"),
                                     weights=(0.5, 0.5))
    c.stages.merge_eval = stages.defaults("eval", model={"source": "stage:merge"}, eval=ev)
    return c


def tiny() -> config_dict.ConfigDict:
    """Every stage for a few steps on a quickly pre-trained base model (a smoke test).
    Samples count as usable when they end by themselves in the format (the tiny model is
    rarely right), so the rejection-sampling and pair stages have rows to work with."""
    c = toy()
    c.world.corpus_size = 2000
    base = c.stages.base
    base.train.update(steps=30, batch_size=16, short_rows=0, length_multiple=256)
    base.optimizer.warmup_steps = 5
    c.eval.update(datasets=(f"{EVAL}:16",), num_samples=2, batch_size=16)
    ev = c.eval.to_dict()
    c.data.batch_prompts = 4
    c.rollout.num_samples = 4
    c.train.steps = 2
    c.train.checkpoint_every = 1
    c.train.eval_every = 0
    for name in ("long", "rs_sft", "short"):
        st = c.stages[name]
        st.data.limit = 16 if st.data.limit else None
        st.train.update(steps=3, batch_size=4, checkpoint_every=3, length_multiple=256)
        st.optimizer.warmup_steps = 1
        st.eval = ev
    for name in ("rs_data", "pairs"):
        c.stages[name].update(prompts=8, correct_by="format", correct_threshold=0.0)
        c.stages[name].rewards = {"accuracy": ACCURACY, "format": FORMAT}
    c.stages.dpo.train.update(epochs=1, steps=2, batch_size=2, checkpoint_every=2)
    c.stages.dpo.optimizer.warmup_steps = 1
    c.stages.dpo.eval = ev
    c.stages.merge_eval.eval = ev
    return c


def qwen() -> config_dict.ConfigDict:
    """DeepSeek-R1-Distill-Qwen-1.5B (a long-CoT model) on MATH with r1_zero's accelerator
    recipe; not run here."""
    c = _r1_zero()._accelerator(QWEN_LONG, "math")
    c.name = "kimi_long2short_qwen"
    c.rollout.max_new_tokens = 4096
    c.eval.max_new_tokens = 4096
    c.train.steps = 200
    ev = c.eval.to_dict()
    bf16 = {"dtype": "bfloat16", "param_dtype": "float32"}
    length = _length_stage(LENGTH_WEIGHTS[1])
    c.stage_order = ("long_rl", length, "rs_data", "rs_sft", "pairs", "dpo", "short",
                     "merge", "merge_eval")
    c.stages.long_rl = stages.defaults("rl")
    c.stages[length] = stages.defaults(
        "rl", model={"source": "stage:long_rl"},
        rewards={"accuracy": ACCURACY, "format": FORMAT,
                 "length": {**LENGTH, "weight": LENGTH_WEIGHTS[1]}})
    c.stages.rs_data = _generate("stage:long_rl", "shortest_correct", 2000)
    c.stages.pairs = _generate("stage:long_rl", "pairs", 2000)
    for name in ("rs_data", "pairs"):
        c.stages[name].model.update(bf16)
    sft_opt = {"learning_rate": 1e-6, "warmup_steps": 10, "micro_batches": 4, "remat": True}
    c.stages.rs_sft = _sft("stage:long_rl", "stage:rs_data", None, 200, 1e-6, ev)
    c.stages.short = _sft(QWEN_LONG, "math", 5000, 200, 1e-6, ev)
    for name in ("rs_sft", "short"):
        st = c.stages[name]
        st.model.update(bf16)
        st.optimizer.update(sft_opt)
        st.data.max_tokens = 4608
        st.data.template = {"name": "r1_zero"}
        st.train.update(batch_size=32, checkpoint_every=50)
    c.stages.dpo = stages.defaults(
        "dpo", model={"source": "stage:long_rl", **bf16}, data={"dataset": "stage:pairs",
                                                                "max_tokens": 8704},
        loss={"name": "sigmoid", "beta": 0.1},
        optimizer={"learning_rate": 5e-7, "warmup_steps": 10, "micro_batches": 8,
                   "remat": True},
        train={"epochs": 1, "batch_size": 32, "checkpoint_every": 20}, eval=ev)
    c.stages.merge = stages.defaults("merge", models=("stage:long_rl", "stage:short"),
                                     weights=(0.5, 0.5))
    c.stages.merge_eval = stages.defaults("eval", model={"source": "stage:merge", **bf16},
                                          eval=ev)
    return c


VARIANTS = {"toy": toy, "tiny": tiny, "qwen": qwen}


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    variant = arg or "toy"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    return VARIANTS[variant]()


def _table(k: int, rows: tuple[tuple[str, str], ...]) -> spec.Table:
    pct = dict(scale=100.0, digits=1)
    e = f"eval_after.{EVAL}"
    return spec.Table(metrics=(
        spec.Metric("greedy pass@1 (%)", f"{e}/greedy/pass@1", **pct),
        spec.Metric(f"avg@{k} (%)", f"{e}/sampled/avg@{k}", **pct),
        spec.Metric("tokens, greedy", f"{e}/greedy/len"),
        spec.Metric("tokens, sampled", f"{e}/sampled/len"),
        spec.Metric("tokens per correct, greedy", f"{e}/greedy/len",
                    divide_by=f"{e}/greedy/pass@1"),
        spec.Metric("tokens per correct, sampled", f"{e}/sampled/len",
                    divide_by=f"{e}/sampled/avg@{k}"),
        spec.Metric("checking, greedy (%)", f"{e}/greedy/check_rate", **pct),
        spec.Metric("format, sampled (%)", f"{e}/sampled/format", **pct),
    ), main="tokens, greedy", baseline=BASELINE if len(rows) > 1 else None,
        scatter=("tokens, greedy", "greedy pass@1 (%)"),
        panels=(("held-out greedy tokens", "eval/*/greedy/len"),))


def get_sweep(arg: str | None = None) -> spec.Sweep:
    """One running arm (the study, no row of its own) and one row per method's stage."""
    tiny_run = arg == "tiny"
    if arg not in (None, "toy", "tiny"):
        raise ValueError(f"sweeps exist for the toy and tiny variants, not {arg!r}")
    arms = (spec.Arm("study", arg=arg or "toy", in_table=False),
            *(spec.Arm(row, run="study", stage=stage) for row, stage in ROWS))
    return spec.Sweep(arms=arms, seeds=(0,) if tiny_run else SEEDS,
                      table=_table(2 if tiny_run else 8, ROWS))
