"""DeepSeek-R1 on the toy world: R1-Zero-style RL makes the chain of thought mix languages;
does a cold start and a language-consistency reward remove the mixing, and at what accuracy
cost?

Arms, all from the same cached base model (argument `FILE:ARM[,tiny|,qwen]`):

    zero       base -> rl: GRPO with accuracy + format rewards (r1_zero's recipe, 40 steps)
    cold       base -> cold -> rl: SFT on 300 clean English solutions with checking steps
               (60 steps of 32), then the same RL
    cold_lang  cold + the language-consistency reward (share of Latin-script words in the CoT,
               weight 1, summed with the others as in the R1 paper); the default argument
    zero_lang  zero + the language reward, no cold start (an ablation beyond the R1 recipe:
               which of the two removes the mixing)

Commands (2 CPU cores; the base model is built by the first point and cached for all others;
--parallel 2 gives each point one core):

    python -m rlcot.main sweep --config experiments/r1_cold_start.py --root runs/r1_cold_start --parallel 2
    python -m rlcot.main table --config experiments/r1_cold_start.py --root runs/r1_cold_start
    python -m rlcot.main plot  --config experiments/r1_cold_start.py --root runs/r1_cold_start

(The first point to need the base model builds it; a parallel one waits and loads it.)
One arm alone:
`python -m rlcot.main run --config experiments/r1_cold_start.py:cold_lang --workdir DIR`.

Why mixing arises. The world is r1_zero's world where checking is needed (the main pass
always forgets incoming carries, so on a problem with a carry only a solution with checking
steps is right; 20% of the corpus checks), except for its language (WORLD_RATES): 90% of the
checked solutions write every check step in the Cyrillic second language ("проверка первый
7+4=11 перенос 1 итак 1."), their main steps staying English, and nothing else is mixed. In
the base model, checking is therefore mostly done in the second language: the accuracy
reward, which can only rise through checking, selects the second language along with it,
although no reward asks for it. The cold start (`toyworld_checked`: the train split's first
300 problems written as the world writes its checked solutions, main pass dropping carries,
every check kept, every word English) gives RL a policy that already checks, in English.

What was tried first (seed 0, same machine): mixing tied to checking by whole solutions
(check_mix_rate 0.9 against mix_rate 0.05 for the others, each step of a mixed solution in
the second language with probability 0.5, steps at random). Mixing grew under RL as intended
(sampled second-language words 9.1% -> 32.3%), but the base model trained on that corpus
executed checks badly: after 40 RL steps greedy decoding checked 99% of the time but was
right only 55.5% of the time; the cold start on the same 300 examples reached 56.2% and RL
did not improve on it (55.1%), whereas r1_zero's base model (the same world without the
tie) with the same cold start scored 100% (128 held-out problems). Randomly interleaved
languages cost the 0.44M-parameter model its step copying (wrong partial results). Checks written wholly in one language (mix_steps='checks') fixed
that; that world is the study's. Nothing else was tuned.

Measured 2026-11-30 on 2 cores of an AMD EPYC (per machine type): the sweep above, 4 arms x
3 seeds, 2 points at a time while other jobs shared the cores (wall times are upper bounds:
base stage 210 s once, cold start 35-44 s, rl stage 160-281 s per point). Held-out, 256
problems; "start" = the model the rl stage starts from (the base model for zero and zero_lang,
the cold-started one for cold and cold_lang), the other columns after RL. From the `table`
command:

| arm | start: greedy pass@1 (%) | start: avg@8 (%) | start: 2nd-lang words, greedy (%) | start: 2nd-lang words, sampled (%) | start: mixed responses, sampled (%) | start: checking, greedy (%) | start: tokens, greedy | greedy pass@1 (%) | avg@8 (%) | 2nd-lang words, greedy (%) | mixed responses, greedy (%) | 2nd-lang words, sampled (%) | mixed responses, sampled (%) | checking, greedy (%) | tokens, greedy | format, sampled (%) | seeds | not finished |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|
| zero | 31.2 ± 0.0 | 36.0 ± 0.2 | 0.0 ± 0.0 | 9.2 ± 0.3 | 15.7 ± 0.6 | 0.0 ± 0.0 | 53.1 ± 0.0 | 98.7 ± 0.5 | 87.2 ± 0.1 | 59.0 ± 0.1 | 100.0 ± 0.0 | 57.2 ± 0.2 | 97.0 ± 0.4 | 100.0 ± 0.0 | 98.9 ± 0.0 | 97.2 ± 0.1 | 3/3 |  |
| cold | 97.8 ± 0.5 | 88.4 ± 0.9 | 0.0 ± 0.0 | 0.0 ± 0.0 | 0.4 ± 0.0 | 100.0 ± 0.0 | 98.8 ± 0.0 | 98.8 ± 0.4 | 90.5 ± 0.3 | 0.0 ± 0.0 | 0.0 ± 0.0 | 0.0 ± 0.0 | 0.3 ± 0.0 | 100.0 ± 0.0 | 98.8 ± 0.0 | 99.1 ± 0.1 | 3/3 |  |
| cold_lang | 97.8 ± 0.5 | 88.4 ± 0.9 | 0.0 ± 0.0 | 0.0 ± 0.0 | 0.4 ± 0.0 | 100.0 ± 0.0 | 98.8 ± 0.0 | 98.6 ± 0.5 | 90.3 ± 0.8 | 0.0 ± 0.0 | 0.0 ± 0.0 | 0.0 ± 0.0 | 0.3 ± 0.1 | 100.0 ± 0.0 | 98.9 ± 0.0 | 98.9 ± 0.1 | 3/3 |  |
| zero_lang | 31.2 ± 0.0 | 36.0 ± 0.2 | 0.0 ± 0.0 | 9.2 ± 0.3 | 15.7 ± 0.6 | 0.0 ± 0.0 | 53.1 ± 0.0 | 77.1 ± 6.2 | 70.3 ± 1.0 | 17.7 ± 14.6 | 29.8 ± 24.7 | 18.6 ± 5.4 | 32.5 ± 8.9 | 62.1 ± 10.0 | 82.8 ± 4.4 | 98.0 ± 0.3 | 3/3 |  |

Welch's t-test against zero (two-sided p):

| arm | start: greedy pass@1 (%) | start: avg@8 (%) | start: 2nd-lang words, greedy (%) | start: 2nd-lang words, sampled (%) | start: mixed responses, sampled (%) | start: checking, greedy (%) | start: tokens, greedy | greedy pass@1 (%) | avg@8 (%) | 2nd-lang words, greedy (%) | mixed responses, greedy (%) | 2nd-lang words, sampled (%) | mixed responses, sampled (%) | checking, greedy (%) | tokens, greedy | format, sampled (%) |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| cold | <0.001 | <0.001 | — | 0.001 | 0.001 | — | <0.001 | 0.842 | 0.006 | <0.001 | — | <0.001 | <0.001 | — | 0.456 | 0.001 |
| cold_lang | <0.001 | <0.001 | — | 0.001 | 0.001 | — | <0.001 | 0.854 | 0.057 | <0.001 | — | <0.001 | <0.001 | — | 0.960 | 0.001 |
| zero_lang | — | 1.000 | — | 1.000 | 1.000 | — | — | 0.073 | 0.003 | 0.105 | 0.105 | 0.019 | 0.018 | 0.064 | 0.067 | 0.110 |

Per seed (greedy accuracy / greedy 2nd-language word share / greedy checking rate, after
RL): zero 99.6 / 59.1 / 100, 98.4 / 59.1 / 100, 98.0 / 58.9 / 100; zero_lang 89.5 / 46.7 /
81.2, 71.9 / 0.0 / 47.3, 69.9 / 6.3 / 57.8.

The R1-Zero arm shows the flaw in every seed: accuracy rises from 31.2% to 98.7% while the
second language takes 59% of the greedy CoT's words (every greedy response mixes) and 57% of
the sampled ones (6.2x the base model's 9.2%). The cold start removes it before RL starts
(0.0% of words, greedy and sampled) and RL does not bring it back, with or without the
language reward; it costs no accuracy (98.8% against zero's 98.7%, p=0.84) and raises sampled
accuracy (avg@8 90.5% against 87.2%, p=0.006). In this world the language reward on top of
the cold start (cold_lang) has nothing left to remove: it matches cold (98.6%, 0.0%); R1's
small accuracy cost of the reward is neither reproduced nor excluded at this resolution. The
reward alone (zero_lang) lowers the mixing (sampled words 18.6% against 57.2%, p=0.02) at a
large accuracy cost (77.1% ± 6.2 greedy, avg@8 70.3% against 87.2%, p=0.003): with almost no
English checking to reinforce, the policy trades Cyrillic checks for no checks (greedy
checking 62%), and how far it goes varies by seed. Plots: docs/r1_cold_start_curves.png
(mixing in the training rollouts and held-out, per step) and docs/r1_cold_start_bars.png.

An earlier seed-0 run of every arm (at an earlier commit whose sampling streams differ, so
it is another draw, not this sweep's seed 0) gave the same picture: zero 96.1% with 59.2% of
greedy words mixed, cold 100.0% and cold_lang 98.4% at 0.0%, zero_lang 90.2% at 47.7%.

Every arm also computes the language term where it is not rewarded (weight 0 in zero and
cold: logged, not rewarded; the total is unchanged), so each RL step logs the mixing of its
training rollouts (reward/language/{mean,mixed_share,mixed_rate}); held-out mixing is logged
at every evaluation (eval_every 10). `plot` draws both beside its default curves.

`tiny` (the test suite's variant): a 2,000-document corpus, 30 base steps, 5 cold-start
steps on 32 examples, 2 RL steps of 4 prompts x 4 samples, 16 eval problems; a smoke test,
not a result. `qwen` (accelerator; not run here, no accelerator was available): Qwen2.5-1.5B
base on MATH train with r1_zero's accelerator recipe; the cold start is a `collect` stage
(generate: Qwen2.5-7B-Instruct's correct answers to 250 MATH train prompts in the R1-Zero
format, 4 samples each) and SFT of the base model on 500 of them; the language reward
counts Latin-script words (Qwen's mixing is Chinese inside English CoT, which the script
tells apart); evaluation on GSM8K test and MATH-500.
"""

from __future__ import annotations

from pathlib import Path

from ml_collections import config_dict

from rlcot import stages
from rlcot.sweep import spec

ARMS = ("zero", "cold", "cold_lang", "zero_lang")
FLAGS = ("tiny", "qwen")
SEEDS = (0, 1, 2)
EVAL = "toyworld:test"
# r1_zero's world where checking is needed, with mixing tied to checking (see the docstring).
WORLD_RATES = dict(flaw_rate=1.0, check_rate=0.2, check_mix_rate=0.9, mix_steps="checks",
                   mix_share=1.0, mix_rate=0.0)
COLD_START_EXAMPLES = 300
QWEN_BASE = "hf:Qwen/Qwen2.5-1.5B"
QWEN_COLLECTOR = "hf:Qwen/Qwen2.5-7B-Instruct"
# Curves of the plot command beside its defaults: mixing in the training rollouts (every
# step) and in the held-out evaluations (every eval_every steps).
PANELS = (("2nd-language words, train rollouts", "reward/language/mixed_share"),
          ("mixed responses, train rollouts", "reward/language/mixed_rate"),
          ("2nd-language words, held-out greedy", "eval/*/greedy/second_language"),
          ("2nd-language words, held-out sampled", "eval/*/sampled/second_language"),
          ("checking rate, held-out greedy", "eval/*/greedy/check_rate"))
LANGUAGE = {"reward": "language_consistency", "target": "latin", "detector": "script",
            "section": "think"}


def _r1_zero():
    """experiments/r1_zero.py beside this file."""
    return spec.load_experiment(Path(__file__).with_name("r1_zero.py"))


def _parse(arg: str | None) -> tuple[str, set[str]]:
    parts = [p for p in (arg or "").split(",") if p]
    arms = [p for p in parts if p in ARMS]
    bad = [p for p in parts if p not in ARMS and p not in FLAGS]
    if bad or len(arms) > 1:
        raise ValueError(f"argument {arg!r}: give one arm of {ARMS} and flags of {FLAGS}")
    return (arms[0] if arms else "cold_lang"), {p for p in parts if p in FLAGS}


def _cold_stage(dataset: str, limit: int, template: dict) -> config_dict.ConfigDict:
    """SFT from the base stage on a few hundred clean single-language solutions."""
    return stages.defaults(
        "sft", model={"source": "stage:base"},
        data={"dataset": dataset, "split": "train", "limit": limit, "template": template},
        optimizer={"learning_rate": 1e-3, "warmup_steps": 5, "end_lr_ratio": 0.1,
                   "weight_decay": 0.0, "max_grad_norm": 1.0, "remat": True},
        train={"steps": 60, "batch_size": 32, "checkpoint_every": 60, "log_every": 10})


def toy(arm: str) -> config_dict.ConfigDict:
    c = _r1_zero().toy()
    c.name = f"r1_cold_start_{arm}"
    for k, v in WORLD_RATES.items():
        c.world.rates[k] = v
    c.rewards.language = {**LANGUAGE, "weight": 1.0 if arm.endswith("_lang") else 0.0}
    if arm.startswith("cold"):
        c.stage_order = ("base", "cold", "rl")
        c.stages.cold = _cold_stage("toyworld_checked", COLD_START_EXAMPLES,
                                    {"name": "r1_zero", "instruction": ""})
        c.model.source = "stage:cold"
    return c


def _tiny(c: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """A few small steps on a small, quickly pre-trained base model (a smoke test)."""
    c.world.corpus_size = 2000
    base = c.stages.base
    # One padded width per SFT stage (every document fits in 256 tokens): one compilation
    # each instead of one per length bucket.
    base.train.update(steps=30, batch_size=16, short_rows=0, length_multiple=256)
    base.optimizer.warmup_steps = 5
    if "cold" in c.stages:
        c.stages.cold.data.limit = 32
        c.stages.cold.train.update(steps=5, batch_size=8, checkpoint_every=5,
                                   length_multiple=256)
        c.stages.cold.optimizer.warmup_steps = 1
    c.data.batch_prompts = 4
    c.rollout.num_samples = 4
    c.rollout.max_new_tokens = 96
    c.train.steps = 2
    c.train.checkpoint_every = 1
    c.train.eval_every = 0  # evaluations before and after RL only
    c.eval.datasets = (f"{EVAL}:16",)
    c.eval.num_samples = 2
    c.eval.max_new_tokens = 96
    c.eval.batch_size = 16
    return c


def qwen(arm: str) -> config_dict.ConfigDict:
    """Qwen2.5-1.5B base on MATH with r1_zero's accelerator recipe (not run here). Cold arms:
    `collect` generates the cold-start data with an instruct model (its correct answers in
    the R1-Zero format), `cold` fine-tunes the base model on 500 of them, `rl` follows."""
    c = _r1_zero()._accelerator(QWEN_BASE, "math")
    c.name = f"r1_cold_start_{arm}_qwen"
    c.rewards.language = {**LANGUAGE, "weight": 1.0 if arm.endswith("_lang") else 0.0}
    if arm.startswith("cold"):
        c.stage_order = ("collect", "cold", "rl")
        c.stages.collect = stages.defaults(
            "generate", model={"source": QWEN_COLLECTOR, "dtype": "bfloat16",
                               "param_dtype": "bfloat16"},
            rewards={"accuracy": {"reward": "math_accuracy", "weight": 1.0}},
            prompts=250, select="correct",
            rollout={**c.rollout.to_dict(), "num_samples": 4, "temperature": 0.7,
                     "dynamic_sampling": False})
        cold = _cold_stage("stage:collect", 500, {"name": "r1_zero"})
        cold.model = {"source": QWEN_BASE, "dtype": "bfloat16", "param_dtype": "float32"}
        cold.data.max_tokens = 1536
        cold.optimizer.learning_rate = 1e-5
        cold.optimizer.warmup_steps = 10
        cold.optimizer.micro_batches = 4
        cold.train.steps, cold.train.batch_size = 100, 16
        cold.train.checkpoint_every = 50
        c.stages.cold = cold
        c.stages.rl = stages.defaults("rl")
        c.model.source = "stage:cold"
    return c


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    arm, flags = _parse(arg)
    if "qwen" in flags:
        return qwen(arm)
    c = toy(arm)
    return _tiny(c) if "tiny" in flags else c


def _table(tiny: bool) -> spec.Table:
    """Each arm's held-out metrics at the start of its RL stage (zero: the base model; cold
    arms: after the cold start) and after RL. The base model's numbers are zero's start
    columns for every arm (the same model; sampled keys depend on the seed only). No wall
    times: a re-run of a seed gives the same row."""
    k = 2 if tiny else 8  # eval samples per problem
    pct = dict(scale=100.0, digits=1)
    start, end = f"stages.rl.eval_before.{EVAL}", f"eval_after.{EVAL}"
    return spec.Table(metrics=(
        spec.Metric("start: greedy pass@1 (%)", f"{start}/greedy/pass@1", **pct),
        spec.Metric(f"start: avg@{k} (%)", f"{start}/sampled/avg@{k}", **pct),
        spec.Metric("start: 2nd-lang words, greedy (%)", f"{start}/greedy/second_language",
                    **pct),
        spec.Metric("start: 2nd-lang words, sampled (%)", f"{start}/sampled/second_language",
                    **pct),
        spec.Metric("start: mixed responses, sampled (%)", f"{start}/sampled/mixed_rate",
                    **pct),
        spec.Metric("start: checking, greedy (%)", f"{start}/greedy/check_rate", **pct),
        spec.Metric("start: tokens, greedy", f"{start}/greedy/len"),
        spec.Metric("greedy pass@1 (%)", f"{end}/greedy/pass@1", **pct),
        spec.Metric(f"avg@{k} (%)", f"{end}/sampled/avg@{k}", **pct),
        spec.Metric("2nd-lang words, greedy (%)", f"{end}/greedy/second_language", **pct),
        spec.Metric("mixed responses, greedy (%)", f"{end}/greedy/mixed_rate", **pct),
        spec.Metric("2nd-lang words, sampled (%)", f"{end}/sampled/second_language", **pct),
        spec.Metric("mixed responses, sampled (%)", f"{end}/sampled/mixed_rate", **pct),
        spec.Metric("checking, greedy (%)", f"{end}/greedy/check_rate", **pct),
        spec.Metric("tokens, greedy", f"{end}/greedy/len"),
        spec.Metric("format, sampled (%)", f"{end}/sampled/format", **pct),
    ), main="2nd-lang words, sampled (%)", baseline=None if tiny else "zero", panels=PANELS)


def get_sweep(arg: str | None = None) -> spec.Sweep:
    _, flags = _parse(arg)
    tiny = ",tiny" if "tiny" in flags else ""
    arms = tuple(spec.Arm(a, arg=f"{a}{tiny}") for a in ARMS)
    return spec.Sweep(arms=arms, seeds=(0,) if tiny else SEEDS, table=_table(bool(tiny)))
