"""An eval set's prompts: rows chosen (limit/subset), rendered with the data pipeline's templates."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from rlcot.data.base import decode_example
from rlcot.data.pipeline import PipelineConfig, PromptPipeline
from rlcot.data.templates import TemplateConfig, select_shots
from rlcot.evaluation.config import EvalConfig, EvalSet


@dataclasses.dataclass(frozen=True)
class EvalPrompts:
    """The prompts of one eval set, in source-row order.

    rows: each prompt's row in the split. ids: unpadded int32 token arrays. num_selected:
    rows chosen by limit/subset; num_dropped of them were longer than max_prompt_tokens.
    """

    label: str
    rows: np.ndarray
    texts: list[str]
    ids: list[np.ndarray]
    examples: list[dict[str, Any]]
    num_rows: int
    num_selected: int
    num_dropped: int

    def __len__(self) -> int:
        return len(self.rows)


class _Rows(Sequence):
    """A random-access view of chosen rows of a source."""

    def __init__(self, source: Sequence[Any], rows: Sequence[int]):
        self._source, self._rows = source, list(rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):
        return self._source[self._rows[i]]

    def __getitems__(self, idx: Sequence[int]) -> list[Any]:
        rows = [self._rows[i] for i in idx]
        getitems = getattr(self._source, "__getitems__", None)
        return list(getitems(rows)) if getitems else [self._source[r] for r in rows]


def choose_rows(candidates: Sequence[int], limit: int | None, subset: str, seed: int) -> list[int]:
    """`limit` of the candidate rows: the first ones, or a seeded sample kept in source order."""
    candidates = list(candidates)
    if limit is None or limit >= len(candidates):
        return candidates
    if subset == "first":
        return candidates[:limit]
    picked = np.random.default_rng(seed).choice(len(candidates), size=limit, replace=False)
    return [candidates[i] for i in sorted(picked)]


def _resolve_template(eval_set: EvalSet, template: TemplateConfig) -> TemplateConfig:
    if template.instruction is not None:
        return template
    if eval_set.examples is not None:  # ad-hoc sets have no registered default instruction
        return dataclasses.replace(template, instruction="")
    from rlcot.data.registry import resolve_template
    return resolve_template(eval_set.name, template)


def _sources(eval_set: EvalSet, cfg: EvalConfig) -> tuple[Sequence[Any], Sequence[Any]]:
    """(the split's source, the few-shot source) — the same object when shots come from it."""
    if eval_set.examples is not None:
        return eval_set.examples, eval_set.examples
    from rlcot.data.registry import get_spec, load_source
    kwargs = dict(data_dir=cfg.data_dir, source_dir=cfg.source_dir)
    source = load_source(eval_set.name, eval_set.split, **kwargs)
    shot_split = get_spec(eval_set.name).fewshot_split or eval_set.split
    if cfg.template.num_shots and shot_split != eval_set.split:
        return source, load_source(eval_set.name, shot_split, **kwargs)
    return source, source


def build_prompts(eval_set: EvalSet, tokenizer: Any, cfg: EvalConfig) -> EvalPrompts:
    """Renders and tokenises the chosen rows of `eval_set` (see EvalSet for the row choice)."""
    template = _resolve_template(eval_set, cfg.template)
    source, shot_source = _sources(eval_set, cfg)
    shot_rows = select_shots(len(shot_source), template.num_shots, template.fewshot_seed)
    shots = [shot_source[r] for r in shot_rows]
    excluded = set(shot_rows) if shot_source is source else set()
    candidates = [r for r in range(len(source)) if r not in excluded]
    chosen = choose_rows(candidates, eval_set.limit, eval_set.subset, eval_set.subset_seed)
    if not chosen:
        raise ValueError(f"eval set {eval_set.label}: no rows left ({len(source)} rows, "
                         f"{len(excluded)} used as few-shot examples)")
    # The pipeline renders, tokenises and length-filters; every host sees every prompt.
    pipeline = PromptPipeline(
        _Rows(source, chosen), tokenizer,
        PipelineConfig(batch_size=1, template=template, max_prompt_tokens=cfg.max_prompt_tokens,
                       shuffle=False, num_epochs=1, drop_remainder=False, prefetch_batches=0),
        shots=shots, shard=grain.sharding.NoSharding())
    kept = [chosen[int(i)] for i in pipeline.rows]
    return EvalPrompts(
        label=eval_set.label, rows=np.asarray(kept, np.int64), texts=list(pipeline.prompt_texts),
        ids=list(pipeline.prompt_ids), examples=[decode_example(source[r]) for r in kept],
        num_rows=len(source), num_selected=len(chosen), num_dropped=pipeline.num_dropped)


def prompt_id(example: Mapping[str, Any], row: int) -> str:
    """A prompt's id for records: the example's own id when it has one, else its row."""
    ident = example.get("id")
    return str(ident) if ident not in (None, "") else str(row)
