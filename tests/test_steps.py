"""The step loop the supervised stage kinds share (rlcot.steps): rows, checkpoints, the log
window across a resume, and stop requests at step boundaries."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from rlcot import preempt
from rlcot.sft import OptimizerState
from rlcot.steps import StepLoop, window_from_json, window_to_json
from rlcot.workdir import read_metrics


def test_the_log_window_restores_bit_for_bit():
    rng = np.random.default_rng(0)
    window = [{"loss": np.float32(rng.normal()), "grad_norm": np.float32(rng.random()),
               "target_tokens": np.float32(rng.integers(1, 999))} for _ in range(7)]
    back = window_from_json(json.loads(json.dumps(window_to_json(window))))
    for key in ("loss", "grad_norm", "target_tokens"):
        a = np.mean([r[key] for r in window])
        b = np.mean([r[key] for r in back])
        assert a.dtype == b.dtype == np.float32 and a.tobytes() == b.tobytes()
    # A checkpoint from before the [value, dtype] form held plain floats.
    assert window_from_json([{"loss": 0.25}])[0]["loss"] == 0.25


def _loop(workdir, steps=7):
    state = OptimizerState({"w": jnp.zeros(3)}, {"count": jnp.zeros((), jnp.int32)})
    return StepLoop(workdir, state, name="toy", steps=steps, log_every=3, checkpoint_every=4,
                    keep_checkpoints=5, schedule=lambda i: 0.1 * i, keys=("loss",))


def _step(stop_after=None):
    def step(i, params, opt_state):
        if i == stop_after:  # a signal during step i: recorded, honoured at the boundary
            preempt.request_stop("SIGTERM")
        loss = np.float32(1.0) / np.float32(3 + i)  # not exact in float32: rounding shows
        return ({"w": params["w"] + loss}, {"count": opt_state["count"] + 1},
                {"loss": jnp.float32(loss), "other": jnp.float32(i)})
    return step


def _rows(workdir):
    return [{k: v for k, v in r.items() if not k.startswith("time/")}
            for r in read_metrics(workdir)]


def test_rows_checkpoints_and_a_stop_request_resume_to_the_same_numbers(tmp_path):
    whole = _loop(tmp_path / "whole")
    assert whole.start == 0
    params, opt_state = whole.run(_step())
    rows = _rows(tmp_path / "whole")
    assert [r["step"] for r in rows] == [3, 6, 7]  # every log_every steps and the last
    assert rows[0]["lr"] == pytest.approx(0.2) and rows[2]["other"] == 6.0
    assert rows[0]["loss"] == float(np.mean(np.float32(1) / np.float32([3, 4, 5])))
    assert int(opt_state["count"]) == 7
    assert whole.ckpt.all_steps() == [4, 7]

    stopped = tmp_path / "stopped"
    with preempt.on_signals():
        loop = _loop(stopped)
        with pytest.raises(preempt.Preempted, match="stage toy stopped at step 5 on SIGTERM"):
            loop.run(_step(stop_after=4))  # step 5 ran (index 4), then the stop
    assert loop.ckpt.all_steps() == [4, 5]  # a checkpoint where it stopped
    assert [r["step"] for r in read_metrics(stopped)] == [3]
    again = _loop(stopped)
    assert again.start == 5 and [float(w["other"]) for w in again.window] == [3.0, 4.0]
    params2, opt_state2 = again.run(_step())
    assert _rows(stopped) == rows  # the row at 6 means steps 4-6 across the stop, bit for bit
    assert np.array_equal(params["w"], params2["w"]) and int(opt_state2["count"]) == 7
    # A finished stage runs no step.
    done = _loop(stopped)
    assert done.start == 7 and done.run(_step(stop_after=0))[1]["count"] == 7


def test_a_stop_request_before_the_first_step_keeps_no_checkpoint(tmp_path):
    with preempt.on_signals():
        preempt.request_stop("SIGINT")
        loop = _loop(tmp_path)
        with pytest.raises(preempt.Preempted, match="at step 0 on SIGINT"):
            loop.run(_step())
    assert loop.ckpt.all_steps() == [] and read_metrics(tmp_path) == []
