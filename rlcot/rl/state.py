"""The RL train state (a plain pytree), the update settings, and reference-model refresh."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from rlcot.models.lora import LoraConfig
from rlcot.rl.objective import ObjectiveConfig
from rlcot.rl.optim import OptimizerConfig, make_optimizer
from rlcot.rl.packing import PACKING_MODES
from rlcot.rl.value import ValueConfig
from rlcot.sharding import TRAIN_RULES, state_shardings


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
    """One update = `epochs` passes over the rollout batch, each split into `minibatches`
    (one optimizer step each, rows reshuffled every epoch when `shuffle`), each accumulated
    over `micro_batches` forward/backward passes. logprob_chunk: sequence positions per logits
    chunk; remat: rematerialise decoder layers in the backward pass. The loop aborts after
    `max_nonfinite_streak` skipped (non-finite) optimizer steps in a row.

    Aggregation mode 'constant' (Dr.GRPO) divides each minibatch's token sum by its non-empty
    rows x `objective.aggregation.max_tokens`, the completion budget (the loop sets it to
    rollout.max_new_tokens), or by a fixed `objective.aggregation.constant`; never by the padded
    prompt + completion length (see rl.aggregation). A minibatch without a valid token takes
    no optimizer step.

    lora: train LoRA adapters on the frozen base instead of every weight (rlcot.models.lora);
    the train state's params are then the adapters, the base is an input of the update step,
    and the KL reference is the base itself.

    packing: how the update and the log-prob passes lay out rows (rl.packing). "pack": each
    minibatch's sequences (prompt + completion up to its last loss token) packed into rows of
    `pack_width` slots (None: chosen per batch for the fewest slots), logits only at loss
    positions; "trim": one sequence per row, rows as long as the longest; "none": the padded
    [N, L] rows as sampled. All three give the same results up to float rounding."""
    objective: ObjectiveConfig = ObjectiveConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    value: ValueConfig | None = None
    epochs: int = 1
    minibatches: int = 1
    micro_batches: int = 1
    shuffle: bool = True
    logprob_chunk: int = 512
    remat: bool = False
    max_nonfinite_streak: int = 3
    lora: LoraConfig = LoraConfig()
    packing: str = "pack"
    pack_width: int | None = None

    def __post_init__(self):
        for name in ("epochs", "minibatches", "micro_batches", "logprob_chunk",
                     "max_nonfinite_streak"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"UpdateConfig.{name} must be an int >= 1, got {v!r}")
        if self.packing not in PACKING_MODES:
            raise ValueError(f"UpdateConfig.packing must be one of {PACKING_MODES}, "
                             f"got {self.packing!r}")
        if self.pack_width is not None and (not isinstance(self.pack_width, int)
                                            or self.pack_width < 1):
            raise ValueError(f"UpdateConfig.pack_width must be an int >= 1 or None, "
                             f"got {self.pack_width!r}")
        kl = self.objective.kl
        if kl.controller == "adaptive" and not kl.enabled:
            raise ValueError("an adaptive KL coefficient needs KL placement 'loss' or 'reward'")

    def check_rows(self, n_rows: int, row_shards: int = 1) -> None:
        """Fail fast unless rows split evenly into minibatches, micro-batches and shards."""
        M, K = self.minibatches, self.micro_batches
        if n_rows % M:
            raise ValueError(f"{n_rows} rows do not split into {M} minibatches")
        if (n_rows // M) % (K * row_shards):
            raise ValueError(f"a minibatch of {n_rows // M} rows does not split into {K} "
                             f"micro-batches x {row_shards} batch shards (need a multiple of "
                             f"{K * row_shards}; rows {n_rows}, minibatches {M})")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything the update step changes, checkpointed as one pytree.

    step: RL iterations done (update calls); opt_step: optimizer steps applied (the schedule's
    step; skipped steps do not count); nonfinite_streak / nonfinite_total: skipped optimizer
    steps in a row / overall; ref_params: the frozen reference policy (None without one).
    """
    params: Any
    opt_state: Any
    step: jax.Array
    opt_step: jax.Array
    kl_coef: jax.Array
    nonfinite_streak: jax.Array
    nonfinite_total: jax.Array
    ref_params: Any = None
    critic_params: Any = None
    critic_opt_state: Any = None


def _init_opt(tx: optax.GradientTransformation, params: Any, mesh: Mesh | None,
              rules: Any) -> Any:
    if mesh is None:
        return jax.jit(tx.init)(params)
    abstract = jax.eval_shape(tx.init, params)
    return jax.jit(tx.init, out_shardings=state_shardings(abstract, mesh, rules))(params)


def _copy(tree: Any) -> Any:
    # A real device copy (same sharding): the update step donates the state, so the
    # reference must not share buffers with the policy.
    return jax.tree.map(jnp.copy, tree)


def init_train_state(cfg: UpdateConfig, params: Any, *, reference: bool = False,
                     critic_params: Any = None, mesh: Mesh | None = None,
                     rules: Any = TRAIN_RULES) -> TrainState:
    """Fresh state around the parameters, placed in the training shardings when a mesh is
    given. reference: keep a frozen copy of `params` as the KL reference. critic_params:
    needed iff `cfg.value` is set."""
    if (cfg.value is None) != (critic_params is None):
        raise ValueError("critic_params must be given exactly when UpdateConfig.value is set "
                         f"(value={cfg.value}, critic_params given: {critic_params is not None})")
    critic_opt = None
    if cfg.value is not None:
        critic_opt = _init_opt(make_optimizer(cfg.value.optimizer), critic_params, mesh, rules)
    zero = lambda: jnp.zeros((), jnp.int32)  # noqa: E731  (distinct buffers: all are donated)
    state = TrainState(
        params=params, opt_state=_init_opt(make_optimizer(cfg.optimizer), params, mesh, rules),
        step=zero(), opt_step=zero(), kl_coef=jnp.asarray(cfg.objective.kl.coef, jnp.float32),
        nonfinite_streak=zero(), nonfinite_total=zero(),
        ref_params=_copy(params) if reference else None,
        critic_params=critic_params, critic_opt_state=critic_opt)
    if mesh is not None:  # scalars (and anything not yet placed) onto the mesh, as the step expects
        state = jax.device_put(state, train_state_shardings(state, mesh, rules))
    return state


def refresh_reference(state: TrainState) -> TrainState:
    """The reference becomes a copy of the current policy (call every N steps, e.g. when
    `state.step % N == 0`). One device-side copy of the parameters, no host transfer; the
    reference lives in the state, so it is checkpointed and resumes exactly."""
    if state.ref_params is None:
        raise ValueError("this train state has no reference model (init with reference=True)")
    return dataclasses.replace(state, ref_params=_copy(state.params))


def train_state_shardings(state: Any, mesh: Mesh, rules: Any = TRAIN_RULES) -> Any:
    """Shardings of a TrainState (or its abstract version): parameters, optimizer moments and
    the reference by the rules, scalars replicated."""
    return state_shardings(state, mesh, rules)


class NonFiniteError(RuntimeError):
    """Too many update steps in a row had a non-finite loss or gradient."""


def check_nonfinite(streak: int, cfg: UpdateConfig) -> None:
    """Raise once `streak` (metrics["nonfinite_streak"] or state.nonfinite_streak) reaches the
    configured limit; the loop calls this with the previous step's metrics."""
    if int(streak) >= cfg.max_nonfinite_streak:
        raise NonFiniteError(f"{int(streak)} optimizer steps in a row had a non-finite loss or "
                             f"gradient (limit {cfg.max_nonfinite_streak}); aborting. Check "
                             f"rewards/advantages for nan or inf, or lower the learning rate.")
