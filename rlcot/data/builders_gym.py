"""TFDS builder for procedural reasoning-gym tasks: one config per task, fixed seeds and sizes."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from rlcot.data.base import RlcotBuilder


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"reasoning-gym metadata value {value!r} ({type(value).__name__}) "
                    "is not JSON-serialisable")


def rg_entry(example: Mapping[str, str]) -> dict[str, Any]:
    """The reasoning-gym entry behind an rlcot example, for the task's own scorer:

        reasoning_gym.get_score_answer_fn(ex["rg_task"])(model_answer, rg_entry(ex))
    """
    answer = example["answer"]
    return {"question": example["question"], "answer": answer if answer else None,
            "metadata": json.loads(example["metadata_json"])}


@dataclasses.dataclass(eq=False, kw_only=True)
class ReasoningGymConfig(tfds.core.BuilderConfig):
    """One reasoning-gym task at fixed seeds and sizes.

    reasoning-gym draws item i from `Random(seed + i)`, so the splits use the disjoint seed
    ranges [train_seed, train_seed + train_size) and [test_seed, test_seed + test_size).
    Train items whose question also appears in test are dropped as well (small tasks repeat
    questions), so test has exactly `test_size` rows and train at most `train_size`.
    """

    task: str = ""
    train_size: int = 10_000
    test_size: int = 500
    train_seed: int = 0
    test_seed: int = 1_000_000_000
    task_kwargs: tuple[tuple[str, Any], ...] = ()  # extra reasoning-gym options, hashable

    def __post_init__(self):
        if not self.task:
            raise ValueError(f"ReasoningGymConfig {self.name!r}: task must be given")
        if self.train_size < 0 or self.test_size < 0:
            raise ValueError(f"ReasoningGymConfig {self.name!r}: sizes must be >= 0, got "
                             f"train_size={self.train_size} test_size={self.test_size}")
        train = range(self.train_seed, self.train_seed + self.train_size)
        test = range(self.test_seed, self.test_seed + self.test_size)
        if train and test and max(train.start, test.start) < min(train.stop, test.stop):
            raise ValueError(
                f"ReasoningGymConfig {self.name!r}: item seeds overlap (item i uses seed + i): "
                f"train [{train.start}, {train.stop}) and test [{test.start}, {test.stop})")


# Countdown generation is slow (~20 ms per item on one core), hence its smaller train size.
DEFAULT_TASKS = {
    "countdown": 4_000,
    "basic_arithmetic": 10_000,
    "chain_sum": 10_000,
    "products": 10_000,
    "leg_counting": 10_000,
    "letter_counting": 10_000,
    "number_sorting": 10_000,
    "spell_backward": 10_000,
}


class RlcotReasoningGym(RlcotBuilder):
    """reasoning-gym tasks; `metadata_json` keeps the entry's metadata for its scorer.

    Build a custom variant by passing `config=ReasoningGymConfig(name=..., task=..., ...)`.
    The data depend on the installed reasoning-gym version (recorded in the description).
    """

    name = "rlcot_reasoning_gym"
    EXTRA_FIELDS = ("rg_task", "metadata_json")
    BUILDER_CONFIGS = [ReasoningGymConfig(name=task, task=task, train_size=size,
                                          description=f"reasoning-gym '{task}'.")
                       for task, size in DEFAULT_TASKS.items()]
    DEFAULT_CONFIG_NAME = "countdown"
    HOMEPAGE = "https://github.com/open-thought/reasoning-gym"

    @property
    def DESCRIPTION(self) -> str:  # pylint: disable=invalid-name
        return (f"reasoning-gym {importlib.metadata.version('reasoning_gym')} task "
                f"'{self.builder_config.task}'.")

    def _split_generators(self, dl_manager):
        del dl_manager  # Generated, nothing to read.
        cfg = self.builder_config
        test = self._generate(cfg.test_seed, cfg.test_size, "test")
        seen = {r["question"] for r in test}
        train = [r for r in self._generate(cfg.train_seed, cfg.train_size, "train")
                 if r["question"] not in seen]
        if cfg.train_size and not train:
            raise ValueError(f"{cfg.name}: all {cfg.train_size} train items also occur in test")
        # TFDS cannot write an empty split: a size of 0 leaves the split out.
        splits = {"train": train, "test": test}
        return {k: self._generate_examples(v) for k, v in splits.items() if v}

    def _generate(self, seed: int, size: int, split: str) -> list[dict[str, str]]:
        cfg = self.builder_config
        if size == 0:
            return []
        import reasoning_gym  # pylint: disable=g-import-not-at-top
        ds = reasoning_gym.create_dataset(cfg.task, seed=seed, size=size, **dict(cfg.task_kwargs))
        rows = []
        for i in range(size):
            entry = ds[i]
            answer = entry.get("answer")
            rows.append({
                "id": f"{cfg.name}/{split}/{i}", "question": entry["question"],
                "answer": "" if answer is None else str(answer), "solution": "",
                "task": "reasoning_gym", "rg_task": cfg.task,
                "metadata_json": json.dumps(entry.get("metadata", {}), sort_keys=True,
                                            default=_json_default),
            })
        return rows
