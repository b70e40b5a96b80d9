"""Supervised fine-tuning: next-token cross-entropy on completion tokens, one jitted optax step.

Used for the toy world's base-model pre-training, R1's cold start and Kimi's long-CoT SFT.

    optimizer = make_optimizer(SFTConfig(learning_rate=1e-3, total_steps=1000))
    step = make_train_step(optimizer)
    opt_state = optimizer.init(params)
    batch = collate([(prompt_ids, completion_ids), ...], pad_id=tok.pad_id, eos_id=tok.eos_id)
    params, opt_state, metrics = step(graphdef, params, opt_state, batch)

A batch is a dict of right-padded arrays:
  tokens_BxT       int32  prompt + completion (+ eos), then padding
  valid_BxT        bool   real tokens
  target_mask_BxT  bool   tokens that are predicted (the completion and its eos); the token at
                          t is predicted from the logits at t - 1, so column 0 is never a target
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlcot.models.lora import Adapted
from rlcot.models.transformer import forward, positions_from_mask
from rlcot.rl.optim import clipped_adamw
from rlcot.sharding import TRAIN_RULES, with_activation_sharding


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """AdamW (rlcot.rl.optim.clipped_adamw) with linear warmup from 0 then cosine decay to
    end_lr_ratio * learning_rate at total_steps. Weight decay skips norm scales and biases.
    micro_batches: the batch is split along B and gradients are summed, giving the same
    update as one pass (the loss is normalised by the whole batch's target-token count).
    total_steps: the schedule's length (None: the SFT stage's train.steps)."""

    learning_rate: float = 1e-3
    total_steps: int | None = None
    warmup_steps: int = 0
    end_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.99
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    micro_batches: int = 1
    remat: bool = False

    def __post_init__(self):
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        total = self.total_steps
        if (total is not None and total < 1) or self.warmup_steps < 0 or (
                total is not None and self.warmup_steps > total):
            raise ValueError(f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, got "
                             f"total_steps={total} warmup_steps={self.warmup_steps}")
        if not 0.0 <= self.end_lr_ratio <= 1.0:
            raise ValueError(f"end_lr_ratio must be in [0, 1], got {self.end_lr_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        if self.micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {self.micro_batches}")


def learning_rate_schedule(cfg: SFTConfig) -> optax.Schedule:
    if cfg.total_steps is None:
        raise ValueError("SFTConfig.total_steps is None: set it (the SFT stage sets it to its "
                         "train.steps)")
    decay = optax.cosine_decay_schedule(cfg.learning_rate,
                                        max(cfg.total_steps - cfg.warmup_steps, 1),
                                        alpha=cfg.end_lr_ratio)
    if not cfg.warmup_steps:
        return decay
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class OptimizerState:
    """What the stages built on this optimizer (sft, dpo, reward_model) checkpoint: the
    trained parameters (LoRA: the adapters) and their optimizer state."""
    params: Any
    opt_state: Any


def make_optimizer(cfg: SFTConfig) -> optax.GradientTransformation:
    return clipped_adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                         weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm)


def token_nll(graphdef: Any, params: Any, batch: dict[str, jax.Array],
              remat: bool = False) -> tuple[jax.Array, jax.Array]:
    """(nll_BxT, weight_BxT): the negative log-likelihood of each token t >= 1 given the
    tokens before it (column 0 is zero), and the target mask as float32 weights. A packed
    batch (collate_packed) carries positions_BxT and segment_ids_BxT: each sequence attends
    only to itself, and the first token of a segment (a prompt token) is never a target."""
    tokens_BxT = jnp.asarray(batch["tokens_BxT"])
    valid_BxT = jnp.asarray(batch["valid_BxT"]).astype(bool)
    target_BxT = jnp.asarray(batch["target_mask_BxT"]).astype(bool)
    weight_BxT = (target_BxT & valid_BxT).astype(jnp.float32)
    segments_BxT = batch.get("segment_ids_BxT")  # packed rows (collate_packed)
    positions_BxT = (positions_from_mask(valid_BxT) if segments_BxT is None
                     else jnp.asarray(batch["positions_BxT"]))
    logits_BxTxV, _ = forward(graphdef, params, tokens_BxT, positions_BxT, valid_BxT, None,
                              remat, None if segments_BxT is None else jnp.asarray(segments_BxT))
    logp_BxTxV = jax.nn.log_softmax(logits_BxTxV[:, :-1].astype(jnp.float32), axis=-1)
    target_logp_BxT = jnp.take_along_axis(logp_BxTxV, tokens_BxT[:, 1:, None], axis=-1)[..., 0]
    nll_BxT = jnp.pad(-target_logp_BxT, ((0, 0), (1, 0)))
    return nll_BxT, weight_BxT.at[:, 0].set(0.0)


def loss_fn(graphdef: Any, params: Any, batch: dict[str, jax.Array],
            remat: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Token-mean cross-entropy over the batch's target tokens (0 when there are none)."""
    nll_BxT, weight_BxT = token_nll(graphdef, params, batch, remat)
    count = weight_BxT.sum()
    loss = (nll_BxT * weight_BxT).sum() / jnp.maximum(count, 1.0)
    return loss, {"loss": loss, "target_tokens": count}


def make_train_step(optimizer: optax.GradientTransformation, micro_batches: int = 1,
                    remat: bool = False, mesh: Any = None) -> Callable:
    """A jitted `(graphdef, params, opt_state, batch[, base, lora_scale]) -> (params,
    opt_state, metrics)`; graphdef is static, params and opt_state are donated. metrics: loss
    (token mean over the whole batch), target_tokens, grad_norm (before clipping). With `base`
    (LoRA), params are adapters applied on that frozen base with `lora_scale`
    (rlcot.models.lora); only they are trained.

    `batch` is one batch dict (split into `micro_batches` equal parts along B), or a tuple
    of batch dicts of different widths (e.g. a batch's short rows and long rows, padded
    separately): one update either way, normalised by the total target-token count.
    """

    def step(graphdef, params, opt_state, batch, base=None, lora_scale=1.0):
        def sums(p, mb):
            if base is not None:  # LoRA: p are adapters applied on the frozen base
                p = Adapted(base, p, lora_scale)
            nll_BxT, weight_BxT = token_nll(graphdef, p, mb, remat)
            return (nll_BxT * weight_BxT).sum(), weight_BxT.sum()

        grad_fn = jax.value_and_grad(sums, has_aux=True)
        if isinstance(batch, (tuple, list)):
            (nll_sum, count), grads = grad_fn(params, batch[0])
            for part in batch[1:]:
                (nll, n), g = grad_fn(params, part)
                grads = jax.tree.map(jnp.add, grads, g)
                nll_sum, count = nll_sum + nll, count + n
        elif micro_batches == 1:
            (nll_sum, count), grads = grad_fn(params, batch)
        else:
            B = batch["tokens_BxT"].shape[0]
            if B % micro_batches:
                raise ValueError(f"a batch of {B} rows does not split into "
                                 f"{micro_batches} micro-batches")
            micro = jax.tree.map(
                lambda x: x.reshape(micro_batches, B // micro_batches, *x.shape[1:]), batch)

            def body(carry, mb):
                g_acc, nll_acc, n_acc = carry
                (nll, n), g = grad_fn(params, mb)
                return (jax.tree.map(jnp.add, g_acc, g), nll_acc + nll, n_acc + n), None

            init = (jax.tree.map(jnp.zeros_like, params), jnp.zeros(()), jnp.zeros(()))
            (grads, nll_sum, count), _ = jax.lax.scan(body, init, micro)
        # Sums over micro-batches, normalised once: the same update as one full-batch pass.
        scale = 1.0 / jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g * scale, grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": nll_sum * scale, "target_tokens": count,
                   "grad_norm": optax.tree.norm(grads)}
        return params, opt_state, metrics

    # mesh: the decoder's activations pinned to the batch axes (rlcot.sharding.constrain).
    return jax.jit(with_activation_sharding(step, mesh, TRAIN_RULES), static_argnums=0,
                   donate_argnums=(1, 2))


def collate(examples: Sequence[tuple[Sequence[int], Sequence[int]]], *, pad_id: int,
            eos_id: int | None = None, length: int | None = None,
            truncate: bool = False) -> dict[str, np.ndarray]:
    """Right-padded batch of (prompt_ids, completion_ids) pairs; eos (if given) is appended
    to each completion and is a target. length: the padded width (default: the longest row);
    a longer row raises unless truncate=True (then its tail is cut)."""
    if not examples:
        raise ValueError("collate needs at least one example")
    rows, targets = [], []
    for k, (prompt, completion) in enumerate(examples):
        completion = list(completion) + ([eos_id] if eos_id is not None else [])
        if not completion:
            raise ValueError(f"example {k} has an empty completion (nothing to learn)")
        rows.append(list(prompt) + completion)
        targets.append([False] * len(prompt) + [True] * len(completion))
    longest = max(len(r) for r in rows)
    width = longest if length is None else length
    if longest > width and not truncate:
        raise ValueError(f"an example has {longest} tokens, more than length={width} "
                         f"(pass truncate=True to cut)")
    tokens = np.full((len(rows), width), pad_id, np.int32)
    valid = np.zeros((len(rows), width), bool)
    target = np.zeros((len(rows), width), bool)
    for b, (r, t) in enumerate(zip(rows, targets)):
        n = min(len(r), width)
        tokens[b, :n] = r[:n]
        valid[b, :n] = True
        target[b, :n] = t[:n]
    return {"tokens_BxT": tokens, "valid_BxT": valid, "target_mask_BxT": target}


def batches(lengths: np.ndarray, batch_size: int, steps: int, seed: int,
            group: int = 1) -> list[np.ndarray]:
    """`steps` batches of example indices: each epoch a seeded permutation, cut into groups of
    `group` batches sorted by length (group 1: plain shuffled batches), whose batches are
    then shuffled. A pure function of its arguments, so a resumed run sees the same batches."""
    n = len(lengths)
    if n < batch_size:
        raise ValueError(f"{n} examples are fewer than batch_size={batch_size}")
    rng = np.random.default_rng([seed, 7])
    out: list[np.ndarray] = []
    while len(out) < steps:
        perm = rng.permutation(n)
        perm = perm[:n // batch_size * batch_size]
        epoch = []
        for start in range(0, len(perm), batch_size * group):
            chunk = perm[start:start + batch_size * group]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            epoch += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
        out += [epoch[i] for i in rng.permutation(len(epoch))]
    return out[:steps]


def pack_plan(lengths: np.ndarray, rows: int, width: int, steps: int, seed: int
              ) -> list[list[list[int]]]:
    """For each of `steps` steps, `rows` rows of example indices whose lengths sum to at most
    `width`: examples in a seeded permutation per epoch, placed in order (next fit), a step
    ending when the next example fits in none of its rows' remaining space. A pure function
    of its arguments (a resumed run packs the same steps)."""
    lengths = np.asarray(lengths)
    if rows < 1 or width < 1:
        raise ValueError(f"need rows >= 1 and width >= 1, got {rows}, {width}")
    if lengths.max() > width:
        raise ValueError(f"an example has {lengths.max()} tokens, more than the packed row "
                         f"width {width}")
    rng = np.random.default_rng([seed, 8])
    order: list[int] = []
    plan: list[list[list[int]]] = []
    cursor = 0
    while len(plan) < steps:
        step: list[list[int]] = [[]]
        room = width
        while True:
            if cursor == len(order):
                order += rng.permutation(len(lengths)).tolist()
            j = order[cursor]
            if lengths[j] > room:
                if len(step) == rows:
                    break
                step.append([])
                room = width
            step[-1].append(j)
            room -= int(lengths[j])
            cursor += 1
        plan.append(step)
    return plan


def collate_packed(rows: Sequence[Sequence[tuple[Sequence[int], Sequence[int]]]], *,
                   width: int, pad_id: int, eos_id: int | None = None
                   ) -> dict[str, np.ndarray]:
    """Rows of several (prompt_ids, completion_ids) examples each, packed into `width` tokens:
    tokens_BxT, valid_BxT, target_mask_BxT as `collate`, plus positions_BxT (from 0 in every
    segment) and segment_ids_BxT (1, 2, ... per example; 0 on padding)."""
    B = len(rows)
    out = {"tokens_BxT": np.full((B, width), pad_id, np.int32),
           "valid_BxT": np.zeros((B, width), bool),
           "target_mask_BxT": np.zeros((B, width), bool),
           "positions_BxT": np.zeros((B, width), np.int32),
           "segment_ids_BxT": np.zeros((B, width), np.int32)}
    for b, row in enumerate(rows):
        t = 0
        for k, (prompt, completion) in enumerate(row):
            completion = list(completion) + ([eos_id] if eos_id is not None else [])
            seq = list(prompt) + completion
            n = len(seq)
            if t + n > width:
                raise ValueError(f"row {b} holds {t + n} tokens, more than width={width}")
            out["tokens_BxT"][b, t:t + n] = seq
            out["valid_BxT"][b, t:t + n] = True
            out["target_mask_BxT"][b, t + len(prompt):t + n] = True
            out["positions_BxT"][b, t:t + n] = np.arange(n)
            out["segment_ids_BxT"][b, t:t + n] = k + 1
            out["target_mask_BxT"][b, t] = False  # never predicted from the segment before
            t += n
    return out
