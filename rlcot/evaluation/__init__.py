"""Evaluation: greedy/sampled pass@1, pass@k, maj@k, avg@k, length and format rate per benchmark.

    from rlcot.evaluation import EvalConfig, parse_eval_set, evaluate
    result = evaluate(model, tok, [parse_eval_set("gsm8k:test:200")], EvalConfig(), rng=0)
    print(result.to_markdown())

Importing this package is cheap; the names below load their module on first use.
"""

import importlib

_LAZY = {
    "EvalConfig": "config", "EvalSet": "config", "parse_eval_set": "config",
    "default_scorer": "config",
    "EvalPrompts": "prompts", "build_prompts": "prompts",
    "BenchmarkResult": "results", "EvalResult": "results", "write_results": "results",
    "Generate": "runner", "evaluate": "runner", "make_generate": "runner",
    "run_eval": "cli", "parse_eval_config": "cli",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"rlcot.evaluation.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'rlcot.evaluation' has no attribute {name!r}")
