"""Incompatible choices fail before any compute, naming the key and what is allowed: in a
stage's config (rlcot.run_config.check_choices) and in the study's plan (rlcot.preflight)."""

import pytest

from rlcot import preflight, run_config, stages, study
from rlcot.rewards.registry import required_fields
from tests.loop.test_loop import tiny_config

pytestmark = pytest.mark.usefixtures("shared_toy_cache")


def _rl(**sections):
    c = run_config.default_config()
    c.model.source = "preset:tiny"
    c.rewards = {"math_accuracy": 1.0}
    for name, values in sections.items():
        for k, v in values.items():
            c[name][k] = v
    return c


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "kimi"])
def test_group_estimators_need_two_samples(estimator):
    with pytest.raises(ValueError, match=f"estimator '{estimator}' compares the samples of each "
                                         f"prompt, but rollout.num_samples is 1.*reinforce_pp"):
        run_config.resolve(_rl(advantage={"estimator": estimator}, rollout={"num_samples": 1}))


def test_single_sample_estimators_are_allowed():
    run_config.resolve(_rl(advantage={"estimator": "reinforce_pp"}, rollout={"num_samples": 1}))
    with pytest.raises(ValueError, match="reinforce_pp with group_baseline=True compares"):
        run_config.resolve(_rl(advantage={"estimator": "reinforce_pp", "group_baseline": True},
                               rollout={"num_samples": 1}))


def test_gae_and_the_value_model_go_together():
    with pytest.raises(ValueError, match="'gae' needs a value model: set learner.value"):
        run_config.resolve(_rl(advantage={"estimator": "gae"}))
    c = _rl()
    c.learner.value = {}
    with pytest.raises(ValueError, match="learner.value .* only used by advantage.estimator "
                                         "'gae', not 'grpo'"):
        run_config.resolve(c)


def test_a_reference_needs_a_kl():
    with pytest.raises(ValueError, match="model.reference is 'preset:tiny' but learner.objective"
                                         ".kl.placement is 'none'.*'loss' or 'reward'"):
        run_config.resolve(_rl(model={"reference": "preset:tiny"}))
    with pytest.raises(ValueError, match="train.ref_refresh_every is 5 .* no reference"):
        run_config.resolve(_rl(train={"ref_refresh_every": 5}))
    c = _rl(model={"reference": "preset:tiny"}, train={"ref_refresh_every": 5})
    c.learner.objective.kl.placement = "loss"  # coef 0 is allowed: kl_ref_mean is still logged
    run_config.resolve(c)


def test_rows_must_split_into_minibatches_and_micro_batches():
    c = _rl(data={"batch_prompts": 3}, rollout={"num_samples": 3})
    c.learner.minibatches = 2
    with pytest.raises(ValueError, match="batch_prompts x rollout.num_samples = 3 x 3: 9 rows "
                                         "do not split into 2 minibatches"):
        run_config.resolve(c)


def _study_fails(c, tmp_path, match):
    with pytest.raises(ValueError, match=match):
        study.run(c, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no stage started


def test_rows_must_split_over_the_mesh(tmp_path):
    c = tiny_config(1)
    c.data.batch_prompts = 3  # 12 rows: 2 micro-batches, but not x 8 devices
    _study_fails(c, tmp_path, r"stage 'rl' \(rl\): .*= 12 rows do not split into learner."
                              r"minibatches \(1\) x learner.micro_batches \(2\) x 8 batch shards")


def test_prompt_and_completion_must_fit_the_context(tmp_path):
    c = tiny_config(1)
    c.data.max_prompt_tokens = 64
    c.rollout.max_new_tokens = 480  # the toy model has 512 positions
    _study_fails(c, tmp_path, r"stage 'rl' \(rl\): data.max_prompt_tokens \(64\) \+ "
                              r"rollout.max_new_tokens \(480\) is beyond the context of model "
                              r"'stage:base' \(512 positions\)")


def test_the_loop_checks_unbounded_prompts_against_the_context():
    from types import SimpleNamespace

    from rlcot.loop import _check_context
    pipe = SimpleNamespace(prompt_ids=[[1] * 30, [1] * 50])
    _check_context(pipe, 462, 512)
    with pytest.raises(ValueError, match="longest training prompt has 50 tokens: with rollout."
                                         "max_new_tokens = 463 .* data.max_prompt_tokens <= 49"):
        _check_context(pipe, 463, 512)


def test_a_model_without_a_tokenizer(tmp_path):
    c = tiny_config(1)
    c.stages.base.model.tokenizer = None
    _study_fails(c, tmp_path, "stage 'base': model 'preset:tiny' comes without a tokenizer.*set "
                              "model.tokenizer")
    c.stages.base.model.tokenizer = str(tmp_path / "nope.model")
    _study_fails(c, tmp_path, "stage 'base': tokenizer '.*nope.model' .* does not exist")


@pytest.mark.parametrize("dataset,rewards,match", [
    ("toyworld", {"code_tests": 1.0}, "reads the field 'tests' or 'test'\\+'entry_point' of each "
                                      "example, which data.dataset 'toyworld' does not have"),
    ("toyworld", {"acc": {"reward": "math_accuracy", "answer_key": "gold"}},
     "reward term 'acc' \\(math_accuracy\\) reads the field 'gold'"),
    ("humaneval", {"acc": {"reward": "math_accuracy", "answer_key": "gold"}},
     "reads the field 'gold' of each example, which data.dataset 'humaneval' does not have"),
])
def test_a_reward_needs_its_fields_in_the_dataset(tmp_path, dataset, rewards, match):
    c = tiny_config(1)
    c.data.dataset = dataset
    c.rewards = rewards
    _study_fails(c, tmp_path, match)


def test_required_fields_follow_the_rewards():
    assert required_fields({"a": {"reward": "math_accuracy", "answer_key": "gold"},
                                      "f": {"reward": "r1_format"}}) == ("gold",)
    assert required_fields({"code_tests": 1.0, "r1_tag_count": 1.0}) == ()
    # A length term judged by a reward of its own reads that reward's fields.
    assert required_fields({"len": {"reward": "kimi_length",
                                              "accuracy": "math_accuracy"}}) == ("answer",)


def test_generate_stages_are_checked_too(tmp_path):
    c = tiny_config(1)
    c.stage_order = ("base", "gen")
    del c.stages["rl"]
    c.stages.gen = stages.defaults("generate", rewards={"code_tests": 1.0},
                                   model={"source": "stage:base"})
    _study_fails(c, tmp_path, r"stage 'gen' \(generate\): reward term 'code_tests'")
