"""Grain prompt pipeline: determinism, exact resume, sharding, length filtering, batch layout."""

import itertools

import numpy as np
import pytest
from grain.sharding import ShardOptions

from rlcot.data import registry
from rlcot.data.pipeline import PipelineConfig, PromptPipeline, left_pad
from rlcot.data.templates import R1_ZERO_TEMPLATE, TemplateConfig, select_shots

RAW = TemplateConfig("raw", instruction="")


def _source(n):
    # Question k is k+1 copies of "a", so its raw prompt is k+1 byte tokens (+1 with BOS).
    return [{"id": f"q{k}", "question": "a" * (k + 1), "answer": str(k), "solution": "",
             "task": "toy"} for k in range(n)]


def _pipe(tok, n=24, shard=(0, 1), **kw):
    kw.setdefault("batch_size", 2)
    kw.setdefault("template", RAW)
    return PromptPipeline(_source(n), tok, PipelineConfig(**kw), shard=ShardOptions(*shard))


def _rows(batches):
    return [b["index_B"].tolist() for b in batches]


def test_left_pad():
    tokens_BxT, lens_B = left_pad([[5, 6], [7], []], pad_id=0, length=3)
    np.testing.assert_array_equal(tokens_BxT, [[0, 5, 6], [0, 0, 7], [0, 0, 0]])
    np.testing.assert_array_equal(lens_B, [2, 1, 0])
    assert tokens_BxT.dtype == np.int32 and lens_B.dtype == np.int32
    assert left_pad([[1, 2, 3], [4]], pad_id=9)[0].tolist() == [[1, 2, 3], [9, 9, 4]]
    with pytest.raises(ValueError, match="3 tokens, more than the pad length 2"):
        left_pad([[1, 2, 3]], pad_id=0, length=2)


def test_batch_layout(byte_tokenizer):
    pipe = _pipe(byte_tokenizer, max_prompt_tokens=30, shuffle=False, add_bos=True)
    batch = next(pipe.iterator())
    assert batch["index_B"].tolist() == [0, 1]
    assert batch["prompt_text"] == ["a", "aa"]
    assert [x.tolist() for x in batch["prompt_ids"]] == [[1, 100], [1, 100, 100]]  # "a" = 97+3
    assert batch["prompt_tokens_BxT"].shape == (2, 30)  # padded to max_prompt_tokens
    assert batch["prompt_tokens_BxT"][1, -3:].tolist() == [1, 100, 100]
    assert batch["prompt_tokens_BxT"][1, :-3].tolist() == [0] * 27
    assert batch["prompt_lens_B"].tolist() == [2, 3]
    assert [e["answer"] for e in batch["example"]] == ["0", "1"]


def test_bos_default_follows_the_template(byte_tokenizer):
    # Chat templates write their own BOS text; plain templates get the tokenizer's BOS.
    chat = _pipe(byte_tokenizer, template=TemplateConfig("chat", instruction=""), shuffle=False)
    first = next(chat.iterator())
    assert first["prompt_text"][0] == "<|user|>a<|end|><|assistant|>"
    assert first["prompt_ids"][0][0] != byte_tokenizer.bos_id
    raw = next(_pipe(byte_tokenizer, shuffle=False).iterator())
    assert raw["prompt_ids"][0][0] == byte_tokenizer.bos_id


def test_shuffle_is_deterministic_and_reshuffles_each_epoch(byte_tokenizer):
    a = list(itertools.islice(_pipe(byte_tokenizer, seed=5).iterator(), 24))
    b = list(itertools.islice(_pipe(byte_tokenizer, seed=5).iterator(), 24))
    assert _rows(a) == _rows(b)
    epoch1 = sum(_rows(a[:12]), [])  # 24 prompts / B=2 = 12 batches per epoch
    epoch2 = sum(_rows(a[12:]), [])
    assert sorted(epoch1) == sorted(epoch2) == list(range(24))
    assert epoch1 != epoch2 and epoch1 != list(range(24))
    c = list(itertools.islice(_pipe(byte_tokenizer, seed=6).iterator(), 12))
    assert _rows(c) != _rows(a[:12])


def test_checkpoint_restore_gives_the_same_next_batches(byte_tokenizer):
    it = _pipe(byte_tokenizer, seed=3).iterator()
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(10)]  # crosses the epoch boundary at batch 12
    resumed = _pipe(byte_tokenizer, seed=3).iterator(state)
    got = [next(resumed) for _ in range(10)]
    assert _rows(got) == _rows(expected)
    assert [g["prompt_text"] for g in got] == [e["prompt_text"] for e in expected]
    fresh = _pipe(byte_tokenizer, seed=3).iterator()
    fresh.set_state(state)
    assert _rows([next(fresh)]) == _rows(expected[:1])


def test_tagged_state_resumes_and_rejects_a_changed_pipeline(byte_tokenizer):
    pipe = _pipe(byte_tokenizer, seed=3)
    it = pipe.iterator()
    next(it), next(it)
    state = pipe.get_state(it)
    assert state == {"next_index": 2, "fingerprint": pipe.fingerprint}
    expected = _rows([next(it)])
    assert _rows([next(_pipe(byte_tokenizer, seed=3).iterator(state))]) == expected
    for changed in (dict(seed=4), dict(batch_size=3), dict(n=23), dict(shard=(0, 2))):
        with pytest.raises(ValueError, match="cannot resume"):
            _pipe(byte_tokenizer, **{"seed": 3, **changed}).iterator(state)


def test_shards_are_disjoint_cover_an_epoch_and_match_one_host(byte_tokenizer):
    hosts = [_pipe(byte_tokenizer, shard=(h, 3), seed=1) for h in range(3)]
    assert {p.steps_per_epoch for p in hosts} == {4}  # 24 / (B=2 * 3 hosts)
    per_host = [sum(_rows(itertools.islice(p.iterator(), 4)), []) for p in hosts]
    assert sorted(sum(per_host, [])) == list(range(24))  # disjoint and complete
    # Global batch k is the same prompts in the same order whatever the number of hosts: the
    # hosts' batches k, concatenated in host order (a multi-process run's global rows).
    single = _pipe(byte_tokenizer, shard=(0, 1), seed=1, batch_size=6)
    for k, batch in enumerate(itertools.islice(single.iterator(), 4)):
        union = sum((per_host[h][2 * k:2 * k + 2] for h in range(3)), [])
        assert batch["index_B"].tolist() == union
    # The data position is one for all hosts (a multi-host checkpoint stores process 0's).
    assert len({p.fingerprint for p in hosts}) == 1


def test_finite_epochs_and_remainders(byte_tokenizer):
    # 10 prompts, 3 hosts, B=2: one whole global batch of 6 per epoch; the other 4 are cut.
    kept = [_pipe(byte_tokenizer, n=10, shard=(h, 3), num_epochs=1) for h in range(3)]
    assert [len(p) for p in kept] == [1, 1, 1]
    # No shuffle, keep remainders: host h gets the h-th block of 2 of each global batch of 6;
    # the last, partial one (rows 6..9) goes in blocks from host 0 on.
    ev = [_pipe(byte_tokenizer, n=10, shard=(h, 3), num_epochs=1, shuffle=False,
                drop_remainder=False) for h in range(3)]
    assert [_rows(p.iterator()) for p in ev] == [[[0, 1], [6, 7]], [[2, 3], [8, 9]], [[4, 5]]]


def test_length_filter_counts(byte_tokenizer):
    # Lengths 1..10; raw template gets a BOS by default, so lengths are 2..11.
    pipe = _pipe(byte_tokenizer, n=10, max_prompt_tokens=5, shuffle=False, num_epochs=1,
                 drop_remainder=False)
    assert (pipe.num_rows, pipe.num_kept, pipe.num_dropped) == (10, 4, 6)
    assert sum(_rows(pipe.iterator()), []) == [0, 1, 2, 3]
    no_bos = _pipe(byte_tokenizer, n=10, max_prompt_tokens=5, add_bos=False)
    assert (no_bos.num_kept, no_bos.num_dropped) == (5, 5)
    with pytest.raises(ValueError, match="no prompts left: 10 rows, 0 excluded, 10 longer"):
        _pipe(byte_tokenizer, n=10, max_prompt_tokens=1)


def test_exclude_rows_and_config_errors(byte_tokenizer):
    pipe = PromptPipeline(_source(6), byte_tokenizer,
                          PipelineConfig(batch_size=1, template=RAW, shuffle=False,
                                         num_epochs=1),
                          exclude_rows=[0, 4], shard=ShardOptions(0, 1))
    assert sum(_rows(pipe.iterator()), []) == [1, 2, 3, 5] and pipe.num_excluded == 2
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        PipelineConfig(batch_size=0)
    with pytest.raises(ValueError, match="unresolved"):
        PromptPipeline(_source(2), byte_tokenizer, PipelineConfig(batch_size=1))


def test_gsm8k_r1_zero_pipeline(shared_data, data_dir, byte_tokenizer):
    cfg = PipelineConfig(batch_size=4, template=TemplateConfig("r1_zero"), shuffle=False,
                         num_epochs=1, drop_remainder=False)
    pipe = registry.make_pipeline("gsm8k", "test", byte_tokenizer, cfg, data_dir=data_dir,
                                  source_dir=shared_data, shard=ShardOptions(0, 1))
    assert pipe.num_kept == 1319 and len(pipe) == 330  # ceil(1319 / 4)
    batch = next(pipe.iterator())
    ex = batch["example"][0]
    assert batch["prompt_text"][0] == R1_ZERO_TEMPLATE.format(prompt=ex["question"])
    assert byte_tokenizer.decode(batch["prompt_ids"][0]) == batch["prompt_text"][0]


def test_few_shot_from_train_and_from_the_split_itself(shared_data, data_dir, byte_tokenizer):
    cfg = PipelineConfig(batch_size=2, template=TemplateConfig("qa", num_shots=2),
                         shuffle=False, num_epochs=1)
    pipe = registry.make_pipeline("gsm8k", "test", byte_tokenizer, cfg, data_dir=data_dir,
                                  source_dir=shared_data, shard=ShardOptions(0, 1))
    text = next(pipe.iterator())["prompt_text"][0]
    assert text.count("Question: ") == 3 and text.count("\\boxed{}") == 3
    assert pipe.num_excluded == 0  # shots come from train
    # MATH-500 has no other split: the two shot rows are left out of the prompts.
    pipe = registry.make_pipeline("math500", "test", byte_tokenizer, cfg, data_dir=data_dir,
                                  source_dir=shared_data, shard=ShardOptions(0, 1))
    assert (pipe.num_excluded, pipe.num_kept) == (2, 498)
    used = sum(_rows(pipe.iterator()), [])
    assert sorted(used) == sorted(set(range(500)) - set(select_shots(500, 2, seed=0)))


def _messy_source():
    # Rows 0, 3 and 7 are fine; the others are each malformed in one way.
    good = {"id": "", "question": "aa", "answer": "1", "solution": "", "task": "t"}
    return [good,
            {**good, "question": b"\xff\xfe not utf-8"},   # 1 not UTF-8
            {k: v for k, v in good.items() if k != "answer"},  # 2 no answer field
            {**good, "question": "bb"},
            {**good, "answer": "  "},                        # 4 empty answer
            {k: v for k, v in good.items() if k != "question"},  # 5 no question
            {**good, "question": "c" * 40},                  # 6 too long
            {**good, "question": b"dd", "answer": b"4"}]     # 7 bytes that decode: fine


def test_malformed_rows_are_skipped_and_counted(byte_tokenizer, caplog):
    cfg = PipelineConfig(batch_size=1, template=RAW, shuffle=False, num_epochs=1,
                         max_prompt_tokens=10, required_fields=("answer",))
    with caplog.at_level("WARNING", logger="rlcot.data.pipeline"):
        pipe = PromptPipeline(_messy_source(), byte_tokenizer, cfg, shard=ShardOptions(0, 1),
                              label="messy/train")
    assert pipe.rows.tolist() == [0, 3, 7]
    assert pipe.skipped == {"empty_answer": 1, "missing_answer": 1, "missing_question": 1,
                            "not_utf8": 1, "too_long": 1}
    assert pipe.num_dropped == 1  # (only the too-long ones, as before)
    line, = [r.getMessage() for r in caplog.records]
    assert line.startswith("messy/train: skipped 5 of 8 rows: empty_answer 1 (first: row 4), "
                           "missing_answer 1 (first: row 2), missing_question 1 (first: row 5), "
                           "not_utf8 1 (first: row 1), too_long 1 (first: row 6)")
    assert [b["example"][0]["question"] for b in pipe.iterator()] == ["aa", "bb", "dd"]


def test_malformed_rows_fail_fast_when_configured(byte_tokenizer):
    cfg = PipelineConfig(batch_size=1, template=RAW, required_fields=("answer",),
                         on_bad_rows="error")
    with pytest.raises(ValueError, match=r"prompts: 4 of 8 rows cannot be used: empty_answer 1 "
                                         r"\(first: row 4\).*on_bad_rows is 'error'"):
        PromptPipeline(_messy_source(), byte_tokenizer, cfg, shard=ShardOptions(0, 1))
    with pytest.raises(ValueError, match="on_bad_rows must be one of"):
        PipelineConfig(batch_size=1, on_bad_rows="ignore")
    # Without required fields an empty answer is fine (e.g. code tasks carry tests instead).
    cfg = PipelineConfig(batch_size=1, template=RAW, shuffle=False)
    pipe = PromptPipeline(_messy_source(), byte_tokenizer, cfg, shard=ShardOptions(0, 1))
    assert pipe.skipped == {"missing_question": 1, "not_utf8": 1}
