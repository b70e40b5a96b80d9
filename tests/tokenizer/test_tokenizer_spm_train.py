"""The in-memory sentencepiece trainer for toy worlds: determinism, symbols, digits, save/load."""

from __future__ import annotations

import pytest

from conftest import TOY_CORPUS, TOY_SYMBOLS
from rlcot.tokenizer import SentencePieceTokenizer, load_tokenizer, train_sentencepiece


def test_deterministic_model_bytes(toy_spm):
    again = train_sentencepiece(list(TOY_CORPUS), 400, user_defined_symbols=TOY_SYMBOLS)
    assert again.model_proto == toy_spm.model_proto
    # A different corpus gives a different model, so the equality above is not vacuous.
    other = train_sentencepiece([*TOY_CORPUS, "entirely new words here"], 400, user_defined_symbols=TOY_SYMBOLS)
    assert other.model_proto != toy_spm.model_proto


def test_unigram_deterministic():
    a = train_sentencepiece(TOY_CORPUS, 330, model_type="unigram", user_defined_symbols=TOY_SYMBOLS)
    b = train_sentencepiece(TOY_CORPUS, 330, model_type="unigram", user_defined_symbols=TOY_SYMBOLS)
    assert a.model_proto == b.model_proto and a.vocab_size == 330
    text = "<think>\n7 + 8 = 15\n</think>"
    assert a.decode(a.encode(text)) == text


def test_id_layout_and_specials(toy_spm):
    tok = toy_spm
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
    assert [tok.id_to_piece(i) for i in range(4)] == ["<pad>", "<eos>", "<bos>", "<unk>"]
    # user-defined symbols come right after the four specials, in order
    assert [tok.id_to_piece(4 + k) for k in range(4)] == list(TOY_SYMBOLS)
    assert tok.id_to_piece(8) == "<0x00>" and tok.id_to_piece(8 + 255) == "<0xFF>"
    assert tok.vocab_size == tok.num_pieces == 400
    assert tok.stop_ids == (1,) and tok.family == "plain"
    assert tok.is_special(0) and tok.is_special(1) and not tok.is_special(4)


def test_user_defined_symbols_are_single_ids(toy_spm):
    ids = toy_spm.encode("<think>x</think><answer>42</answer>")
    pieces = [toy_spm.id_to_piece(i) for i in ids]
    assert pieces == ["<think>", "x", "</think>", "<answer>", "4", "2", "</answer>"]


def test_digits_split(toy_spm):
    # The corpus is full of multi-digit numbers, yet no piece holds two digits.
    pieces = [toy_spm.id_to_piece(i) for i in range(8 + 256, toy_spm.num_pieces)]  # past specials, bytes
    digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
    assert sorted(digit_pieces) == list("0123456789")
    assert [toy_spm.id_to_piece(i) for i in toy_spm.encode("5040")] == ["5", "0", "4", "0"]
    merged = train_sentencepiece(TOY_CORPUS, 400, user_defined_symbols=TOY_SYMBOLS, split_digits=False)
    assert any(sum(c.isdigit() for c in merged.id_to_piece(i)) >= 2 for i in range(8 + 256, merged.num_pieces))


def test_save_and_load(toy_spm, tmp_path):
    path = toy_spm.save(tmp_path / "toy.model")
    for loaded in (load_tokenizer(path), SentencePieceTokenizer.from_file(path)):
        assert isinstance(loaded, SentencePieceTokenizer)
        assert loaded.model_proto == toy_spm.model_proto
        assert loaded.encode(TOY_CORPUS[0]) == toy_spm.encode(TOY_CORPUS[0])
    from_bytes = SentencePieceTokenizer(path.read_bytes())
    assert from_bytes.encode_batch(TOY_CORPUS) == [toy_spm.encode(t) for t in TOY_CORPUS]


def test_encode_batch_and_bos(toy_spm):
    texts = ["1 + 2", "<eos>", ""]
    assert toy_spm.encode_batch(texts, add_bos=True) == [[2, *toy_spm.encode(t)] for t in texts]
    assert toy_spm.encode_batch(texts) == [toy_spm.encode(t) for t in texts]


def test_bad_arguments():
    with pytest.raises(ValueError, match="smaller than required_chars"):
        train_sentencepiece(TOY_CORPUS, 50)
    with pytest.raises(ValueError, match="model_type"):
        train_sentencepiece(TOY_CORPUS, 400, model_type="word")
    with pytest.raises(ValueError, match="distinct"):
        train_sentencepiece(TOY_CORPUS, 400, user_defined_symbols=("<a>", "<a>"))
    with pytest.raises(ValueError, match="longer than max_sentence_length"):
        train_sentencepiece(["x" * 100], 400, max_sentence_length=10)
    with pytest.raises(ValueError, match="at least one text"):
        train_sentencepiece([], 400)


def test_soft_vocab_limit():
    # The toy corpus cannot fill 2000 unigram pieces; with a soft limit the trainer stops early.
    tok = train_sentencepiece(TOY_CORPUS, 2000, model_type="unigram", hard_vocab_limit=False)
    assert 264 < tok.vocab_size < 2000
