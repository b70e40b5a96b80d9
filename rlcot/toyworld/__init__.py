"""A synthetic, verifiable reasoning world (column arithmetic with written steps) on which the
R1-Zero / R1 / Kimi / preference studies run on CPU. Its tiny base model is the first stage of
those studies: an `sft` stage on the world's corpus (`base_stage()`), cached by content key.

    from rlcot import toyworld
    world = toyworld.WorldConfig()
    config.stages.base = toyworld.base_stage()       # pre-training as a study stage
    train = toyworld.ToyWorldSource(world, "train") # PromptPipeline source (common schema)
    toyworld.is_correct(completion, example["answer"]); toyworld.has_check_step(completion)

Names are imported lazily: checking completions does not import jax.
"""

import importlib

_EXPORTS = {
    "TaskConfig": "tasks", "Problem": "tasks", "problems": "tasks", "split_of": "tasks",
    "StyleRates": "solutions", "Style": "solutions", "write_solution": "solutions",
    "LANGUAGES": "solutions", "TARGET_LANGUAGE": "solutions", "SECOND_LANGUAGE": "solutions",
    "WorldConfig": "corpus", "build_corpus": "corpus", "examples": "corpus", "prompt_text": "corpus",
    "Document": "corpus",
    "extract_answer": "checks", "is_correct": "checks", "strict_format": "checks",
    "has_check_step": "checks", "second_language_share": "checks", "summarize": "checks",
    "word_languages": "checks", "chain_of_thought": "checks", "rates_of": "checks",
    "ToyWorldSource": "dataset", "preference_pairs": "dataset",
    "cached_tokenizer": "tokenizer", "load_tokenizer": "tokenizer",
    "world_tokenizer": "tokenizer", "base_stage": "base",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rlcot.toyworld' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rlcot.toyworld.{_EXPORTS[name]}"), name)
