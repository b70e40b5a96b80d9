"""Stop requests: the first SIGTERM / SIGINT is recorded for the drivers, a second one acts as
the signal would have; handlers come back afterwards."""

import os
import signal

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


def test_a_second_sigint_interrupts_at_once():
    with pytest.raises(KeyboardInterrupt):
        with preempt.on_signals():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # the handler before: KeyboardInterrupt
            for _ in range(1000):  # (the interrupt lands at the next bytecode)
                pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_nested_blocks_share_one_request():
    with preempt.on_signals():
        with preempt.on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
        assert preempt.stop_requested()  # the inner block did not reset it
    assert not preempt.stop_requested()


def test_exit_status_is_documented():
    assert preempt.EXIT_PREEMPTED == 75  # EX_TEMPFAIL: the README and rlcot.main say 75
