"""Parameters shard by logical axis names; sharded forward passes equal single-device ones."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rlcot import sharding
from rlcot.models import presets
from rlcot.models import transformer as tr


def test_make_mesh_fills_the_rest():
    mesh = sharding.make_mesh(data=2, fsdp=-1, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


@pytest.mark.parametrize("shape, message", [((3, -1, 1), "not a multiple of 3"),
                                            ((2, 2, 4), "needs 16 devices"),
                                            ((-1, -1, 1), "at most one")])
def test_make_mesh_errors(shape, message):
    with pytest.raises(ValueError, match=message):
        sharding.make_mesh(*shape)


def test_logical_rules_and_divisibility_fallback():
    mesh = sharding.make_mesh(2, 2, 2)
    rules = sharding.TRAIN_RULES
    assert sharding.logical_to_spec(("layers", "embed", "heads", "head_dim"), rules,
                                    (2, 64, 4, 16), mesh) == P(None, "fsdp", "tensor", None)
    # 3 KV heads cannot split over tensor=2: replicated instead of failing.
    assert sharding.logical_to_spec(("layers", "embed", "kv_heads", "head_dim"), rules,
                                    (2, 64, 3, 16), mesh) == P(None, "fsdp", None, None)
    # batch takes (data, fsdp); a mesh axis is never used twice in one spec.
    assert sharding.logical_to_spec(("batch", "embed"), rules, (8, 64), mesh) == P(
        ("data", "fsdp"), None)
    with pytest.raises(KeyError, match="no sharding rule"):
        sharding.logical_to_spec(("bogus",), rules)


@pytest.mark.parametrize("name", ["tiny", "tiny-gemma3"])
def test_sharded_forward_equals_single_device(name):
    cfg = presets.get_config(name)
    graphdef, params = tr.init_params(cfg, seed=3)
    mesh = sharding.make_mesh(2, 2, 2)
    sharded = sharding.shard_state(params, mesh, sharding.TRAIN_RULES)
    q = jax.tree.leaves(sharded)  # every parameter lives on all 8 devices, split as the rules say
    assert all(len(x.sharding.device_set) == 8 for x in q)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 24)).astype(np.int32)
    valid = np.ones_like(tokens, bool)
    valid[::2, :5] = False
    positions = np.asarray(tr.positions_from_mask(valid))
    fwd = jax.jit(tr.forward, static_argnums=0)
    ref, _ = fwd(graphdef, params, tokens, positions, valid)
    batch = jax.sharding.NamedSharding(mesh, P(("data", "fsdp")))
    out, _ = fwd(graphdef, sharded, *(jax.device_put(x, batch) for x in (tokens, positions, valid)))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=1e-5)


def test_init_params_directly_sharded():
    cfg = presets.get_config("tiny")
    mesh = sharding.make_mesh(1, 4, 2, devices=jax.devices()[:8])
    _, params = tr.init_params(cfg, seed=0, mesh=mesh)
    _, ref = tr.init_params(cfg, seed=0)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    embed = params["embed"].get_value()
    assert embed.sharding.spec == P("tensor", "fsdp")
