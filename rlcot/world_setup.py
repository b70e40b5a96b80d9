"""What the loop trains on: the policy, the training prompts and the eval sets, for real
benchmarks (rlcot.data) and for the synthetic toy world (rlcot.toyworld) alike."""

from __future__ import annotations

from typing import Any

import jax

from rlcot.run_config import RunConfig, build

TOY = "toyworld"


def world_configs(rc: RunConfig) -> tuple[Any, Any]:
    """(WorldConfig, PretrainConfig) from config.world = {'world': {...}, 'pretrain': {...}}."""
    from rlcot.toyworld.corpus import WorldConfig
    from rlcot.toyworld.pretrain import PretrainConfig
    unknown = sorted(set(rc.world) - {"world", "pretrain"})
    if unknown:
        raise KeyError(f"config.world: unknown key(s) {unknown}; known: ['pretrain', 'world']")
    return (build(WorldConfig, rc.world.get("world"), "world.world"),
            build(PretrainConfig, rc.world.get("pretrain"), "world.pretrain"))


def load_policy(rc: RunConfig, mesh: jax.sharding.Mesh) -> Any:
    """The initial policy as a LoadedModel, its parameters in the training shardings."""
    from rlcot.models.load import LoadedModel, load_model
    if rc.model.source != TOY:
        return load_model(rc.model.source, mesh=mesh, tokenizer=rc.model.tokenizer,
                          seed=rc.seed, **rc.model.overrides())
    from rlcot.sharding import TRAIN_RULES, shard_state
    from rlcot.toyworld.pretrain import load_base_model
    world, pretrain = world_configs(rc)
    base = load_base_model(world, pretrain)
    cfg = base.cfg.replace(**rc.model.overrides())
    params = base.params
    if rc.model.param_dtype:
        params = jax.tree.map(lambda x: x.astype(cfg.weight_dtype), params)
    return LoadedModel(cfg, base.graphdef, shard_state(params, mesh, TRAIN_RULES),
                       base.tokenizer)


def _source(rc: RunConfig, dataset: str, split: str, size: int | None = None) -> Any:
    if dataset == TOY:
        from rlcot.toyworld.dataset import ToyWorldSource
        return ToyWorldSource(world_configs(rc)[0], split, size)
    from rlcot.data.registry import load_source
    return load_source(dataset, split)


def train_pipeline(rc: RunConfig, tokenizer: Any) -> Any:
    from rlcot.data.pipeline import PipelineConfig, PromptPipeline
    d = rc.data
    cfg = PipelineConfig(batch_size=d.batch_prompts, template=d.template,
                         max_prompt_tokens=d.max_prompt_tokens, shuffle=d.shuffle, seed=rc.seed)
    return PromptPipeline(_source(rc, d.dataset, d.split), tokenizer, cfg)


def eval_setup(rc: RunConfig) -> tuple[tuple[Any, ...], Any]:
    """(eval sets, EvalConfig) from config.eval; 'toyworld:SPLIT:N' names the world's split."""
    if not rc.eval:
        return (), None
    from rlcot.evaluation.cli import parse_eval_config
    from rlcot.evaluation.config import EvalSet

    def toy_set(name: str, split: str, limit: int | None) -> EvalSet | None:
        if name != TOY:
            return None
        return EvalSet(TOY, split, None, examples=tuple(_source(rc, TOY, split, limit)))

    sets, cfg, _ = parse_eval_config(rc.eval, custom_set=toy_set)
    return sets, cfg


def eval_extras(rc: RunConfig, result: Any) -> dict[str, float]:
    """Toy-world behaviours of the greedy completions: self-checking steps and the share of
    chain-of-thought words in the second language."""
    if not any(b.label.startswith(TOY) for b in result.benchmarks.values()):
        return {}
    from rlcot.toyworld.checks import has_check_step, second_language_share
    out = {}
    for label, b in result.benchmarks.items():
        greedy = [r for r in b.records if r.get("pass") == "greedy"]
        if not label.startswith(TOY) or not greedy:
            continue
        texts = [r["completion"] for r in greedy]
        out[f"eval/{label}/greedy/check_rate"] = sum(map(has_check_step, texts)) / len(texts)
        out[f"eval/{label}/greedy/second_language"] = (
            sum(second_language_share(t) for t in texts) / len(texts))
    return out
