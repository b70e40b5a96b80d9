"""The composed per-token objective and the metric helpers, by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlcot.rl import metrics as M
from rlcot.rl.aggregation import AggregationConfig, token_mean_weights
from rlcot.rl.kl import KLConfig
from rlcot.rl.losses import PolicyLossConfig
from rlcot.rl.objective import ObjectiveConfig, loss_terms, split_aux, token_objective


def close(x, y, tol=1e-6):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_objective_terms_by_hand():
    cfg = ObjectiveConfig(policy=PolicyLossConfig(eps_low=0.2, eps_high=0.2),
                          kl=KLConfig(estimator="k3", placement="loss", coef=0.1),
                          entropy_coef=0.01, tis_cap=3.0)
    ln2 = math.log(2.0)
    logp = jnp.log(jnp.array([[1.1, 1.0]]))        # ratio 1.1 (inside the clip range)
    logp_old = jnp.zeros((1, 2))
    logp_sampler = jnp.full((1, 2), -ln2)          # TIS weight min(exp(0 + ln 2), 3) = 2
    logp_ref = logp - ln2                          # log r = -ln 2 -> k3 = .5 - 1 + ln 2
    adv = jnp.ones((1, 2))
    entropy = jnp.array([[1.5, 1.5]])
    mask = jnp.array([[1, 0]])
    loss, aux = token_objective(cfg, logp, logp_old, adv, mask, logp_ref_BxT=logp_ref,
                                entropy_BxT=entropy, logp_sampler_BxT=logp_sampler)
    k3 = 0.5 - 1.0 + ln2                           # 0.193147
    # pg: -A * rho * tis = -1.1 * 2 = -2.2; KL 0.1 * k3 = 0.0193147; entropy -0.01 * 1.5.
    close(loss, [[-2.2 + 0.1 * k3 - 0.015, 0.0]])
    close(aux["pg_loss"], [[-2.2, 0.0]])
    close(aux["kl_loss"], [[0.1 * k3, 0.0]])
    close(aux["kl_ref"], [[k3, 0.0]])
    close(aux["entropy_loss"], [[-0.015, 0.0]])
    close(aux["tis_weight"], [[2.0, 0.0]])
    # A traced coefficient from the controller overrides cfg.kl.coef.
    loss2, _ = jax.jit(lambda c: token_objective(
        cfg, logp, logp_old, adv, mask, kl_coef=c, logp_ref_BxT=logp_ref, entropy_BxT=entropy,
        logp_sampler_BxT=logp_sampler))(jnp.float32(1.0))
    close(loss2, [[-2.2 + k3 - 0.015, 0.0]])
    # Loss terms aggregated with the loss weights add up to the aggregated loss.
    terms, diag = split_aux(aux)
    w = AggregationConfig().weights(mask)
    tot = loss_terms(terms, w)
    close(sum(tot.values()), -2.2 + 0.1 * k3 - 0.015)
    assert set(terms) == {"pg_loss", "kl_loss", "entropy_loss"}
    assert "pg_loss" not in diag and "ratio" in diag


def test_objective_missing_inputs_fail_loudly():
    x = jnp.zeros((1, 2))
    with pytest.raises(ValueError, match="no reference log-probs"):
        token_objective(ObjectiveConfig(kl=KLConfig(placement="loss", coef=0.1)), x, x, x, x)
    with pytest.raises(ValueError, match="no entropy"):
        token_objective(ObjectiveConfig(entropy_coef=0.1), x, x, x, x)
    with pytest.raises(ValueError, match="no sampler log-probs"):
        token_objective(ObjectiveConfig(tis_cap=2.0), x, x, x, x)
    with pytest.raises(ValueError, match="entropy_coef"):
        ObjectiveConfig(entropy_coef=-1.0)
    # KL in the reward: the loss has no KL term but the KL is still reported.
    cfg = ObjectiveConfig(kl=KLConfig(placement="reward", coef=0.1))
    loss, aux = token_objective(cfg, x, x, jnp.ones((1, 2)), jnp.ones((1, 2)), logp_ref_BxT=x - 1)
    assert "kl_loss" not in aux and "kl_ref" in aux
    close(loss, [[-1.0, -1.0]])


def test_token_metrics_by_hand_and_accumulation():
    mask = jnp.array([[1, 1, 1], [1, 0, 0]])
    ratio = jnp.array([[1.0, 2.0, 0.5], [1.5, 0.0, 0.0]])
    clipped = jnp.array([[0, 1, 0], [1, 0, 0]])
    adv = jnp.array([[1.0, 1.0, 1.0], [-3.0, 0.0, 0.0]])
    aux = {"ratio": ratio, "clipped_high": clipped, "adv": adv}
    w = token_mean_weights(mask)                   # 1/4 per valid token
    full = M.finalize_metrics(M.token_metrics(aux, w, mask))
    # ratio mean (1 + 2 + .5 + 1.5)/4 = 1.25; clip fraction 2/4; adv mean (3 - 3)/4 = 0,
    # adv std sqrt((1 + 1 + 1 + 9)/4 - 0) = sqrt(3).
    close(full["ratio_mean"], 1.25)
    close(full["ratio_min"], 0.5)
    close(full["ratio_max"], 2.0)
    close(full["clipped_high_frac"], 0.5)
    close(full["adv_mean"], 0.0)
    close(full["adv_std"], math.sqrt(3.0))
    close(full["adv_min"], -3.0)
    assert "adv_sqmean" not in full
    # Row by row with the global weights: identical. Normalising per row instead would give
    # ratio mean (3.5/3 + 1.5)/2 = 1.3333 - the bug this design avoids.
    parts = [M.token_metrics({k: v[i:i + 1] for k, v in aux.items()}, w[i:i + 1], mask[i:i + 1])
             for i in range(2)]
    acc = M.finalize_metrics(M.accumulate_metrics(*parts))
    for k in full:
        close(acc[k], full[k])
    row_norm = [M.token_metrics({"ratio": ratio[i:i + 1]}, token_mean_weights(mask[i:i + 1]),
                                mask[i:i + 1])["ratio_mean"] for i in range(2)]
    close(sum(row_norm) / 2, (3.5 / 3 + 1.5) / 2)
    assert abs(float(sum(row_norm) / 2) - 1.25) > 0.05
    # Extremes over a micro-batch with no valid token do not disturb the accumulation and
    # an all-empty result reads nan, not inf.
    empty = M.token_metrics({"ratio": ratio[1:]}, w[1:] * 0, mask[1:] * 0)
    assert math.isnan(float(M.finalize_metrics(empty)["ratio_min"]))
    with pytest.raises(ValueError, match="metric keys differ"):
        M.accumulate_metrics(parts[0], {"x": 1.0})
