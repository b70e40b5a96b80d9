"""AI-judge reward: robust score parsing and the reward with a fake judge model."""

import numpy as np
import pytest

from rlcot.rewards.base import RewardInput
from rlcot.rewards.judge import DEFAULT_RUBRIC, ai_judge, parse_score

PARSE = [
    # (judge reply, score in [0, 1] on the default 0..10 scale, or None)
    ("Score: 7/10", 0.7),
    ("The answer is right.\nScore: 8", 0.8),
    ("score = 6 / 10", 0.6),
    ("Final score: 9 out of 10.", 0.9),
    ("I'd give it a **8**", 0.8),
    ("Rating: 0.7", 0.7),
    ("grade: 3.5", 0.35),
    ('{"reasoning": "fine", "score": 9}', 0.9),
    ('Verdict ```json\n{"Score": "4/5"}\n```', 0.8),
    ('{"score": 7} but later Score: 2', 0.7),  # JSON wins
    ("Score: 3/10 ... on reflection, Score: 5/10", 0.5),  # the last verdict wins
    ("I rate it 4/5", 0.8),
    ("10", 1.0),
    ("0", 0.0),
    ("Score: 12", None),  # out of range
    ("Score: 11/10", None),
    ("Score: -3", None),
    ('{"score": true}', None),
    ("no number at all", None),
    ("", None),
    ("分数：7/10", 0.7),
    ("x" * 100_000 + " Score: 6/10", 0.6),
]


@pytest.mark.parametrize("reply,expected", PARSE, ids=[repr(r[:24]) for r, _ in PARSE])
def test_parse_score(reply, expected):
    got = parse_score(reply)
    assert got == (None if expected is None else pytest.approx(expected))


def test_parse_score_other_scale():
    assert parse_score("Score: 4", scale_min=1, scale_max=5) == pytest.approx(0.75)  # (4-1)/4
    assert parse_score("Score: 0", scale_min=1, scale_max=5) is None
    with pytest.raises(ValueError, match="scale_min"):
        parse_score("1", scale_min=5, scale_max=5)


def _batch(completions):
    n = len(completions)
    return RewardInput([f"Q{i}" for i in range(n)], completions, [{"answer": "42"}] * n)


def test_ai_judge_with_fake_model():
    seen = []

    def fake_generate(prompts):
        seen.extend(prompts)
        replies = {"good": "Correct. Score: 9/10", "meh": "rating: 0.5", "junk": "¯\\_(ツ)_/¯"}
        return [next(r for k, r in replies.items() if f"\n{k}\n" in p) for p in prompts]

    out = ai_judge(_batch(["good", "meh", "junk"]), generate=fake_generate, fallback=-1.0)
    np.testing.assert_allclose(out.values, [0.9, 0.5, -1.0])
    assert out.metrics["n_parse_failures"] == 1 and out.metrics["n_errors"] == 0
    assert "Q1" in seen[1] and "42" in seen[1] and "Score: N/10" in seen[1]
    assert out.details[2]["parsed"] is False


def test_ai_judge_braces_in_completion_and_custom_template():
    template = "Rate {completion} for {prompt}. Reply 'Score: N/5'."
    out = ai_judge(_batch(["{not a field} {0}"]), generate=lambda ps: [f"echo {ps[0]} Score: 5/5"],
                   template=template, scale_max=5)
    assert out.values[0] == 1.0
    with pytest.raises(ValueError, match="fields"):
        ai_judge(_batch(["x"]), generate=lambda ps: ps, template="{question}")


def test_ai_judge_failing_model_gives_fallback():
    def broken(prompts):
        raise RuntimeError("device on fire")

    out = ai_judge(_batch(["a", "b"]), generate=broken, fallback=0.25)
    np.testing.assert_allclose(out.values, [0.25, 0.25])
    assert out.metrics["n_errors"] == 2 and "device on fire" in out.details[0]["message"]
    out = ai_judge(_batch(["a", "b"]), generate=lambda ps: ["Score: 1"], fallback=0.0)
    assert out.metrics["n_errors"] == 2  # wrong number of replies


def test_default_rubric_fields():
    text = DEFAULT_RUBRIC.format(prompt="P-1", completion="C-2", reference="R-3")
    assert all(x in text for x in ("P-1", "C-2", "R-3"))
