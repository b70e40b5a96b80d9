"""Chunked per-token log-probs and entropies equal the full forward's, values and gradients,
on one device and in the training layout on 8 fake devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlcot import sharding
from rlcot.models import presets
from rlcot.models import transformer as tr
from rlcot.rl.logprobs import make_logprob_fn, token_logprobs
from rlcot.rl.losses import entropy_from_logits

N, L = 8, 12
CFG = presets.get_config("tiny", vocab_size=64, d_model=64, mlp_dim=128, head_dim=16)
# XLA:CPU options for these tests: no LLVM optimisation (compiles ~3x faster; shapes are tiny)
# and no YNNPACK fusions, whose row reductions (rms-norm means, softmax) round differently with
# the number of rows in the batch (~4e-7 relative), so per-row numerics would depend on how
# rows are grouped into micro-batches or shards.
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_experimental_ynn_fusion_type": ""}


@pytest.fixture(scope="module")
def setup():
    graphdef, params = tr.init_params(CFG, seed=1)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CFG.vocab_size, (N, L)).astype(np.int32)
    valid = np.ones((N, L), bool)
    valid[0, :3] = False          # left padding
    valid[1, 9:] = False          # right padding
    valid[2, :2] = valid[2, 10:] = False
    positions = np.asarray(tr.positions_from_mask(valid))
    forward = jax.jit(tr.forward, static_argnums=0, compiler_options=FAST)
    logits, _ = forward(graphdef, params, tokens, positions, valid)
    # Reference: logits at t - 1 predict token t; defined where both tokens are valid.
    ref_logp = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None],
                                   -1)[..., 0]
    ref_ent = entropy_from_logits(logits[:, :-1])
    defined = np.zeros((N, L), bool)
    defined[:, 1:] = valid[:, 1:] & valid[:, :-1]
    return graphdef, params, tokens, positions, valid, ref_logp, ref_ent, defined


@pytest.mark.parametrize("chunk", [1, 5, 64])   # 64 > L - 1: one chunk; 5: padded last chunk
def test_chunked_logprobs_equal_full_forward(setup, chunk):
    graphdef, params, tokens, positions, valid, ref_logp, ref_ent, defined = setup
    logp, ent = jax.jit(lambda p: token_logprobs(graphdef, p, tokens, positions, valid,
                                                 chunk=chunk), compiler_options=FAST)(params)
    assert logp.shape == ent.shape == (N, L)
    np.testing.assert_allclose(np.asarray(logp)[:, 1:][defined[:, 1:]],
                               np.asarray(ref_logp)[defined[:, 1:]], rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ent)[:, 1:][defined[:, 1:]],
                               np.asarray(ref_ent)[defined[:, 1:]], rtol=0, atol=1e-5)
    # Undefined positions (first token, padding, the token after padding) are exactly 0.
    assert not np.asarray(logp)[~defined].any() and not np.asarray(ent)[~defined].any()
    # 11 (t - 1, t) pairs per row; padding removes 3 (row 0), 3 (row 1) and 4 (row 2).
    assert defined.sum() == 8 * 11 - 3 - 3 - 4


def test_chunked_gradient_equals_full_logits_gradient(setup):
    graphdef, params, tokens, positions, valid, _, _, defined = setup
    w = jnp.asarray(np.random.default_rng(1).normal(size=(N, L)) * defined, jnp.float32)

    def full(p):
        logits, _ = tr.forward(graphdef, p, tokens, positions, valid)
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1)
        return jnp.sum(lp[..., 0] * w[:, 1:]) + jnp.sum(entropy_from_logits(logits[:, :-1])
                                                        * w[:, 1:])

    def chunked(p):
        logp, ent = token_logprobs(graphdef, p, tokens, positions, valid, chunk=5, remat=True)
        return jnp.sum(logp * w) + jnp.sum(ent * w)

    g_ref = jax.jit(jax.grad(full), compiler_options=FAST)(params)
    g = jax.jit(jax.grad(chunked), compiler_options=FAST)(params)
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g_ref))
    err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g),
                                                              jax.tree.leaves(g_ref)))
    assert scale > 1e-2 and err / scale <= 1e-6, (err, scale)


def test_sharded_logprob_fn_equals_single_device(setup):
    graphdef, params, tokens, positions, valid, _, _, _ = setup
    single = make_logprob_fn(graphdef, params, chunk=4, compiler_options=FAST)(
        params, tokens, positions, valid)
    mesh = sharding.make_mesh(2, 2, 2)
    sharded = sharding.shard_state(params, mesh, sharding.TRAIN_RULES)
    fn = make_logprob_fn(graphdef, sharded, mesh=mesh, chunk=4, compiler_options=FAST)
    out = fn(sharded, tokens, positions, valid)
    assert out.sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_allclose(np.asarray(out), np.asarray(single), rtol=0, atol=1e-6)
