"""Exact decode(encode(s)) == s and per-token bytes, for byte-level BPE and sentencepiece."""

from __future__ import annotations

import pytest
import tokenizers

from rlcot.tokenizer import HFTokenizer

TRICKY = [
    "",
    " ",
    "   ",
    "\n",
    "\n\n\n",
    "\t\tindented\n",
    "  leading and trailing  ",
    "a  b   c    d",
    "line\r\nwindows\rcarriage",
    "12345678901234567890",
    "x  1\n\n 2\t3",
    "-3.5e-7 * 1,000 = ?",
    "def f(x):\n    return {'k': [1, 2]}  # comment\n",
    "Café naïve résumé Ångström",
    "e\u0301 (combining acute)",
    "你好，世界！",
    "Россия",
    "مرحبا",
    "😀👍🏽🇺🇸❤️👨‍👩‍👧",
    "½²١٢٣Ⅻ",
    "zero\u200bwidth\u00a0nbsp\u3000",
    "\U0001F600 at the end",
    "\x00nul and \x7f del",
    "<think>\n17 * 3 = 51\n</think>\n<answer>51</answer>",
    "I'm sure they'll say it's fine, don't you think?",
]


def _check_roundtrip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text, (text, ids)
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8"), (text, ids)


@pytest.mark.parametrize("text", TRICKY)
def test_byte_level_roundtrip(smollm2, text):
    _check_roundtrip(smollm2, text)


@pytest.mark.parametrize("text", TRICKY)
def test_sentencepiece_roundtrip(toy_spm, text):
    # Most of these characters are not in the toy vocabulary: byte fallback spells them.
    _check_roundtrip(toy_spm, text)


def test_byte_level_token_bytes_split_characters(smollm2):
    # "🤖" is F0 9F A4 96; the vocabulary has "ĠðŁ" (" \xf0\x9f") then single bytes.
    ids = smollm2.encode(" 🤖")
    assert [smollm2.token_bytes(i) for i in ids] == [b" \xf0\x9f", b"\xa4", b"\x96"]
    assert smollm2.token_bytes(smollm2.eos_id) == b"<|im_end|>"
    assert smollm2.token_bytes(smollm2.piece_to_id("Ġworld")) == b" world"


def test_special_tokens(smollm2, toy_spm):
    text = "<|im_start|>user\nhi<|im_end|>"
    ids = smollm2.encode(text)
    assert ids[0] == 1 and ids[-1] == 2  # written specials become single ids
    assert smollm2.decode(ids) == text
    assert smollm2.decode(ids, skip_special=True) == "user\nhi"
    # Toy sentencepiece: control pieces written in text encode to their ids, like HF.
    ids = toy_spm.encode("<bos>2+2<eos>")
    assert ids[0] == toy_spm.bos_id and ids[-1] == toy_spm.eos_id
    assert toy_spm.decode(ids) == "<bos>2+2<eos>"
    assert toy_spm.decode(ids, skip_special=True) == "2+2"
    # User-defined symbols are text, not special.
    think = toy_spm.piece_to_id("<think>")
    assert not toy_spm.is_special(think) and toy_spm.decode([think], skip_special=True) == "<think>"


def test_ids_past_the_pieces_and_out_of_range(smollm2):
    padded = HFTokenizer(smollm2.backend, eos_id=2, vocab_size=49152 + 64)
    assert padded.vocab_size == 49216 and padded.num_pieces == 49152
    hi_ids = padded.encode("hi")
    assert padded.decode([*hi_ids, 49200]) == "hi"  # a padding row of the embedding
    assert padded.token_bytes(49200) == b"" and padded.id_to_piece(49200) == ""
    with pytest.raises(ValueError, match=r"outside \[0, 49216\)"):
        padded.decode([49216])
    with pytest.raises(ValueError, match="smaller than"):
        HFTokenizer(smollm2.backend, eos_id=2, vocab_size=100)


def _sentencepiece_style_tokenizer_json() -> tokenizers.Tokenizer:
    """A tiny tokenizer.json in Gemma's style: "▁" for spaces, <0xNN> byte fallback."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    vocab.update({f"<0x{b:02X}>": 4 + b for b in range(256)})
    for piece in ["▁", "a", "b", "c", "▁a", "▁b", "ab", "▁ab"]:
        vocab[piece] = len(vocab)
    merges = [("▁", "a"), ("▁", "b"), ("a", "b"), ("▁a", "b")]
    tok = tokenizers.Tokenizer(
        tokenizers.models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = tokenizers.normalizers.Replace(" ", "▁")
    tok.decoder = tokenizers.decoders.Sequence(
        [tokenizers.decoders.Replace("▁", " "), tokenizers.decoders.ByteFallback(), tokenizers.decoders.Fuse()]
    )
    tok.add_special_tokens(["<pad>", "<eos>", "<bos>"])
    return tok


def test_sentencepiece_style_tokenizer_json():
    tok = HFTokenizer(_sentencepiece_style_tokenizer_json(), eos_id=1, bos_id=2, pad_id=0)
    assert not tok.byte_level
    text = "ab ab c é\n"
    ids = tok.encode(text)
    # "ab", "▁ab", "▁", "c", then é = C3 A9 and \n = 0A as byte pieces (ids 4 + byte).
    assert ids == [tok.piece_to_id(p) for p in ("ab", "▁ab", "▁", "c", "▁")] + [4 + 0xC3, 4 + 0xA9, 4 + 0x0A]
    assert [tok.token_bytes(i) for i in ids[-3:]] == [b"\xc3", b"\xa9", b"\n"]
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode()
    assert tok.decode(ids) == text
    assert tok.encode("ab", add_bos=True) == [2, tok.piece_to_id("ab")]
    with pytest.raises(ValueError, match="no BOS"):
        HFTokenizer(_sentencepiece_style_tokenizer_json(), eos_id=1).encode("a", add_bos=True)
