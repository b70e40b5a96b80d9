"""Preemption: SIGTERM or SIGINT asks the running stage to stop cleanly; the command then exits
with EXIT_PREEMPTED and the same command resumes exactly.

    with preempt.on_signals():          # rlcot.study.run, around the stages
        ...
        if preempt.stop_requested():    # a stage driver, at a step boundary
            <write a checkpoint>
            raise preempt.Preempted(stage, step)

The first signal only records the request: each driver stops at its next step boundary (the
RL loop also right after a rollout, abandoning that step before its update), writes a
checkpoint there and raises Preempted, which the study passes on without marking the stage
finished and the command turns into exit status 75. A second signal stops at once the way the
signal would have without this handler (SIGINT: KeyboardInterrupt; SIGTERM: the process ends),
leaving the last checkpoint written to resume from.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator

log = logging.getLogger(__name__)

# EX_TEMPFAIL of sysexits.h ("try again later"): stopped on request after a checkpoint; the
# same command resumes. A job scheduler can requeue on it.
EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)

_requested: str | None = None  # the name of the first signal received, while handlers are in


class Preempted(Exception):
    """A stage stopped on request at a step boundary, after writing its checkpoint."""

    def __init__(self, where: str, step: int | None = None, reason: str | None = None):
        self.where, self.step = where, step
        self.reason = reason or _requested or "a stop request"
        at = "" if step is None else f" at step {step}"
        super().__init__(f"{where} stopped{at} on {self.reason}; run the same command again "
                         f"to resume")


def stop_requested() -> bool:
    """Whether a stop was requested. On several hosts, true on all of them when any host got a
    signal (every host must stop at the same step), so drivers call it at the same points on
    every host."""
    local = _requested is not None
    import jax
    if jax.process_count() == 1:
        return local
    import numpy as np
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.array(local))))


def request_stop(reason: str = "request") -> None:
    """Records a stop request as a signal would (for callers that stop a run themselves)."""
    global _requested
    if _requested is None:
        _requested = reason


@contextlib.contextmanager
def on_signals(signals: tuple[signal.Signals, ...] = SIGNALS) -> Iterator[None]:
    """Within the block, the first of `signals` requests a stop (see the module docstring) and
    a second one acts as it would have outside. Outside the main thread (where Python cannot
    handle signals) and inside another such block it does nothing more."""
    global _requested, _previous
    if (threading.current_thread() is not threading.main_thread()
            or any(signal.getsignal(s) is _on_signal for s in signals)):
        yield
        return
    _previous = {s: signal.getsignal(s) for s in signals}
    _requested = None
    for s in signals:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        _restore()
        _requested = None


_previous: dict[signal.Signals, object] = {}


def _restore() -> None:
    for s, h in _previous.items():
        signal.signal(s, h)


def _on_signal(signum: int, frame: object) -> None:  # noqa: ARG001
    global _requested
    name = signal.Signals(signum).name
    if _requested is None:
        _requested = name
        log.warning("%s: stopping at the next step boundary after writing a checkpoint (exit "
                    "status %d; the same command resumes). Send it again to stop now without "
                    "one.", name, EXIT_PREEMPTED)
        return
    _restore()
    signal.raise_signal(signum)
