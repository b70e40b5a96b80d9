"""Toy tokenizer cache, base-model pre-training cache and reproducibility, and the decoder."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlcot.data.templates import R1_ZERO_PREAMBLE
from rlcot.models.transformer import forward
from rlcot.toyworld import tokenizer as toy_tokenizer
from rlcot.toyworld.corpus import WorldConfig, build_corpus, prompt_text, user_defined_symbols
from rlcot.toyworld.decode import generate
from rlcot.toyworld.pretrain import PretrainConfig, batches, cache_key, load_base_model
from rlcot.toyworld.tasks import TaskConfig

WORLD = WorldConfig(task=TaskConfig(min_digits=2, max_digits=2), corpus_size=64)
# One layer of width 32, 3 steps, one padded width (64): compiles once per process.
SMALL = PretrainConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                       max_position=192, steps=3, batch_size=8, warmup_steps=1,
                       length_multiple=64, short_rows=4)


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


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    cache = tmp_path_factory.mktemp("toyworld_cache")
    return load_base_model(WORLD, SMALL, cache), cache


def test_pretraining_cache_hit_is_bitwise_identical(base):
    trained, cache = base
    assert not trained.cached
    assert trained.info["cache_key"] == cache_key(WORLD, SMALL)
    hit = load_base_model(WORLD, SMALL, cache)
    assert hit.cached and hit.tokenizer.model_proto == trained.tokenizer.model_proto
    assert hit.cfg == trained.cfg
    a, b = jax.tree.leaves(trained.params), jax.tree.leaves(hit.params)
    assert len(a) == len(b) and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    # Another config is another entry.
    assert cache_key(WORLD, dataclasses.replace(SMALL, seed=1)) != cache_key(WORLD, SMALL)
    assert cache_key(dataclasses.replace(WORLD, seed=1), SMALL) != cache_key(WORLD, SMALL)


def test_pretraining_is_reproducible(base, tmp_path):
    trained, _ = base
    again = load_base_model(WORLD, SMALL, tmp_path, force=True)
    assert not again.cached
    for x, y in zip(jax.tree.leaves(trained.params), jax.tree.leaves(again.params)):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_batches_cover_the_corpus_and_sort_lengths():
    lengths = np.arange(40) % 7
    out = batches(lengths, 4, 20, seed=0, group=2)
    assert len(out) == 20 and all(len(b) == 4 for b in out)
    assert sorted(np.concatenate(out[:10]).tolist()) == list(range(40))  # one epoch = 10 batches
    again = batches(lengths, 4, 20, seed=0, group=2)
    assert [b.tolist() for b in out] == [b.tolist() for b in again]
    with pytest.raises(ValueError, match="smaller than batch_size"):
        batches(lengths[:3], 4, 1, seed=0)


_logits = jax.jit(lambda g, p, t: forward(g, p, t, jnp.arange(t.shape[1])[None, :])[0],
                  static_argnums=0)


def test_greedy_decoding_matches_teacher_forced_argmax(base):
    model, _ = base
    tok = model.tokenizer
    prompts = [tok.encode(prompt_text(q)) for q in ("12+34", "99+1", "7+8")]
    out = generate(model.cfg, model.graphdef, model.params, prompts, max_new_tokens=6,
                   eos_id=tok.eos_id, batch_size=4)
    for p, completion in zip(prompts, out):
        assert 1 <= len(completion) <= 6
        assert tok.eos_id not in completion[:-1]
        seq = jnp.asarray([p + completion])
        logits = _logits(model.graphdef, model.params, seq)
        expect = np.argmax(np.asarray(logits[0, len(p) - 1:-1]), axis=-1)
        assert completion == expect.tolist()
    sampled = generate(model.cfg, model.graphdef, model.params, prompts, max_new_tokens=6,
                       eos_id=tok.eos_id, temperature=1.0, seed=3, batch_size=4)
    assert sampled == generate(model.cfg, model.graphdef, model.params, prompts,
                               max_new_tokens=6, eos_id=tok.eos_id, temperature=1.0, seed=3,
                               batch_size=4)
    with pytest.raises(ValueError, match="max_position"):
        generate(model.cfg, model.graphdef, model.params, prompts, max_new_tokens=500,
                 eos_id=tok.eos_id)
