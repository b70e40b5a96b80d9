"""R1 format rewards and the language-consistency reward, table-driven with malformed inputs."""

import time

import numpy as np
import pytest

from rlcot.rewards.base import RewardInput
from rlcot.rewards.format import r1_format, r1_tag_count
from rlcot.rewards.language import (chain_of_thought, language_consistency, vocabulary_detector,
                                    words)

LONG = "a" * 100_000

FORMAT = [
    # (completion, strict, soft, tag_count)
    ("<think>reason</think><answer>4</answer>", 1, 1, 1.0),
    ("<think>\nreason\n</think>\n<answer>\n4\n</answer>\n", 1, 1, 1.0),
    ("  <think>r</think> <answer>4</answer>  ", 1, 1, 1.0),
    ("<think></think><answer>4</answer>", 0, 1, 1.0),  # empty thinking
    ("<think>r</think><answer> </answer>", 0, 1, 1.0),  # empty answer
    ("preamble <think>r</think><answer>4</answer>", 0, 1, 1.0),
    ("<think>r</think><answer>4</answer> trailing", 0, 1, 1.0),
    ("<think>r</think> text <answer>4</answer>", 0, 0, 1.0),
    ("<answer>4</answer><think>r</think>", 0, 0, 1.0),  # wrong order
    ("<think>r</think><think>s</think><answer>4</answer>", 0, 1, 0.5),
    ("<think>r</think><answer>4", 0, 0, 0.75),  # unclosed answer
    ("<think>r", 0, 0, 0.25),
    ("", 0, 0, 0.0),
    ("\u6211\u60f3<think>\u4e2d\u6587</think><answer>\U0001F600</answer>", 0, 1, 1.0),
    ("<think>" + LONG + "</think><answer>4</answer>", 1, 1, 1.0),
    ("<think>" * 30_000, 0, 0, 0.0),
]


def _batch(completions, prompts=None, **kw):
    n = len(completions)
    return RewardInput(prompts or ["Q"] * n, completions, [{}] * n, **kw)


def test_format_rewards_table():
    batch = _batch([c for c, *_ in FORMAT])
    t0 = time.monotonic()
    strict = r1_format(batch, mode="strict").values
    soft = r1_format(batch, mode="soft").values
    tags = r1_tag_count(batch).values
    assert time.monotonic() - t0 < 1.0  # linear time on 100k-character completions
    np.testing.assert_array_equal(strict, [s for _, s, _, _ in FORMAT])
    np.testing.assert_array_equal(soft, [s for _, _, s, _ in FORMAT])
    np.testing.assert_array_equal(tags, [t for *_, t in FORMAT])


def test_think_opened_by_prompt():
    batch = _batch(["reason</think><answer>4</answer>"] * 2, prompts=["Assistant: <think>", "Q"])
    np.testing.assert_array_equal(r1_format(batch).values, [1.0, 0.0])
    np.testing.assert_array_equal(r1_format(batch, think_in_prompt=True).values, [1.0, 1.0])
    with pytest.raises(ValueError, match="mode"):
        r1_format(batch, mode="loose")


def test_words_split_cjk_characters():
    assert words("Hello, 世界! x2 naïve дом") == ["Hello", "世", "界", "x", "naïve", "дом"]


def test_chain_of_thought_section():
    assert chain_of_thought("<think>abc</think><answer>d</answer>") == "abc"
    assert chain_of_thought("<think>abc<answer>d</answer>") == "abc"  # unclosed think
    assert chain_of_thought("no tags") == "no tags"


LANGUAGE = [
    # (completion, share of Latin words in the chain of thought)
    ("<think>all english words here</think><answer>4</answer>", 1.0),
    # 2 Latin words + 2 CJK characters (one word each) -> 2/4
    ("<think>so 我们 then</think><answer>x</answer>", 0.5),
    ("<think>только русский</think>", 0.0),
    ("<think>one два</think>", 0.5),
    ("<think>12 + 7 = 19</think><answer>19</answer>", 0.0),  # no words: empty_value
    ("", 0.0),
    ("<think>" + "word " * 20_000, 1.0),  # unclosed, long
]


def test_language_consistency_table():
    out = language_consistency(_batch([c for c, _ in LANGUAGE]))
    np.testing.assert_allclose(out.values, [v for _, v in LANGUAGE])
    assert out.details[1] == {"n_words": 4, "n_target": 2}


def test_language_consistency_options():
    batch = _batch(["<think>blorp zing the</think><answer>答案</answer>"])
    # Whole completion: 3 Latin words + 2 CJK characters.
    assert language_consistency(batch, section="completion").values[0] == pytest.approx(3 / 5)
    assert language_consistency(batch, target="cjk", section="completion").values[0] == pytest.approx(2 / 5)
    toy = vocabulary_detector({"blorp": "toy", "zing": "toy", "the": "en"})
    # Pluggable detector: 1 of the 3 known words is English; unknown words are ignored.
    assert language_consistency(batch, target="en", detector=toy).values[0] == pytest.approx(1 / 3)
    assert language_consistency(_batch(["<think>1 2</think>"]), empty_value=1.0).values[0] == 1.0
    with pytest.raises(ValueError, match="detector"):
        language_consistency(batch, detector="fasttext")


# Mixed-script chains of thought, counted by hand. Words: letter runs of one script (a script
# change splits, combining marks stay), one word per CJK character (kana and Hangul too);
# digits of any script, numerals (½ ² Ⅻ), operators and math letters (𝑥 ℝ µ) are not words.
MIXED = [
    # (completion, Latin words, all words)
    # First, then | проверка | 所 以 答 案 是; 3 + 4 = 7, 7 − 4 = 3 and ':' are no words
    ("<think>First, 3 + 4 = 7, then проверка: 7 − 4 = 3. 所以答案是7</think><answer>7</answer>",
     2, 8),
    # x y r so r x y: superscripts, √, ≈ and ½ are no words
    ("<think>x² + y² = r², so r = √(x²+y²) ≈ 5 ½</think>", 7, 7),
    # Let, with: 𝑥 (mathematical italic), ℝ, ∈, ≥, →, ∞ belong to no language
    ("<think>Let 𝑥 ∈ ℝ with 𝑥 ≥ 0; 𝑥 → ∞</think>", 2, 2),
    # a script change inside a run starts a new word: carry | перенос
    ("<think>carryперенос 1</think>", 1, 2),
    # combining accents (NFD) stay with their word: été, café
    ("<think>e\u0301te\u0301 cafe\u0301</think>", 2, 2),
    # Шаг, перенос | Step, ok
    ("<think>Шаг 1: 5+7=12, перенос 1. Step 2 ok</think>", 2, 4),
    # π is a Greek word; r, ist, die, Fläche are Latin
    ("<think>π r² ist die Fläche</think>", 4, 5),
    # full-width Latin is Latin: ＯＫ | 答 案
    ("<think>ＯＫ 答案</think>", 1, 3),
    # 確 認 し ま す | check | 확 인
    ("<think>確認します check 확인</think>", 1, 8),
    # only digits (ASCII, Arabic-Indic, full-width), operators and numerals: no words
    ("<think>12 × 3 ÷ 4 = 9 ∑ ∫ Ⅻ ½ ² ٣ ３</think><answer>9</answer>", 0, 0),
]


def test_words_and_scripts_by_hand():
    from rlcot.rewards.language import script_of
    assert words("carryперенос x² ½ Ⅻ 𝑥 ℝ µm") == ["carry", "перенос", "x", "m"]
    assert words("हिन्दी e\u0301t\u00e9") == ["हिन्दी", "e\u0301t\u00e9"]
    assert [script_of(w) for w in ("π", "ＡＢＣ", "ок", "字", "한", "𝑥", "ℝ", "7")] == \
        ["greek", "latin", "cyrillic", "cjk", "cjk", None, None, None]


def test_language_consistency_on_mixed_scripts():
    out = language_consistency(_batch([c for c, *_ in MIXED]))
    want = [lat / n if n else 0.0 for _, lat, n in MIXED]
    np.testing.assert_allclose(out.values, want)
    assert [d["n_words"] for d in out.details] == [n for *_, n in MIXED]
    # Other targets on the first row: 1 Cyrillic and 5 CJK words of 8.
    first = _batch([MIXED[0][0]])
    assert language_consistency(first, target="cyrillic").values[0] == pytest.approx(1 / 8)
    assert language_consistency(first, target="cjk").values[0] == pytest.approx(5 / 8)
    # Metrics: the mean share of non-Latin words (a text without words counts 0) and the
    # share of texts with any.
    other = [(n - lat) / n if n else 0.0 for _, lat, n in MIXED]
    assert out.metrics["mixed_share"] == pytest.approx(np.mean(other))
    assert out.metrics["mixed_rate"] == pytest.approx(6 / 10)
    # No words at all: empty_value, whatever the target.
    assert language_consistency(_batch([MIXED[-1][0]]), empty_value=1.0).values[0] == 1.0
