"""Reward models: the Bradley-Terry loss and its metrics against hand-computed values, the
calibration error, the normalisation, a training step that learns a preference, and the
reward-model reward scoring the loop's sampled rows exactly as a direct forward does."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlcot import dpo, reward_model, sft
from rlcot.models.presets import get_config
from rlcot.rewards import RewardCombiner, RewardInput
from rlcot.rewards.models import RewardModelScorer
from rlcot.rl.value import init_value_params
from rlcot.sampling.outputs import SampleOutput, trainer_batch
from rlcot.stages.reward_model import LoadedRewardModel, heldout_metrics


def test_bradley_terry_matches_hand_computed_values():
    chosen = jnp.array([2.0, 0.5, -1.0, 0.0])
    rejected = jnp.array([1.0, 1.5, -1.0, 3.0])
    weight = jnp.array([1.0, 1.0, 1.0, 0.0])  # the last pair is filler
    loss, m = reward_model.bradley_terry(chosen, rejected, weight)
    # d = 1, -1, 0: -log sigmoid(d) = log(1 + e^-d)
    want = math.log1p(math.exp(-1)) + math.log1p(math.exp(1)) + math.log(2)
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert float(m["accuracy"]) == 1.0  # only d = 1 counts; the tie (d = 0) is wrong
    assert float(m["margin"]) == pytest.approx(0.0)
    assert float(m["pairs"]) == 3.0
    assert float(m["chosen"]) == pytest.approx(1.5) and float(m["rejected"]) == pytest.approx(1.5)


def test_calibration_error_by_hand():
    # Margins with sigmoid confidences 0.731 (right), 0.731 (wrong: d < 0 is the other side
    # preferred, confidence max(p, 1-p)), 0.953 (right), 0.5 (a tie: wrong).
    d = np.array([1.0, -1.0, 3.0, 0.0])
    c = calibration = reward_model.calibration(d, bins=5)
    s1, s3 = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-3))
    # bins of width 0.1 from 0.5: [0.5, 0.6) holds the tie, [0.7, 0.8) d=+-1, [0.9, 1] d=3
    want = (1 / 4) * abs(0.0 - 0.5) + (2 / 4) * abs(0.5 - s1) + (1 / 4) * abs(1.0 - s3)
    assert c["ece"] == pytest.approx(want, rel=1e-9)
    assert [b["count"] for b in calibration["bins"]] == [1, 2, 1]
    m = heldout_metrics(d, np.array([1.0, 1.0, -2.0, np.nan]), bins=5)
    assert m["eval/accuracy"] == 0.5
    assert m["eval/loss"] == pytest.approx(np.mean(np.log1p(np.exp(-d))))
    # Against the true preference: pairs 0 and 1 chosen truly better, pair 2 truly worse,
    # pair 3 unknown: the model is right on 0 only.
    assert m["eval/true_accuracy"] == pytest.approx(1 / 3)


def test_normalizer_modes_and_errors():
    r = np.array([1.0, 3.0, 5.0])
    np.testing.assert_allclose(reward_model.Normalizer("reference", 1.0, 2.0)(r), [0, 1, 2])
    np.testing.assert_allclose(reward_model.Normalizer("batch")(r), (r - 3) / r.std(),
                               rtol=1e-6)
    np.testing.assert_allclose(reward_model.Normalizer("none", clip=2.0)(r), [1, 2, 2])
    with pytest.raises(ValueError, match="normalize must be one of"):
        reward_model.Normalizer("zscore")
    with pytest.raises(ValueError, match="std must be > 0"):
        reward_model.Normalizer("reference", 0.0, 0.0)


def _tiny_rm(seed=0):
    cfg = get_config("tiny", vocab_size=64, max_position=64)
    graphdef, params = init_value_params(cfg, seed)
    # A non-zero head: a freshly initialised one scores everything 0.
    params["head"][...] = jax.random.normal(jax.random.key(seed + 1), params["head"][...].shape)
    return cfg, graphdef, params


class _CharTok:
    pad_id, eos_id = 0, 1
    vocab_size = 64

    def encode_batch(self, texts):
        return [[2 + ord(ch) % 60 for ch in t] for t in texts]


def test_training_step_learns_a_preference_with_exact_micro_batches():
    cfg, graphdef, params = _tiny_rm()
    tok = _CharTok()
    pairs = [("q", "good" * (1 + i % 3), "bad" * (1 + i % 2)) for i in range(8)]
    toks, _ = dpo.tokenize_pairs(pairs, tok, None, cfg.max_position)
    batch = dpo.collate_pairs(toks, np.arange(8), pad_id=0, eos_id=1, length_multiple=8)
    batch["weight_B"] = np.ones(8, np.float32)
    copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731  (steps donate their inputs)
    # Plain SGD for the comparison: the update is the gradient itself (Adam's first step
    # would be ~lr * sign(g), which turns rounding noise of near-zero gradients into lr).
    sgd = optax.sgd(1.0)
    p1, _, m1 = reward_model.make_train_step(sgd, 1)(graphdef, copy(params), sgd.init(params),
                                                     batch)
    p4, _, m4 = reward_model.make_train_step(sgd, 4)(graphdef, copy(params), sgd.init(params),
                                                     batch)
    assert float(m1["loss"]) == pytest.approx(float(m4["loss"]), rel=1e-6)
    assert float(m1["grad_norm"]) == pytest.approx(float(m4["grad_norm"]), rel=1e-5)
    # Float32 sums in another order: agreement to ~1e-6 of gradients of order 0.1.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p1, p4)
    opt = sft.make_optimizer(sft.SFTConfig(learning_rate=1e-2, warmup_steps=0, total_steps=20,
                                           weight_decay=0.0))
    one = reward_model.make_train_step(opt, micro_batches=1)
    p, s = copy(params), opt.init(params)
    for _ in range(20):
        p, s, m = one(graphdef, p, s, batch)
    assert float(m["accuracy"]) == 1.0 and float(m["loss"]) < 0.3


def test_reward_model_reward_scores_sampled_rows_as_a_direct_forward():
    """The loop's path (RewardInput.sequences: left-padded prompts + completions with their
    stop token, from trainer_batch) equals one unpadded forward per sequence, and the text
    path (prompt + completion + eos, right-padded) equals it too."""
    cfg, graphdef, params = _tiny_rm()
    tok = _CharTok()
    prompts = ["1+1=", "12+30="]
    completions = [["2", "3!"], ["42", "40 or so"]]   # G = 2 samples per prompt
    P, T = 8, 12
    p_ids = tok.encode_batch(prompts)
    prompt_BxP = np.zeros((2, P), np.int32)
    for b, ids in enumerate(p_ids):
        prompt_BxP[b, P - len(ids):] = ids
    tokens, mask = np.zeros((4, T), np.int32), np.zeros((4, T), bool)
    flat = [c for cs in completions for c in cs]
    for n, text in enumerate(flat):
        ids = tok.encode_batch([text])[0] + [tok.eos_id]
        tokens[n, :len(ids)], mask[n, :len(ids)] = ids, True
    out = SampleOutput(jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(mask.sum(1)),
                       jnp.zeros(4, bool), jnp.zeros((4, T)), jnp.zeros((4, T)),
                       jnp.asarray(prompt_BxP), jnp.array([len(x) for x in p_ids]), 2)
    loaded = LoadedRewardModel(cfg, graphdef, params, tok, {"score_mean": 0.5,
                                                            "score_std": 2.0})
    scorer = RewardModelScorer(loaded)
    batch = RewardInput(prompts=[p for p in prompts for _ in range(2)], completions=flat,
                        examples=[{}] * 4, truncated=np.zeros(4, bool),
                        sequences=trainer_batch(out))
    in_loop = scorer(batch)
    direct = []
    for n, text in enumerate(flat):
        ids = p_ids[n // 2] + tok.encode_batch([text])[0] + [tok.eos_id]
        t = jnp.asarray([ids], jnp.int32)
        direct.append(float(reward_model.sequence_rewards(
            graphdef, params, t, jnp.arange(len(ids))[None], jnp.ones_like(t, bool))[0]))
    np.testing.assert_allclose(in_loop, direct, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scorer.score_texts(batch.prompts, flat), direct, rtol=1e-5,
                               atol=1e-5)
    assert len(set(np.round(direct, 4))) == 4  # the rows really differ
    # Through the combiner, as a reward term: normalised by the card's mean and std.
    combiner = RewardCombiner({"rm": {"reward": "reward_model", "model": "stage:rm"}},
                              models={"stage:rm": scorer})
    got = combiner(batch)
    np.testing.assert_allclose(got.total, (np.array(direct) - 0.5) / 2.0, rtol=1e-5, atol=1e-5)
    assert got.metrics["reward/rm/raw_mean"] == pytest.approx(np.mean(direct), rel=1e-5)
    combiner.close()


def test_reward_model_terms_need_their_model():
    with pytest.raises(ValueError, match=r"missing parameters \['model'\]"):
        RewardCombiner({"rm": {"reward": "reward_model"}})
    c = RewardCombiner({"rm": {"reward": "reward_model", "model": "stage:rm"}})
    batch = RewardInput(prompts=["p"], completions=["c"], examples=[{}])
    with pytest.raises(ValueError, match="'stage:rm' is not loaded"):
        c(batch)
    c.close()
    with pytest.raises(ValueError, match="'terms' must be a reward spec"):
        RewardCombiner({"t": {"reward": "combination", "terms": 3}})


def test_combination_is_the_weighted_sum_of_its_terms_with_their_metrics():
    spec = {"true": {"reward": "combination", "weight": 0.0,
                     "terms": {"len": {"reward": "dapo_overlong", "weight": 2.0, "max_len": 10,
                                       "cache_len": 5},
                               "fmt": {"reward": "r1_format", "weight": 1.0}}}}
    batch = RewardInput(prompts=["p", "p"], completions=["x", "<think>a</think> <answer>1</answer>"],
                        examples=[{}, {}], completion_lengths=np.array([3, 8]))
    c = RewardCombiner(spec)
    out = c(batch)
    c.close()
    np.testing.assert_allclose(out.components["true"].values,
                               [0.0, 2.0 * (-0.6) + 1.0], rtol=1e-6)
    assert out.total.tolist() == [0.0, 0.0]  # weight 0: logged, not optimised
    assert out.metrics["reward/true/len/mean"] == pytest.approx(-0.3)
    assert out.metrics["reward/true/fmt/mean"] == pytest.approx(0.5)
