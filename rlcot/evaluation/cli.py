"""`python -m rlcot.main eval`: the experiment's eval suite on a model of the study, written to
WORKDIR/eval/<stage or 'initial'>/.

Which model: `--stage NAME` (that stage's output, which must be finished), else the study's
last model-producing stage when it has finished, else the initial model (the model source of
the study's first rl stage; a `stage:` source such as the toy world's base model is run first
when it has not been). Settings: the chosen stage's `eval` section when it has one, else the
top-level `config.eval`:

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
    eval.use_checkpoint     evaluate the study's output when there is one (default True;
                            False: always the initial model)

Writes eval.json, eval.md, eval.csv, eval_records/<benchmark>.jsonl and eval_config.json.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlcot.evaluation.config import _plain

log = logging.getLogger(__name__)

def _target(plan: Any, workdir: Path, stage: str | None, use_checkpoint: bool
            ) -> tuple[str, str]:
    """(label, model source) of the model to evaluate."""
    from rlcot import sources
    if stage is not None:
        st = plan[stage]
        if not st.makes_model:
            raise ValueError(f"stage {stage!r} ({st.kind}) produces no model to evaluate")
        if not sources.is_finished(workdir / stage):
            raise FileNotFoundError(f"stage {stage!r} has not finished in {workdir}: run it "
                                    f"first (python -m rlcot.main run ... --stage {stage})")
        return stage, f"stage:{stage}"
    made = [s.name for s in plan.stages if s.makes_model]
    if use_checkpoint and made and sources.is_finished(workdir / made[-1]):
        return made[-1], f"stage:{made[-1]}"
    first = next((s for s in plan.stages if s.kind == "rl"), plan.stages[0])
    return "initial", first.cfg.model.source


def run_eval(config: Any, workdir: str, stage: str | None = None) -> Any:
    """Evaluates a model of the study (see the module docstring) and writes the table and
    per-item records. Returns the EvalResult."""
    import jax

    from rlcot import sources, study, world_setup
    from rlcot.evaluation.results import write_results
    from rlcot.evaluation.runner import evaluate
    from rlcot.workdir import write_json

    # -- config -> typed settings (nothing is computed before they all validate) -------------
    plan = study.plan(config)
    workdir_path = Path(workdir)
    top = plan.stages[0].cfg
    ev = _plain(getattr(plan[stage].cfg, "eval", None) or {}) if stage else {}
    ev = ev or _plain(config.eval) if "eval" in config else ev
    world = getattr(top, "world", None)
    sets, eval_cfg = world_setup.eval_setup(ev, world)
    use_checkpoint = bool(dict(ev).get("use_checkpoint", True))
    label, source = _target(plan, workdir_path, stage, use_checkpoint)
    seed, mesh_cfg = top.seed, top.mesh
    if source.startswith("stage:") and not sources.is_finished(workdir_path / source[6:]):
        log.info("the initial model is stage %r's output: running it first", source[6:])
        study.run(config, workdir_path, only=source[6:])
    out_dir = workdir_path / "eval" / label
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = _plain(config)
    if jax.process_index() == 0:
        write_json(out_dir / "eval_config.json", resolved)

    # -- model ----------------------------------------------------------------------------------
    mesh = mesh_cfg.make()
    t0 = time.perf_counter()
    resolver = sources.Resolver(study_dir=workdir_path.absolute(), world=world)
    first = next((s for s in plan.stages if s.kind == "rl"), plan.stages[0]).cfg.model
    own = source == first.source
    model = resolver.load(source, mesh=mesh, seed=seed,
                          tokenizer=first.tokenizer if own else None,
                          overrides=first.overrides() if own else {
                              k: v for k, v in first.overrides().items()
                              if k in ("dtype", "param_dtype")})
    if model.tokenizer is None:
        raise ValueError(f"model {source!r} has no tokenizer: set config.model.tokenizer")
    load_s = time.perf_counter() - t0
    log.info("loaded %s (%s) in %.1fs", source, label, load_s)

    # -- evaluate and write ---------------------------------------------------------------------
    t0 = time.perf_counter()
    result = evaluate(model, model.tokenizer, sets, eval_cfg, rng=jax.random.key(seed),
                      mesh=mesh)
    eval_s = time.perf_counter() - t0
    extra = world_setup.eval_extras(result)
    if jax.process_index() == 0:
        write_results(result, out_dir, "eval", extra={
            "model": source, "stage": label, "seed": seed, "load_seconds": load_s,
            "eval_seconds": eval_s, "behaviour": extra, "config": resolved})
    print(result.to_markdown(), flush=True)
    return result
