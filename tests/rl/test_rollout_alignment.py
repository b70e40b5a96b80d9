"""The rollout side of exactness: DAPO's dynamic sampling filters on accuracy, and the learner
is aligned with how rollouts are drawn (Dr.GRPO's completion budget, off-policy sampling)."""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlcot import rollout as R
from rlcot import run_config
from rlcot.rewards.registry import RewardCombiner
from rlcot.sampling import SamplingSpec
from rlcot.rl.state import UpdateConfig
from rlcot.sampling.outputs import SampleOutput

G = 2
# Round 0: answers all wrong, but only one well formatted: the shaped total differs within the
# group while the accuracy does not (DAPO drops it). Round 1: one right, one wrong (kept).
ROUNDS = [("7", ["<think>a</think> <answer>3</answer>", "3"]),
          ("5", ["<think>a</think> <answer>5</answer>", "<think>a</think> <answer>4</answer>"])]
SPEC = {"acc": {"reward": "math_accuracy"}, "fmt": {"reward": "r1_format", "weight": 0.5}}


class CharTokenizer:
    def decode(self, ids, skip_special=True):
        return "".join(chr(i) for i in ids)


def prompt_batches():
    for answer, _ in ROUNDS:
        yield {"prompt_tokens_BxT": np.ones((1, 2), np.int32), "prompt_lens_B": np.array([2]),
               "prompt_text": ["question"], "example": [{"answer": answer, "task": "gsm8k"}]}


def fake_generate():
    calls = iter(ROUNDS)

    def generate(tokens_BxP, lens_B, key, *, num_samples, spec):
        _, texts = next(calls)
        T = max(len(t) for t in texts)
        toks = np.zeros((len(texts), T), np.int32)
        mask = np.zeros((len(texts), T), bool)
        for i, t in enumerate(texts):
            toks[i, :len(t)] = [ord(c) for c in t]
            mask[i, :len(t)] = True
        f = jnp.zeros((len(texts), T), jnp.float32)
        return SampleOutput(jnp.asarray(toks), jnp.asarray(mask),
                            jnp.asarray([len(t) for t in texts]), jnp.zeros(len(texts), bool),
                            f, f, jnp.asarray(tokens_BxP), jnp.asarray(lens_B), num_samples)
    return generate


def run_collect(filter_on):
    combiner = RewardCombiner(SPEC)
    try:
        return R.collect(prompt_batches(), fake_generate(), combiner, CharTokenizer(),
                         SamplingSpec(max_new_tokens=64), num_samples=G, batch_prompts=1,
                         key=jax.random.key(0), dynamic_sampling=True, max_rounds=2,
                         filter_on=filter_on)
    finally:
        combiner.close()


def test_dynamic_sampling_filters_on_accuracy():
    new = run_collect("accuracy")
    assert new.stats["rounds"] == 2 and new.examples[0]["answer"] == "5"
    np.testing.assert_array_equal(new.components["acc"], [1.0, 0.0])
    assert new.row_valid_N.all()
    # By label: the same.
    assert run_collect("acc").examples[0]["answer"] == "5"
    # The old behaviour (the shaped total, 'total'): the all-wrong group was kept after one
    # round because its format term differed (totals [0.5, 0.0]).
    old = run_collect("total")
    assert old.stats["rounds"] == 1 and old.examples[0]["answer"] == "7"
    np.testing.assert_allclose(old.scores_N, [0.5, 0.0])
    with pytest.raises(KeyError, match="no reward term 'nope'"):
        run_collect("nope")


@dataclasses.dataclass(frozen=True)
class RC:
    """The part of a RunConfig align_learner reads (the full config resolves the same way)."""
    rollout: run_config.RolloutSection
    learner: UpdateConfig
    rewards: dict


def rc_with(rollout=None, learner=None, rewards=None):
    return RC(rollout=run_config.build(run_config.RolloutSection, rollout, "rollout"),
              learner=run_config.build(UpdateConfig, learner, "learner"),
              rewards=dict(SPEC) if rewards is None else rewards)


def test_align_fills_the_dr_grpo_budget():
    rc = rc_with(rollout={"max_new_tokens": 96},
                 learner={"objective": {"aggregation": {"mode": "constant"}}})
    assert rc.learner.objective.aggregation.max_tokens is None
    aligned = R.align_learner(rc)
    assert aligned.learner.objective.aggregation.max_tokens == 96
    # A configured constant is left alone; other modes are untouched (same object).
    rc2 = rc_with(learner={"objective": {"aggregation": {"mode": "constant", "constant": 50.0}}})
    assert R.align_learner(rc2).learner.objective.aggregation.max_tokens is None
    rc3 = rc_with()
    assert R.align_learner(rc3) is rc3


def test_off_policy_sampling_warns_once_corrects_or_refuses(caplog):
    R._WARNED.clear()
    rc = rc_with(rollout={"temperature": 0.6, "top_p": 0.95})
    assert R.off_policy_settings(rc.rollout) == ["temperature=0.6", "top_p=0.95"]
    with pytest.warns(R.OffPolicyWarning, match=r"temperature=0.6, top_p=0.95.*OFF-POLICY"):
        out = R.align_learner(rc)
    assert out.learner.objective.tis_cap is None            # warned, not changed
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # once: no second warning
        R.align_learner(rc)
    # 'correct': truncated importance sampling against the sampler's log-probs.
    fixed = R.align_learner(rc_with(rollout={"top_k": 20, "off_policy": "correct"}))
    assert fixed.learner.objective.tis_cap == R.CORRECTION_TIS_CAP == 2.0
    with pytest.raises(ValueError, match=r"off-policy \(min_p=0.1\)"):
        R.align_learner(rc_with(rollout={"min_p": 0.1, "off_policy": "error"}))
    # A set tis_cap already corrects it: nothing to say; on-policy settings: nothing either.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        R._WARNED.clear()
        quiet = rc_with(rollout={"temperature": 0.7}, learner={"objective": {"tis_cap": 3.0}})
        assert R.align_learner(quiet).learner.objective.tis_cap == 3.0
        R.align_learner(rc_with())
    with pytest.raises(ValueError, match="off_policy must be"):
        rc_with(rollout={"off_policy": "ignore"})


def test_align_checks_the_dynamic_sampling_filter():
    R.align_learner(rc_with(rollout={"dynamic_sampling": True}))        # 'acc' found
    with pytest.raises(ValueError, match="not 'accuracy', 'total' or a reward term label"):
        R.align_learner(rc_with(rollout={"dynamic_sampling": True,
                                         "dynamic_sampling_filter": "format"}))
    fmt_only = {"r1_format": 1.0}
    with pytest.raises(ValueError, match="has no accuracy terms"):
        R.align_learner(rc_with(rollout={"dynamic_sampling": True}, rewards=fmt_only))
    R.align_learner(rc_with(rollout={"dynamic_sampling": True, "dynamic_sampling_filter": "total"},
                            rewards=fmt_only))
    two = {"a": {"reward": "math_accuracy"}, "b": {"reward": "reasoning_gym"}}
    with pytest.raises(ValueError, match="has several accuracy terms"):
        R.align_learner(rc_with(rollout={"dynamic_sampling": True}, rewards=two))
    R.align_learner(rc_with(rollout={"dynamic_sampling": True, "dynamic_sampling_filter": "b"},
                            rewards=two))
