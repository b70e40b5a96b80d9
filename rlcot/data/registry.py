"""Dataset registry: a short name (e.g. "gsm8k") -> TFDS builder, splits and prompt defaults."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import grain

from rlcot.data import builders_code, builders_gym, builders_math
from rlcot.data.pipeline import PipelineConfig, PromptPipeline
from rlcot.data.templates import BOXED_INSTRUCTION, TemplateConfig, select_shots


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """builder: the TFDS builder name; config: its builder config. instruction: appended to
    the question by every template except r1_zero (whose tags already say where the answer
    goes). fewshot_split: where few-shot examples come from (None: this dataset has none
    besides the split itself)."""

    builder: str
    config: str | None
    splits: tuple[str, ...]
    instruction: str = ""
    fewshot_split: str | None = None

    def __post_init__(self):
        if self.fewshot_split is not None and self.fewshot_split not in self.splits:
            raise ValueError(f"fewshot_split {self.fewshot_split!r} not in {self.splits}")


DATASETS: dict[str, DatasetSpec] = {
    "gsm8k": DatasetSpec("rlcot_gsm8k", None, ("train", "test"), BOXED_INSTRUCTION, "train"),
    "math": DatasetSpec("rlcot_math", "full", ("train", "test"), BOXED_INSTRUCTION, "train"),
    "math500": DatasetSpec("rlcot_math", "math500", ("test",), BOXED_INSTRUCTION),
    "aime24": DatasetSpec("rlcot_aime24", None, ("test",), BOXED_INSTRUCTION),
    "amc23": DatasetSpec("rlcot_amc23", None, ("test",), BOXED_INSTRUCTION),
    # The HumanEval question already says how to answer.
    "humaneval": DatasetSpec("rlcot_humaneval", None, ("test",)),
    # reasoning-gym questions carry their own answer-format instructions.
    **{task: DatasetSpec("rlcot_reasoning_gym", task, ("train", "test"), "", "train")
       for task in builders_gym.DEFAULT_TASKS},
}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name]


_BUILDERS = {c.name: c for c in (
    builders_math.RlcotGsm8k, builders_math.RlcotMath, builders_math.RlcotAime24,
    builders_math.RlcotAmc23, builders_code.RlcotHumaneval, builders_gym.RlcotReasoningGym)}


def fields(name: str) -> tuple[str, ...]:
    """The fields every example of a registered dataset has (no data is read)."""
    from rlcot.data.base import COMMON_FIELDS
    return COMMON_FIELDS + _BUILDERS[get_spec(name).builder].EXTRA_FIELDS


def get_builder(name: str, *, data_dir: str | os.PathLike | None = None,
                source_dir: str | os.PathLike | None = None, download: bool = False):
    """The TFDS builder of a registered dataset (not yet prepared)."""
    spec = get_spec(name)
    return _BUILDERS[spec.builder](data_dir=data_dir, config=spec.config,
                                   source_dir=source_dir, download=download)


def load_source(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
                source_dir: str | os.PathLike | None = None, download: bool = False):
    """A random-access TFDS data source of one split, building the dataset first if needed.

    Building reads raw files under `source_dir` (default: $RLCOT_SHARED_DATA) and touches
    the network only with download=True; a built dataset is reused from `data_dir`
    (default: TFDS's, $TFDS_DATA_DIR or ~/tensorflow_datasets).
    """
    spec = get_spec(name)
    if split not in spec.splits:
        raise ValueError(f"dataset {name!r} has splits {spec.splits}, not {split!r}")
    builder = get_builder(name, data_dir=data_dir, source_dir=source_dir, download=download)
    builder.download_and_prepare()
    return builder.as_data_source(split=split)


def resolve_template(name: str, template: TemplateConfig) -> TemplateConfig:
    """The template with its instruction filled from the dataset's default when None."""
    if template.instruction is not None:
        return template
    instruction = "" if template.name == "r1_zero" else get_spec(name).instruction
    return dataclasses.replace(template, instruction=instruction)


def make_pipeline(name: str, split: str, tokenizer: Any, config: PipelineConfig, *,
                  data_dir: str | os.PathLike | None = None,
                  source_dir: str | os.PathLike | None = None, download: bool = False,
                  shard: grain.sharding.ShardOptions | None = None) -> PromptPipeline:
    """A PromptPipeline over a registered dataset split, e.g. make_pipeline("gsm8k", "test", ...).

    `config.template.instruction=None` takes the dataset's default. Few-shot examples come
    from the dataset's few-shot split (the split itself when it has none, in which case the
    shot rows are left out of the prompts).
    """
    spec = get_spec(name)
    config = dataclasses.replace(config, template=resolve_template(name, config.template))
    kwargs = dict(data_dir=data_dir, source_dir=source_dir, download=download)
    source = load_source(name, split, **kwargs)
    shots, exclude = [], []
    k = config.template.num_shots
    if k:
        shot_split = spec.fewshot_split or split
        shot_source = source if shot_split == split else load_source(name, shot_split, **kwargs)
        rows = select_shots(len(shot_source), k, config.template.fewshot_seed)
        shots = [shot_source[r] for r in rows]
        if shot_split == split:
            exclude = rows
    return PromptPipeline(source, tokenizer, config, shots=shots, exclude_rows=exclude,
                          shard=shard)
