"""rlcot.sft: the masked next-token loss against a hand computation, masking, micro-batching
and one optimisation step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlcot import sft
from rlcot.models.presets import get_config
from rlcot.models.transformer import forward, init_params

CFG = get_config("tiny", vocab_size=40, n_layers=1, d_model=32, n_heads=2, n_kv_heads=1,
                 head_dim=16, mlp_dim=64, max_position=64)


# Jitted once per module: eager op-by-op dispatch of the model is what makes tests slow.
loss_fn = jax.jit(sft.loss_fn, static_argnums=0)
_logits = jax.jit(lambda g, p, t: forward(g, p, t, jnp.broadcast_to(jnp.arange(t.shape[1]),
                                                                     t.shape))[0],
                  static_argnums=0)


@pytest.fixture(scope="module")
def model():
    return init_params(CFG, seed=0)


def _batch():
    # Row 0: prompt [5, 6], completion [7, 8] + eos 1. Row 1: prompt [9], completion
    # [10, 11, 12] + eos. Both 5 tokens long.
    return sft.collate([([5, 6], [7, 8]), ([9], [10, 11, 12])], pad_id=0, eos_id=1)


def test_collate_layout():
    b = _batch()
    np.testing.assert_array_equal(b["tokens_BxT"], [[5, 6, 7, 8, 1], [9, 10, 11, 12, 1]])
    np.testing.assert_array_equal(b["target_mask_BxT"], [[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(b["valid_BxT"], np.ones((2, 5), bool))
    padded = sft.collate([([5], [7])], pad_id=0, eos_id=1, length=4)
    np.testing.assert_array_equal(padded["tokens_BxT"], [[5, 7, 1, 0]])
    np.testing.assert_array_equal(padded["valid_BxT"], [[1, 1, 1, 0]])
    np.testing.assert_array_equal(padded["target_mask_BxT"], [[0, 1, 1, 0]])
    with pytest.raises(ValueError, match="more than length=2"):
        sft.collate([([5], [7])], pad_id=0, eos_id=1, length=2)
    cut = sft.collate([([5], [7, 8])], pad_id=0, eos_id=1, length=2, truncate=True)
    np.testing.assert_array_equal(cut["tokens_BxT"], [[5, 7]])
    with pytest.raises(ValueError, match="empty completion"):
        sft.collate([([5], [])], pad_id=0)


def _hand_loss(graphdef, params, batch):
    """-mean over target tokens t of log softmax(logits[t-1])[token t], in float64 numpy."""
    logits = np.asarray(_logits(graphdef, params, jnp.asarray(batch["tokens_BxT"])), np.float64)
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(1, logits.shape[1]):
            if batch["target_mask_BxT"][b, t] and batch["valid_BxT"][b, t]:
                row = logits[b, t - 1]
                logz = np.log(np.exp(row - row.max()).sum()) + row.max()
                total += logz - row[batch["tokens_BxT"][b, t]]
                count += 1
    return total / count, count


def test_loss_matches_hand_computation(model):
    graphdef, params = model
    batch = _batch()
    loss, metrics = loss_fn(graphdef, params, batch)
    expected, count = _hand_loss(graphdef, params, batch)
    assert count == 7  # 3 targets in row 0 (7, 8, eos) + 4 in row 1 (10, 11, 12, eos)
    assert float(metrics["target_tokens"]) == 7
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_masked_tokens_contribute_nothing(model):
    graphdef, params = model
    batch = _batch()
    base, _ = loss_fn(graphdef, params, batch)
    # A masked token that nothing valid comes after (a pad slot) can be anything.
    padded = sft.collate([([5, 6], [7, 8]), ([9], [10, 11, 12, 13])], pad_id=0, eos_id=1)
    other = {k: v.copy() for k, v in padded.items()}
    other["tokens_BxT"][0, -1] = 33  # row 0's padding slot
    a, _ = loss_fn(graphdef, params, padded)
    b, _ = loss_fn(graphdef, params, other)
    assert float(a) == float(b)
    # A valid but masked last token: its value changes no logit that is scored.
    last = {k: v.copy() for k, v in batch.items()}
    last["target_mask_BxT"][1, 4] = False
    changed = {k: v.copy() for k, v in last.items()}
    changed["tokens_BxT"][1, 4] = 33
    assert float(loss_fn(graphdef, params, last)[0]) == float(loss_fn(graphdef, params, changed)[0])
    assert float(loss_fn(graphdef, params, last)[0]) != float(base)
    # Unmasking the prompt adds exactly its targets: the masked loss equals the hand loss
    # restricted to completion tokens, which differs from the all-token loss.
    full = {**batch, "target_mask_BxT": batch["valid_BxT"].copy()}
    all_tokens, n_all = _hand_loss(graphdef, params, full)
    assert n_all == 8  # every token but the first of each row
    assert abs(float(base) - all_tokens) > 1e-4
    # Gradients: a loss whose only target is masked out is zero with zero gradient.
    none = {**batch, "target_mask_BxT": np.zeros_like(batch["target_mask_BxT"])}
    zero, _ = loss_fn(graphdef, params, none)
    assert float(zero) == 0.0
    grads = jax.jit(jax.grad(lambda p: sft.loss_fn(graphdef, p, none)[0]))(params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_one_step_reduces_loss_and_micro_batches_agree(model):
    graphdef, params = model
    batch = sft.collate([([5, 6], [7, 8]), ([9], [10, 11, 12]), ([5], [7, 7]), ([6], [8])],
                        pad_id=0, eos_id=1, length=6)
    cfg = sft.SFTConfig(learning_rate=1e-2, total_steps=10, max_grad_norm=None)
    opt = sft.make_optimizer(cfg)
    before, _ = loss_fn(graphdef, params, batch)
    copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731  (the step donates its inputs)
    p1, _, m1 = sft.make_train_step(opt)(graphdef, copy(params), opt.init(params), batch)
    p2, _, m2 = sft.make_train_step(opt, micro_batches=2)(graphdef, copy(params),
                                                          opt.init(params), batch)
    after, _ = loss_fn(graphdef, p1, batch)
    assert float(after) < float(before) - 1e-3
    np.testing.assert_allclose(float(m1["loss"]), float(before), rtol=1e-6)
    # Micro-batches split rows 2 + 2 with 5 and 3 targets: normalising per micro-batch would
    # give a different update; summing then normalising by 8 gives the same one.
    np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # The same rows as two separately padded parts (widths 6 and 3): the same gradient. Plain
    # SGD makes the parameter change the gradient itself (Adam's first step is ~lr * sign(g),
    # which turns float rounding of near-zero gradients into changes of up to lr).
    short = sft.collate([([5], [7, 7]), ([6], [8])], pad_id=0, eos_id=1)
    long = sft.collate([([5, 6], [7, 8]), ([9], [10, 11, 12])], pad_id=0, eos_id=1, length=6)
    assert short["tokens_BxT"].shape == (2, 4)
    sgd = optax.sgd(1.0)
    p4, _, m4 = sft.make_train_step(sgd)(graphdef, copy(params), sgd.init(params), batch)
    p3, _, m3 = sft.make_train_step(sgd)(graphdef, copy(params), sgd.init(params), (long, short))
    np.testing.assert_allclose(float(m3["loss"]), float(m1["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-6)
    for a, b, p0 in zip(jax.tree.leaves(p4), jax.tree.leaves(p3), jax.tree.leaves(params)):
        g4, g3 = np.asarray(a) - np.asarray(p0), np.asarray(b) - np.asarray(p0)
        np.testing.assert_allclose(g3, g4, atol=1e-6 * max(1.0, float(np.abs(g4).max())))
    with pytest.raises(ValueError, match="micro-batches"):
        sft.make_train_step(opt, micro_batches=3)(graphdef, copy(params), opt.init(params), batch)


def test_config_validation():
    with pytest.raises(ValueError, match="learning_rate"):
        sft.SFTConfig(learning_rate=0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        sft.SFTConfig(total_steps=5, warmup_steps=6)
    with pytest.raises(ValueError, match="micro_batches"):
        sft.SFTConfig(micro_batches=0)
    sched = sft.learning_rate_schedule(sft.SFTConfig(learning_rate=1.0, total_steps=11,
                                                     warmup_steps=1, end_lr_ratio=0.1))
    # Warmup 0 -> 1 over one step, then cosine from 1 at step 1 to 0.1 at step 11.
    np.testing.assert_allclose([float(sched(0)), float(sched(1)), float(sched(11))],
                               [0.0, 1.0, 0.1], atol=1e-6)
