"""Packed SFT batches (several sequences per row, attention within a segment) give the
padded computation's loss and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlcot import sft
from rlcot.models.presets import get_config
from rlcot.models.transformer import init_params


@pytest.fixture(scope="module")
def model():
    cfg = get_config("tiny", vocab_size=64, n_layers=2, d_model=32, n_heads=2, n_kv_heads=1,
                     head_dim=16, mlp_dim=64, max_position=128)
    return init_params(cfg, seed=3)


def _examples(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(2, 64, rng.integers(0, 6)).tolist(),
             rng.integers(2, 64, rng.integers(1, 9)).tolist()) for _ in range(n)]


def _sums(graphdef, params, batch):
    nll, w = sft.token_nll(graphdef, params, batch)
    return (nll * w).sum(), w.sum()


def test_packed_equals_padded(model):
    graphdef, params = model
    examples = _examples(7)  # some with empty prompts: their first token is a target
    padded = sft.collate(examples, pad_id=0, eos_id=1)
    packed = sft.collate_packed([examples[:3], examples[3:5], examples[5:]], width=40,
                                pad_id=0, eos_id=1)
    (a, na), ga = jax.value_and_grad(lambda p: _sums(graphdef, p, padded), has_aux=True)(params)
    (b, nb), gb = jax.value_and_grad(lambda p: _sums(graphdef, p, packed), has_aux=True)(params)
    # An example's first token has nothing before it: never a target, packed or not.
    assert float(na) == float(nb) == sum(len(c) + 1 - (not p) for p, c in examples)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
    # float32 sums over other token orders: equal to 1e-5 of each gradient's scale (the
    # largest differences seen are ~4e-7 of it).
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        x, y = np.asarray(x), np.asarray(y)
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5 * np.abs(x).max())
    # Without segment ids the rows would attend across examples: a different loss.
    leaky = {k: v for k, v in packed.items() if k != "segment_ids_BxT"}
    leaky["valid_BxT"] = packed["valid_BxT"]
    c, _ = _sums(graphdef, params, leaky)
    assert abs(float(c) - float(a)) > 1e-3


def test_pack_plan_fills_rows_in_order_and_is_deterministic():
    lengths = np.array([5, 7, 3, 9, 4, 6, 2, 8])
    plan = sft.pack_plan(lengths, rows=2, width=12, steps=5, seed=0)
    assert plan == sft.pack_plan(lengths, rows=2, width=12, steps=5, seed=0)
    for step in plan:
        assert 1 <= len(step) <= 2 and all(sum(lengths[r]) <= 12 for r in step)
    first_epoch = [j for step in plan for row in step for j in row][:len(lengths)]
    assert sorted(first_epoch) == list(range(len(lengths)))  # every example once per epoch
    with pytest.raises(ValueError, match="more than the packed row width"):
        sft.pack_plan(lengths, rows=1, width=6, steps=1, seed=0)
