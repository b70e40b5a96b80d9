"""Checkpoints in the workdir (orbax): train state pytree + JSON (data position, RNG, counters).

Any pytree (NNX State, optax states, dataclasses) is stored as a flat dict keyed by its tree
paths, so restoring needs only an abstract version of the same structure (shapes, dtypes and
shardings), which places every array straight into its sharding.

Damage: orbax makes a checkpoint visible only once completely written (a kill during a save
leaves a `STEP.orbax-checkpoint-tmp-*` directory, removed when the next run starts), and every
checkpoint also lists its files and their sizes (FILE_LIST), so a file truncated or deleted
later is found before anything is read. A resuming run (`restore(..., fallback=True)`) skips a
damaged or unreadable latest checkpoint for the newest good one, with a warning that says what
was wrong, and moves the damaged ones to `checkpoints.damaged/`; the run then repeats the
steps after the good one and ends as an uninterrupted run would.

Several processes: every process calls save and restore (orbax writes each process's shards,
process 0 the metadata, the JSON and the file list; they wait for each other where process 0
alone changes the directory).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

log = logging.getLogger(__name__)

FILE_LIST = "rlcot_files.json"  # {"files": {relative path: bytes}} of a checkpoint's files
TMP_MARK = ".orbax-checkpoint-tmp"
DAMAGED_DIR = "checkpoints.damaged"


class DamagedCheckpoint(RuntimeError):
    """No checkpoint could be restored: every one is incomplete, damaged or unreadable."""


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
    """Saves and restores (step, state pytree, JSON metadata) under `workdir/checkpoints`."""

    def __init__(self, workdir: str | Path, *, max_to_keep: int = 2):
        import orbax.checkpoint as ocp
        self._ocp = ocp
        self.directory = Path(workdir).absolute() / "checkpoints"
        unfinished = (sorted(p.name for p in self.directory.iterdir() if TMP_MARK in p.name)
                      if self.directory.is_dir() else [])
        if unfinished:
            log.warning("checkpoints %s: removing unfinished saves %s (the run was stopped "
                        "while writing them)", self.directory, unfinished)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False,
                                               cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        ocp = self._ocp
        flat, _ = _flatten(state)
        if step in self._manager.all_steps():  # e.g. a stage re-saving what a stopped run saved
            self._manager.delete(step)
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(flat), meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            _write_file_list(self.directory / str(step))
        _sync(f"checkpoint {step} listed")  # every process then sees the same checkpoint

    def check(self, step: int) -> str | None:
        """What is wrong with a checkpoint's files (None: nothing found). Checkpoints written
        without a file list (older ones) are not checked here, only by restoring them."""
        return _check_files(self.directory / str(step))

    def restore(self, abstract_state: Any, step: int | None = None, *, prefix: str = "",
                fallback: bool = False) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, meta) of the given or latest checkpoint, or None when there is none.

        abstract_state: the state's structure; leaves may be arrays (their shapes, dtypes and
        shardings are used) or jax.ShapeDtypeStruct. prefix: restore only the part of the
        saved state under this path (e.g. '.params' of a TrainState), shaped as abstract_state.
        A damaged checkpoint raises DamagedCheckpoint saying what is wrong; with `fallback`
        (resuming), the newest good one is restored instead, with a warning.
        """
        if step is not None:
            steps = [step]
        else:
            steps = sorted(self._manager.all_steps(), reverse=True)
            if not steps:
                return None
            if not fallback:
                steps = steps[:1]
        bad: list[tuple[int, str]] = []
        errors: list[Exception] = []
        for s in steps:
            why = self.check(s)
            if why is None:
                try:
                    out = self._restore(abstract_state, s, prefix)
                except Exception as e:  # noqa: BLE001 - any failure to read marks it unusable
                    first = (str(e).strip().splitlines() or [""])[0]
                    why = f"restoring it failed: {type(e).__name__}: {first[:300]}"
                    errors.append(e)
                else:
                    if bad:
                        self._set_aside(bad, s)
                    return out
            bad.append((s, why))
        if errors and len(errors) == len(bad) and all(isinstance(e, ValueError) for e in errors):
            raise errors[0]  # none fits the state: the config changed, not the files
        listed = "; ".join(f"step {s}: {why}" for s, why in bad)
        raise DamagedCheckpoint(f"no usable checkpoint in {self.directory} ({listed}); remove "
                                f"the directory to start the stage over")

    def _restore(self, abstract_state: Any, step: int, prefix: str
                 ) -> tuple[int, Any, dict[str, Any]]:
        ocp = self._ocp
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

    def _set_aside(self, bad: list[tuple[int, str]], good: int) -> None:
        """Moves damaged checkpoints out of the way (a resumed run saves those steps again)."""
        aside = self.directory.parent / DAMAGED_DIR
        if jax.process_index() == 0:
            aside.mkdir(exist_ok=True)
            for s, why in bad:
                dest = aside / str(s)
                n = 1
                while dest.exists():
                    dest, n = aside / f"{s}.{n}", n + 1
                shutil.move(self.directory / str(s), dest)
                (dest.parent / f"{dest.name}.why.txt").write_text(why + "\n")
        _sync("damaged checkpoints set aside")
        self._manager.reload()
        for s, why in bad:
            log.warning("checkpoint %s/%d is damaged: %s", self.directory, s, why)
        log.warning("resuming from step %d, the newest good checkpoint in %s (the damaged ones "
                    "are now in %s)", good, self.directory, aside)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _sync(name: str) -> None:
    """Several processes write one checkpoint (orbax: each its own shards, process 0 the
    metadata and the file list): they wait for each other where process 0 alone changes it."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def _write_file_list(step_dir: Path) -> None:
    files = {str(p.relative_to(step_dir)): p.stat().st_size
             for p in sorted(step_dir.rglob("*")) if p.is_file() and p.name != FILE_LIST}
    tmp = step_dir / (FILE_LIST + ".tmp")
    tmp.write_text(json.dumps({"files": files}, indent=0, sort_keys=True))
    os.replace(tmp, step_dir / FILE_LIST)


def _check_files(step_dir: Path) -> str | None:
    if not step_dir.is_dir():
        return f"{step_dir} is missing"
    path = step_dir / FILE_LIST
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"its file list {FILE_LIST} is unreadable ({type(e).__name__}: {e})"
    problems = []
    for rel, size in files.items():
        p = step_dir / rel
        if not p.is_file():
            problems.append(f"{rel} is missing")
        elif p.stat().st_size != size:
            problems.append(f"{rel} has {p.stat().st_size} bytes, was written with {size}")
    if len(problems) > 3:
        problems = problems[:3] + [f"and {len(problems) - 3} more files"]
    return "; ".join(problems) or None
