"""`python -m rlcot.main eval`: the experiment's eval suite on its model, written to the workdir.

The experiment's ConfigDict is read here and nowhere else. Keys:

    seed                    int: model init (presets) and sampling randomness
    model.source            'preset:NAME' | 'hf:PATH' | 'gguf:PATH' | 'gguf:smollm2'
    model.tokenizer         optional tokenizer path (overrides the model's own)
    model.dtype / .param_dtype   optional ModelConfig overrides ('float32', 'bfloat16')
    model.<other>           optional further ModelConfig overrides (e.g. vocab_size for presets)
    mesh.data/.fsdp/.tensor optional mesh shape (-1: the rest of the devices)
    eval.datasets           tuple of 'name:split[:limit]' (rlcot.data.registry names)
    eval.subset             'first' (default) or 'random' rows when a limit is given
    eval.subset_seed        seed of the 'random' subset
    eval.template           'r1_zero' | 'chat' | 'qa' | 'raw'
    eval.instruction        text after the question (None: the dataset's default)
    eval.system             chat system message (chat template only)
    eval.shots / .fewshot_seed   few-shot examples from the dataset's few-shot split
    eval.max_prompt_tokens, .max_new_tokens, .greedy, .num_samples, .temperature, .top_p,
    eval.top_k, .pass_ks, .batch_size, .stop_strings, .check_format, .reward_workers,
    eval.data_dir, .source_dir   see rlcot.evaluation.config.EvalConfig
    eval.use_checkpoint     evaluate the workdir's RL checkpoint when there is one (default
                            True; False: always the initial model)

Writes eval.json, eval.md, eval.csv, eval_records/<benchmark>.jsonl and eval_config.json.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlcot.data.templates import TemplateConfig
from rlcot.evaluation.config import EvalConfig, EvalSet, parse_eval_set, split_eval_set

log = logging.getLogger(__name__)

# config.eval keys -> where they go; anything else fails before the model is loaded.
_SET_KEYS = ("datasets", "subset", "subset_seed")
_TEMPLATE_KEYS = {"template": "name", "instruction": "instruction", "system": "system",
                  "shots": "num_shots", "fewshot_seed": "fewshot_seed"}
_CLI_KEYS = ("use_checkpoint",)
_CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(EvalConfig) if f.name != "template")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where the evaluated model comes from (arguments of rlcot.models.load.load_model)."""

    source: str
    tokenizer: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()  # ModelConfig fields, e.g. dtype

    def __post_init__(self):
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"model.source must be a non-empty string, got {self.source!r}")


def _plain(value: Any) -> Any:
    """ConfigDict values as plain Python (lists -> tuples, ConfigDicts -> dicts)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


def parse_model(model: Mapping[str, Any]) -> ModelSource:
    model = dict(_plain(model))
    if "source" not in model:
        raise ValueError(f"config.model needs a 'source'; it has {sorted(model)}")
    source, tokenizer = model.pop("source"), model.pop("tokenizer", None)
    overrides = tuple(sorted((k, v) for k, v in model.items() if v is not None))
    return ModelSource(source, tokenizer, overrides)


def parse_eval_config(ev: Mapping[str, Any], custom_set: Any = None
                      ) -> tuple[tuple[EvalSet, ...], EvalConfig, bool]:
    """config.eval -> (eval sets, EvalConfig, use_checkpoint); unknown keys fail.

    custom_set: optional `(name, split, limit) -> EvalSet | None` for sets that are not in
    the data registry (e.g. the toy world's in-memory splits); None falls back to the registry.
    """
    ev = dict(_plain(ev))
    known = (*_SET_KEYS, *_TEMPLATE_KEYS, *_CLI_KEYS, *_CONFIG_KEYS)
    unknown = sorted(k for k in ev if k not in known)
    if unknown:
        raise ValueError(f"unknown config.eval keys {unknown}; known: {sorted(known)}")
    datasets = ev.get("datasets")
    if isinstance(datasets, str):
        datasets = (datasets,)
    if not datasets:
        raise ValueError("config.eval.datasets is empty: give e.g. ('gsm8k:test:200',)")
    subset = dict(subset=ev.get("subset", "first"), subset_seed=int(ev.get("subset_seed", 0)))
    sets = tuple(_custom(custom_set, d) or parse_eval_set(d, **subset) for d in datasets)
    template = TemplateConfig(**{field: ev[key] for key, field in _TEMPLATE_KEYS.items()
                                 if key in ev and ev[key] is not None})
    kwargs = {k: ev[k] for k in _CONFIG_KEYS if k in ev and ev[k] is not None}
    cfg = EvalConfig(template=template, **kwargs)
    return sets, cfg, bool(ev.get("use_checkpoint", True))


def _custom(custom_set: Any, text: str) -> EvalSet | None:
    return None if custom_set is None else custom_set(*split_eval_set(text))


def restore_checkpoint(workdir: Path, model: Any, mesh: Any) -> tuple[Any, int] | None:
    """Extension point for the RL loop's checkpoints: (model with the policy parameters of the
    latest checkpoint under workdir/checkpoints, its step), or None when there is none.

    The checkpoint's layout belongs to the RL loop; it provides
    `rlcot.loop.restore_policy(workdir, model, mesh) -> (LoadedModel, step)`. Until it does,
    a workdir with checkpoints fails loudly instead of silently evaluating the initial model.
    """
    ckpt_dir = Path(workdir) / "checkpoints"
    if not ckpt_dir.is_dir() or not any(p.name.isdigit() for p in ckpt_dir.iterdir()):
        return None
    try:
        from rlcot.loop import restore_policy
    except ImportError as e:
        raise NotImplementedError(
            f"{ckpt_dir} holds RL checkpoints, but restoring them for evaluation needs "
            f"rlcot.loop.restore_policy ({e}); pass --config.eval.use_checkpoint=False to "
            f"evaluate the initial model") from e
    return restore_policy(workdir, model, mesh)


def run_eval(config: Any, workdir: str) -> Any:
    """Evaluates the experiment's model (or the workdir's latest RL checkpoint) and writes the
    table and per-item records into `workdir`. Returns the EvalResult."""
    import jax

    from rlcot.evaluation.results import write_results
    from rlcot.evaluation.runner import evaluate
    from rlcot.models.load import load_model
    from rlcot.sharding import MeshConfig
    from rlcot.workdir import write_json

    # -- config -> typed settings (nothing is computed before they all validate) -------------
    seed = int(config.seed)
    source = parse_model(config.model)
    sets, eval_cfg, use_checkpoint = parse_eval_config(config.eval)
    mesh_cfg = MeshConfig(**_plain(config.mesh)) if "mesh" in config else None
    workdir_path = Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    resolved = _plain(config)
    if jax.process_index() == 0:
        write_json(workdir_path / "eval_config.json", resolved)

    # -- model ----------------------------------------------------------------------------------
    mesh = mesh_cfg.make() if mesh_cfg is not None else None
    t0 = time.perf_counter()
    model = load_model(source.source, mesh=mesh, tokenizer=source.tokenizer, seed=seed,
                       **dict(source.overrides))
    if model.tokenizer is None:
        raise ValueError(f"model {source.source!r} has no tokenizer: set config.model.tokenizer")
    step = None
    if use_checkpoint:
        restored = restore_checkpoint(workdir_path, model, mesh)
        if restored is not None:
            model, step = restored
    load_s = time.perf_counter() - t0
    log.info("loaded %s%s in %.1fs", source.source,
             "" if step is None else f" (checkpoint step {step})", load_s)

    # -- evaluate and write ---------------------------------------------------------------------
    t0 = time.perf_counter()
    result = evaluate(model, model.tokenizer, sets, eval_cfg, rng=jax.random.key(seed),
                      mesh=mesh)
    eval_s = time.perf_counter() - t0
    if jax.process_index() == 0:
        write_results(result, workdir_path, "eval", extra={
            "model": source.source, "checkpoint_step": step, "seed": seed,
            "load_seconds": load_s, "eval_seconds": eval_s, "config": resolved})
    print(result.to_markdown(), flush=True)
    return result
