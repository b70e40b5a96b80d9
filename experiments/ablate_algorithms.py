"""Algorithm ablation on the toy world where checking steps are needed (r1_zero's default `toy` study):
GRPO, Dr.GRPO, DAPO, RLOO, REINFORCE++ (batch and group baseline), PPO with a GAE critic, GSPO
and Kimi k1.5's surrogate, 3 seeds each; plus a KL-coefficient and a group-size (G) ablation.

Commands (2 CPU cores: --parallel 2 gives each point one core):

    python -m rlcot.main sweep --config experiments/ablate_algorithms.py --root runs/ablate_algorithms --parallel 2
    python -m rlcot.main table --config experiments/ablate_algorithms.py --root runs/ablate_algorithms
    python -m rlcot.main plot  --config experiments/ablate_algorithms.py --root runs/ablate_algorithms

The KL and group-size studies: the same three commands with
`--config experiments/ablate_algorithms.py:study=kl --root runs/ablate_kl` and
`--config experiments/ablate_algorithms.py:study=group_size --root runs/ablate_group_size`.
`--dry_run` on sweep prints one `python -m rlcot.main run ...` line per point instead.

Arguments (`FILE:key=value,flag`): `study` (algorithms | kl | group_size) picks the sweep;
`arm` picks one arm's config (what each point runs, e.g. `:arm=dapo`); `tiny` makes every run
a few small steps on a small freshly pre-trained base model (a smoke test of the pipeline,
not a result).

Every arm starts from r1_zero's toy world where checking steps are needed (main pass always
forgets carries; its base model, data, rewards, 40 RL steps, lr, 2 minibatches, evaluation on
256 held-out problems) with the policy loss and its aggregation
reset to their defaults and no KL term, then sets what defines it:

| arm | advantage | policy loss | aggregation | also |
|---|---|---|---|---|
| grpo | grpo (group std) | ppo_clip | seq_mean_token_mean | |
| dr_grpo | dr_grpo | ppo_clip | constant (the completion budget) | |
| dapo | grpo | ppo_clip, clip-higher 0.2 / 0.28 | token_mean | dynamic sampling, dapo_overlong reward |
| rloo | rloo | ppo_clip | seq_mean_token_mean | |
| reinforce_pp | reinforce_pp (batch) | ppo_clip | token_mean | |
| reinforce_pp_group | reinforce_pp, group_baseline | ppo_clip | token_mean | |
| ppo_gae | gae (gamma, lam defaults) | ppo_clip | token_mean | critic (learner.value defaults) |
| gspo | grpo | gspo (its own clip default) | seq_mean_token_mean | |
| kimi | kimi | kimi (tau default) | seq_mean_token_mean | |

The KL study is the grpo arm with a k3 KL term in the loss, coefficient 0 / 0.001 / 0.01 / 0.1;
the group-size study the grpo arm with G = 2 / 4 / 8 / 16 samples per prompt (16 prompts per
step throughout, so larger G samples more tokens).

Results (2026-11-30, 2 cores of an AMD EPYC; numbers per machine type): the algorithm sweep,
3 seeds of every arm, produced by the `table` command on the sweep's run directories (the
points ran seed-major from the `--dry_run` commands). Wall times: seeds 0 and 1 ran while
other jobs shared the two cores (load 2-10), seed 2 alone (~1.6 min per arm, PPO-GAE 2.3,
DAPO 1.9): upper bounds, not a ranking. "tokens sampled" (rollout/tokens_sampled) was logged
only by points started after it was added; DAPO's dynamic sampling samples about twice the
others' tokens.

| arm | greedy pass@1 (%) | pass@8 (%) | avg@8 (%) | response tokens (greedy) | checking rate (%) | tokens sampled (M) | wall time (min) | seeds | not finished |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---|
| grpo | 99.0 ± 0.5 | 99.7 ± 0.1 | 86.2 ± 0.5 | 98.8 ± 0.0 | 100.0 ± 0.0 | 0.46 (n=1/3) ⚠ | 2.6 ± 0.7 | 3/3 |  |
| dr_grpo | 98.8 ± 0.2 | 99.7 ± 0.1 | 86.5 ± 0.3 | 98.9 ± 0.1 | 100.0 ± 0.0 | 0.46 ± 0.00 (n=2/3) ⚠ | 3.1 ± 0.9 | 3/3 |  |
| dapo | 99.6 ± 0.2 | 99.9 ± 0.1 | 88.7 ± 0.9 | 98.8 ± 0.0 | 100.0 ± 0.0 | 0.96 ± 0.01 (n=2/3) ⚠ | 3.9 ± 1.1 | 3/3 |  |
| rloo | 99.2 ± 0.0 | 99.5 ± 0.1 | 88.0 ± 0.6 | 98.8 ± 0.0 | 100.0 ± 0.0 | 0.46 ± 0.00 (n=2/3) ⚠ | 3.1 ± 0.9 | 3/3 |  |
| reinforce_pp | 98.4 ± 0.8 | 99.9 ± 0.1 | 85.9 ± 1.3 | 98.8 ± 0.0 | 100.0 ± 0.0 | 0.46 ± 0.01 (n=2/3) ⚠ | 3.0 ± 1.0 | 3/3 |  |
| reinforce_pp_group | 99.1 ± 0.6 | 99.5 ± 0.3 | 87.2 ± 1.1 | 98.8 ± 0.0 | 100.0 ± 0.0 | 0.46 ± 0.00 (n=2/3) ⚠ | 2.2 ± 0.5 | 3/3 |  |
| ppo_gae | 98.3 ± 0.3 | 99.6 ± 0.2 | 85.9 ± 0.9 | 98.8 ± 0.0 | 100.0 ± 0.0 | 0.46 ± 0.01 (n=2/3) ⚠ | 3.2 ± 1.1 | 3/3 |  |
| gspo | 98.6 ± 0.1 | 100.0 ± 0.0 | 87.1 ± 0.3 | 98.8 ± 0.0 | 100.0 ± 0.0 | 0.44 ± 0.00 (n=2/3) ⚠ | 2.4 ± 0.7 | 3/3 |  |
| kimi | 99.3 ± 0.3 | 99.9 ± 0.1 | 87.7 ± 0.8 | 98.8 ± 0.0 | 100.0 ± 0.0 | 0.46 ± 0.00 (n=2/3) ⚠ | 3.0 ± 0.7 | 3/3 |  |

Mean ± standard error over seeds [0, 1, 2] (final values); ⚠ marks a cell over fewer seeds than declared (n=finished/declared).

On this toy world every algorithm reaches 98.3-99.6% greedy accuracy with the checking
behaviour at 100% and ~99-token responses after 40 steps; no arm differs from GRPO
significantly over 3 seeds (Welch p >= 0.08 on every accuracy metric). The world is too easy
to separate the estimators at this budget.
Curves: docs/ablate_algorithms_curves.png, bars: docs/ablate_algorithms_bars.png.

The KL study (measured 2026-11-30, same machine, the 12 points run 2 at a time, one core
each, while other jobs shared the cores: wall times are upper bounds), from the `table`
command; "KL to start" is the sampled-token k3 estimate of KL(policy || starting policy)
(`kl_ref_mean`, logged every step):

| arm | greedy pass@1 (%) | pass@8 (%) | avg@8 (%) | response tokens (greedy) | checking rate (%) | tokens sampled (M) | wall time (min) | KL to start, last step | KL to start, mean over steps | seeds | not finished |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|
| coef=0.0 | 96.7 ± 0.5 | 99.0 ± 0.5 | 81.6 ± 0.7 | 98.9 ± 0.1 | 100.0 ± 0.0 | 0.46 ± 0.00 | 3.4 ± 0.3 | 0.0148 ± 0.0015 | 0.0127 ± 0.0003 | 3/3 |  |
| coef=0.001 | 97.3 ± 0.8 | 99.6 ± 0.2 | 82.2 ± 0.6 | 98.8 ± 0.0 | 100.0 ± 0.0 | 0.46 ± 0.00 | 4.0 ± 0.0 | 0.0151 ± 0.0011 | 0.0130 ± 0.0003 | 3/3 |  |
| coef=0.01 | 97.8 ± 0.7 | 99.6 ± 0.2 | 83.2 ± 1.6 | 98.8 ± 0.0 | 100.0 ± 0.0 | 0.46 ± 0.00 | 4.0 ± 0.1 | 0.0149 ± 0.0012 | 0.0136 ± 0.0003 | 3/3 |  |
| coef=0.1 | 98.0 ± 0.8 | 99.9 ± 0.1 | 82.1 ± 0.7 | 98.9 ± 0.1 | 100.0 ± 0.0 | 0.45 ± 0.00 | 4.1 ± 0.0 | 0.0156 ± 0.0014 | 0.0122 ± 0.0002 | 3/3 |  |

Welch's t-test against coef=0.0: p >= 0.14 for every metric. The KL term does not bind at
these coefficients within 40 steps: the policy's KL to its start ends at 0.015-0.016 for every
coefficient up to 0.1 (the penalty's share of the loss is then ~0.0015 per token), and
accuracy differs by less than the seeds' spread. The coef=0.0 row is not the algorithm
sweep's grpo row re-run: those points ran at an earlier commit whose sampling streams differ
(their step-0 sampled evaluation of the same base model already differs; greedy is equal),
so the two sweeps are separate draws and only rows of one sweep compare.
Curves: docs/ablate_kl_curves.png, bars: docs/ablate_kl_bars.png.

The group-size study (same day and machine, 2 points at a time beside other jobs; wall times
are upper bounds), from the `table` command:

| arm | greedy pass@1 (%) | pass@8 (%) | avg@8 (%) | response tokens (greedy) | checking rate (%) | tokens sampled (M) | wall time (min) | seeds | not finished |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---|
| num_samples=2 | 85.3 ± 4.6 | 96.4 ± 0.5 | 65.1 ± 4.9 | 98.2 ± 0.8 | 100.0 ± 0.0 | 0.11 ± 0.00 | 2.1 ± 0.4 | 3/3 |  |
| num_samples=4 | 96.4 ± 0.6 | 99.1 ± 0.1 | 78.3 ± 2.1 | 98.8 ± 0.0 | 100.0 ± 0.0 | 0.22 ± 0.00 | 2.7 ± 0.4 | 3/3 |  |
| num_samples=8 | 96.7 ± 0.5 | 99.0 ± 0.5 | 81.6 ± 0.7 | 98.9 ± 0.1 | 100.0 ± 0.0 | 0.46 ± 0.00 | 5.5 ± 0.6 | 3/3 |  |
| num_samples=16 | 97.4 ± 0.3 | 99.1 ± 0.6 | 84.2 ± 0.6 | 98.8 ± 0.0 | 100.0 ± 0.0 | 0.93 ± 0.00 | 5.1 ± 0.7 | 3/3 |  |

Welch's t-test against G=8: G=2 is worse on pass@8 (96.4% against 99.0%, p=0.017) and, less
surely, on greedy accuracy (85.3% ± 4.6, p=0.13: 89.5 / 76.2 / 90.2 per seed) and avg@8
(65.1%, p=0.08); G=4 matches G=8 at half the sampled tokens; G=16 raises sampled accuracy
(avg@8 84.2% against 81.6%, p=0.046) at twice the tokens, greedy accuracy unchanged. The G=8
points are the KL study's coef=0.0 points run again (KL term in the loss at coefficient 0
there, no KL term here): every value of their metrics.jsonl is identical, step by step, for
all three seeds (timings aside), so a zero-weight KL term changes nothing and separate runs
of one config reproduce each other. Curves: docs/ablate_group_size_curves.png, bars:
docs/ablate_group_size_bars.png.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ml_collections import config_dict

from rlcot import run_config
from rlcot.rl.value import ValueConfig
from rlcot.sweep import spec


def _r1_zero():
    """experiments/r1_zero.py beside this file."""
    return spec.load_experiment(Path(__file__).with_name("r1_zero.py"))


ARMS = ("grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "reinforce_pp_group", "ppo_gae",
        "gspo", "kimi")
STUDIES = ("algorithms", "kl", "group_size")
DAPO_CLIP = (0.2, 0.28)  # DAPO's clip-higher (eps_low, eps_high); no library default exists
SEEDS = (0, 1, 2)
KL_COEFS = (0.0, 0.001, 0.01, 0.1)
GROUP_SIZES = (2, 4, 8, 16)
EVAL = "toyworld:test"  # the eval label of summary keys ('toyworld:test/greedy/pass@1')


def _base() -> config_dict.ConfigDict:
    r1 = _r1_zero()
    # r1_zero's default study: the world where checking steps are needed (base + rl stages).
    c = r1.toy()
    c.name = "ablate_algorithms"
    defaults = run_config.default_config().learner.objective
    c.learner.objective.policy = defaults.policy
    c.learner.objective.aggregation = defaults.aggregation
    c.learner.objective.kl = defaults.kl
    return c


def _arm(c: config_dict.ConfigDict, arm: str) -> config_dict.ConfigDict:
    adv, obj = c.advantage, c.learner.objective
    adv.estimator = {"dr_grpo": "dr_grpo", "rloo": "rloo", "reinforce_pp": "reinforce_pp",
                     "reinforce_pp_group": "reinforce_pp", "ppo_gae": "gae",
                     "kimi": "kimi"}.get(arm, "grpo")
    obj.aggregation.mode = {"dr_grpo": "constant", "dapo": "token_mean",
                            "reinforce_pp": "token_mean", "reinforce_pp_group": "token_mean",
                            "ppo_gae": "token_mean"}.get(arm, "seq_mean_token_mean")
    obj.policy.name = {"gspo": "gspo", "kimi": "kimi"}.get(arm, "ppo_clip")
    if arm == "reinforce_pp_group":
        adv.group_baseline = True
    if arm == "dapo":
        obj.policy.eps_low, obj.policy.eps_high = DAPO_CLIP
        c.rollout.dynamic_sampling = True
        budget = c.rollout.max_new_tokens
        c.rewards.overlong = {"reward": "dapo_overlong", "weight": 1.0, "max_len": budget,
                              "cache_len": budget // 5}  # DAPO: a 4096 cache in 20480 tokens
    if arm == "ppo_gae":
        c.learner.value = dataclasses.asdict(ValueConfig())
    return c


def _tiny(c: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """A few small steps on a small, quickly pre-trained base model (a smoke test)."""
    c.world.corpus_size = 2000
    base = c.stages.base.train  # the base model is the study's `base` stage
    base.steps, base.batch_size, base.short_rows = 30, 16, 8
    c.stages.base.optimizer.warmup_steps = 5
    c.data.batch_prompts = 4
    c.rollout.num_samples = 4
    c.rollout.max_new_tokens = 96
    c.train.steps = 2
    c.train.checkpoint_every = 1
    c.train.eval_every = 0
    c.eval.datasets = (f"{EVAL}:16",)
    c.eval.num_samples = 2
    c.eval.max_new_tokens = 96
    c.eval.batch_size = 16
    return c


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    a = spec.parse_arg(arg, arm="grpo", study="algorithms", tiny=False)
    if a["arm"] not in ARMS:
        raise ValueError(f"unknown arm {a['arm']!r}; choose from {ARMS}")
    if a["study"] not in STUDIES:
        raise ValueError(f"unknown study {a['study']!r}; choose from {STUDIES}")
    c = _base()
    if a["tiny"]:
        c = _tiny(c)
    return _arm(c, a["arm"])


def _table(tiny: bool) -> spec.Table:
    k = 2 if tiny else 8  # eval samples per problem (config.eval.num_samples)
    pct = dict(scale=100.0, digits=1)
    return spec.Table(metrics=(
        spec.Metric("greedy pass@1 (%)", f"eval_after.{EVAL}/greedy/pass@1", **pct),
        spec.Metric(f"pass@{k} (%)", f"eval_after.{EVAL}/sampled/pass@{k}", **pct),
        spec.Metric(f"avg@{k} (%)", f"eval_after.{EVAL}/sampled/avg@{k}", **pct),
        spec.Metric("response tokens (greedy)", f"eval_after.{EVAL}/greedy/len"),
        spec.Metric("checking rate (%)", f"eval_after.{EVAL}/greedy/check_rate", **pct),
        spec.Metric("tokens sampled (M)", curve="rollout/tokens_sampled", reduce="sum",
                    scale=1e-6, digits=2),
        spec.Metric("wall time (min)", "wall_time_s", scale=1 / 60),
    ), baseline="grpo" if not tiny else None)


def get_sweep(arg: str | None = None) -> spec.Sweep:
    a = spec.parse_arg(arg, arm="grpo", study="algorithms", tiny=False)
    tiny = ",tiny" if a["tiny"] else ""
    seeds = (0,) if a["tiny"] else SEEDS
    if a["study"] == "algorithms":
        arms = tuple(spec.Arm(name, arg=f"arm={name}{tiny}") for name in ARMS)
        return spec.Sweep(arms=arms, seeds=seeds, table=_table(a["tiny"]))
    if a["study"] == "kl":
        arms = spec.grid({"learner.objective.kl.coef": KL_COEFS[:2] if tiny else KL_COEFS},
                         arg=f"arm=grpo{tiny}", base={"learner.objective.kl.placement": "loss"})
        baseline = "coef=0.0"  # no KL: the grpo arm
        extra = (spec.Metric("KL to start, last step", curve="kl_ref_mean", digits=4),
                 spec.Metric("KL to start, mean over steps", curve="kl_ref_mean",
                             reduce="mean", digits=4))
    else:
        arms = spec.grid({"rollout.num_samples": GROUP_SIZES[:2] if tiny else GROUP_SIZES},
                         arg=f"arm=grpo{tiny}")
        baseline = "num_samples=8"  # the grpo arm's G
        extra = ()
    table = _table(a["tiny"])
    table = dataclasses.replace(table, metrics=table.metrics + extra,
                                baseline=None if tiny else baseline)
    return spec.Sweep(arms=arms, seeds=seeds, table=table)
