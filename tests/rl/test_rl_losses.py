"""Policy losses, value loss, entropy and TIS against hand-computed values and gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlcot.rl import losses as L
from rlcot.rl.aggregation import aggregate, aggregation_weights


def close(x, y, tol=1e-6):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


# PPO rows: ratios given directly (logp_old = 0, logp = log ratio).
RATIO = jnp.array([[0.5, 1.0, 1.5], [0.5, 1.0, 1.5], [4.0, 2.0, 0.5]])
ADV = jnp.array([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
ONES = jnp.ones((3, 3))


def test_ppo_clip_higher_by_hand():
    logp = jnp.log(RATIO)
    loss, aux = L.ppo_clip(logp, jnp.zeros_like(logp), ADV, ONES, eps_low=0.2, eps_high=0.28)
    # clip(ratio) to [0.8, 1.28].
    # A=+1: max(-rho, -clip) = [max(-.5,-.8), -1, max(-1.5,-1.28)] = [-.5, -1, -1.28]
    # A=-1: max(rho, clip) = [max(.5,.8), 1, max(1.5,1.28)] = [.8, 1, 1.5]
    # A=-2, rho [4, 2, .5]: max(2rho, 2clip) = [max(8,2.56), max(4,2.56), max(1,1.6)] = [8, 4, 1.6]
    close(loss, [[-0.5, -1.0, -1.28], [0.8, 1.0, 1.5], [8.0, 4.0, 1.6]])
    close(aux["clipped_high"], [[0, 0, 1], [0, 0, 0], [0, 0, 0]])
    close(aux["clipped_low"], [[0, 0, 0], [1, 0, 0], [0, 0, 1]])
    close(aux["ratio"], RATIO)
    assert "clipped_dual" not in aux
    # Gradient wrt logp is -A * rho where unclipped, 0 where clipped.
    g = jax.grad(lambda lp: L.ppo_clip(lp, jnp.zeros_like(lp), ADV, ONES, eps_low=0.2,
                                       eps_high=0.28)[0].sum())(logp)
    close(g, [[-0.5, -1.0, 0.0], [0.0, 1.0, 1.5], [8.0, 4.0, 0.0]], tol=1e-5)


def test_dual_clip_by_hand():
    logp = jnp.log(RATIO)
    loss, aux = L.ppo_clip(logp, jnp.zeros_like(logp), ADV, ONES, eps_low=0.2, eps_high=0.28,
                           dual_clip_c=3.0)
    # Only negative advantages are capped at c|A|: row 1 cap 3 (nothing above), row 2 cap 6:
    # [min(8, 6), min(4, 6), 1.6] = [6, 4, 1.6]. Row 0 (A > 0) unchanged.
    close(loss, [[-0.5, -1.0, -1.28], [0.8, 1.0, 1.5], [6.0, 4.0, 1.6]])
    close(aux["clipped_dual"], [[0, 0, 0], [0, 0, 0], [1, 0, 0]])
    g = jax.grad(lambda lp: L.ppo_clip(lp, jnp.zeros_like(lp), ADV, ONES,
                                       dual_clip_c=3.0)[0][2].sum())(logp)
    close(g[2], [0.0, 4.0, 0.0], tol=1e-5)   # the capped token gives no gradient


def test_gspo_sequence_ratio_length_normalised():
    # Row valid tokens log-ratios 0.2 and 0.4 (third token is padding with garbage):
    # s = exp(mean(0.2, 0.4)) = exp(0.3) = 1.349859 (not exp(0.6) = 1.822 unnormalised).
    logp_old = jnp.zeros((2, 3))
    logp = jnp.array([[0.2, 0.4, 7.0], [0.2, 0.4, 7.0]])
    mask = jnp.array([[1, 1, 0], [1, 1, 0]])
    adv = jnp.array([[1.0] * 3, [-1.0] * 3])
    s = math.exp(0.3)
    loss, aux = L.gspo(logp, logp_old, adv, mask, eps_low=0.2, eps_high=0.28)
    # A = +1: max(-1.349859, -1.28) = -1.28 (clipped high); A = -1: max(1.3499, 1.28) = s.
    close(loss, [[-1.28, -1.28, 0.0], [s, s, 0.0]])
    close(aux["ratio"], [[s, s, 0.0], [s, s, 0.0]])
    close(aux["clipped_high"], [[1, 1, 0], [0, 0, 0]])

    # Gradient equals the paper's sequence objective -1/G sum_b min(s_b A_b, clip(s_b) A_b)
    # under seq_mean_token_mean: row 0 clipped -> 0; row 1: d(s A)/d logp_t with
    # s = exp(mean) is s/|y| per valid token: -(-1) * s / 2 / G(=2) = s / 4 = 0.337465.
    w = aggregation_weights(mask, "seq_mean_token_mean")
    g = jax.grad(lambda lp: aggregate(L.gspo(lp, logp_old, adv, mask, eps_low=0.2,
                                             eps_high=0.28)[0], w))(logp)
    close(g, [[0, 0, 0], [s / 4, s / 4, 0]])


def test_policy_gradient_by_hand():
    logp = jnp.log(jnp.array([[0.5, 0.25]]))
    adv = jnp.array([[2.0, 2.0]])
    loss, aux = L.policy_gradient(logp, logp, adv, jnp.ones((1, 2)))
    # -A log p = -2 * (-0.693147, -1.386294).
    close(loss, [[2 * math.log(2), 4 * math.log(2)]])
    close(aux["ratio"], [[1.0, 1.0]])
    g = jax.grad(lambda lp: L.policy_gradient(lp, logp, adv, jnp.ones((1, 2)))[0].sum())(logp)
    close(g, [[-2.0, -2.0]])


def test_kimi_surrogate_by_hand():
    tau = 0.5
    logp_old = jnp.zeros((2, 3))
    logp = jnp.array([[0.1, -0.3, 0.4], [0.2, 0.2, 9.0]])
    mask = jnp.array([[1, 1, 1], [1, 1, 0]])
    adv = jnp.array([[1.0] * 3, [-0.5] * 3])
    loss, _ = L.kimi(logp, logp_old, adv, mask, tau=tau)
    # Row 0: S = 0.1 - 0.3 + 0.4 = 0.2; (1 - 0.5*0.2)^2 / (2*0.5) = 0.81.
    # Row 1: S = 0.4 (padding ignored); (-0.5 - 0.2)^2 / 1 = 0.49.
    close(loss, [[0.81] * 3, [0.49, 0.49, 0.0]])
    # seq_mean_token_mean: mean over sequences = (0.81 + 0.49) / 2 = 0.65.
    w = aggregation_weights(mask, "seq_mean_token_mean")
    close(aggregate(loss, w), 0.65)
    # Gradient = -(1/G) * (A - tau S) per valid token (minus the paper's gradient
    # (r - r_bar) grad log pi - tau/2 grad S^2, averaged over G = 2 samples):
    # row 0: -(0.9)/2 = -0.45; row 1: -(-0.7)/2 = 0.35.
    g = jax.grad(lambda lp: aggregate(L.kimi(lp, logp_old, adv, mask, tau=tau)[0], w))(logp)
    close(g, [[-0.45] * 3, [0.35, 0.35, 0.0]])


def test_losses_zero_on_masked_tokens_and_finite_for_extreme_ratios():
    logp = jnp.array([[50.0, -50.0, 0.0]])
    logp_old = jnp.array([[-50.0, 50.0, 0.0]])
    mask = jnp.array([[1, 1, 0]])
    adv = jnp.array([[-1.0, 1.0, 3.0]])
    for name, fn in L.POLICY_LOSSES.items():
        loss, aux = fn(logp, logp_old, adv, mask)
        assert jnp.all(jnp.isfinite(loss)), name
        assert loss[0, 2] == 0.0, name
        for k, v in aux.items():
            assert jnp.all(jnp.isfinite(v)), (name, k)
        g = jax.grad(lambda lp: fn(lp, logp_old, adv, mask)[0].sum())(logp)
        assert jnp.all(jnp.isfinite(g)), name
    # PPO ratio clamped at exp(20) (log ratio 100 -> 20).
    _, aux = L.ppo_clip(logp, logp_old, adv, mask)
    np.testing.assert_allclose(float(aux["ratio"][0, 0]), math.exp(20), rtol=1e-6)


def test_tis_weights():
    logp_sampler = jnp.zeros((1, 3))
    logp_old = jnp.log(jnp.array([[2.0, 0.5, 10.0]]))
    # min(exp(logp_old - logp_sampler), 3) = [2, 0.5, 3].
    close(L.tis_weights(logp_old, logp_sampler, cap=3.0), [[2.0, 0.5, 3.0]])
    g = jax.grad(lambda lo: L.tis_weights(lo, logp_sampler, cap=3.0).sum())(logp_old)
    close(g, jnp.zeros((1, 3)))
    assert jnp.isfinite(L.tis_weights(jnp.full((1, 1), 1e6), jnp.zeros((1, 1)), cap=1e30)).all()
    with pytest.raises(ValueError, match="cap must be > 0"):
        L.tis_weights(logp_old, logp_sampler, cap=0.0)


def test_entropy_from_logits():
    logits = jnp.array([[[0.0, 0.0, -jnp.inf, -jnp.inf], [0.0, 0.0, 0.0, 0.0],
                         [0.0, -jnp.inf, -jnp.inf, -jnp.inf]]])
    # ln 2, ln 4, 0.
    close(L.entropy_from_logits(logits), [[math.log(2), math.log(4), 0.0]])
    g = jax.grad(lambda z: L.entropy_from_logits(z).sum())(logits)
    assert jnp.all(jnp.isfinite(g))
    # p = (e^1, 1)/(e+1) = (0.731059, 0.268941): H = -(p ln p + q ln q) = 0.582203.
    close(L.entropy_from_logits(jnp.array([[[1.0, 0.0]]])), [[0.5822031]])


def test_value_loss():
    v = jnp.array([[1.0, 0.5, 1.2]])
    v_old = jnp.array([[0.8, 0.8, 1.0]])
    ret = jnp.array([[0.5, 1.0, 1.3]])
    loss, aux = L.value_loss(v, v_old, ret, jnp.ones((1, 3)), clip_eps=0.1)
    # t0: (1-.5)^2 = .25 vs clipped v .9: .16 -> .5*.25 = .125
    # t1: (.5-1)^2 = .25 vs clipped v .7: .09 -> .125
    # t2: (1.2-1.3)^2 = .01 vs clipped v 1.1: .04 -> .5*.04 = .02 (clipped term wins)
    close(loss, [[0.125, 0.125, 0.02]])
    close(aux["vf_clipped"], [[0, 0, 1]])
    close(L.value_loss(v, v_old, ret, jnp.ones((1, 3)), clip_eps=None)[0],
          [[0.125, 0.125, 0.005]])


def test_config_validation_and_dispatch():
    cfg = L.PolicyLossConfig(name="ppo_clip", eps_low=0.2, eps_high=0.28, dual_clip_c=3.0)
    logp = jnp.log(RATIO)
    close(cfg(logp, jnp.zeros_like(logp), ADV, ONES)[0],
          L.ppo_clip(logp, jnp.zeros_like(logp), ADV, ONES, eps_high=0.28, dual_clip_c=3.0)[0])
    assert L.PolicyLossConfig(name="kimi", tau=0.3).knobs() == {"tau": 0.3,
                                                                 "log_ratio_clamp": 20.0}
    jitted = jax.jit(lambda lp: cfg(lp, jnp.zeros_like(lp), ADV, ONES)[0])
    close(jitted(logp), cfg(logp, jnp.zeros_like(logp), ADV, ONES)[0])
    with pytest.raises(ValueError, match="unknown policy loss 'ppo'"):
        L.PolicyLossConfig(name="ppo")
    with pytest.raises(ValueError, match="dual_clip_c must be > 1"):
        L.PolicyLossConfig(dual_clip_c=0.5)
    with pytest.raises(ValueError, match="eps_low"):
        L.PolicyLossConfig(eps_low=1.0)
    with pytest.raises(ValueError, match="tau must be > 0"):
        L.PolicyLossConfig(name="kimi", tau=0.0)
    with pytest.raises(ValueError, match="equal"):
        L.ppo_clip(logp, logp[:2], ADV, ONES)


def test_gspo_by_name_uses_the_papers_clip_range():
    # GSPO selected by name used to inherit PPO's 0.2 / 0.2 from the config defaults.
    assert L.PolicyLossConfig(name="gspo").clip_range == (3e-4, 4e-4)
    assert L.PolicyLossConfig(name="gspo").knobs()["eps_low"] == 3e-4
    assert L.PolicyLossConfig(name="ppo_clip").clip_range == (0.2, 0.2)
    assert L.PolicyLossConfig(name="ppo_clip", eps_high=0.28).clip_range == (0.2, 0.28)
    assert L.PolicyLossConfig(name="gspo", eps_high=1e-3).clip_range == (3e-4, 1e-3)
    assert L.PolicyLossConfig(name="pg").clip_range is None
    # One row of 2 tokens with log-ratios 0.001 and 0.002: s = exp(0.0015) = 1.0015011, A = 1.
    # Paper range: clip(s) = 1.0004 -> loss per token -1.0004 (the ratio is clipped).
    # Old (PPO's 0.2): s is far inside [0.8, 1.2] -> loss -1.0015011 (effectively unclipped).
    logp = jnp.array([[0.001, 0.002]])
    zeros, ones = jnp.zeros_like(logp), jnp.ones_like(logp)
    loss, aux = L.PolicyLossConfig(name="gspo")(logp, zeros, ones, ones)
    close(loss, [[-1.0004, -1.0004]])
    close(aux["clipped_high"], [[1.0, 1.0]])
    old, old_aux = L.gspo(logp, zeros, ones, ones, eps_low=0.2, eps_high=0.2)
    close(old, [[-math.exp(0.0015)] * 2])
    close(old_aux["clipped_high"], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="only used by"):
        L.PolicyLossConfig(name="pg", eps_low=0.2)
