"""Bounded worker-process pool for per-item reward work, with per-item time limits and fallbacks.

Workers are fresh interpreters (`python -m rlcot.rewards._worker`, exec'd like the 'spawn'
start method, but without re-importing the parent's __main__, so a training script's `import
jax` never runs in them). Each item runs in a worker's main thread under a SIGALRM guard; if
that does not bring it back (a long C call), the dispatcher kills the worker at the hard
deadline and starts a replacement. A failed or timed-out item gets the caller's fallback value
and is counted; nothing an item does can raise into, or stall, the caller.

`submit` returns at once, so the training loop can score batch t while the device generates
batch t+1. `num_workers=0` runs items inline in the calling thread (debugging): on the main
thread the SIGALRM guard still applies, on any other thread items run without a time limit.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

import numpy as np

from rlcot.rewards._worker import run_item

ItemFn = Callable[..., tuple[float, dict]]


@dataclasses.dataclass
class ItemResults:
    values: np.ndarray  # float32 [N]
    details: list[dict]  # per item; 'status' is 'ok', 'timeout' or 'error'
    n_timeouts: int
    n_errors: int
    elapsed_s: float


class PoolJob:
    """Handle on one submitted batch of items; `result()` blocks until every item is settled."""

    def __init__(self, n: int, fallback: float):
        self._values = np.full(n, fallback, np.float32)
        self._details: list[dict] = [{} for _ in range(n)]
        self._fallback = fallback
        self._left = n
        self._done = threading.Event()
        self._t0 = time.monotonic()
        self._elapsed = 0.0
        if n == 0:
            self._done.set()

    def _settle(self, i: int, status: str, value: Any, detail: Any) -> None:
        if status == "ok":
            self._values[i] = np.float32(value)
            self._details[i] = dict(detail)
            self._details[i].setdefault("status", "ok")
        else:
            self._details[i] = {"status": status, "message": str(detail)[-2000:]}
        self._left -= 1
        if self._left == 0:
            self._elapsed = time.monotonic() - self._t0
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> ItemResults:
        if not self._done.wait(timeout):
            raise TimeoutError(f"pool job not finished after {timeout} s ({self._left} items left)")
        statuses = [d.get("status", "ok") for d in self._details]
        return ItemResults(self._values.copy(), self._details, statuses.count("timeout"),
                           statuses.count("error"), self._elapsed)


@dataclasses.dataclass
class _Task:
    job: PoolJob
    index: int
    payload: bytes
    timeout_s: float


def _worker_env() -> dict[str, str]:
    # Workers import item functions by module name: give them the parent's import path.
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths))


class _Worker:
    def __init__(self, preload: Sequence[str]):
        parent_r, child_w = os.pipe()
        child_r, parent_w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlcot.rewards._worker", str(child_r), str(child_w), *preload],
            pass_fds=(child_r, child_w), stdin=subprocess.DEVNULL, start_new_session=True,
            env=_worker_env())
        os.close(child_r)
        os.close(child_w)
        self.inbox = Connection(parent_r, writable=False)
        self.outbox = Connection(parent_w, readable=False)
        self.ready = False
        self.task: _Task | None = None
        self.deadline = float("inf")
        self.started = time.monotonic()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.inbox.close()
        self.outbox.close()


def _shutdown(workers: list[_Worker], wake_w: int) -> None:
    for w in workers:
        try:
            w.outbox.send_bytes(b"")
        except OSError:
            pass
    deadline = time.monotonic() + 2.0
    for w in workers:
        try:
            w.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        w.kill()
    try:
        os.write(wake_w, b"x")
    except OSError:
        pass


class RewardPool:
    """`num_workers` worker processes fed by one dispatcher thread."""

    def __init__(self, num_workers: int, *, preload: Sequence[str] = (), hard_grace_s: float = 2.0,
                 start_timeout_s: float = 120.0):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.num_workers = num_workers
        self.preload = tuple(preload)
        self.hard_grace_s = hard_grace_s
        self.start_timeout_s = start_timeout_s
        self.n_restarts = 0
        self._queue: collections.deque[_Task] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False
        self._broken: str | None = None
        self._workers: list[_Worker] = []
        self._wake_r, self._wake_w = os.pipe()
        self._wake = Connection(self._wake_r, writable=False)  # owns (and closes) _wake_r
        if num_workers:
            self._workers = [_Worker(self.preload) for _ in range(num_workers)]
            self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._wake_w)
            self._thread = threading.Thread(target=self._dispatch, name="reward-pool", daemon=True)
            self._thread.start()

    # -- public API ---------------------------------------------------------------------------
    def submit(self, fn: ItemFn, items: Sequence[tuple], *, timeout_s: float,
               fallback: float) -> PoolJob:
        """Schedules `fn(*item)` for every item; fn returns (value, detail) and must be a
        module-level function (workers import it by name)."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        job = PoolJob(len(items), fallback)
        if not self.num_workers:
            for i, args in enumerate(items):
                job._settle(i, *run_item(fn, tuple(args), timeout_s))
            return job
        tasks = [_Task(job, i, pickle.dumps((i, fn, tuple(args), timeout_s)), timeout_s)
                 for i, args in enumerate(items)]
        with self._lock:
            if self._closed or self._broken:
                raise RuntimeError(f"reward pool is closed or broken: {self._broken}")
            self._queue.extend(tasks)
        os.write(self._wake_w, b"x")
        return job

    def map(self, fn: ItemFn, items: Sequence[tuple], *, timeout_s: float,
            fallback: float) -> ItemResults:
        return self.submit(fn, items, timeout_s=timeout_s, fallback=fallback).result()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.num_workers:
            os.write(self._wake_w, b"x")
            self._thread.join()
            self._finalizer()
        self._wake.close()
        os.close(self._wake_w)

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- dispatcher thread --------------------------------------------------------------------
    def _replace(self, w: _Worker, status: str, message: str) -> None:
        task, w.task = w.task, None
        w.kill()
        if task is None and not w.ready:
            self._fail_all(f"reward worker died while starting (exit {w.proc.returncode}); "
                           f"preload={self.preload}")
        if self._broken:
            self._workers.remove(w)
        else:
            self.n_restarts += 1
            self._workers[self._workers.index(w)] = _Worker(self.preload)
        if task is not None:  # settle last: a waiting caller then sees the pool's new state
            task.job._settle(task.index, status, None, message)

    def _fail_all(self, reason: str, in_flight: bool = False) -> None:
        self._broken = self._broken or reason
        with self._lock:
            pending, self._queue = list(self._queue), collections.deque()
        if in_flight:
            pending += [w.task for w in self._workers if w.task is not None]
            for w in self._workers:
                w.task = None
        for t in pending:
            t.job._settle(t.index, "error", None, reason)

    def _dispatch(self) -> None:
        try:
            self._dispatch_loop()
        except BaseException as e:  # a dispatcher bug must fail jobs loudly, never hang them
            self._fail_all(f"reward pool dispatcher crashed: {e!r}", in_flight=True)
            raise
        self._fail_all("reward pool closed", in_flight=True)

    def _dispatch_loop(self) -> None:
        wake = self._wake
        while not self._closed:
            now = time.monotonic()
            for w in list(self._workers):
                if w.task is None and w.ready:
                    with self._lock:
                        w.task = self._queue.popleft() if self._queue else None
                    if w.task is not None:
                        w.deadline = now + w.task.timeout_s + self.hard_grace_s
                        try:
                            w.outbox.send_bytes(w.task.payload)
                        except OSError:
                            self._replace(w, "error", "worker died before taking the item")
                elif not w.ready and now - w.started > self.start_timeout_s and not self._broken:
                    self._fail_all(f"reward worker not ready after {self.start_timeout_s} s")
            deadline = min((w.deadline for w in self._workers if w.task), default=None)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if any(not w.ready for w in self._workers):
                timeout = 1.0 if timeout is None else min(timeout, 1.0)
            ready = wait([w.inbox for w in self._workers] + [wake], timeout)
            if wake in ready:
                os.read(self._wake_r, 1 << 16)
            for w in list(self._workers):
                if w.inbox in ready:
                    self._receive(w)
            now = time.monotonic()
            for w in list(self._workers):
                if w.task is not None and now > w.deadline:
                    self._replace(w, "timeout", f"hard timeout after {w.task.timeout_s} s "
                                                f"(+{self.hard_grace_s} s grace); worker killed")

    def _receive(self, w: _Worker) -> None:
        try:
            task_id, status, value, detail = w.inbox.recv()
        except (EOFError, OSError, pickle.UnpicklingError) as e:
            self._replace(w, "error", f"worker died: {e!r} (exit code {w.proc.poll()})")
            return
        if task_id == "ready":
            w.ready = True
        elif w.task is not None and task_id == w.task.index:
            task, w.task, w.deadline = w.task, None, float("inf")
            task.job._settle(task.index, status, value, detail)
