"""Per-token log-probs and entropies from the transformer, chunked over the sequence.

Alignment (the same for every per-token array of the update batch): `logp_NxL[:, t]` is
log pi(tokens[:, t] | tokens[:, :t]), computed from the hidden state at t - 1; it is 0 where
token t or token t - 1 is not valid (padding, or the first token of a row, which has no
context). Logits are made chunk by chunk from the final hidden states, and the chunk function is
rematerialised, so neither pass keeps [N, L, V] float32 logits alive: peak logits memory is
[N, chunk, V].
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlcot.models.transformer import split_adapted
from rlcot.rl.packing import (PACKING_MODES, needed_positions, packed_inputs, plan_packing,
                              take_queries, to_host, unpack)
from rlcot.rl.losses import entropy_from_logits
from rlcot.sharding import (TRAIN_RULES, logical_to_spec, state_shardings,
                            with_activation_sharding)


def _chunk_stats(logits_fn: Callable[[jax.Array], jax.Array], h_NxCxD: jax.Array,
                 targets_NxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits_NxCxV = logits_fn(h_NxCxD).astype(jnp.float32)
    lse_NxC = jax.nn.logsumexp(logits_NxCxV, axis=-1)
    # Select the target logit with a compare-and-sum (not a gather): it stays a local reduction
    # when the vocabulary axis is sharded over devices.
    vocab_V = jnp.arange(logits_NxCxV.shape[-1], dtype=targets_NxC.dtype)
    hit_NxCxV = vocab_V == targets_NxC[..., None]
    target_NxC = jnp.sum(jnp.where(hit_NxCxV, logits_NxCxV, 0.0), axis=-1)
    return target_NxC - lse_NxC, entropy_from_logits(logits_NxCxV)


def chunked_stats(logits_fn: Callable[[jax.Array], jax.Array], h_NxTxD: jax.Array,
                  targets_NxT: jax.Array, *, chunk: int) -> tuple[jax.Array, jax.Array]:
    """(logp_NxT, entropy_NxT) of targets_NxT under the logits of h_NxTxD (hidden state t
    predicts target t), logits made `chunk` positions at a time and rematerialised."""
    N, T, D = h_NxTxD.shape
    if chunk < 1:
        raise ValueError(f"logprob chunk must be >= 1, got {chunk}")
    chunk = min(chunk, max(T, 1))
    n_chunks = -(-T // chunk)
    pad = n_chunks * chunk - T
    h_NxTxD = jnp.pad(h_NxTxD, ((0, 0), (0, pad), (0, 0)))
    tgt_NxT = jnp.pad(targets_NxT.astype(jnp.int32), ((0, 0), (0, pad)))
    h_KxNxCxD = h_NxTxD.reshape(N, n_chunks, chunk, D).swapaxes(0, 1)
    tgt_KxNxC = tgt_NxT.reshape(N, n_chunks, chunk).swapaxes(0, 1)

    # Rematerialised: the backward pass recomputes a chunk's logits instead of storing them.
    stats = jax.checkpoint(lambda h, t: _chunk_stats(logits_fn, h, t), prevent_cse=False)
    _, (logp_KxNxC, ent_KxNxC) = jax.lax.scan(lambda c, xs: (c, stats(*xs)), None,
                                              (h_KxNxCxD, tgt_KxNxC))
    logp_NxT = logp_KxNxC.swapaxes(0, 1).reshape(N, -1)[:, :T]
    ent_NxT = ent_KxNxC.swapaxes(0, 1).reshape(N, -1)[:, :T]
    return logp_NxT, ent_NxT


def logprobs_from_hidden(logits_fn: Callable[[jax.Array], jax.Array], h_NxLxD: jax.Array,
                         tokens_NxL: jax.Array, valid_NxL: jax.Array, *,
                         chunk: int) -> tuple[jax.Array, jax.Array]:
    """(logp_NxL, entropy_NxL) aligned as in the module docstring, from final hidden states."""
    N = h_NxLxD.shape[0]
    # predictions: hidden t -> token t + 1
    logp_NxT, ent_NxT = chunked_stats(logits_fn, h_NxLxD[:, :-1], tokens_NxL[:, 1:],
                                      chunk=chunk)
    zeros_Nx1 = jnp.zeros((N, 1), jnp.float32)
    defined_NxL = jnp.concatenate([zeros_Nx1 > 0, valid_NxL[:, 1:] & valid_NxL[:, :-1]], axis=1)
    logp_NxL = jnp.where(defined_NxL, jnp.concatenate([zeros_Nx1, logp_NxT], axis=1), 0.0)
    ent_NxL = jnp.where(defined_NxL, jnp.concatenate([zeros_Nx1, ent_NxT], axis=1), 0.0)
    return logp_NxL, ent_NxL


def token_logprobs(graphdef: nnx.GraphDef, params: nnx.State, tokens_NxL: jax.Array,
                   positions_NxL: jax.Array, valid_NxL: jax.Array, *, chunk: int = 512,
                   remat: bool = False) -> tuple[jax.Array, jax.Array]:
    """(logp_NxL, entropy_NxL) of the policy; see the module docstring for the alignment.
    remat: rematerialise each decoder layer in the backward pass (activation memory)."""
    if tokens_NxL.ndim != 2 or tokens_NxL.shape[1] < 2:
        raise ValueError(f"tokens must be [N, L] with L >= 2, got shape {tokens_NxL.shape}")
    valid_NxL = valid_NxL.astype(bool)
    params, lora = split_adapted(params)  # LoRA (rlcot.models.lora.Adapted): base + adapters
    model = nnx.merge(graphdef, params)
    h_NxLxD, _ = model.hidden(tokens_NxL, positions_NxL, valid_NxL, remat=remat, lora=lora)
    return logprobs_from_hidden(model.logits, h_NxLxD, tokens_NxL, valid_NxL, chunk=chunk)


def packed_token_logprobs(graphdef: nnx.GraphDef, params: nnx.State, tokens_SxL: jax.Array,
                          positions_SxL: jax.Array, valid_SxL: jax.Array, pack: dict, *,
                          chunk: int = 512, remat: bool = False,
                          constrain: Callable[[jax.Array], jax.Array] | None = None
                          ) -> tuple[jax.Array, jax.Array]:
    """`token_logprobs` over one micro-batch's packed rows (rl.packing): the decoder runs on
    [P, C] packed slots and the logits on the [P, Q] query slots only; (logp_SxL, entropy_SxL)
    come back in the group's padded layout, equal to `token_logprobs` where the plan computed
    them and 0 elsewhere. constrain: applied to the packed [P, C] inputs (row sharding)."""
    tokens_PxC, positions_PxC, valid_PxC, seg_PxC = packed_inputs(
        tokens_SxL, positions_SxL, valid_SxL, pack)
    if constrain is not None:
        tokens_PxC, positions_PxC, valid_PxC, seg_PxC = (
            constrain(a) for a in (tokens_PxC, positions_PxC, valid_PxC, seg_PxC))
    params, lora = split_adapted(params)
    model = nnx.merge(graphdef, params)
    h_PxCxD, _ = model.hidden(tokens_PxC, positions_PxC, valid_PxC, remat=remat,
                              segment_ids_BxT=seg_PxC, lora=lora)
    query_PxQ = pack["query"]
    C = tokens_PxC.shape[1]
    # Query slot j predicts the token in slot j + 1 (same segment by construction).
    tgt_PxQ = take_queries(tokens_PxC, jnp.minimum(query_PxQ + 1, C - 1))
    logp_PxQ, ent_PxQ = chunked_stats(model.logits, take_queries(h_PxCxD, query_PxQ), tgt_PxQ,
                                      chunk=chunk)
    return unpack(logp_PxQ, pack["back"]), unpack(ent_PxQ, pack["back"])


def batch_sharding(mesh: Mesh, rules: Any = TRAIN_RULES) -> NamedSharding:
    """Rows over the batch mesh axes ((data, fsdp) in training), everything else replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",), rules))


def row_shards(mesh: Mesh | None, rules: Any = TRAIN_RULES) -> int:
    """How many ways rows are split (the product of the batch mesh axes); 1 without a mesh."""
    if mesh is None:
        return 1
    spec = logical_to_spec(("batch",), rules, mesh=mesh)[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else spec
    return math.prod(mesh.shape[a] for a in axes)


def sharded_forward(fn: Callable, params_like: Any, mesh: Mesh | None,
                    rules: Any = TRAIN_RULES, compiler_options: dict | None = None) -> Callable:
    """`jax.jit(fn)` for `fn(params, *per_row_arrays) -> per_row_arrays`, with parameters in
    their training shardings and rows over the batch axes (no mesh: plain jit).
    compiler_options: XLA options for this function only (see make_update_step)."""
    if mesh is None:
        return jax.jit(fn, compiler_options=compiler_options)
    params_sh = state_shardings(params_like, mesh, rules)
    rows = batch_sharding(mesh, rules)
    fn = with_activation_sharding(fn, mesh, rules)
    return jax.jit(fn, in_shardings=(params_sh, rows, rows, rows), out_shardings=rows,
                   compiler_options=compiler_options)


def make_logprob_fn(graphdef: nnx.GraphDef, params_like: Any, *, mesh: Mesh | None = None,
                    rules: Any = TRAIN_RULES, chunk: int = 512,
                    compiler_options: dict | None = None, packing: str = "none",
                    pack_width: int | None = None) -> Callable:
    """`(params, tokens_NxL, positions_NxL, valid_NxL, need_NxL=None) -> logp_NxL` for the
    old-policy and reference log-probs, in the update step's layout. params_like: the
    parameters (or their abstract state) the function will be called with; N must divide by
    the batch shards.

    packing "none": one jitted pass over the padded rows; need_NxL is ignored and every defined
    position is computed. "pack" / "trim" (rl.packing): the host plans packed rows from
    valid_NxL and need_NxL (the positions the caller reads, e.g. the completion mask; None: all
    defined positions), the jitted pass (compiled once per bucketed shape) runs on them only,
    and logp_NxL is 0 off the needed positions."""
    def padded_fn(params, tokens_NxL, positions_NxL, valid_NxL):
        return token_logprobs(graphdef, params, tokens_NxL, positions_NxL, valid_NxL,
                              chunk=chunk)[0]

    def packed_fn(params, tokens_NxL, positions_NxL, valid_NxL, pack, constrain):
        return packed_token_logprobs(graphdef, params, tokens_NxL, positions_NxL, valid_NxL,
                                     pack, chunk=chunk, constrain=constrain)[0]
    return per_token_pass(padded_fn, packed_fn, params_like, mesh, rules, compiler_options,
                          packing, pack_width)


def per_token_pass(padded_fn: Callable, packed_fn: Callable, params_like: Any,
                   mesh: Mesh | None, rules: Any, compiler_options: dict | None, packing: str,
                   pack_width: int | None) -> Callable:
    """`(params, tokens, positions, valid, need=None) -> per-token [N, L]` for a forward pass
    of the update step's layout (log-probs, values): packing "none" jits
    `padded_fn(params, tokens, positions, valid)` over the padded rows (need is ignored);
    "pack" / "trim" jit `packed_fn(params, tokens, positions, valid, pack, constrain)` on
    one group's packing plan (`constrain` pins [N, ...] arrays to the batch sharding, or is
    None without a mesh), made on the host from valid and need (see `packed_pass`)."""
    if packing not in PACKING_MODES:
        raise ValueError(f"packing must be one of {PACKING_MODES}, got {packing!r}")
    if packing == "none":
        padded = sharded_forward(padded_fn, params_like, mesh, rules, compiler_options)
        return lambda params, tokens, positions, valid, need=None: padded(
            params, tokens, positions, valid)
    constrain = None
    if mesh is not None:
        rows = batch_sharding(mesh, rules)
        constrain = lambda a: jax.lax.with_sharding_constraint(a, rows)  # noqa: E731

    def fn(params, tokens_NxL, positions_NxL, valid_NxL, pack):
        pack = jax.tree.map(lambda a: a[0, 0], pack)  # one group, one micro-batch
        return packed_fn(params, tokens_NxL, positions_NxL, valid_NxL, pack, constrain)
    return packed_pass(fn, params_like, mesh, rules, compiler_options, packing, pack_width)


def packed_pass(fn: Callable, params_like: Any, mesh: Mesh | None, rules: Any,
                compiler_options: dict | None, packing: str,
                pack_width: int | None) -> Callable:
    """`(params, tokens, positions, valid, need=None) -> per-token [N, L]` running the jitted
    `fn(params, tokens, positions, valid, pack)` on a packing plan made on the host."""
    if mesh is None:
        jitted = jax.jit(fn, compiler_options=compiler_options)
    else:
        rows = batch_sharding(mesh, rules)
        jitted = jax.jit(with_activation_sharding(fn, mesh, rules),
                         in_shardings=(state_shardings(params_like, mesh, rules), rows,
                                           rows, rows, NamedSharding(mesh, PartitionSpec())),
                         out_shardings=rows, compiler_options=compiler_options)
    shards = row_shards(mesh, rules)
    known: set = set()   # shapes compiled so far: later plans reuse them when they fit

    def call(params, tokens_NxL, positions_NxL, valid_NxL, need_NxL=None):
        valid = to_host(valid_NxL).astype(bool)
        need = needed_positions(valid, None if need_NxL is None else to_host(need_NxL))
        plan = plan_packing(valid[None], need[None], mode=packing, row_multiple=shards,
                            width=pack_width, known=known)
        known.add(plan.shape)
        return jitted(params, tokens_NxL, positions_NxL, valid_NxL, plan.arrays())
    call.jitted = jitted
    call.known = known  # saved with checkpoints: a resumed run plans as the first run did
    return call
