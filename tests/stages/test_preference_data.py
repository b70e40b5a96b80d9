"""Preference data: Bradley-Terry labels (their noise rate is the model's), labelled pairs with
ties and empty responses skipped and counted, judge training rows, the reward-model stage's
bad-row handling and config checks, and its held-out split."""

import json

import numpy as np
import pytest

from rlcot import preferences, stages, study
from rlcot.stages import generate
from rlcot.stages import reward_model as rm_stage


def test_bradley_terry_labels_follow_the_sigmoid_of_the_score_difference():
    rng = np.random.default_rng(0)
    n = 200_000
    a, b = np.full(n, 1.0), np.full(n, 0.7)
    wins, tie = preferences.bradley_terry_labels(a, b, 0.3, rng)
    assert not tie.any()
    assert wins.mean() == pytest.approx(1 / (1 + np.exp(-1.0)), abs=4e-3)  # sigmoid(0.3/0.3)
    wins, tie = preferences.bradley_terry_labels(np.array([1.0, 0.0, 2.0]),
                                                 np.array([0.0, 1.0, 2.0]), 0.0, rng)
    assert wins.tolist() == [True, False, False] and tie.tolist() == [False, False, True]
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        preferences.bradley_terry_labels(a, b, -1.0, rng)


def test_labelled_pairs_skip_ties_and_empty_responses():
    texts = ["good", "bad", "same", "same ", "", "x", "p", "q"]
    label = np.array([1.0, 0.0, 0.5, 0.2, 1.0, 0.0, 0.3, 0.3])
    truth = np.array([1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.9, 0.1])
    rows, skipped = generate.labelled_pairs("Q", texts, label, truth, 0.0,
                                            np.random.default_rng(0))
    # pairs (good, bad): kept; (same, same ): identical texts; ("", x): empty; (p, q): equal
    # label scores -> tie
    assert skipped == {"tie": 2, "empty": 1}
    assert rows == [{"prompt": "Q", "chosen": "good", "rejected": "bad", "chosen_score": 1.0,
                     "rejected_score": 0.0, "chosen_reference": 1.0,
                     "rejected_reference": 0.5}]


def test_judge_rows_grade_out_of_ten():
    rows = generate.judge_rows("Q: ", ["a", "b", "  ", "c"], np.array([-0.5, 1.5, 1.0, 0.55]),
                               "{prompt}{completion}\nScore:", (-0.5, 1.5))
    assert [r["completion"] for r in rows] == [" 0/10", " 10/10", " 5/10"]
    assert rows[0]["prompt"] == "Q: a\nScore:"


def _rows(tmp_path, rows):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return f"jsonl:{path}"


def test_load_pairs_counts_every_kind_of_bad_row_or_fails_fast(tmp_path):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    ds = _rows(tmp_path, [good, "not json", {"prompt": "p", "chosen": "a"},
                          {**good, "rejected": " "}, {**good, "rejected": "a"},
                          {**good, "label": "tie"}, {**good, "chosen": "c"}])
    rows, skipped = preferences.load_pairs(ds, None)
    assert [r["chosen"] for r in rows] == ["a", "c"]
    assert skipped == {"invalid": 1, "missing": 1, "empty": 1, "tie": 2}
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: not a JSON object"):
        preferences.load_pairs(ds, None, on_bad_rows="error")
    rows, skipped = preferences.load_pairs(ds, None, limit=1)
    assert len(rows) == 1 and sum(skipped.values()) == 0
    with pytest.raises(FileNotFoundError, match="does not exist"):
        preferences.load_pairs(f"jsonl:{tmp_path}/nope.jsonl", None)


def test_reward_model_stage_config_checks():
    base = {"model": {"source": "stage:base"}, "data": {"dataset": "stage:pairs"}}
    cfg = rm_stage.resolve(base)
    assert cfg.data.eval_fraction == 0.1 and cfg.train.batch_size == 32
    with pytest.raises(ValueError, match="data.dataset must be"):
        rm_stage.resolve({**base, "data": {"dataset": "toyworld"}})
    with pytest.raises(ValueError, match="eval_fraction must be in"):
        rm_stage.resolve({**base, "data": {"dataset": "stage:p", "eval_fraction": 1.0}})
    with pytest.raises(ValueError, match="on_bad_rows must be"):
        rm_stage.resolve({**base, "data": {"dataset": "stage:p", "on_bad_rows": "drop"}})
    with pytest.raises(ValueError, match="set one of train.steps"):
        rm_stage.resolve({**base, "train": {"steps": 3, "epochs": 2}})
    train, held = rm_stage.split(100, 0.1)
    assert len(held) == 10 and len(train) == 90 and not set(train) & set(held)
    assert np.array_equal(held, rm_stage.split(100, 0.1)[1])  # fixed, seed-independent


def test_study_plan_checks_reward_model_and_judge_sources():
    """A reward model term must name a reward_model stage and a judge a model stage, both
    earlier in the study: checked before anything runs."""
    def cfg(rm_src, judge_src):
        return {"seed": 0, "stage_order": ("base", "pairs", "rm", "ppo"),
                "stages": {
                    "base": stages.defaults("sft", model={"source": "preset:tiny",
                                                          "tokenizer": "toyworld"}),
                    "pairs": stages.defaults("generate", model={"source": "stage:base"},
                                             select="labelled_pairs",
                                             rewards={"f": {"reward": "r1_format"}}),
                    "rm": rm_stage.defaults(data={"dataset": "stage:pairs"},
                                            model={"source": "stage:base"}),
                    "ppo": stages.defaults("rl", model={"source": "stage:base"}, rewards={
                        "rm": {"reward": "reward_model", "model": rm_src},
                        "judge": {"reward": "ai_judge", "model": judge_src}})}}
    plan = study.plan(cfg("stage:rm", "stage:base"))
    assert [s.name for s in plan.stages] == ["base", "pairs", "rm", "ppo"]
    with pytest.raises(ValueError, match=r"reward model of term 'rm'.*'stage:base'.*produces a "
                                         r"model"):
        study.plan(cfg("stage:base", "stage:base"))
    with pytest.raises(ValueError, match=r"model of reward term 'judge'.*'stage:rm'.*produces "
                                         r"no model"):
        study.plan(cfg("stage:rm", "stage:rm"))
    with pytest.raises(ValueError, match="names a later stage"):
        study.plan({**cfg("stage:rm", "stage:base"), "stage_order": ("base", "pairs", "ppo",
                                                                     "rm")})


def test_compare_agreement_by_hand():
    from rlcot.stages.compare import agreement
    y_m, y_b = np.array([1.0, 0.0, 0.5, 0.3]), np.array([0.0, 1.0, 0.5, 0.1])
    x_m, x_b = np.array([2.0, 3.0, 9.0, 1.0]), np.array([1.0, 1.0, 0.0, 1.0])
    # meetings 0, 1, 3 are decided under y; x agrees on 0, disagrees on 1, ties on 3
    assert agreement(x_m, x_b, y_m, y_b) == pytest.approx((1 + 0 + 0.5) / 3)
    assert agreement(x_m, x_b, y_b, y_b) is None


def test_compare_and_labelled_pair_settings_fail_before_anything_runs():
    from rlcot.stages import compare
    rewards = {"true": {"reward": "r1_format"}, "rm": {"reward": "reward_model",
                                                       "model": "stage:rm", "weight": 0.0}}
    ok = {"model": {"source": "stage:ppo"}, "baseline": "stage:base", "rewards": rewards,
          "win_by": "true"}
    assert compare.resolve(ok).rollout.num_samples == 4
    with pytest.raises(ValueError, match="needs baseline"):
        compare.resolve({**ok, "baseline": ""})
    with pytest.raises(ValueError, match=r"win_by 'truth' is not 'total' or a reward term"):
        compare.resolve({**ok, "win_by": "truth"})
    assert compare.sources(compare.resolve(ok)) == {
        "model.source": "stage:ppo", "model.baseline": "stage:base",
        "reward model of term 'rm'": "stage:rm"}
    gen = {"model": {"source": "stage:base"}, "rewards": {"true": {"reward": "r1_format"}},
           "select": "labelled_pairs"}
    with pytest.raises(ValueError, match="label_by 'judge' is not 'total' or a reward term"):
        generate.resolve({**gen, "label_by": "judge"})
    with pytest.raises(ValueError, match="label_temperature must be a finite number >= 0"):
        generate.resolve({**gen, "label_temperature": -0.1})
    with pytest.raises(ValueError, match="judge_range must be"):
        generate.resolve({**gen, "judge_range": (1.0, 0.0)})
    with pytest.raises(ValueError, match="judge template fields"):
        generate.resolve({**gen, "select": "judge", "judge_template": "{prompt} only"})
