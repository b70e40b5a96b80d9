"""Checks of a study that run before any stage loads a model or compiles: settings that cannot
work together fail here, naming the stage, the key and what is allowed.

A stage's own sections are checked when it is resolved (e.g. rlcot.run_config.check_choices:
group estimators with one sample, gae without a value model, a reference without a KL); these
checks need more than the config: the devices (batch rows over the mesh), the model sources
(context length), the datasets' fields (what the rewards read) and the memory an RL stage
needs per device (rlcot.memory: its table is logged, and a stage that cannot fit the device
budget fails with the settings that would make it fit). The study runs them after its plan and
tokenizer checks (rlcot.study.run).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

from rlcot.rewards.registry import reward_needs

log = logging.getLogger(__name__)
# The prompt length the memory check assumes when data.max_prompt_tokens leaves it open (the
# RL loop checks again with its longest kept prompt).
ASSUMED_PROMPT_TOKENS = 256


def dataset_fields(dataset: str, world: Any) -> tuple[str, ...] | None:
    """The fields of a prompt dataset's examples (None: not known without reading it)."""
    from rlcot.world_setup import TOY_DATASETS, data_source
    if dataset in TOY_DATASETS:
        return tuple(data_source(world, dataset, "test", 1)[0])
    from rlcot.data import registry
    if dataset in registry.DATASETS:
        return registry.fields(dataset)
    return None


def model_context(source: str, overrides: Mapping[str, Any], stages: Mapping[str, Any],
                  resolver: Any) -> int | None:
    """The max_position of a model source, where it is cheap to know: presets (with their
    config overrides), earlier stages of the study, finished stage directories and local
    Hugging Face directories. None otherwise."""
    from rlcot.sources import read_model_card, split_source
    kind, rest = split_source(source)
    if kind == "preset":
        from rlcot.models.presets import get_config
        fields = {k: v for k, v in overrides.items() if k != "vocab_size"}
        return get_config(rest, **fields).max_position
    if kind == "stage" and rest in stages:
        model = getattr(stages[rest].cfg, "model", None)
        return None if model is None else model_context(model.source, model.overrides(),
                                                        stages, resolver)
    if kind == "workdir":
        return int(read_model_card(resolver.directory(source))["config"]["max_position"])
    if kind == "hf" and (Path(rest).expanduser() / "config.json").is_file():
        config = json.loads((Path(rest).expanduser() / "config.json").read_text())
        config = config.get("text_config", config)
        return int(config.get("max_position_embeddings", 8192))
    return None


def model_config(source: str, overrides: Mapping[str, Any], stages: Mapping[str, Any],
                 resolver: Any) -> Any:
    """The ModelConfig of a model source where it is known without loading weights: presets
    (with their overrides; the vocabulary stays the preset's unless overridden), earlier stages
    of the study, finished stage directories and local Hugging Face directories. None
    otherwise (GGUF files, hub names)."""
    from rlcot.sources import config_from_dict, read_model_card, split_source
    kind, rest = split_source(source)
    dtypes = {k: v for k, v in overrides.items() if k in ("dtype", "param_dtype")}
    if kind == "preset":
        from rlcot.models.presets import get_config
        return get_config(rest, **overrides)
    if kind == "stage" and rest in stages:
        model = getattr(stages[rest].cfg, "model", None)
        cfg = None if model is None else model_config(model.source, model.overrides(), stages,
                                                      resolver)
        return None if cfg is None else cfg.replace(**dtypes)
    if kind == "workdir":
        return config_from_dict(read_model_card(resolver.directory(source))["config"]).replace(
            **dtypes)
    if kind == "hf" and (Path(rest).expanduser() / "config.json").is_file():
        from rlcot.models.hf import config_from_hf
        return config_from_hf(json.loads((Path(rest).expanduser() / "config.json").read_text()),
                              **overrides)
    if kind == "hf":  # a hub name: the architecture of the preset of that name, if any
        from rlcot.models.presets import PRESETS, get_config
        name = rest.rstrip("/").split("/")[-1].lower()
        for suffix in ("-instruct", "-it", "-pt", "-base"):
            name = name.removesuffix(suffix)
        if name in PRESETS:
            return get_config(name, **overrides)
    return None


def rl_memory_inputs(cfg: Any, model_cfg: Any) -> tuple[Any, Any, str]:
    """(learner, memory.Sizes, note) of a resolved RL stage config. The learner is taken as
    configured: what rlcot.rollout.align_learner may change (the Dr.GRPO normaliser, truncated
    importance sampling's sampler log-probs) hardly moves memory, and aligning here would spend
    its once-only warning before the stage runs."""
    from rlcot import memory
    prompt = cfg.data.max_prompt_tokens
    note = "" if prompt else (f"prompt length assumed {ASSUMED_PROMPT_TOKENS} "
                              f"(data.max_prompt_tokens unset)")
    prompt = min(prompt or ASSUMED_PROMPT_TOKENS,
                 max(1, model_cfg.max_position - cfg.rollout.max_new_tokens))
    return cfg.learner, memory.sizes_from_run(cfg, prompt), note


def check_memory(st: Any, earlier: Mapping[str, Any], resolver: Any,
                 devices: Any = None) -> Any:
    """An RL stage's memory plan per device (rlcot.memory), logged as a table; raises
    ValueError with the components and the knobs that would make it fit when it does not
    fit the device budget (accelerators: their bytes_limit; CPU: $RLCOT_MEMORY_BUDGET_GIB
    only). None when the model's architecture is not known before loading it."""
    from rlcot import memory
    cfg = st.cfg
    model_cfg = model_config(cfg.model.source, cfg.model.overrides(), earlier, resolver)
    if model_cfg is None:
        return None
    learner, sizes, note = rl_memory_inputs(cfg, model_cfg)
    mesh = cfg.mesh.make(devices)
    budget, source = memory.device_budget(list(mesh.devices.flat))
    p = memory.check(model_cfg, learner, sizes, mesh, budget_bytes=budget,
                     budget_source=source, platform=mesh.devices.flat[0].platform,
                     **memory.rollout_options(cfg.rollout))
    log.info("stage %s: %s%s", st.name, p.table(), f"\n  ({note})" if note else "")
    return p


def check_plan(plan: Any, resolver: Any) -> None:
    """Every stage of a study plan (rlcot.study.Plan) against the devices, its model source's
    context and its dataset's fields; raises ValueError naming the stage and the keys."""
    earlier: dict[str, Any] = {}
    for st in plan.stages:
        try:
            _check_stage(st, earlier, resolver)
        except ValueError as e:
            raise ValueError(f"stage {st.name!r} ({st.kind}): {e}") from e
        earlier[st.name] = st


def _check_stage(st: Any, earlier: Mapping[str, Any], resolver: Any) -> None:
    cfg = st.cfg
    data, rollout, rewards = (getattr(cfg, k, None) for k in ("data", "rollout", "rewards"))
    if st.kind == "rl":
        from rlcot.rl.logprobs import row_shards
        from rlcot.sharding import TRAIN_RULES
        rows, shards = data.batch_prompts * rollout.num_samples, row_shards(cfg.mesh.make(),
                                                                            TRAIN_RULES)
        learner = cfg.learner
        if rows % (learner.minibatches * learner.micro_batches * shards):
            raise ValueError(
                f"data.batch_prompts x rollout.num_samples = {data.batch_prompts} x "
                f"{rollout.num_samples} = {rows} rows do not split into learner.minibatches "
                f"({learner.minibatches}) x learner.micro_batches ({learner.micro_batches}) x "
                f"{shards} batch shards of the mesh (mesh data x fsdp over the devices): use "
                f"a multiple of {learner.minibatches * learner.micro_batches * shards}")
        check_memory(st, earlier, resolver)
    if rollout is not None and data is not None:
        context = model_context(cfg.model.source, cfg.model.overrides(), earlier, resolver)
        prompt = data.max_prompt_tokens or 0
        if context is not None and prompt + rollout.max_new_tokens > context:
            limit = (f"data.max_prompt_tokens ({prompt}) + " if prompt else "")
            raise ValueError(
                f"{limit}rollout.max_new_tokens ({rollout.max_new_tokens}) is beyond the "
                f"context of model {cfg.model.source!r} ({context} positions): lower them so "
                f"that they sum to at most {context}")
    if rewards and data is not None:
        fields = dataset_fields(data.dataset, cfg.world)
        for label, reward, alts in ([] if fields is None else reward_needs(rewards)):
            if not any(set(a) <= set(fields) for a in alts):
                want = " or ".join("+".join(repr(f) for f in a) for a in alts)
                raise ValueError(
                    f"reward term {label!r} ({reward}) reads the field {want} of each example, "
                    f"which data.dataset {data.dataset!r} does not have (its fields: "
                    f"{list(fields)}); use a reward for this dataset, or a dataset with it")


def check_run_memory(rc: Any, model_cfg: Any, mesh: Any, prompt_len: int) -> Any:
    """The RL loop's own memory check, once the model is loaded (its exact architecture, e.g.
    a GGUF or hub model the study's preflight could not size) and the prompts are known (the
    longest kept one): logs the planner's table; raises ValueError when the run cannot fit
    the device budget, with the knobs that would make it fit. rc: the loop's run config
    (after rlcot.rollout.align_learner)."""
    from rlcot import memory
    learner = rc.learner
    sizes = memory.sizes_from_run(rc, max(1, int(prompt_len)))
    budget, source = memory.device_budget(list(mesh.devices.flat))
    p = memory.check(model_cfg, learner, sizes, mesh, budget_bytes=budget,
                     budget_source=source, platform=mesh.devices.flat[0].platform,
                     **memory.rollout_options(rc.rollout))
    log.info("%s", p.table())
    return p
