"""Logit filters keep exactly the intended mass; the inverse-CDF draw follows its distribution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlcot.sampling import SamplingSpec, bucket, choose, min_p_filter, top_k_filter, top_p_filter
from rlcot.sampling.filters import draw, sampling_logits

# One row with probabilities 0.5, 0.2, 0.15, 0.1, 0.05 (shuffled so order is not position).
PROBS = np.array([0.1, 0.5, 0.05, 0.2, 0.15])
LOGITS = jnp.log(jnp.asarray(PROBS, jnp.float32))[None, :]


def kept_probs(filtered_1xV):
    """Renormalised distribution after a filter (0 where removed)."""
    return np.asarray(jax.nn.softmax(filtered_1xV, axis=-1))[0]


def test_top_k_keeps_the_k_largest():
    # k=2 keeps 0.5 and 0.2: mass 0.7, renormalised to 0.5/0.7 and 0.2/0.7.
    got = kept_probs(top_k_filter(LOGITS, 2))
    np.testing.assert_allclose(got, [0, 0.5 / 0.7, 0, 0.2 / 0.7, 0], atol=1e-6)
    assert top_k_filter(LOGITS, 0) is LOGITS and top_k_filter(LOGITS, 5) is LOGITS


@pytest.mark.parametrize("p, kept", [
    (0.8, [0.5, 0.2, 0.15]),    # mass before 0.15 is 0.7 < 0.8: kept; before 0.1 is 0.85: not
    (0.7, [0.5, 0.2]),          # mass before 0.15 is exactly 0.7, not < 0.7: removed
    (0.3, [0.5]),               # the top token alone already has 0.5 >= 0.3
    (0.96, [0.5, 0.2, 0.15, 0.1, 0.05]),  # mass before 0.05 is 0.95 < 0.96
])
def test_top_p_keeps_smallest_prefix_with_mass_p(p, kept):
    expected = np.where(np.isin(PROBS, kept), PROBS, 0.0)
    expected /= expected.sum()
    np.testing.assert_allclose(kept_probs(top_p_filter(LOGITS, p)), expected, atol=1e-6)
    # The cheaper path that sorts only the top-k candidates agrees (k covers the nucleus).
    topk = top_k_filter(LOGITS, 4)
    expected_k = np.where(np.isin(PROBS, kept) & (PROBS > 0.05), PROBS, 0.0)
    expected_k /= expected_k.sum()
    np.testing.assert_allclose(kept_probs(top_p_filter(topk, p, top_k=4)), expected_k, atol=1e-6)


def test_min_p_keeps_tokens_above_fraction_of_max():
    # min_p 0.3: threshold 0.3 * 0.5 = 0.15 -> keeps 0.5, 0.2, 0.15 (0.15 >= 0.15 kept).
    expected = np.where(PROBS >= 0.15 - 1e-9, PROBS, 0.0)
    expected /= expected.sum()
    np.testing.assert_allclose(kept_probs(min_p_filter(LOGITS, 0.3)), expected, atol=1e-6)


def test_filters_chain_in_transformers_order():
    # Temperature 0.5 squares the probabilities: 0.25, 0.04, 0.0225, 0.01, 0.0025. top_k=4
    # drops 0.0025; renormalised over the four (sum 0.3225): 0.775, 0.124, 0.070, 0.031.
    # top_p=0.9: mass before the third is 0.775 + 0.124 = 0.899 < 0.9 -> kept; before the
    # fourth 0.969 -> dropped. Three tokens survive.
    spec = SamplingSpec(temperature=0.5, top_k=4, top_p=0.9)
    z = sampling_logits(LOGITS, spec)
    p2 = PROBS ** 2
    top4 = np.where(p2 > p2.min(), p2, 0) / np.where(p2 > p2.min(), p2, 0).sum()
    order = np.argsort(-top4)
    before = np.cumsum(top4[order]) - top4[order]
    keep = np.zeros(5, bool)
    keep[order[before < 0.9]] = True
    expected = np.where(keep, top4, 0) / np.where(keep, top4, 0).sum()
    np.testing.assert_allclose(kept_probs(z), expected, atol=1e-6)
    assert keep.sum() == 3


def test_draw_frequencies_match_distribution():
    # 20k rows of the same filtered distribution; each frequency within 4 standard errors.
    n = 20_000
    z = jnp.broadcast_to(top_k_filter(LOGITS, 3), (n, 5))
    u = jax.random.uniform(jax.random.key(0), (n,))
    counts = np.bincount(np.asarray(draw(z, u)), minlength=5) / n
    target = kept_probs(top_k_filter(LOGITS, 3))
    se = np.sqrt(target * (1 - target) / n)
    assert np.all(np.abs(counts - target) <= 4 * se + 1e-12), (counts, target)
    assert counts[target == 0].sum() == 0  # removed tokens are never drawn


def test_draw_extreme_uniforms_pick_positive_probability_tokens():
    z = jnp.asarray([[-jnp.inf, 0.0, -jnp.inf, 1.0, -jnp.inf]] * 2)
    toks = draw(z, jnp.asarray([0.0, 1.0 - 2 ** -24]))
    assert toks.tolist() == [1, 3]


def test_choose_returns_policy_and_sampling_logprobs():
    spec = SamplingSpec(temperature=0.5, top_k=2)
    tok, logp, slogp = choose(LOGITS, jnp.asarray([0.3]), spec)
    t = int(tok[0])
    assert t in (1, 3)
    np.testing.assert_allclose(float(logp[0]), np.log(PROBS[t]), rtol=1e-6)
    # Sampling distribution: squared probs of the top two, renormalised.
    q = PROBS[t] ** 2 / (0.5 ** 2 + 0.2 ** 2)
    np.testing.assert_allclose(float(slogp[0]), np.log(q), rtol=1e-5)
    g_tok, g_logp, g_slogp = choose(LOGITS, None, SamplingSpec(greedy=True))
    assert int(g_tok[0]) == 1 and float(g_slogp[0]) == 0.0
    np.testing.assert_allclose(float(g_logp[0]), np.log(0.5), rtol=1e-6)


def test_bucket_sizes():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 6, 7, 9, 13, 17, 100)] == \
        [1, 2, 3, 4, 6, 6, 8, 12, 16, 24, 128]
    assert bucket(5, minimum=16) == 16


def test_spec_validation_messages():
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingSpec(top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SamplingSpec(temperature=0.0)
    with pytest.raises(TypeError, match="stop_ids must be a tuple"):
        SamplingSpec(stop_ids=[1, 2])
    assert hash(SamplingSpec(stop_strings=("</answer>",))) is not None
