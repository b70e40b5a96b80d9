"""Per-token diagnostics reduced with global weights, so micro-batch metrics accumulate exactly.

`token_metrics` turns the per-token `aux` of a micro-batch into partial statistics: weighted
sums `sum(x * w)` with weights `w_BxT` computed from the whole minibatch (normally
`aggregation.token_mean_weights`, so the sum over micro-batches is the minibatch token mean),
and masked minima/maxima. `accumulate_metrics` adds sums and takes min/max of extremes (it is
associative, so it works as a `lax.scan` carry); `finalize_metrics` turns second moments into
standard deviations. Naming: `<name>_mean`, `<name>_frac` (mean of a 0/1 indicator),
`<name>_min`, `<name>_max`, `<name>_std`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

# Which statistics each known per-token quantity gets; others get ("mean",).
METRIC_STATS: dict[str, tuple[str, ...]] = {
    "ratio": ("mean", "min", "max"),
    "clipped_low": ("frac",),
    "clipped_high": ("frac",),
    "clipped_dual": ("frac",),
    "approx_kl": ("mean",),
    "kl_ref": ("mean",),
    "entropy": ("mean",),
    "tis_weight": ("mean", "max"),
    "tis_capped": ("frac",),
    "adv": ("mean", "std", "min", "max"),
    "vf_clipped": ("frac",),
}

_SQ = "_sqmean"


def token_metrics(aux: Mapping[str, jax.Array], w_BxT: jax.Array, mask_BxT: jax.Array,
                  stats: Mapping[str, Sequence[str]] | None = None) -> dict[str, jax.Array]:
    """Partial statistics of one micro-batch (see the module docstring)."""
    stats = METRIC_STATS if stats is None else stats
    valid = mask_BxT > 0
    out: dict[str, jax.Array] = {}
    for name, x_BxT in aux.items():
        if x_BxT.shape != w_BxT.shape:
            raise ValueError(f"metric {name!r} has shape {x_BxT.shape}, weights {w_BxT.shape}")
        x = jax.lax.stop_gradient(x_BxT).astype(jnp.float32)
        wsum = lambda v: jnp.sum(jnp.where(w_BxT != 0, v * w_BxT, 0.0))  # noqa: E731
        for stat in stats.get(name, ("mean",)):
            if stat in ("mean", "frac"):
                out[f"{name}_{stat}"] = wsum(x)
            elif stat == "std":
                out.setdefault(f"{name}_mean", wsum(x))
                out[f"{name}{_SQ}"] = wsum(jnp.square(x))
            elif stat == "min":
                out[f"{name}_min"] = jnp.min(jnp.where(valid, x, jnp.inf))
            elif stat == "max":
                out[f"{name}_max"] = jnp.max(jnp.where(valid, x, -jnp.inf))
            else:
                raise ValueError(f"unknown statistic {stat!r} for metric {name!r}")
    return out


def accumulate_metrics(acc: Mapping[str, jax.Array],
                       new: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Combine partial statistics of two micro-batches of the same minibatch."""
    if set(acc) != set(new):
        raise ValueError(f"metric keys differ: {sorted(set(acc) ^ set(new))}")
    out = {}
    for k in acc:
        if k.endswith("_min"):
            out[k] = jnp.minimum(acc[k], new[k])
        elif k.endswith("_max"):
            out[k] = jnp.maximum(acc[k], new[k])
        else:
            out[k] = acc[k] + new[k]
    return out


def reduce_metrics(stacked: Mapping[str, jax.Array], axis: int = 0) -> dict[str, jax.Array]:
    """`accumulate_metrics` over a stacked axis (e.g. the micro-batches of a `lax.scan`)."""
    out = {}
    for k, v in stacked.items():
        if k.endswith("_min"):
            out[k] = jnp.min(v, axis=axis)
        elif k.endswith("_max"):
            out[k] = jnp.max(v, axis=axis)
        else:
            out[k] = jnp.sum(v, axis=axis)
    return out


def finalize_metrics(acc: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Second moments -> std (biased); extremes over no valid token (still +-inf) -> nan."""
    out = {}
    for k, v in acc.items():
        if k.endswith(_SQ):
            mean = acc[k[: -len(_SQ)] + "_mean"]
            out[k[: -len(_SQ)] + "_std"] = jnp.sqrt(jnp.maximum(v - jnp.square(mean), 0.0))
        elif k.endswith(("_min", "_max")):
            out[k] = jnp.where(jnp.isfinite(v), v, jnp.nan)
        else:
            out[k] = v
    return out
