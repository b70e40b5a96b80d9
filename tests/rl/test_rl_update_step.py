"""The jitted update step: sharded == single device, == a hand-written minibatch loop, the
epochs x minibatches schedule, the non-finite guard, the KL controller, the critic, refresh."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlcot import sharding
from rlcot.models import presets
from rlcot.models import transformer as tr
from rlcot.rl.aggregation import aggregation_weights, token_mean_weights
from rlcot.rl.batch import UpdateBatch
from rlcot.rl.kl import KLConfig
from rlcot.rl.logprobs import token_logprobs
from rlcot.rl.losses import PolicyLossConfig
from rlcot.rl.objective import ObjectiveConfig
from rlcot.rl.optim import OptimizerConfig, make_optimizer
from rlcot.rl.state import (NonFiniteError, UpdateConfig, check_nonfinite, init_train_state,
                            refresh_reference)
from rlcot.rl.update import make_update_step, minibatch_grads, minibatch_order
from rlcot.rl.value import ValueConfig, init_value_params

N, L, P = 16, 12, 4
# XLA:CPU options for these tests: no LLVM optimisation (compiles ~3x faster; shapes are tiny)
# and no YNNPACK fusions, whose row reductions (rms-norm means, softmax) round differently with
# the number of rows in the batch (~4e-7 relative), so per-row numerics would depend on how
# rows are grouped into micro-batches or shards.
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_experimental_ynn_fusion_type": ""}
CFG = presets.get_config("tiny", vocab_size=64, d_model=64, mlp_dim=128, head_dim=16)
# eps = 1 keeps Adam's step a smooth function of the gradient: with the usual 1e-8, the first
# step is lr * sign(g), and gradients at rounding level flip signs between device layouts.
OPT = OptimizerConfig(lr=0.05, eps=1.0, max_grad_norm=1.0)
UCFG = UpdateConfig(
    objective=ObjectiveConfig(
        policy=PolicyLossConfig(eps_low=0.2, eps_high=0.28, dual_clip_c=3.0),
        kl=KLConfig(estimator="k3", placement="loss", coef=0.1, controller="adaptive",
                    target=0.5, horizon=100.0),
        entropy_coef=0.01, tis_cap=2.0),
    optimizer=OPT, value=ValueConfig(optimizer=OPT, clip_eps=None), epochs=2, minibatches=2,
    micro_batches=2, logprob_chunk=5)


def make_batch(graphdef, params, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, L - P + 1, N)
    tokens = rng.integers(0, CFG.vocab_size, (N, L)).astype(np.int32)
    valid = np.arange(L)[None, :] < (P + lengths)[:, None]
    positions = np.asarray(tr.positions_from_mask(valid))
    mask = ((np.arange(L)[None, :] >= P) & valid).astype(np.float32)
    logp, _ = jax.jit(lambda p: token_logprobs(graphdef, p, tokens, positions, valid),
                      compiler_options=FAST)(params)
    noise = lambda s: jnp.asarray(rng.normal(size=(N, L)) * s, jnp.float32)  # noqa: E731
    adv = jnp.asarray(rng.normal(size=(N, 1)), jnp.float32) * mask
    return UpdateBatch(tokens, positions, valid, mask, adv, logp_old_NxL=logp * mask,
                       logp_ref_NxL=(logp + noise(0.5)) * mask,
                       logp_sampler_NxL=(logp + noise(0.2)) * mask,
                       values_old_NxL=noise(1.0) * mask, returns_NxL=noise(1.0) * mask)


def build_state(mesh=None):
    graphdef, params = tr.init_params(CFG, seed=1, mesh=mesh)
    cgraphdef, cparams = init_value_params(CFG, seed=2, mesh=mesh, body_params=params)
    state = init_train_state(UCFG, params, reference=True, critic_params=cparams, mesh=mesh)
    return graphdef, cgraphdef, state


_INITIAL = {}


def fresh_state(mesh=None):
    """A copy of the initial state (built once per layout: the step donates its input)."""
    key = mesh is not None
    if key not in _INITIAL:
        _INITIAL[key] = build_state(mesh)
    graphdef, cgraphdef, state = _INITIAL[key]
    return graphdef, cgraphdef, jax.tree.map(jnp.copy, state)


@pytest.fixture(scope="module")
def single():
    graphdef, cgraphdef, state = fresh_state()
    step = make_update_step(graphdef, UCFG, state, critic_graphdef=cgraphdef,
                            compiler_options=FAST)
    batch = make_batch(graphdef, state.params)
    return graphdef, cgraphdef, step, batch


def leaves_close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


def max_change(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                              jax.tree.leaves(b)))


def test_sharded_step_equals_single_device(single):
    graphdef, cgraphdef, step, batch = single
    new, metrics = step(fresh_state()[2], batch, jax.random.key(0))
    mesh = sharding.make_mesh(2, 2, 2)
    _, _, state_m = fresh_state(mesh)
    step_m = make_update_step(graphdef, UCFG, state_m, mesh=mesh, critic_graphdef=cgraphdef,
                              compiler_options=FAST)
    new_m, metrics_m = step_m(state_m, batch, jax.random.key(0))
    assert max_change(new.params, fresh_state()[2].params) > 1e-2   # the step really moved
    for name in ("params", "opt_state", "critic_params", "critic_opt_state", "ref_params"):
        leaves_close(getattr(new, name), getattr(new_m, name), atol=1e-5)
    emb = new_m.params["embed"].get_value()
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    # Packed rows per micro-batch round up to the batch shards: the layout counts differ.
    layout = ("tokens", "update/slots", "update/slots_per_real_token", "update/logit_slots")
    for k in metrics:
        if k not in layout:
            np.testing.assert_allclose(float(metrics_m[k]), float(metrics[k]), rtol=1e-5,
                                       atol=1e-6, err_msg=k)


def test_step_equals_hand_written_minibatch_loop(single):
    """Epoch e uses key split(rng, E)[e]; its minibatches are rows minibatch_order(...)[m];
    each minibatch's weights come from its own full mask; one optimizer step per minibatch."""
    graphdef, cgraphdef, step, batch = single
    rng = jax.random.key(7)
    new, metrics = step(fresh_state()[2], batch, rng)
    state = fresh_state()[2]
    params, opt, cparams, copt = (state.params, state.opt_state, state.critic_params,
                                  state.critic_opt_state)
    tx, ctx = make_optimizer(UCFG.optimizer), make_optimizer(UCFG.value.optimizer)
    grads_fn = jax.jit(lambda p, cp, mb: minibatch_grads(
        graphdef, UCFG, p, mb, jnp.float32(0.1), critic_graphdef=cgraphdef, critic_params=cp),
        compiler_options=FAST)

    @functools.partial(jax.jit, static_argnums=0, compiler_options=FAST)
    def apply(tx, g, opt, params):
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt
    data = dict(tokens=batch.tokens_NxL, positions=batch.positions_NxL, valid=batch.valid_NxL,
                mask=batch.loss_mask_NxL, adv=batch.adv_NxL, logp_old=batch.logp_old_NxL,
                logp_ref=batch.logp_ref_NxL, logp_sampler=batch.logp_sampler_NxL,
                values_old=batch.values_old_NxL, returns=batch.returns_NxL)
    for e, key in enumerate(jax.random.split(rng, UCFG.epochs)):
        order = np.asarray(minibatch_order(key, N, UCFG.minibatches, True))
        assert sorted(order.ravel()) == list(range(N))
        for rows in order:
            mb = {k: jnp.asarray(v)[rows] for k, v in data.items()}
            m = mb["mask"]
            mb.update(w=token_mean_weights(m), w_metric=token_mean_weights(m),
                      w_value=aggregation_weights(m, "token_mean"))
            g, cg, _, _ = grads_fn(params, cparams, mb)
            params, opt = apply(tx, g, opt, params)
            cparams, copt = apply(ctx, cg, copt, cparams)
    leaves_close(new.params, params, atol=1e-6)
    leaves_close(new.critic_params, cparams, atol=1e-6)
    assert int(new.opt_step) == UCFG.epochs * UCFG.minibatches == int(metrics["opt_steps"])
    assert int(new.step) == 1 and float(metrics["skipped"]) == 0


def test_shuffle_is_deterministic_per_key(single):
    _, _, step, batch = single
    a = np.asarray(minibatch_order(jax.random.key(3), N, 4, True))
    assert a.shape == (4, 4) and sorted(a.ravel()) == list(range(N))
    np.testing.assert_array_equal(a, np.asarray(minibatch_order(jax.random.key(3), N, 4, True)))
    assert not np.array_equal(a, np.asarray(minibatch_order(jax.random.key(4), N, 4, True)))
    np.testing.assert_array_equal(np.asarray(minibatch_order(jax.random.key(3), N, 4, False)),
                                  np.arange(N).reshape(4, 4))
    # Same key: bitwise the same update; another key: another minibatch order, other params.
    p1 = step(fresh_state()[2], batch, jax.random.key(1))[0].params
    p2 = step(fresh_state()[2], batch, jax.random.key(1))[0].params
    p3 = step(fresh_state()[2], batch, jax.random.key(2))[0].params
    assert max_change(p1, p2) == 0.0 and max_change(p1, p3) > 1e-6


def test_nonfinite_guard_skips_counts_and_resets(single):
    _, _, step, batch = single
    state = fresh_state()[2]
    before = jax.tree.map(np.asarray, (state.params, state.critic_params))
    bad = dataclasses.replace(batch, adv_NxL=batch.adv_NxL.at[3, P].set(jnp.nan))
    state, metrics = step(state, bad, jax.random.key(0))
    # Row 3 is in one minibatch per epoch: 2 of the 4 optimizer steps are skipped.
    assert float(metrics["skipped"]) == 2 and int(state.nonfinite_total) == 2
    assert int(state.opt_step) == 2
    nan_NxL = jnp.full((N, L), jnp.nan, jnp.float32)    # not weak-typed: no recompile
    all_bad = dataclasses.replace(batch, adv_NxL=jnp.where(batch.loss_mask_NxL > 0, nan_NxL,
                                                           batch.adv_NxL))
    state = fresh_state()[2]
    state, metrics = step(state, all_bad, jax.random.key(0))
    leaves_close((state.params, state.critic_params), before, atol=0)
    assert int(state.nonfinite_streak) == 4 and int(state.nonfinite_total) == 4
    assert int(state.opt_step) == 0 and int(state.step) == 1
    with pytest.raises(NonFiniteError, match="4 optimizer steps in a row"):
        check_nonfinite(metrics["nonfinite_streak"], UCFG)
    # nan on padding (outside the loss mask) is harmless.
    pad_nan = dataclasses.replace(batch, adv_NxL=jnp.where(batch.loss_mask_NxL > 0,
                                                           batch.adv_NxL, nan_NxL))
    state, metrics = step(state, pad_nan, jax.random.key(0))
    assert int(state.nonfinite_streak) == 0 and int(state.nonfinite_total) == 4
    assert float(metrics["skipped"]) == 0 and np.isfinite(float(metrics["loss"]))


def test_adaptive_kl_coefficient_and_value_loss(single):
    _, _, step, batch = single
    state = fresh_state()[2]
    m = np.asarray(batch.loss_mask_NxL)
    lr = np.asarray(batch.logp_ref_NxL - batch.logp_old_NxL)
    kl = ((np.exp(lr) - 1 - lr) * m).sum(-1).mean()      # k3 summed per row, mean over rows
    err = np.clip(kl / 0.5 - 1, -0.2, 0.2)
    value_losses = []
    for i in range(6):
        state, metrics = step(state, batch, jax.random.key(i))
        if i == 0:
            np.testing.assert_allclose(float(metrics["rollout_kl"]), kl, rtol=1e-5)
            np.testing.assert_allclose(float(state.kl_coef), 0.1 * (1 + err * N / 100.0),
                                       rtol=1e-6)
        value_losses.append(float(metrics["value_loss"]))
    assert value_losses[-1] < 0.5 * value_losses[0], value_losses


def test_refresh_reference_copies_policy(single):
    _, _, step, batch = single
    state = fresh_state()[2]
    init = jax.tree.map(np.asarray, state.params)
    state, _ = step(state, batch, jax.random.key(0))
    leaves_close(state.ref_params, init, atol=0)              # reference stays frozen
    state = refresh_reference(state)
    leaves_close(state.ref_params, state.params, atol=0)
    state, _ = step(state, batch, jax.random.key(1))           # donation keeps both valid
    assert max_change(state.ref_params, state.params) > 1e-6
    with pytest.raises(ValueError, match="no reference"):
        refresh_reference(dataclasses.replace(state, ref_params=None))


def test_train_state_checkpoint_round_trip(single, tmp_path):
    from rlcot.checkpoint import Checkpointer
    _, _, step, batch = single
    state, _ = step(fresh_state()[2], batch, jax.random.key(0))
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, state, {"note": "rl"})
    ckpt.wait()
    got_step, restored, meta = ckpt.restore(fresh_state()[2])
    ckpt.close()
    assert got_step == 1 and meta == {"note": "rl"}
    leaves_close(restored, state, atol=0)
    assert int(restored.opt_step) == 4 and restored.critic_opt_state is not None


def test_minibatch_without_tokens_takes_no_step():
    """A minibatch whose rows are all masked out (e.g. dynamic-sampling leftovers) must not
    move Adam's moments or apply weight decay; other minibatches step as usual."""
    from rlcot.rl.aggregation import AggregationConfig
    cfg = UpdateConfig(objective=ObjectiveConfig(aggregation=AggregationConfig(
                           mode="constant", max_tokens=L - P)),
                       optimizer=OptimizerConfig(lr=0.05, weight_decay=0.1),
                       minibatches=2, shuffle=False)
    graphdef, params = tr.init_params(CFG, seed=1)
    state0 = init_train_state(cfg, params)
    step = make_update_step(graphdef, cfg, state0, compiler_options=FAST)
    batch = make_batch(graphdef, params)
    copy = lambda s: jax.tree.map(jnp.copy, s)  # noqa: E731  (the step donates its state)
    before = jax.tree.map(np.asarray, (state0.params, state0.opt_state))
    empty = dataclasses.replace(batch, loss_mask_NxL=jnp.zeros_like(batch.loss_mask_NxL))
    state, metrics = step(copy(state0), empty, jax.random.key(0))
    leaves_close((state.params, state.opt_state), before, atol=0)
    assert int(state.opt_step) == 0 and float(metrics["opt_steps"]) == 0
    assert float(metrics["skipped_empty"]) == 2 and float(metrics["skipped"]) == 0
    assert int(state.nonfinite_streak) == 0 and int(state.nonfinite_total) == 0
    # The old behaviour applied the optimizer to the zero gradient: weight decay alone moves
    # the weights by lr * wd * w (AdamW), and the step counter in the moments advances.
    tx = make_optimizer(cfg.optimizer)
    zeros = jax.tree.map(jnp.zeros_like, state0.params)
    upd, _ = tx.update(zeros, state0.opt_state, state0.params)
    moved = max_change(optax.apply_updates(state0.params, upd), state0.params)
    assert moved > 1e-4, moved
    # First minibatch (rows 0..7, no shuffling) empty, second one real: exactly one step,
    # the same as a step on the real half alone.
    half = dataclasses.replace(
        batch, loss_mask_NxL=jnp.asarray(batch.loss_mask_NxL).at[:N // 2].set(0.0))
    state, metrics = step(copy(state0), half, jax.random.key(0))
    assert int(state.opt_step) == 1 and float(metrics["skipped_empty"]) == 1
    one_mb = UpdateConfig(objective=cfg.objective, optimizer=cfg.optimizer, shuffle=False)
    rows = lambda x: x[N // 2:] if x is not None else None  # noqa: E731
    real = jax.tree.map(rows, half)
    ref_step = make_update_step(graphdef, one_mb, state0, compiler_options=FAST)
    ref_state, _ = ref_step(copy(state0), real, jax.random.key(0))
    leaves_close(state.params, ref_state.params, atol=1e-6)
