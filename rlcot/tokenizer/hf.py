"""Hugging Face `tokenizers` models (tokenizer.json): Qwen2.5/Qwen3, Llama 3.x, SmolLM2, Gemma."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import tokenizers

from rlcot.tokenizer.base import Tokenizer

BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.cache
def byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable character -> the byte it spells."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` behind rlcot's interface.

    The backend's post-processor is never used: `encode` adds no special token but the BOS
    it is asked for, so every tokenizer behaves the same whatever its tokenizer.json says.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        eos_id: int,
        bos_id: int | None = None,
        pad_id: int | None = None,
        extra_stop_ids: Iterable[int] = (),
        vocab_size: int | None = None,
        chat_template: str | None = None,
        family: str | None = None,
        add_bos_by_default: bool = False,
    ):
        self.backend = backend
        self._added = {i: t for i, t in backend.get_added_tokens_decoder().items()}
        decoder = json.loads(backend.decoder.__getstate__()) if backend.decoder is not None else {}
        self.byte_level = '"ByteLevel"' in json.dumps(decoder)
        self._token_bytes: list[bytes] | None = None
        self._init_specials(
            num_pieces=backend.get_vocab_size(with_added_tokens=True),
            vocab_size=vocab_size,
            bos_id=bos_id,
            eos_id=eos_id,
            pad_id=pad_id,
            extra_stop_ids=extra_stop_ids,
            chat_template=chat_template,
            family=family,
            add_bos_by_default=add_bos_by_default,
        )

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return self._with_bos(ids, add_bos)

    def encode_batch(self, texts: Sequence[str], *, add_bos: bool = False) -> list[list[int]]:
        encodings = self.backend.encode_batch_fast(list(texts), add_special_tokens=False)
        return [self._with_bos(e.ids, add_bos) for e in encodings]

    def _with_bos(self, ids: list[int], add_bos: bool) -> list[int]:
        if not add_bos:
            return ids
        if self.bos_id is None:
            raise ValueError("add_bos=True but this tokenizer has no BOS token")
        return [self.bos_id, *ids]

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        ids = [self._check_id(i) for i in ids]
        return self.backend.decode([i for i in ids if i < self.num_pieces], skip_special_tokens=skip_special)

    def id_to_piece(self, i: int) -> str:
        i = self._check_id(i)
        return self.backend.id_to_token(i) if i < self.num_pieces else ""

    def piece_to_id(self, piece: str) -> int | None:
        return self.backend.token_to_id(piece)

    def is_special(self, i: int) -> bool:
        token = self._added.get(self._check_id(i))
        return token is not None and token.special

    def token_bytes(self, i: int) -> bytes:
        i = self._check_id(i)
        if self._token_bytes is None:
            self._token_bytes = [self._piece_bytes(k) for k in range(self.num_pieces)]
        return self._token_bytes[i] if i < self.num_pieces else b""

    def _piece_bytes(self, i: int) -> bytes:
        if i in self._added:  # added tokens are stored as plain text in every vocabulary kind
            return self._added[i].content.encode("utf-8")
        piece = self.backend.id_to_token(i)
        if self.byte_level:
            table = byte_level_decoder()
            return bytes(table[c] for c in piece)
        # Sentencepiece-style vocabulary (Gemma, Llama 2): "▁" is a space, "<0xNN>" one byte.
        m = BYTE_PIECE.fullmatch(piece)
        if m:
            return bytes([int(m.group(1), 16)])
        return piece.replace("▁", " ").encode("utf-8")


def _token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def read_chat_template(model_dir: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """The chat template a model directory ships: chat_template.jinja, or tokenizer_config's."""
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template") or _read_json(model_dir / "chat_template.json").get(
        "chat_template"
    )
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t["name"]: t["template"] for t in template}
        template = named.get("default")
    return template


def load_hf_dir(model_dir: str | Path) -> HFTokenizer:
    """A model directory with tokenizer.json, plus tokenizer_config.json, generation_config.json
    and config.json where present (special tokens, chat template, stop ids, vocab size)."""
    model_dir = Path(model_dir)
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {model_dir}")
    backend = tokenizers.Tokenizer.from_file(str(path))
    tok_config = _read_json(model_dir / "tokenizer_config.json")
    gen_config = _read_json(model_dir / "generation_config.json")
    model_config = _read_json(model_dir / "config.json")
    model_config = model_config.get("text_config", model_config)  # multimodal configs (Gemma 3)

    def token_id(name: str) -> int | None:
        content = _token_content(tok_config.get(name))
        if content is None:
            return None
        i = backend.token_to_id(content)
        if i is None:
            raise ValueError(f"{model_dir}: tokenizer_config {name}={content!r} is not in tokenizer.json")
        return i

    gen_eos = _as_list(gen_config.get("eos_token_id"))
    cfg_eos = _as_list(model_config.get("eos_token_id"))
    eos_id = token_id("eos_token")
    if eos_id is None:
        candidates = gen_eos or cfg_eos
        if not candidates:
            raise ValueError(f"{model_dir}: no eos token in tokenizer_config, generation_config or config")
        eos_id = candidates[0]
    bos_id = token_id("bos_token")
    if bos_id is None and model_config.get("bos_token_id") is not None and "bos_token" not in tok_config:
        bos_id = int(model_config["bos_token_id"])
    pad_id = token_id("pad_token")
    if pad_id is None and model_config.get("pad_token_id") is not None:
        pad_id = int(model_config["pad_token_id"])
    return HFTokenizer(
        backend,
        eos_id=eos_id,
        bos_id=bos_id,
        pad_id=pad_id,
        extra_stop_ids=[*gen_eos, *cfg_eos],
        vocab_size=model_config.get("vocab_size"),
        chat_template=read_chat_template(model_dir, tok_config),
        add_bos_by_default=_adds_bos(backend, tok_config, bos_id),
    )


def _adds_bos(backend: tokenizers.Tokenizer, tok_config: dict[str, Any], bos_id: int | None) -> bool:
    """Whether the model expects a BOS: tokenizer_config says so, or (Llama 3, which does not)
    the tokenizer.json post-processor writes it."""
    if "add_bos_token" in tok_config:
        return bool(tok_config["add_bos_token"])
    if bos_id is None or backend.post_processor is None:
        return False
    state = json.loads(backend.post_processor.__getstate__())
    single = state.get("single", [])
    return any(item.get("SpecialToken", {}).get("id") == backend.id_to_token(bos_id) for item in single)
