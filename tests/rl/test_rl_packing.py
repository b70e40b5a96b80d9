"""Packed rows (rl.packing) give the padded computation's log-probs, values, gradients and
update, on ragged batches, in every aggregation mode; plans cover each needed position once,
use few slots, and keep the number of compiled shapes low."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlcot.models import presets
from rlcot.models import transformer as tr
from rlcot.rl.aggregation import AGGREGATIONS, aggregation_weights, token_mean_weights
from rlcot.rl.batch import UpdateBatch
from rlcot.rl.kl import KLConfig
from rlcot.rl.logprobs import make_logprob_fn, token_logprobs
from rlcot.rl.losses import PolicyLossConfig
from rlcot.rl.objective import ObjectiveConfig
from rlcot.rl.optim import OptimizerConfig
from rlcot.rl.packing import needed_positions, plan_packing
from rlcot.rl.state import UpdateConfig, init_train_state
from rlcot.rl.update import make_update_step, minibatch_grads
from rlcot.rl.value import ValueConfig, init_value_params, make_value_fn

N, PB, T = 16, 6, 10          # rows, prompt bucket (left-padded), completion budget
L = PB + T
K = 2                         # micro-batches
# As in the other update tests: no LLVM optimisation, no YNNPACK fusions (whose row
# reductions round differently with the number of rows in a batch).
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_experimental_ynn_fusion_type": ""}
CFG = presets.get_config("tiny", vocab_size=64, d_model=64, mlp_dim=128, head_dim=16)
OPT = OptimizerConfig(lr=0.05, eps=1.0, max_grad_norm=1.0)


def ragged(seed: int, n: int = N, prompt_max: int = PB, completion_max: int = T):
    """Rollout-like rows: prompts left-padded to the bucket, completions right-padded; some
    rows have no completion token."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(1, prompt_max + 1, n)
    completion = rng.integers(0, completion_max + 1, n)
    completion[1] = 0
    valid = np.zeros((n, PB + T), bool)
    comp = np.zeros((n, PB + T), bool)
    for i in range(n):
        valid[i, PB - prompt[i]:PB + completion[i]] = True
        comp[i, PB:PB + completion[i]] = True
    tokens = rng.integers(0, CFG.vocab_size, (n, PB + T)).astype(np.int32)
    return tokens, np.asarray(tr.positions_from_mask(valid)), valid, comp


@pytest.fixture(scope="module")
def model():
    graphdef, params = tr.init_params(CFG, seed=1)
    cgraphdef, cparams = init_value_params(CFG, seed=2, body_params=params)
    cparams["head"].set_value(0.3 * jax.random.normal(jax.random.key(9), (CFG.d_model,)))
    return graphdef, params, cgraphdef, cparams


def test_plan_covers_each_needed_position_once():
    _, _, valid, comp = ragged(0, n=32)
    for mode in ("pack", "trim"):
        plan = plan_packing(valid.reshape(2, 16, L), comp.reshape(2, 16, L), micro_batches=K,
                            mode=mode, row_multiple=2)
        P, C, Q = plan.shape
        assert P % 2 == 0 and C % 32 == 0 and Q % 32 == 0 or Q == C
        need = needed_positions(valid, comp).reshape(2, 16, L)
        computed = (plan.back_GxKxSxL < P * Q).sum(1)          # [G, S, L]: micro-batches
        np.testing.assert_array_equal(computed, need.astype(int))
        # Every packed slot is a real token of its row, segments in order, rows whole.
        for g in range(2):
            for k in range(K):
                src, seg = plan.src_GxKxPxC[g, k], plan.seg_GxKxPxC[g, k]
                rows = np.where(seg > 0, src // L, -1)
                for p in range(P):
                    for s in set(rows[p][rows[p] >= 0]):
                        cols = src[p][rows[p] == s] % L
                        assert (np.diff(cols) == 1).all()
                        assert plan.member_GxKxS[g, k, s] == 1
                        # the query of position t is the slot of token t - 1
                        t = np.flatnonzero(need[g, s])
                        j = plan.back_GxKxSxL[g, k, s, t]
                        slot = plan.query_GxKxPxQ[g, k, p][j % Q]
                        np.testing.assert_array_equal(src[p][slot] % L, t - 1)
        assert plan.member_GxKxS.sum(1).max() <= 1              # a row in one micro-batch
        assert plan.packed_tokens <= plan.real_tokens <= valid.sum()


def grpo_like_rows(rng, growth: float = 1.0):
    """8 prompts x 8 samples: ~64-token prompts in a 96 bucket, ~50-token completions (x
    growth) of at most 128 (the padded rows have 224 slots)."""
    prompt = rng.integers(40, 90, 64)
    completion = np.clip(rng.normal(50 * growth, 30, 64).astype(int), 5, 128)
    col = np.arange(224)[None, :]
    valid = (col >= (96 - prompt)[:, None]) & (col < (96 + completion)[:, None])
    return valid, (col >= 96) & valid


def test_packing_uses_few_slots_on_grpo_like_rows():
    """4 micro-batches: packed slots ~1.1x the real tokens, logits at loss positions only."""
    rng = np.random.default_rng(0)
    ratios = {"pack": [], "trim": []}
    for _ in range(12):
        valid, comp = grpo_like_rows(rng)
        for mode in ratios:
            plan = plan_packing(valid[None], comp[None], micro_batches=4, mode=mode)
            ratios[mode].append(plan.slots / plan.real_tokens)
            # logits at loss positions only (padded: every one of the 64 x 223 positions)
            assert plan.logit_slots < (0.5 if mode == "pack" else 0.6) * 64 * 223
    # ~1.1: the row width is chosen for slots weighted by attention cost, not slots alone
    assert np.mean(ratios["pack"]) <= 1.12 and max(ratios["pack"]) < 1.2, ratios
    assert np.mean(ratios["trim"]) > 1.4, ratios        # padded: ~2.1


def test_a_run_with_growing_responses_compiles_few_shapes():
    """Responses grow 1.8x over 30 steps (as in R1-Zero): reusing compiled shapes, and
    leaving room in new ones, needs fewer shapes than planning each batch afresh, at a small
    cost in slots."""
    rng = np.random.default_rng(1)
    known, fresh_shapes, ratios = set(), set(), []
    for step in range(30):
        valid, comp = grpo_like_rows(rng, growth=1.0 + 0.8 * step / 30)
        plan = plan_packing(valid[None], comp[None], micro_batches=4, known=known)
        known.add(plan.shape)
        ratios.append(plan.slots / plan.real_tokens)
        fresh_shapes.add(plan_packing(valid[None], comp[None], micro_batches=4).shape)
    assert len(known) <= 5 and len(known) < len(fresh_shapes), (known, fresh_shapes)
    assert np.mean(ratios) < 1.2, ratios


@pytest.mark.parametrize("mode", ["pack", "trim"])
def test_packed_logprobs_and_values_equal_padded(model, mode):
    graphdef, params, cgraphdef, cparams = model
    tokens, positions, valid, comp = ragged(1)
    ref = make_logprob_fn(graphdef, params, chunk=4, compiler_options=FAST)
    fn = make_logprob_fn(graphdef, params, chunk=4, compiler_options=FAST, packing=mode)
    logp = np.asarray(ref(params, tokens, positions, valid))
    need = needed_positions(valid, comp)
    np.testing.assert_allclose(fn(params, tokens, positions, valid, comp),
                               np.where(need, logp, 0.0), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(fn(params, tokens, positions, valid), logp, atol=1e-5, rtol=1e-5)
    vref = make_value_fn(cgraphdef, cparams, compiler_options=FAST)
    vfn = make_value_fn(cgraphdef, cparams, compiler_options=FAST, packing=mode)
    values = np.asarray(vref(cparams, tokens, positions, valid))
    assert np.abs(values[need]).min() > 0                       # a real check, not 0 == 0
    np.testing.assert_allclose(vfn(cparams, tokens, positions, valid, comp),
                               np.where(need, values, 0.0), atol=1e-5, rtol=1e-5)


def test_logprob_fn_reuses_compiled_shapes(model):
    """A batch that fits a shape compiled before runs in it (no new compile)."""
    graphdef, params, _, _ = model
    fn = make_logprob_fn(graphdef, params, chunk=8, compiler_options=FAST, packing="pack")
    tokens, positions, valid, comp = ragged(1)
    fn(params, tokens, positions, valid, comp)
    short = comp & (np.arange(L)[None, :] < L - 1)            # one needed token less per row
    assert plan_packing(valid[None], short[None]).slots <= plan_packing(valid[None],
                                                                        comp[None]).slots
    np.testing.assert_allclose(fn(params, tokens, positions, valid, short),
                               np.where(needed_positions(valid, short),
                                        fn(params, tokens, positions, valid, comp), 0.0),
                               atol=1e-6)
    assert fn.jitted._cache_size() == 1


def _grads_fn(graphdef, cgraphdef, cfg, packed):
    def fn(params, cparams, mb, pack):
        g, cg, loss, metrics = minibatch_grads(graphdef, cfg, params, mb, jnp.float32(0.05),
                                               critic_graphdef=cgraphdef, critic_params=cparams,
                                               pack=pack if packed else None)
        return g, cg, loss, metrics
    return jax.jit(fn, compiler_options=FAST)


@pytest.mark.parametrize("policy", ["ppo_clip", "gspo"])
def test_packed_minibatch_gradients_equal_padded(model, policy):
    """Every aggregation mode, 2 micro-batches, a critic, KL in the loss and an entropy bonus:
    packed micro-batches (rows re-grouped by the packing) give the padded minibatch's
    gradients, loss and metrics."""
    graphdef, params, cgraphdef, cparams = model
    tokens, positions, valid, comp = ragged(2)
    logp, _ = jax.jit(lambda p: token_logprobs(graphdef, p, tokens, positions, valid),
                      compiler_options=FAST)(params)
    rng = np.random.default_rng(3)
    mask = comp.astype(np.float32)
    noise = lambda s: jnp.asarray(rng.normal(size=(N, L)) * s, jnp.float32) * mask  # noqa: E731
    mb = dict(tokens=tokens, positions=positions, valid=valid, mask=mask,
              adv=jnp.asarray(rng.normal(size=(N, 1)), jnp.float32) * mask,
              logp_old=logp * mask + noise(0.1), logp_ref=logp * mask + noise(0.3),
              values_old=noise(1.0), returns=noise(1.0))
    cfg = UpdateConfig(objective=ObjectiveConfig(
        policy=PolicyLossConfig(policy), kl=KLConfig(placement="loss", coef=0.05),
        entropy_coef=0.01), value=ValueConfig(), micro_batches=K, logprob_chunk=4)
    pack = {k: v[0] for k, v in plan_packing(valid[None], comp[None], micro_batches=K).arrays()
            .items()}
    padded_fn = _grads_fn(graphdef, cgraphdef, cfg, packed=False)
    packed_fn = _grads_fn(graphdef, cgraphdef, cfg, packed=True)
    modes = list(AGGREGATIONS) if policy == "ppo_clip" else ["seq_mean_token_mean"]
    for agg in modes:
        kw = {"max_tokens": T} if agg == "constant" else {}
        x = dict(mb, w=aggregation_weights(mask, agg, **kw), w_metric=token_mean_weights(mask),
                 w_value=aggregation_weights(mask, "seq_mean_token_sum"))
        g0, cg0, loss0, m0 = padded_fn(params, cparams, x, None)
        g1, cg1, loss1, m1 = packed_fn(params, cparams, x, pack)
        assert float(jnp.abs(jnp.asarray(jax.tree.leaves(g0)[0])).max()) > 0
        for a, b in zip(jax.tree.leaves((g0, cg0)), jax.tree.leaves((g1, cg1))):
            np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5, err_msg=agg)
        np.testing.assert_allclose(loss1, loss0, atol=1e-5, rtol=1e-5, err_msg=agg)
        for k in m0:
            np.testing.assert_allclose(m1[k], m0[k], atol=1e-5, rtol=1e-5, err_msg=f"{agg} {k}")


def test_packed_update_equals_padded_with_metrics(model):
    """The whole step, 2 epochs x 2 minibatches x 2 micro-batches, shuffled: the same new
    parameters and optimizer state as unpacked; real tokens, slots and their ratio reported."""
    graphdef, params, _, _ = model
    tokens, positions, valid, comp = ragged(4)
    mask = comp.astype(np.float32)
    logp, _ = jax.jit(lambda p: token_logprobs(graphdef, p, tokens, positions, valid),
                      compiler_options=FAST)(params)
    rng = np.random.default_rng(5)
    adv = jnp.asarray(rng.normal(size=(N, 1)), jnp.float32) * mask
    batch = UpdateBatch(tokens, positions, valid, mask, adv, logp_old_NxL=logp * mask)
    cfg = UpdateConfig(optimizer=OPT, epochs=2, minibatches=2, micro_batches=K,
                       logprob_chunk=4)
    out = {}
    for packing in ("none", "pack"):
        c = dataclasses.replace(cfg, packing=packing)
        state = init_train_state(c, jax.tree.map(jnp.copy, params))
        step = make_update_step(graphdef, c, state, compiler_options=FAST)
        out[packing] = step(state, batch, jax.random.key(7)), step.plan(batch, jax.random.key(7))
    (new0, m0), _ = out["none"]
    (new1, m1), pack = out["pack"]
    assert float(m0["opt_steps"]) == 4
    for a, b, p0 in zip(jax.tree.leaves(new0.params), jax.tree.leaves(new1.params),
                        jax.tree.leaves(params)):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)
    assert max(float(jnp.abs(a - p).max()) for a, p in
               zip(jax.tree.leaves(new0.params), jax.tree.leaves(params))) > 1e-3
    for k in ("loss", "ratio_mean", "entropy_mean", "grad_norm", "loss_tokens"):
        np.testing.assert_allclose(m1[k], m0[k], atol=1e-5, rtol=1e-5, err_msg=k)
    real = 2 * valid.sum()
    assert float(m0["update/real_tokens"]) == float(m1["update/real_tokens"]) == real
    assert float(m0["update/slots"]) == float(m0["tokens"]) == 2 * N * L
    assert float(m1["update/slots"]) == float(m1["tokens"]) == pack["src"].size
    np.testing.assert_allclose(float(m1["update/slots_per_real_token"]),
                               pack["src"].size / real, rtol=1e-6)
