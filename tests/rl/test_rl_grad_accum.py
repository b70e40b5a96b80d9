"""Four micro-batches reproduce the full-batch gradient (fp32, 1e-6 relative) for every
aggregation mode and every policy loss, with and without KL-in-loss, entropy bonus and TIS."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlcot.rl import metrics as M
from rlcot.rl.aggregation import AGGREGATIONS, aggregate, aggregation_weights, token_mean_weights
from rlcot.rl.kl import KLConfig
from rlcot.rl.losses import PolicyLossConfig, entropy_from_logits
from rlcot.rl.objective import ObjectiveConfig, split_aux, token_objective

V, T, B, N_MICRO = 5, 6, 8, 4
LENGTHS = np.array([6, 1, 3, 0, 5, 2, 6, 4])   # row 3: padding row with no valid token
# Sequence-constant advantages, signs chosen so that every clip branch fires on this data.
ADV_B = jnp.array([1.0, -1.5, 0.7, 0.5, -1.0, 1.2, 2.0, -0.4])

POLICIES = {
    "ppo_clip": PolicyLossConfig("ppo_clip", eps_low=0.2, eps_high=0.28, dual_clip_c=1.5),
    "gspo": PolicyLossConfig("gspo", eps_low=0.02, eps_high=0.03),
    "pg": PolicyLossConfig("pg"),
    "kimi": PolicyLossConfig("kimi", tau=0.5),
}
EXTRAS = {
    "plain": {},
    "kl_entropy_tis": dict(kl=KLConfig(estimator="k3", placement="loss", coef=0.05),
                           entropy_coef=0.01, tis_cap=1.5),
}


def policy(params, inputs_BxT, targets_BxT):
    """Tiny differentiable stand-in: logits are a linear map of the one-hot input token."""
    logits_BxTxV = jax.nn.one_hot(inputs_BxT, V) @ params["w"] + params["b"]
    logp_BxT = jnp.take_along_axis(jax.nn.log_softmax(logits_BxTxV), targets_BxT[..., None],
                                   -1)[..., 0]
    return logp_BxT, entropy_from_logits(logits_BxTxV)


@pytest.fixture(scope="module")
def setup():
    k = jax.random.split(jax.random.key(0), 9)
    params = {"w": 0.5 * jax.random.normal(k[0], (V, V)), "b": 0.1 * jax.random.normal(k[1], (V,))}
    perturb = lambda p, key: jax.tree.map(  # noqa: E731
        lambda x: x + 0.3 * jax.random.normal(key, x.shape), p)
    inputs = jax.random.randint(k[2], (B, T), 0, V)
    targets = jax.random.randint(k[3], (B, T), 0, V)
    mask = (jnp.arange(T)[None, :] < LENGTHS[:, None]).astype(jnp.float32)
    logp_old, _ = policy(perturb(params, k[4]), inputs, targets)
    logp_ref, _ = policy(perturb(params, k[5]), inputs, targets)
    batch = dict(inputs=inputs, targets=targets, mask=mask, logp_old=logp_old,
                 logp_ref=logp_ref, logp_sampler=logp_old + 0.3 * jax.random.normal(k[6], (B, T)),
                 adv=jnp.broadcast_to(ADV_B[:, None], (B, T)))
    return params, batch


@functools.partial(jax.jit, static_argnums=0)
def loss_and_grad(cfg, params, batch, w_BxT):
    def loss_fn(p):
        logp, ent = policy(p, batch["inputs"], batch["targets"])
        loss_BxT, _ = token_objective(cfg, logp, batch["logp_old"], batch["adv"], batch["mask"],
                                      logp_ref_BxT=batch["logp_ref"], entropy_BxT=ent,
                                      logp_sampler_BxT=batch["logp_sampler"])
        return aggregate(loss_BxT, w_BxT)
    return jax.value_and_grad(loss_fn)(params)


def rows(tree, s):
    return jax.tree.map(lambda x: x[s], tree)


def rel_err(a, b):
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    num = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(a, b))
    return num / max(float(jnp.max(jnp.abs(x))) for x in a)


@pytest.mark.parametrize("extra", sorted(EXTRAS))
@pytest.mark.parametrize("loss_name", sorted(POLICIES))
def test_microbatches_match_full_batch(setup, loss_name, extra):
    params, batch = setup
    cfg = ObjectiveConfig(policy=POLICIES[loss_name], **EXTRAS[extra])
    mb = B // N_MICRO
    for mode in AGGREGATIONS:
        kw = {"max_tokens": batch["mask"].shape[1]} if mode == "constant" else {}
        w = aggregation_weights(batch["mask"], mode, **kw)
        full_loss, full_grad = loss_and_grad(cfg, params, batch, w)
        acc_loss, acc_grad = 0.0, jax.tree.map(jnp.zeros_like, params)
        for i in range(N_MICRO):
            s = slice(i * mb, (i + 1) * mb)
            l, g = loss_and_grad(cfg, params, rows(batch, s), w[s])
            acc_loss, acc_grad = acc_loss + l, jax.tree.map(jnp.add, acc_grad, g)
        assert float(jnp.max(jnp.abs(full_grad["w"]))) > 1e-3, "degenerate test: no gradient"
        assert rel_err(full_grad, acc_grad) <= 1e-6, (mode, rel_err(full_grad, acc_grad))
        np.testing.assert_allclose(float(acc_loss), float(full_loss), rtol=1e-6, atol=1e-7)
        if mode == "constant":
            continue
        # The per-micro-batch normalisation bug: weights from each micro-batch's own mask,
        # micro-batch gradients averaged. It gives a clearly different gradient.
        bug = jax.tree.map(jnp.zeros_like, params)
        for i in range(N_MICRO):
            s = slice(i * mb, (i + 1) * mb)
            _, g = loss_and_grad(cfg, params, rows(batch, s),
                                 aggregation_weights(batch["mask"][s], mode))
            bug = jax.tree.map(lambda a, b: a + b / N_MICRO, bug, g)
        assert rel_err(full_grad, bug) > 1e-2, (mode, rel_err(full_grad, bug))


def test_clipping_is_exercised_and_metrics_accumulate_exactly(setup):
    """The data above really clips (so the clipped branches are covered by the gradient test),
    and metrics accumulated over micro-batches equal the full-batch metrics."""
    params, batch = setup
    logp, ent = policy(params, batch["inputs"], batch["targets"])
    for name in ("ppo_clip", "gspo"):
        _, aux = POLICIES[name](logp, batch["logp_old"], batch["adv"], batch["mask"])
        dual = ("clipped_dual",) if name == "ppo_clip" else ()
        for k in ("clipped_low", "clipped_high") + dual:
            assert float(aux[k].sum()) > 0, (name, k)
    cfg = ObjectiveConfig(policy=POLICIES["ppo_clip"], **EXTRAS["kl_entropy_tis"])

    def micro_metrics(s):
        _, aux = token_objective(cfg, logp[s], batch["logp_old"][s], batch["adv"][s],
                                 batch["mask"][s], logp_ref_BxT=batch["logp_ref"][s],
                                 entropy_BxT=ent[s], logp_sampler_BxT=batch["logp_sampler"][s])
        _, diag = split_aux(aux)
        return M.token_metrics(diag, w_metric[s], batch["mask"][s])

    w_metric = token_mean_weights(batch["mask"])
    full = M.finalize_metrics(micro_metrics(slice(None)))
    acc = None
    mb = B // N_MICRO
    for i in range(N_MICRO):
        part = micro_metrics(slice(i * mb, (i + 1) * mb))
        acc = part if acc is None else M.accumulate_metrics(acc, part)
    acc = M.finalize_metrics(acc)
    assert set(full) == set(acc)
    for k in full:
        np.testing.assert_allclose(float(acc[k]), float(full[k]), rtol=1e-6, atol=1e-7, err_msg=k)
    for k in ("clipped_low_frac", "clipped_high_frac", "clipped_dual_frac", "tis_capped_frac"):
        assert 0.0 < float(full[k]) < 1.0, (k, full[k])
    assert float(full["ratio_min"]) < 0.8 < 1.28 < float(full["ratio_max"])
