"""With the real tiny transformer, 1 and 4 micro-batches give the same minibatch gradient in
every aggregation mode (policy and critic), and the on-policy first step reads -mean(A)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlcot.models import presets
from rlcot.models import transformer as tr
from rlcot.rl.aggregation import AGGREGATIONS, aggregation_weights, token_mean_weights
from rlcot.rl.kl import KLConfig
from rlcot.rl.logprobs import token_logprobs
from rlcot.rl.losses import PolicyLossConfig
from rlcot.rl.objective import ObjectiveConfig
from rlcot.rl.state import UpdateConfig
from rlcot.rl.update import minibatch_grads
from rlcot.rl.value import ValueConfig, init_value_params

S, L, P = 8, 12, 4          # rows, sequence length, prompt length
CFG = presets.get_config("tiny", vocab_size=64, d_model=64, mlp_dim=128, head_dim=16)
# XLA:CPU options for these tests: no LLVM optimisation (compiles ~3x faster; shapes are tiny)
# and no YNNPACK fusions, whose row reductions (rms-norm means, softmax) round differently with
# the number of rows in the batch (~4e-7 relative), so per-row numerics would depend on how
# rows are grouped into micro-batches or shards.
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_experimental_ynn_fusion_type": ""}
LENGTHS = np.array([8, 1, 3, 0, 5, 2, 8, 6])   # completion tokens; row 3 has none
ADV = np.array([1.0, -1.5, 0.7, 0.5, -1.0, 1.2, 2.0, -0.4], np.float32)

CONFIGS = {
    # Token-level loss with every extra, and a critic.
    "ppo": UpdateConfig(
        objective=ObjectiveConfig(policy=PolicyLossConfig(eps_low=0.2, eps_high=0.28,
                                                          dual_clip_c=1.5),
                                  kl=KLConfig(placement="loss", coef=0.05),
                                  entropy_coef=0.01, tis_cap=1.5),
        value=ValueConfig(), logprob_chunk=5),
    # Sequence-level ratio: rows must stay whole inside micro-batches.
    "gspo": UpdateConfig(objective=ObjectiveConfig(policy=PolicyLossConfig(
        "gspo", eps_low=0.02, eps_high=0.03)), logprob_chunk=5),
}


@pytest.fixture(scope="module")
def setup():
    graphdef, params = tr.init_params(CFG, seed=1)
    cgraphdef, cparams = init_value_params(CFG, seed=2, body_params=params)
    # A non-zero head so the critic's body gets gradients too.
    cparams["head"].set_value(0.3 * jax.random.normal(jax.random.key(9), (CFG.d_model,)))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CFG.vocab_size, (S, L)).astype(np.int32)
    valid = np.arange(L)[None, :] < (P + LENGTHS)[:, None]
    positions = np.asarray(tr.positions_from_mask(valid))
    mask = ((np.arange(L)[None, :] >= P) & valid).astype(np.float32)
    logp, _ = jax.jit(lambda p: token_logprobs(graphdef, p, tokens, positions, valid),
                      compiler_options=FAST)(params)
    noise = lambda s: jnp.asarray(rng.normal(size=(S, L)) * s, jnp.float32)  # noqa: E731
    mb = dict(tokens=tokens, positions=positions, valid=valid, mask=mask,
              adv=jnp.asarray(ADV[:, None] * mask), logp_old=(logp + noise(0.3)) * mask,
              logp_ref=(logp + noise(0.3)) * mask, logp_sampler=(logp + noise(0.3)) * mask,
              values_old=noise(1.0) * mask, returns=noise(1.0) * mask)
    return graphdef, params, cgraphdef, cparams, mb, logp


@functools.lru_cache(maxsize=None)
def grads_fn(name, micro_batches, graphdef, cgraphdef):
    cfg = UpdateConfig(**{**CONFIGS[name].__dict__, "micro_batches": micro_batches})
    critic = cfg.value is not None

    @functools.partial(jax.jit, compiler_options=FAST)
    def fn(params, cparams, mb):
        return minibatch_grads(graphdef, cfg, params, mb, jnp.float32(0.05),
                               critic_graphdef=cgraphdef if critic else None,
                               critic_params=cparams if critic else None)
    return fn


def rel_err(a, b):
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    num = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(a, b))
    return num / max(float(jnp.max(jnp.abs(x))) for x in a)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_four_micro_batches_equal_one(setup, name):
    graphdef, params, cgraphdef, cparams, mb, _ = setup
    critic = CONFIGS[name].value is not None
    if not critic:
        mb = {k: v for k, v in mb.items() if k not in ("values_old", "returns", "logp_sampler")}
    one, four = (grads_fn(name, k, graphdef, cgraphdef) for k in (1, 4))
    for mode in AGGREGATIONS:
        # Weights from the whole minibatch, before it is split (as the update step does).
        kw = {"max_tokens": mb["mask"].shape[1]} if mode == "constant" else {}
        w = dict(w=aggregation_weights(mb["mask"], mode, **kw),
                 w_metric=token_mean_weights(mb["mask"]))
        if critic:
            w["w_value"] = aggregation_weights(mb["mask"], "seq_mean_token_mean")
        g1, cg1, loss1, m1 = one(params, cparams, {**mb, **w})
        g4, cg4, loss4, m4 = four(params, cparams, {**mb, **w})
        assert float(jnp.max(jnp.abs(g1["embed"].get_value()))) > 1e-4, "no gradient"
        assert rel_err(g1, g4) <= 1e-6, (name, mode, rel_err(g1, g4))
        np.testing.assert_allclose(float(loss4), float(loss1), rtol=1e-6, atol=1e-7)
        for k in m1:
            np.testing.assert_allclose(float(m4[k]), float(m1[k]), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} {mode} {k}")
        if critic:
            assert float(jnp.max(jnp.abs(cg1["body"]["embed"].get_value()))) > 1e-5
            assert rel_err(cg1, cg4) <= 1e-6, (name, mode, rel_err(cg1, cg4))
    if name == "ppo":   # the clip branches really fire on this data
        assert 0 < float(m1["clipped_low_frac"]) < 1 and 0 < float(m1["clipped_high_frac"]) < 1


def test_on_policy_first_step_by_hand(setup):
    """logp_old == logp_ref == logp_sampler == current logp: ratio 1, no clipping, TIS weight
    1, KL 0, so with token-mean aggregation pg_loss = -sum(A * mask) / sum(mask)."""
    graphdef, params, cgraphdef, cparams, mb, logp = setup
    m = mb["mask"]
    on = dict(mb, logp_old=logp * m, logp_ref=logp * m, logp_sampler=logp * m,
              w=token_mean_weights(m), w_metric=token_mean_weights(m),
              w_value=token_mean_weights(m))
    _, _, loss, met = grads_fn("ppo", 1, graphdef, cgraphdef)(params, cparams, on)
    # Valid completion tokens: 8 + 1 + 3 + 0 + 5 + 2 + 8 + 6 = 33;
    # sum(A * len) = 8 - 1.5 + 2.1 + 0 - 5 + 2.4 + 16 - 2.4 = 19.6, so pg_loss = -19.6 / 33.
    expected_pg = -19.6 / 33
    np.testing.assert_allclose(float(met["pg_loss"]), expected_pg, rtol=1e-6)
    np.testing.assert_allclose(float(met["adv_mean"]), -expected_pg, rtol=1e-6)
    for k in ("ratio_mean", "ratio_min", "ratio_max", "tis_weight_mean"):
        np.testing.assert_allclose(float(met[k]), 1.0, rtol=0, atol=1e-6, err_msg=k)
    for k in ("clipped_low_frac", "clipped_high_frac", "clipped_dual_frac", "kl_ref_mean",
              "kl_loss"):
        assert abs(float(met[k])) <= 1e-7, (k, met[k])
    # Total = policy term + entropy bonus (-0.01 * mean entropy) + KL term (0).
    np.testing.assert_allclose(float(loss), expected_pg - 0.01 * float(met["entropy_mean"]),
                               rtol=1e-6)
