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

import logging
import time
from pathlib import Path
from typing import Any

from rlcot.evaluation.config import _plain

log = logging.getLogger(__name__)

def _choose(config: Any, workdir: Path, stage: str | None) -> dict[str, Any]:
    """What to evaluate and how: label, model section, eval mapping, seed, mesh, world."""
    from rlcot import run_config, sources, study
    from rlcot.sharding import MeshConfig
    from rlcot.toyworld.corpus import WorldConfig
    values = run_config._plain(config)
    top_eval = dict(values.get("eval") or {})
    seed = int(values.get("seed", 0))
    mesh = run_config.build(MeshConfig, values.get("mesh"), "mesh")
    world = run_config.build(WorldConfig, values.get("world"), "world")
    if not values.get("stages"):  # a single-model experiment (e.g. evaluation only)
        if stage is not None:
            raise ValueError(f"--stage {stage!r}: this experiment declares no stages")
        model = run_config.build(run_config.ModelSection, values.get("model"), "model").check()
        use_ckpt = bool(top_eval.get("use_checkpoint", True))
        if use_ckpt and sources.is_finished(workdir / study.IMPLICIT_STAGE):
            model = run_config.ModelSection(f"stage:{study.IMPLICIT_STAGE}")
            return dict(label=study.IMPLICIT_STAGE, model=model, eval=top_eval, seed=seed,
                        mesh=mesh, world=world)
        return dict(label="initial", model=model, eval=top_eval, seed=seed, mesh=mesh,
                    world=world)
    plan = study.plan(config)
    if stage is not None:
        st = plan[stage]
        if not st.makes_model:
            raise ValueError(f"stage {stage!r} ({st.kind}) produces no model to evaluate")
        if not sources.is_finished(workdir / stage):
            raise FileNotFoundError(f"stage {stage!r} has not finished in {workdir}: run it "
                                    f"first (python -m rlcot.main run ... --stage {stage})")
        ev = dict(getattr(st.cfg, "eval", None) or {}) or top_eval
        return dict(label=stage, model=run_config.ModelSection(f"stage:{stage}"), eval=ev,
                    seed=seed, mesh=mesh, world=world)
    made = [s.name for s in plan.stages if s.makes_model]
    if bool(top_eval.get("use_checkpoint", True)) and made and sources.is_finished(
            workdir / made[-1]):
        return dict(label=made[-1], model=run_config.ModelSection(f"stage:{made[-1]}"),
                    eval=top_eval, seed=seed, mesh=mesh, world=world)
    first = next((s for s in plan.stages if s.kind == "rl"), plan.stages[0])
    return dict(label="initial", model=first.cfg.model, eval=top_eval, seed=seed, mesh=mesh,
                world=world, config=config)


def run_eval(config: Any, workdir: str, stage: str | None = None) -> Any:
    """Evaluates a model of the study (see the module docstring) and writes the table and
    per-item records to WORKDIR/eval/LABEL/. Returns the EvalResult."""
    import jax

    from rlcot import sources, study, world_setup
    from rlcot.evaluation.results import write_results
    from rlcot.evaluation.runner import evaluate
    from rlcot.workdir import write_json

    # -- config -> typed settings (nothing is computed before they all validate) -------------
    workdir_path = Path(workdir)
    pick = _choose(config, workdir_path, stage)
    model_section, seed = pick["model"], pick["seed"]
    sets, eval_cfg = world_setup.eval_setup(pick["eval"], pick["world"])
    if not sets:
        raise ValueError("config.eval is empty: nothing to evaluate")
    source = model_section.source
    if source.startswith("stage:") and not sources.is_finished(workdir_path / source[6:]):
        log.info("the initial model is stage %r's output: running it first", source[6:])
        study.run(config, workdir_path, only=source[6:])
    out_dir = workdir_path / "eval" / pick["label"]
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = _plain(config)
    if jax.process_index() == 0:
        write_json(out_dir / "eval_config.json", resolved)

    # -- model ----------------------------------------------------------------------------------
    mesh = pick["mesh"].make()
    t0 = time.perf_counter()
    resolver = sources.Resolver(study_dir=workdir_path.absolute(), world=pick["world"])
    model = resolver.load_policy(model_section, mesh=mesh, seed=seed)
    load_s = time.perf_counter() - t0
    log.info("loaded %s (%s) in %.1fs", source, pick["label"], load_s)

    # -- evaluate and write ---------------------------------------------------------------------
    t0 = time.perf_counter()
    result = evaluate(model, model.tokenizer, sets, eval_cfg, rng=jax.random.key(seed),
                      mesh=mesh)
    eval_s = time.perf_counter() - t0
    extra = world_setup.eval_extras(result)
    if jax.process_index() == 0:
        write_results(result, out_dir, "eval", extra={
            "model": source, "stage": pick["label"], "seed": seed, "load_seconds": load_s,
            "eval_seconds": eval_s, "behaviour": extra, "config": resolved})
    print(result.to_markdown(), flush=True)
    return result
