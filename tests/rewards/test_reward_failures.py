"""Rewards fail loudly: the reasoning-gym reward on rlcot's own datasets, and a reward that
fails on most of a batch raising instead of silently becoming zeros."""

import json
import logging

import numpy as np
import pytest

from rlcot.rewards import tasks
from rlcot.rewards.base import RewardInput, map_items
from rlcot.rewards.registry import REWARDS, RewardCombiner, RewardFailure, parse_reward_spec


def _batch(completions, examples):
    return RewardInput(["p"] * len(completions), completions, examples)


@pytest.fixture(scope="module")
def chain_sum_rows(tmp_path_factory):
    """Rows exactly as rlcot's reasoning-gym builder writes them (task 'reasoning_gym',
    generator in rg_task, metadata as metadata_json)."""
    from rlcot.data.base import decode_example
    from rlcot.data.builders_gym import ReasoningGymConfig, RlcotReasoningGym
    config = ReasoningGymConfig(name="chain_sum_rf", task="chain_sum", train_size=0, test_size=6)
    builder = RlcotReasoningGym(data_dir=tmp_path_factory.mktemp("rg"), config=config)
    builder.download_and_prepare()
    return [decode_example(r) for r in builder.as_data_source(split="test")]


def test_reasoning_gym_reward_scores_rlcot_rows(chain_sum_rows):
    rows = chain_sum_rows
    assert {r["task"] for r in rows} == {"reasoning_gym"} and "metadata" not in rows[0]
    gold = [f"<answer>{r['answer']}</answer>" for r in rows]
    out = tasks.reasoning_gym_score(_batch(gold, rows))
    np.testing.assert_array_equal(out.values, np.ones(6))
    assert out.metrics["n_errors"] == 0
    wrong = tasks.reasoning_gym_score(_batch(["<answer>-99999</answer>"] * 6, rows))
    assert (wrong.values < 0.5).all(), wrong.values    # chain_sum gives partial credit
    # The old behaviour: the task name came from example["task"] == "reasoning_gym", whose
    # scorer does not exist; every item errored and silently got the fallback 0.
    old_items = [(c, {k: r[k] for k in ("question", "answer")}, r["task"], "answer_tag")
                 for c, r in zip(gold, rows)]
    old = map_items(tasks.score_item, old_items, pool=None, timeout_s=10.0, fallback=0.0)
    np.testing.assert_array_equal(old.values, np.zeros(6))
    assert old.metrics["n_errors"] == 6
    # Through the combiner such a batch now stops the run instead.
    bad = [dict(r, rg_task="no_such_generator") for r in rows]
    combiner = RewardCombiner({"reasoning_gym": 1.0})
    with pytest.raises(RewardFailure, match=r"'reasoning_gym' \(reasoning_gym\) failed on 6 of 6"):
        combiner(_batch(gold, bad))
    combiner.close()


def test_task_name_and_metadata_sources(chain_sum_rows):
    row = chain_sum_rows[0]
    assert tasks.task_name(row) == "chain_sum"                       # rg_task wins
    assert tasks.task_name({"task": "countdown"}) == "countdown"      # a generator name
    assert tasks.task_name({"metadata": {"source_dataset": "products"}}) == "products"
    assert tasks.task_name({"task": "reasoning_gym",
                            "metadata_json": json.dumps({"source_dataset": "leg_counting"})}) \
        == "leg_counting"
    with pytest.raises(KeyError, match="source_dataset"):
        tasks.task_name({"task": "reasoning_gym", "answer": "1"})
    entry = tasks.rg_entry(row)
    assert entry["metadata"] == json.loads(row["metadata_json"])
    assert tasks.rg_entry({"answer": "", "question": "q"})["answer"] is None
    with pytest.raises(TypeError, match="metadata must be a dict"):
        tasks.rg_metadata({"metadata": [1, 2]})


def _flaky_item(completion):
    if completion.startswith("bad"):
        raise RuntimeError(f"scorer broke on {completion!r}")
    return 1.0, {}


def flaky(batch, *, pool=None, fallback: float = 0.0):
    return map_items(_flaky_item, [(c,) for c in batch.completions], pool=pool,
                     timeout_s=5.0, fallback=fallback)


def test_combiner_raises_when_most_items_fail(monkeypatch, caplog):
    monkeypatch.setitem(REWARDS, "flaky", flaky)
    most = _batch(["bad 1", "bad 2", "bad 3", "ok"], [{}] * 4)
    combiner = RewardCombiner({"flaky": 1.0})
    with pytest.raises(RewardFailure, match=r"failed on 3 of 4 items(.|\n)*scorer broke"):
        combiner(most)
    # Fewer than half: the items get the fallback, and the first error is logged once.
    few = _batch(["bad 1", "ok", "ok", "ok"], [{}] * 4)
    with caplog.at_level(logging.WARNING, logger="rlcot.rewards.registry"):
        out = combiner(few)
        combiner(few)
    np.testing.assert_array_equal(out.total, [0.0, 1.0, 1.0, 1.0])
    assert out.metrics["reward/flaky/n_errors"] == 1.0
    logged = [r for r in caplog.records if "failed on 1 of 4" in r.getMessage()]
    assert len(logged) == 1
    combiner.close()
    # The policy knob: 1.0 never stops the run, 0.0 stops on any error.
    lenient = RewardCombiner({"flaky": {"max_error_frac": 1.0}})
    np.testing.assert_array_equal(lenient(most).total, [0.0, 0.0, 0.0, 1.0])
    lenient.close()
    strict = RewardCombiner({"flaky": {"max_error_frac": 0.0}})
    with pytest.raises(RewardFailure, match="1 of 4"):
        strict(few)
    strict.close()
    with pytest.raises(ValueError, match="max_error_frac must be in"):
        parse_reward_spec({"flaky": {"max_error_frac": 1.5}})
