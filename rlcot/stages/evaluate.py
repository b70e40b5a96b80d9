"""The `eval` stage kind: the study's evaluation suite on a model (by default the previous
stage's output), with the table and per-item records in the stage's directory."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping

from rlcot import run_config
from rlcot.sharding import MeshConfig
from rlcot.toyworld.corpus import WorldConfig

MAKES_MODEL = False


@dataclasses.dataclass(frozen=True)
class EvalStageConfig:
    model: run_config.ModelSection
    eval: Mapping[str, Any]
    seed: int = 0
    mesh: MeshConfig = MeshConfig()
    world: WorldConfig = WorldConfig()

    def __post_init__(self):
        if not self.eval:
            raise ValueError("an eval stage needs eval settings (eval.datasets, ...)")


def inherited(top: dict[str, Any]) -> dict[str, Any]:
    return {k: top[k] for k in ("seed", "mesh", "world", "model", "eval") if k in top}


def resolve(values: dict[str, Any]) -> EvalStageConfig:
    cfg = run_config.build(EvalStageConfig, values, "stage")
    cfg.model.check()
    from rlcot import world_setup
    world_setup.eval_setup(cfg.eval, cfg.world)  # validates the eval settings
    return cfg


def sources(cfg: EvalStageConfig) -> dict[str, str | None]:
    return {"model.source": cfg.model.source}


def defaults(**fields: Any) -> Any:
    from ml_collections import config_dict
    return config_dict.ConfigDict({"kind": "eval", **fields})


def run(cfg: EvalStageConfig, ctx: Any) -> dict[str, Any]:
    import jax

    from rlcot import world_setup
    from rlcot.evaluation.results import write_results
    from rlcot.evaluation.runner import evaluate
    from rlcot.workdir import write_json
    write_json(ctx.dir / "config.json", dataclasses.asdict(cfg))
    mesh = cfg.mesh.make()
    t0 = time.perf_counter()
    model = ctx.resolver.load_policy(cfg.model, mesh=mesh, seed=cfg.seed)
    sets, eval_cfg = world_setup.eval_setup(cfg.eval, cfg.world)
    result = evaluate(model, model.tokenizer, sets, eval_cfg, rng=jax.random.key(cfg.seed),
                      mesh=mesh)
    metrics = {**result.flat_metrics(), **world_setup.eval_extras(result)}
    if jax.process_index() == 0:
        write_results(result, ctx.dir, "eval", extra={"model": cfg.model.source})
    return {"seed": cfg.seed, "model": cfg.model.source,
            "eval_after": {k[len("eval/"):]: v for k, v in metrics.items()},
            "wall_time_s": round(time.perf_counter() - t0, 2)}
