"""The one tokenizer interface rlcot uses; concrete tokenizers subclass `Tokenizer`."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rlcot.tokenizer import chat

# Pieces that end a generation wherever a vocabulary has them: end of text and end of turn.
# llama.cpp stops on the same set (its "end of generation" tokens).
END_OF_GENERATION_PIECES = (
    "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>",
    "<end_of_turn>", "<eos>", "</s>",
)


class Tokenizer(abc.ABC):
    """Text <-> ids, special ids, per-token bytes for stop strings, and the chat format.

    `vocab_size` is the size of the model's id space; it may exceed the number of pieces
    (embedding tables are padded, e.g. Qwen2.5). Ids in [num_pieces, vocab_size) have no text:
    they decode to nothing and `token_bytes` gives b"".
    """

    vocab_size: int
    num_pieces: int
    bos_id: int | None
    eos_id: int
    pad_id: int
    stop_ids: tuple[int, ...]
    family: str
    chat_template: str
    # Whether the model expects BOS before plain text (Gemma, Llama); chat templates that
    # write the BOS themselves need add_bos=False when their output is encoded.
    add_bos_by_default: bool
    _special_strings: dict[str, str]

    def _init_specials(
        self,
        *,
        num_pieces: int,
        vocab_size: int | None,
        bos_id: int | None,
        eos_id: int,
        pad_id: int | None,
        extra_stop_ids: Iterable[int] = (),
        chat_template: str | None,
        family: str | None,
        add_bos_by_default: bool,
    ) -> None:
        """Validates and stores the special ids; subclasses call it once their pieces exist."""
        self.num_pieces = int(num_pieces)
        self.vocab_size = int(vocab_size) if vocab_size is not None else self.num_pieces
        if self.vocab_size < self.num_pieces:
            raise ValueError(
                f"vocab_size {self.vocab_size} is smaller than the tokenizer's {self.num_pieces} pieces"
            )
        for name, value in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
            if value is not None and not 0 <= value < self.num_pieces:
                raise ValueError(f"{name}={value} is outside the tokenizer's {self.num_pieces} pieces")
        self.bos_id = bos_id
        self.eos_id = int(eos_id)
        # No pad token (Llama 3): pad with eos; rlcot masks padding, so its id never matters.
        self.pad_id = int(pad_id) if pad_id is not None else self.eos_id
        stops = [self.eos_id, *extra_stop_ids]
        for piece in END_OF_GENERATION_PIECES:
            i = self.piece_to_id(piece)
            if i is not None:
                stops.append(i)
        bad = [i for i in stops if not 0 <= i < self.num_pieces]
        if bad:
            raise ValueError(f"stop ids {bad} are outside the tokenizer's {self.num_pieces} pieces")
        self.stop_ids = tuple(dict.fromkeys(int(i) for i in stops))
        self.family = family or chat.detect_family(chat_template, self.piece_to_id)
        if self.family not in chat.FAMILIES:
            raise ValueError(f"unknown chat family {self.family!r}; known: {chat.FAMILIES}")
        self.chat_template = chat_template or chat.builtin_chat_template(self.family)
        self.add_bos_by_default = bool(add_bos_by_default)
        self._special_strings = {
            name: self.id_to_piece(i)
            for name, i in (("bos_token", bos_id), ("eos_token", eos_id), ("pad_token", pad_id))
            if i is not None
        }

    # -- text <-> ids -------------------------------------------------------------------------

    @abc.abstractmethod
    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Ids of `text`; special-token strings in the text (e.g. "<|im_end|>") become their ids."""

    def encode_batch(self, texts: Sequence[str], *, add_bos: bool = False) -> list[list[int]]:
        return [self.encode(t, add_bos=add_bos) for t in texts]

    @abc.abstractmethod
    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """Text of `ids`; with skip_special, control tokens (bos, eos, end of turn) are dropped."""

    # -- pieces -------------------------------------------------------------------------------

    @abc.abstractmethod
    def id_to_piece(self, i: int) -> str:
        """The raw vocabulary string of id `i` ("Ġthe", "▁the", "<|im_end|>"); "" past the pieces."""

    @abc.abstractmethod
    def piece_to_id(self, piece: str) -> int | None:
        """The id of a raw vocabulary string, or None when the vocabulary lacks it."""

    @abc.abstractmethod
    def token_bytes(self, i: int) -> bytes:
        """The UTF-8 bytes id `i` adds to decoded text (special tokens: their text).

        A character may span tokens (byte fallback, byte-level BPE), so one token's bytes need
        not be valid UTF-8; `b"".join(token_bytes(i) for i in encode(s)) == s.encode()`.
        """

    def is_special(self, i: int) -> bool:
        """Whether `decode(..., skip_special=True)` drops id `i`."""
        return False

    def _check_id(self, i: int) -> int:
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} is outside [0, {self.vocab_size})")
        return int(i)

    # -- chat ---------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> str:
        """Renders `messages` with this tokenizer's chat template (as transformers does).

        `template_kwargs` reach the template as variables, e.g. `enable_thinking=False` for
        Qwen3. Templates that write the BOS themselves (Llama 3, Gemma) need the result encoded
        with add_bos=False.
        """
        return chat.render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            **{**self._special_strings, **template_kwargs},
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(family={self.family!r}, vocab_size={self.vocab_size}, "
            f"num_pieces={self.num_pieces}, bos_id={self.bos_id}, eos_id={self.eos_id}, "
            f"pad_id={self.pad_id}, stop_ids={self.stop_ids})"
        )
