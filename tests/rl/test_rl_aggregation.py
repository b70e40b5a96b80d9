"""Aggregation weights: hand-computed values, and the wrong values per-micro-batch bugs give."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlcot.rl.aggregation import (AGGREGATIONS, AggregationConfig, aggregate, aggregation_weights,
                                  mask_truncated)

NAN = float("nan")
# Four rows, T = 3, lengths 3, 1, 2, 0 (the last row is dynamic-sampling padding). Masked
# positions hold garbage, even nan, which must not leak into the result.
LOSS = jnp.array([[1.0, 2.0, 3.0], [4.0, NAN, 9.0], [5.0, 6.0, jnp.inf], [NAN, 7.0, 8.0]])
MASK = jnp.array([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
# Valid token sum 1+2+3+4+5+6 = 21; row sums 6, 4, 11; row means 2, 4, 5.5.


def close(x, y, tol=1e-6):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def microbatch_sum(mode, **kw):
    """Correct accumulation: global weights, split by rows into two micro-batches, add."""
    w = aggregation_weights(MASK, mode, **kw)
    return aggregate(LOSS[:2], w[:2]) + aggregate(LOSS[2:], w[2:])


def per_microbatch_mean(mode, **kw):
    """The bug: weights recomputed inside each micro-batch, micro-batch losses averaged."""
    return 0.5 * sum(aggregate(LOSS[s], aggregation_weights(MASK[s], mode, **kw))
                     for s in (slice(0, 2), slice(2, 4)))


def test_token_mean():
    w = aggregation_weights(MASK, "token_mean")
    close(aggregate(LOSS, w), 21 / 6)                     # 3.5
    close(w.sum(), 1.0)
    close(microbatch_sum("token_mean"), 3.5)
    # Bug: micro-batch token means (1+2+3+4)/4 = 2.5 and (5+6)/2 = 5.5, averaged -> 4.0.
    bug = per_microbatch_mean("token_mean")
    close(bug, 4.0)
    assert abs(bug - 3.5) > 0.4


def test_seq_mean_token_mean():
    w = aggregation_weights(MASK, "seq_mean_token_mean")
    # (2 + 4 + 5.5) / 3 sequences (the empty row does not count) = 3.833333.
    close(aggregate(LOSS, w), 11.5 / 3)
    close(w.sum(), 1.0)
    close(microbatch_sum("seq_mean_token_mean"), 11.5 / 3)
    # Bug: micro-batch 1 (2 + 4)/2 = 3, micro-batch 2 5.5/1 -> averaged 4.25.
    bug = per_microbatch_mean("seq_mean_token_mean")
    close(bug, 4.25)
    assert abs(bug - 11.5 / 3) > 0.4
    # Counting the padding row as a sequence would give 11.5 / 4 = 2.875.
    assert abs(float(aggregate(LOSS, w)) - 2.875) > 0.9


def test_seq_mean_token_sum():
    w = aggregation_weights(MASK, "seq_mean_token_sum")
    close(aggregate(LOSS, w), 21 / 3)                     # (6 + 4 + 11) / 3 = 7
    close(microbatch_sum("seq_mean_token_sum"), 7.0)
    # Bug: (6 + 4)/2 = 5 and 11/1 = 11, averaged -> 8.
    bug = per_microbatch_mean("seq_mean_token_sum")
    close(bug, 8.0)
    assert abs(bug - 7.0) > 0.9


def test_constant_dr_grpo():
    w = aggregation_weights(MASK, "constant", max_tokens=3)
    # Non-empty rows x budget = 3 * 3 = 9 (verl's seq-mean-token-sum-norm): 21 / 9 = 2.333333.
    close(aggregate(LOSS, w), 21 / 9)
    close(microbatch_sum("constant", max_tokens=3), 21 / 9)
    # The old default, all rows x T = 4 * 3 = 12, counted the dynamic-sampling row: 1.75.
    close(aggregate(LOSS, MASK / 12.0), 1.75)
    assert abs(float(aggregate(LOSS, w)) - 1.75) > 0.5
    # Bug: each micro-batch divided by its own rows x budget (2 * 3 and 1 * 3), then summed:
    # 10/6 + 11/3 = 5.333333.
    w1 = aggregation_weights(MASK[:2], "constant", max_tokens=3)
    w2 = aggregation_weights(MASK[2:], "constant", max_tokens=3)
    bug = aggregate(LOSS[:2], w1) + aggregate(LOSS[2:], w2)
    close(bug, 10 / 6 + 11 / 3)
    assert abs(bug - 21 / 9) > 1.0
    # A configured constant, e.g. TRL's rows x max_completion_length = 2 * 3: 21 / 6.
    close(aggregate(LOSS, aggregation_weights(MASK, "constant", constant=6.0)), 3.5)
    close(microbatch_sum("constant", constant=6.0), 3.5)
    # Unlike token_mean, the normaliser ignores token counts: masking a token lowers the loss.
    m2 = MASK.at[0, 2].set(0)
    close(aggregate(LOSS, aggregation_weights(m2, "constant", max_tokens=3)), 18 / 9)


def test_constant_ignores_prompt_padding_and_empty_rows():
    """Dr.GRPO's loss scale is tied to the completion budget: the same completions behind a
    longer padded prompt, or with more dynamic-sampling leftovers, give the same loss."""
    budget = 4
    base = aggregate(LOSS, aggregation_weights(MASK, "constant", max_tokens=budget))
    close(base, 21 / 12)                                  # 3 non-empty rows x 4
    for prompt_cols in (1, 5, 29):
        loss = jnp.concatenate([jnp.full((4, prompt_cols), 7.0), LOSS], axis=1)
        mask = jnp.concatenate([jnp.zeros((4, prompt_cols), MASK.dtype), MASK], axis=1)
        got = aggregate(loss, aggregation_weights(mask, "constant", max_tokens=budget))
        close(got, 21 / 12)
        # The old normaliser, rows x padded length L: 21 / (4 * (3 + prompt_cols)), e.g.
        # 21 / 32 = 0.65625 behind 5 prompt columns.
        old = aggregate(loss, mask / float(mask.size))
        close(old, 21 / (4 * (3 + prompt_cols)))
        assert abs(float(old) - float(got)) > 0.3
    # Two more empty rows (dynamic sampling ran out of rounds): unchanged; the old normaliser
    # went from 21 / 12 to 21 / 18.
    more = jnp.concatenate([MASK, jnp.zeros((2, 3), MASK.dtype)])
    loss = jnp.concatenate([LOSS, jnp.ones((2, 3))])
    close(aggregate(loss, aggregation_weights(more, "constant", max_tokens=budget)), 21 / 12)
    # The update step computes the weights under jit: same value.
    import jax
    w = jax.jit(lambda m: AggregationConfig(mode="constant", max_tokens=budget).weights(m))(more)
    close(aggregate(loss, w), 21 / 12)
    with pytest.raises(ValueError, match="exactly one of max_tokens"):
        aggregation_weights(MASK, "constant")
    with pytest.raises(ValueError, match="exactly one of max_tokens"):
        aggregation_weights(MASK, "constant", max_tokens=3, constant=9.0)
    with pytest.raises(ValueError, match="below the longest row"):
        aggregation_weights(MASK, "constant", max_tokens=2)
    with pytest.raises(ValueError, match="int >= 1"):
        aggregation_weights(MASK, "constant", max_tokens=0)
    with pytest.raises(ValueError, match="needs mode 'constant'"):
        AggregationConfig(mode="token_mean", max_tokens=5)
    with pytest.raises(ValueError, match="not both"):
        AggregationConfig(mode="constant", max_tokens=5, constant=3.0)
    with pytest.raises(ValueError, match="int >= 1"):
        AggregationConfig(mode="constant", max_tokens=2.5)


def test_length_bias_differs_between_modes():
    # Two sequences with the same per-token loss 1 but lengths 1 and 3: token_mean and
    # seq_mean_token_mean give 1; seq_mean_token_sum gives (1 + 3)/2 = 2; constant 4/(2*3).
    loss = jnp.ones((2, 3))
    mask = jnp.array([[1, 0, 0], [1, 1, 1]])
    kw = {"constant": {"max_tokens": 3}}
    got = {m: float(aggregate(loss, aggregation_weights(mask, m, **kw.get(m, {}))))
           for m in AGGREGATIONS}
    close([got["token_mean"], got["seq_mean_token_mean"], got["seq_mean_token_sum"],
           got["constant"]], [1.0, 1.0, 2.0, 4 / 6])
    # Per-token loss 1 on the short row and 2 on the long one: token_mean weights tokens
    # (1 + 6)/4 = 1.75, seq_mean_token_mean weights sequences (1 + 2)/2 = 1.5.
    loss = jnp.array([[1.0, 0, 0], [2.0, 2.0, 2.0]])
    close(aggregate(loss, aggregation_weights(mask, "token_mean")), 1.75)
    close(aggregate(loss, aggregation_weights(mask, "seq_mean_token_mean")), 1.5)


def test_all_masked_gives_zero_not_nan():
    for mode in AGGREGATIONS:
        kw = {"max_tokens": 3} if mode == "constant" else {}
        w = aggregation_weights(jnp.zeros((2, 3)), mode, **kw)
        assert float(aggregate(LOSS[:2], w)) == 0.0, mode


def test_mask_truncated_and_config():
    m = mask_truncated(MASK, jnp.array([False, True, False, False]))
    close(m, [[1, 1, 1], [0, 0, 0], [1, 1, 0], [0, 0, 0]])
    # Truncated row dropped: token mean (1+2+3+5+6)/5 = 3.4.
    close(aggregate(LOSS, AggregationConfig().weights(m)), 3.4)
    with pytest.raises(ValueError, match="unknown loss aggregation 'seq-mean'"):
        AggregationConfig(mode="seq-mean")
    with pytest.raises(ValueError, match="needs mode 'constant'"):
        AggregationConfig(mode="token_mean", constant=5.0)
    with pytest.raises(ValueError, match="only used by mode 'constant'"):
        aggregation_weights(MASK, "token_mean", constant=3.0)
    with pytest.raises(ValueError, match="only used by mode 'constant'"):
        aggregation_weights(MASK, "token_mean", max_tokens=3)
    with pytest.raises(ValueError, match="must be > 0"):
        aggregation_weights(MASK, "constant", constant=0.0)
    with pytest.raises(ValueError, match=r"mask must be \[B, T\]"):
        aggregation_weights(MASK[0], "token_mean")
    with pytest.raises(ValueError, match="truncated shape"):
        mask_truncated(MASK, jnp.array([True]))
