"""Stop strings as a token-level automaton: one table lookup per row and step, on device.

A byte-level automaton (Aho-Corasick over the stop strings) tracks the longest suffix of the
completion's bytes that is a prefix of some stop string. Lifting it to tokens gives a table
next_state[state, token] computed once on the host from every token's bytes; a token during
which any stop string completes maps to the absorbing MATCH state. The sampling loop then
stops a row the step its text first contains a stop string, even when the string spans several
tokens, and the loop can exit early as soon as every row has stopped. (Truncating decoded text
after generation would give the same text but keep generating until max_new_tokens.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def _byte_automaton(stops: Sequence[bytes]) -> tuple[np.ndarray, int]:
    """delta[state, byte] over the prefixes of `stops`; state n_prefixes is MATCH (absorbing)."""
    prefixes = sorted({s[:i] for s in stops for i in range(len(s))}, key=lambda p: (len(p), p))
    index = {p: i for i, p in enumerate(prefixes)}
    match = len(prefixes)
    delta = np.full((match + 1, 256), match, np.int32)
    for p, i in index.items():
        for c in range(256):
            t = p + bytes([c])
            if any(t.endswith(s) for s in stops):
                continue  # stays MATCH
            # Longest suffix of t that is a prefix of a stop string (b"" always is).
            delta[i, c] = next(index[t[j:]] for j in range(len(t) + 1) if t[j:] in index)
    return delta, match


def stop_string_table(token_bytes: Sequence[bytes], stop_strings: Sequence[str]) -> np.ndarray:
    """next_state[state, token] for the stop strings; state 0 is the start, the last is MATCH.

    token_bytes[i]: the bytes token i adds to the decoded text (b"" for ids with no text).
    int16 when the states fit (the table is V columns wide and lives on every device).
    """
    stops = [s.encode("utf-8") for s in stop_strings]
    if not stops:
        raise ValueError("stop_string_table needs at least one stop string")
    delta, match = _byte_automaton(stops)
    V = len(token_bytes)
    width = max(1, max(len(b) for b in token_bytes))
    lengths_V = np.array([len(b) for b in token_bytes], np.int32)
    bytes_VxW = np.zeros((V, width), np.int32)
    for i, b in enumerate(token_bytes):
        bytes_VxW[i, :len(b)] = np.frombuffer(b, np.uint8)
    table = np.empty((match + 1, V), np.int32)
    for state in range(match + 1):
        cur_V = np.full(V, state, np.int32)
        for j in range(width):
            active_V = (j < lengths_V) & (cur_V != match)
            cur_V = np.where(active_V, delta[cur_V, bytes_VxW[:, j]], cur_V)
        table[state] = cur_V
    return table.astype(np.int16 if match < np.iinfo(np.int16).max else np.int32)


def vocab_bytes(token_bytes: Callable[[int], bytes], num_pieces: int, vocab_size: int
                ) -> list[bytes]:
    """Every model id's bytes; ids past the tokenizer's pieces (padded embeddings) have none."""
    return [token_bytes(i) if i < num_pieces else b"" for i in range(vocab_size)]


def find_stop(text: str, stop_strings: Sequence[str]) -> int | None:
    """End index in `text` of the earliest-ending stop string, or None."""
    ends = [text.find(s) + len(s) for s in stop_strings if s in text]
    return min(ends) if ends else None
