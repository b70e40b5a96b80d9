"""KL to a frozen reference policy: k1/k2/k3/abs, in the loss or in the reward, coefficient control.

All estimators use `log r = logp_ref - logp` per token (samples come from the policy), clamped
to [-clamp, clamp] (default 20, as verl) before anything is exponentiated, so extreme log-ratios
give large finite values instead of inf or nan. k3 is then clamped to [-k3_max, k3_max]
(default 10), exactly verl's `low_var_kl`: without it one token with |log r| = 20 would add
exp(20) ~ 4.9e8 to the penalty. Both clamps zero the gradient beyond them, which only happens
for log-ratios no sane update produces. Names as in verl: k1 = "kl", abs = "abs",
k2 = "mse", k3 = "low_var_kl".
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

import jax
import jax.numpy as jnp

DEFAULT_CLAMP = 20.0
DEFAULT_K3_MAX = 10.0


def log_ratio(logp_BxT: jax.Array, logp_ref_BxT: jax.Array,
              clamp: float = DEFAULT_CLAMP) -> jax.Array:
    """`log r = logp_ref - logp`, clamped to [-clamp, clamp]."""
    if logp_BxT.shape != logp_ref_BxT.shape:
        raise ValueError(f"logp shape {logp_BxT.shape} != logp_ref shape {logp_ref_BxT.shape}")
    return jnp.clip(logp_ref_BxT - logp_BxT, -clamp, clamp)


def k1(logp_BxT: jax.Array, logp_ref_BxT: jax.Array, *, clamp: float = DEFAULT_CLAMP) -> jax.Array:
    """k1 = -log r: unbiased for KL(pi || ref), high variance, can be negative."""
    return -log_ratio(logp_BxT, logp_ref_BxT, clamp)


def k2(logp_BxT: jax.Array, logp_ref_BxT: jax.Array, *, clamp: float = DEFAULT_CLAMP) -> jax.Array:
    """k2 = (log r)^2 / 2: biased, low variance, >= 0."""
    return 0.5 * jnp.square(log_ratio(logp_BxT, logp_ref_BxT, clamp))


def k3(logp_BxT: jax.Array, logp_ref_BxT: jax.Array, *, clamp: float = DEFAULT_CLAMP,
       k3_max: float | None = DEFAULT_K3_MAX) -> jax.Array:
    """k3 = r - 1 - log r: unbiased, low variance, >= 0; clamped to [-k3_max, k3_max] (verl's
    low_var_kl; None: no clamp)."""
    lr = log_ratio(logp_BxT, logp_ref_BxT, clamp)
    out = jnp.expm1(lr) - lr
    return out if k3_max is None else jnp.clip(out, -k3_max, k3_max)


def kl_abs(logp_BxT: jax.Array, logp_ref_BxT: jax.Array, *,
           clamp: float = DEFAULT_CLAMP) -> jax.Array:
    """abs = |log r| (verl's "abs"): >= 0, biased, the L1 distance of the log-probs."""
    return jnp.abs(log_ratio(logp_BxT, logp_ref_BxT, clamp))


KL_ESTIMATORS: dict[str, Callable[..., jax.Array]] = {"k1": k1, "k2": k2, "k3": k3,
                                                     "abs": kl_abs}


def _last_valid_onehot(mask_BxT: jax.Array) -> jax.Array:
    """One-hot of each row's last valid token (all zeros for a row with none)."""
    m = mask_BxT.astype(bool)
    T = m.shape[-1]
    last_B = T - 1 - jnp.argmax(m[:, ::-1], axis=-1)
    return (jnp.arange(T)[None, :] == last_B[:, None]) & m.any(-1, keepdims=True)


def kl_in_token_rewards(score_B: jax.Array, kl_BxT: jax.Array, mask_BxT: jax.Array,
                        coef: jax.Array | float) -> jax.Array:
    """Per-token rewards for GAE / token REINFORCE++: `-coef * kl` on every valid token, plus
    the sequence score on the last valid token (the RLHF placement)."""
    if score_B.shape != kl_BxT.shape[:1] or kl_BxT.shape != mask_BxT.shape:
        raise ValueError(f"shapes: score {score_B.shape}, kl {kl_BxT.shape}, mask {mask_BxT.shape}")
    m = mask_BxT.astype(kl_BxT.dtype)
    last_BxT = _last_valid_onehot(mask_BxT).astype(kl_BxT.dtype)
    return score_B[:, None] * last_BxT - coef * kl_BxT * m


def kl_in_sequence_rewards(score_B: jax.Array, kl_BxT: jax.Array, mask_BxT: jax.Array,
                           coef: jax.Array | float) -> jax.Array:
    """Sequence rewards for outcome estimators: `score - coef * sum_t kl` over valid tokens."""
    if score_B.shape != kl_BxT.shape[:1] or kl_BxT.shape != mask_BxT.shape:
        raise ValueError(f"shapes: score {score_B.shape}, kl {kl_BxT.shape}, mask {mask_BxT.shape}")
    return score_B - coef * (kl_BxT * mask_BxT.astype(kl_BxT.dtype)).sum(-1)


def fixed_kl_coef(coef: jax.Array, observed_kl: jax.Array, n_steps: int | jax.Array, *,
                  target: float | None = None, horizon: float | None = None) -> jax.Array:
    """The coefficient never changes."""
    del observed_kl, n_steps, target, horizon
    return coef


def adaptive_kl_coef(coef: jax.Array, observed_kl: jax.Array, n_steps: int | jax.Array, *,
                     target: float, horizon: float) -> jax.Array:
    """Ziegler et al. (2019) proportional controller:
    `e = clip(KL / target - 1, -0.2, 0.2)`, `coef <- coef * (1 + e * n_steps / horizon)`,
    with n_steps the number of samples (or steps) the observed KL was measured over."""
    error = jnp.clip(observed_kl / target - 1.0, -0.2, 0.2)
    return coef * (1.0 + error * n_steps / horizon)


KL_CONTROLLERS: dict[str, Callable[..., jax.Array]] = {
    "fixed": fixed_kl_coef,
    "adaptive": adaptive_kl_coef,
}


@dataclasses.dataclass(frozen=True)
class KLConfig:
    """KL penalty to the reference model. `coef` is the initial coefficient; the controller
    updates it between steps, so the update step takes the current value as an array.
    clamp: bound on |log r| before any exp; k3_max: bound on the k3 value (None: none)."""
    estimator: str = "k3"
    placement: Literal["loss", "reward", "none"] = "none"
    coef: float = 0.0
    controller: str = "fixed"
    target: float | None = None
    horizon: float | None = None
    clamp: float = DEFAULT_CLAMP
    k3_max: float | None = DEFAULT_K3_MAX

    def __post_init__(self):
        if self.estimator not in KL_ESTIMATORS:
            raise ValueError(f"unknown KL estimator {self.estimator!r}; "
                             f"choose from {sorted(KL_ESTIMATORS)}")
        if self.placement not in ("loss", "reward", "none"):
            raise ValueError(f"KL placement must be 'loss', 'reward' or 'none', "
                             f"got {self.placement!r}")
        if self.controller not in KL_CONTROLLERS:
            raise ValueError(f"unknown KL controller {self.controller!r}; "
                             f"choose from {sorted(KL_CONTROLLERS)}")
        if not self.coef >= 0:
            raise ValueError(f"KL coef must be >= 0, got {self.coef}")
        if not self.clamp > 0:
            raise ValueError(f"KL log-ratio clamp must be > 0, got {self.clamp}")
        if self.k3_max is not None and not self.k3_max > 0:
            raise ValueError(f"k3_max must be > 0 (or None), got {self.k3_max}")
        if self.controller == "adaptive":
            if self.target is None or not self.target > 0:
                raise ValueError(f"adaptive KL needs target > 0, got {self.target}")
            if self.horizon is None or not self.horizon > 0:
                raise ValueError(f"adaptive KL needs horizon > 0, got {self.horizon}")
            if self.coef == 0:
                raise ValueError("adaptive KL with coef 0 can never move off 0")

    @property
    def enabled(self) -> bool:
        return self.placement != "none"

    def estimate(self, logp_BxT: jax.Array, logp_ref_BxT: jax.Array) -> jax.Array:
        extra = {"k3_max": self.k3_max} if self.estimator == "k3" else {}
        return KL_ESTIMATORS[self.estimator](logp_BxT, logp_ref_BxT, clamp=self.clamp, **extra)

    def update_coef(self, coef: jax.Array, observed_kl: jax.Array,
                    n_steps: int | jax.Array) -> jax.Array:
        return KL_CONTROLLERS[self.controller](coef, observed_kl, n_steps,
                                               target=self.target, horizon=self.horizon)
