"""The update batch: from a real rollout (the trainer's log-probs match the sampler's on the
completion tokens, so the alignment agrees end to end), and the rows the step scans over."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlcot.models import presets
from rlcot.models import transformer as tr
from rlcot.rl.aggregation import AggregationConfig
from rlcot.rl.batch import UpdateBatch, make_update_batch
from rlcot.rl.kl import KLConfig
from rlcot.rl.logprobs import make_logprob_fn
from rlcot.rl.objective import ObjectiveConfig
from rlcot.rl.state import UpdateConfig
from rlcot.rl.update import prepare_batch
from rlcot.rl.value import ValueConfig
from rlcot.sampling import Sampler, SamplingSpec, left_pad, trainer_batch

CFG = presets.get_config("tiny", vocab_size=64, d_model=64, mlp_dim=128, head_dim=16)
# XLA:CPU options for these tests: no LLVM optimisation (compiles ~3x faster; shapes are tiny)
# and no YNNPACK fusions, whose row reductions (rms-norm means, softmax) round differently with
# the number of rows in the batch (~4e-7 relative), so per-row numerics would depend on how
# rows are grouped into micro-batches or shards.
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_experimental_ynn_fusion_type": ""}


def test_rollout_to_update_batch_alignment():
    graphdef, params = tr.init_params(CFG, seed=1)
    prompts, lens = left_pad([[5, 6, 7, 8, 9], [10, 11]], pad_id=0)
    out = Sampler(CFG, params, pad_id=0).generate(
        prompts, lens, jax.random.key(0), num_samples=2,
        spec=SamplingSpec(max_new_tokens=6, temperature=1.0, stop_ids=(3, 4, 5, 6)))
    tb = trainer_batch(out)
    logp_old = make_logprob_fn(graphdef, params, chunk=4, compiler_options=FAST)(
        params, tb.tokens_NxL, tb.positions_NxL, tb.valid_NxL)
    m = np.asarray(tb.completion_mask_NxL, bool)
    assert m.any() and (m.sum(1) > 0).all()
    # Same model, same tokens: the trainer's recomputed log-probs are the sampler's.
    np.testing.assert_allclose(np.asarray(logp_old)[m], np.asarray(tb.logp_NxL)[m], atol=2e-5)
    batch = make_update_batch(tb, jnp.zeros(m.shape), logp_old, use_sampler_logp=True,
                              truncated_N=out.truncated_N)
    assert batch.loss_mask_NxL.dtype == jnp.float32 and batch.logp_ref_NxL is None
    np.testing.assert_array_equal(np.asarray(batch.logp_sampler_NxL),
                                  np.asarray(tb.sample_logp_NxL))
    assert len(jax.tree.leaves(batch)) == 8             # None fields are empty subtrees
    with pytest.raises(ValueError, match="adv has shape"):
        make_update_batch(tb, jnp.zeros((m.shape[0], m.shape[1] + 1)), logp_old)


def test_prepare_batch_masks_truncated_rows_and_cleans_padding():
    mask = np.array([[0, 1, 1, 1], [0, 1, 1, 0], [0, 0, 1, 1]], np.float32)
    adv = np.where(mask > 0, 1.0, np.nan).astype(np.float32)   # garbage off the mask
    batch = UpdateBatch(np.zeros((3, 4), np.int32), np.zeros((3, 4), np.int32),
                        np.ones((3, 4), bool), mask, adv,
                        np.where(mask > 0, -1.0, np.inf).astype(np.float32),
                        truncated_N=np.array([False, True, False]))
    cfg = UpdateConfig(objective=ObjectiveConfig(
        aggregation=AggregationConfig(mask_truncated=True)))
    rows = prepare_batch(cfg, batch)
    np.testing.assert_array_equal(rows["mask"], [[0, 1, 1, 1], [0, 0, 0, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(rows["adv"], rows["mask"])       # nan gone, 1 on the mask
    np.testing.assert_array_equal(rows["logp_old"], -rows["mask"])  # inf * 0 would be nan
    assert set(rows) == {"tokens", "positions", "valid", "mask", "adv", "logp_old"}
    # Without the option, truncated rows keep their tokens.
    assert float(prepare_batch(UpdateConfig(), batch)["mask"].sum()) == 7
    with pytest.raises(ValueError, match="no truncated_N"):
        prepare_batch(cfg, dataclasses.replace(batch, truncated_N=None))
    with pytest.raises(ValueError, match="logp_ref_NxL"):
        prepare_batch(UpdateConfig(objective=ObjectiveConfig(
            kl=KLConfig(placement="loss", coef=0.1))), batch)
    with pytest.raises(ValueError, match="logp_ref_NxL"):       # the controller needs it too
        prepare_batch(UpdateConfig(objective=ObjectiveConfig(kl=KLConfig(
            placement="reward", coef=0.1, controller="adaptive", target=1.0, horizon=10.0))),
            batch)
    with pytest.raises(ValueError, match="values_old_NxL"):
        prepare_batch(UpdateConfig(value=ValueConfig()), batch, critic=True)
    with pytest.raises(ValueError, match="value aggregation"):
        ValueConfig(aggregation="constant")


@pytest.mark.parametrize("estimator", ["grpo", "gae"])
def test_the_compiled_prepare_program_is_the_eager_sequence(estimator):
    """make_prepare_fn (one program, what the loop runs) against the documented sequence of
    eager calls: reward_kl, compute_advantages, make_update_batch."""
    from rlcot.rl.advantages import AdvantageConfig
    from rlcot.rl.batch import compute_advantages, make_prepare_fn, reward_kl
    from rlcot.sampling.outputs import TrainerBatch
    rng = np.random.default_rng(0)
    N, L, G = 8, 6, 4
    mask = (rng.random((N, L)) < 0.7).astype(bool)
    mask[:, 0] = False
    mask[:, 1] = True
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
    tb = TrainerBatch(jnp.asarray(rng.integers(0, 50, (N, L)), jnp.int32),
                      jnp.tile(jnp.arange(L), (N, 1)), jnp.ones((N, L), bool),
                      jnp.asarray(mask), f(N, L), f(N, L))
    scores, logp_old, logp_ref = f(N), f(N, L), f(N, L)
    row_valid = jnp.asarray([True] * 7 + [False])
    truncated = jnp.asarray([False] * 6 + [True, False])
    values = f(N, L) if estimator == "gae" else None
    adv_cfg = AdvantageConfig(estimator=estimator)
    kl = KLConfig(estimator="k3", placement="reward", coef=0.05)
    kl_coef = jnp.float32(0.05)

    got = make_prepare_fn(adv_cfg, kl, group_size=G, use_sampler_logp=True)(
        tb, scores, row_valid, truncated, logp_old, logp_ref, values, kl_coef)
    kl_NxL = reward_kl(kl, logp_old, logp_ref, tb.completion_mask_NxL)
    adv, returns = compute_advantages(adv_cfg, scores, tb.completion_mask_NxL, group_size=G,
                                      values_NxL=values, kl_NxL=kl_NxL, kl_coef=kl_coef,
                                      row_valid_N=row_valid)
    want = make_update_batch(tb, adv, logp_old, logp_ref_NxL=logp_ref, use_sampler_logp=True,
                             truncated_N=truncated, values_old_NxL=values, returns_NxL=returns)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert (returns is not None) == (estimator == "gae")
    assert float(jnp.abs(want.adv_NxL).sum()) > 0
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
