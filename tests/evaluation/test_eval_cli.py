"""run_eval and its config parsing: typed settings, unknown keys, the files it writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from ml_collections import config_dict

from rlcot.evaluation import EvalConfig, EvalSet, parse_eval_set
from rlcot.evaluation.cli import run_eval
from rlcot.evaluation.config import parse_eval_config
from rlcot.run_config import ModelSection, build
from rlcot.data.templates import TemplateConfig

REPO = Path(__file__).resolve().parents[2]


def _eval_dict(**kw):
    d = {"datasets": ("gsm8k:test:3",), "template": "qa", "max_new_tokens": 4}
    d.update(kw)
    return config_dict.ConfigDict(d)


def test_parse_eval_config():
    sets, cfg, use_ckpt = parse_eval_config(_eval_dict(
        datasets=["gsm8k:test:3", "math500:test"], instruction="Answer.", shots=2,
        num_samples=4, pass_ks=[2, 4], subset="random", subset_seed=5))
    assert sets == (EvalSet("gsm8k", "test", 3, "random", 5), EvalSet("math500", "test", None,
                                                                       "random", 5))
    assert cfg.template == TemplateConfig("qa", "Answer.", num_shots=2)
    assert cfg.num_samples == 4 and cfg.pass_ks == (2, 4) and cfg.max_new_tokens == 4
    assert use_ckpt is True


@pytest.mark.parametrize("bad,match", [
    (dict(temprature=0.5), r"unknown config.eval keys \['temprature'\]"),
    (dict(datasets=()), "datasets is empty"),
    (dict(datasets=("gsm8k",)), "name:split"),
    (dict(datasets=("gsm8k:test:ten",)), "not an integer"),
    (dict(datasets=("gsm8k:dev",)), "has splits"),
    (dict(datasets=("nosuchset:test",)), "unknown dataset"),
    (dict(template="alpaca"), "unknown template"),
    (dict(num_samples=0), "num_samples"),
    (dict(num_samples=4, pass_ks=(8,)), "pass_ks"),
    (dict(num_samples=4, temperature=0.0), "temperature"),
    (dict(subset="last"), "subset"),
])
def test_bad_eval_config_fails_before_compute(bad, match):
    with pytest.raises((ValueError, KeyError), match=match):
        parse_eval_config(_eval_dict(**bad))


def test_parse_eval_set_and_model():
    assert parse_eval_set("gsm8k:test:200") == EvalSet("gsm8k", "test", 200)
    assert parse_eval_set("math500:test").limit is None
    m = build(ModelSection, config_dict.ConfigDict({"source": "preset:tiny", "dtype": "bfloat16",
                                                    "tokenizer": None, "param_dtype": None}),
              "model")
    assert (m.source, m.tokenizer, m.overrides()) == ("preset:tiny", None, {"dtype": "bfloat16"})
    with pytest.raises(ValueError, match="model.source is empty"):
        build(ModelSection, {"dtype": "float32"}, "model").check()


def test_defaults_stop_and_format():
    r1 = EvalConfig()
    assert r1.resolved_stop_strings == ("</answer>",) and r1.resolved_check_format
    chat = EvalConfig(template=TemplateConfig("chat"), num_samples=8)
    assert chat.resolved_stop_strings == () and not chat.resolved_check_format
    assert chat.resolved_pass_ks == (2, 4, 8) and chat.sampled
    # No greedy pass: the sampled pass runs even with one sample.
    assert EvalConfig(greedy=False).sampled and not EvalConfig().sampled


def _load_experiment(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("variant", [None, "full"])
def test_smollm2_experiment_config_loads(variant):
    config = _load_experiment("eval_smollm2_gsm8k").get_config(variant)
    sets, cfg, _ = parse_eval_config(config.eval)
    assert build(ModelSection, config.model, "model").source == "gguf:smollm2"
    assert sets[0].name == "gsm8k" and sets[0].split == "test"
    assert cfg.template.name == "chat" and "####" in cfg.template.instruction
    if variant == "full":
        assert sets[0].limit is None and cfg.num_samples == 8
    else:
        assert sets[0].limit is not None and cfg.greedy and not cfg.sampled


def test_run_eval_writes_files(toy_tok, shared_source_dir, tmp_path, capsys):
    tok_path = toy_tok.save(tmp_path / "toy.model")
    config = config_dict.ConfigDict({
        "seed": 0,
        "model": {"source": "preset:tiny", "tokenizer": str(tok_path)},
        # AIME 2024: the smallest benchmark (30 rows) to build.
        "eval": {"datasets": ("aime24:test:3",), "template": "qa", "max_new_tokens": 4,
                 "batch_size": 4, "data_dir": str(tmp_path / "tfds"),
                 "source_dir": str(shared_source_dir)},
    })
    result = run_eval(config, str(tmp_path / "run"))
    workdir = tmp_path / "run" / "eval" / "initial"  # no trained model yet: the initial one
    for name in ("eval.json", "eval.md", "eval.csv", "eval_config.json",
                 "eval_records/aime24_test.jsonl"):
        assert (workdir / name).is_file(), name
    data = json.loads((workdir / "eval.json").read_text())
    assert data["model"] == "preset:tiny" and data["seed"] == 0
    assert data["benchmarks"]["aime24:test"]["n"] == 3
    assert set(data["benchmarks"]["aime24:test"]["metrics"]) == set(
        result.benchmarks["aime24:test"].metrics)
    records = [json.loads(r) for r in
               (workdir / "eval_records" / "aime24_test.jsonl").read_text().splitlines()]
    assert [r["row"] for r in records] == [0, 1, 2]  # the first 3 rows, in source order
    assert "| aime24:test | 3 | 0 |" in capsys.readouterr().out
    assert (workdir / "eval.md").read_text() == result.to_markdown()


def test_custom_sets_resolve_names_the_registry_lacks(toy_examples):
    def custom(name, split, limit):
        if name != "toy":
            return None
        return EvalSet("toy", split, limit, examples=toy_examples)

    sets, _, _ = parse_eval_config(_eval_dict(datasets=("toy:heldout:2", "gsm8k:test:3")),
                                   custom_set=custom)
    assert (sets[0].label, sets[0].limit, sets[0].examples) == ("toy:heldout", 2, toy_examples)
    assert sets[1] == EvalSet("gsm8k", "test", 3) and sets[1].examples is None
    with pytest.raises(KeyError, match="unknown dataset 'toy'"):
        parse_eval_config(_eval_dict(datasets=("toy:heldout",)))
    with pytest.raises(ValueError, match="not an integer"):  # parsed before custom_set sees it
        parse_eval_config(_eval_dict(datasets=("toy:heldout:all",)), custom_set=custom)
