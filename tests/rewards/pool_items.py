"""Item functions for the pool tests (importable by worker processes; standard library only)."""

import os
import signal
import threading
import time


def square(x):
    return float(x * x), {"x": x}


def sleep_then_one(seconds):
    time.sleep(seconds)
    return 1.0, {}


def raise_value_error(x):
    raise ValueError(f"bad item {x}")


def exit_worker(code):
    os._exit(code)


def stuck_ignoring_alarm(seconds):
    # Stands for a long C call that never returns to the interpreter: the worker's own SIGALRM
    # guard cannot stop it, only the dispatcher's hard kill can.
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(seconds)
    return 1.0, {}


def pid_and_thread(_):
    return float(os.getpid()), {"main_thread": threading.current_thread() is threading.main_thread()}


def bad_return(_):
    return "not a pair"
