"""Sampling fixtures (shared by the test modules here; each module compiles its own loops)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from sampling_helpers import PROMPTS, peaked_model  # noqa: E402

from rlcot.sampling import left_pad  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    return peaked_model("tiny")


@pytest.fixture(scope="session")
def prompts():
    return left_pad(PROMPTS, pad_id=0)
