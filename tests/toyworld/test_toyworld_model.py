"""Toy tokenizer cache; the base model as a cached sft stage: reproducible bit for bit, and
loaded from the cache by a second study with the same settings."""

import json

import jax
import ml_collections as mlc
import numpy as np
import pytest

from rlcot import sources
from rlcot.data.templates import R1_ZERO_PREAMBLE
from rlcot.sft import batches
from rlcot.toyworld import base_stage
from rlcot.toyworld import tokenizer as toy_tokenizer
from rlcot.toyworld.corpus import WorldConfig, build_corpus, user_defined_symbols
from rlcot.toyworld.tasks import TaskConfig

WORLD = WorldConfig(task=TaskConfig(min_digits=2, max_digits=2), corpus_size=64)


def small_study(seed: int = 0, **train) -> mlc.ConfigDict:
    """One stage: the base model with one layer of width 32, 3 steps, one padded width (64)."""
    c = mlc.ConfigDict()
    c.world = dict(task=dict(min_digits=2, max_digits=2), corpus_size=64)
    c.stage_order = ("base",)
    c.stages = dict(base=base_stage(
        seed=seed,
        model=dict(config=dict(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, head_dim=16,
                               mlp_dim=64, max_position=192)),
        optimizer=dict(warmup_steps=1),
        train=dict(dict(steps=3, batch_size=8, length_multiple=64, short_rows=4, log_every=1,
                        checkpoint_every=2), **train)))
    return c


def test_tokenizer_is_cached_by_content(tmp_path, monkeypatch):
    texts = [d.prompt + d.completion for d in build_corpus(WORLD)]
    tok = toy_tokenizer.cached_tokenizer(texts, 384, user_defined_symbols(), tmp_path)
    assert len(list(tmp_path.glob("tokenizer-*.model"))) == 1

    def fail(*a, **k):
        raise AssertionError("trained again despite a cache entry")
    monkeypatch.setattr(toy_tokenizer, "train_sentencepiece", fail)
    again = toy_tokenizer.cached_tokenizer(texts, 384, user_defined_symbols(), tmp_path)
    assert again.model_proto == tok.model_proto
    with pytest.raises(AssertionError, match="trained again"):  # other content: a new key
        toy_tokenizer.cached_tokenizer(texts[:-1], 384, user_defined_symbols(), tmp_path)
    # Digits split, tags and the whole R1-Zero preamble are single pieces, text round-trips.
    ids = tok.encode(texts[0])
    assert ids[0] == tok.piece_to_id(R1_ZERO_PREAMBLE.replace(" ", "\u2581"))
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert tok.encode(tag) == [tok.piece_to_id(tag)]
    assert [tok.id_to_piece(i) for i in tok.encode("1234")] == ["1", "2", "3", "4"]
    assert all(tok.decode(tok.encode(t)) == t for t in texts[:20])
    assert tok.eos_id == 1 and tok.pad_id == 0 and not tok.add_bos_by_default



def _params(stage_dir):
    model = sources.Resolver().load(f"workdir:{stage_dir}")
    return model, [np.asarray(x) for x in jax.tree.leaves(model.params)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from rlcot.study import run
    cache = tmp_path_factory.mktemp("toyworld_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("RLCOT_TOYWORLD_CACHE", str(cache))
    workdir = tmp_path_factory.mktemp("study")
    run(small_study(), workdir)
    yield workdir / "base", cache
    mp.undo()


def test_pretraining_cache_hit_is_bitwise_identical(base, tmp_path):
    from rlcot.study import run
    trained_dir, cache = base
    summary = json.loads((trained_dir / "summary.json").read_text())
    assert summary["finished"] and not summary["cached"]
    assert [r["step"] for r in map(json.loads, (trained_dir / "metrics.jsonl").read_text()
                                   .splitlines())] == [1, 2, 3]
    run(small_study(), tmp_path / "again")           # another study, the same settings
    hit = json.loads((tmp_path / "again" / "base" / "summary.json").read_text())
    assert hit["cached"] and hit["cache_key"] == summary["cache_key"]
    m1, a = _params(trained_dir)
    m2, b = _params(tmp_path / "again" / "base")
    assert m1.cfg == m2.cfg and m1.tokenizer.model_proto == m2.tokenizer.model_proto
    assert len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y)
                                    for x, y in zip(a, b))
    # The curve of the cached training is shown again, not an empty one.
    assert (tmp_path / "again" / "base" / "metrics.jsonl").read_text() == (
        trained_dir / "metrics.jsonl").read_text()
    # Another seed is another entry.
    run(small_study(seed=1), tmp_path / "seed1")
    other = json.loads((tmp_path / "seed1" / "base" / "summary.json").read_text())
    assert not other["cached"] and other["cache_key"] != summary["cache_key"]


def test_pretraining_is_reproducible(base, tmp_path, monkeypatch):
    from rlcot.study import run
    trained_dir, _ = base
    monkeypatch.setenv("RLCOT_TOYWORLD_CACHE", str(tmp_path / "empty_cache"))
    run(small_study(), tmp_path / "fresh")
    assert not json.loads((tmp_path / "fresh" / "base" / "summary.json").read_text())["cached"]
    for x, y in zip(_params(trained_dir)[1], _params(tmp_path / "fresh" / "base")[1]):
        assert np.array_equal(x, y)


def test_batches_cover_the_corpus_and_sort_lengths():
    lengths = np.arange(40) % 7
    out = batches(lengths, 4, 20, seed=0, group=2)
    assert len(out) == 20 and all(len(b) == 4 for b in out)
    assert sorted(np.concatenate(out[:10]).tolist()) == list(range(40))  # one epoch = 10 batches
    again = batches(lengths, 4, 20, seed=0, group=2)
    assert [b.tolist() for b in out] == [b.tolist() for b in again]
    with pytest.raises(ValueError, match="fewer than batch_size"):
        batches(lengths[:3], 4, 1, seed=0)


def test_packed_base_stage_wastes_fewer_slots(base, tmp_path):
    """train.pack_length: 2 rows of 192 tokens per step carry as many examples as 8 rows
    padded to 64 with far fewer padded slots, and the stage trains and finishes."""
    from rlcot.study import run
    from rlcot.workdir import read_metrics
    trained_dir, _ = base
    run(small_study(batch_size=2, short_rows=0, pack_length=192, cache=False), tmp_path / "p")
    packed, padded = read_metrics(tmp_path / "p" / "base"), read_metrics(trained_dir)
    assert [r["step"] for r in packed] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in packed)
    # Target tokens per token slot: packed 2 x 192 slots against padded 8 x 64.
    assert packed[0]["target_tokens"] / (2 * 192) > 1.2 * padded[0]["target_tokens"] / (8 * 64)
