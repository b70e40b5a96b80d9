"""Checkpoints in the workdir (orbax): train state pytree + JSON (data position, RNG, counters).

Any pytree (NNX State, optax states, dataclasses) is stored as a flat dict keyed by its tree
paths, so restoring needs only an abstract version of the same structure (shapes, dtypes and
shardings), which places every array straight into its sharding.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

log = logging.getLogger(__name__)


def _flatten(tree: Any) -> tuple[dict[str, Any], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    flat = {jax.tree_util.keystr(path): leaf for path, leaf in leaves}
    if len(flat) != len(leaves):
        raise ValueError("pytree has leaves with colliding path names; cannot checkpoint it")
    return flat, treedef


def _abstract_leaf(x: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    x = np.asarray(x)
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


class Checkpointer:
    """Saves and restores (step, state pytree, JSON metadata) under `workdir/checkpoints`.

    A checkpoint becomes visible only once completely written (orbax commits by rename), so a
    run killed mid-save resumes from the previous one.
    """

    def __init__(self, workdir: str | Path, *, max_to_keep: int = 2, async_save: bool = False):
        import orbax.checkpoint as ocp
        self._ocp = ocp
        self.directory = Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        ocp = self._ocp
        flat, _ = _flatten(state)
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(flat), meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, abstract_state: Any, step: int | None = None, *, prefix: str = ""
                ) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, meta) of the given or latest checkpoint, or None when there is none.

        abstract_state: the state's structure; leaves may be arrays (their shapes, dtypes and
        shardings are used) or jax.ShapeDtypeStruct. prefix: restore only the part of the
        saved state under this path (e.g. '.params' of a TrainState), shaped as abstract_state.
        """
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        flat, treedef = _flatten(abstract_state)
        flat = {prefix + k: v for k, v in flat.items()}
        target = {k: _abstract_leaf(v) for k, v in flat.items()}
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(target, restore_args=restore_args,
                                             partial_restore=bool(prefix)),
                meta=ocp.args.JsonRestore()))
        except ValueError as e:
            raise ValueError(f"checkpoint {self.directory}/{step} does not match the current "
                             f"train state (was the model or optimizer config changed?): {e}"
                             ) from e
        got = restored["state"]
        missing = [k for k in flat if k not in got]
        if missing:
            raise ValueError(f"checkpoint {self.directory}/{step} has no {missing[:5]}")
        state = jax.tree_util.tree_unflatten(treedef, [got[k] for k in flat])
        log.info("restored checkpoint %s/%d", self.directory, step)
        return step, state, dict(restored["meta"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
