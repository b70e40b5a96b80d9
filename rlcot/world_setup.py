"""What the loop trains on: the policy, the training prompts and the eval sets, for real
benchmarks (rlcot.data) and for the synthetic toy world (rlcot.toyworld) alike."""

from __future__ import annotations

from typing import Any

import jax

from rlcot.run_config import RunConfig

TOY = "toyworld"
# Dataset names of the toy world -> what their "solution" field holds (rlcot.toyworld.dataset):
# 'toyworld_checked' is the R1 study's cold-start data, 'toyworld_long' the Kimi study's
# long-CoT data (checks repeated).
TOY_DATASETS = {TOY: "reference", "toyworld_checked": "checked", "toyworld_long": "long"}


def _source(rc: RunConfig, dataset: str, split: str, size: int | None = None) -> Any:
    return data_source(rc.world, dataset, split, size)


def data_source(world: Any, dataset: str, split: str, size: int | None = None) -> Any:
    """Examples of a registry dataset, or of the toy world's split (`dataset` 'toyworld',
    'toyworld_checked': the same problems with single-language checked solutions, or
    'toyworld_long': with each check repeated 1-3 times)."""
    if dataset in TOY_DATASETS:
        from rlcot.toyworld.dataset import ToyWorldSource
        return ToyWorldSource(world, split, size, solution=TOY_DATASETS[dataset])
    from rlcot.data.registry import load_source
    return load_source(dataset, split)


def train_pipeline(rc: RunConfig, tokenizer: Any) -> Any:
    """This process's prompts: its block of data.batch_prompts / (number of processes) of
    each global batch (rlcot.data.pipeline; the loop checks the division first)."""
    from rlcot.data.pipeline import PipelineConfig, PromptPipeline
    from rlcot.rewards.registry import required_fields
    d = rc.data
    cfg = PipelineConfig(batch_size=d.batch_prompts // jax.process_count(), template=d.template,
                         max_prompt_tokens=d.max_prompt_tokens, shuffle=d.shuffle, seed=rc.seed,
                         on_bad_rows=d.on_bad_rows, required_fields=required_fields(rc.rewards))
    return PromptPipeline(_source(rc, d.dataset, d.split), tokenizer, cfg,
                          label=f"{d.dataset}/{d.split}")


def eval_setup(ev: Any, world: Any) -> tuple[tuple[Any, ...], Any]:
    """(eval sets, EvalConfig) from a config.eval mapping; 'toyworld:SPLIT:N' names the
    world's split."""
    if not ev:
        return (), None
    from rlcot.evaluation.config import EvalSet, parse_eval_config

    def toy_set(name: str, split: str, limit: int | None) -> EvalSet | None:
        if name != TOY:
            return None
        return EvalSet(TOY, split, None, examples=tuple(data_source(world, TOY, split, limit)))

    sets, cfg, _ = parse_eval_config(ev, custom_set=toy_set)
    return sets, cfg


def eval_extras(result: Any) -> dict[str, float]:
    """Toy-world behaviours of the completions of each pass (greedy, sampled): check_rate, the
    share with a self-checking step; second_language, the mean share of chain-of-thought words
    in the second language; mixed_rate, the share with any second-language word. The sampled
    pass sees what greedy decoding hides (a behaviour below 50% at every step)."""
    if not any(b.label.startswith(TOY) for b in result.benchmarks.values()):
        return {}
    from rlcot.toyworld.checks import has_check_step, second_language_share
    out = {}
    for label, b in result.benchmarks.items():
        if not label.startswith(TOY):
            continue
        for kind in ("greedy", "sampled"):
            texts = [r["completion"] for r in b.records if r.get("pass") == kind]
            if not texts:
                continue
            shares = [second_language_share(t) for t in texts]
            out[f"eval/{label}/{kind}/check_rate"] = sum(map(has_check_step, texts)) / len(texts)
            out[f"eval/{label}/{kind}/second_language"] = sum(shares) / len(texts)
            out[f"eval/{label}/{kind}/mixed_rate"] = sum(v > 0 for v in shares) / len(texts)
    return out


def evaluate_at(step: int, generate: Any, tokenizer: Any, eval_sets: Any, eval_cfg: Any,
                seed: int, out_dir: Any) -> dict[str, float]:
    """One evaluation of a policy (through its sampler's generate) at `step`: flat metrics
    'eval/…' plus the toy world's behaviours; the table goes to out_dir/eval/stepNNNNNN.md
    (out_dir None: no file, e.g. on processes other than 0 of a multi-process run).
    Keys depend only on (seed, step), so a resumed run evaluates the same samples."""
    from pathlib import Path

    from rlcot.evaluation import evaluate
    result = evaluate(None, tokenizer, eval_sets, eval_cfg, generate=generate,
                      rng=jax.random.fold_in(jax.random.key(seed + 1), step), progress=False)
    if out_dir is not None:
        (Path(out_dir) / "eval").mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "eval" / f"step{step:06d}.md").write_text(result.to_markdown())
    return {**result.flat_metrics(), **eval_extras(result)}
