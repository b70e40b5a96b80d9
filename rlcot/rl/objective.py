"""The per-token training objective: policy loss x TIS weight + KL in the loss - entropy bonus.

The update step computes, once per minibatch, `w_BxT = cfg.aggregation.weights(mask_BxT)`
(after `mask_truncated` if enabled) and the metric weights `token_mean_weights(mask_BxT)`;
then for each micro-batch (a slice of rows)
    loss_BxT, aux = token_objective(cfg, logp_BxT, ...)
    loss = aggregate(loss_BxT, w_BxT);  metrics = token_metrics(aux, w_metric_BxT, mask_BxT)
and sums losses/gradients (and `accumulate_metrics`) over micro-batches: exactly the
full-minibatch values. The aggregated parts of the loss can be read the same way from
`aux["pg_loss"]`, `aux["kl_loss"]`, `aux["entropy_loss"]` with `w_BxT`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rlcot.rl.aggregation import AggregationConfig
from rlcot.rl.kl import KLConfig
from rlcot.rl.losses import PolicyLossConfig, tis_weights

# Aux keys that are loss terms: aggregate them with the loss weights, not the metric weights.
LOSS_TERMS = ("pg_loss", "kl_loss", "entropy_loss")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Everything that shapes the per-token loss; hashable, so usable as a static jit arg."""
    policy: PolicyLossConfig = PolicyLossConfig()
    aggregation: AggregationConfig = AggregationConfig()
    kl: KLConfig = KLConfig()
    entropy_coef: float = 0.0
    tis_cap: float | None = None

    def __post_init__(self):
        if not self.entropy_coef >= 0:
            raise ValueError(f"entropy_coef must be >= 0, got {self.entropy_coef}")
        if self.tis_cap is not None and not self.tis_cap > 0:
            raise ValueError(f"tis_cap must be > 0 (or None), got {self.tis_cap}")


def token_objective(cfg: ObjectiveConfig, logp_BxT: jax.Array, logp_old_BxT: jax.Array,
                    adv_BxT: jax.Array, mask_BxT: jax.Array, *,
                    kl_coef: jax.Array | float | None = None,
                    logp_ref_BxT: jax.Array | None = None,
                    entropy_BxT: jax.Array | None = None,
                    logp_sampler_BxT: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Per-token loss to minimise and per-token aux (loss terms and diagnostics).

    kl_coef: the controller's current coefficient (default `cfg.kl.coef`); used only with the
    KL placed in the loss. logp_ref_BxT is needed for that placement and, when given, the
    reference KL is reported for every placement. entropy_BxT (differentiable) is needed for an
    entropy bonus and reported when given. logp_sampler_BxT is needed when `tis_cap` is set.
    """
    m = mask_BxT.astype(logp_BxT.dtype)
    pg_loss, aux = cfg.policy(logp_BxT, logp_old_BxT, adv_BxT, mask_BxT)
    if cfg.tis_cap is not None:
        if logp_sampler_BxT is None:
            raise ValueError("tis_cap is set but no sampler log-probs were given")
        w_tis = tis_weights(logp_old_BxT, logp_sampler_BxT, cap=cfg.tis_cap,
                            log_ratio_clamp=cfg.policy.log_ratio_clamp)
        pg_loss = pg_loss * w_tis
        aux["tis_weight"] = w_tis * m
        aux["tis_capped"] = (w_tis >= cfg.tis_cap).astype(m.dtype) * m
    aux["pg_loss"] = pg_loss
    aux["adv"] = adv_BxT * m
    loss = pg_loss

    if logp_ref_BxT is not None:
        kl = cfg.kl.estimate(logp_BxT, logp_ref_BxT) * m
        aux["kl_ref"] = jax.lax.stop_gradient(kl)
    if cfg.kl.placement == "loss":
        if logp_ref_BxT is None:
            raise ValueError("KL placement is 'loss' but no reference log-probs were given")
        coef = cfg.kl.coef if kl_coef is None else kl_coef
        aux["kl_loss"] = coef * kl
        loss = loss + aux["kl_loss"]

    if entropy_BxT is not None:
        aux["entropy"] = jax.lax.stop_gradient(entropy_BxT) * m
    if cfg.entropy_coef > 0:
        if entropy_BxT is None:
            raise ValueError(f"entropy_coef={cfg.entropy_coef} but no entropy was given")
        aux["entropy_loss"] = -cfg.entropy_coef * entropy_BxT * m
        loss = loss + aux["entropy_loss"]
    return loss, aux


def split_aux(aux: dict) -> tuple[dict, dict]:
    """(loss terms, diagnostics): aggregate the first with the loss weights, feed the second to
    `metrics.token_metrics` with the metric weights."""
    terms = {k: v for k, v in aux.items() if k in LOSS_TERMS}
    return terms, {k: v for k, v in aux.items() if k not in LOSS_TERMS}


def loss_terms(terms: dict, w_BxT: jax.Array) -> dict[str, jax.Array]:
    """Aggregated value of each loss term (they sum to the aggregated loss)."""
    return {k: jnp.sum(jnp.where(w_BxT != 0, jax.lax.stop_gradient(v) * w_BxT, 0.0))
            for k, v in terms.items()}
