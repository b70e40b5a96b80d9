"""Reward pool: per-item time limits, fallbacks, worker replacement, async submission."""

import os
import threading
import time

import numpy as np
import pool_items
import pytest

from rlcot.rewards.pool import RewardPool


@pytest.fixture(scope="module")
def pool():
    with RewardPool(2, hard_grace_s=0.5) as p:
        yield p


def test_values_in_order(pool):
    res = pool.map(pool_items.square, [(i,) for i in range(50)], timeout_s=5, fallback=-1)
    np.testing.assert_array_equal(res.values, np.arange(50, dtype=np.float32) ** 2)
    assert res.values.dtype == np.float32
    assert res.details[7] == {"x": 7, "status": "ok"}
    assert (res.n_timeouts, res.n_errors) == (0, 0)


def test_items_run_in_worker_main_thread(pool):
    res = pool.map(pool_items.pid_and_thread, [(0,)] * 4, timeout_s=5, fallback=-1)
    assert all(d["main_thread"] for d in res.details)
    assert os.getpid() not in set(res.values.astype(int).tolist())


def test_soft_timeout_keeps_worker(pool):
    restarts = pool.n_restarts
    t0 = time.monotonic()
    res = pool.map(pool_items.sleep_then_one, [(0.0,), (30.0,), (0.0,)], timeout_s=0.5, fallback=-7)
    assert time.monotonic() - t0 < 5
    np.testing.assert_array_equal(res.values, [1, -7, 1])
    assert res.n_timeouts == 1 and res.details[1]["status"] == "timeout"
    assert pool.n_restarts == restarts  # the SIGALRM guard interrupted the sleep


def test_hard_timeout_kills_and_replaces_worker(pool):
    restarts = pool.n_restarts
    t0 = time.monotonic()
    res = pool.map(pool_items.stuck_ignoring_alarm, [(60.0,)], timeout_s=0.5, fallback=-3)
    # 0.5 s limit + 0.5 s grace, then kill: far below the 60 s the item would take.
    assert time.monotonic() - t0 < 5
    assert res.values[0] == -3 and res.n_timeouts == 1
    assert "killed" in res.details[0]["message"]
    assert pool.n_restarts == restarts + 1
    after = pool.map(pool_items.square, [(3,)], timeout_s=30, fallback=-1)
    assert after.values[0] == 9  # the replacement works


def test_errors_and_dying_workers_get_fallback(pool):
    res = pool.map(pool_items.raise_value_error, [(1,), (2,)], timeout_s=5, fallback=-2)
    np.testing.assert_array_equal(res.values, [-2, -2])
    assert res.n_errors == 2 and "bad item 2" in res.details[1]["message"]
    res = pool.map(pool_items.exit_worker, [(3,)], timeout_s=5, fallback=-4)
    assert res.values[0] == -4 and res.n_errors == 1 and "died" in res.details[0]["message"]
    res = pool.map(pool_items.bad_return, [(0,)], timeout_s=5, fallback=-5)
    assert res.values[0] == -5 and res.n_errors == 1
    assert pool.map(pool_items.square, [(2,)], timeout_s=30, fallback=-1).values[0] == 4


def test_submit_is_asynchronous(pool):
    t0 = time.monotonic()
    job = pool.submit(pool_items.sleep_then_one, [(0.3,)] * 4, timeout_s=5, fallback=0)
    assert time.monotonic() - t0 < 0.1 and not job.done()
    with pytest.raises(TimeoutError):
        job.result(timeout=0.01)
    res = job.result(timeout=10)
    # 4 items of 0.3 s on 2 workers: about 0.6 s, not 1.2 s.
    assert res.values.tolist() == [1, 1, 1, 1] and res.elapsed_s < 1.1


def test_inline_pool_main_thread_and_other_thread():
    inline = RewardPool(0)
    res = inline.map(pool_items.sleep_then_one, [(30.0,)], timeout_s=0.2, fallback=-1)
    assert res.values[0] == -1 and res.n_timeouts == 1  # SIGALRM guard on the main thread
    box = {}
    thread = threading.Thread(target=lambda: box.update(
        r=inline.map(pool_items.square, [(5,)], timeout_s=1, fallback=-1)))
    thread.start()
    thread.join()
    assert box["r"].values[0] == 25 and box["r"].details[0]["status"] == "ok"


def test_empty_submit_and_bad_arguments(pool):
    assert pool.map(pool_items.square, [], timeout_s=1, fallback=0).values.shape == (0,)
    with pytest.raises(ValueError, match="timeout_s"):
        pool.submit(pool_items.square, [(1,)], timeout_s=0, fallback=0)
    with pytest.raises(ValueError, match="num_workers"):
        RewardPool(-1)


def test_closed_pool_refuses_work():
    p = RewardPool(1)
    p.close()
    with pytest.raises(RuntimeError, match="closed"):
        p.submit(pool_items.square, [(1,)], timeout_s=1, fallback=0)
