"""Value model alignment and initialisation; advantages between rollout and update (GAE with
the score on the last completion token and the KL in the reward, outcome estimators)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlcot.models import presets
from rlcot.models import transformer as tr
from rlcot.rl.advantages import AdvantageConfig
from rlcot.rl.batch import compute_advantages, reward_kl
from rlcot.rl.kl import KLConfig
from rlcot.rl.value import init_value_params, make_value_fn

CFG = presets.get_config("tiny", vocab_size=64, d_model=64, mlp_dim=128, head_dim=16)
# XLA:CPU options for these tests: no LLVM optimisation (compiles ~3x faster; shapes are tiny)
# and no YNNPACK fusions, whose row reductions (rms-norm means, softmax) round differently with
# the number of rows in the batch (~4e-7 relative), so per-row numerics would depend on how
# rows are grouped into micro-batches or shards.
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_experimental_ynn_fusion_type": ""}


def close(x, y, tol=1e-6):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def models():
    graphdef, params = tr.init_params(CFG, seed=1)
    cgraphdef, cparams = init_value_params(CFG, seed=2, body_params=params)
    return graphdef, params, cgraphdef, cparams


def test_value_model_starts_from_policy_body_with_zero_head(models):
    _, params, _, cparams = models
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(cparams["body"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.unsafe_buffer_pointer() != b.unsafe_buffer_pointer()   # a copy, not an alias
    assert not np.asarray(cparams["head"].get_value()).any()
    assert float(cparams["head_bias"].get_value()) == 0.0


def test_values_are_aligned_like_logprobs(models):
    """values[:, t] = head . h[:, t - 1] + bias where tokens t - 1 and t are valid, else 0."""
    _, _, cgraphdef, cparams = models
    head = 0.3 * jax.random.normal(jax.random.key(0), (CFG.d_model,))
    cparams = jax.tree.map(lambda x: x, cparams)
    cparams["head"].set_value(head)
    cparams["head_bias"].set_value(jnp.float32(0.5))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CFG.vocab_size, (4, 9)).astype(np.int32)
    valid = np.ones((4, 9), bool)
    valid[0, :2] = False
    valid[1, 7:] = False
    positions = np.asarray(tr.positions_from_mask(valid))
    values = make_value_fn(cgraphdef, cparams, compiler_options=FAST)(cparams, tokens, positions,
                                                                     valid)
    h, _ = nnx.merge(cgraphdef, cparams).body.hidden(tokens, positions, valid)
    expected = np.zeros((4, 9), np.float32)
    expected[:, 1:] = np.asarray(h[:, :-1] @ head + 0.5)
    defined = np.zeros((4, 9), bool)
    defined[:, 1:] = valid[:, 1:] & valid[:, :-1]
    assert values.shape == (4, 9)
    close(np.asarray(values)[defined], expected[defined], 1e-5)
    assert not np.asarray(values)[~defined].any()


def test_gae_with_score_on_last_token_and_kl_in_reward():
    # Two rows, L = 6, prompt of 2 tokens: completions are t = 2..5 and t = 2..4 (right pad).
    mask = np.array([[0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0]], np.float32)
    values = np.array([[9, 9, 0.2, 0.4, 0.6, 0.8], [9, 9, 0.1, -0.2, -0.5, 9]], np.float32)
    score = jnp.array([1.0, -1.0])
    # k1 = logp_old - logp_ref: 0 on row 0, (0.5, 1, 2) on row 1's completion.
    logp_old = np.zeros((2, 6), np.float32)
    logp_ref = -np.array([[0, 0, 0, 0, 0, 0], [0, 0, 0.5, 1.0, 2.0, 0]], np.float32)
    kl_cfg = KLConfig(estimator="k1", placement="reward", coef=0.1)
    kl = reward_kl(kl_cfg, logp_old, logp_ref, mask)
    adv_cfg = AdvantageConfig(estimator="gae", gamma=1.0, lam=0.5, whiten=False)
    adv, ret = compute_advantages(adv_cfg, score, mask, group_size=1, values_NxL=values,
                                  kl_NxL=kl, kl_coef=0.1)
    # Row 0: rewards (0, 0, 0, 1), V (.2, .4, .6, .8): every delta is 0.2, so
    # A5 = .2, A4 = .2 + .5 * .2 = .3, A3 = .35, A2 = .375; returns A + V.
    # Row 1: rewards (-.05, -.1, -.2 - 1), V (.1, -.2, -.5):
    # A4 = -1.2 + .5 = -.7; A3 = -.1 - .5 + .2 + .5 * -.7 = -.75; A2 = -.05 - .2 - .1 - .375.
    close(adv, [[0, 0, .375, .35, .3, .2], [0, 0, -.725, -.75, -.7, 0]])
    close(ret, [[0, 0, .575, .75, .9, 1.0], [0, 0, -.625, -.95, -1.2, 0]])
    with pytest.raises(ValueError, match="needs values_NxL"):
        compute_advantages(adv_cfg, score, mask, group_size=1)


def test_gae_on_value_model_output_shapes(models):
    _, _, cgraphdef, cparams = models
    tokens = np.zeros((4, 8), np.int32)
    valid = np.ones((4, 8), bool)
    mask = np.zeros((4, 8), np.float32)
    mask[:, 3:] = 1
    mask[2, 6:] = 0
    values = make_value_fn(cgraphdef, cparams, compiler_options=FAST)(
        cparams, tokens, tr.positions_from_mask(valid), valid)
    adv, ret = compute_advantages(AdvantageConfig(estimator="gae", lam=0.95), jnp.arange(4.0),
                                  mask, group_size=1, values_NxL=values)
    assert adv.shape == ret.shape == (4, 8)
    assert not np.asarray(adv)[mask == 0].any() and not np.asarray(ret)[mask == 0].any()
    # Zero head: V = 0, so delta_t = r_t (the score, on the last completion token only) and
    # the lambda-return k tokens before the end is score * 0.95^k.
    for n in range(4):
        k = np.arange(int(mask[n].sum()))[::-1]
        close(np.asarray(ret)[n][mask[n] > 0], n * 0.95 ** k, 1e-5)


def test_outcome_advantages_with_kl_in_reward():
    mask = np.zeros((4, 5), np.float32)
    mask[:, 2:] = 1
    kl = np.zeros((4, 5), np.float32)
    kl[2, 2:] = [0.25, 0.5, 0.25]                       # sum 1 on row 2
    adv, ret = compute_advantages(AdvantageConfig("grpo"), jnp.array([1.0, 0.0, 1.0, 1.0]),
                                  mask, group_size=2, kl_NxL=kl, kl_coef=0.5)
    # Sequence rewards (1, 0 | 0.5, 1); each group of two has unbiased std |a - b| / sqrt 2,
    # so advantages are +-(|a - b| / 2) / (|a - b| / sqrt 2) = +-1/sqrt 2.
    s = 1 / np.sqrt(2)
    assert ret is None
    close(adv, np.array([s, -s, -s, s])[:, None] * mask, 1e-5)
    with pytest.raises(ValueError, match="groups of 3"):
        compute_advantages(AdvantageConfig("grpo"), jnp.zeros(4), mask, group_size=3)
