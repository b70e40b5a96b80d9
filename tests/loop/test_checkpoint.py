"""Checkpoints round-trip any pytree (NNX state, optax state) bitwise, with shardings and metadata."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlcot import sharding
from rlcot.checkpoint import Checkpointer
from rlcot.models import presets
from rlcot.models import transformer as tr


@pytest.fixture(scope="module")
def state():
    cfg = presets.get_config("tiny")
    mesh = sharding.make_mesh(1, 4, 2)
    _, params = tr.init_params(cfg, seed=0, mesh=mesh)
    opt_state = optax.adamw(1e-3).init(params)
    return {"params": params, "opt": opt_state, "step": jnp.int32(7),
            "rng": jax.random.key_data(jax.random.key(5))}


def test_round_trip_bitwise_with_shardings(state, tmp_path):
    ckpt = Checkpointer(tmp_path)
    assert ckpt.restore(state) is None
    ckpt.save(3, state, {"data": {"next_index": 12}, "note": "x"})
    ckpt.save(5, jax.tree.map(lambda x: x + 1 if x.dtype != jnp.uint32 else x, state),
              {"data": {"next_index": 20}})
    step, restored, meta = Checkpointer(tmp_path).restore(state)
    assert step == 5 and meta == {"data": {"next_index": 20}}
    step, restored, meta = ckpt.restore(state, step=3)
    assert meta["data"]["next_index"] == 12
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding == b.sharding
    assert jax.tree.structure(state) == jax.tree.structure(restored)


def test_mismatched_structure_is_a_clear_error(state, tmp_path):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, {"a": jnp.zeros(3)}, {})
    with pytest.raises(ValueError, match="does not match the current train state"):
        ckpt.restore({"b": jnp.zeros(3)})


def test_keeps_only_the_newest(tmp_path):
    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    for s in range(4):
        ckpt.save(s, {"x": jnp.full(2, s)}, {})
    ckpt.wait()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()
                  if p.name.isdigit()) == ["2", "3"]


def test_restore_only_a_subtree(state, tmp_path):
    # Evaluation restores just the policy parameters of a full train-state checkpoint.
    ckpt = Checkpointer(tmp_path)
    ckpt.save(4, state, {})
    step, params, _ = ckpt.restore(state["params"], prefix="['params']")
    assert step == 4
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding == b.sharding
