"""The cache's build lock: a second builder of the same entry waits for the first; other
entries do not wait; the lock is free again after an exception."""

import threading
import time

import pytest

from rlcot.toyworld.cache import building


def test_a_second_builder_of_the_same_entry_waits(tmp_path):
    events, held = [], threading.Event()

    def first():
        with building("sft-x", tmp_path):
            held.set()
            time.sleep(0.3)
            events.append("first done")

    t = threading.Thread(target=first)
    t.start()
    assert held.wait(10)
    with building("sft-y", tmp_path):  # another entry: no waiting
        events.append("other entry")
    with building("sft-x", tmp_path):
        events.append("second in")
    t.join()
    assert events == ["other entry", "first done", "second in"]


def test_the_lock_is_released_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with building("sft-x", tmp_path):
            raise RuntimeError("training failed")
    done = threading.Event()

    def again():
        with building("sft-x", tmp_path):
            done.set()

    t = threading.Thread(target=again)
    t.start()
    assert done.wait(5)
    t.join()
