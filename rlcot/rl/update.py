"""The update step: epochs x minibatches x micro-batches of the RL objective in one jitted call.

`make_update_step` returns `update(state, batch, rng) -> (state, metrics)`, jitted once with
explicit shardings (parameters and optimizer state by the training rules, rows over the batch
mesh axes) and the state donated. Inside, `lax.scan` runs the epochs; each epoch draws a row
permutation from its key (`minibatch_order`) and scans over the minibatches; each minibatch
computes its aggregation weights from its whole mask, then scans over micro-batches summing
gradients (`minibatch_grads`), so accumulation gives the full-minibatch gradient exactly in
every aggregation mode. A minibatch whose loss or gradient is not finite is skipped: parameters
and optimizer state stay as they were and the counters in the state record it. A minibatch
without a valid token (all its rows masked out) is skipped the same way, without counting as
non-finite: no moment update, no weight decay.

Packing (`UpdateConfig.packing`, rl.packing): with "pack" or "trim" the returned function first
plans on the host (`plan_update`: the epochs' minibatch orders, drawn from the same keys, and
each minibatch's packed rows split over its micro-batches), then calls the jitted step with the
plan. Each micro-batch runs the decoder on its packed rows only and computes logits at its
loss positions only; the per-token results return to the minibatch's [S, L] layout, where the
loss, the aggregation weights (from the whole minibatch's mask, as unpacked) and the metrics
are computed on that micro-batch's rows: the same minibatch gradient as the padded path, up
to float rounding. Plans are bucketed (rl.packing), so the step compiles for few shapes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlcot.models import lora
from rlcot.rl.aggregation import aggregate, aggregation_weights, mask_truncated, token_mean_weights
from rlcot.rl.batch import UpdateBatch
from rlcot.rl.logprobs import batch_sharding, packed_token_logprobs, row_shards, token_logprobs
from rlcot.rl.losses import value_loss
from rlcot.rl.metrics import finalize_metrics, reduce_metrics, token_metrics
from rlcot.rl.objective import loss_terms, split_aux, token_objective
from rlcot.rl.optim import make_optimizer, make_schedule
from rlcot.rl.state import TrainState, UpdateConfig, train_state_shardings
from rlcot.rl.packing import PackPlan, plan_packing, to_host
from rlcot.rl.value import packed_value_forward, value_forward
from rlcot.sharding import (TRAIN_RULES, logical_to_spec, state_shardings,
                            with_activation_sharding)

_PER_TOKEN = ("adv", "logp_old", "logp_ref", "logp_sampler", "values_old", "returns")


def _row_axes(mesh: Mesh, rules: Any) -> Any:
    return logical_to_spec(("batch",), rules, mesh=mesh)[0]




def _constrain_rows(x: jax.Array, row_axis: int, mesh: Mesh | None, rules: Any) -> jax.Array:
    if mesh is None:
        return x
    spec = [None] * x.ndim
    spec[row_axis] = _row_axes(mesh, rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))


def minibatch_order(key: jax.Array, n_rows: int, minibatches: int, shuffle: bool) -> jax.Array:
    """[M, S] row indices of each minibatch in one epoch: a permutation drawn from `key`, or
    rows in order without shuffling. The update step uses `jax.random.split(rng, epochs)[e]`
    as the key of epoch e."""
    rows_N = jax.random.permutation(key, n_rows) if shuffle else jnp.arange(n_rows)
    return rows_N.reshape(minibatches, n_rows // minibatches)


def split_micro(x: jax.Array, micro_batches: int) -> jax.Array:
    """[S, ...] -> [K, S / K, ...]; micro-batch k holds rows k, k + K, k + 2K, ... A strided
    split keeps every micro-batch spread over all batch shards (no data movement)."""
    S = x.shape[0]
    return x.reshape(S // micro_batches, micro_batches, *x.shape[1:]).swapaxes(0, 1)


def _policy_loss(graphdef, cfg: UpdateConfig, params, x: dict, kl_coef, base=None,
                 constrain=None):
    if base is not None:  # LoRA: params are the adapters, applied on the frozen base
        params = lora.Adapted(base, params, cfg.lora.scale)
    if "pack" in x:
        logp, ent = packed_token_logprobs(graphdef, params, x["tokens"], x["positions"],
                                          x["valid"], x["pack"], chunk=cfg.logprob_chunk,
                                          remat=cfg.remat, constrain=constrain)
    else:
        logp, ent = token_logprobs(graphdef, params, x["tokens"], x["positions"], x["valid"],
                                   chunk=cfg.logprob_chunk, remat=cfg.remat)
    loss_BxT, aux = token_objective(cfg.objective, logp, x["logp_old"], x["adv"], x["mask"],
                                    kl_coef=kl_coef, logp_ref_BxT=x.get("logp_ref"),
                                    entropy_BxT=ent, logp_sampler_BxT=x.get("logp_sampler"))
    terms, diag = split_aux(aux)
    metrics = token_metrics(diag, x["w_metric"], x["mask"])
    metrics.update(loss_terms(terms, x["w"]))
    return aggregate(loss_BxT, x["w"]), metrics


def _critic_loss(graphdef, cfg: UpdateConfig, params, x: dict, constrain=None):
    if "pack" in x:
        values = packed_value_forward(graphdef, params, x["tokens"], x["positions"],
                                      x["valid"], x["pack"], remat=cfg.remat,
                                      constrain=constrain)
    else:
        values = value_forward(graphdef, params, x["tokens"], x["positions"], x["valid"],
                               remat=cfg.remat)
    loss_BxT, aux = value_loss(values, x["values_old"], x["returns"], x["mask"],
                               clip_eps=cfg.value.clip_eps)
    aux["value"] = values * x["mask"]
    loss = aggregate(loss_BxT, x["w_value"])
    return loss, {**token_metrics(aux, x["w_metric"], x["mask"]), "value_loss": loss}


def _micro_view(mb: dict, pack: dict) -> dict:
    """The minibatch's [S, L] arrays as one packed micro-batch sees them: loss mask and weights
    kept on its own rows only, so that summing over micro-batches gives the minibatch exactly."""
    member_Sx1 = pack["member"][:, None]
    x = {k: (v * member_Sx1 if k in ("mask", "w", "w_metric", "w_value") else v)
         for k, v in mb.items()}
    x["pack"] = pack
    return x


def _zeros_f32(params, mesh, rules):
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    if mesh is None:
        return zeros
    return jax.lax.with_sharding_constraint(zeros, state_shardings(params, mesh, rules))


def minibatch_grads(graphdef: nnx.GraphDef, cfg: UpdateConfig, params: Any, mb: dict,
                    kl_coef: jax.Array, *, critic_graphdef: nnx.GraphDef | None = None,
                    critic_params: Any = None, mesh: Mesh | None = None,
                    rules: Any = TRAIN_RULES, base: Any = None, pack: dict | None = None
                    ) -> tuple[Any, Any, jax.Array, dict]:
    """Gradients of one minibatch, accumulated over `cfg.micro_batches` in float32. base: the
    frozen base weights when `params` are LoRA adapters (gradients go to the adapters only).

    mb: [S, L] arrays `tokens, positions, valid, mask, adv, logp_old` (+ `logp_ref,
    logp_sampler` when the objective uses them, `values_old, returns` with a critic) and the
    weights `w` (loss aggregation), `w_metric` (token mean) [, `w_value`], all computed over
    the whole minibatch. Returns (grads, critic_grads or None, loss, finalized metrics).

    pack: this minibatch's packing plan (rl.packing; arrays [K, ...]): micro-batch k runs the
    decoder on its packed rows only, and its per-token outputs return to the [S, L] layout,
    where the loss reads them with the weights restricted to its rows (`member`). None: the
    padded rows, micro-batch k holding rows k, k + K, ... (`split_micro`).
    """
    constrain = None
    if pack is None:
        micro = {k: _constrain_rows(split_micro(v, cfg.micro_batches), 1, mesh, rules)
                 for k, v in mb.items()}
    else:
        micro = {k: _constrain_rows(v, 1, mesh, rules) for k, v in pack.items()}
        if mesh is not None:
            constrain = functools.partial(_constrain_rows, row_axis=0, mesh=mesh, rules=rules)
    policy_vg = jax.value_and_grad(functools.partial(_policy_loss, graphdef, cfg, base=base,
                                                     constrain=constrain), has_aux=True)
    critic_vg = None
    if critic_params is not None:
        critic_vg = jax.value_and_grad(functools.partial(_critic_loss, critic_graphdef, cfg,
                                                         constrain=constrain), has_aux=True)

    def body(acc, x):
        if pack is not None:
            x = _micro_view(mb, x)
        g_acc, cg_acc = acc
        (loss, metrics), g = policy_vg(params, x, kl_coef)
        g_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, g)
        if critic_vg is not None:
            (_, critic_metrics), cg = critic_vg(critic_params, x)
            cg_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), cg_acc, cg)
            metrics.update(critic_metrics)
        return (g_acc, cg_acc), (loss, metrics)

    init = (_zeros_f32(params, mesh, rules),
            None if critic_params is None else _zeros_f32(critic_params, mesh, rules))
    (grads, critic_grads), (loss_K, metrics_K) = jax.lax.scan(body, init, micro)
    metrics = finalize_metrics(reduce_metrics(metrics_K))
    return grads, critic_grads, loss_K.sum(), metrics


def _apply(tx, grads, opt_state, params):
    updates, new_opt = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_opt


def _keep_if(ok: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


def _summarize(metrics_ExM: dict, applied_ExM: jax.Array) -> dict:
    """Over all optimizer steps of the update: means (of applied steps only, unless none was
    applied), extremes of `_min`/`_max`, sums of counts."""
    ok = applied_ExM.astype(jnp.float32)
    n_ok = ok.sum()
    out = {}
    for k, v in metrics_ExM.items():
        if k.endswith("_min"):
            out[k] = jnp.where(n_ok > 0, jnp.min(jnp.where(ok > 0, v, jnp.inf)), jnp.min(v))
        elif k.endswith("_max"):
            out[k] = jnp.where(n_ok > 0, jnp.max(jnp.where(ok > 0, v, -jnp.inf)), jnp.max(v))
        else:
            out[k] = jnp.where(n_ok > 0, jnp.sum(jnp.where(ok > 0, v, 0.0)) / n_ok, jnp.mean(v))
    return out


def prepare_batch(cfg: UpdateConfig, batch: UpdateBatch, critic: bool = False) -> dict:
    """The row arrays the step scans over (keys as in `minibatch_grads`): the loss mask with
    truncated rows removed when `aggregation.mask_truncated`, only the fields the config uses,
    per-token inputs zeroed off the loss mask so that garbage on padding (nan included)
    cannot reach a value or a gradient."""
    mask = batch.loss_mask_NxL.astype(jnp.float32)
    if cfg.objective.aggregation.mask_truncated:
        if batch.truncated_N is None:
            raise ValueError("aggregation.mask_truncated is set but the batch has no truncated_N")
        mask = mask_truncated(mask, batch.truncated_N)
    data = {"tokens": batch.tokens_NxL, "positions": batch.positions_NxL,
            "valid": batch.valid_NxL.astype(bool), "mask": mask, "adv": batch.adv_NxL,
            "logp_old": batch.logp_old_NxL, "logp_ref": batch.logp_ref_NxL,
            "logp_sampler": batch.logp_sampler_NxL, "values_old": batch.values_old_NxL,
            "returns": batch.returns_NxL}
    obj = cfg.objective
    needed = {"logp_ref": obj.kl.placement == "loss" or obj.kl.controller == "adaptive",
              "logp_sampler": obj.tis_cap is not None, "values_old": critic, "returns": critic}
    for name, need in needed.items():
        if need and data[name] is None:
            raise ValueError(f"the update config needs batch field {name}_NxL, which is None")
    if not critic:
        data["values_old"] = data["returns"] = None
    if obj.tis_cap is None:
        data["logp_sampler"] = None
    for name in _PER_TOKEN:
        if data[name] is not None:
            data[name] = jnp.where(mask > 0, data[name].astype(jnp.float32), 0.0)
    return {k: v for k, v in data.items() if v is not None}


def _observed_kl(cfg: UpdateConfig, data: dict) -> jax.Array:
    """Mean over rows of the summed per-token KL of the sampling policy to the reference (the
    quantity Ziegler et al.'s adaptive controller tracks); nan without reference log-probs."""
    if "logp_ref" not in data:
        return jnp.float32(jnp.nan)
    m = data["mask"]
    kl_N = (cfg.objective.kl.estimate(data["logp_old"], data["logp_ref"]) * m).sum(-1)
    rows = (m.sum(-1) > 0).astype(jnp.float32)
    return (kl_N * rows).sum() / jnp.maximum(rows.sum(), 1.0)


def plan_update(cfg: UpdateConfig, batch: UpdateBatch, rng: jax.Array, row_shards: int = 1,
                known: Any = ()) -> PackPlan:
    """Host side of a packed update (`cfg.packing` "pack" or "trim"): each epoch's minibatch
    order (`minibatch_order` with the epoch's key, as the padded path draws it) and the
    packing plan of every minibatch (rl.packing), from the rows' valid tokens and loss mask
    (after `mask_truncated`). known: see `plan_packing`. The step reads
    `{**plan.arrays(), "order": plan.order}`: order [E, M, S], the plan's [E * M, K, ...]."""
    N, L = batch.tokens_NxL.shape
    E, M = cfg.epochs, cfg.minibatches
    S = N // M
    order_ExMxS = np.stack([np.asarray(minibatch_order(k, N, M, cfg.shuffle))
                            for k in jax.random.split(rng, E)]).astype(np.int32)
    valid_NxL = to_host(batch.valid_NxL).astype(bool)
    need_NxL = to_host(batch.loss_mask_NxL) > 0
    if cfg.objective.aggregation.mask_truncated and batch.truncated_N is not None:
        need_NxL &= ~to_host(batch.truncated_N).astype(bool)[:, None]
    rows = order_ExMxS.reshape(E * M, S)
    plan = plan_packing(valid_NxL[rows], need_NxL[rows], micro_batches=cfg.micro_batches,
                        mode=cfg.packing, row_multiple=row_shards, width=cfg.pack_width,
                        known=known)
    return dataclasses.replace(plan, order=order_ExMxS)


def _update(graphdef, critic_graphdef, cfg: UpdateConfig, mesh, rules, state: TrainState,
            batch: UpdateBatch, rng: jax.Array, pack: dict | None = None,
            base: Any = None) -> tuple[TrainState, dict]:
    N, L = batch.tokens_NxL.shape
    cfg.check_rows(N, row_shards(mesh, rules))
    critic = state.critic_params is not None
    if critic != (cfg.value is not None):
        raise ValueError("the train state's critic does not match UpdateConfig.value")
    data = prepare_batch(cfg, batch, critic)
    tx, schedule = make_optimizer(cfg.optimizer), make_schedule(cfg.optimizer)
    ctx = make_optimizer(cfg.value.optimizer) if critic else None

    def minibatch_step(carry, xs):
        mb, mb_pack = xs
        params, opt_state, cparams, copt_state, opt_step, streak, total = carry
        mask = mb["mask"]
        mb = dict(mb, w=cfg.objective.aggregation.weights(mask), w_metric=token_mean_weights(mask))
        if critic:
            mb["w_value"] = aggregation_weights(mask, cfg.value.aggregation)
        grads, cgrads, loss, metrics = minibatch_grads(
            graphdef, cfg, params, mb, state.kl_coef, critic_graphdef=critic_graphdef,
            critic_params=cparams, mesh=mesh, rules=rules, base=base, pack=mb_pack)
        grad_norm = optax.tree.norm(grads)
        metrics.update(loss=loss, grad_norm=grad_norm, grad_norm_max=grad_norm,
                       lr=schedule(opt_step))
        finite = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"])
        if critic:
            metrics["critic_grad_norm"] = optax.tree.norm(cgrads)
            finite &= (jnp.isfinite(metrics["value_loss"])
                       & jnp.isfinite(metrics["critic_grad_norm"]))
        # No valid token (every row masked out): no step at all. A zero gradient would still
        # move Adam's moments and apply weight decay.
        has_tokens = jnp.sum(mask) > 0
        ok = finite & has_tokens
        new = _apply(tx, grads, opt_state, params)
        if critic:
            cparams, copt_state = _keep_if(ok, _apply(ctx, cgrads, copt_state, cparams),
                                           (cparams, copt_state))
        params, opt_state = _keep_if(ok, new, (params, opt_state))
        metrics["skipped"] = (~finite).astype(jnp.float32)
        metrics["skipped_empty"] = (~has_tokens).astype(jnp.float32)
        # The non-finite streak counts non-finite steps; an empty minibatch leaves it as it was.
        streak = jnp.where(finite, jnp.where(has_tokens, 0, streak), streak + 1)
        carry = (params, opt_state, cparams, copt_state, opt_step + ok, streak,
                 total + (~finite))
        return carry, (metrics, ok, finite)

    def epoch(carry, xs):
        key, order_MxS, epoch_pack = xs
        if order_MxS is None:
            order_MxS = minibatch_order(key, N, cfg.minibatches, cfg.shuffle)
        mbs = {k: _constrain_rows(v[order_MxS], 1, mesh, rules) for k, v in data.items()}
        return jax.lax.scan(minibatch_step, carry, (mbs, epoch_pack))

    E, M = cfg.epochs, cfg.minibatches
    keys, order_ExMxS, pack_ExM = jax.random.split(rng, E), None, None
    slots, logit_slots = E * N * L, E * N * (L - 1)
    if pack is not None:  # packed: the host's order and plan (plan_update)
        order_ExMxS = pack["order"]
        pack_ExM = {k: v.reshape(E, M, *v.shape[1:]) for k, v in pack.items() if k != "order"}
        slots, logit_slots = pack["src"].size, pack["query"].size

    carry = (state.params, state.opt_state, state.critic_params, state.critic_opt_state,
             state.opt_step, state.nonfinite_streak, state.nonfinite_total)
    carry, (metrics_ExM, ok_ExM, finite_ExM) = jax.lax.scan(epoch, carry,
                                                           (keys, order_ExMxS, pack_ExM))
    params, opt_state, cparams, copt_state, opt_step, streak, total = carry

    metrics = _summarize(metrics_ExM, ok_ExM)
    metrics["skipped"] = jnp.sum(~finite_ExM).astype(jnp.float32)
    metrics["skipped_empty"] = jnp.sum(metrics_ExM["skipped_empty"])
    observed_kl = _observed_kl(cfg, data)
    kl_coef = state.kl_coef
    if cfg.objective.kl.controller == "adaptive":
        new_coef = cfg.objective.kl.update_coef(kl_coef, observed_kl, N)
        kl_coef = jnp.where(jnp.isfinite(new_coef), new_coef, kl_coef)
    metrics.update(kl_coef=kl_coef, rollout_kl=observed_kl, opt_steps=jnp.sum(ok_ExM),
                   nonfinite_streak=streak, nonfinite_total=total,
                   tokens=jnp.float32(slots), loss_tokens=cfg.epochs * data["mask"].sum())
    real = cfg.epochs * data["valid"].sum().astype(jnp.float32)
    metrics.update({"update/real_tokens": real, "update/slots": jnp.float32(slots),
                    "update/slots_per_real_token": slots / jnp.maximum(real, 1.0),
                    "update/logit_slots": jnp.float32(logit_slots)})
    new_state = TrainState(params=params, opt_state=opt_state, step=state.step + 1,
                           opt_step=opt_step, kl_coef=kl_coef, nonfinite_streak=streak,
                           nonfinite_total=total, ref_params=state.ref_params,
                           critic_params=cparams, critic_opt_state=copt_state)
    return new_state, metrics


def make_update_step(graphdef: nnx.GraphDef, cfg: UpdateConfig, state_like: TrainState, *,
                     mesh: Mesh | None = None, rules: Any = TRAIN_RULES,
                     critic_graphdef: nnx.GraphDef | None = None,
                     compiler_options: dict | None = None, base_params: Any = None) -> Callable:
    """Jitted `update(state, batch, rng) -> (state, metrics)`; the state is donated.
    base_params: the frozen base when `cfg.lora` is enabled and the state's params are its
    adapters (an argument of the jitted step, neither donated nor a compiled-in constant).

    state_like: the state (or its abstract version) the step will see, for its shardings.
    compiler_options: XLA options for this step only, e.g. scheduler flags on accelerators, or
    {"xla_backend_optimization_level": 0} for tests on CPU (compiles ~3x faster).

    Metrics (replicated scalars; means over the applied optimizer steps): loss, pg_loss,
    kl_loss, entropy_loss (aggregated loss terms), kl_ref_mean, entropy_mean, approx_kl_mean,
    ratio_mean/min/max, clipped_low/high/dual_frac, adv_mean/std/min/max, tis_* (with TIS),
    grad_norm (before clipping) and grad_norm_max, lr, value_loss, value_mean,
    vf_clipped_frac, critic_grad_norm (with a critic); per update: skipped (non-finite),
    skipped_empty (minibatches without a valid token), opt_steps,
    nonfinite_streak, nonfinite_total, kl_coef (after the controller), rollout_kl, tokens
    (positions processed: epochs x N x L padded, the packed slots when packed), loss_tokens,
    update/real_tokens (epochs x valid tokens), update/slots (= tokens),
    update/slots_per_real_token, update/logit_slots (positions whose logits are computed).

    The returned function plans on the host first when `cfg.packing` is not "none" (see the
    module docstring); `update.plan(batch, rng)` gives that plan and `update.jitted` the
    jitted `(state, batch, rng, plan[, base_params])`, e.g. to compile ahead of time.
    """
    if cfg.lora.enabled != (base_params is not None):
        raise ValueError(f"learner.lora.enabled is {cfg.lora.enabled}: base_params must be "
                         f"given exactly when it is True")
    fn = with_activation_sharding(
        functools.partial(_update, graphdef, critic_graphdef, cfg, mesh, rules), mesh, rules)
    if mesh is None:
        step = jax.jit(fn, donate_argnums=0, compiler_options=compiler_options)
    else:
        state_sh = train_state_shardings(state_like, mesh, rules)
        replicated = NamedSharding(mesh, PartitionSpec())
        in_sh = (state_sh, batch_sharding(mesh, rules), replicated, replicated)
        if base_params is not None:
            in_sh += (state_shardings(base_params, mesh, rules),)
        step = jax.jit(fn, in_shardings=in_sh, out_shardings=(state_sh, replicated),
                       donate_argnums=0, compiler_options=compiler_options)
    shards = row_shards(mesh, rules)
    base = () if base_params is None else (base_params,)
    known: set = set()   # shapes compiled so far: later plans reuse them when they fit

    def plan(batch: UpdateBatch, rng: jax.Array) -> dict | None:
        """The packed step's `pack` argument for this batch (None unpacked)."""
        if cfg.packing == "none":
            return None
        p = plan_update(cfg, batch, rng, shards, known)
        known.add(p.shape)
        return {**p.arrays(), "order": p.order}

    def update(state, batch, rng):
        return step(state, batch, rng, plan(batch, rng), *base)
    update.jitted = step  # (state, batch, rng, pack, [base]): e.g. to lower ahead of time
    update.plan = plan
    # The shapes compiled so far steer later plans (plan_packing's `known`): the loop saves
    # them with each checkpoint so that a resumed run packs (and rounds) as the first did.
    update.known = known
    return update
