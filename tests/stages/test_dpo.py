"""DPO: each loss and the pair metrics against hand computations, gradients against central
finite differences on a tiny model, exact micro-batching, bad pairs skipped and counted, and a
tiny study base -> generate (pairs) -> dpo that resumes exactly."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlcot import dpo, sft, stages, study
from rlcot.models.presets import get_config
from rlcot.models.transformer import forward, init_params
from rlcot.stages import dpo as dpo_stage
from rlcot.workdir import read_metrics

CFG = get_config("tiny", vocab_size=40, n_layers=1, d_model=32, n_heads=2, n_kv_heads=1,
                 head_dim=16, mlp_dim=64, max_position=64)


def _pairs(pc, pr, rc, rr, nc, nr):
    f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return dpo.PairLogps(f(pc), f(pr), f(rc), f(rr), f(nc), f(nr))


# Pair 0: z = (-5 - -7) - (-6 - -6) = 2; per-token margins (-5 - -6)/2 - (-7 - -6)/4 = 0.75.
# Pair 1: z = (-3 - -2) - (-3 - -3) = -1; per-token margins 0/1 - (-2 - -3)/1 = -1.
PAIRS = _pairs([-5.0, -3.0], [-7.0, -2.0], [-6.0, -3.0], [-6.0, -3.0], [2, 1], [4, 1])
BETA = 0.5


def test_losses_by_hand():
    # beta * z = 1 and -0.5.
    sig = [math.log1p(math.exp(-1.0)), math.log1p(math.exp(0.5))]
    np.testing.assert_allclose(dpo.LOSSES["sigmoid"](PAIRS, BETA), sig, rtol=1e-6)
    # cdpo: (1 - eps) sp(-bz) + eps sp(bz) = sp(-bz) + eps * bz, since sp(x) - sp(-x) = x.
    eps = 0.1
    np.testing.assert_allclose(dpo.LOSSES["cdpo"](PAIRS, BETA, eps),
                               [sig[0] + eps * 1.0, sig[1] + eps * -0.5], rtol=1e-6)
    np.testing.assert_allclose(dpo.LOSSES["cdpo"](PAIRS, BETA, 0.0), sig, rtol=1e-6)
    # ipo: (h - 1/(2 beta))**2 = (0.75 - 1)**2 and (-1 - 1)**2. Without the per-token
    # normalisation pair 0 would give (2 - 1)**2 = 1.
    np.testing.assert_allclose(dpo.LOSSES["ipo"](PAIRS, BETA), [0.0625, 4.0], rtol=1e-6)


def test_pair_metrics_by_hand():
    m = dpo.pair_metric_sums(PAIRS, BETA)
    # Rewards beta * (logp - ref): chosen 0.5 and 0, rejected -0.5 and 0.5 (summed log-probs
    # for every loss, IPO included).
    assert float(m["rewards/chosen"]) == pytest.approx(0.5)
    assert float(m["rewards/rejected"]) == pytest.approx(0.0)
    assert float(m["rewards/margins"]) == pytest.approx(1.0 + -0.5)
    assert float(m["rewards/accuracies"]) == 1.0
    assert float(m["logps/chosen"]) == -8.0 and float(m["logps/rejected"]) == -9.0
    tie = _pairs([-1.0], [-1.0], [-1.0], [-1.0], [1], [1])
    assert float(dpo.pair_metric_sums(tie, BETA)["rewards/accuracies"]) == 0.0


def test_bad_loss_settings_fail():
    with pytest.raises(ValueError, match="unknown DPO loss"):
        dpo.DPOLoss("kto")
    with pytest.raises(ValueError, match="only used by the 'cdpo' loss"):
        dpo.DPOLoss("sigmoid", label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        dpo.DPOLoss("cdpo", label_smoothing=0.5)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo.DPOLoss("ipo", beta=0.0)


# ---- on a tiny model ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    graphdef, params = init_params(CFG, seed=0)
    _, ref_params = init_params(CFG, seed=1)
    return graphdef, params, ref_params


def _batch(graphdef, ref_params, n=4):
    """n pairs of different prompt and completion lengths, both halves 7 wide, with reference
    log-probs from another model (so the loss is not at its z = 0 point)."""
    prompts = [[5, 6], [9], [3, 4], [7]][:n]
    chosen = [[7, 8], [10, 11, 12], [20], [30, 31, 32, 33]][:n]
    rejected = [[9], [10, 13, 12, 14], [21, 22], [2]][:n]
    b = {"chosen": sft.collate(list(zip(prompts, chosen)), pad_id=0, eos_id=1, length=7),
         "rejected": sft.collate(list(zip(prompts, rejected)), pad_id=0, eos_id=1, length=7),
         "ref_chosen_logp_B": np.zeros(n, np.float32),
         "ref_rejected_logp_B": np.zeros(n, np.float32)}
    rc, rr = jax.jit(lambda p, b: dpo.pair_logps(graphdef, p, b)[:2])(ref_params, b)
    return {**b, "ref_chosen_logp_B": np.asarray(rc), "ref_rejected_logp_B": np.asarray(rr)}


def test_sequence_logps_sum_completion_tokens_only(model):
    graphdef, params, _ = model
    b = sft.collate([([5, 6], [7, 8]), ([9], [10, 11, 12])], pad_id=0, eos_id=1, length=7)
    logp, n = jax.jit(dpo.sequence_logps, static_argnums=0)(graphdef, params, b)
    tokens = jnp.asarray(b["tokens_BxT"])
    logits, _ = forward(graphdef, params, tokens, jnp.broadcast_to(jnp.arange(7), (2, 7)))
    lp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1))
    # Row 0 scores 7, 8, eos at positions 2..4; row 1 scores 10, 11, 12, eos at 1..4. Neither
    # the prompt nor the padding counts.
    want = [sum(lp[0, t - 1, b["tokens_BxT"][0, t]] for t in (2, 3, 4)),
            sum(lp[1, t - 1, b["tokens_BxT"][1, t]] for t in (1, 2, 3, 4))]
    np.testing.assert_allclose(np.asarray(logp), want, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(n), [3, 4])


@pytest.mark.parametrize("name,smoothing", [("sigmoid", 0.0), ("cdpo", 0.2), ("ipo", 0.0)])
def test_gradients_match_central_finite_differences(model, name, smoothing):
    """Directional derivatives along the gradient and three random unit directions, from
    central differences with one Richardson step (h = 5e-3 and 2.5e-3: truncation O(h^4)).
    The model computes in float32 (its norms, attention and logits cast to float32 even
    under x64), so this runs in float32: the sequence log-probs are sums of magnitude ~15
    (ulp ~1e-6), which bounds the difference quotient's rounding error near 1e-6 / h. The
    bound 1e-4 * |grad| sits above that and far below the error of any wrong gradient term
    (a lost factor, a missing or extra stop-gradient: O(|grad|))."""
    graphdef, params, ref_params = model
    batch = _batch(graphdef, ref_params)
    loss = dpo.DPOLoss(name, beta=0.5, label_smoothing=smoothing)
    value_and_grad = jax.jit(lambda p: dpo.loss_and_grads(graphdef, p, batch, loss)[:2])
    value = jax.jit(lambda p: dpo.loss_and_grads(graphdef, p, batch, loss)[0])
    _, grads = value_and_grad(params)
    leaves, treedef = jax.tree.flatten(params)
    g = [np.asarray(x, np.float64) for x in jax.tree.leaves(grads)]
    g_norm = math.sqrt(sum(float((x * x).sum()) for x in g))
    assert g_norm > 0.1
    rng = np.random.default_rng(0)
    directions = [[x / g_norm for x in g]]
    for _ in range(3):
        d = [rng.standard_normal(x.shape) for x in leaves]
        norm = math.sqrt(sum(float((x * x).sum()) for x in d))
        directions.append([x / norm for x in d])

    def at(d, h):
        return value(jax.tree.unflatten(treedef, [jnp.asarray(np.asarray(x, np.float64) + h * y,
                                                              jnp.float32)
                                                  for x, y in zip(leaves, d)]))

    for k, d in enumerate(directions):
        analytic = sum(float((a * b).sum()) for a, b in zip(g, d))
        quotient = lambda h: (float(at(d, h)) - float(at(d, -h))) / (2 * h)  # noqa: E731
        h = 5e-3
        numeric = (4 * quotient(h / 2) - quotient(h)) / 3
        assert abs(numeric - analytic) <= 1e-4 * g_norm, (k, numeric, analytic, g_norm)


def test_micro_batches_and_parts_give_the_same_update(model):
    """One plain SGD step (the update is the gradient itself, no Adam sign amplification) on
    four pairs: whole, as 2 micro-batches, and as parts of 3 and 1 pairs."""
    graphdef, params, ref_params = model
    batch = _batch(graphdef, ref_params)
    loss = dpo.DPOLoss("ipo", beta=0.5)
    sgd = optax.sgd(1.0)
    copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731  (the step donates its inputs)
    parts = tuple(jax.tree.map(lambda x: x[s], batch) for s in (slice(0, 3), slice(3, 4)))
    step1 = dpo.make_train_step(sgd, loss)
    p1, _, m1 = step1(graphdef, copy(params), sgd.init(params), batch)
    p2, _, m2 = dpo.make_train_step(sgd, loss, micro_batches=2)(graphdef, copy(params),
                                                                 sgd.init(params), batch)
    p3, _, m3 = step1(graphdef, copy(params), sgd.init(params), parts)
    g1 = [np.asarray(a) - np.asarray(b) for a, b in zip(jax.tree.leaves(p1),
                                                         jax.tree.leaves(params))]
    for p, m in ((p2, m2), (p3, m3)):
        assert float(m["pairs"]) == 4.0
        for key in m1:
            np.testing.assert_allclose(float(m[key]), float(m1[key]), rtol=1e-5, atol=1e-6)
        for a, b, g in zip(jax.tree.leaves(p), jax.tree.leaves(params), g1):
            np.testing.assert_allclose(np.asarray(a) - np.asarray(b), g,
                                       atol=1e-6 * max(1.0, float(np.abs(g).max())))
    # Averaging each part's mean would weigh the lone pair 3x: a different loss the test
    # would catch.
    per_pair = jax.jit(lambda p, b: dpo.LOSSES["ipo"](dpo.pair_logps(graphdef, p, b), 0.5))
    losses = np.asarray(per_pair(params, batch), np.float64)
    np.testing.assert_allclose(float(m1["loss"]), losses.mean(), rtol=1e-6)
    assert abs((losses[:3].mean() + losses[3]) / 2 - losses.mean()) > 1e-3


def test_one_step_lowers_the_loss(model):
    graphdef, params, ref_params = model
    batch = _batch(graphdef, ref_params)
    loss = dpo.DPOLoss("sigmoid", beta=0.5)
    opt = sft.make_optimizer(sft.SFTConfig(learning_rate=1e-2, total_steps=10))
    copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731
    step = dpo.make_train_step(opt, loss)
    p, o, m0 = step(graphdef, copy(params), opt.init(params), batch)
    _, _, m1 = step(graphdef, p, o, batch)
    assert float(m1["loss"]) < float(m0["loss"]) - 1e-3
    assert float(m1["rewards/margins"]) > float(m0["rewards/margins"])


# ---- the stage's data --------------------------------------------------------------------------

class _CharTokenizer:
    """One id per character (enough to count and compare pairs)."""
    pad_id, eos_id = 0, 1

    def encode_batch(self, texts):
        return [[2 + ord(ch) % 50 for ch in t] for t in texts]


def test_bad_pairs_are_skipped_and_counted(tmp_path):
    rows = [{"prompt": "p", "chosen": "short", "rejected": "a longer one"},
            {"prompt": "p", "chosen": "", "rejected": "x"},               # empty chosen
            {"prompt": "p", "chosen": "x", "rejected": "  \n"},           # blank rejected
            {"prompt": "p", "chosen": "same", "rejected": "same "},       # identical texts
            {"prompt": "p", "chosen": "ab", "rejected": "ab"},            # identical
            {"prompt": "p", "chosen": "A", "rejected": "s"},              # identical ids
            {"prompt": "p", "chosen": "ok", "rejected": "y" * 40},        # too long
            {"prompt": "q", "chosen": "fine", "rejected": "also fine", "id": 7}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    data = dpo_stage.DPOData(dataset=f"jsonl:{path}", max_tokens=20)
    texts, skipped = dpo_stage.load_pairs(data, None)
    assert skipped == {"invalid": 0, "missing": 0, "empty": 2, "tie": 2}
    toks, more = dpo.tokenize_pairs(texts, _CharTokenizer(), data.max_tokens, 64)
    assert more == {"too_long": 1, "identical": 1}  # 'A' and 's' are both id 17
    assert len(toks.lengths) == 2 and list(toks.lengths) == [1 + 12 + 1, 1 + 9 + 1]
    b = dpo.collate_pairs(toks, np.array([0, 1]), pad_id=0, eos_id=1, length_multiple=8,
                                ref=(np.array([-1.0, -2.0]), np.array([-3.0, -4.0])))
    assert b["chosen"]["tokens_BxT"].shape == b["rejected"]["tokens_BxT"].shape == (2, 16)
    np.testing.assert_array_equal(b["ref_rejected_logp_B"], [-3.0, -4.0])
    path.write_text(json.dumps({"prompt": "p", "chosen": "a"}) + "\n" + "[1]\n"
                    + json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "tie": True})
                    + "\n")
    assert dpo_stage.load_pairs(data, None) == ([], {"invalid": 1, "missing": 1, "empty": 0,
                                                     "tie": 1})
    strict = dataclasses.replace(data, on_bad_rows="error")
    with pytest.raises(ValueError, match=r"pairs.jsonl:1: text fields \['rejected'\] missing"):
        dpo_stage.load_pairs(strict, None)


def test_stage_config_checks():
    base = {"model": {"source": "stage:base"}, "data": {"dataset": "stage:gen"}}
    assert dpo_stage.resolve(base).loss == dpo.DPOLoss()
    with pytest.raises(ValueError, match="data.dataset must be"):
        dpo_stage.resolve({**base, "data": {"dataset": "toyworld"}})
    with pytest.raises(ValueError, match="set one of train.steps"):
        dpo_stage.resolve({**base, "train": {"steps": 5, "epochs": 2}})
    with pytest.raises(ValueError, match="only used by the 'cdpo'"):
        dpo_stage.resolve({**base, "loss": {"name": "ipo", "label_smoothing": 0.1}})
    with pytest.raises(KeyError, match="unknown key"):
        dpo_stage.resolve({**base, "loss": {"betta": 0.1}})
    # Steps: as set, else epochs x full batches of the usable pairs.
    assert dpo_stage.DPOTrain(steps=7, batch_size=4).total_steps(10) == 7
    assert dpo_stage.DPOTrain(epochs=3, batch_size=4).total_steps(10) == 6
    with pytest.raises(ValueError, match="3 usable pairs are fewer than train.batch_size=4"):
        dpo_stage.DPOTrain(batch_size=4).total_steps(3)


# ---- a tiny study --------------------------------------------------------------------------------

def _study(dpo_fields=None):
    """base (10 sft steps, cached) -> gen (pairs of 32 prompts x 4 samples) -> dpo."""
    from tests.loop.test_loop import short_base, tiny_config
    c = short_base(tiny_config(1))
    c.stage_order = ("base", "gen", "dpo")
    del c.stages["rl"]
    # "Correct" = at least one R1 tag: an untrained model gets that for some samples only.
    c.stages.gen = stages.defaults(
        "generate", prompts=32, select="pairs", correct_by="r1_tag_count",
        correct_threshold=0.25, rewards={"r1_tag_count": 1.0},
        rollout={"num_samples": 4, "max_new_tokens": 32})
    fields = {"data": {"dataset": "stage:gen"},
              "optimizer": {"learning_rate": 1e-3},
              "train": {"steps": 4, "batch_size": 4, "length_multiple": 64, "log_every": 2,
                        "checkpoint_every": 3}}
    c.stages.dpo = stages.defaults("dpo", **study.deep_merge(fields, dpo_fields or {}))
    return c


def _params(stage_dir):
    from rlcot import sources
    model = sources.Resolver().load(f"workdir:{stage_dir}")
    return [np.asarray(x) for x in jax.tree.leaves(model.params)]


def _comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@pytest.mark.usefixtures("shared_toy_cache")
def test_study_trains_and_resumes_exactly(tmp_path):
    import shutil
    summary = study.run(_study(), tmp_path)
    assert summary["finished"] and summary["stage_order"] == ["base", "gen", "dpo"]
    gen, d = summary["stages"]["gen"], summary["stages"]["dpo"]
    assert d["rows"] == gen["rows"] >= 4 and d["pairs"] == gen["rows"]
    assert d["skipped"] == {"invalid": 0, "missing": 0, "empty": 0, "tie": 0, "too_long": 0}
    assert d["reference"] == "stage:base" and not d["reference_stored"]
    rows = read_metrics(tmp_path / "dpo")
    assert [r["step"] for r in rows] == [2, 4]
    assert all(r["pairs"] == 8 for r in rows)  # 2 steps of 4 pairs per line
    assert rows[-1]["loss"] < math.log(2) and rows[-1]["rewards/margins"] > 0
    assert json.loads((tmp_path / "dpo" / "model.json").read_text())["source"] == "stage:base"
    params = _params(tmp_path / "dpo")
    # Killed after step 3's checkpoint: the stage resumes mid log window (step 3's metrics
    # come back from the checkpoint) and ends with the same metrics and parameters.
    (tmp_path / "dpo" / "summary.json").unlink()
    shutil.rmtree(tmp_path / "dpo" / "checkpoints" / "4")
    again = study.run(_study(), tmp_path)["stages"]["dpo"]
    assert again["resumed_from_step"] == 3 and again["reference_stored"]
    assert _comparable(read_metrics(tmp_path / "dpo")) == _comparable(rows)
    for a, b in zip(params, _params(tmp_path / "dpo")):
        np.testing.assert_array_equal(a, b)
