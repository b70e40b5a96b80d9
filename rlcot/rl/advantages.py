"""Advantage estimators: outcome (GRPO, Dr.GRPO, RLOO, REINFORCE++, Kimi) and token level (GAE).

Outcome estimators map `rewards_BxG` (B prompts, G samples each) to `adv_BxG`; `mask_BxG`
marks valid samples (e.g. rows padded in by dynamic sampling). Invalid samples take no part in
any mean or std and get advantage 0 (REINFORCE++ also takes `lengths_BxG`, the valid tokens of
each row, to whiten over tokens as verl and OpenRLHF do). Token estimators map per-token rewards (and values) with a
`mask_BxT` to per-token advantages and returns.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

import jax
import jax.numpy as jnp

StdOver = Literal["group", "batch", "none"]
WhitenOver = Literal["tokens", "sequences"]


def _valid(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return jnp.ones(x.shape, x.dtype)
    if mask.shape != x.shape:
        raise ValueError(f"mask shape {mask.shape} != values shape {x.shape}")
    return mask.astype(x.dtype)


def _check_rewards(rewards_BxG: jax.Array) -> None:
    if rewards_BxG.ndim != 2:
        raise ValueError(f"rewards must be [B, G], got shape {rewards_BxG.shape}")


def masked_mean_std(x: jax.Array, m: jax.Array, *, axis=None, ddof: int = 0,
                    keepdims: bool = False) -> tuple[jax.Array, jax.Array]:
    """Mean and std of `x` over entries where `m` is 1. With fewer than ddof+1 entries the
    variance divides by 1 instead (the sum of squares is 0 there), so the std is 0, not nan."""
    n = m.sum(axis=axis, keepdims=True)
    mean = (x * m).sum(axis=axis, keepdims=True) / jnp.maximum(n, 1)
    var = (jnp.square(x - mean) * m).sum(axis=axis, keepdims=True) / jnp.maximum(n - ddof, 1)
    std = jnp.sqrt(var)
    if not keepdims:
        mean, std = jnp.squeeze(mean, axis), jnp.squeeze(std, axis)
    return mean, std


def _safe_div(x: jax.Array, std: jax.Array, eps: float) -> jax.Array:
    # All-equal values have std 0 and x - mean = 0: give 0, not 0/0, even with eps = 0.
    d = std + eps
    return x / jnp.where(d > 0, d, 1.0)


def _group_mean(r_BxG: jax.Array, m_BxG: jax.Array) -> jax.Array:
    return masked_mean_std(r_BxG, m_BxG, axis=-1, keepdims=True)[0]


def grpo(rewards_BxG: jax.Array, *, mask_BxG: jax.Array | None = None,
         std_over: StdOver = "group", unbiased_std: bool = True, eps: float = 1e-6) -> jax.Array:
    """GRPO: `(r - mean_group(r)) / (std(r) + eps)`.

    std_over "group": std of the prompt's own samples (the paper); "batch": std of all valid
    rewards in the batch (group mean, batch std, as in Lite PPO); "none": no division (Dr.GRPO).
    """
    _check_rewards(rewards_BxG)
    m = _valid(rewards_BxG, mask_BxG)
    centred = rewards_BxG - _group_mean(rewards_BxG, m)
    ddof = 1 if unbiased_std else 0
    if std_over == "group":
        _, std = masked_mean_std(rewards_BxG, m, axis=-1, ddof=ddof, keepdims=True)
        centred = _safe_div(centred, std, eps)
    elif std_over == "batch":
        _, std = masked_mean_std(rewards_BxG, m, ddof=ddof)
        centred = _safe_div(centred, std, eps)
    elif std_over != "none":
        raise ValueError(f"std_over must be 'group', 'batch' or 'none', got {std_over!r}")
    return centred * m


def dr_grpo(rewards_BxG: jax.Array, *, mask_BxG: jax.Array | None = None) -> jax.Array:
    """Dr.GRPO: `r - mean_group(r)`, no std (its length bias fix lives in the aggregation)."""
    return grpo(rewards_BxG, mask_BxG=mask_BxG, std_over="none")


def kimi(rewards_BxG: jax.Array, *, mask_BxG: jax.Array | None = None) -> jax.Array:
    """Kimi k1.5: `r - r_bar`, r_bar the mean reward of the prompt's k samples (it stands in
    for tau log Z). Same numbers as Dr.GRPO; it feeds the "kimi" policy loss."""
    return grpo(rewards_BxG, mask_BxG=mask_BxG, std_over="none")


def rloo(rewards_BxG: jax.Array, *, mask_BxG: jax.Array | None = None) -> jax.Array:
    """RLOO: `r_i - mean_{j != i} r_j` over the prompt's other valid samples; 0 if alone."""
    _check_rewards(rewards_BxG)
    m = _valid(rewards_BxG, mask_BxG)
    n_Bx1 = m.sum(-1, keepdims=True)
    total_Bx1 = (rewards_BxG * m).sum(-1, keepdims=True)
    baseline = (total_Bx1 - rewards_BxG) / jnp.maximum(n_Bx1 - 1, 1)
    return jnp.where(n_Bx1 > 1, rewards_BxG - baseline, 0.0) * m


def reinforce_pp(rewards_BxG: jax.Array, *, mask_BxG: jax.Array | None = None,
                 lengths_BxG: jax.Array | None = None, group_baseline: bool = False,
                 whiten_over: WhitenOver = "tokens", unbiased_std: bool = True,
                 eps: float = 1e-6) -> jax.Array:
    """REINFORCE++: x = r, or x = r - mean_group(r) with `group_baseline` (REINFORCE++-baseline),
    then `(x - mean(x)) / (std(x) + eps)` over the whole batch.

    whiten_over "tokens" (default; verl's reinforce_plus_plus(_baseline) and OpenRLHF): x is put
    on every valid token of its row and whitened over all valid tokens of the batch, so a row
    weighs by its length `lengths_BxG` (valid completion tokens per row, required):
    mean = sum_b len_b x_b / sum_b len_b, var = sum_b len_b (x_b - mean)^2 / (sum_b len_b - 1).
    "sequences": each valid row counts once (rlcot's earlier form, kept as a named option).
    eps is added to the std (as rlcot's GRPO); verl's masked_whiten uses rsqrt(var + 1e-8):
    the two differ by about eps/std relative (1e-6 at std 1, 1e-5 at std 0.1).
    Rows with no valid token still enter their group's mean (they have a reward) but take no
    part in the whitening."""
    _check_rewards(rewards_BxG)
    m = _valid(rewards_BxG, mask_BxG)
    x = rewards_BxG - _group_mean(rewards_BxG, m) if group_baseline else rewards_BxG
    ddof = 1 if unbiased_std else 0
    if whiten_over == "tokens":
        if lengths_BxG is None:
            raise ValueError("reinforce_pp with whiten_over='tokens' needs lengths_BxG (valid "
                             "completion tokens per row); use whiten_over='sequences' without")
        if lengths_BxG.shape != rewards_BxG.shape:
            raise ValueError(f"lengths shape {lengths_BxG.shape} != rewards shape "
                             f"{rewards_BxG.shape}")
        w = lengths_BxG.astype(x.dtype) * m
        n = w.sum()
        mean = (x * w).sum() / jnp.maximum(n, 1)
        std = jnp.sqrt((jnp.square(x - mean) * w).sum() / jnp.maximum(n - ddof, 1))
    elif whiten_over == "sequences":
        mean, std = masked_mean_std(x, m, ddof=ddof)
    else:
        raise ValueError(f"whiten_over must be 'tokens' or 'sequences', got {whiten_over!r}")
    return _safe_div(x - mean, std, eps) * m


def _reverse_scan(step, init, xs_TxB):
    _, ys = jax.lax.scan(step, init, xs_TxB, reverse=True)
    return ys


def gae(rewards_BxT: jax.Array, values_BxT: jax.Array, mask_BxT: jax.Array, *,
        gamma: float = 1.0, lam: float = 1.0, whiten: bool = True, unbiased_std: bool = True,
        eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation; returns (advantages_BxT, returns_BxT).

    `values_BxT[t]` is V(state before token t); the value after the last valid token is 0 (the
    episode ends). Masked tokens are skipped, not treated as steps: the recursion carries the
    next valid token's value and advantage across them, so masks need not be right-padded.
    Returns are `adv + values` before whitening; whitening is over the batch's valid tokens.
    """
    if not (rewards_BxT.shape == values_BxT.shape == mask_BxT.shape) or rewards_BxT.ndim != 2:
        raise ValueError(f"gae needs equal [B, T] shapes, got rewards {rewards_BxT.shape}, "
                         f"values {values_BxT.shape}, mask {mask_BxT.shape}")
    m = mask_BxT.astype(rewards_BxT.dtype)

    def step(carry, xs):
        next_value_B, next_adv_B = carry
        r_B, v_B, m_B = xs
        delta_B = r_B + gamma * next_value_B - v_B
        adv_B = delta_B + gamma * lam * next_adv_B
        carry = (m_B * v_B + (1 - m_B) * next_value_B, m_B * adv_B + (1 - m_B) * next_adv_B)
        return carry, adv_B

    zeros_B = jnp.zeros(rewards_BxT.shape[:1], rewards_BxT.dtype)
    adv_TxB = _reverse_scan(step, (zeros_B, zeros_B), (rewards_BxT.T, values_BxT.T, m.T))
    adv_BxT = adv_TxB.T * m
    returns_BxT = (adv_BxT + values_BxT) * m
    if whiten:
        adv_BxT = whiten_tokens(adv_BxT, m, unbiased_std=unbiased_std, eps=eps)
    return adv_BxT, returns_BxT


def discounted_returns(rewards_BxT: jax.Array, mask_BxT: jax.Array, *,
                       gamma: float = 1.0) -> jax.Array:
    """`G_t = sum_{s >= t, valid} gamma^(#valid steps from t to s) r_s`, skipping masked tokens."""
    m = mask_BxT.astype(rewards_BxT.dtype)

    def step(next_ret_B, xs):
        r_B, m_B = xs
        ret_B = r_B + gamma * next_ret_B
        return m_B * ret_B + (1 - m_B) * next_ret_B, ret_B

    zeros_B = jnp.zeros(rewards_BxT.shape[:1], rewards_BxT.dtype)
    return _reverse_scan(step, zeros_B, (rewards_BxT.T, m.T)).T * m


def whiten_tokens(x_BxT: jax.Array, mask_BxT: jax.Array, *, unbiased_std: bool = True,
                  eps: float = 1e-6) -> jax.Array:
    """`(x - mean) / (std + eps)` over all valid tokens of the batch; masked tokens get 0."""
    m = mask_BxT.astype(x_BxT.dtype)
    mean, std = masked_mean_std(x_BxT, m, ddof=1 if unbiased_std else 0)
    return _safe_div(x_BxT - mean, std, eps) * m


def reinforce_pp_token(rewards_BxT: jax.Array, mask_BxT: jax.Array, *, gamma: float = 1.0,
                       unbiased_std: bool = True, eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
    """Token-level REINFORCE++ (the paper's form, used with the KL in the reward): discounted
    returns whitened over the batch's valid tokens; returns (advantages_BxT, returns_BxT). For
    the group baseline, subtract the group mean from the outcome score before placing it."""
    returns_BxT = discounted_returns(rewards_BxT, mask_BxT, gamma=gamma)
    return whiten_tokens(returns_BxT, mask_BxT, unbiased_std=unbiased_std, eps=eps), returns_BxT


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., jax.Array]] = {
    "grpo": grpo,
    "dr_grpo": dr_grpo,
    "rloo": rloo,
    "reinforce_pp": reinforce_pp,
    "kimi": kimi,
}

# Different signature (per-token rewards, mask, values for GAE): kept in their own table.
TOKEN_ADVANTAGE_ESTIMATORS: dict[str, Callable[..., tuple[jax.Array, jax.Array]]] = {
    "gae": gae,
    "reinforce_pp_token": reinforce_pp_token,
}

_KNOBS: dict[str, tuple[str, ...]] = {
    "grpo": ("std_over", "unbiased_std", "eps"),
    "dr_grpo": (),
    "rloo": (),
    "reinforce_pp": ("group_baseline", "whiten_over", "unbiased_std", "eps"),
    "kimi": (),
    "gae": ("gamma", "lam", "whiten", "unbiased_std", "eps"),
    "reinforce_pp_token": ("gamma", "unbiased_std", "eps"),
}


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
    """Which estimator and its knobs; `knobs()` gives the keyword arguments it takes."""
    estimator: str = "grpo"
    std_over: StdOver = "group"
    unbiased_std: bool = True
    eps: float = 1e-6
    group_baseline: bool = False
    whiten_over: WhitenOver = "tokens"
    gamma: float = 1.0
    lam: float = 1.0
    whiten: bool = True

    def __post_init__(self):
        if self.estimator not in _KNOBS:
            raise ValueError(f"unknown advantage estimator {self.estimator!r}; "
                             f"choose from {sorted(_KNOBS)}")
        if self.std_over not in ("group", "batch", "none"):
            raise ValueError(f"std_over must be 'group', 'batch' or 'none', got {self.std_over!r}")
        if self.whiten_over not in ("tokens", "sequences"):
            raise ValueError(f"whiten_over must be 'tokens' or 'sequences', got "
                             f"{self.whiten_over!r}")
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def token_level(self) -> bool:
        return self.estimator in TOKEN_ADVANTAGE_ESTIMATORS

    @property
    def fn(self) -> Callable:
        table = TOKEN_ADVANTAGE_ESTIMATORS if self.token_level else ADVANTAGE_ESTIMATORS
        return table[self.estimator]

    @property
    def needs_lengths(self) -> bool:
        """Whether the outcome estimator takes `lengths_BxG` (valid tokens per row)."""
        return self.estimator == "reinforce_pp" and self.whiten_over == "tokens"

    def knobs(self) -> dict:
        return {k: getattr(self, k) for k in _KNOBS[self.estimator]}


def advantage_stats(adv_BxG: jax.Array, mask_BxG: jax.Array | None = None) -> dict[str, jax.Array]:
    """Mean, std (biased), min and max of the advantages of valid samples."""
    m = _valid(adv_BxG, mask_BxG)
    mean, std = masked_mean_std(adv_BxG, m)
    return {"adv_mean": mean, "adv_std": std,
            "adv_min": jnp.min(jnp.where(m > 0, adv_BxG, jnp.inf)),
            "adv_max": jnp.max(jnp.where(m > 0, adv_BxG, -jnp.inf))}
