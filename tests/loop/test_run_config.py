"""Configs: every knob is in the default ConfigDict and overridable by name; experiment files
resolve; bad keys fail before any compute; results.md tables."""

import importlib.util
from pathlib import Path

import pytest
from ml_collections import config_dict

from rlcot import run_config
from rlcot.workdir import results_table

ROOT = Path(__file__).resolve().parents[2]


def _experiment(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_default_config_holds_every_field_and_resolves_to_the_defaults():
    c = run_config.default_config()
    c.rewards = {"math_accuracy": 1.0}
    with pytest.raises(ValueError, match="model.source is empty"):
        run_config.resolve(c)
    c.model.source = "preset:tiny"
    rc = run_config.resolve(c)
    for name, cls in run_config.SECTIONS.items():
        assert getattr(rc, name) == (cls("preset:tiny") if name == "model" else cls()), name
    # No section name shadows a ConfigDict attribute (c.update would be the method).
    for name in [*run_config.SECTIONS, *run_config.FREEFORM]:
        assert not hasattr(config_dict.ConfigDict(), name), name
    # Nested knobs and None-valued scalars (typed placeholders) are settable by name.
    c.learner.objective.policy.eps_high = 0.28
    c.data.max_prompt_tokens = 128
    c.learner.objective.kl.target = 0.1
    rc = run_config.resolve(c)
    assert rc.learner.objective.policy.eps_high == 0.28 and rc.data.max_prompt_tokens == 128
    assert rc.learner.objective.kl.target == 0.1
    with pytest.raises(TypeError):
        c.data.max_prompt_tokens = "many"  # the placeholder keeps its type


def test_bad_keys_and_values_fail_by_name():
    c = run_config.default_config()
    c.rewards = {"math_accuracy": 1.0}
    c.update = {}  # the old section name
    with pytest.raises(KeyError, match="unknown top-level key.*'update'.*learner"):
        run_config.resolve(c)
    c = run_config.default_config()
    c.rewards = {"math_accuracy": 1.0}
    c.learner.epochs = 0
    c.model.source = "preset:tiny"
    with pytest.raises(ValueError, match="epochs"):
        run_config.resolve(c)
    c = run_config.default_config()
    with pytest.raises(ValueError, match="rewards is empty"):
        run_config.resolve(c)


@pytest.mark.parametrize("variant", [None, "toy", "toy_shortcut", "toy_lora", "smollm2_smoke",
                                     "qwen_math_1.5b", "qwen_0.5b"])
def test_r1_zero_variants_resolve(variant):
    from rlcot import study
    mod = _experiment("r1_zero")
    plan = study.plan(mod.get_config(variant))
    rc = plan["rl"].cfg
    assert rc.advantage.estimator == "grpo" and rc.learner.objective.kl.placement == "none"
    assert set(rc.rewards) == {"accuracy", "format"}
    rows = rc.data.batch_prompts * rc.rollout.num_samples
    rc.learner.check_rows(rows)  # splits into minibatches x micro-batches
    assert rc.learner.lora.enabled == (variant == "toy_lora")
    if variant in (None, "toy", "toy_shortcut", "toy_lora"):
        assert plan.order == ("base", "rl") and plan["base"].kind == "sft"
        assert rc.model.source == "stage:base" and rc.eval["datasets"] == ("toyworld:test:256",)
        assert rc.world.rates.flaw_rate == (0.6 if variant == "toy_shortcut" else 1.0)
    else:
        assert plan.order == ("rl",)


def test_r1_zero_rejects_unknown_variants():
    with pytest.raises(ValueError, match="unknown variant 'big'"):
        _experiment("r1_zero").get_config("big")


def test_results_table():
    before = {"t/greedy/pass@1": 0.3125, "t/sampled/pass@8": 0.9, "t/greedy/len": 53.14,
              "t/greedy/check_rate": 0.0, "t/zeta": 0.5, "t/seconds": 20.9}
    after = {"t/greedy/pass@1": 1.0, "t/sampled/pass@8": 1.0, "t/greedy/len": 55.0,
             "t/greedy/check_rate": 0.0}
    lines = results_table({"eval_before": before, "eval_after": after}).splitlines()
    assert lines[2:] == ["| t/greedy/pass@1 (%) | 31.2 | 100.0 |",
                         "| t/sampled/pass@8 (%) | 90.0 | 100.0 |",
                         "| t/greedy/len | 53.1 | 55.0 |",
                         "| t/greedy/check_rate (%) | 0.0 | 0.0 |",
                         "| t/zeta (%) | 50.0 | - |"]
