"""Stage kinds of a study, by name. Each kind is a module with:

    MAKES_MODEL            whether the stage ends with a policy later stages can load
    inherited(top)         the top-level config values the stage starts from
    resolve(values)        its frozen, validated config (fails on unknown keys and bad values)
    sources(cfg)           {field: source} of the model / data it reads (checked against the
                           study's stage order before anything runs)
    run(cfg, ctx)          does the work in ctx.dir (resuming when interrupted) and returns
                           its summary
    defaults(**fields)     a ConfigDict with every field at its default, for experiment files
"""

from __future__ import annotations

import importlib
from types import ModuleType

KINDS = {
    "sft": "rlcot.stages.sft",
    "rl": "rlcot.stages.rl",
    "generate": "rlcot.stages.generate",
    "eval": "rlcot.stages.evaluate",
    "dpo": "rlcot.stages.dpo",
    "merge": "rlcot.stages.merge",
    "reward_model": "rlcot.stages.reward_model",
    "compare": "rlcot.stages.compare",
}


def kind_module(kind: str) -> ModuleType:
    if kind not in KINDS:
        raise ValueError(f"unknown stage kind {kind!r}; known kinds: {sorted(KINDS)}")
    return importlib.import_module(KINDS[kind])


def defaults(kind: str, **fields) -> "ConfigDict":  # noqa: F821
    """A stage's ConfigDict: `kind` plus every field of the kind at its default, then `fields`
    (nested mappings merge into the defaults)."""
    return kind_module(kind).defaults(**fields)
