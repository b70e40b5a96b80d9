"""Stop strings: the token-level automaton stops exactly where the decoded text first holds one."""

import numpy as np
import pytest

from rlcot.sampling import stop_string_table
from rlcot.sampling.stop import find_stop

PIECES = [b"", b"a", b"b", b"c", b"ab", b"</", b"ans", b"wer>", b"</answer>\n", b"x</answer>",
          b"<", b"/", b"\xe2\x9c", b"\x93"]  # the last two: one UTF-8 character in two tokens
ID = {p: i for i, p in enumerate(PIECES)}


def first_match(table, ids):
    """Step at which the automaton reaches MATCH (the last state), or None."""
    match, state = table.shape[0] - 1, 0
    for step, i in enumerate(ids):
        state = int(table[state, i])
        if state == match:
            return step
    return None


def brute_first_match(ids, stops):
    text = b""
    for step, i in enumerate(ids):
        text += PIECES[i]
        if any(s.encode() in text for s in stops):
            return step
    return None


def ids(*pieces):
    return [ID[p] for p in pieces]


def test_stop_string_spanning_tokens():
    table = stop_string_table(PIECES, ["</answer>"])
    assert first_match(table, ids(b"a", b"</", b"ans", b"wer>", b"b")) == 3
    # Split differently: "<" + "/" + "ans" + "wer>".
    assert first_match(table, ids(b"<", b"/", b"ans", b"wer>")) == 3
    # A broken prefix resets: "</" "a" "b" never completes.
    assert first_match(table, ids(b"</", b"a", b"b", b"ans", b"wer>")) is None


def test_stop_string_inside_one_token_with_bytes_around_it():
    table = stop_string_table(PIECES, ["</answer>"])
    assert first_match(table, ids(b"a", b"</answer>\n")) == 1
    assert first_match(table, ids(b"x</answer>")) == 0


def test_overlapping_prefixes_need_the_failure_links():
    # "aab" inside "aaab": a naive matcher that resets on mismatch misses it.
    table = stop_string_table(PIECES, ["aab"])
    assert first_match(table, ids(b"a", b"a", b"a", b"b")) == 3
    assert first_match(table, ids(b"a", b"a", b"ab")) == 2
    # A shorter stop string inside a longer one's partial match ("ab" while matching "cab").
    table2 = stop_string_table(PIECES, ["cabc", "ab"])
    assert first_match(table2, ids(b"c", b"a", b"b")) == 2


def test_multibyte_character_split_over_tokens():
    table = stop_string_table(PIECES, ["\u2713"])  # check mark: bytes e2 9c 93
    assert first_match(table, ids(b"a", b"\xe2\x9c", b"\x93")) == 2
    assert first_match(table, ids(b"\xe2\x9c", b"a", b"\x93")) is None


@pytest.mark.parametrize("stops", [["</answer>"], ["ab", "ca"], ["aab", "</a", "\u2713"]])
def test_matches_brute_force_on_random_sequences(stops):
    table = stop_string_table(PIECES, stops)
    rng = np.random.default_rng(0)
    for _ in range(300):
        seq = rng.integers(0, len(PIECES), rng.integers(1, 12)).tolist()
        assert first_match(table, seq) == brute_first_match(seq, stops), seq


def test_table_is_small_and_absorbing():
    table = stop_string_table(PIECES, ["</answer>"])
    # States: the 9 proper prefixes of "</answer>" ("" .. "</answe") plus MATCH.
    assert table.shape == (10, len(PIECES)) and table.dtype == np.int16
    assert np.all(table[-1] == 9)  # MATCH stays MATCH
    assert np.all(table[:, ID[b""]] == np.arange(10))  # empty tokens change nothing


def test_find_stop_earliest_end():
    assert find_stop("x = 1</answer> more </answer>", ["</answer>"]) == 14
    assert find_stop("abcd", ["cd", "abc"]) == 3
    assert find_stop("none", ["</answer>"]) is None
