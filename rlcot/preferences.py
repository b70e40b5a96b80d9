"""Preference data shared by the stages that learn from pairs (dpo, reward_model): reading
(prompt, chosen, rejected) rows with their bad rows skipped and counted, and the Bradley-Terry
labelling of scored sample pairs (generate stage, select='labelled_pairs').

Datasets: 'stage:NAME' (the data.jsonl an earlier generate stage wrote) or 'jsonl:PATH'.
A row is bad when it is not a JSON object, lacks a text field ('missing'), has an empty or
blank chosen or rejected response ('empty'), or is a tie: identical chosen and rejected texts
(after stripping), or a row marked `"tie": true` or `"label": "tie"` ('tie'). Bad rows are
skipped and counted (on_bad_rows='skip') or stop the stage at the first one ('error').
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

FIELDS = ("prompt", "chosen", "rejected")
BAD_KINDS = ("invalid", "missing", "empty", "tie")


def dataset_path(dataset: str, study_dir: Path | None) -> Path:
    if dataset.startswith("jsonl:"):
        return Path(dataset[len("jsonl:"):]).expanduser()
    if not dataset.startswith("stage:"):
        raise ValueError(f"a preference dataset is 'stage:NAME' or 'jsonl:PATH', got {dataset!r}")
    if study_dir is None:
        raise ValueError(f"dataset {dataset!r} needs a study workdir")
    return Path(study_dir) / dataset[len("stage:"):] / "data.jsonl"


def check_dataset(dataset: str) -> None:
    """A preference dataset names 'stage:NAME' or 'jsonl:PATH' (checked when a config is
    resolved, before anything runs)."""
    if dataset in ("stage:", "jsonl:") or not dataset.startswith(("stage:", "jsonl:")):
        raise ValueError(f"data.dataset must be 'stage:NAME' (a generate stage with "
                         f"select='labelled_pairs' or 'pairs') or 'jsonl:PATH', got {dataset!r}")


def check_on_bad_rows(value: str) -> None:
    if value not in ("skip", "error"):
        raise ValueError(f"data.on_bad_rows must be 'skip' or 'error', got {value!r}")


def _why_bad(row: Any) -> tuple[str, str] | None:
    if not isinstance(row, dict):
        return "invalid", f"not a JSON object: {str(row)[:80]!r}"
    missing = [k for k in FIELDS if not isinstance(row.get(k), str)]
    if missing:
        return "missing", f"text fields {missing} missing (has {sorted(row)})"
    if not row["chosen"].strip() or not row["rejected"].strip():
        return "empty", "an empty chosen or rejected response"
    if (row["chosen"].strip() == row["rejected"].strip() or row.get("tie") is True
            or row.get("label") == "tie"):
        return "tie", "a tie (identical responses, or marked as a tie)"
    return None


def load_pairs(dataset: str, study_dir: Path | None, *, limit: int | None = None,
               on_bad_rows: str = "skip") -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(usable rows in file order, counts of skipped rows by kind: BAD_KINDS). `limit`: the
    first rows of the file only (bad ones included)."""
    check_on_bad_rows(on_bad_rows)
    path = dataset_path(dataset, study_dir)
    if not path.is_file():
        raise FileNotFoundError(f"preference dataset {dataset!r}: {path} does not exist")
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines()) if line.strip()]
    skipped = dict.fromkeys(BAD_KINDS, 0)
    rows = []
    for i, line in lines[:limit]:
        try:
            row = json.loads(line)
        except ValueError:
            row = line
        bad = _why_bad(row)
        if bad is None:
            rows.append(row)
            continue
        if on_bad_rows == "error":
            raise ValueError(f"{path}:{i + 1}: {bad[1]} (data.on_bad_rows='error'; 'skip' skips "
                             f"and counts such rows)")
        skipped[bad[0]] += 1
    return rows, skipped


def bradley_terry_labels(scores_a: np.ndarray, scores_b: np.ndarray, temperature: float,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(a_preferred, tie) per pair: a labeller whose preference follows the scores through
    the Bradley-Terry model, P(a preferred) = sigmoid((s_a - s_b) / temperature); temperature 0
    is the noiseless labeller (the higher score wins). Equal scores are ties (no label: a
    coin flip would only add noise). One uniform draw per pair, whatever the outcome."""
    if not temperature >= 0 or not math.isfinite(temperature):
        raise ValueError(f"label temperature must be a finite number >= 0, got {temperature}")
    a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    u = rng.random(a.shape)
    tie = a == b
    if temperature == 0:
        return a > b, tie
    p = 1.0 / (1.0 + np.exp(-(a - b) / temperature))
    return u < p, tie
