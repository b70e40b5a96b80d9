"""LoRA in the RL loop, end to end on the tiny toy study (base sft -> rl with learner.lora): the
checkpoints hold only the adapters, the KL reference is the base with the adapters off, a
stopped run resumes to the same numbers, and the finished stage loads (and exports) as the base
with the adapters merged."""

import importlib.util
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from rlcot.models import lora
from rlcot.workdir import read_metrics

_spec = importlib.util.spec_from_file_location(
    "loop_tests", Path(__file__).parents[1] / "loop" / "test_loop.py")
loop_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loop_tests)

pytestmark = pytest.mark.usefixtures("shared_toy_cache")


def lora_config(steps: int = 4):
    c = loop_tests.short_base(loop_tests.tiny_config(steps))
    c.learner.lora = dict(enabled=True, rank=4, alpha=8.0)
    c.learner.optimizer.lr = 3e-3
    # A KL term against the reference (the base, adapters off), so that it is exercised.
    c.learner.objective.kl = dict(placement="loss", estimator="k3", coef=0.01)
    return c


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    from rlcot.study import run
    workdir = tmp_path_factory.mktemp("lora")
    summary = run(lora_config(), workdir)
    return workdir, summary


def test_lora_run_trains_adapters_against_the_base(lora_run):
    workdir, summary = lora_run
    assert summary["finished"]
    rl = workdir / "rl"
    card = json.loads((rl / "model.json").read_text())
    assert card["source"] == "stage:base" and card["lora"]["rank"] == 4
    rows = read_metrics(rl)
    train = rows[1:]
    assert all(r["opt_steps"] == 2 and r["grad_norm"] > 0 for r in train)
    # Step 1 samples from base + zero adapters: the policy is the reference bit for bit.
    assert train[0]["rollout_kl"] == 0.0 and train[-1]["rollout_kl"] > 0.0
    # Checkpoints hold the adapters and their Adam moments, not the 0.44M-parameter base:
    # counted in stored array elements (global shapes from the checkpoint's metadata; the
    # on-disk bytes of orbax's ocdbt files vary from run to run and are no measure).
    import orbax.checkpoint as ocp
    meta = ocp.PyTreeCheckpointer().metadata(rl / "checkpoints" / "4" / "state")
    stored = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(
        meta.item_metadata.tree, is_leaf=lambda x: hasattr(x, "shape")))
    base = loop_tests._params(workdir / "base")
    base_elems = sum(x.size for x in base)
    assert stored < 0.5 * base_elems, (stored, base_elems)  # a full checkpoint is >= 3x
    # The stage loads as the base with its adapters merged: only the adapted projections moved.
    merged = loop_tests._params(rl)
    changed = [not np.array_equal(a, b) for a, b in zip(base, merged, strict=True)]
    assert 0 < sum(changed) < len(changed)


def test_stopped_lora_run_resumes_to_the_same_numbers(lora_run, tmp_path):
    from rlcot import preempt
    from rlcot.study import run
    workdir, _ = lora_run
    watcher = loop_tests._signal_at(tmp_path / "rl" / "metrics.jsonl", 2)
    with pytest.raises(preempt.Preempted, match="stage rl stopped at step [23]"):
        run(lora_config(), tmp_path)
    watcher.join()
    run(lora_config(), tmp_path)  # the same call resumes
    a, b = read_metrics(workdir / "rl"), read_metrics(tmp_path / "rl")
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]
    assert loop_tests._comparable(a) == loop_tests._comparable(b)
    for x, y in zip(loop_tests._params(workdir / "rl"), loop_tests._params(tmp_path / "rl"),
                    strict=True):
        assert np.array_equal(x, y)
    assert json.loads((tmp_path / "rl" / "summary.json").read_text())["resumed_from_step"] in (2, 3)


def test_export_of_a_lora_stage_is_merged_and_peft(lora_run, tmp_path):
    """The export is the merged model; OUT/adapter holds the adapters in PEFT's format, whose
    W + (alpha / r) B A on the base's exported weights gives the merged export's weights."""
    from safetensors.numpy import load_file

    from rlcot import sources
    from rlcot.export import export
    from rlcot.models import hf
    workdir, _ = lora_run
    out = export(workdir, tmp_path / "hf", stage="rl")
    _, _, params = hf.load_hf(out)
    for x, y in zip(jax.tree.leaves(params), loop_tests._params(workdir / "rl"), strict=True):
        np.testing.assert_array_equal(np.asarray(x), y)
    assert lora.CARD_KEY not in json.loads((out / "config.json").read_text())
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and (config["r"], config["lora_alpha"]) == (4, 8.0)
    assert config["base_model_name_or_path"] == "stage:base"
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                             "gate_proj", "up_proj", "down_proj"}
    peft = load_file(out / "adapter" / "adapter_model.safetensors")
    base = sources.Resolver().load(f"workdir:{workdir / 'base'}")
    merged = load_file(out / "model.safetensors")
    n_adapted = 0
    for name, w in hf.hf_tensors(base.cfg, base.params):
        module = "base_model.model." + name.removesuffix(".weight")
        if f"{module}.lora_A.weight" not in peft:
            np.testing.assert_array_equal(w, merged[name], err_msg=name)
            continue
        a, b = peft[f"{module}.lora_A.weight"], peft[f"{module}.lora_B.weight"]
        np.testing.assert_allclose(w + 2.0 * b @ a, merged[name], rtol=0, atol=1e-6,
                                   err_msg=name)
        assert np.abs(b @ a).max() > 1e-5, name
        n_adapted += 1
    assert n_adapted == 7 * base.cfg.n_layers and len(peft) == 2 * n_adapted
