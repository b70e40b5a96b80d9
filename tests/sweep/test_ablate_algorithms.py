"""experiments/ablate_algorithms.py: every point of every study resolves, arms set what
defines them, the tiny variant expands as the smoke run expects."""

import importlib.util
from pathlib import Path

import pytest

from rlcot.sweep import runner, spec

FILE = "experiments/ablate_algorithms.py"
REPO = Path(__file__).resolve().parents[2]


def _module():
    s = importlib.util.spec_from_file_location("ablate_algorithms", REPO / FILE)
    m = importlib.util.module_from_spec(s)
    s.loader.exec_module(m)
    return m


def _rl(config):
    """The resolved RL config of a point (the `rl` stage of a staged study)."""
    resolved = runner.resolve_study(config)
    return resolved["rl"].cfg if hasattr(resolved, "stages") else resolved


def test_tiny_sweep_expands_to_every_arm_once_and_resolves(monkeypatch):
    monkeypatch.chdir(REPO)
    sweep = spec.load_sweep(f"{FILE}:tiny")
    names = [p.name for p in sweep.points()]
    assert names == [f"{a}/seed_0" for a in _module().ARMS]
    runner.check_points(f"{FILE}:tiny", sweep)
    rc = _rl(runner.point_config(f"{FILE}:tiny", sweep.points()[2]))
    assert rc.train.steps == 2 and rc.rollout.dynamic_sampling and "overlong" in rc.rewards


@pytest.mark.parametrize("arg, n_points", [(None, 27), ("study=kl", 12),
                                          ("study=group_size", 12), ("study=kl,tiny", 2),
                                          ("study=group_size,tiny", 2)])
def test_every_study_resolves_at_every_point(monkeypatch, arg, n_points):
    monkeypatch.chdir(REPO)
    config = f"{FILE}:{arg}" if arg else FILE
    sweep = spec.load_sweep(config)
    assert len(sweep.points()) == n_points
    runner.check_points(config, sweep)


def test_arms_set_what_defines_them():
    m = _module()
    rc = {a: _rl(m.get_config(f"arm={a}")) for a in m.ARMS}
    est = {a: r.advantage.estimator for a, r in rc.items()}
    assert est == {"grpo": "grpo", "dr_grpo": "dr_grpo", "dapo": "grpo", "rloo": "rloo",
                   "reinforce_pp": "reinforce_pp", "reinforce_pp_group": "reinforce_pp",
                   "ppo_gae": "gae", "gspo": "grpo", "kimi": "kimi"}
    assert rc["reinforce_pp_group"].advantage.group_baseline
    assert not rc["reinforce_pp"].advantage.group_baseline
    assert [a for a, r in rc.items() if r.learner.value is not None] == ["ppo_gae"]
    assert rc["gspo"].learner.objective.policy.name == "gspo"
    assert rc["kimi"].learner.objective.policy.name == "kimi"
    assert rc["dr_grpo"].learner.objective.aggregation.mode == "constant"
    dapo = rc["dapo"]
    assert (dapo.learner.objective.policy.eps_low, dapo.learner.objective.policy.eps_high) \
        == m.DAPO_CLIP
    assert dapo.rollout.dynamic_sampling and dapo.learner.objective.aggregation.mode == "token_mean"
    assert dict(dapo.rewards["overlong"])["reward"] == "dapo_overlong"
    # Every other arm keeps the default clip range, no dynamic sampling, no KL term.
    default_policy = _rl(m.get_config()).learner.objective.policy
    for a, r in rc.items():
        assert r.learner.objective.kl.placement == "none"
        if a not in ("dapo", "gspo", "kimi"):
            assert r.learner.objective.policy == default_policy, a
            assert not r.rollout.dynamic_sampling, a
    # The base is r1_zero's world where the main pass always forgets carries.
    world = m.get_config().world
    assert (world.rates if "rates" in world else world.world.rates).flaw_rate == 1.0


def test_kl_and_group_size_studies_sweep_the_named_knobs(monkeypatch):
    monkeypatch.chdir(REPO)
    kl = spec.load_sweep(f"{FILE}:study=kl")
    assert [a.name for a in kl.arms] == ["coef=0.0", "coef=0.001", "coef=0.01", "coef=0.1"]
    c = runner.point_config(f"{FILE}:study=kl", kl.points()[-1])
    assert c.learner.objective.kl.placement == "loss" and c.learner.objective.kl.coef == 0.1
    g = spec.load_sweep(f"{FILE}:study=group_size")
    c = runner.point_config(f"{FILE}:study=group_size", g.points()[-1])
    assert c.rollout.num_samples == 16 and c.seed == 2
