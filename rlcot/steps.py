"""The step loop of the supervised stage kinds (sft, dpo, reward_model): one place for what
they share around their own train step.

    loop = StepLoop(workdir, state, name=ctx.name, steps=steps, ...)   # restores the latest
    ...                                          # checkpoint (the one before, if damaged)
    params, opt_state = loop.run(step, summarize=..., extra=...)

`run` calls `step(i, params, opt_state) -> (params, opt_state, metrics)` for the steps left.
It writes a metrics row every `log_every` steps and at the end (`summarize` of the steps'
metrics since the last row, then "lr" and "time/train_s"; `extra(done, params)` adds rows of
its own, e.g. held-out metrics), and a checkpoint every `checkpoint_every` steps and at the end.
The metrics of the steps since the last row go into each checkpoint bit for bit, so a resumed
stage writes the rows an uninterrupted one does. A stop request (rlcot.preempt) is honoured at
each step boundary: a checkpoint there (none at step 0: nothing to keep), then Preempted.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np

log = logging.getLogger(__name__)

Metrics = Mapping[str, Any]


def mean_row(window: list[Metrics]) -> dict[str, float]:
    """Each metric's mean over the steps of a row."""
    return {k: float(np.mean([w[k] for w in window])) for k in window[0]}


def window_to_json(window: list[Metrics]) -> list[dict[str, list]]:
    """Per-step metrics as JSON: [value, dtype] pairs, which restore bit for bit."""
    return [{k: [np.asarray(v).item(), str(np.asarray(v).dtype)] for k, v in r.items()}
            for r in jax.device_get(window)]


def window_from_json(saved: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
    # Plain floats: a checkpoint written before the [value, dtype] form (dpo, reward_model).
    return [{k: np.asarray(v[0], dtype=v[1]) if isinstance(v, list) else np.float64(v)
             for k, v in r.items()} for r in saved]


class StepLoop:
    """See the module docstring. After construction, `start` is the first step to run (0, or
    the restored checkpoint's step), `state` the state to start from and `writer` the stage's
    metrics writer (process 0 writes; for rows before the loop, e.g. a step-0 evaluation)."""

    def __init__(self, workdir: Path, state: Any, *, name: str, steps: int, log_every: int,
                 checkpoint_every: int, keep_checkpoints: int,
                 schedule: Callable[[int], Any], keys: tuple[str, ...], primary: bool = True):
        from rlcot.checkpoint import Checkpointer
        from rlcot.workdir import MetricsWriter, Progress

        self.name, self.steps, self.schedule, self.keys = name, steps, schedule, keys
        self.log_every, self.checkpoint_every = log_every, checkpoint_every
        self.ckpt = Checkpointer(workdir, max_to_keep=keep_checkpoints)
        self.start, self.state, self.window = 0, state, []
        restored = self.ckpt.restore(state, fallback=True)  # a damaged latest: the one before
        if restored is not None:
            self.start, self.state, meta = restored
            self.window = window_from_json(meta.get("window", []))
            log.info("%s: resumed from step %d", name, self.start)
        self._saved = self.start if restored is not None else None
        self.writer = MetricsWriter(workdir, resume_step=self.start if restored else None,
                                    active=primary)
        self.progress = Progress(steps, initial=self.start, keys=keys, desc=name)

    def run(self, step: Callable[[int, Any, Any], tuple[Any, Any, Metrics]], *,
            summarize: Callable[[list[Metrics]], dict[str, float]] = mean_row,
            extra: Callable[[int, Any], dict[str, float]] | None = None) -> tuple[Any, Any]:
        """Runs the steps left; returns the final (params, opt_state), ready on the device."""
        from rlcot import preempt
        from rlcot.sft import OptimizerState

        params, opt_state = self.state.params, self.state.opt_state
        t_train = time.perf_counter()

        def save(done: int) -> None:
            self.ckpt.save(done, OptimizerState(params, opt_state),
                           {"step": done, "window": window_to_json(self.window)})
            self._saved = done

        for i in range(self.start, self.steps):
            if preempt.stop_requested():
                if i > 0 and self._saved != i:
                    save(i)
                self.close()
                raise preempt.Preempted(f"stage {self.name}", i)
            params, opt_state, metrics = step(i, params, opt_state)
            self.window.append(metrics)
            done = i + 1
            row: dict[str, float] = {}
            if done % self.log_every == 0 or done == self.steps:
                row = {**summarize(jax.device_get(self.window)),
                       "lr": float(self.schedule(i)),
                       "time/train_s": time.perf_counter() - t_train}
                self.window = []
            if extra is not None:
                row.update(extra(done, params))
            if row:
                self.writer.write(done, row)
                shown = {k: row[k] for k in self.keys if k in row}
                log.info("%s: step %d/%d %s", self.name, done, self.steps,
                         " ".join(f"{k} {v:.4f}" for k, v in shown.items()))
                self.progress.update(shown)
            else:
                self.progress.update({})
            if done % self.checkpoint_every == 0 or done == self.steps:
                save(done)
        self.close()
        return jax.block_until_ready((params, opt_state))

    def close(self) -> None:
        self.ckpt.close()
        self.writer.close()
        self.progress.close()
