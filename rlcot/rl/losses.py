"""Per-token policy losses (PPO-clip, GSPO, PG, Kimi surrogate), value loss, entropy and TIS.

Every policy loss has the signature
    fn(logp_BxT, logp_old_BxT, adv_BxT, mask_BxT, **knobs) -> (loss_BxT, aux)
where `loss_BxT` is to be minimised, is 0 on masked tokens, and is reduced to a scalar with
`aggregation.aggregate(loss_BxT, w_BxT)`; `aux` maps names to per-token diagnostics (0 on masked
tokens) for `metrics.token_metrics`. Outcome advantages are broadcast over a row's tokens by the
caller. Sequence-level losses see whole rows, so micro-batches must split by rows.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from rlcot.rl.kl import DEFAULT_CLAMP

Aux = dict[str, jax.Array]


def _check(logp_BxT, logp_old_BxT, adv_BxT, mask_BxT) -> jax.Array:
    shapes = {a.shape for a in (logp_BxT, logp_old_BxT, adv_BxT, mask_BxT)}
    if len(shapes) != 1 or logp_BxT.ndim != 2:
        raise ValueError(f"policy loss needs equal [B, T] shapes, got logp {logp_BxT.shape}, "
                         f"logp_old {logp_old_BxT.shape}, adv {adv_BxT.shape}, "
                         f"mask {mask_BxT.shape}")
    return mask_BxT.astype(logp_BxT.dtype)


def _row_sum(x_BxT: jax.Array, m: jax.Array) -> jax.Array:
    # where, not a product: padding may hold non-finite log-probs and inf * 0 is nan.
    return jnp.where(m > 0, x_BxT, 0.0).sum(-1, keepdims=True)


def _approx_kl(log_ratio_BxT: jax.Array) -> jax.Array:
    # k3 of KL(pi || pi_old) with log r = logp_old - logp = -log_ratio.
    return jnp.expm1(-log_ratio_BxT) + log_ratio_BxT


def _clip_objective(ratio_BxT, adv_BxT, m, eps_low, eps_high, dual_clip_c) -> tuple[jax.Array, Aux]:
    """PPO's clipped objective on given (token or sequence) ratios, as a loss with indicators."""
    unclipped = -adv_BxT * ratio_BxT
    clipped = -adv_BxT * jnp.clip(ratio_BxT, 1.0 - eps_low, 1.0 + eps_high)
    loss = jnp.maximum(unclipped, clipped)
    neg = adv_BxT < 0
    aux = {"clipped_low": neg & (ratio_BxT < 1.0 - eps_low),
           "clipped_high": (adv_BxT > 0) & (ratio_BxT > 1.0 + eps_high)}
    if dual_clip_c is not None:
        # For A < 0 the loss -A * ratio grows without bound in ratio; cap it at c * |A|.
        loss = jnp.where(neg, jnp.minimum(loss, -dual_clip_c * adv_BxT), loss)
        aux["clipped_dual"] = neg & (ratio_BxT > dual_clip_c)
    aux = {k: v.astype(m.dtype) * m for k, v in aux.items()}
    return loss * m, aux


def ppo_clip(logp_BxT, logp_old_BxT, adv_BxT, mask_BxT, *, eps_low: float = 0.2,
             eps_high: float = 0.2, dual_clip_c: float | None = None,
             log_ratio_clamp: float = DEFAULT_CLAMP) -> tuple[jax.Array, Aux]:
    """PPO-clip per token, `-min(rho A, clip(rho, 1-eps_low, 1+eps_high) A)`; eps_high > eps_low
    is DAPO's clip-higher; `dual_clip_c` bounds the loss at `c |A|` for negative advantages."""
    m = _check(logp_BxT, logp_old_BxT, adv_BxT, mask_BxT)
    lr = jnp.clip(logp_BxT - logp_old_BxT, -log_ratio_clamp, log_ratio_clamp)
    ratio = jnp.exp(lr)
    loss, aux = _clip_objective(ratio, adv_BxT, m, eps_low, eps_high, dual_clip_c)
    aux.update(ratio=jax.lax.stop_gradient(ratio) * m,
               approx_kl=jax.lax.stop_gradient(_approx_kl(lr)) * m)
    return loss, aux


def gspo(logp_BxT, logp_old_BxT, adv_BxT, mask_BxT, *, eps_low: float = 3e-4,
         eps_high: float = 4e-4, dual_clip_c: float | None = None,
         log_ratio_clamp: float = DEFAULT_CLAMP) -> tuple[jax.Array, Aux]:
    """GSPO (Zheng et al. 2025), in its GSPO-token form.

    Sequence ratio `s_b = exp(mean over valid t of (logp - logp_old))` (length-normalised), and
    per token `s_bt = sg[s_b] * pi(y_t) / sg[pi(y_t)]`: equal to s_b in value, and its gradient
    averaged over the row's tokens is grad s_b. The loss is the clipped objective on s_bt, so
    with sequence-constant advantages and seq_mean_token_mean aggregation it is exactly the
    paper's `-1/G sum_b min(s_b A_b, clip(s_b) A_b)`. Defaults are the paper's clip range.
    """
    m = _check(logp_BxT, logp_old_BxT, adv_BxT, mask_BxT)
    len_Bx1 = jnp.maximum(m.sum(-1, keepdims=True), 1)
    seq_lr_Bx1 = _row_sum(logp_BxT - logp_old_BxT, m) / len_Bx1
    seq_lr_Bx1 = jnp.clip(seq_lr_Bx1, -log_ratio_clamp, log_ratio_clamp)
    token_lr = jax.lax.stop_gradient(seq_lr_Bx1) + logp_BxT - jax.lax.stop_gradient(logp_BxT)
    ratio = jnp.exp(token_lr)
    loss, aux = _clip_objective(ratio, adv_BxT, m, eps_low, eps_high, dual_clip_c)
    seq_lr = jax.lax.stop_gradient(jnp.broadcast_to(seq_lr_Bx1, m.shape))
    aux.update(ratio=jnp.exp(seq_lr) * m, approx_kl=_approx_kl(seq_lr) * m)
    return loss, aux


def policy_gradient(logp_BxT, logp_old_BxT, adv_BxT, mask_BxT, *,
                    log_ratio_clamp: float = DEFAULT_CLAMP) -> tuple[jax.Array, Aux]:
    """Plain REINFORCE, `-A * logp`; logp_old only feeds the ratio diagnostics."""
    m = _check(logp_BxT, logp_old_BxT, adv_BxT, mask_BxT)
    lr = jax.lax.stop_gradient(jnp.clip(logp_BxT - logp_old_BxT, -log_ratio_clamp,
                                        log_ratio_clamp))
    return -adv_BxT * logp_BxT * m, {"ratio": jnp.exp(lr) * m, "approx_kl": _approx_kl(lr) * m}


def kimi(logp_BxT, logp_old_BxT, adv_BxT, mask_BxT, *, tau: float = 1.0,
         log_ratio_clamp: float = DEFAULT_CLAMP) -> tuple[jax.Array, Aux]:
    """Kimi k1.5 online mirror descent, per sequence `(A_b - tau * S_b)^2 / (2 tau)`.

    The paper's surrogate is `(r - r_bar - tau log(pi(y|x) / pi_old(y|x)))^2` with the whole
    sequence's probability, so `S_b = sum over valid t of (logp - logp_old)` (a sum, not a
    mean). We divide by 2 tau so that the gradient is exactly minus the paper's stated gradient
    `(r - r_bar) grad log pi - tau/2 grad (log pi/pi_old)^2`: at pi = pi_old it is REINFORCE on
    the summed log-probability and the learning rate means the same as for the other losses.
    The paper averages over the k samples of a prompt: use seq_mean_token_mean aggregation.
    A_b is read as the mean of adv_BxT over the row's valid tokens (advantages must be
    sequence-constant, i.e. `r - r_bar` from the "kimi" estimator).
    """
    m = _check(logp_BxT, logp_old_BxT, adv_BxT, mask_BxT)
    len_Bx1 = jnp.maximum(m.sum(-1, keepdims=True), 1)
    adv_Bx1 = _row_sum(adv_BxT, m) / len_Bx1
    seq_lr_Bx1 = _row_sum(logp_BxT - logp_old_BxT, m)
    loss_Bx1 = jnp.square(adv_Bx1 - tau * seq_lr_Bx1) / (2.0 * tau)
    lr = jax.lax.stop_gradient(jnp.clip(logp_BxT - logp_old_BxT, -log_ratio_clamp,
                                        log_ratio_clamp))
    return loss_Bx1 * m, {"ratio": jnp.exp(lr) * m, "approx_kl": _approx_kl(lr) * m}


POLICY_LOSSES: dict[str, Callable[..., tuple[jax.Array, Aux]]] = {
    "ppo_clip": ppo_clip,
    "gspo": gspo,
    "pg": policy_gradient,
    "kimi": kimi,
}

_KNOBS = {
    "ppo_clip": ("eps_low", "eps_high", "dual_clip_c", "log_ratio_clamp"),
    "gspo": ("eps_low", "eps_high", "dual_clip_c", "log_ratio_clamp"),
    "pg": ("log_ratio_clamp",),
    "kimi": ("tau", "log_ratio_clamp"),
}


# Clip ranges a loss gets when eps_low / eps_high are left None: PPO's 0.2, and the GSPO
# paper's 3e-4 / 4e-4 (sequence ratios are length-normalised, so they stay within ~1e-3 of 1
# and PPO's 0.2 would leave GSPO effectively unclipped). verl's GSPO recipe uses the same.
DEFAULT_CLIP: dict[str, tuple[float, float]] = {"ppo_clip": (0.2, 0.2), "gspo": (3e-4, 4e-4)}


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
    """Policy loss by name and its knobs. eps_low / eps_high None take the loss's own default
    (`DEFAULT_CLIP`: 0.2 / 0.2 for ppo_clip, 3e-4 / 4e-4 for gspo); set them to override."""
    name: str = "ppo_clip"
    eps_low: float | None = None
    eps_high: float | None = None
    dual_clip_c: float | None = None
    tau: float = 1.0
    log_ratio_clamp: float = DEFAULT_CLAMP

    def __post_init__(self):
        if self.name not in POLICY_LOSSES:
            raise ValueError(f"unknown policy loss {self.name!r}; "
                             f"choose from {sorted(POLICY_LOSSES)}")
        if self.eps_low is not None and not 0.0 <= self.eps_low < 1.0:
            raise ValueError(f"eps_low must be in [0, 1), got {self.eps_low}")
        if self.eps_high is not None and not self.eps_high >= 0.0:
            raise ValueError(f"eps_high must be >= 0, got {self.eps_high}")
        if self.dual_clip_c is not None and not self.dual_clip_c > 1.0:
            raise ValueError(f"dual_clip_c must be > 1 (it bounds ratios above 1), "
                             f"got {self.dual_clip_c}")
        if self.name not in DEFAULT_CLIP and (self.eps_low, self.eps_high) != (None, None):
            raise ValueError(f"eps_low / eps_high are only used by {sorted(DEFAULT_CLIP)}, not by "
                             f"{self.name!r} (got {self.eps_low}, {self.eps_high})")
        if not self.tau > 0:
            raise ValueError(f"kimi tau must be > 0, got {self.tau}")
        if not self.log_ratio_clamp > 0:
            raise ValueError(f"log_ratio_clamp must be > 0, got {self.log_ratio_clamp}")

    @property
    def clip_range(self) -> tuple[float, float] | None:
        """(eps_low, eps_high) this loss uses, defaults filled in; None for unclipped losses."""
        if self.name not in DEFAULT_CLIP:
            return None
        lo, hi = DEFAULT_CLIP[self.name]
        return (lo if self.eps_low is None else self.eps_low,
                hi if self.eps_high is None else self.eps_high)

    def knobs(self) -> dict:
        out = {k: getattr(self, k) for k in _KNOBS[self.name]}
        if self.clip_range is not None:
            out["eps_low"], out["eps_high"] = self.clip_range
        return out

    def __call__(self, logp_BxT, logp_old_BxT, adv_BxT, mask_BxT) -> tuple[jax.Array, Aux]:
        return POLICY_LOSSES[self.name](logp_BxT, logp_old_BxT, adv_BxT, mask_BxT, **self.knobs())


def tis_weights(logp_old_BxT: jax.Array, logp_sampler_BxT: jax.Array, *, cap: float,
                log_ratio_clamp: float = DEFAULT_CLAMP) -> jax.Array:
    """Truncated importance sampling, `min(exp(logp_old - logp_sampler), cap)`, for when the
    sampler (other numerics or layout) scored the tokens differently from the trainer's old
    policy. A constant: multiplies the per-token policy loss, carries no gradient."""
    if logp_old_BxT.shape != logp_sampler_BxT.shape:
        raise ValueError(f"logp_old shape {logp_old_BxT.shape} != logp_sampler shape "
                         f"{logp_sampler_BxT.shape}")
    if not cap > 0:
        raise ValueError(f"TIS cap must be > 0, got {cap}")
    lr = jnp.clip(logp_old_BxT - logp_sampler_BxT, -log_ratio_clamp, log_ratio_clamp)
    return jax.lax.stop_gradient(jnp.minimum(jnp.exp(lr), cap))


def entropy_from_logits(logits_BxTxV: jax.Array) -> jax.Array:
    """Per-token entropy of softmax(logits), `logsumexp(z) - sum p z`; -inf logits are fine."""
    lse_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
    p = jax.nn.softmax(logits_BxTxV, axis=-1)
    # p * z is 0 * -inf = nan for masked-out vocabulary entries; those contribute 0.
    z_safe = jnp.where(p > 0, logits_BxTxV, 0.0)
    return lse_BxT - (p * z_safe).sum(-1)


def value_loss(values_BxT: jax.Array, values_old_BxT: jax.Array, returns_BxT: jax.Array,
               mask_BxT: jax.Array, *, clip_eps: float | None = 0.2) -> tuple[jax.Array, Aux]:
    """PPO value loss `0.5 * max((v - R)^2, (v_old + clip(v - v_old, -eps, eps) - R)^2)`;
    clip_eps None gives the unclipped `0.5 (v - R)^2`."""
    m = _check(values_BxT, values_old_BxT, returns_BxT, mask_BxT)
    err = jnp.square(values_BxT - returns_BxT)
    if clip_eps is None:
        return 0.5 * err * m, {"vf_clipped": jnp.zeros_like(m)}
    v_clip = values_old_BxT + jnp.clip(values_BxT - values_old_BxT, -clip_eps, clip_eps)
    err_clip = jnp.square(v_clip - returns_BxT)
    clipped = (err_clip > err).astype(m.dtype) * m
    return 0.5 * jnp.maximum(err, err_clip) * m, {"vf_clipped": clipped}
