"""Stop requests: the first SIGTERM / SIGINT is recorded for the drivers, a second one acts as
the signal would have; handlers come back afterwards."""

import os
import signal
import time

import pytest

from rlcot import preempt


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_first_signal_requests_a_stop(sig):
    before = {s: signal.getsignal(s) for s in preempt.SIGNALS}
    with preempt.on_signals():
        assert not preempt.stop_requested()
        os.kill(os.getpid(), sig)  # handled in this thread before kill returns to Python code
        assert preempt.stop_requested()
        err = preempt.Preempted("stage rl", 7)
        assert str(err) == (f"stage rl stopped at step 7 on {sig.name}; run the same command "
                            f"again to resume")
    assert not preempt.stop_requested()
    assert {s: signal.getsignal(s) for s in preempt.SIGNALS} == before


def _wait(done, seconds: float = 10.0) -> None:
    """Runs bytecode until done() (Python handlers run between bytecodes of the main thread;
    with other threads in the process the kernel may deliver the signal to one of them, and
    the main thread then runs the handler a little later)."""
    end = time.monotonic() + seconds
    while not done() and time.monotonic() < end:
        pass


def test_a_second_sigint_interrupts_at_once():
    # The contract: the second signal acts as the handler from before the block would. Start
    # from Python's own SIGINT handler whatever earlier tests in this process left installed.
    outside = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _second_sigint_raises()
    finally:
        signal.signal(signal.SIGINT, outside)


def _second_sigint_raises():
    with pytest.raises(KeyboardInterrupt):
        with preempt.on_signals():
            os.kill(os.getpid(), signal.SIGINT)
            # Two signals pending at once are one: the second is sent once the first is handled.
            _wait(preempt.stop_requested)
            assert preempt.stop_requested()
            os.kill(os.getpid(), signal.SIGINT)  # the handler before: KeyboardInterrupt
            _wait(lambda: False, seconds=10.0)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_nested_blocks_share_one_request():
    with preempt.on_signals():
        with preempt.on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
        assert preempt.stop_requested()  # the inner block did not reset it
    assert not preempt.stop_requested()


def test_exit_status_is_documented():
    assert preempt.EXIT_PREEMPTED == 75  # EX_TEMPFAIL: the README and rlcot.main say 75
