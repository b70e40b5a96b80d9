"""Shared-prefix decoding (one prompt cache per prompt + one cache per row for its new tokens)
gives the tokens of the copied-cache layout (each row a copy of its prompt's cache), and the
planner counts its smaller cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_helpers import PROMPTS, ByteTokenizer, peaked_model

from rlcot.models.transformer import layer_inputs
from rlcot.sampling import Sampler, SamplingSpec
from rlcot.sampling import decode
from rlcot.sharding import make_mesh

SAMPLED = SamplingSpec(max_new_tokens=12, temperature=0.8, top_k=30)


@pytest.fixture(scope="module")
def gemma_softcap():
    # Local (sliding window 16) + global layers, with attention logit soft-capping added: the
    # 9-token prompt + 12 new tokens cross the window, and the low cap changes the scores.
    cfg, graphdef, params = peaked_model("tiny-gemma3")
    return cfg.replace(attn_logit_softcap=5.0), graphdef, params


def both_layouts(cfg, params, prompts, G, spec, tokenizer=None):
    sampler = Sampler(cfg, params, tokenizer=tokenizer)
    return [sampler.generate(*prompts, jax.random.key(3), G, spec.replace(shared_prefix=shared))
            for shared in (False, True)]


def assert_same(copied, shared):
    np.testing.assert_array_equal(np.asarray(shared.tokens_NxT), np.asarray(copied.tokens_NxT))
    np.testing.assert_array_equal(np.asarray(shared.lengths_N), np.asarray(copied.lengths_N))
    np.testing.assert_allclose(np.asarray(shared.logp_NxT), np.asarray(copied.logp_NxT),
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(shared.sample_logp_NxT),
                               np.asarray(copied.sample_logp_NxT), atol=1e-5)
    assert not copied.stats["plan"].shared_prefix and shared.stats["plan"].shared_prefix


@pytest.mark.parametrize("G,spec", [(1, SamplingSpec(max_new_tokens=12, greedy=True)),
                                    (3, SAMPLED)], ids=["greedy-G1", "sampled-G3"])
def test_same_tokens_as_copied_cache_llama(G, spec, tiny, prompts):
    cfg, _, params = tiny
    copied, shared = both_layouts(cfg, params, prompts, G, spec)
    assert_same(copied, shared)
    assert copied.tokens_NxT.shape == (len(PROMPTS) * G, 12)


def test_same_tokens_local_layers_softcap_stop_string(gemma_softcap, prompts):
    cfg, _, params = gemma_softcap
    tok = ByteTokenizer(cfg.vocab_size)
    copied, shared = both_layouts(cfg, params, prompts, 2, SAMPLED.replace(stop_strings=("ca",)),
                                  tok)
    assert_same(copied, shared)
    lengths = np.asarray(copied.lengths_N)
    # The stop string ends some rows early and not others, so the rows' cache writes diverge.
    assert lengths.min() < 12 and lengths.max() == 12, lengths


def test_attend_shared_equals_attention_over_copies(gemma_softcap):
    """One decode step's attention, shared layout vs each row's [prefix | own] concatenation:
    ragged prompts (empty prefix slots), rows of one prompt at different lengths (empty own
    slots), a local layer's window cutting into the prefix, soft-capped scores."""
    cfg = gemma_softcap[0]
    B, G, P, S, K, H = 2, 3, 8, 6, cfg.n_kv_heads, cfg.head_dim
    N = B * G

    @jax.jit  # one compilation instead of one per eager op
    def attend_both_ways(key):
        keys = jax.random.split(key, 5)
        q = jax.random.normal(keys[0], (N, 1, cfg.n_heads, H))
        pre_k, own_k = jax.random.normal(keys[1], (B, K, H, P)), jax.random.normal(keys[2],
                                                                                  (N, K, H, S))
        pre_v, own_v = jax.random.normal(keys[3], (B, K, P, H)), jax.random.normal(keys[4],
                                                                                  (N, K, S, H))
        prompt_len = jnp.array([5, 8])
        pre_pos_BxP = jnp.where(jnp.arange(P) >= P - prompt_len[:, None],
                                jnp.arange(P) - (P - prompt_len[:, None]), -1)
        filled_N = jnp.array([4, 2, 4, 1, 4, 3])  # own slots written so far, per row
        own_pos_NxS = jnp.where(jnp.arange(S) < filled_N[:, None],
                                jnp.repeat(prompt_len, G)[:, None] + jnp.arange(S), -1)
        q_pos_Nx1 = jnp.repeat(prompt_len, G)[:, None] + filled_N[:, None] - 1
        k_pos_NxPS = jnp.concatenate([jnp.repeat(pre_pos_BxP, G, 0), own_pos_NxS], axis=1)
        global_in, local_in = layer_inputs(cfg.replace(sliding_window=6), q_pos_Nx1, k_pos_NxPS)
        masks = (global_in.mask_BxTxS, local_in.mask_BxTxS)
        copied_k = jnp.concatenate([jnp.repeat(pre_k, G, 0), own_k], -1)
        copied_v = jnp.concatenate([jnp.repeat(pre_v, G, 0), own_v], -2)
        return masks, [(decode._attend_shared(cfg, q, pre_k, pre_v, own_k, own_v, m),
                        decode._attend(cfg, q, copied_k, copied_v, m)) for m in masks]

    (global_mask, local_mask), outs = attend_both_ways(jax.random.key(0))
    assert not bool(jnp.all(local_mask == global_mask))
    for got, want in outs:
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)

def test_plan_counts_shared_layout_per_device(tiny):
    # 8 prompts x 4 samples, prompt 40 -> bucket 48, 200 new -> bucket 256, bfloat16.
    cfg, _, params = tiny
    spec = SamplingSpec(max_new_tokens=200, cache_dtype="bfloat16")
    sampler = Sampler(cfg, params)
    shared = sampler.plan(8, 40, 4, spec)
    copied = sampler.plan(8, 40, 4, spec.replace(shared_prefix=False))
    # Per slot: K and V x 2 layers x 2 KV heads x 32 dims x 2 bytes = 512, + 4 bytes position.
    assert copied.cache_bytes == 32 * (48 + 256) * 516
    assert shared.cache_bytes == (8 * 48 + 32 * 256) * 516
    assert shared.cache_bytes_per_device == shared.cache_bytes
    # G = 1 has nothing to share: the automatic layout is the copied one, same bytes either way.
    assert not sampler.plan(8, 40, 1, spec).shared_prefix
    assert (sampler.plan(8, 40, 1, spec.replace(shared_prefix=True)).cache_bytes
            == sampler.plan(8, 40, 1, spec).cache_bytes == 8 * (48 + 256) * 516)
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (tests/conftest.py fakes them on CPU)")
    # batch over data x fsdp = 4 devices, the 2 KV heads over tensor = 2: K/V bytes / 8,
    # positions / 4.
    mesh_plan = Sampler(cfg, params, mesh=make_mesh(2, 2, 2)).plan(8, 40, 4, spec)
    slots = 8 * 48 + 32 * 256
    assert mesh_plan.cache_bytes_per_device == slots * 512 // 8 + slots * 4 // 4


def test_shared_prefix_spec_validation():
    with pytest.raises(ValueError, match="shared_prefix"):
        SamplingSpec(shared_prefix=1)
    # The resolved layout reaches the loop separately: the compiled spec does not split on it.
    assert SamplingSpec(shared_prefix=True).compiled(16) == SamplingSpec().compiled(16)

