"""Direct preference optimisation: sequence log-probs of completions, the DPO losses by name, and
one jitted optax step with exact micro-batching.

    step = make_train_step(sft.make_optimizer(opt_cfg), DPOLoss("sigmoid", beta=0.1))
    params, opt_state, metrics = step(graphdef, params, opt_state, batch)

A batch holds B preference pairs, pair b in row b of both halves:
  chosen, rejected        rlcot.sft.collate dicts (tokens_BxT, valid_BxT, target_mask_BxT) of
                          prompt + completion (+ eos); the completion and its eos are targets
  ref_chosen_logp_B,      the reference model's sequence log-probs of the two completions,
  ref_rejected_logp_B     computed once per pair before training (sequence_logps)

Sequence log-prob: the sum of log pi(token) over a completion's target tokens (its eos
included, as TRL's completion mask). With z = (logp_c - logp_r) - (ref_c - ref_r) per pair:

  sigmoid   -log sigmoid(beta * z)                                     (DPO, Rafailov et al.)
  cdpo      -(1 - eps) log sigmoid(beta * z) - eps log sigmoid(-beta * z)
            (conservative DPO: labels flipped with probability eps = label_smoothing; TRL's
            'sigmoid' with label_smoothing > 0 until its DPO refactor of February 2026)
  ipo       (h - 1 / (2 * beta))**2, h the same margin on per-token means:
            h = (logp_c - ref_c) / n_c - (logp_r - ref_r) / n_r, n = target tokens
            (IPO, Azar et al., Eq. 17 with tau = beta; the per-token normalisation is TRL's,
            which TRL says the IPO authors confirmed for the paper's results)

The loss is the mean over the batch's pairs. The metrics follow TRL's DPOTrainer and use the
summed log-probs for every loss, IPO included: implicit rewards beta * (logp - ref_logp) of the
chosen and the rejected completion (rewards/chosen, rewards/rejected), their difference
(rewards/margins) and the share of pairs whose chosen reward is strictly higher
(rewards/accuracies; a tie counts as wrong). With the starting policy as the reference the
first step's rewards are 0 up to float rounding (the reference pass batches pairs
differently), so its accuracy is noise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlcot.models.lora import Adapted
from rlcot.sft import collate, token_nll
from rlcot.sharding import TRAIN_RULES, with_activation_sharding


@dataclasses.dataclass(frozen=True)
class DPOLoss:
    """name: a key of LOSSES. beta: the KL strength (IPO's tau). label_smoothing: cdpo's label
    flip probability eps in [0, 0.5); the other losses have none (setting it is an error)."""
    name: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.name not in LOSSES:
            raise ValueError(f"unknown DPO loss {self.name!r}; choose from {sorted(LOSSES)}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.name == "cdpo":
            if not 0.0 <= self.label_smoothing < 0.5:
                raise ValueError(f"label_smoothing must be in [0, 0.5) for cdpo, got "
                                 f"{self.label_smoothing}")
        elif self.label_smoothing:
            raise ValueError(f"label_smoothing={self.label_smoothing} is only used by the "
                             f"'cdpo' loss, not {self.name!r}")


class PairLogps(NamedTuple):
    """Sequence log-probs of a batch of pairs (sums over completion tokens) and token counts."""
    chosen_B: jax.Array
    rejected_B: jax.Array
    ref_chosen_B: jax.Array
    ref_rejected_B: jax.Array
    chosen_tokens_B: jax.Array
    rejected_tokens_B: jax.Array


def _margin(s: PairLogps) -> jax.Array:
    return (s.chosen_B - s.rejected_B) - (s.ref_chosen_B - s.ref_rejected_B)


def sigmoid_loss(s: PairLogps, beta: float, label_smoothing: float = 0.0) -> jax.Array:
    del label_smoothing
    return jax.nn.softplus(-beta * _margin(s))  # = -log sigmoid(beta * z), stable


def cdpo_loss(s: PairLogps, beta: float, label_smoothing: float = 0.0) -> jax.Array:
    z = beta * _margin(s)
    return (1.0 - label_smoothing) * jax.nn.softplus(-z) + label_smoothing * jax.nn.softplus(z)


def ipo_loss(s: PairLogps, beta: float, label_smoothing: float = 0.0) -> jax.Array:
    del label_smoothing
    h = ((s.chosen_B - s.ref_chosen_B) / jnp.maximum(s.chosen_tokens_B, 1.0)
         - (s.rejected_B - s.ref_rejected_B) / jnp.maximum(s.rejected_tokens_B, 1.0))
    return (h - 1.0 / (2.0 * beta)) ** 2


LOSSES: dict[str, Callable[[PairLogps, float, float], jax.Array]] = {
    "sigmoid": sigmoid_loss,
    "cdpo": cdpo_loss,
    "ipo": ipo_loss,
}


def pair_metric_sums(s: PairLogps, beta: float) -> dict[str, jax.Array]:
    """Sums over the pairs of the per-pair metrics (divide by the pair count for means)."""
    chosen_B = beta * (s.chosen_B - s.ref_chosen_B)
    rejected_B = beta * (s.rejected_B - s.ref_rejected_B)
    return {"rewards/chosen": chosen_B.sum(), "rewards/rejected": rejected_B.sum(),
            "rewards/margins": (chosen_B - rejected_B).sum(),
            "rewards/accuracies": (chosen_B > rejected_B).astype(jnp.float32).sum(),
            "logps/chosen": s.chosen_B.sum(), "logps/rejected": s.rejected_B.sum()}


def sequence_logps(graphdef: Any, params: Any, batch: dict[str, jax.Array],
                   remat: bool = False) -> tuple[jax.Array, jax.Array]:
    """(logp_B, tokens_B): each row's summed log-prob of its target tokens, and their count."""
    nll_BxT, weight_BxT = token_nll(graphdef, params, batch, remat)
    return -(nll_BxT * weight_BxT).sum(axis=-1), weight_BxT.sum(axis=-1)


def pair_logps(graphdef: Any, params: Any, batch: dict[str, Any],
               remat: bool = False) -> PairLogps:
    """The policy's sequence log-probs of both halves of a pair batch (one forward over 2B rows
    when the halves have the same width), with the batch's reference log-probs."""
    chosen, rejected = batch["chosen"], batch["rejected"]
    B = chosen["tokens_BxT"].shape[0]
    if chosen["tokens_BxT"].shape[1] == rejected["tokens_BxT"].shape[1]:
        both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), chosen, rejected)
        logp_2B, n_2B = sequence_logps(graphdef, params, both, remat)
        lc, lr, nc, nr = logp_2B[:B], logp_2B[B:], n_2B[:B], n_2B[B:]
    else:
        (lc, nc), (lr, nr) = (sequence_logps(graphdef, params, chosen, remat),
                              sequence_logps(graphdef, params, rejected, remat))
    return PairLogps(lc, lr, jnp.asarray(batch["ref_chosen_logp_B"], jnp.float32),
                     jnp.asarray(batch["ref_rejected_logp_B"], jnp.float32), nc, nr)


def loss_sums(graphdef: Any, params: Any, batch: dict[str, Any], loss: DPOLoss,
              remat: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(sum of the per-pair losses, metric sums with 'pairs': the pair count)."""
    s = pair_logps(graphdef, params, batch, remat)
    losses_B = LOSSES[loss.name](s, loss.beta, loss.label_smoothing)
    stats = pair_metric_sums(jax.lax.stop_gradient(s), loss.beta)
    stats["pairs"] = jnp.asarray(losses_B.shape[0], jnp.float32)
    return losses_B.sum(), stats


def loss_and_grads(graphdef: Any, params: Any, batch: Any, loss: DPOLoss,
                   micro_batches: int = 1, remat: bool = False, base: Any = None,
                   lora_scale: Any = 1.0) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
    """(mean loss over the pairs, its gradient, mean metrics). `batch`: one pair batch (split
    into `micro_batches` equal parts along B) or a tuple of pair batches; either way the
    per-pair sums are added up and divided once by the total pair count, so the result is
    that of one pass over all pairs. base: LoRA, `params` are adapters over this frozen base
    (rlcot.models.lora); the gradient is the adapters'."""
    def sums(p, mb):
        if base is not None:
            p = Adapted(base, p, lora_scale)
        return loss_sums(graphdef, p, mb, loss, remat)

    grad_fn = jax.value_and_grad(sums, has_aux=True)
    add = lambda a, b: jax.tree.map(jnp.add, a, b)  # noqa: E731
    if isinstance(batch, (tuple, list)):
        (total, stats), grads = grad_fn(params, batch[0])
        for part in batch[1:]:
            (t, st), g = grad_fn(params, part)
            total, stats, grads = total + t, add(stats, st), add(grads, g)
    elif micro_batches == 1:
        (total, stats), grads = grad_fn(params, batch)
    else:
        B = batch["chosen"]["tokens_BxT"].shape[0]
        if B % micro_batches:
            raise ValueError(f"a batch of {B} pairs does not split into {micro_batches} "
                             f"micro-batches")
        micro = jax.tree.map(
            lambda x: x.reshape(micro_batches, B // micro_batches, *x.shape[1:]), batch)
        first = jax.tree.map(lambda x: x[0], micro)
        shapes = jax.eval_shape(lambda p, mb: grad_fn(p, mb), params, first)
        init = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

        def body(carry, mb):
            return add(carry, grad_fn(params, mb)), None

        ((total, stats), grads), _ = jax.lax.scan(body, init, micro)
    scale = 1.0 / jnp.maximum(stats["pairs"], 1.0)
    grads = jax.tree.map(lambda g: g * scale, grads)
    metrics = {k: (v if k == "pairs" else v * scale) for k, v in stats.items()}
    return total * scale, grads, metrics


def make_train_step(optimizer: optax.GradientTransformation, loss: DPOLoss,
                    micro_batches: int = 1, remat: bool = False,
                    mesh: Any = None) -> Callable:
    """A jitted `(graphdef, params, opt_state, batch[, base, lora_scale]) -> (params,
    opt_state, metrics)`; graphdef is static, params and opt_state are donated. metrics: loss,
    the pair metrics of the module docstring, pairs, grad_norm (before clipping). With `base`,
    params are LoRA adapters over it (see loss_and_grads)."""

    def step(graphdef, params, opt_state, batch, base=None, lora_scale=1.0):
        value, grads, metrics = loss_and_grads(graphdef, params, batch, loss, micro_batches,
                                               remat, base, lora_scale)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": value, **metrics,
                                   "grad_norm": optax.tree.norm(grads)}

    # mesh: the decoder's activations pinned to the batch axes (rlcot.sharding.constrain).
    return jax.jit(with_activation_sharding(step, mesh, TRAIN_RULES), static_argnums=0,
                   donate_argnums=(1, 2))


# ---- pairs as token ids and batches ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PairTokens:
    """Token ids of preference pairs (completions without their eos)."""
    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    lengths: np.ndarray           # per pair: the longer of its two rows (prompt + completion + eos)
    index: np.ndarray | None = None  # per pair: its position in tokenize_pairs' input

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (self.prompts, self.chosen, self.rejected):
            h.update(json.dumps(part).encode())
        return h.hexdigest()[:16]


def tokenize_pairs(pairs: list[tuple[str, str, str]], tokenizer: Any, max_tokens: int | None,
                   max_position: int) -> tuple[PairTokens, dict[str, int]]:
    """Token ids of (prompt, chosen, rejected) texts, without the pairs longer than the limit
    (prompt + the longer completion + eos) or identical as ids; and those counts."""
    prompts = tokenizer.encode_batch([p for p, _, _ in pairs])
    chosen = tokenizer.encode_batch([c for _, c, _ in pairs])
    rejected = tokenizer.encode_batch([r for _, _, r in pairs])
    limit = min(max_tokens or max_position, max_position)
    keep, skipped = [], {"too_long": 0, "identical": 0}
    for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected)):
        if len(p) + max(len(c), len(r)) + 1 > limit:
            skipped["too_long"] += 1
        elif c == r:
            skipped["identical"] += 1
        else:
            keep.append(i)
    lengths = np.array([len(prompts[i]) + max(len(chosen[i]), len(rejected[i])) + 1
                        for i in keep], np.int64)
    return PairTokens([prompts[i] for i in keep], [chosen[i] for i in keep],
                      [rejected[i] for i in keep], lengths, np.array(keep, np.int64)), skipped


def collate_pairs(toks: PairTokens, idx: np.ndarray, *, pad_id: int, eos_id: int | None,
                  length_multiple: int, ref: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> dict[str, Any]:
    """The pair batch of rows `idx` (the module docstring's layout), both halves padded to one
    width (a multiple of length_multiple); reference log-probs from `ref`, else zeros."""
    width = -(-int(toks.lengths[idx].max()) // length_multiple) * length_multiple
    batch = {half: collate([(toks.prompts[j], rows[j]) for j in idx], pad_id=pad_id,
                           eos_id=eos_id, length=width)
             for half, rows in (("chosen", toks.chosen), ("rejected", toks.rejected))}
    zeros = np.zeros(len(idx), np.float32)
    batch["ref_chosen_logp_B"] = zeros if ref is None else ref[0][idx]
    batch["ref_rejected_logp_B"] = zeros if ref is None else ref[1][idx]
    return batch


def reference_logps(graphdef: Any, params: Any, toks: PairTokens, *, batch_size: int,
                    pad_id: int, eos_id: int | None, length_multiple: int,
                    put: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(chosen_N, rejected_N): the sequence log-probs of every pair under `params`, in batches
    of batch_size pairs in index order (the last one filled up with repeats of its first
    pair), by the same forward as the training step's."""
    fn = jax.jit(lambda p, b: pair_logps(graphdef, p, b)[:2])
    n = len(toks.lengths)
    out_c, out_r = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        full = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])
        b = collate_pairs(toks, full, pad_id=pad_id, eos_id=eos_id,
                          length_multiple=length_multiple)
        # gather_array: with several processes the log-probs are a global array whose rows
        # live on every process's devices (device_get reads only addressable arrays).
        from rlcot.distributed import gather_array
        c, r = (gather_array(x) for x in fn(params, put(b) if put is not None else b))
        out_c[idx], out_r[idx] = c[:len(idx)], r[:len(idx)]
    return out_c, out_r
