"""Studies of stages: bad pipelines fail before compute; generate -> sft chains; export."""

import json

import jax
import numpy as np
import pytest

from rlcot import stages, study
from rlcot.stages.generate import rows_for_prompt
from tests.loop.test_loop import short_base, tiny_config


pytestmark = pytest.mark.usefixtures("shared_toy_cache")


def _with(c, **stage_specs):
    c.stage_order = tuple(c.stage_order) + tuple(stage_specs)
    for name, spec in stage_specs.items():
        c.stages[name] = spec
    return c


@pytest.mark.parametrize("edit,match", [
    (lambda c: _with(c, x=stages.defaults("rl").to_dict() | {"kind": "dpo_typo"}),
     "kind is 'dpo_typo'; known kinds"),
    (lambda c: _with(c, x=stages.defaults("rl", model={"source": "stage:later"}),
                     later=stages.defaults("rl")), "names a later stage"),
    (lambda c: _with(c, x=stages.defaults("rl", model={"source": "stage:nope"})),
     "names no stage of this study"),
    (lambda c: _with(c, x=stages.defaults("rl", model={"source": "stage:x"})),
     "names the stage itself"),
    (lambda c: _with(c, x=stages.defaults("rl", model={"source": "stage:base",
                                                        "tokenizer": "/some/other.model"})),
     "is not the tokenizer of its model source"),
    (lambda c: _with(c, gen=stages.defaults("generate", rewards={"r1_format": 1.0}),
                     x=stages.defaults("rl", model={"source": "stage:gen"})),
     "produces no model"),
    (lambda c: _with(c, x=stages.defaults("sft", data={"dataset": "stage:rl"})),
     "produces a model, not a dataset"),
    (lambda c: _with(c, x=stages.defaults("rl", train={"stepz": 3})), "stage 'x' .*unknown key.*stepz"),
])
def test_bad_pipelines_fail_before_compute(edit, match, tmp_path):
    c = edit(tiny_config(1))
    with pytest.raises((ValueError, KeyError), match=match):
        study.run(c, tmp_path)
    assert not (tmp_path / "base").exists()  # nothing ran


def test_stage_order_must_match_the_declared_stages():
    c = tiny_config(1)
    c.stage_order = ("base",)
    with pytest.raises(ValueError, match="disagree"):
        study.plan(c)
    c.stage_order = ("base", "rl", "base")
    with pytest.raises(ValueError, match="more than once"):
        study.plan(c)


def test_rows_for_prompt_selects_by_length_and_correctness():
    texts = ["long right answer", "short", "wrong!", ""]
    lengths = np.array([9, 3, 5, 0])
    correct = np.array([True, True, False, True])
    rewards = np.array([1.0, 1.0, 0.0, 1.0])
    rows, why = rows_for_prompt("p", texts, lengths, correct, rewards, "shortest_correct")
    assert why is None and rows == [{"prompt": "p", "completion": "short", "tokens": 3}]
    rows, _ = rows_for_prompt("p", texts, lengths, correct, rewards, "correct")
    assert [r["completion"] for r in rows] == ["long right answer", "short"]  # empty skipped
    rows, _ = rows_for_prompt("p", texts, lengths, correct, rewards, "pairs")
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ("short", "wrong!")
    # No incorrect sample: the longer correct one is the rejected one.
    rows, _ = rows_for_prompt("p", texts[:2], lengths[:2], correct[:2], rewards[:2], "pairs")
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ("short", "long right answer")
    # Nothing to pair, identical texts, or nothing correct: skipped with a reason.
    assert rows_for_prompt("p", ["a", "a"], np.array([1, 1]), np.array([True, False]),
                           rewards[:2], "pairs") == ([], "identical")
    assert rows_for_prompt("p", ["a"], np.array([1]), np.array([True]), rewards[:1],
                           "pairs") == ([], "no_rejected")
    assert rows_for_prompt("p", ["a"], np.array([1]), np.array([False]), rewards[:1],
                           "shortest_correct") == ([], "no_correct")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """base (10 steps) -> gen (4 samples per prompt of 8 prompts, all rows) -> sft on them ->
    eval."""
    c = short_base(tiny_config(1))
    c.stage_order = ("base", "gen", "sft", "final")
    del c.stages["rl"]
    c.stages.gen = stages.defaults(
        "generate", prompts=8, select="all", correct_by="r1_format", correct_threshold=1.0,
        rewards={"r1_format": 1.0}, rollout={"num_samples": 4, "max_new_tokens": 32},
        model={"source": "stage:base"})
    c.stages.sft = stages.defaults(  # its model: the previous model stage (base)
        "sft", data={"dataset": "stage:gen"},
        optimizer={"learning_rate": 1e-3},
        train={"steps": 2, "batch_size": 8, "log_every": 1, "checkpoint_every": 1})
    c.stages.final = stages.defaults("eval")
    workdir = tmp_path_factory.mktemp("chain")
    return workdir, study.run(c, workdir), c


def test_generate_then_sft_then_eval(chain):
    workdir, summary, _ = chain
    assert summary["finished"] and summary["stage_order"] == ["base", "gen", "sft", "final"]
    gen = summary["stages"]["gen"]
    rows = [json.loads(x) for x in (workdir / "gen" / "data.jsonl").read_text().splitlines()]
    assert gen["prompts"] == 8 and gen["samples"] == 32 and gen["rows"] == len(rows) == 32
    assert {"prompt", "completion", "reward", "correct", "tokens"} <= set(rows[0])
    assert gen["correct"] == sum(r["correct"] for r in rows)
    sft_rows = [json.loads(x) for x in (workdir / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in sft_rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in sft_rows)
    # The eval stage evaluated the sft stage's output (the previous model).
    assert json.loads((workdir / "sft" / "config.json").read_text())["model"]["source"] == (
        "stage:base")
    final = json.loads((workdir / "final" / "summary.json").read_text())
    assert final["model"] == "stage:sft" and "toyworld:test/greedy/pass@1" in final["eval_after"]
    assert (workdir / "final" / "eval.md").is_file()


def test_eval_command_on_a_stage(chain, capsys):
    from rlcot.evaluation.cli import run_eval
    workdir, _, c = chain
    result = run_eval(c, str(workdir), stage="sft")
    assert (workdir / "eval" / "sft" / "eval.json").is_file()
    with pytest.raises(ValueError, match="produces no model"):
        run_eval(c, str(workdir), stage="gen")
    assert "toyworld:test" in result.to_markdown()


@pytest.mark.slow
def test_a_stopped_generate_stage_resumes_exactly(chain, tmp_path, monkeypatch):
    """A stop request while the generate stage writes its first part: it stops before the
    next batch (Preempted, unfinished), and the resumed stage writes the same dataset."""
    import os
    import signal

    from rlcot import preempt
    from rlcot.toyworld import cache
    workdir, _, c = chain
    c = c.copy_and_resolve_references()
    c.stage_order = ("base", "gen")
    for name in ("sft", "final"):
        del c.stages[name]
    write = cache.write_atomic

    def write_then_stop(path, data):  # SIGTERM right after the first part is written
        write(path, data)
        if path.name == "batch000000.jsonl":
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cache, "write_atomic", write_then_stop)
    with pytest.raises(preempt.Preempted, match="stage gen stopped at step 1 on SIGTERM"):
        study.run(c, tmp_path)
    assert sorted(p.name for p in (tmp_path / "gen" / "parts").iterdir()) == ["batch000000.jsonl"]
    assert not (tmp_path / "gen" / "summary.json").exists()
    monkeypatch.setattr(cache, "write_atomic", write)
    study.run(c, tmp_path)
    assert (tmp_path / "gen" / "data.jsonl").read_bytes() == (
        workdir / "gen" / "data.jsonl").read_bytes()


def test_export_loads_in_transformers(chain, tmp_path):
    from rlcot import sources
    from rlcot.export import export
    from rlcot.models.transformer import forward
    workdir, _, _ = chain
    out = export(workdir, tmp_path / "hf", stage="sft")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "tokenizer.model").is_file()
    model = sources.Resolver().load(f"workdir:{workdir / 'sft'}")
    ids = np.array([model.tokenizer.encode("Problem: 12+34")], np.int32)
    ours = np.asarray(forward(model.graphdef, model.params, ids,
                              np.arange(ids.shape[1])[None])[0])
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    with torch.no_grad():
        theirs = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
