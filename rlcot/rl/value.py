"""The value model for PPO/GAE: the transformer body with a scalar head, and its settings.

`values_NxL[:, t]` is V(state before token t), read from the hidden state at t - 1: the same
alignment as the log-probs (see rl.logprobs) and as `advantages.gae`'s `values_BxT`. It is 0
where token t or t - 1 is not valid. The critic has its own parameters and optimizer; it is
usually initialised from the policy's (SFT) weights with a zero head, so V starts at 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from rlcot.models.config import ModelConfig
from rlcot.models.transformer import Transformer
from rlcot.rl.aggregation import AGGREGATIONS
from rlcot.rl.logprobs import per_token_pass
from rlcot.rl.packing import packed_inputs, take_queries, unpack
from rlcot.rl.optim import OptimizerConfig
from rlcot.sharding import TRAIN_RULES, state_shardings


class ValueModel(nnx.Module):
    """Transformer body + linear head on the final-norm hidden states (float32 values)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.body = Transformer(cfg, rngs)
        self.head = nnx.Param(jnp.zeros((cfg.d_model,), cfg.weight_dtype), axes=("embed",))
        self.head_bias = nnx.Param(jnp.zeros((), jnp.float32), axes=())

    def __call__(self, tokens_NxL: jax.Array, positions_NxL: jax.Array, valid_NxL: jax.Array,
                 remat: bool = False) -> jax.Array:
        valid_NxL = valid_NxL.astype(bool)
        h_NxLxD, _ = self.body.hidden(tokens_NxL, positions_NxL, valid_NxL, remat=remat)
        v_NxL = jnp.einsum("nld,d->nl", h_NxLxD, self.head[...].astype(h_NxLxD.dtype),
                           preferred_element_type=jnp.float32) + self.head_bias[...]
        # Shift by one: the value before token t is read after token t - 1.
        defined_NxL = jnp.concatenate([jnp.zeros_like(valid_NxL[:, :1]),
                                       valid_NxL[:, 1:] & valid_NxL[:, :-1]], axis=1)
        shifted_NxL = jnp.concatenate([jnp.zeros_like(v_NxL[:, :1]), v_NxL[:, :-1]], axis=1)
        return jnp.where(defined_NxL, shifted_NxL, 0.0)

    def at_queries(self, tokens_PxC: jax.Array, positions_PxC: jax.Array, valid_PxC: jax.Array,
                   segments_PxC: jax.Array, query_PxQ: jax.Array,
                   remat: bool = False) -> jax.Array:
        """Packed rows (rl.packing): the value read after each query slot, [P, Q]."""
        h_PxCxD, _ = self.body.hidden(tokens_PxC, positions_PxC, valid_PxC, remat=remat,
                                      segment_ids_BxT=segments_PxC)
        h_PxQxD = take_queries(h_PxCxD, query_PxQ)
        return jnp.einsum("nqd,d->nq", h_PxQxD, self.head[...].astype(h_PxQxD.dtype),
                          preferred_element_type=jnp.float32) + self.head_bias[...]


def value_forward(graphdef: nnx.GraphDef, params: nnx.State, tokens_NxL: jax.Array,
                  positions_NxL: jax.Array, valid_NxL: jax.Array, *,
                  remat: bool = False) -> jax.Array:
    """values_NxL, aligned as in the module docstring."""
    return nnx.merge(graphdef, params)(tokens_NxL, positions_NxL, valid_NxL, remat)


def packed_value_forward(graphdef: nnx.GraphDef, params: nnx.State, tokens_SxL: jax.Array,
                         positions_SxL: jax.Array, valid_SxL: jax.Array, pack: dict, *,
                         remat: bool = False,
                         constrain: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """`value_forward` over one micro-batch's packed rows (rl.packing): values_SxL equal to it
    where the plan computed them, 0 elsewhere. constrain: applied to the packed inputs."""
    inputs = packed_inputs(tokens_SxL, positions_SxL, valid_SxL, pack)
    if constrain is not None:
        inputs = tuple(constrain(a) for a in inputs)
    v_PxQ = nnx.merge(graphdef, params).at_queries(*inputs, pack["query"], remat)
    return unpack(v_PxQ, pack["back"])


def init_value_params(cfg: ModelConfig, seed: int = 0, *, mesh: Mesh | None = None,
                      rules: Any = TRAIN_RULES, body_params: nnx.State | None = None
                      ) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, params) of a value model with a zero head. body_params: the transformer
    parameters to start from (e.g. the policy's); copied, never aliased. Created directly in
    the training shardings when a mesh is given."""
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: ValueModel(cfg, nnx.Rngs(seed))))

    def make(body):
        model = ValueModel(cfg, nnx.Rngs(seed))
        if body is not None:
            nnx.update(model.body, body)
        return nnx.split(model)[1]

    if mesh is None:
        return graphdef, jax.jit(make)(body_params)
    shardings = state_shardings(abstract, mesh, rules)
    body_sh = None if body_params is None else state_shardings(body_params, mesh, rules)
    return graphdef, jax.jit(make, in_shardings=(body_sh,), out_shardings=shardings)(body_params)


def make_value_fn(graphdef: nnx.GraphDef, params_like: Any, *, mesh: Mesh | None = None,
                  rules: Any = TRAIN_RULES, compiler_options: dict | None = None,
                  packing: str = "none", pack_width: int | None = None) -> Callable:
    """`(critic_params, tokens_NxL, positions_NxL, valid_NxL, need_NxL=None) -> values_NxL`
    (the old values for GAE and the clipped value loss), in the update step's layout.
    packing / need_NxL: as `rl.logprobs.make_logprob_fn` (values 0 off the needed positions
    when packed)."""
    def padded_fn(params, tokens_NxL, positions_NxL, valid_NxL):
        return value_forward(graphdef, params, tokens_NxL, positions_NxL, valid_NxL)

    def packed_fn(params, tokens_NxL, positions_NxL, valid_NxL, pack, constrain):
        return packed_value_forward(graphdef, params, tokens_NxL, positions_NxL, valid_NxL,
                                    pack, constrain=constrain)
    return per_token_pass(padded_fn, packed_fn, params_like, mesh, rules, compiler_options,
                          packing, pack_width)


@dataclasses.dataclass(frozen=True)
class ValueConfig:
    """Critic training: clipped value loss (clip_eps None: unclipped), its aggregation over the
    minibatch, and the critic's own optimizer."""
    optimizer: OptimizerConfig = OptimizerConfig(lr=1e-5)
    clip_eps: float | None = 0.2
    aggregation: str = "token_mean"

    def __post_init__(self):
        if self.clip_eps is not None and not self.clip_eps > 0:
            raise ValueError(f"value clip_eps must be > 0 (or None), got {self.clip_eps}")
        if self.aggregation not in AGGREGATIONS or self.aggregation == "constant":
            raise ValueError(f"value aggregation must be one of "
                             f"{sorted(set(AGGREGATIONS) - {'constant'})}, got {self.aggregation!r}")
