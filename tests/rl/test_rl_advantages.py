"""Advantage estimators against hand-computed values."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlcot.rl import advantages as A

# Two prompts, G = 3. Group means 3 and 2; centred [-3, 0, 3] and [-1, -1, 2].
R = jnp.array([[0.0, 3.0, 6.0], [1.0, 1.0, 4.0]])


def close(x, y, tol=1e-6):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_grpo_group_std_unbiased_and_biased():
    # Row 0: sum of squares 9 + 0 + 9 = 18; unbiased var 18/2 = 9, std 3 -> [-1, 0, 1].
    # Row 1: 1 + 1 + 4 = 6; unbiased var 3, std sqrt(3) -> [-1, -1, 2] / sqrt(3).
    s3 = math.sqrt(3.0)
    close(A.grpo(R, eps=0.0), [[-1, 0, 1], [-1 / s3, -1 / s3, 2 / s3]])
    # Biased: var 18/3 = 6 and 6/3 = 2.
    close(A.grpo(R, eps=0.0, unbiased_std=False),
          [[-3 / math.sqrt(6), 0, 3 / math.sqrt(6)], [-1 / math.sqrt(2), -1 / math.sqrt(2),
                                                      2 / math.sqrt(2)]])
    # eps is added to the std: row 0 with eps = 1 -> centred / 4.
    close(A.grpo(R[:1], eps=1.0), [[-0.75, 0.0, 0.75]])


def test_grpo_batch_std_and_none():
    # Batch std of all raw rewards 0,3,6,1,1,4: mean 2.5, squares of deviations
    # 6.25 + .25 + 12.25 + 2.25 + 2.25 + 2.25 = 25.5, unbiased var 25.5/5 = 5.1.
    centred = jnp.array([[-3.0, 0.0, 3.0], [-1.0, -1.0, 2.0]])
    close(A.grpo(R, std_over="batch", eps=0.0), centred / math.sqrt(5.1))
    close(A.grpo(R, std_over="none"), centred)
    with pytest.raises(ValueError, match="std_over"):
        A.grpo(R, std_over="prompt")


def test_grpo_mask_and_degenerate_groups():
    # Row 0 has valid samples 0 and 3 only: mean 1.5, unbiased var (2.25+2.25)/1 = 4.5.
    # Row 1 has one valid sample: advantage 0 (no nan from ddof=1).
    mask = jnp.array([[1, 1, 0], [0, 1, 0]])
    s = math.sqrt(4.5)
    close(A.grpo(R, mask_BxG=mask, eps=0.0), [[-1.5 / s, 1.5 / s, 0.0], [0.0, 0.0, 0.0]])
    # All-equal rewards with eps = 0: 0, not nan.
    close(A.grpo(jnp.ones((2, 4)), eps=0.0), jnp.zeros((2, 4)))


def test_dr_grpo_and_kimi_mean_baseline():
    expected = [[-3.0, 0.0, 3.0], [-1.0, -1.0, 2.0]]
    close(A.dr_grpo(R), expected)
    close(A.kimi(R), expected)
    # With mask: row 1 valid samples 1 and 4 -> mean 2.5 -> [-1.5, 0(masked), 1.5].
    close(A.kimi(R, mask_BxG=jnp.array([[1, 1, 1], [1, 0, 1]])),
          [[-3.0, 0.0, 3.0], [-1.5, 0.0, 1.5]])


def test_rloo():
    # Row 0: baselines (3+6)/2 = 4.5, (0+6)/2 = 3, (0+3)/2 = 1.5 -> [-4.5, 0, 4.5].
    # Row 1: baselines (1+4)/2 = 2.5, 2.5, (1+1)/2 = 1 -> [-1.5, -1.5, 3].
    close(A.rloo(R), [[-4.5, 0.0, 4.5], [-1.5, -1.5, 3.0]])
    # Mask: row 0 keeps 0 and 3 -> [0 - 3, 3 - 0, 0]; row 1 keeps one sample -> zeros.
    close(A.rloo(R, mask_BxG=jnp.array([[1, 1, 0], [0, 0, 1]])),
          [[-3.0, 3.0, 0.0], [0.0, 0.0, 0.0]])


def test_reinforce_pp_per_sequence_option():
    # whiten_over="sequences" (rlcot's earlier default): every valid row counts once.
    # No baseline: batch mean 2.5, unbiased batch var 5.1 (see test_grpo_batch_std_and_none).
    seq = functools.partial(A.reinforce_pp, whiten_over="sequences", eps=0.0)
    close(seq(R), (R - 2.5) / math.sqrt(5.1))
    # Group baseline first: x = [-3, 0, 3, -1, -1, 2], batch mean 0,
    # sum of squares 9 + 9 + 1 + 1 + 4 = 24, unbiased var 24/5 = 4.8.
    x = jnp.array([[-3.0, 0.0, 3.0], [-1.0, -1.0, 2.0]])
    close(seq(R, group_baseline=True), x / math.sqrt(4.8))
    # Masked sample: valid 0,3,6,1,4 -> mean 2.8, squares 7.84+.04+10.24+3.24+1.44 = 22.8,
    # unbiased var 22.8/4 = 5.7.
    mask = jnp.array([[1, 1, 1], [0, 1, 1]])
    close(seq(R, mask_BxG=mask), jnp.where(mask > 0, (R - 2.8) / math.sqrt(5.7), 0.0))


def test_reinforce_pp_baseline_whitens_over_tokens():
    # verl / OpenRLHF: x put on every valid token, whitened over the batch's tokens.
    # x = [-3, 0, 3, -1, -1, 2] with lengths [1, 2, 3, 4, 1, 2]: 13 tokens,
    # sum len*x = -3 + 0 + 9 - 4 - 1 + 4 = 5 -> mean 5/13; sum len*x^2 = 49,
    # sum len*(x - mean)^2 = 49 - 25/13 = 612/13, unbiased var 612/13/12 = 51/13.
    lengths = jnp.array([[1, 2, 3], [4, 1, 2]])
    x = jnp.array([[-3.0, 0.0, 3.0], [-1.0, -1.0, 2.0]])
    got = A.reinforce_pp(R, lengths_BxG=lengths, group_baseline=True, eps=0.0)
    close(got, (x - 5 / 13) / math.sqrt(51 / 13))
    close(got[0, 2], 34 / math.sqrt(663))                    # 1.320451
    # The old per-sequence whitening gave 3 / sqrt(4.8) = 1.369306 for that sample.
    old = A.reinforce_pp(R, group_baseline=True, whiten_over="sequences", eps=0.0)
    close(old[0, 2], 1.3693064)
    assert abs(float(got[0, 2]) - float(old[0, 2])) > 0.04
    # A row without tokens takes part in its group mean but not in the whitening: lengths
    # [0, 2, 3, 4, 1, 2] -> 12 tokens, sum len*x = 8, mean 2/3, sum len*x^2 = 40,
    # sum len*(x - mean)^2 = 40 - 12 * 4/9 = 104/3, var 104/33.
    l0 = lengths.at[0, 0].set(0)
    got = A.reinforce_pp(R, lengths_BxG=l0, group_baseline=True, eps=0.0)
    close(got[1], (x[1] - 2 / 3) / math.sqrt(104 / 33))
    # Equal lengths: token whitening equals sequence whitening up to the ddof
    # (unbiased_std=False makes them identical).
    eq = jnp.full((2, 3), 5)
    close(A.reinforce_pp(R, lengths_BxG=eq, unbiased_std=False, eps=0.0),
          A.reinforce_pp(R, whiten_over="sequences", unbiased_std=False, eps=0.0))
    with pytest.raises(ValueError, match="needs lengths_BxG"):
        A.reinforce_pp(R)
    with pytest.raises(ValueError, match="lengths shape"):
        A.reinforce_pp(R, lengths_BxG=lengths[0])
    with pytest.raises(ValueError, match="whiten_over"):
        A.reinforce_pp(R, lengths_BxG=lengths, whiten_over="rows")
    with pytest.raises(ValueError, match="whiten_over"):
        A.AdvantageConfig(estimator="reinforce_pp", whiten_over="rows")
    assert A.AdvantageConfig(estimator="reinforce_pp").needs_lengths
    assert not A.AdvantageConfig(estimator="reinforce_pp", whiten_over="sequences").needs_lengths


def test_gae_three_steps_by_hand():
    gamma, lam = 0.9, 0.8  # gamma * lam = 0.72
    rewards = jnp.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 5.0, 1.0]])
    values = jnp.array([[0.5, 0.6, 0.7], [0.5, 0.6, 9.0], [0.5, 9.0, 0.7]])
    mask = jnp.array([[1, 1, 1], [1, 1, 0], [1, 0, 1]])
    adv, ret = A.gae(rewards, values, mask, gamma=gamma, lam=lam, whiten=False)
    # Row 0: t=2: delta = 1 + 0.9*0 - 0.7 = 0.3 -> A2 = 0.3
    #        t=1: delta = 0 + 0.9*0.7 - 0.6 = 0.03 -> A1 = 0.03 + 0.72*0.3 = 0.246
    #        t=0: delta = 0 + 0.9*0.6 - 0.5 = 0.04 -> A0 = 0.04 + 0.72*0.246 = 0.21712
    # Row 1 (right padding, garbage value 9 ignored): t=1: delta = 1 - 0.6 = 0.4;
    #        t=0: delta = 0.04 -> A0 = 0.04 + 0.72*0.4 = 0.328
    # Row 2 (middle token masked, skipped): t=2: A2 = 0.3; t=0 sees V=0.7 next:
    #        delta = 0.9*0.7 - 0.5 = 0.13 -> A0 = 0.13 + 0.72*0.3 = 0.346
    close(adv, [[0.21712, 0.246, 0.3], [0.328, 0.4, 0.0], [0.346, 0.0, 0.3]])
    # Returns = A + V on valid tokens.
    close(ret, [[0.71712, 0.846, 1.0], [0.828, 1.0, 0.0], [0.846, 0.0, 1.0]])


def test_gae_whitening_and_lambda_one_is_monte_carlo():
    rewards = jnp.array([[0.0, 0.0, 1.0]])
    values = jnp.array([[0.5, 0.6, 0.7]])
    mask = jnp.ones((1, 3))
    # gamma = lam = 1: A_t = sum of future rewards - V_t = 1 - V.
    adv, ret = A.gae(rewards, values, mask, whiten=False)
    close(adv, [[0.5, 0.4, 0.3]])
    close(ret, [[1.0, 1.0, 1.0]])
    # Whitened: mean 0.4, unbiased std 0.1 -> [1, 0, -1]; returns unchanged.
    adv_w, ret_w = A.gae(rewards, values, mask, eps=0.0)
    close(adv_w, [[1.0, 0.0, -1.0]], tol=1e-5)
    close(ret_w, ret)


def test_discounted_returns_and_token_reinforce_pp():
    r = jnp.array([[1.0, 0.0, 2.0]])
    # gamma 0.5: G2 = 2, G1 = 0 + 0.5*2 = 1, G0 = 1 + 0.5*1 = 1.5.
    close(A.discounted_returns(r, jnp.ones((1, 3)), gamma=0.5), [[1.5, 1.0, 2.0]])
    # Whitened: mean 1.5, deviations 0, -.5, .5, unbiased var 0.25 -> [0, -1, 1].
    adv, ret = A.reinforce_pp_token(r, jnp.ones((1, 3)), gamma=0.5, eps=0.0)
    close(adv, [[0.0, -1.0, 1.0]])
    close(ret, [[1.5, 1.0, 2.0]])


def test_table_config_and_jit():
    assert set(A.ADVANTAGE_ESTIMATORS) == {"grpo", "dr_grpo", "rloo", "reinforce_pp", "kimi"}
    assert set(A.TOKEN_ADVANTAGE_ESTIMATORS) == {"gae", "reinforce_pp_token"}
    cfg = A.AdvantageConfig(estimator="grpo", std_over="batch", eps=0.0)
    assert cfg.knobs() == {"std_over": "batch", "unbiased_std": True, "eps": 0.0}
    assert not cfg.token_level and A.AdvantageConfig(estimator="gae").token_level
    fn = jax.jit(functools.partial(cfg.fn, **cfg.knobs()))
    close(fn(R), A.grpo(R, std_over="batch", eps=0.0))
    for name, f in A.ADVANTAGE_ESTIMATORS.items():
        c = A.AdvantageConfig(estimator=name)
        kn = dict(c.knobs(), **({"lengths_BxG": jnp.ones((2, 3))} if c.needs_lengths else {}))
        close(jax.jit(functools.partial(f, **kn))(R, mask_BxG=jnp.ones((2, 3))), f(R, **kn))
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        A.AdvantageConfig(estimator="ppo")
    with pytest.raises(ValueError, match="lam must be in"):
        A.AdvantageConfig(estimator="gae", lam=1.5)
    with pytest.raises(ValueError, match=r"rewards must be \[B, G\]"):
        A.grpo(jnp.ones(3))
    with pytest.raises(ValueError, match="mask shape"):
        A.rloo(R, mask_BxG=jnp.ones((3, 2)))


def test_advantage_stats():
    adv = jnp.array([[-1.0, 0.0, 1.0], [2.0, 5.0, 7.0]])
    mask = jnp.array([[1, 1, 1], [1, 0, 0]])
    # Valid -1, 0, 1, 2: mean 0.5, biased var (2.25+.25+.25+2.25)/4 = 1.25.
    s = A.advantage_stats(adv, mask)
    close(s["adv_mean"], 0.5)
    close(s["adv_std"], math.sqrt(1.25))
    close(s["adv_min"], -1.0)
    close(s["adv_max"], 2.0)
