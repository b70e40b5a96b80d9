"""The evaluation runner: exact metrics from known completions, and a tiny model end to end."""

from __future__ import annotations

import csv
import io
import json

import jax
import numpy as np
import pytest

from rlcot.evaluation import EvalConfig, EvalSet, evaluate, make_generate, write_results
from rlcot.evaluation.prompts import build_prompts, choose_rows
from rlcot.data.templates import TemplateConfig
from rlcot.sampling.outputs import SampleOutput

# Completions per question (by its text), for a fake generate. r1_zero format unless noted.
_R1 = "<think> work </think> <answer> {} </answer>"
GREEDY = {
    "What is 2 + 3?": _R1.format(5),          # right
    "What is 4 + 3?": _R1.format(8),          # wrong
    "What is 3 * 4?": "so \\boxed{12}",       # right, not in R1 format
    "What is 1 / 2?": _R1.format("0.5"),      # right (1/2 == 0.5)
}
SAMPLED = {
    "What is 2 + 3?": [_R1.format(5), _R1.format(5), _R1.format(4), "no idea"],  # c=2
    "What is 4 + 3?": [_R1.format(8), _R1.format(7), _R1.format(8), _R1.format(9)],  # c=1
    "What is 3 * 4?": [_R1.format(12)] * 4,  # c=4
    "What is 1 / 2?": [_R1.format("\\frac{1}{2}"), _R1.format(2), _R1.format(2),
                       _R1.format("0.5")],  # c=2; "1/2" and "2" tie 2-2, sample 0 wins
}
TRUNCATED_GREEDY = {"What is 4 + 3?"}


class FakeGenerate:
    """Returns the completions above for whichever question the prompt holds."""

    def __init__(self, tok):
        self.tok = tok
        self.calls = []

    def __call__(self, tokens_BxP, lens_B, rng, num_samples, spec):
        self.calls.append((tokens_BxP.shape[0], num_samples, spec.greedy))
        texts, truncated = [], []
        for row, n in zip(tokens_BxP, lens_B):
            prompt = self.tok.decode(row[len(row) - n:].tolist())
            (question,) = [q for q in GREEDY if q in prompt]
            if spec.greedy:
                texts.append(GREEDY[question])
                truncated.append(question in TRUNCATED_GREEDY)
            else:
                texts += SAMPLED[question][:num_samples]
                truncated += [False] * num_samples
        ids = [self.tok.encode(t) for t in texts]
        T = spec.max_new_tokens
        assert max(map(len, ids)) <= T
        tokens = np.zeros((len(ids), T), np.int32)
        for i, x in enumerate(ids):
            tokens[i, :len(x)] = x
        lengths = np.array([len(x) for x in ids], np.int32)
        zeros = np.zeros((len(ids), T), np.float32)
        return SampleOutput(tokens, np.arange(T)[None] < lengths[:, None], lengths,
                            np.array(truncated), zeros, zeros, tokens_BxP, lens_B, num_samples)


@pytest.fixture(scope="module")
def fake_result(toy_tok, toy_examples):
    fake = FakeGenerate(toy_tok)
    cfg = EvalConfig(template=TemplateConfig("r1_zero"), max_new_tokens=64, num_samples=4,
                     batch_size=8)
    eval_set = EvalSet("toy", "test", limit=4, examples=toy_examples)
    return evaluate(None, toy_tok, [eval_set], cfg, rng=0, generate=fake), fake


def test_fake_generate_gives_exact_metrics(fake_result, toy_tok):
    result, fake = fake_result
    m = result.benchmarks["toy:test"].metrics
    # greedy: right, wrong, right, right -> 3/4; R1 format on all but the boxed one -> 3/4
    assert m["greedy/pass@1"] == 0.75
    assert m["greedy/format"] == 0.75
    assert m["greedy/answered"] == 1.0
    assert m["greedy/trunc"] == 0.25
    # sampled, c = (2, 1, 4, 2) of 4: avg@4 = 9/16
    assert m["sampled/avg@4"] == pytest.approx(9 / 16)
    # pass@2 = mean(1 - C(4-c,2)/C(4,2)) = mean(5/6, 1/2, 1, 5/6) = 19/24
    assert m["sampled/pass@2"] == pytest.approx(19 / 24)
    assert m["sampled/pass@4"] == 1.0
    # maj@4: "5" right, "8" wrong, "12" right, 1/2-vs-2 tie won by sample 0 (right) -> 3/4
    assert m["sampled/maj@4"] == 0.75
    # one sample of 16 has no answer and no R1 format
    assert m["sampled/answered"] == pytest.approx(15 / 16)
    assert m["sampled/format"] == pytest.approx(15 / 16)
    assert m["sampled/trunc"] == 0.0
    lens = [len(toy_tok.encode(t)) for t in GREEDY.values()]
    assert m["greedy/len"] == pytest.approx(np.mean(lens))
    assert "sampled/pass@1" not in m  # reported as avg@4
    # greedy: 4 prompts in one call of batch_size 8; sampled: 8 // 4 = 2 prompts per call
    assert fake.calls == [(4, 1, True), (2, 4, False), (2, 4, False)]


def test_fake_generate_records(fake_result, toy_examples):
    result, _ = fake_result
    recs = result.benchmarks["toy:test"].records
    assert len(recs) == 4 + 16
    greedy = [r for r in recs if r["pass"] == "greedy"]
    assert [r["id"] for r in greedy] == ["q0", "q1", "q2", "q3"]
    assert [r["correct"] for r in greedy] == [True, False, True, True]
    assert [r["answer"] for r in greedy] == ["5", "8", "12", "0.5"]
    assert greedy[1]["truncated"] and greedy[1]["gold"] == "7"
    assert all("prompt" in r for r in greedy)
    sampled = [r for r in recs if r["pass"] == "sampled"]
    assert [r["sample"] for r in sampled[:4]] == [0, 1, 2, 3]
    assert ["prompt" in r for r in sampled[:4]] == [True, False, False, False]
    assert sampled[3]["answer"] is None and not sampled[3]["correct"]


def test_table_formats(fake_result, tmp_path):
    result, _ = fake_result
    cols = result.columns()
    assert cols[:3] == ["benchmark", "n", "dropped"] and cols[-1] == "seconds"
    assert {"greedy/pass@1", "sampled/avg@4", "sampled/pass@2", "sampled/maj@4"} <= set(cols)
    md = result.to_markdown().splitlines()
    assert md[0].startswith("| benchmark | n | dropped | greedy/pass@1 (%) |")
    assert len(md) == 3 and md[2].startswith("| toy:test | 4 | 0 | 75.0 |")
    (row,) = list(csv.DictReader(io.StringIO(result.to_csv())))
    assert float(row["sampled/pass@2"]) == pytest.approx(19 / 24)
    paths = write_results(result, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["benchmarks"]["toy:test"]["metrics"]["sampled/maj@4"] == 0.75
    lines = paths["records/toy:test"].read_text().splitlines()
    assert len(lines) == 20 and json.loads(lines[0])["id"] == "q0"
    flat = result.flat_metrics()
    assert flat["eval/toy:test/greedy/pass@1"] == 0.75


def test_choose_rows():
    assert choose_rows(range(10), 3, "first", 0) == [0, 1, 2]
    assert choose_rows(range(10), None, "random", 0) == list(range(10))
    a, b = choose_rows(range(100), 5, "random", 1), choose_rows(range(100), 5, "random", 1)
    assert a == b and a == sorted(a) and len(set(a)) == 5
    assert choose_rows(range(100), 5, "random", 2) != a


def test_build_prompts_limit_and_shots(toy_tok, toy_examples):
    cfg = EvalConfig(template=TemplateConfig("qa", num_shots=1, fewshot_seed=0))
    prompts = build_prompts(EvalSet("toy", "test", limit=3, examples=toy_examples), toy_tok, cfg)
    # The shot row is drawn from the same examples and is never a prompt.
    shot = next(i for i, (q, _) in enumerate(toy_examples_pairs(toy_examples))
                if prompts.texts[0].startswith(f"Question: {q}"))
    assert shot not in prompts.rows and len(prompts) == 3
    assert list(prompts.rows) == [r for r in range(6) if r != shot][:3]
    assert all(t.count("Question:") == 2 for t in prompts.texts)
    # Prompts longer than max_prompt_tokens are dropped and counted.
    varied = [dict(e, question=e["question"] + " Why?" * (i % 3))
              for i, e in enumerate(toy_examples)]
    full = build_prompts(EvalSet("toy", "test", examples=varied), toy_tok,
                         EvalConfig(template=TemplateConfig("raw")))
    lens = sorted(len(x) for x in full.ids)
    limit = lens[2]
    short = build_prompts(EvalSet("toy", "test", examples=varied), toy_tok,
                          EvalConfig(template=TemplateConfig("raw"), max_prompt_tokens=limit))
    assert lens[0] < lens[-1], "toy questions should differ in length"
    assert short.num_selected == 6 and short.num_dropped == sum(n > limit for n in lens) > 0
    assert [r for r, x in zip(full.rows, full.ids) if len(x) <= limit] == list(short.rows)


def toy_examples_pairs(examples):
    return [(e["question"], e["answer"]) for e in examples]


# -- the tiny random model end to end ----------------------------------------------------------

def _tiny_eval(model, toy_tok, toy_examples, seed, generate=None):
    cfg = EvalConfig(template=TemplateConfig("qa"), max_new_tokens=8, num_samples=2,
                     batch_size=4, temperature=1.0)
    sets = [EvalSet("toy", "test", limit=4, examples=toy_examples)]
    return evaluate(model, toy_tok, sets, cfg, rng=jax.random.key(seed), generate=generate)


@pytest.fixture(scope="module")
def tiny_runs(tiny_model, toy_tok, toy_examples):
    """Seed 0 twice, each with a freshly built sampler, then seed 1 on the second sampler
    passed in as `generate` (as the RL loop does)."""
    first = _tiny_eval(tiny_model, toy_tok, toy_examples, 0)
    generate = make_generate(tiny_model, toy_tok)
    again = _tiny_eval(None, toy_tok, toy_examples, 0, generate)
    other = _tiny_eval(None, toy_tok, toy_examples, 1, generate)
    return first, again, other


def test_tiny_model_end_to_end_structure(tiny_runs):
    b = tiny_runs[0].benchmarks["toy:test"]
    assert b.num_prompts == 4 and b.num_dropped == 0
    assert set(b.metrics) == {
        "greedy/pass@1", "greedy/answered", "greedy/trunc", "greedy/len",
        "sampled/avg@2", "sampled/pass@2", "sampled/maj@2", "sampled/answered",
        "sampled/trunc", "sampled/len"}
    assert all(0.0 <= v <= 1.0 for k, v in b.metrics.items() if not k.endswith("/len"))
    assert all(0 < b.metrics[k] <= 8 for k in ("greedy/len", "sampled/len"))
    assert len(b.records) == 4 + 8
    assert {"greedy", "sampled", "prompts"} <= set(b.timings)


def test_tiny_model_is_reproducible(tiny_runs):
    first, again, other = tiny_runs
    recs = lambda r: [{k: v for k, v in x.items()}  # noqa: E731
                      for x in r.benchmarks["toy:test"].records]
    assert recs(first) == recs(again)
    assert first.benchmarks["toy:test"].metrics == again.benchmarks["toy:test"].metrics
    # Greedy completions ignore the seed; sampled ones do not (so the equality above is not
    # vacuous).
    greedy = lambda r: [x["completion"] for x in recs(r) if x["pass"] == "greedy"]  # noqa: E731
    sampled = lambda r: [x["completion"] for x in recs(r) if x["pass"] == "sampled"]  # noqa: E731
    assert greedy(first) == greedy(other)
    assert sampled(first) != sampled(other)


def test_evaluate_rejects_bad_calls(toy_tok, toy_examples):
    s = EvalSet("toy", "test", limit=2, examples=toy_examples)
    fake = FakeGenerate(toy_tok)
    cfg = EvalConfig(template=TemplateConfig("r1_zero"), max_new_tokens=64)
    with pytest.raises(ValueError, match="no eval sets"):
        evaluate(None, toy_tok, [], cfg, rng=0, generate=fake)
    with pytest.raises(ValueError, match="duplicate eval sets"):
        evaluate(None, toy_tok, [s, s], cfg, rng=0, generate=fake)
    with pytest.raises(ValueError, match="needs a model or a generate"):
        evaluate(None, toy_tok, [s], cfg, rng=0)

    def one_row_short(tokens_BxP, lens_B, rng, num_samples, spec):
        out = fake(tokens_BxP, lens_B, rng, num_samples, spec)
        out.lengths_N = out.lengths_N[:-1]
        return out
    with pytest.raises(ValueError, match="generate returned 1 rows"):
        evaluate(None, toy_tok, [s], cfg, rng=0, generate=one_row_short)
