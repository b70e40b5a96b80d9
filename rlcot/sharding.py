"""Device meshes and logical-axis sharding rules (one rules table per phase)."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axis (or tuple of mesh axes, or None = replicated).
# Training: parameters FSDP-sharded on their embedding dim and tensor-parallel on heads/mlp/vocab.
TRAIN_RULES: Mapping[str, Any] = {
    "batch": ("data", "fsdp"),
    "length": None,
    "layers": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "cache_length": None,
}

# Sampling: no FSDP on parameters (each decode step would all-gather every weight); batch over
# (data, fsdp), heads over tensor. The KV cache follows the batch and kv-head axes.
SAMPLE_RULES: Mapping[str, Any] = {**TRAIN_RULES, "embed": None}

log = logging.getLogger(__name__)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one axis may be -1 for 'the rest of the devices'."""
    devices = list(jax.devices() if devices is None else devices)
    shape = [data, fsdp, tensor]
    if sum(s == -1 for s in shape) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got (data, fsdp, tensor)={tuple(shape)}")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh axis sizes must be positive or -1, got {tuple(shape)}")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into (mesh.data, mesh.fsdp, "
                             f"mesh.tensor)={tuple(shape)}: {len(devices)} is not a multiple of "
                             f"{known}{_process_note(devices)}")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh (mesh.data, mesh.fsdp, mesh.tensor)={tuple(shape)} needs "
                         f"{math.prod(shape)} devices, have {len(devices)}"
                         f"{_process_note(devices)}; set one axis to -1 for the rest")
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                         devices=devices)


def _process_note(devices: Sequence[Any]) -> str:
    """' (N processes x M devices)' when the devices span several processes."""
    processes = {getattr(d, "process_index", 0) for d in devices}
    if len(processes) < 2:
        return ""
    return f" ({len(processes)} processes x {len(devices) // len(processes)} devices)"


def _mesh_axes_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(logical_axes: Sequence[str | None], rules: Mapping[str, Any],
                    shape: Sequence[int] | None = None, mesh: Mesh | None = None) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec.

    With `shape` and `mesh`, a dimension that its mesh axes do not divide is replicated instead
    (e.g. SmolLM2's 3 KV heads on a tensor axis of 2), and a mesh axis is used at most once.
    """
    used: set[str] = set()
    spec = []
    for i, name in enumerate(logical_axes):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
        axes = rules[name]
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes_t = tuple(a for a in axes_t if a not in used)
        if mesh is not None:
            axes_t = tuple(a for a in axes_t if mesh.shape[a] > 1)
        if shape is not None and mesh is not None and axes_t:
            size = _mesh_axes_size(mesh, axes_t)
            if shape[i] % size:
                log.debug("replicating dim %d (%s, size %d): not divisible by %s=%d",
                          i, name, shape[i], axes_t, size)
                axes_t = ()
        used.update(axes_t)
        spec.append(None if not axes_t else axes_t[0] if len(axes_t) == 1 else axes_t)
    return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, logical_axes: Sequence[str | None], rules: Mapping[str, Any],
                   shape: Sequence[int] | None = None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, rules, shape, mesh))


# ---- Activation shardings inside a traced function ----
# Parameters alone leave XLA's sharding propagation free to follow the FSDP-sharded embedding
# dimension into the activations: measured with libtpu (jax 0.10.2, v5e, fsdp 8), the update
# step of a Qwen2.5-0.5B-shaped model then computed every fsdp group row's logits on each
# chip (21 GB of temporaries where one chip's rows need a few). Pinning the decoder's
# activations to the batch axes (MaxText's activation logical axes) makes XLA gather the
# weights instead, the FSDP pattern. The decoder calls `constrain` at the residual stream, the
# MLP's hidden units and the logits; it is the identity unless a jitted function was wrapped
# by `with_activation_sharding` (the update step and the per-token passes of training).
_ACTIVATIONS: contextvars.ContextVar = contextvars.ContextVar("rlcot_activation_sharding",
                                                             default=None)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """`x` pinned to the sharding of its logical axes under the active activation rules (see
    `with_activation_sharding`); unchanged outside one."""
    ctx = _ACTIVATIONS.get()
    if ctx is None:
        return x
    mesh, rules = ctx
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, logical_to_spec(logical_axes, rules, x.shape, mesh)))


def with_activation_sharding(fn: Any, mesh: Mesh | None, rules: Mapping[str, Any]) -> Any:
    """`fn` tracing with the decoder's activations pinned by `rules` on `mesh` (`fn` itself
    without a mesh). Wrap the function before `jax.jit`: tracing runs inside the context."""
    if mesh is None:
        return fn

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        token = _ACTIVATIONS.set((mesh, rules))
        try:
            return fn(*args, **kwargs)
        finally:
            _ACTIVATIONS.reset(token)
    return traced


def _is_var(x: Any) -> bool:
    from flax import nnx
    return isinstance(x, nnx.Variable)


def state_shardings(state: Any, mesh: Mesh, rules: Mapping[str, Any]) -> Any:
    """NamedShardings for an NNX state whose Variables carry an `axes` metadata tuple."""
    def one(v):
        axes = getattr(v, "axes", None)
        shape = v.get_value().shape if _is_var(v) else np.shape(v)
        if axes is None:
            axes = (None,) * len(shape)
        if len(axes) != len(shape):
            raise ValueError(f"logical axes {axes} do not match shape {shape}")
        return named_sharding(mesh, axes, rules, shape)
    shardings = jax.tree.map(one, state, is_leaf=_is_var)
    return shardings


def shard_state(state: Any, mesh: Mesh, rules: Mapping[str, Any]) -> Any:
    """Places every array of an NNX state into its sharding (device_put, no host round trip)."""
    return jax.device_put(state, state_shardings(state, mesh, rules))


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape, validated; -1 means 'the rest of the devices'."""
    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def __post_init__(self):
        for name in ("data", "fsdp", "tensor"):
            v = getattr(self, name)
            if not isinstance(v, int) or (v < 1 and v != -1):
                raise ValueError(f"mesh.{name} must be a positive int or -1, got {v!r}")

    def make(self, devices: Sequence[jax.Device] | None = None) -> Mesh:
        return make_mesh(self.data, self.fsdp, self.tensor, devices)
