"""The toy world's sentencepiece tokenizer: trained on the corpus, cached by content hash."""

from __future__ import annotations

import os
from collections.abc import Sequence

from rlcot.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece
from rlcot.toyworld import cache

FAMILY = "plain"


def load_tokenizer(path: str | os.PathLike) -> SentencePieceTokenizer:
    """A toy tokenizer saved by `cached_tokenizer` (or next to a cached base model)."""
    return SentencePieceTokenizer.from_file(path, family=FAMILY)


def cached_tokenizer(texts: Sequence[str], vocab_size: int, user_defined_symbols: Sequence[str],
                     cache_dir: str | os.PathLike | None = None) -> SentencePieceTokenizer:
    """train_sentencepiece on `texts` (split digits, `user_defined_symbols` kept whole), or the
    cached model trained on the same texts with the same arguments. The vocabulary may stop
    below `vocab_size` when the texts have fewer distinct pieces (read `tok.vocab_size`)."""
    key = cache.texts_key(texts, vocab_size, list(user_defined_symbols), "spm-v1")
    path = cache.cache_dir(cache_dir) / f"tokenizer-{key}.model"
    if path.is_file():
        return load_tokenizer(path)
    tok = train_sentencepiece(texts, vocab_size, user_defined_symbols=user_defined_symbols,
                              split_digits=True, hard_vocab_limit=False, family=FAMILY)
    cache.write_atomic(path, tok.model_proto)
    return tok


# Documents the tokenizer is trained on (every piece of the world occurs in far fewer).
TOKENIZER_DOCS = 5_000


def world_tokenizer(world, cache_dir: str | os.PathLike | None = None) -> SentencePieceTokenizer:
    """The world's tokenizer: trained on the first TOKENIZER_DOCS corpus documents (cached)."""
    from rlcot.toyworld.corpus import build_corpus, user_defined_symbols
    docs = build_corpus(world, min(world.corpus_size, TOKENIZER_DOCS))
    return cached_tokenizer([d.prompt + d.completion for d in docs], world.vocab_size,
                            user_defined_symbols(), cache_dir)
