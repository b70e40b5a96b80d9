"""Evaluation-test fixtures: a toy tokenizer, a tiny random model, a small in-memory eval set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

QUESTIONS = [("What is 2 + 3?", "5"), ("What is 4 + 3?", "7"), ("What is 3 * 4?", "12"),
             ("What is 1 / 2?", "1/2"), ("What is 9 - 6?", "3"), ("What is 8 / 4?", "2")]

CORPUS = [f"Question: {q}\nAnswer: <think> {q[8:-1]} = {a} </think> <answer> {a} </answer>"
          for q, a in QUESTIONS] + [
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "The answer is 42. I think so. 0 1 2 3 4 5 6 7 8 9 + - * / = ( )",
]


@pytest.fixture(scope="session")
def toy_examples() -> tuple[dict[str, str], ...]:
    return tuple({"id": f"q{i}", "question": q, "answer": a, "solution": "", "task": "toy"}
                 for i, (q, a) in enumerate(QUESTIONS))


@pytest.fixture(scope="session")
def toy_tok():
    from rlcot.tokenizer import train_sentencepiece
    return train_sentencepiece(CORPUS, 384, hard_vocab_limit=False,
                               user_defined_symbols=("<think>", "</think>", "<answer>", "</answer>"))


@pytest.fixture(scope="session")
def tiny_model(toy_tok):
    from rlcot.models.load import load_model
    return load_model("preset:tiny", seed=0, vocab_size=toy_tok.vocab_size)


@pytest.fixture(scope="session")
def shared_source_dir() -> Path:
    env = os.environ.get("RLCOT_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    if not (path / "aime24" / "test.jsonl").exists():
        pytest.skip(f"benchmark copies not found at {path}")
    return path
