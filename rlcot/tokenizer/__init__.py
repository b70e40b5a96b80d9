"""Tokenizers behind one interface: tokenizer.json, sentencepiece, GGUF, and a toy trainer.

    tok = load_tokenizer("path/to/Qwen2.5-0.5B-Instruct")   # or a .model / .gguf file
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "2+2?"}]))
"""

from __future__ import annotations

from pathlib import Path

from rlcot.tokenizer.base import END_OF_GENERATION_PIECES, Tokenizer
from rlcot.tokenizer.chat import BUILTIN_TEMPLATES, FAMILIES, builtin_chat_template, render_chat_template
from rlcot.tokenizer.gguf_vocab import (
    gguf_path_smollm2,
    gguf_tokenizer_from_metadata,
    load_gguf_tokenizer,
    read_gguf_metadata,
)
from rlcot.tokenizer.hf import HFTokenizer, load_hf_dir
from rlcot.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece

__all__ = [
    "BUILTIN_TEMPLATES", "END_OF_GENERATION_PIECES", "FAMILIES", "HFTokenizer", "SentencePieceTokenizer",
    "Tokenizer", "builtin_chat_template", "gguf_path_smollm2", "gguf_tokenizer_from_metadata",
    "load_gguf_tokenizer", "load_hf_dir", "load_tokenizer", "read_gguf_metadata", "render_chat_template",
    "train_sentencepiece",
]


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer at `path`: a .gguf or sentencepiece .model file, or a model directory
    holding tokenizer.json (preferred), tokenizer.model, or a single .gguf file."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".gguf":
            return load_gguf_tokenizer(path)
        if path.suffix == ".json":
            return load_hf_dir(path.parent) if path.name == "tokenizer.json" else _unknown(path)
        return SentencePieceTokenizer.from_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no tokenizer at {path}")
    if (path / "tokenizer.json").is_file():
        return load_hf_dir(path)
    if (path / "tokenizer.model").is_file():
        return SentencePieceTokenizer.from_dir(path)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return load_gguf_tokenizer(ggufs[0])
    if len(ggufs) > 1:
        raise ValueError(f"{path} holds several .gguf files {[g.name for g in ggufs]}; pass one of them")
    return _unknown(path)


def _unknown(path: Path) -> Tokenizer:
    raise FileNotFoundError(
        f"no tokenizer found at {path}: expected tokenizer.json, tokenizer.model, a .model or a .gguf file"
    )
