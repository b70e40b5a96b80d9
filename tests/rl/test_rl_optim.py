"""LR schedules by hand, the weight-decay mask, clipping, and config validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlcot.models import presets
from rlcot.models import transformer as tr
from rlcot.rl.optim import OptimizerConfig, decay_mask, make_optimizer, make_schedule
from rlcot.rl.state import UpdateConfig

# XLA:CPU options for these tests: no LLVM optimisation (compiles ~3x faster; shapes are tiny)
# and no YNNPACK fusions, whose row reductions (rms-norm means, softmax) round differently with
# the number of rows in the batch (~4e-7 relative), so per-row numerics would depend on how
# rows are grouped into micro-batches or shards.
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_experimental_ynn_fusion_type": ""}


def first_update(tx, grads, params):
    return jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0], compiler_options=FAST)(grads,
                                                                                      params)


def lrs(cfg, steps):
    sched = make_schedule(cfg)
    return [float(sched(s)) for s in steps]


def test_schedules_by_hand():
    np.testing.assert_allclose(lrs(OptimizerConfig(lr=0.1), [0, 5, 1000]), [0.1] * 3)
    # lr * min(1, (s + 1) / warmup), warmup 4.
    np.testing.assert_allclose(
        lrs(OptimizerConfig(lr=1.0, schedule="linear_warmup", warmup_steps=4), range(6)),
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0], rtol=1e-6)
    # Cosine over 4 steps to 0.1: 0.1 + 0.9 * (1 + cos(pi s / 4)) / 2, flat afterwards.
    cos = [0.1 + 0.9 * (1 + math.cos(math.pi * s / 4)) / 2 for s in (0, 2, 4)]
    np.testing.assert_allclose(
        lrs(OptimizerConfig(lr=1.0, schedule="cosine", decay_steps=4, end_lr_ratio=0.1),
            [0, 2, 4, 6]), cos + [0.1], rtol=1e-6)
    # Warmup 2 then cosine over the remaining 4 of 6 steps, to 0.
    np.testing.assert_allclose(
        lrs(OptimizerConfig(lr=1.0, schedule="warmup_cosine", warmup_steps=2, decay_steps=6),
            [0, 1, 2, 4, 6, 8]), [0.5, 1.0, 1.0, 0.5, 0.0, 0.0], rtol=1e-6, atol=1e-7)


def test_weight_decay_skips_norms_and_clipping_bounds_the_step():
    _, params = tr.init_params(presets.get_config("tiny", vocab_size=64, d_model=64,
                                                  mlp_dim=128, head_dim=16))
    mask = decay_mask(params)
    assert not mask["blocks"]["attn_norm"].get_value() and not mask["final_norm"].get_value()
    assert mask["blocks"]["q"].get_value() and mask["embed"].get_value()
    # Zero gradients: AdamW moves only by decay, p <- p - lr * wd * p, never on norm scales.
    tx = make_optimizer(OptimizerConfig(lr=0.1, weight_decay=0.5))
    zeros = jax.tree.map(jnp.zeros_like, params)
    upd = first_update(tx, zeros, params)
    np.testing.assert_allclose(np.asarray(upd["blocks"]["q"].get_value()),
                               -0.05 * np.asarray(params["blocks"]["q"].get_value()), rtol=1e-6)
    assert not np.asarray(upd["blocks"]["attn_norm"].get_value()).any()
    # Clip to norm 1 then Adam with a huge eps (update ~ lr * g / eps): the step is the
    # clipped gradient, whatever the raw gradient's size.
    tx = make_optimizer(OptimizerConfig(lr=1e6, eps=1e6, max_grad_norm=1.0))
    g = jax.tree.map(lambda p: jnp.full(p.shape, 10.0), params)
    upd = first_update(tx, g, params)
    n = sum(x.size for x in jax.tree.leaves(params))
    # Adam's first step: m = 0.1 g_c, v = 0.001 g_c^2, bias-corrected to g_c and g_c^2.
    expected = -1e6 * (1 / math.sqrt(n)) / (1 / math.sqrt(n) + 1e6)
    np.testing.assert_allclose(np.asarray(upd["embed"].get_value()), expected, rtol=1e-5)


@pytest.mark.parametrize("kw, message", [
    (dict(schedule="step"), "unknown LR schedule"),
    (dict(schedule="linear_warmup"), "warmup_steps >= 1"),
    (dict(schedule="cosine", decay_steps=0), "decay_steps > warmup_steps"),
    (dict(b2=1.0), "betas"),
    (dict(max_grad_norm=0.0), "max_grad_norm"),
    (dict(lr=-1.0), "lr must be"),
])
def test_optimizer_config_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(**kw)


def test_update_config_errors():
    with pytest.raises(ValueError, match="micro_batches"):
        UpdateConfig(micro_batches=0)
    cfg = UpdateConfig(minibatches=2, micro_batches=2)
    cfg.check_rows(16, row_shards=4)
    with pytest.raises(ValueError, match="do not split into 3 minibatches"):
        UpdateConfig(minibatches=3).check_rows(16)
    with pytest.raises(ValueError, match=r"need a multiple of 8; rows 12"):
        cfg.check_rows(12, row_shards=4)
