"""Reward pool worker: runs item functions in its main thread, where signal-based timers work.

Started by rlcot.rewards.pool as `python -m rlcot.rewards._worker READ_FD WRITE_FD [MODULE...]`.
It imports only the standard library (plus the MODULEs to preload), never jax.
"""

from __future__ import annotations

import contextlib
import importlib
import pickle
import signal
import sys
import threading
import traceback
from multiprocessing.connection import Connection


class ItemTimeout(BaseException):
    """Raised inside an item that ran past its time limit (BaseException: `except Exception`
    clauses in library code must not swallow it)."""


@contextlib.contextmanager
def time_guard(seconds: float | None):
    """Interrupts the block with ItemTimeout after `seconds` (main thread only; else no-op).

    Yields True when the guard is armed. Pure-Python code is interrupted between bytecodes; a
    single long C call (a huge bignum power) is not, which is why the pool also kills workers.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield False
        return

    def on_alarm(signum, frame):
        raise ItemTimeout(f"item exceeded {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_item(fn, args: tuple, timeout_s: float | None) -> tuple[str, object, object]:
    """Returns ('ok', value, detail), ('timeout', None, message) or ('error', None, message)."""
    try:
        with time_guard(timeout_s):
            value, detail = fn(*args)
        return "ok", value, detail
    except ItemTimeout as e:
        return "timeout", None, str(e)
    except Exception:  # noqa: BLE001 - an item's failure is data, reported to the parent
        return "error", None, traceback.format_exc(limit=4)[-2000:]


def main(argv: list[str]) -> None:
    # The parent's terminal Ctrl-C must not kill workers mid-item; the parent shuts them down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inbox = Connection(int(argv[0]), writable=False)
    outbox = Connection(int(argv[1]), readable=False)
    for module in argv[2:]:
        importlib.import_module(module)
    outbox.send(("ready", None, None, None))
    while True:
        try:
            message = inbox.recv_bytes()
        except (EOFError, OSError):
            return  # parent gone
        if not message:
            return  # orderly shutdown
        task_id = None
        try:
            task_id, fn, args, timeout_s = pickle.loads(message)
            status, value, detail = run_item(fn, args, timeout_s)
        except Exception:  # noqa: BLE001 - e.g. an unpicklable or unimportable function
            status, value, detail = "error", None, traceback.format_exc(limit=4)[-2000:]
        try:
            outbox.send((task_id, status, value, detail))
        except Exception:  # noqa: BLE001 - the result itself could not be pickled
            outbox.send((task_id, "error", None, "unpicklable result"))


if __name__ == "__main__":
    main(sys.argv[1:])
