"""LoRA in the other stage kinds that train a policy: the sft and dpo steps train only the
adapters (micro-batches give the same update), and tiny sft and dpo stages with `lora` train,
load as the base with the adapters merged, and resume exactly."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlcot import dpo, sft, stages, study
from rlcot.models import lora, presets
from rlcot.models.transformer import init_params
from rlcot.workdir import read_metrics
from tests.loop.test_loop import short_base, tiny_config
from tests.stages import test_dpo

CFG = presets.get_config("tiny", vocab_size=64, d_model=32, mlp_dim=64, n_heads=2,
                         n_kv_heads=1, head_dim=16)
LORA = lora.LoraConfig(enabled=True, rank=4, alpha=8.0)


def _arrays(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def model():
    graphdef, base = init_params(CFG, seed=0)
    _, ref = init_params(CFG, seed=1)
    return graphdef, base, ref


def test_dpo_step_trains_only_the_adapters(model):
    graphdef, base, ref = model
    batch = test_dpo._batch(graphdef, ref)
    opt = sft.make_optimizer(sft.SFTConfig(learning_rate=1e-2, total_steps=10))
    step = dpo.make_train_step(opt, dpo.DPOLoss("sigmoid", beta=0.5))
    adapters = lora.init_adapters(LORA, base, seed=0)
    before = _arrays(base)
    a, o, m0 = step(graphdef, adapters, opt.init(adapters), batch, base, LORA.scale)
    a, o, m1 = step(graphdef, a, o, batch, base, LORA.scale)
    assert float(m1["loss"]) < float(m0["loss"]) - 1e-3
    for x, y in zip(_arrays(base), before, strict=True):
        np.testing.assert_array_equal(x, y)
    assert sorted(x.shape for x in jax.tree.leaves(o) if x.ndim) == sorted(
        [x.shape for x in jax.tree.leaves(a)] * 2)


def test_sft_step_trains_only_the_adapters_and_micro_batches_agree(model):
    graphdef, base, _ = model
    rng = np.random.default_rng(0)
    pairs = [(list(rng.integers(2, 60, 3)), list(rng.integers(2, 60, 1 + i % 4)))
             for i in range(8)]
    batch = sft.collate(pairs, pad_id=0, eos_id=1, length=10)
    opt = sft.make_optimizer(sft.SFTConfig(learning_rate=1e-2, total_steps=10))
    adapters = _randomized(lora.init_adapters(LORA, base, seed=0))
    copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731
    before = _arrays(base)
    one = sft.make_train_step(opt, 1)(graphdef, copy(adapters), opt.init(adapters), batch,
                                      base, LORA.scale)
    two = sft.make_train_step(opt, 2)(graphdef, copy(adapters), opt.init(adapters), batch,
                                      base, LORA.scale)
    for x, y in zip(_arrays(one[0]), _arrays(two[0]), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    np.testing.assert_allclose(float(one[2]["loss"]), float(two[2]["loss"]), rtol=1e-6)
    for x, y in zip(_arrays(base), before, strict=True):
        np.testing.assert_array_equal(x, y)
    moved = [np.abs(x - y).max() for x, y in zip(_arrays(one[0]), _arrays(adapters))]
    assert min(moved) > 0


def _randomized(adapters):
    """B away from zero, so that A gets a gradient too."""
    out = jax.tree.map(lambda x: x, adapters, is_leaf=lambda x: isinstance(x, lora.nnx.Variable))
    for i, name in enumerate(adapters):
        b = adapters[name]["b"]
        out[name]["b"] = b.replace(0.05 * jax.random.normal(jax.random.key(i),
                                                            b.get_value().shape))
    return out


def test_lora_with_the_sft_cache_is_refused():
    from rlcot.stages import sft as sft_stage
    with pytest.raises(ValueError, match="lora and train.cache do not go together"):
        sft_stage.resolve({"model": {"source": "preset:tiny"}, "train": {"cache": True},
                           "lora": {"enabled": True}})
    with pytest.raises(ValueError, match="lora.rank must be an int >= 1"):
        sft_stage.resolve({"model": {"source": "preset:tiny"}, "lora": {"rank": 0}})


# ---- tiny studies ------------------------------------------------------------------------------

def _resume_check(workdir, stage, drop_step, config):
    """Deletes the stage's last checkpoint and its finished mark; the same study then resumes
    from the one before and must end with the same metrics and merged weights."""
    rows = read_metrics(workdir / stage)
    params = test_dpo._params(workdir / stage)
    (workdir / stage / "summary.json").unlink()
    shutil.rmtree(workdir / stage / "checkpoints" / str(drop_step))
    again = study.run(config, workdir)["stages"][stage]
    assert again["resumed_from_step"] < drop_step
    assert test_dpo._comparable(read_metrics(workdir / stage)) == test_dpo._comparable(rows)
    for a, b in zip(params, test_dpo._params(workdir / stage), strict=True):
        np.testing.assert_array_equal(a, b)


def _check_lora_stage(workdir, stage):
    card = json.loads((workdir / stage / "model.json").read_text())
    assert card["source"] == "stage:base" and card["lora"]["rank"] == 4
    base, tuned = test_dpo._params(workdir / "base"), test_dpo._params(workdir / stage)
    changed = [not np.array_equal(a, b) for a, b in zip(base, tuned, strict=True)]
    assert 0 < sum(changed) < len(changed)  # the adapted projections, nothing else


@pytest.mark.usefixtures("shared_toy_cache")
def test_lora_dpo_stage_trains_and_resumes_exactly(tmp_path):
    config = test_dpo._study({"lora": {"enabled": True, "rank": 4, "alpha": 8.0},
                              "optimizer": {"learning_rate": 1e-2}})
    summary = study.run(config, tmp_path)
    assert summary["finished"]
    rows = read_metrics(tmp_path / "dpo")
    assert rows[-1]["rewards/margins"] > 0
    _check_lora_stage(tmp_path, "dpo")
    _resume_check(tmp_path, "dpo", 4, config)


@pytest.mark.usefixtures("shared_toy_cache")
def test_lora_sft_stage_trains_and_resumes_exactly(tmp_path):
    c = short_base(tiny_config(1))
    c.stage_order = ("base", "tune")
    del c.stages["rl"]
    c.stages.tune = stages.defaults(
        "sft", model={"source": "stage:base"}, data={"dataset": "toyworld_corpus"},
        lora={"enabled": True, "rank": 4, "alpha": 8.0},
        optimizer={"learning_rate": 1e-2},
        train={"steps": 4, "batch_size": 8, "length_multiple": 64, "log_every": 2,
               "checkpoint_every": 3})
    summary = study.run(c, tmp_path)
    assert summary["finished"]
    rows = read_metrics(tmp_path / "tune")
    assert [r["step"] for r in rows] == [2, 4] and rows[-1]["grad_norm"] > 0
    _check_lora_stage(tmp_path, "tune")
    _resume_check(tmp_path, "tune", 4, c)
