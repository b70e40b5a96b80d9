"""The preference study: RLHF (reward model + PPO), RLAIF (an AI judge's labels -> reward model
-> PPO) and DPO on one toy task whose true preference a program scores, so that reward hacking
is visible.

The task: r1_zero's toy world (column addition; only solutions with checking steps are right
on carry problems). The TRUE preference, a program: accuracy (weight 1) + English chain of
thought (the share of its words not in the second language, weight 0.5) + conciseness (0 up to
100 tokens, then down linearly to -1 at 130: DAPO's soft overlong shape, weight 0.5); a right,
English, one-check solution (~99 tokens) is the best response, range [-0.5, 1.5].

One study per seed (argument `FILE` or `FILE:tiny`), its stages in order:

    base          the toy base model (r1_zero's, cached): the starting policy of every arm
    pairs_human   "human" labels: 4 samples of the base model on each of 1,024 train prompts, in
                  2 pairs per prompt; the preferred one drawn by Bradley-Terry from the true
                  scores at temperature 0.3 (P = sigmoid(diff / 0.3)); equal scores are ties
                  (skipped)
    judge_data    SFT rows for the AI judge: 4 samples on a seeded random draw of 512 train
                  prompts (some may be among the pairs' prompts, never their samples), graded
                  " N/10" from its true score (N = round(10 (score + 0.5) / 2))
    judge         the AI judge: the base model fine-tuned on those rows (300 steps of 32): an
                  imperfect grader, as AI labellers are
    pairs_ai      the AI judge's labels on the same sampled pairs as pairs_human (same seed,
                  model and prompts): the higher of its two grades wins (ties skipped)
    rm_human, rm_ai
                  reward models (the base model + a scalar head, Bradley-Terry, 2 epochs,
                  10% of the pairs held out) on the human and on the AI labels
    ppo_human, ppo_ai
                  PPO from base against each reward model ('reference'-normalised): GAE critic
                  (gamma 1, lambda 1, whitened), PPO clipping 0.2, KL to the base policy in the
                  reward (k1, coef 0.05), 60 steps of 16 prompts x 4 samples; the true score
                  is logged beside at weight 0 (reward/true/mean) but never optimised
    dpo           DPO from base on the human pairs (sigmoid, beta 0.1, lr 1e-4, 2 epochs)
    cmp_rlhf, cmp_rlaif, cmp_dpo
                  each trained policy against the base model on 256 held-out prompts x 4
                  samples at temperature 1 (stage kind `compare`): win rate under the true
                  preference, true score, both learned rewards, KL from the start, length

Commands (2 CPU cores):

    python -m rlcot.main sweep --config experiments/preference.py --root runs/preference --parallel 2
    python -m rlcot.main table --config experiments/preference.py --root runs/preference
    python -m rlcot.main plot  --config experiments/preference.py --root runs/preference
    python -m rlcot.main table --config experiments/preference.py:labels --root runs/preference

The last one: the labellers and reward models (label agreement with the true preference,
held-out reward-model accuracy against the labels and against the truth, calibration).

Measured 2026-11-30 on 2 cores of an AMD EPYC (per machine type), 3 seeds, from the commands
above. The three studies ran at once beside other jobs (4-5 processes on the 2 cores), so
wall times are upper bounds: per seed base 2-4 s (cached), pairs_human 19-45 s, judge_data
8-38 s, judge 123-366 s, pairs_ai 72-106 s, each reward model 95-215 s, each PPO stage
376-655 s, dpo 143-211 s, each compare stage 40-88 s; about 30 min per seed in all.

| arm | win rate vs start, true pref. (%) | true score | human RM reward | AI RM reward | human RM agrees with truth (%) | AI RM agrees with truth (%) | KL from start (nats/seq) | tokens | accuracy (%) | English share (%) |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| RLHF (PPO, human RM) | 72.9 ± 0.9 | 1.293 ± 0.007 | 1.13 ± 0.03 | 1.19 ± 0.05 | 85.0 ± 1.3 | 86.4 ± 1.0 | 2.28 ± 0.18 | 99.5 ± 0.2 | 86.1 ± 1.0 | 97.1 ± 0.9 |
| RLAIF (PPO, AI-label RM) | 73.3 ± 0.6 | 1.302 ± 0.008 | 1.13 ± 0.03 | 1.20 ± 0.04 | 85.5 ± 0.9 | 86.3 ± 1.0 | 2.37 ± 0.21 | 99.7 ± 0.2 | 86.6 ± 0.7 | 98.3 ± 0.4 |
| DPO (human pairs) | 64.6 ± 0.3 | 1.150 ± 0.010 | 1.08 ± 0.02 | 1.14 ± 0.04 | 76.4 ± 0.8 | 76.8 ± 0.1 | 5.07 ± 0.52 | 100.7 ± 0.4 | 72.9 ± 0.9 | 98.0 ± 0.5 |

Mean ± standard error over seeds 0, 1, 2, on 256 held-out prompts x 4 samples at temperature
1 per model; the starting (base) policy's own samples: true score 0.833 ± 0.014, 57.6 tokens,
accuracy 37.6%.
Win rate: the trained policy's sample k against the base model's sample k on the same prompt,
judged by the true preference (a tie counts half). Learned rewards are 'reference'-normalised
(0-mean, unit-std on the base model's sampled responses they were trained on). "RM agrees with
truth": on those same meetings, the share where the reward model prefers the side the true
preference prefers. Welch's t-test against RLHF: RLAIF p >= 0.36 on every column (no
difference); DPO lower win rate (p = 0.006), true score and accuracy (p < 0.001), twice the KL
(p = 0.024).

The labellers and their reward models (`FILE:labels` table):

| labels -> reward model | labels agree with truth (%) | pairs | RM held-out accuracy vs labels (%) | RM held-out accuracy vs truth (%) | RM calibration error (ECE) |
|---|---:|---:|---:|---:|---:|
| human labels -> RM | 86.5 ± 0.5 | 891 ± 22 | 80.0 ± 3.6 | 87.4 ± 7.3 | 0.086 ± 0.022 |
| AI judge labels -> RM | 95.7 ± 0.4 | 865 ± 25 | 92.7 ± 0.9 | 89.1 ± 1.3 | 0.159 ± 0.015 |

What it shows, at this size:
- RLHF and RLAIF end in the same place (72.9 vs 73.3% wins, true score 1.29 vs 1.30). The AI
  judge is a better labeller than the noisy "humans" (95.7 vs 86.5% agreement with the truth):
  in this world a right answer comes with a visible check, a surface feature a small judge
  learns; its reward model is no better against the truth (89.1 vs 87.4%) and is less
  calibrated (ECE 0.16 vs 0.09: the cleaner labels make it over-confident).
- Reward hacking shows as a drop of the learned rewards' agreement with the truth from the
  data they were trained on (87-89% held out, base-model samples) to the trained policies'
  samples (85-86% after PPO, 76-77% after DPO), not as a falling true score: over 60 PPO steps
  with the KL penalty at 0.05 the true score rises with the learned reward and both plateau
  (docs/preference_overoptimisation.png: no turn-over, the over-optimisation regime of Gao et
  al. is not reached; a longer run or a smaller KL coefficient would be the next experiment).
- DPO on the same human pairs improves on the start (64.6% wins, greedy held-out accuracy 93-99%
  from 31%) but less than PPO, at twice PPO's KL from the start (5.1 vs 2.3 nats per sequence):
  it learns from the base model's pairs only, off-policy, while PPO keeps sampling.
- The length term does not bind: every method ends at ~100 tokens (one checked pass), where
  the conciseness penalty starts.
Tuning (seed 0; seeds 1 and 2 are the check): DPO at lr 2e-5 (the Kimi study's) barely moved
the policy (59.6% wins, greedy accuracy unchanged at 31.2%); lr 1e-4 is the table's. The KL
coefficient, PPO steps and the reward-model settings were set once and not tuned.

`tiny` (the test suite's variant): every stage for a few steps on a quickly pre-trained base
model; a smoke test, not a result (its judge grades everything alike, so a 1e-3 weight of the
true score breaks its ties).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ml_collections import config_dict

from rlcot import stages
from rlcot.rl.value import ValueConfig
from rlcot.sweep import spec

SEEDS = (0, 1, 2)
EVAL = "toyworld:test"
MAX_TOKENS = 160
# The true preference (a program): what the "human" labels follow, with noise.
TRUE = {"accuracy": {"reward": "math_accuracy", "weight": 1.0},
        "english": {"reward": "language_consistency", "weight": 0.5},
        "concise": {"reward": "dapo_overlong", "weight": 0.5, "max_len": 130, "cache_len": 30}}
TRUE_RANGE = (-0.5, 1.5)
HUMAN_TEMPERATURE = 0.3
JUDGE_TEMPLATE = "{prompt}{completion}\nScore:"
JUDGE = {"reward": "ai_judge", "model": "stage:judge", "template": JUDGE_TEMPLATE,
         "max_new_tokens": 6, "scale_min": 0.0, "scale_max": 10.0}
ROWS = (("RLHF (PPO, human RM)", "cmp_rlhf"), ("RLAIF (PPO, AI-label RM)", "cmp_rlaif"),
        ("DPO (human pairs)", "cmp_dpo"))
LABEL_ROWS = (("human labels -> RM", "pairs_human", "rm_human"),
              ("AI judge labels -> RM", "pairs_ai", "rm_ai"))


def _true(weight: float) -> dict:
    return {"reward": "combination", "weight": weight, "terms": TRUE}


def _rm(stage: str, weight: float) -> dict:
    return {"reward": "reward_model", "model": f"stage:{stage}", "normalize": "reference",
            "weight": weight}


def _r1_zero():
    return spec.load_experiment(Path(__file__).with_name("r1_zero.py"))


def _pairs(rewards: dict, label_by: str, temperature: float,
           prompts: int) -> config_dict.ConfigDict:
    return stages.defaults("generate", model={"source": "stage:base"}, select="labelled_pairs",
                           prompts=prompts, rewards=rewards, label_by=label_by,
                           label_temperature=temperature, agreement_with="true",
                           correct_by="true", correct_threshold=-10.0, data={"shuffle": False},
                           rollout={"num_samples": 4, "max_new_tokens": MAX_TOKENS})


def _ppo(rm_stage: str) -> config_dict.ConfigDict:
    return stages.defaults(
        "rl", model={"source": "stage:base"},
        rewards={"rm": _rm(rm_stage, 1.0), "true": _true(0.0)})


def _compare(model: str, prompts: int, samples: int) -> config_dict.ConfigDict:
    return stages.defaults(
        "compare", model={"source": f"stage:{model}"}, baseline="stage:base",
        rewards={"true": _true(1.0), "rm_human": _rm("rm_human", 0.0),
                 "rm_ai": _rm("rm_ai", 0.0)},
        win_by="true", prompts=prompts,
        data={"dataset": "toyworld", "split": "test", "shuffle": False,
              "template": {"name": "r1_zero", "instruction": ""}},
        rollout={"num_samples": samples, "max_new_tokens": MAX_TOKENS, "temperature": 1.0})


def toy() -> config_dict.ConfigDict:
    c = _r1_zero().toy()  # r1_zero's world, base stage and evaluation
    c.name = "preference"
    # Every stage's rewards start from the true preference (stages merge their own terms in).
    c.rewards = config_dict.ConfigDict({"true": _true(1.0)})
    del c.stages["rl"]
    c.stage_order = ("base", "pairs_human", "judge_data", "judge", "pairs_ai", "rm_human",
                     "rm_ai", "ppo_human", "ppo_ai", "dpo", "cmp_rlhf", "cmp_rlaif", "cmp_dpo")
    # PPO with a GAE critic and the KL penalty to the starting (SFT) policy in the reward.
    c.advantage.estimator = "gae"
    c.advantage.gamma, c.advantage.lam = 1.0, 1.0
    c.learner.value = dataclasses.asdict(ValueConfig())
    obj = c.learner.objective
    obj.policy.eps_low = obj.policy.eps_high = 0.2
    obj.kl.placement, obj.kl.estimator, obj.kl.coef = "reward", "k1", 0.05
    c.data.batch_prompts = 16
    c.rollout.num_samples = 4
    c.train.steps = 60
    c.train.checkpoint_every = 20
    c.train.eval_every = 20
    ev = c.eval.to_dict()

    c.stages.pairs_human = _pairs({"true": _true(1.0)}, "true", HUMAN_TEMPERATURE, 1024)
    c.stages.judge_data = stages.defaults(
        "generate", model={"source": "stage:base"}, select="judge", prompts=512,
        rewards={"true": _true(1.0)}, correct_by="true", judge_template=JUDGE_TEMPLATE,
        judge_range=TRUE_RANGE, data={"shuffle": True},
        rollout={"num_samples": 4, "max_new_tokens": MAX_TOKENS})
    c.stages.judge = stages.defaults(
        "sft", model={"source": "stage:base"},
        data={"dataset": "stage:judge_data", "split": "train"},
        optimizer={"learning_rate": 1e-3, "warmup_steps": 20, "end_lr_ratio": 0.1,
                   "weight_decay": 0.0, "max_grad_norm": 1.0, "remat": True},
        train={"steps": 300, "batch_size": 32, "checkpoint_every": 300, "log_every": 25})
    c.stages.pairs_ai = _pairs({"judge": {**JUDGE, "weight": 1.0}, "true": _true(0.0)},
                               "judge", 0.0, 1024)
    for name, data in (("rm_human", "pairs_human"), ("rm_ai", "pairs_ai")):
        c.stages[name] = stages.defaults(
            "reward_model", model={"source": "stage:base"}, data={"dataset": f"stage:{data}"},
            optimizer={"learning_rate": 3e-4, "warmup_steps": 5, "end_lr_ratio": 0.1,
                       "weight_decay": 0.0, "max_grad_norm": 1.0},
            train={"epochs": 2, "batch_size": 32, "checkpoint_every": 50, "log_every": 10,
                   "eval_every": 20})
    c.stages.ppo_human = _ppo("rm_human")
    c.stages.ppo_ai = _ppo("rm_ai")
    c.stages.dpo = stages.defaults(
        "dpo", model={"source": "stage:base"}, data={"dataset": "stage:pairs_human"},
        loss={"name": "sigmoid", "beta": 0.1},
        optimizer={"learning_rate": 1e-4, "warmup_steps": 5, "end_lr_ratio": 0.1,
                   "weight_decay": 0.0, "max_grad_norm": 1.0},
        train={"epochs": 2, "batch_size": 16, "checkpoint_every": 50, "log_every": 10},
        eval=ev)
    for (_, name), model in zip(ROWS, ("ppo_human", "ppo_ai", "dpo")):
        c.stages[name] = _compare(model, 256, 4)
    return c


def tiny() -> config_dict.ConfigDict:
    """Every stage for a few steps on a quickly pre-trained base model (a smoke test)."""
    c = toy()
    c.world.corpus_size = 2000
    base = c.stages.base
    base.train.update(steps=30, batch_size=16, short_rows=0, length_multiple=256)
    base.optimizer.warmup_steps = 5
    c.data.batch_prompts = 4
    c.rollout.max_new_tokens = 96
    c.train.steps = 2
    c.train.checkpoint_every = 1
    c.train.eval_every = 0
    for name in ("pairs_human", "pairs_ai", "judge_data"):
        c.stages[name].prompts = 48
        c.stages[name].rollout.max_new_tokens = 96
    c.stages.judge.train.update(steps=40, batch_size=8, checkpoint_every=40)
    c.stages.judge.optimizer.warmup_steps = 1
    # The tiny judge grades (nearly) everything alike: a small weight of the true score breaks
    # its ties, so that the AI pairs (judged through the same path) are not all skipped.
    c.stages.pairs_ai.rewards.true.weight = 1e-3
    c.stages.pairs_ai.label_by = "total"
    for name in ("rm_human", "rm_ai"):
        c.stages[name].train.update(epochs=1, steps=3, batch_size=4, eval_every=3)
        c.stages[name].data.eval_fraction = 0.2
        c.stages[name].optimizer.warmup_steps = 1
    c.stages.dpo.train.update(epochs=1, steps=2, batch_size=2, checkpoint_every=2)
    c.stages.dpo.optimizer.warmup_steps = 1
    # The table reads the compare stages: no held-out evaluation in the tiny policy stages.
    c.stages.dpo.eval = {}
    c.eval = config_dict.ConfigDict()
    for _, name in ROWS:
        c.stages[name].update(prompts=8)
        c.stages[name].rollout.update(num_samples=2, max_new_tokens=96)
    return c


VARIANTS = {"toy": toy, "tiny": tiny}


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    variant = "toy" if arg in (None, "labels") else arg  # 'labels': a table view of toy runs
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    return VARIANTS[variant]()


def _policy_table(baseline: bool) -> spec.Table:
    pct = dict(scale=100.0, digits=1)
    e = "eval_after."
    return spec.Table(metrics=(
        spec.Metric("win rate vs start, true pref. (%)", f"{e}win_rate", **pct),
        spec.Metric("true score", f"{e}true", digits=3),
        spec.Metric("start's true score", f"{e}baseline/true", digits=3),
        spec.Metric("human RM reward", f"{e}rm_human", digits=2),
        spec.Metric("AI RM reward", f"{e}rm_ai", digits=2),
        spec.Metric("human RM agrees with truth (%)", f"{e}agree/rm_human", **pct),
        spec.Metric("AI RM agrees with truth (%)", f"{e}agree/rm_ai", **pct),
        spec.Metric("KL from start (nats/seq)", f"{e}kl", digits=2),
        spec.Metric("tokens", f"{e}length", digits=1),
        spec.Metric("accuracy (%)", f"{e}true/accuracy/mean", **pct),
        spec.Metric("English share (%)", f"{e}true/english/mean", **pct),
    ), main="win rate vs start, true pref. (%)",
        baseline=ROWS[0][0] if baseline else None,
        scatter=("human RM reward", "true score"),
        trajectories=(spec.Trajectory(
            "true score against the learned reward over PPO steps (over-optimisation)",
            "reward/rm/mean", "reward/true/mean",
            (("RLHF (human RM)", "ppo_human"), ("RLAIF (AI-label RM)", "ppo_ai"))),),
        panels=(("true score (train samples)", "reward/true/mean"),
                ("learned reward (train samples)", "reward/rm/mean")))


def _labels_table() -> spec.Table:
    pct = dict(scale=100.0, digits=1)
    return spec.Table(metrics=(
        spec.Metric("labels agree with truth (%)", "data_summary.agreement", **pct),
        spec.Metric("pairs", "pairs", digits=0),
        spec.Metric("RM held-out accuracy vs labels (%)", "eval_after.accuracy", **pct),
        spec.Metric("RM held-out accuracy vs truth (%)", "eval_after.true_accuracy", **pct),
        spec.Metric("RM calibration error (ECE)", "eval_after.ece", digits=3),
    ), main="RM held-out accuracy vs truth (%)")


def get_sweep(arg: str | None = None) -> spec.Sweep:
    """'toy' / 'tiny': one running arm (the study) and one row per method (its compare stage).
    'labels': rows for the labellers and their reward models, over the same runs."""
    if arg not in (None, "toy", "tiny", "labels"):
        raise ValueError(f"sweeps exist for the toy, tiny and labels views, not {arg!r}")
    tiny_run = arg == "tiny"
    study = spec.Arm("study", arg="tiny" if tiny_run else "toy", in_table=False)
    if arg == "labels":
        arms = (study, *(spec.Arm(row, run="study", stage=rm) for row, _, rm in LABEL_ROWS))
        return spec.Sweep(arms=arms, seeds=SEEDS, table=_labels_table())
    arms = (study, *(spec.Arm(row, run="study", stage=stage) for row, stage in ROWS))
    return spec.Sweep(arms=arms, seeds=(0,) if tiny_run else SEEDS,
                      table=_policy_table(not tiny_run))
