"""Loud warnings: each condition of rlcot.health from hand-made metric rows, and how often
HealthLog warns and counts."""

import logging
import math

from rlcot.health import CONDITIONS, HealthLog, health_warnings

FINE = {"rollout/truncated_frac": 0.1, "rollout/score_std": 0.4,
        "rollout/groups_equal_frac": 0.5, "rollout/score_mean": 0.3, "kl_ref_mean": 0.01,
        "approx_kl_mean": 0.001, "entropy_mean": 0.8}


def _names(row, first=None):
    return [m.split(":")[0] for m in health_warnings(row, first)]


def test_a_healthy_row_has_no_warnings():
    assert health_warnings(FINE, FINE) == [] and health_warnings({}) == []


def test_each_condition():
    assert _names({**FINE, "rollout/truncated_frac": 0.51}) == ["truncated"]
    assert _names({**FINE, "rollout/truncated_frac": 0.5}) == []  # "most": more than half
    msg, = health_warnings({**FINE, "rollout/score_std": 0.0, "rollout/score_mean": 1.0})
    assert msg.startswith("equal_rewards: every reward of the batch is 1.0")
    msg, = health_warnings({**FINE, "rollout/groups_equal_frac": 1.0})
    assert msg.startswith("equal_rewards: in every group")
    assert _names({**FINE, "kl_ref_mean": 1.5}) == ["kl_exploding"]
    assert _names({**FINE, "kl_ref_mean": math.nan}) == ["kl_exploding"]
    msg, = health_warnings({**FINE, "approx_kl_mean": 2.0, "kl_ref_mean": 3.0})  # one message
    assert msg.startswith("kl_exploding: kl_ref_mean = 3")
    # Entropy: relative to the run's first step (a toy model starts near 0.05 nats) ...
    assert _names({**FINE, "entropy_mean": 0.07}, first=FINE) == ["entropy_collapse"]
    assert _names({**FINE, "entropy_mean": 0.09}, first={"entropy_mean": 0.1}) == []
    # ... or absolutely tiny.
    assert _names({**FINE, "entropy_mean": 1e-4}) == ["entropy_collapse"]
    assert _names({"rollout/truncated_frac": 0.9, "rollout/score_std": 0.0,
                   "kl_ref_mean": 5.0, "entropy_mean": 0.0}) == list(CONDITIONS)


def test_warns_once_per_condition_per_n_steps_and_counts_every_step(caplog):
    health = HealthLog(every=3)
    bad = {**FINE, "rollout/truncated_frac": 0.9}
    with caplog.at_level(logging.WARNING, logger="rlcot.health"):
        got = [health(step, bad if step != 3 else FINE) for step in range(1, 8)]
    assert [g["health/truncated"] for g in got] == [1, 1, 0, 1, 1, 1, 1]
    assert all(g["health/kl_exploding"] == 0 for g in got) and set(got[0]) == {
        f"health/{c}" for c in CONDITIONS}
    warned = [r.getMessage().split(":")[0] for r in caplog.records]
    assert warned == ["step 1", "step 4", "step 7"]


def test_entropy_baseline_survives_a_resume():
    # On resume the first training row comes from metrics.jsonl, so the counts are the same.
    rows = [{"step": 0, "eval/x": 1.0}, {"step": 1, **FINE}]
    later = {**FINE, "entropy_mean": 0.05}
    assert HealthLog(rows)(5, later)["health/entropy_collapse"] == 1.0
    assert HealthLog()(5, later)["health/entropy_collapse"] == 0.0  # (it would be its own first)
