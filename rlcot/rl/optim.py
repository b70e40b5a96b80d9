"""Optimizer from a small frozen config: AdamW, global-norm clipping and a named LR schedule.

Steps count optimizer steps (one per minibatch), not RL iterations: with E epochs and M
minibatches an RL iteration advances every schedule by E * M (fewer if steps were skipped).
Weight decay skips norm scales and biases (any parameter whose path names a norm or bias).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import optax

Schedule = Callable[[Any], Any]


def _constant(c: "OptimizerConfig") -> Schedule:
    return optax.constant_schedule(c.lr)


def _linear_warmup(c: "OptimizerConfig") -> Schedule:
    # lr * min(1, (step + 1) / warmup): the first step already moves (lr / warmup), none is wasted.
    return optax.linear_schedule(c.lr / c.warmup_steps, c.lr, c.warmup_steps - 1)


def _cosine(c: "OptimizerConfig") -> Schedule:
    return optax.cosine_decay_schedule(c.lr, c.decay_steps, alpha=c.end_lr_ratio)


def _warmup_cosine(c: "OptimizerConfig") -> Schedule:
    warmup = optax.linear_schedule(c.lr / c.warmup_steps, c.lr, c.warmup_steps - 1)
    decay = optax.cosine_decay_schedule(c.lr, c.decay_steps - c.warmup_steps,
                                        alpha=c.end_lr_ratio)
    return optax.join_schedules([warmup, decay], [c.warmup_steps])


SCHEDULES: dict[str, Callable[["OptimizerConfig"], Schedule]] = {
    "constant": _constant,
    "linear_warmup": _linear_warmup,
    "cosine": _cosine,
    "warmup_cosine": _warmup_cosine,
}


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with a schedule. warmup_steps: steps to reach `lr` (linear_warmup, warmup_cosine);
    decay_steps: total steps of the cosine (including warmup for warmup_cosine), after which
    the rate stays at `lr * end_lr_ratio`. max_grad_norm None: no clipping."""
    lr: float = 1e-6
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int = 0
    end_lr_ratio: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown LR schedule {self.schedule!r}; choose from {sorted(SCHEDULES)}")
        if not self.lr >= 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")
        if self.schedule in ("linear_warmup", "warmup_cosine") and self.warmup_steps < 1:
            raise ValueError(f"schedule {self.schedule!r} needs warmup_steps >= 1, "
                             f"got {self.warmup_steps}")
        if self.schedule in ("cosine", "warmup_cosine") and self.decay_steps <= self.warmup_steps:
            raise ValueError(f"schedule {self.schedule!r} needs decay_steps > warmup_steps, got "
                             f"decay_steps={self.decay_steps}, warmup_steps={self.warmup_steps}")
        if not 0.0 <= self.end_lr_ratio <= 1.0:
            raise ValueError(f"end_lr_ratio must be in [0, 1], got {self.end_lr_ratio}")
        if not (0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0):
            raise ValueError(f"Adam betas must be in [0, 1), got b1={self.b1}, b2={self.b2}")
        if not self.eps > 0:
            raise ValueError(f"Adam eps must be > 0, got {self.eps}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 (or None), got {self.max_grad_norm}")


def make_schedule(cfg: OptimizerConfig) -> Schedule:
    """Learning rate as a function of the optimizer step (0-based)."""
    return SCHEDULES[cfg.schedule](cfg)


def decay_mask(params: Any) -> Any:
    """True for parameters that get weight decay: all but norm scales and biases."""
    def one(path, _):
        name = jax.tree_util.keystr(path).lower()
        return not ("norm" in name or "bias" in name)
    return jax.tree_util.tree_map_with_path(one, params)


def clipped_adamw(schedule: Schedule | float, *, b1: float, b2: float, eps: float,
                  weight_decay: float, max_grad_norm: float | None
                  ) -> optax.GradientTransformation:
    """Clip by global norm (if set), then AdamW with weight decay on all but norm scales and
    biases. Shared by the RL update and supervised fine-tuning (rlcot.sft)."""
    adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                        mask=decay_mask)
    if max_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """clipped_adamw with the configured schedule. The gradient norm reported by the update
    step is the one before clipping."""
    return clipped_adamw(make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                         weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm)
