"""The `rl` stage kind: the canonical RL loop (rlcot.loop) on the stage's RunConfig.

An rl stage starts from the study's top-level sections (seed, mesh, model, data, rollout,
rewards, advantage, learner, train, eval, world) and overrides what it declares, so a second
RL stage (e.g. Kimi's length-penalty stage) is only its differences."""

from __future__ import annotations

from typing import Any

from rlcot import run_config

MAKES_MODEL = True


def inherited(top: dict[str, Any]) -> dict[str, Any]:
    return dict(top)


def resolve(values: dict[str, Any]) -> run_config.RunConfig:
    return run_config.resolve(values)


def sources(cfg: run_config.RunConfig) -> dict[str, str | None]:
    from rlcot.rewards.models import plan_sources
    return {"model.source": cfg.model.source, "model.reference": cfg.model.reference,
            **plan_sources(cfg.rewards)}


def run(cfg: run_config.RunConfig, ctx: Any) -> dict[str, Any]:
    from rlcot.loop import run as run_loop
    return run_loop(cfg, ctx.dir, ctx.resolver)


def defaults(**fields: Any) -> Any:
    """An rl stage declares only what differs from the top-level sections."""
    from ml_collections import config_dict
    return config_dict.ConfigDict({"kind": "rl", **fields})
