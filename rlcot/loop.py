"""The RL loop: sample -> score -> advantages -> update -> evaluate -> log -> checkpoint.

One canonical loop for every recipe; recipes differ by configuration and by the pure functions
they select by name (advantage estimator, policy loss, KL, aggregation, rewards). It always
resumes from its workdir: the checkpoint holds the train state (policy, optimizer, reference,
critic, KL coefficient, counters) and the data position; every random key is derived from
(seed, step), so an interrupted run ends with the same numbers as an uninterrupted one. A stop
request (SIGTERM / SIGINT, rlcot.preempt) ends the run at the next step boundary, or right
after a rollout (abandoning that step), with a checkpoint there.

Several processes (rlcot.distributed): each loads its block of the prompts, samples on the
global mesh, scores its own rows, and the batch is put together as global arrays for the
update; metrics are gathered so that every process has a one-process run's numbers, only
process 0 writes files, and every process takes part in each checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rlcot import distributed, preempt, run_config
from rlcot.checkpoint import Checkpointer
from rlcot.health import HealthLog
from rlcot.workdir import (MetricsWriter, PhaseTimer, Progress, read_metrics, results_table,
                           summarize, write_json)

log = logging.getLogger(__name__)

PLOT_PANELS = (("reward", ("reward/total/mean",)),
               ("held-out accuracy", ("eval/{label}/greedy/pass@1",)),
               ("response length (tokens)", ("rollout/length_mean",)))


def run(rc: run_config.RunConfig, workdir: str | Path, resolver: Any) -> dict[str, Any]:
    """Runs (or resumes) the RL stage described by `rc` in `workdir`; returns its summary.
    resolver: a rlcot.sources.Resolver for the model sources."""
    from rlcot.rollout import align_learner
    rc = align_learner(rc)  # Dr.GRPO budget, off-policy sampling check, dynamic-sampling filter
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    primary = distributed.is_primary()  # process 0 writes the workdir's files
    if primary:
        write_json(workdir / "config.json", dataclasses.asdict(rc))
    from rlcot import world_setup
    from rlcot.rewards import RewardCombiner, RewardPool
    from rlcot.models import lora
    from rlcot.rl import batch as rl_batch
    from rlcot.rl.logprobs import batch_sharding, make_logprob_fn
    from rlcot.rl.state import (check_nonfinite, init_train_state, refresh_reference,
                                train_state_shardings)
    from rlcot.rl.update import make_update_step, row_shards
    from rlcot.sharding import TRAIN_RULES
    from rlcot.rl.value import init_value_params, make_value_fn
    from rlcot.sampling import Sampler, SamplingSpec

    # ---- Mesh, model, data ---------------------------------------------------------------------
    mesh = rc.mesh.make()
    G = rc.rollout.num_samples
    rows = batch_sharding(mesh)  # every [N, ...] array: rows over (data, fsdp)
    _check_rows(rc, row_shards(mesh, TRAIN_RULES))
    from rlcot.rewards.models import model_sources
    distributed.check_run(mesh, rows, batch_prompts=rc.data.batch_prompts, num_samples=G,
                          dynamic_sampling=rc.rollout.dynamic_sampling,
                          model_rewards=tuple(model_sources(rc.rewards)))
    policy = resolver.load_policy(rc.model, mesh=mesh, seed=rc.seed,
                                  stage_dir=workdir if primary else None)
    tokenizer = policy.tokenizer
    pipeline = world_setup.train_pipeline(rc, tokenizer)
    _check_context(pipeline, rc.rollout.max_new_tokens, policy.cfg.max_position)
    # The memory planner's table; a run that cannot fit stops here, naming the knobs that would.
    from rlcot.preflight import check_run_memory
    check_run_memory(rc, policy.cfg, mesh, max(len(ids) for ids in pipeline.prompt_ids))
    eval_sets, eval_cfg = world_setup.eval_setup(rc.eval, rc.world)
    log.info("model %s (%d params) on mesh %s; %d training prompts", rc.model.source,
             policy.cfg.num_params(), dict(mesh.shape), pipeline.num_kept)

    # ---- Train state and the compiled functions ------------------------------------------------
    obj = rc.learner.objective
    needs_ref = obj.kl.placement != "none"
    critic_graphdef = critic_params = None
    if rc.learner.value is not None:
        critic_graphdef, critic_params = init_value_params(
            policy.cfg, rc.seed, mesh=mesh, body_params=policy.params)
    # Only process 0 writes (and marks) model.json: another process would read it while process
    # 0 may still be writing it, and write it again.
    base, trained = lora.start(rc.learner.lora, policy.params, rc.seed,
                               workdir if primary else None, mesh)
    policy_params = lambda s: s.params  # noqa: E731
    if base is not None:  # LoRA: the state trains adapters; the frozen base is the KL reference
        merge = lora.make_merge_fn(rc.learner.lora, base, mesh=mesh)
        policy_params = lambda s: merge(base, s.params)  # noqa: E731
    state = init_train_state(rc.learner, trained, reference=needs_ref and base is None,
                             critic_params=critic_params, mesh=mesh)
    if needs_ref and rc.model.reference is not None:  # a reference other than the start
        ref = resolver.load(rc.model.reference, mesh=mesh, overrides={
            k: v for k, v in rc.model.overrides().items() if k in ("dtype", "param_dtype")})
        shapes = lambda t: jax.tree.map(lambda x: (x.shape, str(x.dtype)), t)  # noqa: E731
        if shapes(ref.params) != shapes(policy.params):
            raise ValueError(f"model.reference {rc.model.reference!r} does not have the "
                             f"policy's parameter shapes and dtypes")
        state = dataclasses.replace(state, ref_params=ref.params)
    state = jax.device_put(state, train_state_shardings(state, mesh))  # scalars on the mesh too
    update = make_update_step(policy.graphdef, rc.learner, state, mesh=mesh,
                              critic_graphdef=critic_graphdef, base_params=base)
    packing = dict(packing=rc.learner.packing, pack_width=rc.learner.pack_width)
    logprob_fn = make_logprob_fn(policy.graphdef, policy.params, mesh=mesh,
                                 chunk=rc.learner.logprob_chunk, **packing)
    value_fn = (make_value_fn(critic_graphdef, critic_params, mesh=mesh, **packing)
                if critic_params is not None else None)
    prepare = rl_batch.make_prepare_fn(rc.advantage, obj.kl, group_size=G,
                                       use_sampler_logp=obj.tis_cap is not None)

    def settle(x: Any) -> Any:
        return distributed.settle(x, mesh)
    # policy_params(state): the policy's weights (LoRA: the adapters merged into the base, made
    # when needed and not kept, so that only the sampler holds a second copy of the weights).
    sampler = Sampler(policy.cfg, policy_params(state), tokenizer=tokenizer, mesh=mesh)
    probe = RewardCombiner(rc.rewards)  # validates the spec; lists what workers import
    pool = RewardPool(rc.train.reward_workers, preload=probe.worker_preload())
    probe.close()
    from rlcot.rewards.models import load_models
    combiner = RewardCombiner(rc.rewards, pool=pool,
                              models=load_models(rc.rewards, resolver, mesh, tokenizer))
    ro = rc.rollout
    spec = SamplingSpec(max_new_tokens=ro.max_new_tokens, temperature=ro.temperature,
                        top_k=ro.top_k, top_p=ro.top_p, min_p=ro.min_p,
                        stop_ids=tuple(tokenizer.stop_ids), stop_strings=ro.stop_strings,
                        shared_prefix=ro.shared_prefix, cache_dtype=ro.cache_dtype)

    # ---- Resume --------------------------------------------------------------------------------
    ckpt = Checkpointer(workdir, max_to_keep=rc.train.keep_checkpoints)
    start, data_state = 0, None
    restored = ckpt.restore(state, fallback=True)  # a damaged latest one: the one before
    # The packed passes' compiled shapes steer their later plans (rlcot.rl.packing): saved
    # with every checkpoint, so that a resumed run packs its rows (and rounds its sums) as an
    # uninterrupted run does.
    packed = {"update": update, "logprobs": logprob_fn, "values": value_fn}

    def meta(at: int, data_pos: Any) -> dict[str, Any]:
        return {"data": data_pos, "step": at,
                "pack_shapes": {k: sorted([int(n) for n in s] for s in getattr(f, "known", ()))
                                for k, f in packed.items() if f is not None}}

    if restored is not None:
        start, state, restored_meta = restored
        data_state = restored_meta["data"]
        for k, shapes in restored_meta.get("pack_shapes", {}).items():
            if packed.get(k) is not None and hasattr(packed[k], "known"):
                packed[k].known.update(tuple(s) for s in shapes)
        sampler.update_params(policy_params(state))
        log.info("resumed from step %d", start)
    data_it = pipeline.iterator(data_state)
    writer = MetricsWriter(workdir, resume_step=start if restored else None, active=primary)
    distributed.sync("metrics file")  # process 0 has cut it back to the resumed step
    health = HealthLog(read_metrics(workdir))
    base_key = jax.random.key(rc.seed)
    saved = start if restored is not None else None  # the newest checkpoint's step

    def evaluate(step: int) -> dict[str, float]:
        return world_setup.evaluate_at(step, eval_generate, tokenizer, eval_sets, eval_cfg,
                                       rc.seed, workdir if primary else None)

    # Each process samples from its own prompts and gets its own rows back (rlcot.distributed);
    # evaluation feeds every process the same prompts and gives every process all rows.
    generate = distributed.local_generate(sampler.generate, rows, tokenizer.pad_id)
    eval_generate = distributed.replicated_generate(sampler.generate, mesh)

    if start == 0 and eval_sets:
        writer.write(0, evaluate(0))

    # ---- The loop ------------------------------------------------------------------------------
    from rlcot.rollout import collect, gather
    progress = Progress(rc.train.steps, initial=start,
                        keys=("reward/total/mean", "rollout/length_mean", "loss"))

    def close() -> None:
        progress.close()
        ckpt.close()
        writer.close()
        pool.close()

    def stop(at: int, state: Any, data_pos: dict[str, Any]) -> None:
        """Ends the run on a stop request: a checkpoint at step `at` (unless there is one, or
        at is 0: nothing to keep), then Preempted."""
        if at > 0 and at != saved:
            ckpt.save(at, state, meta(at, data_pos))
        close()
        raise preempt.Preempted(f"stage {workdir.name}", at)

    t_run = time.perf_counter()
    for step in range(start, rc.train.steps):
        data_pos = pipeline.get_state(data_it)
        if preempt.stop_requested():
            stop(step, state, data_pos)
        timer = PhaseTimer()
        key = jax.random.fold_in(base_key, step)

        with timer("rollout"):
            rollout = collect(data_it, generate, combiner, tokenizer, spec,
                              num_samples=G, batch_prompts=rc.data.batch_prompts,
                              key=jax.random.fold_in(key, 0),
                              dynamic_sampling=ro.dynamic_sampling, max_rounds=ro.max_rounds,
                              filter_on=ro.dynamic_sampling_filter)
        if preempt.stop_requested():  # abandon the step: the state is still the step's start
            stop(step, state, data_pos)
        tb = distributed.to_global(rollout.batch, rows)  # this process's rows -> global rows
        scores_N, row_valid_N, truncated_N = distributed.to_global(
            (rollout.scores_N, rollout.row_valid_N, rollout.truncated_N), rows)
        everyone = gather(rollout)  # all rows' numbers, on every process, for the metrics
        with timer("logprobs"):
            # Log-probs and values are read at completion tokens only (packed: only computed
            # there). settle: one program at a time on a CPU mesh (distributed.settle).
            args = (tb.tokens_NxL, tb.positions_NxL, tb.valid_NxL, tb.completion_mask_NxL)
            logp_old = (settle(logprob_fn(policy_params(state), *args))
                        if ro.recompute_old_logp else tb.logp_NxL)
            ref = state.ref_params if base is None else base  # LoRA: adapters off
            logp_ref = settle(logprob_fn(ref, *args)) if needs_ref else None
            values = (settle(value_fn(state.critic_params, *args)) if value_fn is not None
                      else None)
            batch = settle(prepare(tb, scores_N, row_valid_N, truncated_N, logp_old, logp_ref,
                                   values, state.kl_coef))
            batch = jax.block_until_ready(jax.device_put(batch, rows))
        update_metrics: dict[str, Any] = {"skipped_no_signal": 1.0}
        if everyone.row_valid_N.any():  # else no group carried a learning signal: no step
            with timer("update"):
                state, update_metrics = update(
                    state, batch, distributed.replicated(jax.random.fold_in(key, 1), mesh))
                update_metrics = jax.device_get(update_metrics)
                sampler.update_params(policy_params(state))
                settle(sampler.params)
            check_nonfinite(update_metrics["nonfinite_streak"], rc.learner)
        if (rc.train.ref_refresh_every and needs_ref
                and (step + 1) % rc.train.ref_refresh_every == 0):
            state = refresh_reference(state)

        row = {**{k: float(v) for k, v in update_metrics.items()}, **everyone.reward_metrics,
               **_rollout_metrics(everyone, G)}
        row.update(health(step + 1, row))  # loud warnings, counted as health/NAME
        last = step + 1 == rc.train.steps
        if eval_sets and (last or (rc.train.eval_every and (step + 1) % rc.train.eval_every == 0)):
            with timer("eval"):
                row.update(evaluate(step + 1))
        if last or (step + 1) % rc.train.checkpoint_every == 0:
            with timer("checkpoint"):
                ckpt.save(step + 1, state, meta(step + 1, pipeline.get_state(data_it)))
            saved = step + 1
        row.update(timer.metrics())
        writer.write(step + 1, row)
        progress.update(row)
        if (step + 1) % rc.train.log_every == 0 or last:
            log.info("step %d/%d %s", step + 1, rc.train.steps, _brief(row))

    # ---- Wrap up: summary.json and plots --------------------------------------------------------
    close()
    distributed.sync("run finished")  # every process's last metrics row and checkpoint are in
    summary = summarize(workdir, rc, wall_s=time.perf_counter() - t_run, resumed_from=start)
    summary["data"] = {"prompts": pipeline.num_kept, "skipped": pipeline.skipped}
    if not primary:
        return summary
    write_json(workdir / "summary.json", summary)
    table = results_table(summary)
    (workdir / "results.md").write_text(table + "\n")
    log.info("held-out results (before -> after RL):\n%s", table)
    labels = [s.label for s in eval_sets]
    panels = [(title, [k.format(label=lab) for k in keys for lab in (labels or [""])])
              for title, keys in PLOT_PANELS]
    from rlcot.plots import plot_metrics
    plot_metrics(workdir, panels)
    return summary


def _check_rows(rc: run_config.RunConfig, row_shards: int) -> None:
    """The batch's rows must split into minibatches, micro-batches and the batch shards of the
    mesh (data x fsdp), named by their settings (before anything compiles)."""
    B, G = rc.data.batch_prompts, rc.rollout.num_samples
    try:
        rc.learner.check_rows(B * G, row_shards=row_shards)
    except ValueError as e:
        raise ValueError(
            f"data.batch_prompts x rollout.num_samples = {B} x {G} rows: {e}; the batch shards "
            f"are mesh.data x mesh.fsdp = {row_shards} (learner.minibatches = "
            f"{rc.learner.minibatches}, learner.micro_batches = {rc.learner.micro_batches})"
            ) from e


def _check_context(pipeline: Any, max_new_tokens: int, max_position: int) -> None:
    """The longest kept prompt plus the completion budget must fit the model's context (checked
    here, before anything compiles, when data.max_prompt_tokens leaves prompts unbounded)."""
    longest = max(len(ids) for ids in pipeline.prompt_ids)
    if longest + max_new_tokens > max_position:
        raise ValueError(
            f"the longest training prompt has {longest} tokens: with rollout.max_new_tokens = "
            f"{max_new_tokens} that is beyond the model's context of {max_position} positions; "
            f"set data.max_prompt_tokens <= {max_position - max_new_tokens} (longer prompts are "
            f"skipped) or lower rollout.max_new_tokens")


def _rollout_metrics(rollout, group_size: int) -> dict[str, float]:
    valid = rollout.row_valid_N
    lengths = rollout.lengths_N[valid] if valid.any() else rollout.lengths_N
    scores = rollout.scores_N[valid] if valid.any() else rollout.scores_N
    groups = rollout.scores_N.reshape(-1, group_size)
    out = {"rollout/length_mean": float(np.mean(lengths)),
           "rollout/length_max": float(np.max(lengths)),
           "rollout/truncated_frac": float(np.mean(rollout.truncated_N)),
           "rollout/score_mean": float(np.mean(rollout.scores_N[valid])) if valid.any() else 0.0,
           "rollout/score_std": float(np.std(scores)),
           "rollout/groups_equal_frac": float(np.mean(groups.max(1) == groups.min(1))),
           "rollout/valid_frac": float(np.mean(valid))}
    out.update({f"rollout/{k}": float(v) for k, v in rollout.stats.items()})
    return out


def _brief(row: dict[str, Any]) -> str:
    keys = ("reward/total/mean", "rollout/length_mean", "loss", "kl_ref_mean", "entropy_mean",
            "time/step_s")
    return " ".join(f"{k.split('/')[-2] if k.count('/') > 1 else k}={row[k]:.4g}"
                    for k in keys if isinstance(row.get(k), float))
