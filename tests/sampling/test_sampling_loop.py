"""The compiled rollout on the tiny models: exactness against a full forward, stops, lengths,
determinism, shared prefill, the trainer batch, and the memory check."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_helpers import PROMPTS, ByteTokenizer, full_forward_logits, peaked_model

from rlcot.sampling import CacheTooLargeError, Sampler, SamplingSpec, left_pad, trainer_batch
from rlcot.sampling.filters import sampling_logits

G = 2
SAMPLED = SamplingSpec(max_new_tokens=20, temperature=0.7, top_k=20, top_p=0.9)
GREEDY = SamplingSpec(max_new_tokens=12, greedy=True)


@pytest.fixture(scope="module")
def sampler(tiny):
    cfg, _, params = tiny
    return Sampler(cfg, params, tokenizer=ByteTokenizer(cfg.vocab_size))


@pytest.fixture(scope="module")
def sampled(sampler, prompts):
    return sampler.generate(*prompts, jax.random.key(0), num_samples=G, spec=SAMPLED)


@pytest.fixture(scope="module")
def greedy(sampler, prompts):
    return sampler.generate(*prompts, jax.random.key(0), num_samples=1, spec=GREEDY)


def completion_logps(graphdef, params, out, spec):
    """Reference log-probs of the sampled tokens from one full forward over prompt + completion:
    under the model (temperature 1) and under the spec's sampling distribution."""
    batch = trainer_batch(out)
    logits = full_forward_logits(graphdef, params, batch)[:, :-1]
    targets = batch.tokens_NxL[:, 1:, None]
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets, -1)[..., 0]
    N, L, V = logits.shape
    z = sampling_logits(logits.reshape(N * L, V), spec).reshape(N, L, V)
    slogp = jnp.take_along_axis(jax.nn.log_softmax(z, -1), targets, -1)[..., 0]
    return batch, logits, logp, slogp


@pytest.mark.parametrize("name", ["tiny", "tiny-gemma3"])
def test_cached_decoding_matches_full_forward(name, tiny, prompts, sampled):
    if name == "tiny":
        (cfg, graphdef, params), out = tiny, sampled
    else:  # sliding-window layers: 9 prompt + 20 new tokens cross the window of 16
        cfg, graphdef, params = peaked_model(name)
        out = Sampler(cfg, params).generate(*prompts, jax.random.key(0), G, SAMPLED)
    batch, _, logp, slogp = completion_logps(graphdef, params, out, SAMPLED)
    mask = batch.completion_mask_NxL[:, 1:]
    assert int(mask.sum()) > 20
    np.testing.assert_array_less(np.abs(np.where(mask, logp - batch.logp_NxL[:, 1:], 0)), 1e-5)
    np.testing.assert_array_less(
        np.abs(np.where(mask, slogp - batch.sample_logp_NxL[:, 1:], 0)), 1e-5)
    # The two log-probs differ (temperature 0.7 and filters), so the check above is not vacuous.
    assert float(jnp.abs(jnp.where(mask, logp - slogp, 0)).max()) > 0.1


def test_greedy_is_argmax_and_deterministic(tiny, sampler, prompts, greedy):
    _, graphdef, params = tiny
    batch, logits, _, _ = completion_logps(graphdef, params, greedy, GREEDY)
    mask = np.asarray(batch.completion_mask_NxL[:, 1:])
    argmax = np.asarray(jnp.argmax(logits, -1))
    np.testing.assert_array_equal(argmax[mask], np.asarray(batch.tokens_NxL[:, 1:])[mask])
    again = sampler.generate(*prompts, jax.random.key(123), 1, GREEDY)
    np.testing.assert_array_equal(again.tokens_NxT, greedy.tokens_NxT)
    assert np.all(np.asarray(greedy.sample_logp_NxT) == 0)


def test_same_rng_same_tokens(sampler, prompts, sampled):
    again = sampler.generate(*prompts, jax.random.key(0), G, SAMPLED)
    np.testing.assert_array_equal(again.tokens_NxT, sampled.tokens_NxT)
    other = sampler.generate(*prompts, jax.random.key(1), G, SAMPLED)
    assert not np.array_equal(other.tokens_NxT, sampled.tokens_NxT)
    # The G samples of one prompt differ from each other (per-row keys).
    toks = np.asarray(sampled.tokens_NxT).reshape(len(PROMPTS), G, -1)
    assert all(not np.array_equal(toks[b, 0], toks[b, 1]) for b in range(len(PROMPTS)))


def test_max_new_tokens_respected(sampled, greedy):
    # 12 and 20 are not bucket sizes (16, 24): outputs are cut to exactly max_new_tokens.
    assert greedy.tokens_NxT.shape == (3, 12) and sampled.tokens_NxT.shape == (6, 20)
    assert np.all(np.asarray(greedy.lengths_N) == 12) and np.all(np.asarray(greedy.truncated_N))
    assert int(greedy.stats["steps"]) == 12
    assert np.asarray(greedy.mask_NxT).all()


def test_stop_ids_end_rows_early_and_pad_the_rest(sampler, prompts, sampled):
    # Same rng: a row's draws depend only on (rng, row, step), so the stopped run is a prefix
    # of the unstopped one. Stop on every row's step-3 token: all rows stop by step 3 and the
    # loop exits after at most 4 of its 20 steps.
    toks = np.asarray(sampled.tokens_NxT)
    stops = tuple(sorted({int(t) for t in toks[:, 3]}))
    out = sampler.generate(*prompts, jax.random.key(0), G, SAMPLED.replace(stop_ids=stops))
    got = np.asarray(out.tokens_NxT)
    for row in range(len(toks)):
        n = int(np.flatnonzero(np.isin(toks[row], stops))[0]) + 1
        assert n <= 4 and int(out.lengths_N[row]) == n and not bool(out.truncated_N[row])
        np.testing.assert_array_equal(got[row, :n], toks[row, :n])  # stop token kept
        assert np.all(got[row, n:] == sampler.pad_id)
        np.testing.assert_array_equal(np.asarray(out.mask_NxT[row]), np.arange(20) < n)
        assert np.all(np.asarray(out.logp_NxT[row, n:]) == 0)
        np.testing.assert_allclose(out.logp_NxT[row, :n], sampled.logp_NxT[row, :n], atol=1e-6)
    assert int(out.stats["steps"]) <= 4


def test_stop_strings_across_token_boundaries(sampler, prompts, sampled):
    tok = sampler.tokenizer
    toks = np.asarray(sampled.tokens_NxT)
    pieces = [tok.pieces[t] for t in toks[0]]
    # Last char of step 4's piece + all of step 5's: the string spans a token boundary.
    stop = pieces[4][-1] + pieces[5]
    expected = []
    for row in toks:
        text, n = "", 20
        for step, t in enumerate(row):
            text += tok.pieces[t]
            if stop in text:
                n = step + 1
                break
        expected.append(n)
    assert expected[0] <= 6
    spec = SAMPLED.replace(stop_strings=(stop,))
    out = sampler.generate(*prompts, jax.random.key(0), G, spec)
    assert np.asarray(out.lengths_N).tolist() == expected
    assert np.asarray(out.truncated_N).tolist() == [n == 20 and stop not in "".join(
        tok.pieces[t] for t in row) for n, row in zip(expected, toks)]
    for row, n in enumerate(expected):
        np.testing.assert_array_equal(np.asarray(out.tokens_NxT[row, :n]), toks[row, :n])
    texts = sampler.texts(out, spec)
    assert texts[0].endswith(stop) and texts[0].count(stop) == 1
    assert not sampler.texts(out, spec, include_stop_str=False)[0].endswith(stop)


def test_shared_prefill_equals_repeated_prompts(sampler, prompts, sampled):
    # Row b*G + g draws with the same key either way, so tokens must match exactly.
    tokens, lens = prompts
    repeated = sampler.generate(np.repeat(tokens, G, 0), np.repeat(lens, G), jax.random.key(0),
                                1, SAMPLED)
    np.testing.assert_array_equal(repeated.tokens_NxT, sampled.tokens_NxT)
    np.testing.assert_allclose(repeated.logp_NxT, sampled.logp_NxT, atol=1e-5)
    # A padded batch (5 prompts -> bucket 6) gives row 0 the same sample as well.
    five = left_pad(PROMPTS[:1] + PROMPTS + [[3, 3]], pad_id=0)
    out5 = sampler.generate(*five, jax.random.key(0), 1, SAMPLED)
    assert out5.tokens_NxT.shape[0] == 5 and out5.stats["plan"].batch_rows == 6
    np.testing.assert_array_equal(out5.tokens_NxT[0], sampled.tokens_NxT[0])


def test_trainer_batch_layout(sampled, prompts):
    batch = trainer_batch(sampled)
    tokens, lens = prompts
    P = sampled.prompt_tokens_BxP.shape[1]
    row = 2 * G + 1  # prompt 2 ([7, 42]), second sample
    n = int(sampled.lengths_N[row])
    valid = np.asarray(batch.valid_NxL[row])
    # [pad ... 7 42 | completion ... pad]: valid tokens contiguous, positions 0..len-1.
    assert valid.tolist() == [False] * (P - 2) + [True] * (2 + n) + [False] * (20 - n)
    np.testing.assert_array_equal(np.asarray(batch.tokens_NxL[row, P - 2:P]), [7, 42])
    np.testing.assert_array_equal(np.asarray(batch.positions_NxL[row])[valid], np.arange(2 + n))
    np.testing.assert_array_equal(np.asarray(batch.completion_mask_NxL[row]),
                                  np.arange(P + 20) >= P)


def test_cache_size_reported_and_checked(tiny):
    cfg, _, params = tiny
    sampler = Sampler(cfg, params, memory_budget_bytes=1 << 20)
    spec = SamplingSpec(max_new_tokens=100, shared_prefix=False)
    plan = sampler.plan(num_prompts=3, prompt_len=9, num_samples=4, spec=spec)
    # 3 prompts -> 3 rows x 4 samples = 12 rows; 16 prompt + 128 new slots = 144.
    # K and V: 2 x 2 layers x 12 rows x 144 slots x 2 heads x 32 dims x 4 bytes = 1,769,472
    # plus the positions 12 x 144 x 4 = 6,912.
    assert (plan.rows, plan.cache_len, plan.cache_bytes) == (12, 144, 1_769_472 + 6_912)
    with pytest.raises(CacheTooLargeError) as err:
        sampler.generate(*left_pad(PROMPTS, 0), jax.random.key(0), 4, spec)
    msg = str(err.value)
    for part in ("12 rows x 144 cache slots", "prompt 16 + 128 new tokens", "2 layers",
                 "float32", "configured budget", "Reduce"):
        assert part in msg, (part, msg)
    # Shared prefix (the default for 4 samples): 3 prompts x 16 slots + 12 rows x 128 slots
    # = 1,584 slots of 2 x 2 x 2 x 32 x 4 = 1,024 bytes (+ 4 bytes of position each).
    shared = sampler.plan(num_prompts=3, prompt_len=9, num_samples=4, spec=SamplingSpec(100))
    assert shared.shared_prefix and shared.cache_slots == 3 * 16 + 12 * 128
    assert shared.cache_bytes == 1_584 * (1_024 + 4)
    with pytest.raises(CacheTooLargeError, match="3 prompts x 16 shared prefix slots "
                                                 r"\+ 12 rows x 128 slots"):
        sampler.generate(*left_pad(PROMPTS, 0), jax.random.key(0), 4, SamplingSpec(100))
