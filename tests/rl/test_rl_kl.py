"""KL estimators, clamps, placement helpers and the coefficient controllers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlcot.rl import kl


def close(x, y, tol=1e-6):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_estimators_by_hand():
    # pi = 0.5, ref = 0.25: log r = log(0.25/0.5) = -ln 2 = -0.693147.
    logp = jnp.log(jnp.array([[0.5, 0.3]]))
    ref = jnp.log(jnp.array([[0.25, 0.3]]))
    ln2 = math.log(2.0)
    close(kl.k1(logp, ref), [[ln2, 0.0]])                      # -log r
    close(kl.k2(logp, ref), [[0.5 * ln2 ** 2, 0.0]])           # 0.240227
    close(kl.k3(logp, ref), [[0.5 - 1.0 + ln2, 0.0]])          # r - 1 - log r = 0.193147
    # pi = 0.25, ref = 0.5: log r = +ln 2; k3 = 2 - 1 - ln 2 = 0.306853.
    close(kl.k3(ref, logp)[0, 0], 1.0 - ln2)
    # abs = |log r| (verl's "abs"): ln 2 both ways.
    close(kl.kl_abs(logp, ref), [[ln2, 0.0]])
    close(kl.kl_abs(ref, logp), [[ln2, 0.0]])
    close(kl.KLConfig(estimator="abs").estimate(ref, logp), [[ln2, 0.0]])
    assert set(kl.KL_ESTIMATORS) == {"k1", "k2", "k3", "abs"}


def test_k3_clamped_like_verl_low_var_kl():
    # |log r| = 25: the log-ratio clamp (20) gives e^20 - 21 = 4.85e8 before the value clamp;
    # verl's low_var_kl (and now rlcot's k3) clamps the value to 10.
    logp = jnp.array([[-25.0, 0.0, 0.0, -3.0]])
    ref = jnp.array([[0.0, -25.0, -2.0, 0.0]])
    v = kl.k3(logp, ref)
    close(v[0, 0], 10.0)                                       # log r = +25 (clamped at 20)
    close(v[0, 1], 10.0)                                       # log r = -25: 19 -> 10
    old = kl.k3(logp, ref, k3_max=None)                        # the old behaviour
    close(old[0, 1], 19.0 + math.exp(-20))
    np.testing.assert_allclose(float(old[0, 0]), math.exp(20) - 21.0, rtol=1e-6)  # 4.85e8
    # Inside the band the clamp changes nothing: log r = -2 -> e^-2 - 1 + 2 = 1.135335;
    # log r = +3 -> e^3 - 4 = 16.09 -> 10.
    close(v[0, 2], math.exp(-2) + 1.0)
    close(v[0, 3], 10.0)
    close(old[0, 3], math.exp(3) - 4.0, tol=1e-5)
    # The clamp is configurable and zeroes the gradient beyond it (as verl's clamp does).
    close(kl.KLConfig(k3_max=None).estimate(logp, ref)[0, 3], math.exp(3) - 4.0, tol=1e-5)
    close(kl.KLConfig(k3_max=50.0).estimate(logp, ref)[0, 3], math.exp(3) - 4.0, tol=1e-5)
    g = jax.grad(lambda lp: kl.k3(lp, ref).sum())(logp)
    close(g[0, 3], 0.0)
    with pytest.raises(ValueError, match="k3_max"):
        kl.KLConfig(k3_max=0.0)


def test_clamps_keep_everything_finite():
    logp = jnp.array([[0.0, -1e4, -jnp.inf, 0.0]])
    ref = jnp.array([[-1e4, 0.0, 0.0, -1e30]])
    for name, fn in kl.KL_ESTIMATORS.items():
        val = fn(logp, ref)
        assert jnp.all(jnp.isfinite(val)), (name, val)
    # Clamped at |log r| = 20: k3(-20) = e^-20 - 1 + 20 = 19 -> 10 (value clamp); k3(+20) =
    # e^20 - 21 -> 10. Without the value clamp, the log-ratio clamp alone gives those values.
    v = kl.k3(logp, ref)
    close(v[0, :2], [10.0, 10.0])
    v = kl.k3(logp, ref, k3_max=None)
    close(v[0, 0], math.exp(-20) + 19.0)
    np.testing.assert_allclose(float(v[0, 1]), math.exp(20) - 21.0, rtol=1e-6)
    close(kl.k2(logp, ref)[0, 0], 200.0)
    # Gradients stay finite too (zero beyond the clamp).
    g = jax.grad(lambda lp: kl.k3(lp, ref[:, :2]).sum())(logp[:, :2])
    assert jnp.all(jnp.isfinite(g))
    close(g, [[0.0, 0.0]])


def test_kl_in_rewards():
    score = jnp.array([1.0, 2.0])
    kl_BxT = jnp.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = jnp.array([[1, 1, 1], [1, 1, 0]])
    # Token placement, coef 0.5: row 0 [-.05, -.1, -.15 + 1], row 1 [-.2, -.25 + 2, 0].
    close(kl.kl_in_token_rewards(score, kl_BxT, mask, 0.5), [[-0.05, -0.1, 0.85],
                                                             [-0.2, 1.75, 0.0]])
    # Sequence placement: 1 - .5*(.1+.2+.3) = 0.7; 2 - .5*(.4+.5) = 1.55.
    close(kl.kl_in_sequence_rewards(score, kl_BxT, mask, 0.5), [0.7, 1.55])
    # The score sits on the last *valid* token, also with a hole in the mask.
    close(kl.kl_in_token_rewards(score, jnp.zeros((2, 3)), jnp.array([[1, 0, 0], [0, 1, 1]]),
                                 0.5), [[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    with pytest.raises(ValueError, match="shapes"):
        kl.kl_in_sequence_rewards(score[:1], kl_BxT, mask, 0.1)


def test_adaptive_controller_by_hand():
    cfg = kl.KLConfig(placement="loss", coef=0.1, controller="adaptive", target=6.0,
                      horizon=10_000.0)
    coef = jnp.float32(0.1)
    # KL 9: error clip(9/6 - 1) = clip(0.5) = 0.2; mult 1 + 0.2 * 256 / 10000 = 1.00512.
    close(cfg.update_coef(coef, 9.0, 256), 0.100512)
    # KL 5.4: error -0.1; mult 1 - 0.1 * 256 / 10000 = 0.99744.
    close(cfg.update_coef(coef, 5.4, 256), 0.099744)
    close(cfg.update_coef(coef, 6.0, 256), 0.1)
    # A pure state update: iterate it in a jitted scan over observed KLs.
    def step(c, k):
        c = cfg.update_coef(c, k, 256)
        return c, c
    _, coefs = jax.jit(lambda c, ks: jax.lax.scan(step, c, ks))(coef, jnp.array([9.0, 9.0, 0.0]))
    # 0.1 * 1.00512 = 0.100512; * 1.00512 = 0.10102662; KL 0 -> error -0.2 -> * 0.99488.
    close(coefs, [0.100512, 0.10102662, 0.10102662 * 0.99488])
    fixed = kl.KLConfig(placement="loss", coef=0.1)
    close(fixed.update_coef(coef, 100.0, 256), 0.1)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl.KLConfig(estimator="k4")
    with pytest.raises(ValueError, match="placement"):
        kl.KLConfig(placement="advantage")
    with pytest.raises(ValueError, match="target > 0"):
        kl.KLConfig(coef=0.1, controller="adaptive", horizon=10.0)
    with pytest.raises(ValueError, match="never move off 0"):
        kl.KLConfig(controller="adaptive", target=1.0, horizon=10.0)
    cfg = kl.KLConfig(estimator="k2", placement="reward", clamp=1.0)
    # k2 with the log-ratio clamped to [-1, 1]: 0.5 * 1^2.
    close(cfg.estimate(jnp.zeros((1, 1)), jnp.full((1, 1), -5.0)), [[0.5]])
    assert cfg.enabled and not kl.KLConfig().enabled
