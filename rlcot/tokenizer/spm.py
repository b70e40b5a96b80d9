"""Sentencepiece models (Gemma's tokenizer.model) and a deterministic in-memory trainer for toys."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from rlcot.tokenizer.base import END_OF_GENERATION_PIECES, Tokenizer
from rlcot.tokenizer.hf import BYTE_PIECE, read_chat_template

# Turn markers that are user-defined pieces in sentencepiece (so they encode from text) but
# special to the model: dropped by decode(skip_special=True), as transformers does.
_SPECIAL_USER_DEFINED = frozenset({*END_OF_GENERATION_PIECES, "<start_of_turn>"})
# The toy trainer's special pieces, in Gemma's id layout.
TOY_SPECIALS = {"pad": (0, "<pad>"), "eos": (1, "<eos>"), "bos": (2, "<bos>"), "unk": (3, "<unk>")}


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model behind rlcot's interface.

    Control pieces written in the text ("<eos>") encode to their ids, like Hugging Face
    tokenizers do; the text between them is encoded piece by piece. Decoding joins
    `token_bytes`, so byte-fallback pieces are exact; the one lossy character is "▁" (U+2581),
    which sentencepiece uses for a space.
    """

    def __init__(
        self,
        model_proto: bytes,
        *,
        vocab_size: int | None = None,
        chat_template: str | None = None,
        family: str | None = None,
        add_bos_by_default: bool = False,
    ):
        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        n = self.sp.get_piece_size()
        self._pieces = [self.sp.id_to_piece(i) for i in range(n)]
        self._piece_ids = {p: i for i, p in enumerate(self._pieces)}
        self._special = [
            self.sp.is_control(i) or self.sp.is_unknown(i) or self._pieces[i] in _SPECIAL_USER_DEFINED
            for i in range(n)
        ]
        controls = sorted(
            (p for i, p in enumerate(self._pieces) if self.sp.is_control(i) or self.sp.is_unknown(i)),
            key=len, reverse=True,
        )
        self._control_re = re.compile("|".join(map(re.escape, controls))) if controls else None
        # A model trained with add_dummy_prefix writes "▁" before the text; decode removes it.
        self._dummy_prefix = "".join(self.sp.encode("x", out_type=str)).startswith("▁")
        self._token_bytes: list[bytes] | None = None
        eos = self.sp.eos_id()
        if eos < 0:
            raise ValueError("sentencepiece model has no eos piece (eos_id = -1)")
        self._init_specials(
            num_pieces=n,
            vocab_size=vocab_size,
            bos_id=self.sp.bos_id() if self.sp.bos_id() >= 0 else None,
            eos_id=eos,
            pad_id=self.sp.pad_id() if self.sp.pad_id() >= 0 else None,
            chat_template=chat_template,
            family=family,
            add_bos_by_default=add_bos_by_default,
        )

    @classmethod
    def from_file(cls, path: str | Path, **kwargs) -> SentencePieceTokenizer:
        return cls(Path(path).read_bytes(), **kwargs)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> SentencePieceTokenizer:
        """tokenizer.model plus, where present, tokenizer_config.json's chat template and
        config.json's vocab size (Gemma ships both)."""
        model_dir = Path(model_dir)
        tok_config_path = model_dir / "tokenizer_config.json"
        tok_config = json.loads(tok_config_path.read_text()) if tok_config_path.is_file() else {}
        config_path = model_dir / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        config = config.get("text_config", config)
        return cls.from_file(
            model_dir / "tokenizer.model",
            vocab_size=config.get("vocab_size"),
            chat_template=read_chat_template(model_dir, tok_config),
            add_bos_by_default=bool(tok_config.get("add_bos_token", True)),
        )

    def save(self, path: str | Path) -> Path:
        """Writes the model proto (a standard sentencepiece .model file)."""
        path = Path(path)
        path.write_bytes(self.model_proto)
        return path

    # -- text <-> ids -------------------------------------------------------------------------

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        if self._control_re is None or not self._control_re.search(text):
            ids = self.sp.encode(text)
        else:
            ids, start = [], 0
            for m in self._control_re.finditer(text):
                if m.start() > start:
                    ids += self.sp.encode(text[start : m.start()])
                ids.append(self._piece_ids[m.group()])
                start = m.end()
            if start < len(text):
                ids += self.sp.encode(text[start:])
        return self._with_bos(ids, add_bos)

    def encode_batch(self, texts: Sequence[str], *, add_bos: bool = False) -> list[list[int]]:
        if self._control_re is not None and any(self._control_re.search(t) for t in texts):
            return [self.encode(t, add_bos=add_bos) for t in texts]
        return [self._with_bos(ids, add_bos) for ids in self.sp.encode(list(texts))]

    def _with_bos(self, ids: list[int], add_bos: bool) -> list[int]:
        if not add_bos:
            return ids
        if self.bos_id is None:
            raise ValueError("add_bos=True but this sentencepiece model has no bos piece")
        return [self.bos_id, *ids]

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        ids = [self._check_id(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if not self.is_special(i)]
        text = b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")
        if self._dummy_prefix and ids and text.startswith(" ") and not self.is_special(ids[0]):
            text = text[1:]
        return text

    # -- pieces -------------------------------------------------------------------------------

    def id_to_piece(self, i: int) -> str:
        i = self._check_id(i)
        return self._pieces[i] if i < self.num_pieces else ""

    def piece_to_id(self, piece: str) -> int | None:
        return self._piece_ids.get(piece)

    def is_special(self, i: int) -> bool:
        i = self._check_id(i)
        return i < self.num_pieces and self._special[i]

    def token_bytes(self, i: int) -> bytes:
        i = self._check_id(i)
        if self._token_bytes is None:
            self._token_bytes = [self._piece_bytes(k) for k in range(self.num_pieces)]
        return self._token_bytes[i] if i < self.num_pieces else b""

    def _piece_bytes(self, i: int) -> bytes:
        piece = self._pieces[i]
        if self.sp.is_byte(i):
            return bytes([int(BYTE_PIECE.fullmatch(piece).group(1), 16)])
        if self.sp.is_control(i) or self.sp.is_unknown(i):
            return piece.encode("utf-8")
        return piece.replace("▁", " ").encode("utf-8")


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    *,
    user_defined_symbols: Sequence[str] = (),
    model_type: str = "bpe",
    split_digits: bool = True,
    byte_fallback: bool = True,
    hard_vocab_limit: bool = True,
    seed: int = 0,
    max_sentence_length: int = 1 << 16,
    chat_template: str | None = None,
    family: str = "plain",
) -> SentencePieceTokenizer:
    """Trains a small sentencepiece model in memory, deterministically (same texts and
    arguments -> same model bytes).

    Ids: pad 0, eos 1, bos 2, unk 3, then `user_defined_symbols` (each one piece, matched
    whole in text: "<think>", "</answer>"), then the 256 byte pieces when `byte_fallback`,
    then learned pieces. Text is kept as is (no normalization, no dummy prefix, whitespace
    runs kept) so that decode(encode(s)) == s. With `hard_vocab_limit=False` the trainer may
    stop below `vocab_size` when the corpus is too small to fill it (read `tok.vocab_size`).
    """
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    texts = list(texts)
    if not texts:
        raise ValueError("train_sentencepiece needs at least one text")
    too_long = [k for k, t in enumerate(texts) if len(t.encode("utf-8")) > max_sentence_length]
    if too_long:
        # The trainer would skip them silently.
        raise ValueError(
            f"texts {too_long[:5]} are longer than max_sentence_length={max_sentence_length} bytes"
        )
    bad = [s for s in user_defined_symbols if not s or s in {p for _, p in TOY_SPECIALS.values()}]
    if bad or len(set(user_defined_symbols)) != len(user_defined_symbols):
        raise ValueError(f"user_defined_symbols must be distinct, non-empty, not special: {user_defined_symbols}")
    spm.set_random_generator_seed(seed)
    writer = io.BytesIO()
    options = dict(
        sentence_iterator=iter(texts),
        model_writer=writer,
        vocab_size=vocab_size,
        model_type=model_type,
        user_defined_symbols=list(user_defined_symbols),
        split_digits=split_digits,
        byte_fallback=byte_fallback,
        hard_vocab_limit=hard_vocab_limit,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        max_sentence_length=max_sentence_length,
        # Determinism: one thread, no sampling of the input.
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
        **{f"{name}_id": i for name, (i, _) in TOY_SPECIALS.items()},
        **{f"{name}_piece": p for name, (_, p) in TOY_SPECIALS.items()},
    )
    try:
        spm.SentencePieceTrainer.train(**options)
    except RuntimeError as e:
        raise ValueError(f"sentencepiece training failed (vocab_size={vocab_size}, {len(texts)} texts): {e}") from e
    return SentencePieceTokenizer(writer.getvalue(), chat_template=chat_template, family=family)
