"""One ragged batch through every advantage estimator, KL estimator, aggregation mode and policy
loss, against float64 numpy values computed here from the papers' formulas (no rlcot code in
the references). Tolerance 1e-6 (absolute and relative; rlcot computes in float32).

The batch: 3 prompts x G = 4 completions of up to T = 6 tokens behind 2 prompt columns,
completion budget (max_new_tokens) 8.
  group 0: rewards [1, 0, 0, 0.5], lengths [6, 3, 0, 5]: row 2 is an empty completion (a valid
           sample with a reward and no token);
  group 1: rewards all 1: a zero-std group;
  group 2: dynamic-sampling leftovers (rows marked invalid, their loss mask zeroed);
log-ratios to the old policy and to the reference of +-25 (beyond the clamp of 20) and +-3
(outside every clip range) on some tokens.

Conventions the references follow (each documented in rlcot's docstrings): invalid rows take
part in nothing; a valid empty row takes part in its group's statistics but contributes no
token; std is unbiased (ddof 1) and eps is added to the std; whitening over tokens weighs a row
by its length.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from rlcot.rl import kl as K
from rlcot.rl import losses as Lo
from rlcot.rl.advantages import AdvantageConfig
from rlcot.rl.aggregation import AGGREGATIONS, aggregate, aggregation_weights
from rlcot.rl.batch import compute_advantages

B, G, P, T, BUDGET = 3, 4, 2, 6, 8
N, L = B * G, P + T
EPS = 1e-6
GAMMA, LAM = 0.9, 0.8
CLAMP, K3_MAX = 20.0, 10.0

REWARDS = np.array([1.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0])
LENGTHS = np.array([6, 3, 0, 5, 2, 6, 4, 1, 3, 3, 6, 2])
ROW_VALID = np.array([True] * 8 + [False] * 4)


def _batch():
    rng = np.random.default_rng(19)
    comp = np.arange(T)[None, :] < LENGTHS[:, None]
    comp &= ROW_VALID[:, None]                          # leftovers: mask zeroed (rollout.py)
    mask = np.concatenate([np.zeros((N, P), bool), comp], axis=1).astype(np.float64)
    logp = rng.normal(-1.5, 0.7, (N, L))
    d_old = rng.normal(0.0, 0.1, (N, L))
    d_ref = rng.normal(0.0, 0.3, (N, L))
    # logp - logp_old: row 0 (A > 0) +25; row 1 (A < 0) +25 and -3; row 3 (A > 0) -25, +3.
    for (r, t), v in {(0, 2): 25.0, (1, 0): 25.0, (1, 2): -3.0, (3, 1): -25.0,
                      (3, 3): 3.0}.items():
        d_old[r, P + t] = v
    # logp_ref - logp: +25, -25, +3, -3.
    for (r, t), v in {(0, 1): 25.0, (5, 3): -25.0, (1, 2): 3.0, (6, 0): -3.0}.items():
        d_ref[r, P + t] = v
    logp_old = logp - d_old
    logp_ref = logp + d_ref
    values = rng.normal(0.0, 1.0, (N, L))
    loss = rng.normal(0.0, 1.0, (N, L))
    return mask, logp, logp_old, logp_ref, values, loss


MASK, LOGP, LOGP_OLD, LOGP_REF, VALUES, LOSS = _batch()


def close(got, want, tol=1e-6):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol)


def j(x):
    return jnp.asarray(x, jnp.float32)


# ---- float64 references, written from the papers' formulas ------------------------------------

def _groups():
    return [list(range(b * G, (b + 1) * G)) for b in range(B)]


def ref_outcome(name, **kw):
    """Per-row advantages [N] of an outcome estimator."""
    r, adv = REWARDS, np.zeros(N)
    valid = [i for i in range(N) if ROW_VALID[i]]
    if name in ("grpo", "dr_grpo", "kimi"):
        std_over = kw.get("std_over", "group") if name == "grpo" else "none"
        batch_std = np.std(r[valid], ddof=1)
        for g in _groups():
            v = [i for i in g if ROW_VALID[i]]
            if not v:
                continue
            mean = np.mean(r[v])
            std = {"group": np.std(r[v], ddof=1) if len(v) > 1 else 0.0,
                   "batch": batch_std, "none": None}[std_over]
            for i in v:
                c = r[i] - mean
                adv[i] = c if std is None else c / (std + EPS)
        return adv
    if name == "rloo":
        for g in _groups():
            v = [i for i in g if ROW_VALID[i]]
            for i in v:
                others = [r[k] for k in v if k != i]
                adv[i] = r[i] - np.mean(others) if others else 0.0
        return adv
    if name == "reinforce_pp":
        x = np.array(r, dtype=np.float64)
        if kw.get("group_baseline"):
            for g in _groups():
                v = [i for i in g if ROW_VALID[i]]
                if v:
                    x[v] = r[v] - np.mean(r[v])
        if kw.get("whiten_over", "tokens") == "tokens":
            # Every valid token of the batch carries its row's x (OpenRLHF / verl whitening).
            tokens = np.concatenate([np.full(LENGTHS[i], x[i]) for i in valid])
        else:
            tokens = x[valid]
        mean, std = tokens.mean(), tokens.std(ddof=1)
        adv[valid] = (x[valid] - mean) / (std + EPS)
        return adv
    raise AssertionError(name)


def ref_gae():
    """GAE (Schulman et al. 2016) with the score on the last token, V = 0 after the end;
    advantages whitened over the valid tokens; returns = advantages + values (unwhitened)."""
    adv, ret = np.zeros((N, L)), np.zeros((N, L))
    for i in range(N):
        toks = [t for t in range(L) if MASK[i, t] > 0]
        a_next, v_next = 0.0, 0.0
        for k, t in reversed(list(enumerate(toks))):
            rew = REWARDS[i] if k == len(toks) - 1 else 0.0
            delta = rew + GAMMA * v_next - VALUES[i, t]
            a = delta + GAMMA * LAM * a_next
            adv[i, t], ret[i, t] = a, a + VALUES[i, t]
            a_next, v_next = a, VALUES[i, t]
    m = MASK > 0
    mean, std = adv[m].mean(), adv[m].std(ddof=1)
    white = np.where(m, (adv - mean) / (std + EPS), 0.0)
    return white, ret


def ref_reinforce_pp_token():
    """Token REINFORCE++: discounted returns of the outcome score, whitened over tokens."""
    ret = np.zeros((N, L))
    for i in range(N):
        toks = [t for t in range(L) if MASK[i, t] > 0]
        for k, t in enumerate(toks):
            ret[i, t] = GAMMA ** (len(toks) - 1 - k) * REWARDS[i]
    m = MASK > 0
    mean, std = ret[m].mean(), ret[m].std(ddof=1)
    return np.where(m, (ret - mean) / (std + EPS), 0.0), ret


def ref_kl(name):
    lr = np.clip(LOGP_REF - LOGP, -CLAMP, CLAMP)       # log r = log pi_ref - log pi
    return {"k1": -lr, "k2": 0.5 * lr ** 2, "abs": np.abs(lr),
            "k3": np.clip(np.exp(lr) - 1.0 - lr, -K3_MAX, K3_MAX)}[name]


def ref_aggregate(loss, mode, **kw):
    m = MASK
    lens = m.sum(1)
    nonempty = lens > 0
    n = max(nonempty.sum(), 1)
    total = (np.where(m > 0, loss, 0.0)).sum()
    if mode == "token_mean":
        return total / m.sum()
    if mode == "seq_mean_token_mean":
        rows = [np.where(m[i] > 0, loss[i], 0.0).sum() / lens[i] for i in range(N) if nonempty[i]]
        return np.sum(rows) / n
    if mode == "seq_mean_token_sum":
        return total / n
    if mode == "constant":
        return total / kw["constant"] if "constant" in kw else total / (n * kw["max_tokens"])
    raise AssertionError(mode)


def ref_policy_loss(name, adv_tok, **kw):
    """Per-token loss (to minimise) on valid tokens, 0 elsewhere."""
    m = MASK > 0
    out = np.zeros((N, L))
    if name == "ppo_clip":       # Schulman et al. 2017; dual clip: Ye et al. 2020
        lo, hi, c = kw["eps_low"], kw["eps_high"], kw.get("dual_clip_c")
        rho = np.exp(np.clip(LOGP - LOGP_OLD, -CLAMP, CLAMP))
        obj = np.minimum(rho * adv_tok, np.clip(rho, 1 - lo, 1 + hi) * adv_tok)
        if c is not None:
            obj = np.where(adv_tok < 0, np.maximum(obj, c * adv_tok), obj)
        out = -obj
    elif name == "gspo":         # Zheng et al. 2025: s = (pi / pi_old)^(1/|y|)
        lo, hi = kw["eps_low"], kw["eps_high"]
        for i in range(N):
            if not m[i].any():
                continue
            s = np.exp(np.clip(np.mean((LOGP - LOGP_OLD)[i, m[i]]), -CLAMP, CLAMP))
            a = adv_tok[i, m[i]][0]
            out[i] = -min(s * a, np.clip(s, 1 - lo, 1 + hi) * a)
    elif name == "pg":           # REINFORCE: -A log pi
        out = -adv_tok * LOGP
    elif name == "kimi":         # Kimi k1.5: (r - r_bar - tau log(pi/pi_old))^2, / (2 tau)
        tau = kw["tau"]
        for i in range(N):
            if not m[i].any():
                continue
            S = np.sum((LOGP - LOGP_OLD)[i, m[i]])
            out[i] = (adv_tok[i, m[i]][0] - tau * S) ** 2 / (2 * tau)
    return np.where(m, out, 0.0)


# ---- the tests -----------------------------------------------------------------------------------

OUTCOME_CASES = [
    ("grpo", {"std_over": "group"}), ("grpo", {"std_over": "batch"}),
    ("grpo", {"std_over": "none"}), ("dr_grpo", {}), ("kimi", {}), ("rloo", {}),
    ("reinforce_pp", {}), ("reinforce_pp", {"group_baseline": True}),
    ("reinforce_pp", {"whiten_over": "sequences"}),
    ("reinforce_pp", {"group_baseline": True, "whiten_over": "sequences"}),
]


def _rlcot_adv(name, **kw):
    cfg = AdvantageConfig(estimator=name, eps=EPS, **kw)
    adv, _ = compute_advantages(cfg, j(REWARDS), j(MASK), group_size=G,
                                row_valid_N=jnp.asarray(ROW_VALID))
    return adv


@pytest.mark.parametrize("name,kw", OUTCOME_CASES, ids=[f"{n}-{k}" for n, k in OUTCOME_CASES])
def test_outcome_advantages(name, kw):
    want = ref_outcome(name, **kw)[:, None] * MASK
    got = _rlcot_adv(name, **kw)
    close(got, want)
    assert np.isfinite(np.asarray(got)).all()
    if name == "grpo" and kw["std_over"] == "group":
        close(np.asarray(got)[4:8], 0.0)               # the zero-std group: 0, not nan


def test_token_advantages():
    cfg = AdvantageConfig(estimator="gae", gamma=GAMMA, lam=LAM, eps=EPS)
    adv, ret = compute_advantages(cfg, j(REWARDS), j(MASK), group_size=G, values_NxL=j(VALUES),
                                  row_valid_N=jnp.asarray(ROW_VALID))
    want_adv, want_ret = ref_gae()
    close(adv, want_adv)
    close(np.asarray(ret) * MASK, want_ret)
    cfg = AdvantageConfig(estimator="reinforce_pp_token", gamma=GAMMA, eps=EPS)
    adv, ret = compute_advantages(cfg, j(REWARDS), j(MASK), group_size=G,
                                  row_valid_N=jnp.asarray(ROW_VALID))
    want_adv, want_ret = ref_reinforce_pp_token()
    close(adv, want_adv)
    close(np.asarray(ret) * MASK, want_ret)


@pytest.mark.parametrize("name", sorted(K.KL_ESTIMATORS))
def test_kl_estimators(name):
    got = K.KLConfig(estimator=name).estimate(j(LOGP), j(LOGP_REF))
    want = ref_kl(name)
    close(np.asarray(got) * MASK, want * MASK)
    assert np.isfinite(np.asarray(got)).all()


AGG_CASES = [(m, {}) for m in sorted(AGGREGATIONS) if m != "constant"] + [
    ("constant", {"max_tokens": BUDGET}), ("constant", {"constant": 40.0})]


@pytest.mark.parametrize("mode,kw", AGG_CASES, ids=[f"{m}-{k}" for m, k in AGG_CASES])
def test_aggregation_modes(mode, kw):
    garbage = np.where(MASK > 0, LOSS, np.nan)           # padding holds nan: must not leak
    got = aggregate(j(garbage), aggregation_weights(j(MASK), mode, **kw))
    close(got, ref_aggregate(LOSS, mode, **kw))


POLICY_CASES = [
    ("ppo_clip", dict(eps_low=0.2, eps_high=0.28, dual_clip_c=3.0)),
    ("ppo_clip", dict(eps_low=0.2, eps_high=0.2)),
    ("gspo", dict(eps_low=3e-4, eps_high=4e-4)),
    ("pg", {}), ("kimi", dict(tau=0.5)),
]


@pytest.mark.parametrize("name,kw", POLICY_CASES, ids=[f"{n}-{k}" for n, k in POLICY_CASES])
def test_policy_losses_and_every_aggregation(name, kw):
    est = "kimi" if name == "kimi" else "grpo"
    adv_tok = ref_outcome(est)[:, None] * MASK
    cfg = Lo.PolicyLossConfig(name=name, **kw)
    loss, _ = cfg(j(LOGP), j(LOGP_OLD), j(adv_tok), j(MASK))
    want = ref_policy_loss(name, adv_tok, **kw)
    close(np.asarray(loss) * MASK, want)
    for mode, akw in AGG_CASES:
        got = aggregate(loss, aggregation_weights(j(MASK), mode, **akw))
        close(got, ref_aggregate(want, mode, **akw), tol=1e-6)


def test_the_batch_really_is_ragged_and_extreme():
    """Guards the fixture: each feature the test promises is present."""
    lens = MASK.sum(1)
    assert lens[2] == 0 and ROW_VALID[2]                 # an empty but valid row
    assert np.ptp(REWARDS[4:8]) == 0                     # a zero-std group
    assert not ROW_VALID[8:].any() and lens[8:].sum() == 0   # dynamic-sampling leftovers
    lr_old = (LOGP - LOGP_OLD)[MASK > 0]
    lr_ref = (LOGP_REF - LOGP)[MASK > 0]
    assert lr_old.max() > CLAMP and lr_old.min() < -CLAMP
    assert lr_ref.max() > CLAMP and lr_ref.min() < -CLAMP
    # Clip branches fire: PPO's low, high and dual clip; GSPO's (paper range) on some rows.
    adv_tok = j(ref_outcome("grpo")[:, None] * MASK)
    _, aux = Lo.ppo_clip(j(LOGP), j(LOGP_OLD), adv_tok, j(MASK), eps_low=0.2, eps_high=0.28,
                         dual_clip_c=3.0)
    for k in ("clipped_low", "clipped_high", "clipped_dual"):
        assert float(aux[k].sum()) > 0, k
    _, aux = Lo.PolicyLossConfig(name="gspo")(j(LOGP), j(LOGP_OLD), adv_tok, j(MASK))
    assert float(aux["clipped_low"].sum() + aux["clipped_high"].sum()) > 0

