"""Prompt templates render exactly the documented strings; few-shot selection is deterministic."""

import pytest

from rlcot.data.templates import (
    R1_ZERO_TEMPLATE, TemplateConfig, render_prompt, select_shots, shot_completion)

EX = {"question": "What is 2+3?", "answer": "5", "solution": ""}
SHOT = {"question": "What is 1+1?", "answer": "2", "solution": "One plus one is two."}

R1_ZERO_PAPER = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>. User: What is 2+3?. Assistant:")


def test_r1_zero_is_the_paper_template():
    cfg = TemplateConfig("r1_zero", instruction="")
    assert render_prompt(cfg, EX) == R1_ZERO_PAPER
    assert R1_ZERO_TEMPLATE.format(prompt=EX["question"]) == R1_ZERO_PAPER


def test_r1_zero_few_shot():
    cfg = TemplateConfig("r1_zero", instruction="", num_shots=1)
    expected = R1_ZERO_PAPER.replace(
        " User: What is 2+3?",
        " User: What is 1+1?. Assistant: <think> One plus one is two. </think> "
        "<answer> 2 </answer>\nUser: What is 2+3?")
    assert render_prompt(cfg, EX, [SHOT]) == expected


def test_qa_few_shot_with_instruction():
    cfg = TemplateConfig("qa", instruction="Put the answer in \\boxed{}.", num_shots=1)
    assert render_prompt(cfg, EX, [SHOT]) == (
        "Question: What is 1+1?\n\nPut the answer in \\boxed{}.\n"
        "Answer: One plus one is two.\nThe answer is $\\boxed{2}$.\n\n"
        "Question: What is 2+3?\n\nPut the answer in \\boxed{}.\nAnswer:")


def test_shot_completion_forms():
    assert shot_completion(SHOT, "") == "One plus one is two.\nThe answer is 2."
    assert shot_completion(EX, None) == "The answer is 5."
    boxed_solution = {"answer": "2", "solution": "So it is $\\boxed{2}$."}
    assert shot_completion(boxed_solution, "use \\boxed{}") == "So it is $\\boxed{2}$."


def test_chat_goes_through_the_tokenizer(byte_tokenizer):
    cfg = TemplateConfig("chat", instruction="Think.", system="Be brief.", num_shots=1)
    assert render_prompt(cfg, EX, [SHOT], byte_tokenizer) == (
        "<|system|>Be brief.<|end|>"
        "<|user|>What is 1+1?\n\nThink.<|end|>"
        "<|assistant|>One plus one is two.\nThe answer is 2.<|end|>"
        "<|user|>What is 2+3?\n\nThink.<|end|><|assistant|>")
    cfg = TemplateConfig("chat", instruction="", chat_kwargs=(("enable_thinking", False),))
    assert render_prompt(cfg, EX, [], byte_tokenizer) == (
        "<|vars [('enable_thinking', False)]|><|user|>What is 2+3?<|end|><|assistant|>")
    with pytest.raises(ValueError, match="apply_chat_template"):
        render_prompt(TemplateConfig("chat", instruction=""), EX, [], None)


def test_raw_and_errors():
    assert render_prompt(TemplateConfig("raw", instruction="Go."), EX) == "What is 2+3?\n\nGo."
    with pytest.raises(ValueError, match="no few-shot"):
        render_prompt(TemplateConfig("raw", instruction="", num_shots=1), EX, [SHOT])
    with pytest.raises(ValueError, match="wants 1 shots, got 0"):
        render_prompt(TemplateConfig("qa", instruction="", num_shots=1), EX, [])
    with pytest.raises(ValueError, match="unknown template 'r1'"):
        TemplateConfig("r1")
    with pytest.raises(ValueError, match="only used by the 'chat'"):
        TemplateConfig("qa", system="x")
    with pytest.raises(ValueError, match="only used by the 'chat'"):
        TemplateConfig("r1_zero", chat_kwargs=(("enable_thinking", False),))
    with pytest.raises(ValueError, match="num_shots"):
        TemplateConfig(num_shots=-1)


def test_select_shots_deterministic():
    first = select_shots(100, 5, seed=7)
    assert first == select_shots(100, 5, seed=7)
    assert len(set(first)) == 5 and all(0 <= i < 100 for i in first)
    assert first != select_shots(100, 5, seed=8)
    assert sorted(select_shots(4, 4, seed=0)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="5 few-shot examples from a split of 4"):
        select_shots(4, 5, seed=0)
