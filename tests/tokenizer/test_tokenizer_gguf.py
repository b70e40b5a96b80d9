"""The SmolLM2 GGUF tokenizer: metadata, vocabulary, merges, special ids, and ids against transformers."""

from __future__ import annotations

import json

import pytest

from rlcot.tokenizer import HFTokenizer, gguf_tokenizer_from_metadata, read_gguf_metadata
from rlcot.tokenizer.gguf_vocab import BYTE_LEVEL_PRE_TOKENIZATION, byte_level_pre_tokenizer


@pytest.fixture(scope="module")
def metadata(smollm2_path):
    return read_gguf_metadata(smollm2_path)


def test_metadata_matches_gguf_reader(smollm2_path, metadata):
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(smollm2_path)
    expected = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert set(metadata) == set(expected)
    for key, value in expected.items():
        assert metadata[key] == value, key


def test_metadata_subset_and_errors(smollm2_path, tmp_path):
    sub = read_gguf_metadata(smollm2_path, ["tokenizer.ggml.pre", "llama.vocab_size", "absent.key"])
    assert sub == {"tokenizer.ggml.pre": "smollm", "llama.vocab_size": 49152}
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + bytes(40))
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_gguf_metadata(bad)


def test_special_ids(smollm2, golden):
    tok = smollm2
    assert isinstance(tok, HFTokenizer) and tok.byte_level
    assert (tok.vocab_size, tok.num_pieces) == (49152, 49152)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (golden["bos_id"], golden["eos_id"], golden["pad_id"]) == (1, 2, 2)
    assert tok.id_to_piece(0) == "<|endoftext|>" and tok.id_to_piece(1) == "<|im_start|>"
    assert tok.id_to_piece(2) == "<|im_end|>"
    # eos (<|im_end|>) first, then <|endoftext|>, which also ends a generation.
    assert tok.stop_ids == (2, 0)
    assert tok.family == "chatml" and not tok.add_bos_by_default
    assert [i for i in range(tok.num_pieces) if tok.is_special(i)] == golden["special_ids"] == list(range(17))


def test_vocabulary_and_merges_are_the_files(smollm2, metadata):
    tokens = metadata["tokenizer.ggml.tokens"]
    assert len(tokens) == 49152
    assert [smollm2.id_to_piece(i) for i in range(len(tokens))] == tokens
    assert all(smollm2.piece_to_id(t) == i for i, t in enumerate(tokens))
    model = json.loads(smollm2.backend.to_str())["model"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    assert merges == metadata["tokenizer.ggml.merges"]
    assert model["type"] == "BPE" and model["unk_token"] is None and not model["byte_fallback"]


def test_golden_ids(smollm2, golden):
    for item in golden["encode"]:
        assert smollm2.encode(item["text"]) == item["ids"], item["text"]
    texts = [item["text"] for item in golden["encode"]]
    assert smollm2.encode_batch(texts) == [item["ids"] for item in golden["encode"]]
    assert smollm2.encode("Hi", add_bos=True) == [1, *smollm2.encode("Hi")]


def test_digits_are_isolated_before_byte_level(smollm2, golden):
    # SmolLM2 splits digits first: "x  1" -> "x  " | "1"; GPT-2's regex then keeps the
    # trailing run "  " whole -> x, ĠĠ, 1. Plain GPT-2 pre-tokenization would give "x", " ",
    # " 1" -> x, Ġ, Ġ, 1 (Ġ1 is not a token: the vocabulary has no digit merges).
    x, spsp, sp, one = (smollm2.piece_to_id(p) for p in ("x", "ĠĠ", "Ġ", "1"))
    assert smollm2.encode("x  1") == [x, spsp, one]
    assert smollm2.encode(" 1") == [sp, one]
    # The golden file marks exactly these texts as where transformers' GGUF loader differs.
    differ = [e["text"] for e in golden["encode"] if e["ids"] != e["transformers_gguf_ids"]]
    assert differ == ["x  1", "a   22 b\t\t9 c\n\n 7", "½ ² ١٢٣ Ⅻ"]


def test_metadata_entry_point_and_unsupported(metadata):
    tok = gguf_tokenizer_from_metadata(metadata)
    assert tok.encode("12 apples") == [33, 34, *tok.encode(" apples")]
    with pytest.raises(NotImplementedError, match="'llama'"):
        gguf_tokenizer_from_metadata({**metadata, "tokenizer.ggml.model": "llama"})
    with pytest.raises(ValueError, match="pre-tokenizer 'nonesuch'"):
        gguf_tokenizer_from_metadata({**metadata, "tokenizer.ggml.pre": "nonesuch"})


@pytest.fixture(scope="module")
def transformers_reference(smollm2_path):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)


def test_matches_transformers_gguf_loader(smollm2, golden, transformers_reference):
    ref = transformers_reference
    for item in golden["encode"]:
        live = ref.encode(item["text"], add_special_tokens=False)
        assert live == item["transformers_gguf_ids"], item["text"]  # golden is current
        if item["ids"] == item["transformers_gguf_ids"]:
            assert smollm2.encode(item["text"]) == live, item["text"]
    for item in golden["chat"]:
        text = ref.apply_chat_template(
            item["messages"], tokenize=False, add_generation_prompt=item["add_generation_prompt"]
        )
        assert text == item["text"]
        assert smollm2.apply_chat_template(item["messages"], add_generation_prompt=item["add_generation_prompt"]) == text
    assert [ref.convert_ids_to_tokens(i) for i in range(0, 49152, 97)] == [
        smollm2.id_to_piece(i) for i in range(0, 49152, 97)
    ]


def test_split_regexes_match_transformers():
    pytest.importorskip("transformers")
    from transformers.integrations.gguf import gguf_tokenizer_mapping as mapping

    for pre in ("llama-bpe", "qwen2", "deepseek-r1-qwen"):
        assert BYTE_LEVEL_PRE_TOKENIZATION[pre] == mapping.GGUF_PRE_TOKENIZER_SPLITS[pre], pre
    for pre in BYTE_LEVEL_PRE_TOKENIZATION:
        byte_level_pre_tokenizer(pre)  # every entry builds
