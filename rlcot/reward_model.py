"""Reward models for RLHF: the transformer with a scalar head, the Bradley-Terry loss, its
held-out accuracy and calibration, one jitted training step, and the scorer the RL loop calls.

The model is rlcot.rl.value.ValueModel's module (the policy's transformer body + a linear head
on the final-norm hidden states, zero-initialised), read UNSHIFTED at the last valid token of
each row: r(prompt, completion) = head . h[last] + bias, the sequence's reward. Rows are
prompt + completion + eos, as the DPO pairs (rlcot.dpo.collate_pairs); in the RL loop the
sampled rows (left-padded prompts, completions ending with their eos unless truncated) are
scored as they are, one batched forward on the mesh.

Bradley-Terry (Christiano et al. 2017; Ouyang et al. 2022, Eq. 1): with d = r(chosen) -
r(rejected) per pair, loss = mean(-log sigmoid(d)); P(chosen preferred) = sigmoid(d).
Metrics: accuracy (share of pairs with d > 0; a tie counts as wrong, as TRL's
RewardTrainer), mean margin d, and expected calibration error over `bins` equal-width bins of
the predicted probability of the preferred side (max(p, 1 - p)):
ECE = sum_b n_b / N * |accuracy_b - confidence_b|.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlcot.sharding import TRAIN_RULES, with_activation_sharding

NORMALIZE = ("none", "reference", "batch")


def last_valid_index(valid_NxL: jax.Array) -> jax.Array:
    """Index of each row's last valid position (rows are left- or right-padded)."""
    L = valid_NxL.shape[1]
    return L - 1 - jnp.argmax(valid_NxL[:, ::-1].astype(jnp.int32), axis=1)


def sequence_rewards(graphdef: nnx.GraphDef, params: nnx.State, tokens_NxL: jax.Array,
                     positions_NxL: jax.Array, valid_NxL: jax.Array, *,
                     remat: bool = False) -> jax.Array:
    """float32 [N]: the reward model's score of each row, read at its last valid token."""
    model = nnx.merge(graphdef, params)
    valid_NxL = valid_NxL.astype(bool)
    h_NxLxD, _ = model.body.hidden(tokens_NxL, positions_NxL, valid_NxL, remat=remat)
    last_N = last_valid_index(valid_NxL)
    h_NxD = jnp.take_along_axis(h_NxLxD, last_N[:, None, None], axis=1)[:, 0]
    return jnp.einsum("nd,d->n", h_NxD, model.head[...].astype(h_NxD.dtype),
                      preferred_element_type=jnp.float32) + model.head_bias[...]


def bradley_terry(chosen_B: jax.Array, rejected_B: jax.Array, weight_B: jax.Array | None = None
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss summed over pairs, sums of the pair metrics) of the module docstring; weight_B
    masks pairs (0: filler). Sums, so that micro-batches and the caller can divide once."""
    d_B = chosen_B.astype(jnp.float32) - rejected_B.astype(jnp.float32)
    w_B = jnp.ones_like(d_B) if weight_B is None else weight_B.astype(jnp.float32)
    loss = jnp.sum(-jax.nn.log_sigmoid(d_B) * w_B)
    return loss, {"accuracy": jnp.sum((d_B > 0) * w_B), "margin": jnp.sum(d_B * w_B),
                  "chosen": jnp.sum(chosen_B * w_B), "rejected": jnp.sum(rejected_B * w_B),
                  "pairs": jnp.sum(w_B)}


def calibration(margins: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Expected calibration error of sigmoid(margin) as P(chosen preferred) (module
    docstring), with the per-bin table {confidence, accuracy, count} for a reliability plot."""
    d = np.asarray(margins, np.float64)
    if d.size == 0:
        return {"ece": float("nan"), "bins": []}
    p = 1.0 / (1.0 + np.exp(-d))
    conf = np.maximum(p, 1.0 - p)           # confidence in the side the model prefers
    right = (d > 0).astype(np.float64)      # that side is the labelled chosen one
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        m = which == b
        if not m.any():
            continue
        acc, c = float(right[m].mean()), float(conf[m].mean())
        ece += m.sum() / d.size * abs(acc - c)
        table.append({"confidence": round(c, 4), "accuracy": round(acc, 4),
                      "count": int(m.sum())})
    return {"ece": float(ece), "bins": table}


def _pair_rewards(graphdef, params, batch, remat):
    both = {k: jnp.concatenate([batch["chosen"][k], batch["rejected"][k]])
            for k in ("tokens_BxT", "valid_BxT")}
    B = batch["chosen"]["tokens_BxT"].shape[0]
    pos = jnp.maximum(jnp.cumsum(both["valid_BxT"], axis=1) - 1, 0)
    r = sequence_rewards(graphdef, params, both["tokens_BxT"], pos, both["valid_BxT"],
                         remat=remat)
    return r[:B], r[B:]


def make_train_step(optimizer: optax.GradientTransformation, micro_batches: int = 1,
                    remat: bool = False, mesh: Any = None) -> Callable:
    """A jitted `(graphdef, params, opt_state, batch) -> (params, opt_state, metrics)` on
    rlcot.dpo.collate_pairs batches (plus `weight_B`); the loss is the mean Bradley-Terry
    loss over the batch's pairs, gradients summed exactly over `micro_batches` splits."""

    def loss_fn(params, graphdef, mb):
        c, r = _pair_rewards(graphdef, params, mb, remat)
        return bradley_terry(c, r, mb["weight_B"])

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(graphdef, params, opt_state, batch):
        B = batch["weight_B"].shape[0]
        if B % micro_batches:
            raise ValueError(f"batch of {B} pairs does not split into {micro_batches} "
                             f"micro-batches")
        micro = jax.tree.map(lambda x: x.reshape(micro_batches, B // micro_batches,
                                                 *x.shape[1:]), batch)

        def body(carry, mb):
            (loss, stats), grads = grad_fn(params, graphdef, mb)
            return jax.tree.map(jnp.add, carry, ((loss, stats), grads)), None

        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(
            lambda: grad_fn(params, graphdef, jax.tree.map(lambda x: x[0], micro))))
        ((loss, stats), grads), _ = jax.lax.scan(body, zeros, micro)
        n = jnp.maximum(stats["pairs"], 1.0)
        grads = jax.tree.map(lambda g: g / n, grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": loss / n, **{k: (v if k == "pairs" else v / n)
                                         for k, v in stats.items()},
                   "grad_norm": optax.tree.norm(grads)}
        return params, opt_state, metrics

    # mesh: the decoder's activations pinned to the batch axes (rlcot.sharding.constrain).
    return jax.jit(with_activation_sharding(step, mesh, TRAIN_RULES), static_argnums=0,
                   donate_argnums=(1, 2))


def pair_margins(graphdef: Any, params: Any, batches: list[dict[str, Any]], put: Any = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(chosen_N, rejected_N) scores of the pairs in `batches` (rows with weight 0 dropped)."""
    fn = jax.jit(lambda p, b: _pair_rewards(graphdef, p, b, False))
    cs, rs = [], []
    for b in batches:
        keep = np.asarray(b["weight_B"]) > 0
        c, r = jax.device_get(fn(params, put(b) if put is not None else b))
        cs.append(np.asarray(c)[keep])
        rs.append(np.asarray(r)[keep])
    return np.concatenate(cs), np.concatenate(rs)


# ---- as a reward in the RL loop -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Normalizer:
    """How a reward-model score becomes a reward: 'none' (raw), 'reference' ((r - mean) / std
    with the mean and std of the model's scores on its own training responses, stored by the
    reward_model stage: the fixed normalisation of Ziegler et al. 2019 / lm-human-preferences,
    which makes the reward 0-mean, unit-scale on the data it was trained on) or 'batch'
    ((r - mean) / std over the scored batch). clip: |reward| <= clip after normalising."""
    mode: str = "reference"
    mean: float = 0.0
    std: float = 1.0
    clip: float | None = None

    def __post_init__(self):
        if self.mode not in NORMALIZE:
            raise ValueError(f"reward model normalize must be one of {NORMALIZE}, got "
                             f"{self.mode!r}")
        if not self.std > 0:
            raise ValueError(f"reward model score std must be > 0, got {self.std}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"reward model clip must be > 0 or None, got {self.clip}")

    def __call__(self, r: np.ndarray) -> np.ndarray:
        r = np.asarray(r, np.float64)
        if self.mode == "reference":
            r = (r - self.mean) / self.std
        elif self.mode == "batch" and r.size:
            r = (r - r.mean()) / max(float(r.std()), 1e-6)
        if self.clip is not None:
            r = np.clip(r, -self.clip, self.clip)
        return r.astype(np.float32)
