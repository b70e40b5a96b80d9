"""Helpers for the sampling tests: tiny peaked models, a byte tokenizer, a reference forward."""

from __future__ import annotations

import jax

from rlcot.models import presets
from rlcot.models import transformer as tr

# Embedding scale per preset: a randomly initialised tiny model is nearly uniform over its 256
# tokens (entropy 5.5 nats, top-2 logit gaps ~1e-3), so greedy ties could flip on rounding.
# Scaling the tied embedding gives entropy ~3.4 (tiny) / ~4.6 (tiny-gemma3): still diverse
# samples, but clear argmaxes.
PEAK = {"tiny": 8.0, "tiny-gemma3": 4.0}
PROMPTS = [[1, 2, 3, 4, 5], [10, 11, 12, 13, 14, 15, 16, 17, 18], [7, 42]]


def peaked_model(name: str):
    cfg = presets.get_config(name)
    graphdef, params = tr.init_params(cfg, seed=0)
    params["embed"].set_value(params["embed"].get_value() * PEAK[name])
    return cfg, graphdef, params


class ByteTokenizer:
    """Token i is a short piece over a 4-letter alphabet; enough for stop strings and decode."""

    def __init__(self, vocab_size: int):
        alphabet = "abcd"
        self.pieces = [alphabet[i % 4] + (alphabet[(i // 4) % 4] if i % 3 == 0 else "")
                       for i in range(vocab_size)]
        self.vocab_size = self.num_pieces = vocab_size
        self.pad_id = 0

    def token_bytes(self, i: int) -> bytes:
        return self.pieces[i].encode()

    def decode(self, ids, *, skip_special: bool = False) -> str:
        return "".join(self.pieces[i] for i in ids)


def full_forward_logits(graphdef, params, batch):
    """Float32 logits of the whole prompt + completion sequence, without a cache."""
    logits, _ = jax.jit(tr.forward, static_argnums=0)(
        graphdef, params, batch.tokens_NxL, batch.positions_NxL, batch.valid_NxL)
    return logits
