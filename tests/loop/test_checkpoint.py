"""Checkpoints round-trip any pytree (NNX state, optax state) bitwise, with shardings and
metadata; damaged ones (truncated or missing files, a kill during the save) are found and a
resuming run falls back to the newest good one."""

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlcot import sharding
from rlcot.checkpoint import Checkpointer, DamagedCheckpoint
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


# ---- damaged checkpoints ------------------------------------------------------------------------

def _three_steps(tmp_path):
    ckpt = Checkpointer(tmp_path, max_to_keep=3)
    for s in (1, 2, 3):
        ckpt.save(s, {"x": jnp.full(1000, float(s)), "y": {"z": jnp.arange(3) + s}},
                  {"step": s})
    ckpt.close()
    return {"x": jnp.zeros(1000), "y": {"z": jnp.zeros(3, jnp.int32)}}


def _biggest_file(step_dir):  # of the state: the arrays' data
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage,match", [
    (lambda d: _biggest_file(d).write_bytes(_biggest_file(d).read_bytes()[:100]),
     r"has 100 bytes, was written with \d+"),
    (lambda d: (d / "_CHECKPOINT_METADATA").unlink(), "_CHECKPOINT_METADATA is missing"),
    (lambda d: (d / "meta" / "metadata").unlink(), "meta/metadata is missing"),
    (lambda d: (d / "state" / "_METADATA").unlink(), "state/_METADATA is missing"),
    (lambda d: (d / "rlcot_files.json").write_text("{trunc"), "file list .* is unreadable"),
])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage,
                                                                    match):
    like = _three_steps(tmp_path)
    damage(tmp_path / "checkpoints" / "3")
    ckpt = Checkpointer(tmp_path, max_to_keep=3)
    assert re.search(match, ckpt.check(3))
    with pytest.raises(DamagedCheckpoint, match=match):  # a finished stage's model: no fallback
        ckpt.restore(like)
    with caplog.at_level(logging.WARNING, logger="rlcot.checkpoint"):
        step, state, meta = ckpt.restore(like, fallback=True)
    assert step == 2 and meta == {"step": 2} and float(state["x"][0]) == 2.0
    assert re.search(f"checkpoints/3 is damaged: .*{match}", caplog.text)
    assert "resuming from step 2" in caplog.text
    # The damaged one is set aside with the reason, so the resumed run can save step 3 again.
    assert ckpt.all_steps() == [1, 2]
    assert re.search(match, (tmp_path / "checkpoints.damaged" / "3.why.txt").read_text())
    ckpt.save(3, {"x": jnp.full(1000, 3.0), "y": {"z": jnp.arange(3) + 3}}, {"step": 3})
    assert ckpt.restore(like)[0] == 3 and ckpt.check(3) is None


def test_unreadable_without_a_file_list_is_found_by_restoring(tmp_path, caplog):
    # Checkpoints written before file lists existed are checked by restoring them.
    like = _three_steps(tmp_path)
    step3 = tmp_path / "checkpoints" / "3"
    (step3 / "rlcot_files.json").unlink()
    assert Checkpointer(tmp_path).check(3) is None
    big = _biggest_file(step3)
    big.write_bytes(big.read_bytes()[:50])
    with caplog.at_level(logging.WARNING, logger="rlcot.checkpoint"):
        step, _, _ = Checkpointer(tmp_path, max_to_keep=3).restore(like, fallback=True)
    assert step == 2 and "checkpoints/3 is damaged: restoring it failed" in caplog.text


def test_a_kill_during_a_save_leaves_no_checkpoint(tmp_path, caplog):
    # orbax writes a save into STEP.orbax-checkpoint-tmp-* and renames it when complete: the
    # leftover of a killed save is not a checkpoint, and the next run removes it.
    like = _three_steps(tmp_path)
    partial = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "_METADATA").write_text("{")
    with caplog.at_level(logging.WARNING, logger="rlcot.checkpoint"):
        ckpt = Checkpointer(tmp_path, max_to_keep=3)
        step, _, _ = ckpt.restore(like, fallback=True)
    ckpt.close()
    assert step == 3
    assert "removing unfinished saves ['4.orbax-checkpoint-tmp-1234567']" in caplog.text
    assert not partial.exists()


def test_no_good_checkpoint_is_an_error_naming_each(tmp_path):
    like = _three_steps(tmp_path)
    for s in (1, 2, 3):
        (tmp_path / "checkpoints" / str(s) / "meta" / "metadata").unlink()
    with pytest.raises(DamagedCheckpoint, match=r"step 3: meta/metadata is missing; step 2: "
                                                r"meta/metadata is missing; step 1: .*remove"):
        Checkpointer(tmp_path, max_to_keep=3).restore(like, fallback=True)
    assert not (tmp_path / "checkpoints.damaged").exists()  # nothing moved without a good one
