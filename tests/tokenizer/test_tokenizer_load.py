"""load_tokenizer on model directories: tokenizer.json + configs, tokenizer.model, a lone .gguf."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tokenizers

from conftest import TOY_CORPUS, TOY_SYMBOLS
from rlcot.tokenizer import HFTokenizer, SentencePieceTokenizer, load_tokenizer, train_sentencepiece


def _write(path: Path, obj) -> None:
    path.write_text(json.dumps(obj), encoding="utf-8")


@pytest.fixture
def smollm2_dir(smollm2, tmp_path) -> Path:
    """SmolLM2 laid out as on the Hub: the GGUF-built tokenizer saved as tokenizer.json."""
    smollm2.backend.save(str(tmp_path / "tokenizer.json"))
    _write(tmp_path / "tokenizer_config.json", {
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>", "special": True},
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "add_bos_token": False,
        "chat_template": smollm2.chat_template,
    })
    _write(tmp_path / "generation_config.json", {"bos_token_id": 1, "eos_token_id": [2, 5]})
    _write(tmp_path / "config.json", {"vocab_size": 49152 + 128, "eos_token_id": 2})
    return tmp_path


def test_tokenizer_json_dir(smollm2_dir, smollm2, golden):
    tok = load_tokenizer(smollm2_dir)
    assert isinstance(tok, HFTokenizer) and tok.byte_level
    for item in golden["encode"]:
        assert tok.encode(item["text"]) == item["ids"], item["text"]
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)
    # vocab size from config.json (a padded embedding), stop ids from generation_config (5 is
    # <file_sep>, listed there only to show it is taken) and <|endoftext|>.
    assert (tok.vocab_size, tok.num_pieces) == (49280, 49152)
    assert tok.stop_ids == (2, 5, 0)
    assert tok.family == "chatml" and not tok.add_bos_by_default
    assert tok.apply_chat_template(golden["chat"][2]["messages"]) == golden["chat"][2]["text"]
    assert load_tokenizer(smollm2_dir / "tokenizer.json").encode("x  1") == smollm2.encode("x  1")


def test_chat_template_file_wins_and_fallbacks(smollm2_dir):
    (smollm2_dir / "chat_template.jinja").write_text("{{ messages[0]['content'] }}!", encoding="utf-8")
    assert load_tokenizer(smollm2_dir).apply_chat_template([{"role": "user", "content": "hi"}]) == "hi!"
    (smollm2_dir / "chat_template.jinja").unlink()
    # No template shipped at all: the built-in ChatML one, found from the <|im_start|> piece.
    config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    del config["chat_template"], config["eos_token"]
    _write(smollm2_dir / "tokenizer_config.json", config)
    tok = load_tokenizer(smollm2_dir)
    assert tok.family == "chatml"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.eos_id == 2  # from generation_config when tokenizer_config names none


def test_bos_from_post_processor(smollm2, tmp_path):
    # Llama 3's tokenizer_config has no add_bos_token; its tokenizer.json post-processor adds BOS.
    backend = tokenizers.Tokenizer.from_str(smollm2.backend.to_str())
    backend.post_processor = tokenizers.processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)]
    )
    backend.save(str(tmp_path / "tokenizer.json"))
    _write(tmp_path / "tokenizer_config.json", {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"})
    tok = load_tokenizer(tmp_path)
    assert tok.add_bos_by_default
    assert tok.encode("hi") == smollm2.encode("hi")  # the post-processor itself is never applied
    assert tok.encode("hi", add_bos=True) == [1, *smollm2.encode("hi")]


def test_bad_configs(smollm2_dir, tmp_path):
    _write(smollm2_dir / "tokenizer_config.json", {"eos_token": "<|nope|>"})
    with pytest.raises(ValueError, match=r"eos_token='<\|nope\|>' is not in tokenizer.json"):
        load_tokenizer(smollm2_dir)
    _write(smollm2_dir / "config.json", {"vocab_size": 1000})
    _write(smollm2_dir / "tokenizer_config.json", {"eos_token": "<|im_end|>"})
    with pytest.raises(ValueError, match="vocab_size 1000 is smaller than the tokenizer's 49152 pieces"):
        load_tokenizer(smollm2_dir)
    with pytest.raises(FileNotFoundError, match="no tokenizer at"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer found"):
        load_tokenizer(tmp_path / "empty")


def test_gguf_in_a_directory(smollm2_path, smollm2, tmp_path):
    (tmp_path / smollm2_path.name).symlink_to(smollm2_path)
    tok = load_tokenizer(tmp_path)
    assert tok.encode("Hello world") == smollm2.encode("Hello world") == [19556, 905]


def test_sentencepiece_dir_gemma_style(tmp_path):
    symbols = ("<start_of_turn>", "<end_of_turn>", *TOY_SYMBOLS)
    trained = train_sentencepiece(TOY_CORPUS, 420, user_defined_symbols=symbols)
    trained.save(tmp_path / "tokenizer.model")
    _write(tmp_path / "config.json", {"text_config": {"vocab_size": 512}})
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, SentencePieceTokenizer)
    end_of_turn = tok.piece_to_id("<end_of_turn>")
    assert tok.family == "gemma" and tok.vocab_size == 512 and tok.add_bos_by_default
    assert tok.stop_ids == (tok.eos_id, end_of_turn) and tok.is_special(end_of_turn)
    text = tok.apply_chat_template([{"role": "user", "content": "2+2?"}])
    assert text == "<bos><start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n"
    ids = tok.encode(text)
    assert ids[:2] == [tok.bos_id, tok.piece_to_id("<start_of_turn>")]
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special=True) == "user\n2+2?\nmodel\n"


def test_training_is_deterministic_across_processes(toy_spm):
    code = (
        "import hashlib, sys; sys.path.insert(0, sys.argv[1]);"
        "from conftest import TOY_CORPUS, TOY_SYMBOLS;"
        "from rlcot.tokenizer import train_sentencepiece;"
        "print(hashlib.sha256(train_sentencepiece(TOY_CORPUS, 400, user_defined_symbols=TOY_SYMBOLS)"
        ".model_proto).hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)], capture_output=True, text=True, check=True
    )
    import hashlib

    assert out.stdout.strip() == hashlib.sha256(toy_spm.model_proto).hexdigest()
