"""On 8 fake CPU devices, sharded sampling gives the single-device tokens for the same rng."""

import jax
import numpy as np
import pytest

from rlcot.sampling import Sampler, SamplingSpec, to_sampling_params
from rlcot.sharding import TRAIN_RULES, make_mesh, shard_state

SPEC = SamplingSpec(max_new_tokens=10, temperature=1.0, top_k=50)


@pytest.fixture(scope="module")
def single(tiny, prompts):
    cfg, _, params = tiny
    return Sampler(cfg, params).generate(*prompts, jax.random.key(7), 2, SPEC)


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 4, 2)])
def test_sharded_sampling_matches_single_device(shape, tiny, prompts, single):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (tests/conftest.py fakes them on CPU)")
    cfg, _, params = tiny
    mesh = make_mesh(*shape)
    # Start from the training layout (FSDP over embed) to exercise the resharding.
    train_params = shard_state(params, mesh, TRAIN_RULES)
    sampler = Sampler(cfg, train_params, mesh=mesh)
    out = sampler.generate(*prompts, jax.random.key(7), 2, SPEC)
    np.testing.assert_array_equal(np.asarray(out.tokens_NxT), np.asarray(single.tokens_NxT))
    np.testing.assert_allclose(np.asarray(out.logp_NxT), np.asarray(single.logp_NxT), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.lengths_N), np.asarray(single.lengths_N))
    # 3 prompts pad to 4 rows so the batch splits over data x fsdp = 4 devices.
    assert out.stats["plan"].batch_rows == 4
    assert out.stats["plan"].cache_bytes_per_device < out.stats["plan"].cache_bytes / 4


def test_sampling_layout_shardings(tiny):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices")
    cfg, _, params = tiny
    mesh = make_mesh(2, 2, 2)
    sp = to_sampling_params(cfg, shard_state(params, mesh, TRAIN_RULES), mesh)
    assert len(sp.layers) == cfg.n_layers
    q = sp.layers[0]["q"].get_value()
    # Per-layer [embed, heads, head_dim]: heads over tensor, embed replicated (no FSDP).
    assert q.shape == (cfg.d_model, cfg.n_heads, cfg.head_dim)
    assert tuple(q.sharding.spec) == (None, "tensor", None)
    assert sp.top["embed"].sharding.spec[1] is None
    np.testing.assert_array_equal(np.asarray(q), np.asarray(params["blocks"]["q"].get_value()[0]))
